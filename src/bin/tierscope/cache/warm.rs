//! `tierscope cache warm DIR_OR_FILES...`: compile every wasm module found
//! into the disk tier (and with `--redis` / `--objects`, the shared tiers),
//! so that no node compiles on its first request. A module a shared tier
//! already holds is fetched from it rather than compiled; one every tier
//! holds is left alone. Progress in bytes of wasm (compile time grows with
//! it), with the time left; a line per module done, and a summary.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tierscope::{FileSystemCache, ModuleCache, ModuleHash};
use wasmer::{Engine, Module};

use super::{DirArgs, count};
use crate::{bytes, common::Failure, duration};

pub const EXAMPLES: &str = "\
Examples:
  tierscope cache warm ./node_modules
  tierscope cache warm --cache-dir /var/cache/modules app.wasm plugins/
  TIERSCOPE_REDIS_KEY=$(cat key.hex) tierscope cache warm --redis redis://cache:6379 ./modules";

/// The `cache` label of the shared tiers' metrics during a warm.
const CACHE: &str = "warm";

#[derive(Debug, Args)]
pub struct WarmArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Wasm files, or directories searched (recursively) for `.wasm` files.
    #[arg(required = true, value_name = "DIR_OR_FILE")]
    paths: Vec<PathBuf>,
    /// Bound of the disk tier: the one the runtimes using the directory
    /// set (`tierscope run --disk-bytes`).
    #[arg(long, default_value = "1GiB", value_parser = bytes::parse)]
    disk_bytes: u64,
    /// Fill a shared Redis tier too (MAC key in TIERSCOPE_REDIS_KEY).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Fill a shared object-store tier too: s3://bucket/prefix, gs://..,
    /// az://.., file:///dir (MAC key in TIERSCOPE_OBJECTS_KEY).
    #[arg(long, value_name = "URL")]
    objects: Option<String>,
    /// Compile this many modules at once (default: one per CPU).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Also list the modules that were already cached.
    #[arg(short, long)]
    verbose: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// Every file named, and every `.wasm` file under every directory named
