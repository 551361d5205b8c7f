//! `tierscope cache stats`: what a cache directory holds, per namespace
//! (engine configuration, wasmer version, entry format): entries, bytes,
//! how old they are and when they were last used; and what is not
//! tierscope's (files the tier leaves alone, leftover temporary files of
//! writers that died). Read-only: nothing is locked, removed or touched.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::Args;
use serde_json::json;
use tierscope::{
    ModuleHash,
    disk::{CacheFile, FileKind, Inventory, Namespace},
};
use wasmer::Engine;

use super::{DirArgs, count};
use crate::{bytes, common::Failure, duration};

pub const EXAMPLES: &str = "\
Examples:
  tierscope cache stats
  tierscope cache stats --entries --sources ./node_modules
  tierscope cache stats --cache-dir /var/cache/modules --json";

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Print the statistics as JSON (every entry included).
    #[arg(long)]
    json: bool,
    /// List every entry: module hash, size, last use, and the source file
    /// when known (see --sources).
    #[arg(long)]
    entries: bool,
    /// Wasm files, or directories to search for `.wasm` files: an entry
    /// whose module hash matches one is named after it (entries are named
    /// by hash only).
    #[arg(long, value_name = "PATH")]
    sources: Vec<PathBuf>,
}

/// Last-use buckets: (label, JSON key, upper bound).
const RECENCY: [(&str, &str, Duration); 4] = [
    ("under 1 h", "under_1h", Duration::from_secs(3600)),
    ("1 h to 1 day", "1h_to_1d", Duration::from_secs(86_400)),
    ("1 to 7 days", "1d_to_7d", Duration::from_secs(7 * 86_400)),
    (
        "7 to 30 days",
        "7d_to_30d",
        Duration::from_secs(30 * 86_400),
    ),
];

pub fn run(args: StatsArgs) -> Result<u8, Failure> {
    let dir = args.dir.dir()?;
    let cache = args.dir.builder(&dir).build_for_maintenance();
    let inventory = cache.inventory().map_err(|e| super::explain(&dir, e))?;
    let sources = source_names(&args.sources)?;
    let own = Namespace::of(&Engine::default());
    let now = SystemTime::now();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&inventory, &own, &sources, now))
                .expect("JSON values serialize")
        );
    } else {
        print_text(&inventory, &own, &sources, now, args.entries);
    }
    Ok(0)
}

/// Module hashes of the given wasm files (and `.wasm` files under given
/// directories) to the files.
pub fn source_names(paths: &[PathBuf]) -> Result<HashMap<ModuleHash, Vec<PathBuf>>, Failure> {
    let mut names: HashMap<ModuleHash, Vec<PathBuf>> = HashMap::new();
    for file in super::warm::find_wasm(paths)? {
        if let Ok(bytes) = std::fs::read(&file) {
            names.entry(ModuleHash::new(&bytes)).or_default().push(file);
        }
    }
    Ok(names)
}

struct NamespaceStats<'a> {
    entries: Vec<&'a CacheFile>,
    bytes: u64,
}

fn by_namespace(inventory: &Inventory) -> BTreeMap<&str, NamespaceStats<'_>> {
    let mut map: BTreeMap<&str, NamespaceStats<'_>> = BTreeMap::new();
    for ns in &inventory.namespaces {
        map.insert(
            ns.as_str(),
            NamespaceStats {
                entries: Vec::new(),
                bytes: 0,
            },
        );
    }
    for e in inventory.entries() {
        if let Some(ns) = e.namespace.as_deref()
            && let Some(s) = map.get_mut(ns)
        {
            s.entries.push(e);
            s.bytes += e.bytes;
        }
    }
    map
}

fn ago(now: SystemTime, t: Option<SystemTime>) -> Option<Duration> {
    t.map(|t| now.duration_since(t).unwrap_or_default())
}

