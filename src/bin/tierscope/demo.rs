//! `tierscope demo`: the library doing its job, observably.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Args, value_parser};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use rand_distr::Zipf;
use tierscope::{
    EngineGenerations, FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleHash,
    ModuleLoader, corpus,
    observe::{names, prometheus},
    sizing::live::{LiveSizing, SizingExt, SizingOptions, SizingReport, Window},
};
use wasmer::Engine;

use crate::{expo::Scrape, size};

/// The `cache` label of every metric the demo records.
const CACHE: &str = "modules";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 20, value_parser = value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Directory of the disk tier (default: a temporary directory, removed
    /// at exit).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Use the `.wasm` files of this directory instead of generated modules.
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Bound of the memory tier (e.g. 16MiB).
    #[arg(long, default_value = "8MiB", value_parser = size::parse)]
    memory_bytes: u64,
    /// Bound of the disk tier (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = size::parse)]
    disk_bytes: u64,
    /// Evicted machine code one engine may keep before a fresh engine
    /// replaces it (see "Engines and memory" in the README).
    #[arg(long, default_value = "64MiB", value_parser = size::parse)]
    code_budget: u64,
    /// Concurrent tasks asking for modules.
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Add a shared Redis tier below the disk tier (needs the `redis`
    /// feature). The MAC key is read from the environment variable
    /// TIERSCOPE_REDIS_KEY (64 hex characters), never from the command line.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Number of generated modules (ignored with --modules).
    #[arg(long, default_value_t = 40, value_parser = value_parser!(u64).range(1..=10_000))]
    corpus: u64,
    /// Largest generated module, in bytes of wasm (sizes spread
    /// log-uniformly from 4 KB up to this; ignored with --modules).
    #[arg(long, default_value = "400KB", value_parser = size::parse)]
    max_wasm_bytes: u64,
    /// Zipf exponent of module popularity (higher: a few modules dominate).
    #[arg(long, default_value_t = 1.0, value_parser = parse_exponent)]
    zipf: f64,
    /// Seed for the corpus and the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep serving /metrics this many seconds after the workload ends.
    #[arg(long, default_value_t = 0, value_parser = value_parser!(u64).range(0..=86_400))]
    linger: u64,
    /// No live progress line (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Write the request stream as a tierscope trace, for `tierscope size`.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Turn live sizing off (on by default: every tier's what-if hit ratios
    /// at 0.25x to 4x its capacity, exported as tierscope_sizing_*).
    #[arg(long)]
    no_sizing: bool,
    /// Live sizing's window: the last this many lookups of each tier (and
    /// at most the last 5 minutes).
    #[arg(long, default_value_t = 100_000, value_parser = value_parser!(u64).range(10..=100_000_000))]
    sizing_window: u64,
}

fn parse_exponent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 10.0 {
        Ok(v)
    } else {
        Err("the Zipf exponent must be in (0, 10]".into())
    }
}

/// How the demo failed: bad input (exit code 2) or at run time (1).
pub enum Failure {
    Usage(String),
    Runtime(String),
}

