//! `tierscope cache trim` and `clear`: entries removed under the directory
//! lock that every process using the directory takes for its own changes,
//! so both are safe while runtimes use it (a module loaded from a removed
//! entry keeps working; the runtimes rescan before their next save).
//! Leftover temporary files of writers that died go too; saves in
//! progress, the lock file and files that are not tierscope's stay.

use std::time::Duration;

use clap::{ArgGroup, Args};
use tierscope::disk::{FileKind, TrimReport};

use super::{DirArgs, count};
use crate::{bytes, common::Failure, duration};

pub const TRIM_EXAMPLES: &str = "\
Examples:
  tierscope cache trim --older-than 30d
  tierscope cache trim --max-bytes 512MiB
  tierscope cache trim --older-than 7d --max-bytes 2GiB --cache-dir /var/cache/modules";

pub const CLEAR_EXAMPLES: &str = "\
Examples:
  tierscope cache clear
  tierscope cache clear --cache-dir /var/cache/modules";

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["max_bytes", "older_than"])))]
pub struct TrimArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Remove the least recently used entries until the rest fit in SIZE
    /// (e.g. 512MiB, 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_max_bytes)]
    max_bytes: Option<u64>,
    /// Remove the entries not used for DURATION (e.g. 12h, 7d, 4w);
    /// applied before --max-bytes.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    older_than: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    #[command(flatten)]
    dir: DirArgs,
}

fn parse_max_bytes(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    bytes::parse(s)
}

pub fn run_trim(args: TrimArgs) -> Result<u8, Failure> {
    let dir = args.dir.dir()?;
    let cache = args.dir.builder(&dir).build_for_maintenance();
    let before = leftovers(&cache, &dir)?;
    let report = cache
        .trim(args.max_bytes, args.older_than)
        .map_err(|e| super::explain(&dir, e))?;
    let mut why = Vec::new();
    if let Some(d) = args.older_than {
        why.push(format!("not used for {}", humantime::format_duration(d)));
    }
    if let Some(b) = args.max_bytes {
        why.push(format!("to fit {}", bytes::human(b as f64)));
    }
    say(&dir, &report, &why.join(" or "), before, &cache)
}

pub fn run_clear(args: ClearArgs) -> Result<u8, Failure> {
    let dir = args.dir.dir()?;
    let cache = args.dir.builder(&dir).build_for_maintenance();
    let before = leftovers(&cache, &dir)?;
    let report = cache.clear().map_err(|e| super::explain(&dir, e))?;
    say(&dir, &report, "all", before, &cache)
}

/// Leftover temporary files now (to say how many a trim removed).
fn leftovers(cache: &tierscope::FileSystemCache, dir: &std::path::Path) -> Result<u64, Failure> {
    let inventory = cache.inventory().map_err(|e| super::explain(dir, e))?;
    Ok(inventory
        .files
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                FileKind::Temporary {
                    in_progress: false,
                    ..
                }
            )
        })
        .count() as u64)
}

fn say(
    dir: &std::path::Path,
    report: &TrimReport,
    why: &str,
    leftovers_before: u64,
    cache: &tierscope::FileSystemCache,
) -> Result<u8, Failure> {
    let human = |b: u64| bytes::human(b as f64);
    let left_now = leftovers(cache, dir)?;
    let mut line = format!(
        "{}: removed {} ({}; {why}), kept {} ({})",
        dir.display(),
        count(report.removed, "entry", "entries"),
        human(report.removed_bytes),
        count(report.kept, "entry", "entries"),
        human(report.kept_bytes),
    );
    let cleaned = leftovers_before.saturating_sub(left_now);
    if cleaned > 0 {
        line.push_str(&format!(
            "; removed {} left by writers that died",
            count(cleaned, "temporary file", "temporary files")
        ));
    }
    if left_now > 0 {
        line.push_str(&format!(
            "; {} not removed (younger than 10 s, as a writer may not have locked it yet, or not removable)",
            count(left_now, "unlocked temporary file", "unlocked temporary files")
        ));
    }
    println!("{line}");
    for failure in &report.failures {
        eprintln!("error: could not remove: {failure}");
    }
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}