/// Entries by time since last use: (label, JSON key, count).
fn recency(now: SystemTime, entries: &[&CacheFile]) -> Vec<(String, &'static str, u64)> {
    let mut counts = vec![0u64; RECENCY.len() + 1];
    for e in entries {
        let idle = ago(now, e.modified).unwrap_or(Duration::MAX);
        let i = RECENCY
            .iter()
            .position(|(_, _, bound)| idle < *bound)
            .unwrap_or(RECENCY.len());
        counts[i] += 1;
    }
    let mut out: Vec<(String, &'static str, u64)> = RECENCY
        .iter()
        .zip(&counts)
        .map(|((label, key, _), n)| (label.to_string(), *key, *n))
        .collect();
    out.push(("over 30 days".into(), "over_30d", counts[RECENCY.len()]));
    out
}

/// Newest, median and oldest age (since creation, or since the last write
/// where the file system keeps no creation time).
fn ages(now: SystemTime, entries: &[&CacheFile]) -> Option<(Duration, Duration, Duration)> {
    let mut a: Vec<Duration> = entries
        .iter()
        .filter_map(|e| ago(now, e.created.or(e.modified)))
        .collect();
    if a.is_empty() {
        return None;
    }
    a.sort();
    Some((a[0], a[a.len() / 2], a[a.len() - 1]))
}

struct NotOurs<'a> {
    /// Verification records (tierscope's, beside their entries).
    records: Vec<&'a CacheFile>,
    in_progress: Vec<&'a CacheFile>,
    leftover: Vec<&'a CacheFile>,
    foreign: Vec<&'a CacheFile>,
}

fn not_ours(inventory: &Inventory) -> NotOurs<'_> {
    let mut n = NotOurs {
        records: Vec::new(),
        in_progress: Vec::new(),
        leftover: Vec::new(),
        foreign: Vec::new(),
    };
    for f in &inventory.files {
        match f.kind {
            FileKind::Temporary {
                in_progress: true, ..
            } => n.in_progress.push(f),
            FileKind::Temporary { .. } => n.leftover.push(f),
            FileKind::Foreign { .. } => n.foreign.push(f),
            FileKind::Record { .. } => n.records.push(f),
            _ => {}
        }
    }
    n
}

fn bytes(files: &[&CacheFile]) -> u64 {
    files.iter().map(|f| f.bytes).sum()
}