struct Wasm {
    name: String,
    key: ModuleHash,
    bytes: Vec<u8>,
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    // Validate the inputs before doing anything slow.
    let files = match &args.modules {
        Some(dir) => Some(read_modules(dir)?),
        None => None,
    };
    if let Some(dir) = &args.cache_dir
        && dir.exists()
        && !dir.is_dir()
    {
        return Err(Failure::Usage(format!(
            "--cache-dir {} exists and is not a directory",
            dir.display()
        )));
    }
    #[cfg(not(feature = "redis"))]
    if args.redis.is_some() {
        return Err(Failure::Usage(
            "--redis needs a build with the `redis` feature: cargo run --release --features cli,redis -- demo --redis URL".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_async(args, files))
}

fn read_modules(dir: &Path) -> Result<Vec<Wasm>, Failure> {
    let unreadable =
        |e: std::io::Error| Failure::Usage(format!("--modules {}: {e}", dir.display()));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let bytes = std::fs::read(&path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
            if !bytes.starts_with(b"\0asm") {
                return Err(Failure::Usage(format!(
                    "{} is not a WebAssembly binary (no \\0asm header)",
                    path.display()
                )));
            }
            out.push(Wasm {
                name: path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                key: ModuleHash::new(&bytes),
                bytes,
            });
        }
    }
    if out.is_empty() {
        return Err(Failure::Usage(format!(
            "--modules {}: no .wasm files there",
            dir.display()
        )));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Module sizes spread log-uniformly from 4 KB to `max` bytes of wasm (with
/// the default 400 KB: artifacts of about 25 KB to 2 MB, compiles of a few ms
/// to 0.2 s), in a seeded order so popularity does not follow size.
fn generate_corpus(n: u64, max: u64, seed: u64, progress: &ProgressBar) -> Vec<Wasm> {
    let min = 4_000f64.min(max as f64);
    let spread = max as f64 / min;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sizes: Vec<usize> = (0..n)
        .map(|i| {
            let t = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (min * spread.powf(t)) as usize
        })
        .collect();
    for i in (1..sizes.len()).rev() {
        let j = rng.random_range(0..=i);
        sizes.swap(i, j);
    }
    progress.set_length(n);
    let work: Vec<(usize, usize)> = sizes.into_iter().enumerate().collect();
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let chunks: Vec<Vec<(usize, usize)>> = (0..threads)
        .map(|t| work.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let mut out: Vec<(usize, Wasm)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(i, size)| {
                            let bytes =
                                corpus::module(size, seed.wrapping_mul(1_000_003) + i as u64);
                            progress.inc(1);
                            let wasm = Wasm {
                                name: format!("gen-{i:03}-{}k.wasm", bytes.len() / 1000),
                                key: ModuleHash::new(&bytes),
                                bytes,
                            };
                            (i, wasm)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("corpus generation does not panic"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, w)| w).collect()
}

async fn run_async(args: DemoArgs, files: Option<Vec<Wasm>>) -> Result<(), Failure> {
    // The recorder first: the tiers register their metric handles when built.
    let metrics = prometheus::serve(args.metrics_addr).map_err(|e| {
        Failure::Runtime(format!(
            "cannot serve metrics on {}: {e}",
            args.metrics_addr
        ))
    })?;
    let show = !args.no_progress;
    let bar = |len: u64| {
        let pb = if show {
            ProgressBar::new(len)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>9} [{elapsed_precise}] {wide_msg}")
                .expect("valid template"),
        );
        pb
    };

    let modules = match files {
        Some(f) => f,
        None => {
            let pb = bar(args.corpus);
            pb.set_prefix("corpus");
            pb.set_message("generating wasm modules");
            let seed = args.seed;
            let n = args.corpus;
            let max = args.max_wasm_bytes;
            let pb2 = pb.clone();
            let m = tokio::task::spawn_blocking(move || generate_corpus(n, max, seed, &pb2))
                .await
                .map_err(|e| Failure::Runtime(format!("corpus generation failed: {e}")))?;
            pb.finish_and_clear();
            m
        }
    };
    let total_wasm: usize = modules.iter().map(|m| m.bytes.len()).sum();

    let temp;
    let dir = match &args.cache_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tierscope-demo-")
                .tempdir()
                .map_err(|e| {
                    Failure::Runtime(format!("cannot create a temporary directory: {e}"))
                })?;
            temp.path().to_path_buf()
        }
    };

    // Live sizing (unless --no-sizing): each tier wrapped around its spy,
    // so the model sees the lookups the tier sees.
    let sizing = (!args.no_sizing).then(|| {
        LiveSizing::new(
            CACHE,
            SizingOptions::default()
                .window(Window::requests(args.sizing_window).max_age(Duration::from_secs(300))),
        )
    });
    let memory = MemoryCache::new(args.memory_bytes).instrumented(CACHE, "memory");
    let memory: Arc<dyn ModuleCache + Send + Sync> = match &sizing {
        Some(s) => Arc::new(memory.with_sizing(s)),
        None => Arc::new(memory),
    };
    let disk = FileSystemCache::open(&dir, args.disk_bytes)
        .map_err(|e| Failure::Runtime(format!("cannot open the disk tier: {e}")))?
        .instrumented(CACHE, "disk");
    let disk: Arc<dyn ModuleCache + Send + Sync> = match &sizing {
        Some(s) => Arc::new(disk.with_sizing(s)),
        None => Arc::new(disk),
    };
    let lower: Arc<dyn ModuleCache + Send + Sync> = match &args.redis {
        None => disk,
        #[cfg(feature = "redis")]
        Some(url) => {
            let redis = redis_tier(url, CACHE).await?;
            match &sizing {
                Some(s) => Arc::new(disk.with_fallback(redis.with_sizing(s))),
                None => Arc::new(disk.with_fallback(redis)),
            }
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => unreachable!("checked before the runtime starts"),
    };
    let recorder = match &args.record {
        Some(p) => Some(Arc::new(
            crate::record::Recorder::create(p).map_err(Failure::Usage)?,
        )),
        None => None,
    };
    let engines = EngineGenerations::new(Engine::default).code_budget(args.code_budget);
    let loader = ModuleLoader::with_engines(CACHE, memory.with_fallback(lower.clone()), engines);

    eprintln!(
        "tierscope demo: {} modules ({}), memory {} -> disk {} at {}{}, code budget {}, {} tasks for {} s",
        modules.len(),
        size::human(total_wasm as f64),
        size::human(args.memory_bytes as f64),
        size::human(args.disk_bytes as f64),
        dir.display(),
        if args.redis.is_some() {
            " -> redis"
        } else {
            ""
        },
        size::human(args.code_budget as f64),
        args.concurrency,
        args.duration,
    );
    eprintln!("metrics: http://{}/metrics", args.metrics_addr);

    let modules = Arc::new(modules);
    let zipf = Zipf::new(modules.len() as f64, args.zipf)
        .map_err(|e| Failure::Usage(format!("Zipf distribution: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let (loader, modules) = (loader.clone(), modules.clone());
        let (stop, requests, failures) = (stop.clone(), requests.clone(), failures.clone());
        let (recorder, lower) = (recorder.clone(), lower.clone());
        let mut rng = SmallRng::seed_from_u64(args.seed ^ (t + 1).wrapping_mul(0x9E37_79B9));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = rng.sample(zipf) as usize - 1;
                let m = &modules[i];
                let loaded = match &recorder {
                    Some(r) => r.load(&loader, &lower, m.key, &m.bytes).await,
                    None => loader.load_with_hash(m.key, &m.bytes).await,
                };
                match loaded {
                    Ok(_) => requests.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(module = %m.name, error = %e, "load failed");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                // Memory hits never wait: let the other tasks run.
                tokio::task::yield_now().await;
            }
        }));
    }

    let pb = bar(args.duration);
    pb.set_prefix("workload");
    let deadline = started + Duration::from_secs(args.duration);
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let tick = tokio::time::sleep(Duration::from_millis(250).min(deadline - now));
        tokio::select! {
            _ = tick => {}
            _ = tokio::signal::ctrl_c() => { interrupted = true; break; }
        }
        tierscope::observe::flush();
        prometheus::collect_process_metrics();
        let scrape = Scrape::parse(&metrics.render());
        pb.set_message(progress_line(
            &scrape,
            requests.load(Ordering::Relaxed),
            started.elapsed(),
        ));
        pb.tick();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    tierscope::observe::flush();
    prometheus::collect_process_metrics();
    let report = sizing.as_ref().map(|s| {
        s.flush();
        s.report()
    });
    let scrape = Scrape::parse(&metrics.render());
    print_table(
        &scrape,
        requests.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        elapsed,
        report.as_ref(),
    );
    if let (Some(r), Some(path)) = (&recorder, &args.record) {
        let n = r.finish().map_err(Failure::Runtime)?;
        eprintln!(
            "recorded {n} requests to {}; size the tiers with: tierscope size {} --memory {} --disk {}",
            path.display(),
            path.display(),
            size::human(args.memory_bytes as f64).replace(' ', ""),
            size::human(args.disk_bytes as f64).replace(' ', ""),
        );
    }
    if args.linger > 0 && !interrupted {
        eprintln!(
            "serving http://{}/metrics for {} more seconds (Ctrl-C to stop)",
            args.metrics_addr, args.linger
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.linger)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}

#[cfg(feature = "redis")]
/// The Redis tier of the CLI's stacks, instrumented under the cache name `name`, its key
/// read from the environment and the server checked before use.
pub(crate) async fn redis_tier(
    url: &str,
    name: &str,
) -> Result<tierscope::Instrumented<tierscope::RedisCache>, Failure> {
    // The key comes from the environment, never the command line (which
    // other users of the machine can read).
    let cache = tierscope::RedisCache::builder(url)
        .mac_keys_from_env()
        .map_err(|e| {
            Failure::Usage(format!(
                "--redis: {e}; generate one with `openssl rand -hex 32`"
            ))
        })?
        .build()
        .map_err(|e| Failure::Usage(format!("--redis {url}: {e}")))?;
    // Instrument first, so availability is reported, then check the server
    // answers: a wrong address or password is a clear error now, not later.
    let cache = cache.instrumented(name, "redis");
    cache
        .get_ref()
        .ping()
        .await
        .map_err(|e| Failure::Runtime(format!("--redis {url}: {e}")))?;
    Ok(cache)
}

const TIERS: [&str; 3] = ["memory", "disk", "redis"];

fn progress_line(s: &Scrape, requests: u64, elapsed: Duration) -> String {
    let rate = requests as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut line = format!("{} req ({}/s)", si(requests as f64), si(rate));
    for tier in TIERS {
        let labels = [("cache", CACHE), ("tier", tier)];
        let lookups = s.sum("tierscope_lookups_total", &labels);
        if lookups > 0.0 {
            let hits = s.sum(
                "tierscope_lookups_total",
                &[("cache", CACHE), ("tier", tier), ("result", "hit")],
            );
            line.push_str(&format!(" | {tier} {:.1}%", 100.0 * hits / lookups));
        }
    }
    let compiles = s.sum("tierscope_compilations_total", &[("cache", CACHE)]);
    let promotions = s.sum(
        "tierscope_promotions_total",
        &[("cache", CACHE), ("result", "ok")],
    );
    let evictions = s.sum("tierscope_evictions_total", &[("cache", CACHE)]);
    line.push_str(&format!(
        " | compiles {compiles:.0} | promotions {promotions:.0} | evictions {evictions:.0}"
    ));
    line.push_str(&format!(
        " | rss {} | engine gen {:.0}",
        size::human(s.sum(RESIDENT_MEMORY, &[])),
        s.sum(names::ENGINE_GENERATIONS, &[("cache", CACHE)]),
    ));
    line
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn duration(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 1e-6 => format!("{:.0} ns", s * 1e9),
        Some(s) if s < 1e-3 => format!("{:.1} us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

fn print_table(
    s: &Scrape,
    requests: u64,
    failures: u64,
    elapsed: Duration,
    sizing: Option<&SizingReport>,
) {
    let cache = [("cache", CACHE)];
    let compiles_ok = s.sum(
        "tierscope_compilations_total",
        &[("cache", CACHE), ("result", "ok")],
    );
    let compiles_err = s.sum(
        "tierscope_compilations_total",
        &[("cache", CACHE), ("result", "error")],
    );
    let compile_sum = s.sum("tierscope_compile_duration_seconds_sum", &cache);
    let compile_count = s.sum("tierscope_compile_duration_seconds_count", &cache);
    let mean_compile = (compile_count > 0.0).then(|| compile_sum / compile_count);

    // What each tier would have hit at half and at double its size (live
    // sizing, over its window).
    let what_if = |tier: &str, scale: f64| -> String {
        sizing
            .and_then(|r| r.tier(tier))
            .and_then(|t| t.at(scale))
            .map_or("-".into(), |p| format!("{:.2}%", 100.0 * p.hit_ratio))
    };
    println!();
    println!(
        "{:<7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>12}",
        "tier",
        "lookups",
        "hit ratio",
        "at 0.5x",
        "at 2x",
        "hit p50",
        "hit p99",
        "promoted",
        "evicted",
        "resident",
        "read",
        "compile saved"
    );
    let mut first_lookups = None;
    for tier in TIERS {
        let labels = [("cache", CACHE), ("tier", tier)];
        let lookups = s.sum("tierscope_lookups_total", &labels);
        if lookups == 0.0 && s.sum("tierscope_saves_total", &labels) == 0.0 {
            continue;
        }
        first_lookups.get_or_insert(lookups);
        let hits = s.sum(
            "tierscope_lookups_total",
            &[("cache", CACHE), ("tier", tier), ("result", "hit")],
        );
        // Hits only: memory hits are timed one in 128, misses always, so
        // mixing results would over-weight misses.
        let load = [
            ("cache", CACHE),
            ("tier", tier),
            ("op", "load"),
            ("result", "hit"),
        ];
        let p50 = s.quantile("tierscope_operation_duration_seconds", &load, 0.5);
        let p99 = s.quantile("tierscope_operation_duration_seconds", &load, 0.99);
        let promoted = s.sum(
            "tierscope_promotions_total",
            &[("cache", CACHE), ("to", tier), ("result", "ok")],
        );
        let evicted = s.sum("tierscope_evictions_total", &labels);
        let resident = s.sum("tierscope_size_bytes", &labels);
        let read = s.sum("tierscope_read_bytes_total", &labels);
        let saved = mean_compile.map(|m| hits * m);
        println!(
            "{:<7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>12}",
            tier,
            lookups as u64,
            if lookups > 0.0 {
                format!("{:.2}%", 100.0 * hits / lookups)
            } else {
                "-".into()
            },
            what_if(tier, 0.5),
            what_if(tier, 2.0),
            duration(p50),
            duration(p99),
            promoted as u64,
            evicted as u64,
            size::human(resident),
            size::human(read),
            duration(saved),
        );
    }
    println!();
    let overall = first_lookups
        .filter(|l| *l > 0.0)
        .map(|l| 1.0 - (compiles_ok + compiles_err) / l);
    println!(
        "requests {requests} in {:.1} s ({}/s), failed {failures}; compiles {compiles_ok:.0} ok, {compiles_err:.0} failed, mean {}; coalesced {:.0}; overall hit ratio {}",
        elapsed.as_secs_f64(),
        si(requests as f64 / elapsed.as_secs_f64().max(1e-9)),
        duration(mean_compile),
        s.sum("tierscope_coalesced_total", &cache),
        overall.map_or("-".into(), |o| format!("{:.3}%", 100.0 * o)),
    );
    let code = |state: &str| {
        size::human(s.sum(
            names::ENGINE_CODE_BYTES,
            &[("cache", CACHE), ("state", state)],
        ))
    };
    println!(
        "resident memory {}; engine generations {:.0} started, {:.0} alive; engine code: cached {}, evicted {} (budget {}), retired {}",
        size::human(s.sum(RESIDENT_MEMORY, &[])),
        s.sum(names::ENGINE_GENERATIONS, &cache),
        s.sum(names::ENGINE_GENERATIONS_ALIVE, &cache),
        code("cached"),
        code("evicted"),
        size::human(s.sum(names::ENGINE_CODE_BUDGET, &cache)),
        code("retired"),
    );
    if let Some(r) = sizing {
        let mut line = String::from(
            "live sizing (at 0.5x / 2x: hit ratio at half / double the tier's capacity",
        );
        let window = r.tiers.first().map_or(0, |t| t.window_requests);
        line.push_str(&format!(", over the last {window} lookups); working set"));
        for t in &r.tiers {
            line.push_str(&format!(
                " {} {}",
                t.tier,
                size::human(t.working_set_bytes as f64)
            ));
        }
        let compiles: Vec<String> = r
            .compiles
            .iter()
            .map(|c| format!("{}x {:.0}", c.scale, c.compiles))
            .collect();
        if !compiles.is_empty() {
            line.push_str(&format!(
                "; projected compiles in the window by memory scale: {}",
                compiles.join(", ")
            ));
        }
        line.push_str(&format!("; updates dropped {}", r.dropped));
        println!("{line}");
    }
}

/// The process's resident memory, exported by `metrics-process`.
const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
