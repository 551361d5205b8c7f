//! Engine switches seen by an operator: the memory tier's metrics count what
//! callers asked for and got, exactly, however often the loader recycles
//! its engine; the switches' own reloads are counted apart; live sizing's
//! projection at 1x stays with the measured ratio; and no caller waits for
//! a switch.

use crate::common::{
    rng::{Rng, zipf_cdf},
    snapshot::{counter, take},
};
use metrics_util::debugging::DebuggingRecorder;
use tierscope::{
    EngineRecycling, FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleHash,
    ModuleLoader, Served, TierName, corpus,
    sizing::live::{LiveSizing, SizingExt, SizingOptions, Window},
};
use wasmer::Engine;

const CACHE: &str = "switches";

/// `n` generated modules of 3 to 30 KB of wasm, compiled once into `dir`'s
/// disk tier so that the run below only loads.
async fn corpus_on_disk(dir: &std::path::Path, n: u64) -> (Vec<(ModuleHash, Vec<u8>)>, u64) {
    let engine = Engine::default();
    let disk = FileSystemCache::open(dir, 1 << 30).unwrap();
    let mut modules = Vec::new();
    let mut artifact_bytes = 0;
    for i in 0..n {
        let wasm = corpus::module(3_000 + (i as usize * 7_919) % 27_000, 700 + i);
        let key = ModuleHash::new(&wasm);
        let module = wasmer::Module::new(&engine, &wasm).unwrap();
        artifact_bytes += module.serialize().unwrap().len() as u64;
        disk.save(key, &engine, &module).await.unwrap();
        modules.push((key, wasm));
    }
    (modules, artifact_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hit_ratios_are_exact_and_modelled_across_forced_switches() {
    // Arrange: the README's stack (sized memory over sized disk) and a
    // loader whose small code budget switches engines every few dozen
    // requests; the memory tier holds a third of the working set.
    let dir = tempfile::tempdir().unwrap();
    let (modules, artifact_bytes) = corpus_on_disk(dir.path(), 60).await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (sizing, loader) = metrics::with_local_recorder(&recorder, || {
        let sizing = LiveSizing::new(
            CACHE,
            SizingOptions::default()
                .window(Window::requests(100_000))
                .background(false),
        );
        let stack = MemoryCache::builder(artifact_bytes / 3)
            .shards(1)
            .build()
            .instrumented(CACHE, "memory")
            .with_sizing(&sizing)
            .with_fallback(
                FileSystemCache::open(dir.path(), 1 << 30)
                    .unwrap()
                    .instrumented(CACHE, "disk")
                    .with_sizing(&sizing),
            );
        let engines = EngineRecycling::new(Engine::default).code_budget(256 << 10);
        (sizing, ModuleLoader::with_engines(CACHE, stack, engines))
    });
    let cdf = zipf_cdf(modules.len(), 0.9);
    let mut rng = Rng(0x5317c4);

    // Act: 3,000 requests, one at a time, counting what each caller got.
    const REQUESTS: u64 = 3_000;
    let (mut from_memory, mut memory_on_second_ask) = (0u64, 0u64);
    let memory = Served::Tier(Some(TierName::intern("memory")));
    for _ in 0..REQUESTS {
        let (key, wasm) = &modules[rng.pick(&cdf)];
        let loaded = loader.load_with_hash(*key, wasm).await.unwrap();
        from_memory += u64::from(loaded.served() == Served::Memory);
        // A switch between the caller's memory miss and its load: the next
        // engine's copy served it.
        memory_on_second_ask += u64::from(loaded.served() == memory);
    }
    while loader.in_flight() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let s = take(&snapshotter);
    sizing.flush();
    let report = sizing.report();

    // Assert: many switches, counted on their own.
    let switches = loader.generation().number() - 1;
    assert!(switches >= 20, "only {switches} engine switches");
    let mem = |r| [("cache", CACHE), ("tier", "memory"), ("result", r)];
    let dsk = |r| [("cache", CACHE), ("tier", "disk"), ("result", r)];
    let reloads = counter(&s, "tierscope_reloads_total", &dsk("hit"));
    assert!(reloads > 0, "the switches' reloads are counted");
    // The memory tier counted each caller's request once: its hits are
    // the loads answered from memory, at once or (a switch between the
    // caller's synchronous miss and its lookup: the next engine's copy)
    // on the lookup that followed, which is the one that counted.
    let lookups = "tierscope_lookups_total";
    let (hits, misses) = (
        counter(&s, lookups, &mem("hit")),
        counter(&s, lookups, &mem("miss")),
    );
    assert_eq!(hits + misses, REQUESTS, "{reloads} reloads");
    assert_eq!(hits, from_memory + memory_on_second_ask);
    // The disk tier saw exactly the memory tier's misses (every module is
    // on disk: all hits), and the reloads on their own.
    assert_eq!(counter(&s, lookups, &dsk("hit")), misses);
    assert_eq!(counter(&s, lookups, &dsk("miss")), 0);
    assert_eq!(
        counter(
            &s,
            "tierscope_compilations_total",
            &[("cache", CACHE), ("result", "ok")]
        ),
        0
    );
    // Promotions are the callers' disk hits, not the reloads.
    let promoted = counter(
        &s,
        "tierscope_promotions_total",
        &[
            ("cache", CACHE),
            ("from", "disk"),
            ("to", "memory"),
            ("result", "ok"),
        ],
    );
    let failed = counter(
        &s,
        "tierscope_promotions_total",
        &[
            ("cache", CACHE),
            ("from", "disk"),
            ("to", "memory"),
            ("result", "error"),
        ],
    );
    assert_eq!((promoted, failed), (misses, 0));
    // Live sizing saw the callers' stream: its projection at 1x is the
    // measured ratio, within two points.
    let memory = report.tier("memory").unwrap();
    assert_eq!(memory.window_requests, REQUESTS);
    let measured = hits as f64 / REQUESTS as f64;
    assert!((memory.measured_hit_ratio - measured).abs() < 1e-9);
    let projected = memory.at(1.0).unwrap().hit_ratio;
    println!(
        "memory tier: measured {measured:.4}, projected at 1x {projected:.4}, over {switches} switches and {reloads} reloads"
    );
    assert!(
        (projected - measured).abs() <= 0.02,
        "projection {projected} vs measured {measured} over {switches} switches"
    );
}