fn print_text(
    inventory: &Inventory,
    own: &Namespace,
    sources: &HashMap<ModuleHash, Vec<PathBuf>>,
    now: SystemTime,
    list: bool,
) {
    let human = |b: u64| bytes::human(b as f64);
    println!("Cache directory   {}", inventory.root.display());
    if !inventory.exists {
        println!("                  (does not exist yet: nothing was ever saved here)");
        return;
    }
    let namespaces = by_namespace(inventory);
    if namespaces.is_empty() {
        println!("                  (no entries)");
    }
    for (name, s) in &namespaces {
        let parsed = Namespace::parse(name);
        let this = *name == own.name;
        println!();
        println!(
            "Namespace         {name}{}",
            if this {
                " (this build's engine)"
            } else {
                " (another engine or wasmer version: never read by this build, evicted first)"
            }
        );
        if let Some(p) = &parsed {
            println!(
                "  wasmer          {}, entry format {}",
                p.wasmer_version, p.entry_format
            );
        }
        println!("  entries         {} ({})", s.entries.len(), human(s.bytes));
        if let Some((newest, median, oldest)) = ages(now, &s.entries) {
            println!(
                "  age             newest {}, median {}, oldest {}",
                duration::short(newest),
                duration::short(median),
                duration::short(oldest)
            );
        }
        if !s.entries.is_empty() {
            let r: Vec<String> = recency(now, &s.entries)
                .into_iter()
                .filter(|(_, _, n)| *n > 0)
                .map(|(label, _, n)| format!("{label} ago: {n}"))
                .collect();
            println!("  last used       {}", r.join("; "));
        }
        if list {
            let mut entries = s.entries.clone();
            entries.sort_by_key(|e| std::cmp::Reverse(e.modified));
            for e in entries {
                let key = e.key().map(|k| k.to_string()).unwrap_or_default();
                let source = e
                    .key()
                    .and_then(|k| sources.get(&k))
                    .map(|files| {
                        files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|| "-".into());
                println!(
                    "    {}  {:>10}  used {:>9} ago  {source}",
                    &key[..key.len().min(16)],
                    human(e.bytes),
                    ago(now, e.modified).map_or("?".into(), duration::short),
                );
            }
        }
    }
    let n = not_ours(inventory);
    println!();
    println!("Not entries");
    // One line per kind: count, bytes, and what they are when there are any.
    let line = |label: &str, files: &[&CacheFile], note: &str| {
        let note = if files.is_empty() || note.is_empty() {
            String::new()
        } else {
            format!(": {note}")
        };
        println!(
            "  {label:<20} {} ({}){note}",
            files.len(),
            human(bytes(files))
        );
    };
    line(
        "verification records",
        &n.records,
        "large entries checked in full, whose later first hits skip the checksum",
    );
    line("writes in progress", &n.in_progress, "");
    line(
        "leftover temporary",
        &n.leftover,
        "writers that died; `tierscope cache trim` or the next runtime to open the cache removes them",
    );
    line(
        "not tierscope's",
        &n.foreign,
        "never read or removed by tierscope",
    );
    const SHOWN: usize = 10;
    for f in n.foreign.iter().take(SHOWN) {
        let why = match f.kind {
            FileKind::Foreign { why } => why,
            _ => "",
        };
        println!("    {} ({why})", f.path.display());
    }
    if n.foreign.len() > SHOWN {
        println!("    and {} more", n.foreign.len() - SHOWN);
    }
    let (entries, total): (u64, u64) = namespaces.values().fold((0, 0), |(n, b), s| {
        (n + s.entries.len() as u64, b + s.bytes)
    });
    println!();
    println!(
        "Total             {} ({}); the disk tier's bound counts every namespace",
        count(entries, "entry", "entries"),
        human(total)
    );
}

fn as_json(
    inventory: &Inventory,
    own: &Namespace,
    sources: &HashMap<ModuleHash, Vec<PathBuf>>,
    now: SystemTime,
) -> serde_json::Value {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
    let namespaces: Vec<serde_json::Value> = by_namespace(inventory)
        .iter()
        .map(|(name, s)| {
            let parsed = Namespace::parse(name);
            let entries: Vec<serde_json::Value> = s
                .entries
                .iter()
                .map(|e| {
                    let key = e.key();
                    json!({
                        "key": key.map(|k| k.to_string()),
                        "path": e.path,
                        "bytes": e.bytes,
                        "age_seconds": secs(ago(now, e.created.or(e.modified))),
                        "last_used_seconds_ago": secs(ago(now, e.modified)),
                        "sources": key.and_then(|k| sources.get(&k)).cloned().unwrap_or_default(),
                    })
                })
                .collect();
            let ages = ages(now, &s.entries);
            json!({
                "name": name,
                "engine": parsed.as_ref().map(|p| p.engine.clone()),
                "wasmer_version": parsed.as_ref().map(|p| p.wasmer_version.clone()),
                "entry_format": parsed.as_ref().map(|p| p.entry_format),
                "this_build": *name == own.name,
                "entries": s.entries.len(),
                "bytes": s.bytes,
                "age_seconds": ages.map(|(a, b, c)| json!({"newest": a.as_secs(), "median": b.as_secs(), "oldest": c.as_secs()})),
                "last_used": recency(now, &s.entries).into_iter().map(|(_, key, n)| (key.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "entry_list": entries,
            })
        })
        .collect();
    let n = not_ours(inventory);
    let files = |fs: &[&CacheFile]| -> Vec<serde_json::Value> {
        fs.iter()
            .map(|f| {
                let mut v = json!({"path": f.path, "bytes": f.bytes});
                match f.kind {
                    FileKind::Foreign { why } => v["why"] = json!(why),
                    FileKind::Temporary { pid, .. } => v["writer_pid"] = json!(pid),
                    _ => {}
                }
                v
            })
            .collect()
    };
    let (entries, total) = inventory
        .entries()
        .fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.bytes));
    json!({
        "cache_dir": inventory.root,
        "exists": inventory.exists,
        "this_build_namespace": own.name,
        "namespaces": namespaces,
        "verification_records": files(&n.records),
        "writes_in_progress": files(&n.in_progress),
        "leftover_temporary_files": files(&n.leftover),
        "not_tierscopes": files(&n.foreign),
        "total": {"entries": entries, "bytes": total},
    })
}
