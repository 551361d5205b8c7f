//! `tierscope demo`: the library doing its job, observably.
//!
//! - [`args`]: the command line;
//! - [`modules`]: the modules it loads (a directory of `.wasm` files, or
//!   generated ones);
//! - this module: the stack, the workload, `/metrics`;
//! - [`report`]: the progress line and the final table, read from the
//!   exporter's own text as Prometheus would scrape it.

mod args;
mod modules;
mod report;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use rand_distr::Zipf;
use tierscope::{
    EngineRecycling, FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleLoader,
    Served,
    observe::prometheus,
    sizing::{LiveSizing, SizingExt, SizingOptions, Window},
};
use wasmer::Engine;

use crate::{
    bytes,
    common::{Failure, usable_cache_dir},
    expo::Scrape,
};

pub use args::DemoArgs;
use modules::{Wasm, generate_corpus, read_modules};
use report::{print_table, progress_line};

/// The `cache` label of every metric the demo records.
const CACHE: &str = "modules";

pub const EXAMPLES: &str = "\
Examples:
  tierscope demo
  tierscope demo --duration 60 --memory-bytes 4MiB --metrics-addr 127.0.0.1:0
  tierscope demo --modules ./wasm --cache-dir /tmp/tierscope-demo --linger 5m";

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    // Validate the inputs before doing anything slow.
    let files = match &args.modules {
        Some(dir) => Some(read_modules(dir)?),
        None => None,
    };
    if let Some(dir) = &args.cache_dir {
        usable_cache_dir(dir)?;
    }
    #[cfg(not(feature = "redis"))]
    if args.redis.is_some() {
        return Err(Failure::Usage(
            "--redis: this tierscope was built without Redis support (cargo build --features cli,redis)".into(),
        ));
    }
    #[cfg(not(feature = "objects"))]
    if args.objects.is_some() {
        return Err(Failure::Usage(
            "--objects: this tierscope was built without object-store support (cargo build --features cli,objects)".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_async(args, files))
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
            let redis = crate::common::redis_tier(url, CACHE).await?;
            match &sizing {
                Some(s) => Arc::new(disk.with_fallback(redis.with_sizing(s))),
                None => Arc::new(disk.with_fallback(redis)),
            }
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => unreachable!("checked before the runtime starts"),
    };
    let lower: Arc<dyn ModuleCache + Send + Sync> = match &args.objects {
        None => lower,
        #[cfg(feature = "objects")]
        Some(url) => Arc::new(lower.with_fallback(crate::common::objects_tier(url, CACHE)?)),
        #[cfg(not(feature = "objects"))]
        Some(_) => unreachable!("checked before the runtime starts"),
    };
    let recorder = match &args.record {
        Some(p) => Some(Arc::new(
            crate::record::Recorder::create(p).map_err(Failure::Usage)?,
        )),
        None => None,
    };
    let engines = EngineRecycling::new(Engine::default).code_budget(args.code_budget);
    let loader = ModuleLoader::with_engines(CACHE, memory.with_fallback(lower.clone()), engines);

    eprintln!(
        "tierscope demo: {} modules ({}), memory {} -> disk {} at {}{}, code budget {}, {} tasks for {}",
        modules.len(),
        bytes::human(total_wasm as f64),
        bytes::human(args.memory_bytes as f64),
        bytes::human(args.disk_bytes as f64),
        dir.display(),
        match (args.redis.is_some(), args.objects.is_some()) {
            (true, true) => " -> redis -> objects",
            (true, false) => " -> redis",
            (false, true) => " -> objects",
            (false, false) => "",
        },
        bytes::human(args.code_budget as f64),
        args.concurrency,
        humantime::format_duration(args.duration),
    );
    let metrics_addr = metrics.local_addr().unwrap_or(args.metrics_addr);
    eprintln!("metrics: http://{metrics_addr}/metrics");

    let modules = Arc::new(modules);
    let zipf = Zipf::new(modules.len() as f64, args.zipf)
        .map_err(|e| Failure::Usage(format!("Zipf distribution: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    // How the loader answered each caller: the truth the memory tier's
    // metrics are checked against.
    let served = Arc::new(ServedCounts::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let (loader, modules) = (loader.clone(), modules.clone());
        let (stop, requests, failures) = (stop.clone(), requests.clone(), failures.clone());
        let served = served.clone();
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
                    Ok(loaded) => {
                        served.count(loaded.served());
                        requests.fetch_add(1, Ordering::Relaxed)
                    }
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

    // The workload's bar: time, since the run's length is fixed.
    let pb = if show {
        ProgressBar::new(args.duration.as_millis() as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("[{bar:20}] {prefix} {wide_msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let deadline = started + args.duration;
    let mut interrupted = false;
    let mut history = report::History::default();
    let mut failing_saves = report::FailingSaves::default();
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
        history.push(started.elapsed(), &scrape, served.memory_and_total());
        for warning in failing_saves.check(&scrape) {
            pb.suspend(|| eprintln!("{warning}"));
        }
        let elapsed = started.elapsed().min(args.duration);
        pb.set_position(elapsed.as_millis() as u64);
        pb.set_prefix(format!(
            "{:.0} s of {:.0} s, {:.0} s left",
            elapsed.as_secs_f64(),
            args.duration.as_secs_f64(),
            (args.duration - elapsed).as_secs_f64()
        ));
        pb.set_message(progress_line(
            &scrape,
            requests.load(Ordering::Relaxed),
            started.elapsed(),
        ));
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
    history.push(elapsed, &scrape, served.memory_and_total());
    for warning in failing_saves.check(&scrape) {
        eprintln!("{warning}");
    }
    print_table(
        &scrape,
        requests.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        elapsed,
        report.as_ref(),
    );
    history.print_last(Duration::from_secs(20), report.as_ref());
    if let (Some(r), Some(path)) = (&recorder, &args.record) {
        let n = r.finish().map_err(Failure::Runtime)?;
        eprintln!(
            "recorded {n} requests to {}; size the tiers with: tierscope size {} --memory {} --disk {}",
            path.display(),
            path.display(),
            bytes::human(args.memory_bytes as f64).replace(' ', ""),
            bytes::human(args.disk_bytes as f64).replace(' ', ""),
        );
    }
    if !args.linger.is_zero() && !interrupted {
        eprintln!(
            "serving http://{}/metrics for {} more (Ctrl-C to stop)",
            metrics_addr,
            humantime::format_duration(args.linger)
        );
        tokio::select! {
            _ = tokio::time::sleep(args.linger) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}

/// How the loader answered the demo's callers.
#[derive(Default)]
struct ServedCounts {
    memory: AtomicU64,
    other: AtomicU64,
}

impl ServedCounts {
    fn count(&self, served: Served) {
        // The memory tier's hits: at once, or on the lookup after an
        // engine switch (which asked it again).
        let from_memory = match served {
            Served::Memory => true,
            Served::Tier(tier) => tier.is_some_and(|t| t.as_str() == "memory"),
            _ => false,
        };
        let counter = if from_memory {
            &self.memory
        } else {
            &self.other
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Loads answered from memory, and all loads.
    fn memory_and_total(&self) -> (u64, u64) {
        let memory = self.memory.load(Ordering::Relaxed);
        (memory, memory + self.other.load(Ordering::Relaxed))
    }
}
