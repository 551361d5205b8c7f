//! Tail latency of `ModuleLoader::load_with_hash` across engine switches.
//!
//! The same churn workload (a memory tier at a quarter of the working set
//! over a disk tier that holds every module; Zipf-popular requests from
//! four tasks) through two loaders side by side, in alternating rounds of
//! one process:
//! - `switching`: a code budget of half the memory tier, so the engine is
//!   recycled every few hundred requests;
//! - `steady`: no budget (the engine is never recycled; its code memory
//!   grows, which a bounded run can afford).
//!
//! Each load is timed from the caller's side; the quantiles are over every
//! load of every round. An engine switch runs in a task of its own, so the
//! loads that cross the budget should look like any other.
//!
//! `cargo bench --bench switch_latency` (`TIERSCOPE_ROUNDS`, default 6).

#[path = "support/rounds.rs"]
mod rounds;

use std::{sync::Arc, time::Duration};

use rand::{RngExt, SeedableRng, rngs::SmallRng};
use rand_distr::Zipf;
use tierscope::{
    EngineRecycling, FileSystemCache, MemoryCache, ModuleCache, ModuleHash, ModuleLoader, Served,
    corpus,
};
use wasmer::{Engine, Module};

type Loader = ModuleLoader<Arc<dyn ModuleCache + Send + Sync>>;

const MODULES: u64 = 40;
const TASKS: usize = 4;
const PER_TASK: usize = 2_500;

struct Run {
    latencies: Vec<Duration>,
    from_memory: u64,
    switches: u64,
}

fn loader(dir: &std::path::Path, memory_bytes: u64, budget: u64) -> Loader {
    let stack: Arc<dyn ModuleCache + Send + Sync> = Arc::new(
        MemoryCache::new(memory_bytes)
            .with_fallback(FileSystemCache::open(dir, 1 << 32).expect("disk tier")),
    );
    let engines = EngineRecycling::new(Engine::default).code_budget(budget);
    ModuleLoader::with_engines("bench", stack, engines)
}

async fn round(loader: &Loader, modules: &Arc<Vec<(ModuleHash, Vec<u8>)>>, seed: u64) -> Run {
    let before = loader.generation().number();
    let zipf = Zipf::new(modules.len() as f64, 1.0).expect("valid Zipf");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (loader, modules) = (loader.clone(), Arc::clone(modules));
            let mut rng = SmallRng::seed_from_u64(seed ^ ((t as u64 + 1) * 0x9E37_79B9));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(PER_TASK);
                let mut from_memory = 0;
                for _ in 0..PER_TASK {
                    let (key, wasm) = &modules[rng.sample(zipf) as usize - 1];
                    let start = quanta::Instant::now();
                    let loaded = loader.load_with_hash(*key, wasm).await.expect("loads");
                    latencies.push(start.elapsed());
                    from_memory += u64::from(loaded.served() == Served::Memory);
                    tokio::task::yield_now().await;
                }
                (latencies, from_memory)
            })
        })
        .collect();
    let mut run = Run {
        latencies: Vec::new(),
        from_memory: 0,
        switches: 0,
    };
    for t in tasks {
        let (l, m) = t.await.expect("task");
        run.latencies.extend(l);
        run.from_memory += m;
    }
    run.switches = loader.generation().number() - before;
    run
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    // The demo's corpus: 4 KB to 400 KB of wasm, compiled once into the
    // disk tier, so that the runs only load.
    let (modules, artifact_bytes) = rt.block_on(async {
        let engine = Engine::default();
        let disk = FileSystemCache::open(dir.path(), 1 << 32).expect("disk tier");
        let mut modules = Vec::new();
        let mut bytes = 0;
        let (lo, hi) = (4_000f64.ln(), 400_000f64.ln());
        for i in 0..MODULES {
            let size = (lo + (hi - lo) * i as f64 / (MODULES - 1) as f64).exp() as usize;
            let wasm = corpus::module(size, 9_000 + i);
            let key = ModuleHash::new(&wasm);
            let module = Module::new(&engine, &wasm).expect("compiles");
            bytes += module.serialize().expect("serializes").len() as u64;
            disk.save(key, &engine, &module).await.expect("saved");
            modules.push((key, wasm));
        }
        (Arc::new(modules), bytes)
    });
    let memory = artifact_bytes / 4;
    let configs = [
        ("switching", loader(dir.path(), memory, memory / 2)),
        ("steady", loader(dir.path(), memory, u64::MAX)),
    ];
    println!(
        "switch_latency: {MODULES} modules, {} KiB of artifacts, memory tier {} KiB, {TASKS} tasks x {PER_TASK} loads a round",
        artifact_bytes >> 10,
        memory >> 10
    );
    // Warm both: every module loaded once, the memory tier full.
    for (_, l) in &configs {
        rt.block_on(round(l, &modules, 1));
    }
    let rounds = rounds::count(6);
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer
        // (or more tired) machine.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            runs[i].push(rt.block_on(round(&configs[i].1, &modules, 100 + r as u64)));
        }
    }
    println!(
        "{:<10} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "loader", "loads", "switches", "p50", "p99", "p99.9", "max", "mean", "from memory"
    );
    for (i, (name, _)) in configs.iter().enumerate() {
        let mut all: Vec<Duration> = runs[i].iter().flat_map(|r| r.latencies.clone()).collect();
        all.sort();
        let n = all.len();
        let mean = all.iter().sum::<Duration>() / n as u32;
        let switches: u64 = runs[i].iter().map(|r| r.switches).sum();
        let memory: u64 = runs[i].iter().map(|r| r.from_memory).sum();
        println!(
            "{:<10} {:>8} {:>9} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.2}%",
            name,
            n,
            switches,
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            quantile(&all, 0.999),
            all[n - 1],
            mean,
            100.0 * memory as f64 / n as f64,
        );
    }
}
