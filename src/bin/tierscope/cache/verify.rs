//! `tierscope cache verify`: every entry checked as a load checks it before
//! deserializing (regular file, header, length, checksum; the MAC with
//! `--mac`), nothing deserialized; bad entries reported, or removed with
//! `--remove` as a load would remove them. Exit code 0 when every entry
//! passed, 1 when any was bad or unreadable.

use std::io::IsTerminal;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tierscope::disk::EntryVerdict;
use wasmer::Engine;

use super::{DirArgs, count};
use crate::{bytes, common::Failure};

pub const EXAMPLES: &str = "\
Examples:
  tierscope cache verify
  tierscope cache verify --remove
  TIERSCOPE_DISK_KEY=$(cat key.hex) tierscope cache verify --mac --cache-dir /srv/cache";

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Remove the bad entries (the next load of each compiles it again).
    #[arg(long)]
    remove: bool,
    /// Also check each entry's MAC, with the keys in $TIERSCOPE_DISK_KEY
    /// (64 hex digits each, comma-separated): for a directory whose
    /// runtimes sign entries.
    #[arg(long)]
    mac: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

pub fn run(args: VerifyArgs) -> Result<u8, Failure> {
    let dir = args.dir.dir()?;
    let mut builder = args.dir.builder(&dir);
    if args.mac {
        builder = builder.mac_keys(super::disk_keys()?);
    }
    let cache = builder.build_for_maintenance();
    let inventory = cache.inventory().map_err(|e| super::explain(&dir, e))?;
    if !inventory.exists {
        println!(
            "{}: does not exist yet (nothing was ever saved): nothing to verify",
            dir.display()
        );
        return Ok(0);
    }
    let total: u64 = inventory.entries().map(|e| e.bytes).sum();
    let pb = if args.no_progress || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "verifying [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let engine = Engine::default();
    let action = if args.remove {
        "removed"
    } else {
        "left in place"
    };
    let summary = cache
        .verify(&engine, args.remove, |file, verdict| {
            pb.inc(file.bytes);
            match verdict {
                EntryVerdict::Bad(e) => {
                    super::say(&pb, format!("bad: {e} ({action})"));
                }
                EntryVerdict::Unreadable(e) => {
                    super::say(&pb, format!("unreadable: {e}"));
                }
                _ => {}
            }
        })
        .map_err(|e| super::explain(&dir, e))?;
    pb.finish_and_clear();
    let mut line = format!(
        "checked {} ({}) in {}: {} good",
        count(summary.checked, "entry", "entries"),
        bytes::human(summary.bytes as f64),
        dir.display(),
        summary.good,
    );
    if summary.bad > 0 {
        line.push_str(&format!(
            ", {} bad ({})",
            summary.bad,
            if args.remove {
                format!("{} removed", summary.removed)
            } else {
                "left in place: --remove removes them".into()
            }
        ));
    }
    if summary.unreadable > 0 {
        line.push_str(&format!(", {} unreadable", summary.unreadable));
    }
    if summary.gone > 0 {
        line.push_str(&format!(
            ", {} gone meanwhile (evicted or replaced by another process)",
            summary.gone
        ));
    }
    if args.mac {
        line.push_str("; MACs checked");
    }
    println!("{line}");
    Ok(if summary.bad > 0 || summary.unreadable > 0 {
        1
    } else {
        0
    })
}