/// (symbolic links to directories are not followed), sorted.
pub fn find_wasm(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut found = Vec::new();
    for path in paths {
        let md = std::fs::metadata(path)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        if !md.is_dir() {
            found.push(path.clone());
            continue;
        }
        let mut pending = vec![path.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let p = entry.path();
                if kind.is_dir() {
                    pending.push(p);
                } else if p
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("wasm"))
                {
                    found.push(p);
                }
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// One module to warm, and the files it came from.
struct Source {
    key: ModuleHash,
    wasm: Vec<u8>,
    files: Vec<PathBuf>,
}

enum Done {
    Cached,
    Fetched { from: &'static str },
    Compiled { took: Duration, artifact: u64 },
    Failed(String),
}

pub fn run(args: WarmArgs) -> Result<u8, Failure> {
    #[cfg(not(feature = "redis"))]
    if args.redis.is_some() {
        return Err(Failure::Usage(
            "--redis: this tierscope was built without Redis support".into(),
        ));
    }
    #[cfg(not(feature = "objects"))]
    if args.objects.is_some() {
        return Err(Failure::Usage(
            "--objects: this tierscope was built without object-store support".into(),
        ));
    }
    let dir = args.dir.dir()?;
    let files = find_wasm(&args.paths)?;
    // One entry per module, however many files hold it.
    let mut modules: BTreeMap<ModuleHash, Source> = BTreeMap::new();
    let mut failed: Vec<(PathBuf, String)> = Vec::new();
    for file in files {
        match std::fs::read(&file) {
            Ok(wasm) if wasm.starts_with(b"\0asm") => {
                let key = ModuleHash::new(&wasm);
                modules
                    .entry(key)
                    .or_insert_with(|| Source {
                        key,
                        wasm,
                        files: Vec::new(),
                    })
                    .files
                    .push(file);
            }
            Ok(_) => failed.push((file, "not a WebAssembly binary".into())),
            Err(e) => failed.push((file, format!("cannot read it: {e}"))),
        }
    }
    if modules.is_empty() && failed.is_empty() {
        return Err(Failure::Usage(format!(
            "no .wasm files in {}",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    crate::common::usable_cache_dir(&dir)?;
    let disk = args
        .dir
        .builder(&dir)
        .capacity(args.disk_bytes)
        .build()
        .map_err(|e| super::explain(&dir, e))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    let shared = tokio.block_on(shared_tiers(&args))?;
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );

    let total: u64 = modules.values().map(|m| m.wasm.len() as u64).sum();
    let pb = if args.no_progress || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "warming [{bar:30}] {bytes}/{total_bytes} of wasm, {elapsed} ({eta} left) {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    for (file, why) in &failed {
        super::say(&pb, format!("failed    {}: {why}", file.display()));
    }
    let started = Instant::now();
    let shared = Arc::new(shared);
    let outcomes: Vec<(Source, Done)> = tokio.block_on(
        futures::stream::iter(modules.into_values())
            .map(|m| {
                let disk = disk.clone();
                let shared = shared.clone();
                let pb = pb.clone();
                let verbose = args.verbose;
                async move {
                    let done = warm_one(&disk, &shared, &m).await;
                    pb.inc(m.wasm.len() as u64);
                    if let Some(line) = describe(&m, &done, verbose) {
                        super::say(&pb, line);
                    }
                    (m, done)
                }
            })
            .buffer_unordered(jobs)
            .collect(),
    );
    pb.finish_and_clear();
    let wall = started.elapsed();
    summarize(&dir, &disk, &outcomes, failed.len(), wall, &args);
    let any_failed =
        !failed.is_empty() || outcomes.iter().any(|(_, d)| matches!(d, Done::Failed(_)));
    tokio.shutdown_background();
    Ok(if any_failed { 1 } else { 0 })
}

type Shared = Vec<(&'static str, Arc<dyn ModuleCache + Send + Sync>)>;

async fn shared_tiers(args: &WarmArgs) -> Result<Shared, Failure> {
    #[allow(unused_mut)]
    let mut shared: Shared = Vec::new();
    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis {
        shared.push((
            "redis",
            Arc::new(crate::common::redis_tier(url, CACHE).await?),
        ));
    }
    #[cfg(feature = "objects")]
    if let Some(url) = &args.objects {
        shared.push((
            "objects",
            Arc::new(crate::common::objects_tier(url, CACHE)?),
        ));
    }
    let _ = (args, CACHE);
    Ok(shared)
}

/// Bring one module into every tier that lacks it: fetched from a shared
/// tier that holds it, else compiled (into an engine of its own, dropped
/// after the save, so that warming many modules does not accumulate their
/// machine code in one engine).
async fn warm_one(disk: &FileSystemCache, shared: &Shared, m: &Source) -> Done {
    let engine = Engine::default();
    let key = m.key;
    let on_disk = disk.contains(key, &engine).await.unwrap_or(false);
    let mut missing: Vec<(&'static str, &Arc<dyn ModuleCache + Send + Sync>)> = Vec::new();
    let mut holder = None;
    for (name, tier) in shared {
        if tier.contains(key, &engine).await.unwrap_or(false) {
            holder.get_or_insert((*name, tier));
        } else {
            missing.push((name, tier));
        }
    }
    if on_disk && missing.is_empty() {
        return Done::Cached;
    }
    // A copy to start from: the disk's, a shared tier's, or a compile.
    let mut fetched = None;
    let mut module = None;
    if on_disk {
        module = disk.load(key, &engine).await.ok();
    }
    if module.is_none()
        && let Some((name, tier)) = holder
    {
        module = tier.load(key, &engine).await.ok();
        fetched = module.as_ref().map(|_| name);
    }
    let mut took = None;
    let module = match module {
        Some(module) => module,
        None => {
            let wasm = m.wasm.clone();
            let compile_engine = engine.clone();
            let started = Instant::now();
            let compiled =
                tokio::task::spawn_blocking(move || Module::new(&compile_engine, &wasm)).await;
            took = Some(started.elapsed());
            match compiled {
                Ok(Ok(module)) => module,
                Ok(Err(e)) => return Done::Failed(format!("does not compile: {e}")),
                Err(e) => return Done::Failed(format!("the compile panicked: {e}")),
            }
        }
    };
    let mut problems = Vec::new();
    if !on_disk && let Err(e) = disk.save(key, &engine, &module).await {
        problems.push(format!("not saved to disk: {e}"));
    }
    for (name, tier) in missing {
        if let Err(e) = tier.save(key, &engine, &module).await {
            problems.push(format!("not saved to {name}: {e}"));
        }
    }
    if !problems.is_empty() {
        return Done::Failed(problems.join("; "));
    }
    let artifact = std::fs::metadata(disk.entry_path(key, &engine)).map_or(0, |md| md.len());
    match (took, fetched) {
        (Some(took), _) => Done::Compiled { took, artifact },
        (None, Some(from)) => Done::Fetched { from },
        (None, None) => Done::Fetched { from: "disk" },
    }
}

fn names(m: &Source) -> String {
    const SHOWN: usize = 3;
    let mut s: Vec<String> = m
        .files
        .iter()
        .take(SHOWN)
        .map(|f| f.display().to_string())
        .collect();
    if m.files.len() > SHOWN {
        s.push(format!("{} more", m.files.len() - SHOWN));
    }
    s.join(", ")
}

fn describe(m: &Source, done: &Done, verbose: bool) -> Option<String> {
    let wasm = bytes::human(m.wasm.len() as f64);
    let id = m.key.short_hash();
    Some(match done {
        Done::Cached if !verbose => return None,
        Done::Cached => format!("cached    {} ({wasm}, module {id})", names(m)),
        Done::Fetched { from } => {
            format!("fetched   {} ({wasm}, module {id}) from {from}", names(m))
        }
        Done::Compiled { took, artifact } => format!(
            "compiled  {} ({wasm} -> {}, module {id}) in {}",
            names(m),
            bytes::human(*artifact as f64),
            duration::short(*took)
        ),
        Done::Failed(why) => format!("failed    {} (module {id}): {why}", names(m)),
    })
}

fn summarize(
    dir: &Path,
    disk: &FileSystemCache,
    outcomes: &[(Source, Done)],
    unreadable: usize,
    wall: Duration,
    args: &WarmArgs,
) {
    let human = |b: u64| bytes::human(b as f64);
    let (mut compiled, mut wasm_in, mut artifacts, mut cpu) = (0u64, 0u64, 0u64, Duration::ZERO);
    let (mut cached, mut fetched, mut failed) = (0u64, 0u64, unreadable as u64);
    for (m, done) in outcomes {
        match done {
            Done::Cached => cached += 1,
            Done::Fetched { .. } => fetched += 1,
            Done::Compiled { took, artifact } => {
                compiled += 1;
                wasm_in += m.wasm.len() as u64;
                artifacts += artifact;
                cpu += *took;
            }
            Done::Failed(_) => failed += 1,
        }
    }
    let mut line = format!(
        "warmed {} in {}: compiled {}",
        dir.display(),
        duration::short(wall),
        compiled
    );
    if compiled > 0 {
        line.push_str(&format!(
            " ({} of wasm -> {} on disk, {} of compiles)",
            human(wasm_in),
            human(artifacts),
            duration::short(cpu)
        ));
    }
    if fetched > 0 {
        line.push_str(&format!(", fetched {fetched} from a shared tier"));
    }
    line.push_str(&format!(", already cached {cached}, failed {failed}"));
    println!("{line}");
    let r = disk.residency();
    println!(
        "disk tier: {} ({} of its {} bound)",
        count(r.entries, "entry", "entries"),
        human(r.bytes),
        human(args.disk_bytes),
    );
    let engine = Engine::default();
    let evicted = outcomes
        .iter()
        .filter(|(m, d)| !matches!(d, Done::Failed(_)) && !disk.entry_path(m.key, &engine).exists())
        .count();
    if evicted > 0 {
        println!(
            "warning: {} warmed but no longer on disk: the disk tier's bound evicted {} (raise --disk-bytes, and the runtimes' bound with it)",
            count(evicted as u64, "module was", "modules were"),
            if evicted == 1 { "it" } else { "them" }
        );
    }
}
