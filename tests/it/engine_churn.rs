//! Resident memory under eviction churn, measured on the process itself.
//!
//! A memory tier at a quarter of the working set in front of a disk tier:
//! every memory miss deserializes the module again into the engine, which
//! keeps the old copy's code until the engine is dropped. Without engine
//! generations the process grows without bound (the demo was OOM-killed in
//! under a minute); with them it must level off. The run lasts
//! `TIERSCOPE_CHURN_SECS` seconds (default 120).
//!
//! The test runs in a process of its own ([`in_own_process`]), so that the
//! process's resident memory is this test's alone. Prints the RSS curve (run
//! with `--nocapture`).

use std::time::{Duration, Instant};

use crate::common::{in_own_process, process_memory::rss_bytes};
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use rand_distr::Zipf;
use tierscope::{
    EngineRecycling, FileSystemCache, MemoryCache, ModuleCache, ModuleHash, ModuleLoader, corpus,
};
use wasmer::Engine;

const MODULES: u64 = 120;
const COMPARE_REQUESTS: usize = 6_000;

struct Corpus {
    modules: Vec<(ModuleHash, Vec<u8>)>,
    artifact_bytes: u64,
    /// A disk tier holding every module, compiled once: the runs below
    /// only deserialize.
    disk: tempfile::TempDir,
}

async fn corpus() -> Corpus {
    let engine = Engine::default();
    let disk = tempfile::tempdir().unwrap();
    let tier = FileSystemCache::open(disk.path(), 1 << 30).unwrap();
    let mut artifact_bytes = 0;
    let mut modules = Vec::new();
    for seed in 0..MODULES {
        let wasm = corpus::module(2_000 + (seed as usize % 5) * 1_500, 7_000 + seed);
        let key = ModuleHash::new(&wasm);
        let module = wasmer::Module::new(&engine, &wasm).unwrap();
        artifact_bytes += module.serialize().unwrap().len() as u64;
        tier.save(key, &engine, &module).await.unwrap();
        modules.push((key, wasm));
    }
    Corpus {
        modules,
        artifact_bytes,
        disk,
    }
}

/// The request stream: module indices, Zipf-distributed, the same for
/// every run with the same seed.
fn stream(seed: u64) -> impl FnMut() -> usize {
    let zipf = Zipf::new(MODULES as f64, 0.9).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    move || rng.sample(zipf) as usize - 1
}

type Loader = ModuleLoader<Box<dyn ModuleCache + Send + Sync>>;

fn stack(corpus: &Corpus, memory_bytes: u64, budget: u64) -> Loader {
    let cache: Box<dyn ModuleCache + Send + Sync> = Box::new(
        MemoryCache::builder(memory_bytes)
            .shards(1)
            .build()
            .with_fallback(FileSystemCache::open(corpus.disk.path(), 1 << 30).unwrap()),
    );
    let engines = EngineRecycling::new(Engine::default).code_budget(budget);
    ModuleLoader::with_engines("churn", cache, engines)
}

/// Ask for one module; true when the memory tier answered.
async fn request(loader: &Loader, m: &(ModuleHash, Vec<u8>)) -> bool {
    if loader.load_now(m.0).is_some() {
        return true;
    }
    loader.load_with_hash(m.0, &m.1).await.unwrap();
    false
}

/// The memory tier's hit ratio over the first `n` requests of the stream
/// (every miss is a disk hit: the disk tier holds every module).
async fn memory_hit_ratio(loader: &Loader, corpus: &Corpus, n: usize) -> f64 {
    let mut next = stream(42);
    let mut hits = 0usize;
    for _ in 0..n {
        if request(loader, &corpus.modules[next()]).await {
            hits += 1;
        }
    }
    hits as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_levels_off_under_churn_and_hit_ratios_hold() {
    if !in_own_process("engine_churn::resident_memory_levels_off_under_churn_and_hit_ratios_hold") {
        return;
    }
    let secs: u64 = std::env::var("TIERSCOPE_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let corpus = corpus().await;
    let memory_bytes = corpus.artifact_bytes / 4;
    let budget = memory_bytes * 8;
    println!(
        "working set {} KiB of artifacts in {MODULES} modules; memory tier {} KiB; code budget {} KiB",
        corpus.artifact_bytes >> 10,
        memory_bytes >> 10,
        budget >> 10
    );

    // Without recycling: the reference hit ratio (a bounded run: it leaks).
    let reference = {
        let loader = stack(&corpus, memory_bytes, u64::MAX);
        let r = memory_hit_ratio(&loader, &corpus, COMPARE_REQUESTS).await;
        assert_eq!(loader.generation().number(), 1);
        r
    };

    // With recycling: the same requests first...
    let baseline = rss_bytes();
    let s = stack(&corpus, memory_bytes, budget);
    let recycled = memory_hit_ratio(&s, &corpus, COMPARE_REQUESTS).await;
    let switches = s.generation().number() - 1;
    println!(
        "memory hit ratio without recycling {reference:.4}, with {recycled:.4} ({switches} generation switches)"
    );
    assert!(
        switches > 0,
        "no generation switch in the compared requests"
    );
    assert!(
        (reference - recycled).abs() <= 0.02,
        "memory hit ratio {reference:.4} without recycling, {recycled:.4} with"
    );

    // ...then churn for the rest of the run, sampling resident memory.
    let mut next = stream(7);
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut last_sample = Instant::now();
    let mut first_switch: Option<usize> = None;
    let mut requests = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        for _ in 0..200 {
            request(&s, &corpus.modules[next()]).await;
            requests += 1;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            let generation = s.generation().number();
            samples.push((started.elapsed().as_secs_f64(), rss_bytes(), generation));
            if generation > 1 && first_switch.is_none() {
                first_switch = Some(samples.len() - 1);
            }
        }
    }
    println!(
        "{requests} requests in {secs} s; RSS baseline {} MiB",
        baseline >> 20
    );
    for (t, rss, generation) in &samples {
        println!("t={t:6.1}s rss={:6} MiB generation={generation}", rss >> 20);
    }

    let first_switch = first_switch.expect("the code budget never started a new generation");
    let after: Vec<u64> = samples[first_switch..].iter().map(|s| s.1).collect();
    assert!(
        after.len() >= 6,
        "too few samples after the first switch: {}",
        after.len()
    );
    let third = after.len() / 3;
    let middle_peak = *after[third..2 * third].iter().max().unwrap();
    let last_peak = *after[2 * third..].iter().max().unwrap();
    // Levelled off: the last third never climbs above the middle third's
    // peak by more than 10 % (plus 16 MiB of allocator noise).
    assert!(
        last_peak <= middle_peak + middle_peak / 10 + (16 << 20),
        "resident memory still growing: middle peak {} MiB, last peak {} MiB",
        middle_peak >> 20,
        last_peak >> 20
    );
    // Bounded: growth over the baseline within twice (memory tier +
    // budget), plus 64 MiB for the runtime, allocator and in-flight work.
    let bound = 2 * (memory_bytes + budget) + (64 << 20);
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    assert!(
        peak.saturating_sub(baseline) <= bound,
        "resident memory grew {} MiB over the baseline; bound {} MiB",
        peak.saturating_sub(baseline) >> 20,
        bound >> 20
    );
}
