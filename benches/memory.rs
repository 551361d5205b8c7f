//! Memory-tier hits, each beside its baseline in one run:
//! - the floor: a `DashMap` get + `Module` clone;
//! - the candidates for the tier's eviction policy: moka (TinyLFU) and
//!   quick_cache (S3-FIFO/CLOCK-Pro), both weighted;
//! - the tier itself, bare and instrumented with the Prometheus recorder
//!   installed, through the synchronous hit path and through the async trait.
//!
//! `cargo bench --bench memory`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use futures::FutureExt;
use tierscope::{
    InstrumentExt, MemoryCache, ModuleCache, ModuleHash, corpus, engine::engine_key,
    observe::prometheus, tier::memory::KeyHasher,
};
use wasmer::{Engine, Module};

const KEYS: usize = 64;

fn setup() -> (Engine, Vec<(ModuleHash, Module)>) {
    let engine = Engine::default();
    let modules = (0..KEYS as u64)
        .map(|i| {
            let wasm = corpus::tiny(i);
            (ModuleHash::new(&wasm), Module::new(&engine, &wasm).unwrap())
        })
        .collect();
    (engine, modules)
}

fn bench(c: &mut Criterion) {
    // The recorder must exist before the instrumented tier registers handles.
    let handle = prometheus::install().expect("install the Prometheus recorder");
    let (engine, modules) = setup();
    let keys: Vec<ModuleHash> = modules.iter().map(|(k, _)| *k).collect();
    let ek = engine_key(&engine);

    // The floor gets the same cheap key hasher as the tier: apples to apples.
    let floor: DashMap<(ModuleHash, tierscope::engine::EngineKey), Module, KeyHasher> =
        DashMap::with_hasher(KeyHasher::default());
    let moka_cache: moka::sync::Cache<(ModuleHash, tierscope::engine::EngineKey), Module> =
        moka::sync::Cache::builder()
            .weigher(|_, _| 1000)
            .max_capacity(1 << 30)
            .build();
    let quick: quick_cache::sync::Cache<
        (ModuleHash, tierscope::engine::EngineKey),
        Module,
        quick_cache::UnitWeighter,
        KeyHasher,
    > = quick_cache::sync::Cache::with(
        KEYS * 2,
        KEYS as u64 * 2,
        quick_cache::UnitWeighter,
        KeyHasher::default(),
        Default::default(),
    );
    let bare = MemoryCache::new(1 << 30);
    let spied = MemoryCache::new(1 << 30).instrumented("bench", "memory");
    for (k, m) in &modules {
        floor.insert((*k, ek), m.clone());
        moka_cache.insert((*k, ek), m.clone());
        quick.insert((*k, ek), m.clone());
        futures::executor::block_on(bare.save(*k, &engine, m)).unwrap();
        futures::executor::block_on(spied.save(*k, &engine, m)).unwrap();
    }

    let mut g = c.benchmark_group("memory_hit");
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % KEYS;
        keys[i]
    };
    g.bench_function("dashmap_get_clone_floor", |b| {
        b.iter(|| black_box(floor.get(&(next(), engine_key(&engine))).map(|m| m.clone())))
    });
    g.bench_function("moka_sync_get", |b| {
        b.iter(|| black_box(moka_cache.get(&(next(), engine_key(&engine)))))
    });
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| black_box(quick.get(&(next(), engine_key(&engine)))))
    });
    g.bench_function("tier_bare_load_now", |b| {
        b.iter(|| black_box(bare.load_now(next(), &engine)))
    });
    g.bench_function("tier_instrumented_load_now", |b| {
        b.iter(|| black_box(spied.load_now(next(), &engine)))
    });
    g.bench_function("tier_bare_load_async", |b| {
        b.iter(|| black_box(bare.load(next(), &engine).now_or_never()))
    });
    g.bench_function("tier_instrumented_load_async", |b| {
        b.iter(|| black_box(spied.load(next(), &engine).now_or_never()))
    });
    g.finish();
    black_box(handle.render().len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
