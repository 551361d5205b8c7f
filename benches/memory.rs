//! Memory-tier hits, each beside its baseline in one run (the Prometheus
//! recorder is installed for the whole run):
//!
//! - `memory_hit`: the floor (a `DashMap` get + `Module` clone), the
//!   candidate policies (moka, quick_cache), the tier bare and instrumented,
//!   synchronously (`load_now`) and through the async trait (`load`), and
//!   the loader with a precomputed hash on a memory hit;
//! - `hash`: SHA-256 of the wasm (what `load_into` without a hash
//!   adds), for 10 KB, 1 MB and 5 MB;
//! - `threads`: memory hits from 1 and 2 threads, per-operation time of the
//!   whole group (throughput ratio = time(1) / time(2) * 2).
//!
//! Generated modules only, on purpose: a memory hit clones a `Module` (a
//! reference count) whatever its size, and the loader's memory hit is the
//! same. The real third-party modules (`scripts/fetch-real-modules`) are
//! used where size matters: disk hits (`--bench disk`), Redis hits
//! (`--features redis --bench redis`), and the loader's and the stack's
//! disk hits against wasmer-wasix's (`--features wasix --bench wasix`).
//! The bench says so on stderr when it starts.
//!
//! `cargo bench --bench memory`

use std::{
    hint::black_box,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use futures::FutureExt;
use tierscope::{
    InstrumentExt, MemoryCache, ModuleCache, ModuleHash, ModuleLoader, corpus,
    engine::{EngineKey, engine_key},
    internals::KeyHasher,
    observe::prometheus,
};
use wasmer::{Engine, Module};

const KEYS: usize = 64;

struct Fixture {
    engine: Engine,
    keys: Vec<ModuleHash>,
    wasm: Vec<Vec<u8>>,
    modules: Vec<Module>,
}

fn fixture() -> Fixture {
    let engine = Engine::default();
    let wasm: Vec<Vec<u8>> = (0..KEYS as u64).map(corpus::tiny).collect();
    let modules = wasm
        .iter()
        .map(|w| Module::new(&engine, w).unwrap())
        .collect();
    Fixture {
        keys: wasm.iter().map(ModuleHash::new).collect(),
        engine,
        wasm,
        modules,
    }
}

fn fill(cache: &impl ModuleCache, f: &Fixture) {
    for (k, m) in f.keys.iter().zip(&f.modules) {
        futures::executor::block_on(cache.save(*k, &f.engine, m)).unwrap();
    }
}

fn memory_hit(c: &mut Criterion) {
    let f = fixture();
    let engine = &f.engine;
    let ek = engine_key(engine);

    // The floor gets the same cheap key hasher as the tier: apples to apples.
    let floor: DashMap<(ModuleHash, EngineKey), Module, KeyHasher> =
        DashMap::with_hasher(KeyHasher::default());
    let moka_cache: moka::sync::Cache<(ModuleHash, EngineKey), Module> =
        moka::sync::Cache::builder()
            .weigher(|_, _| 1000)
            .max_capacity(1 << 30)
            .build();
    let quick: quick_cache::sync::Cache<
        (ModuleHash, EngineKey),
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
    // The same cache keyed by engine *instance*, as the memory tier is now
    // (before: by configuration, through `engine_key`'s thread-local).
    let quick_by_instance: quick_cache::sync::Cache<
        (ModuleHash, wasmer::EngineId),
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
    for (k, m) in f.keys.iter().zip(&f.modules) {
        floor.insert((*k, ek), m.clone());
        moka_cache.insert((*k, ek), m.clone());
        quick.insert((*k, ek), m.clone());
        quick_by_instance.insert((*k, engine.id()), m.clone());
    }
    let bare = MemoryCache::new(1 << 30);
    let spied = MemoryCache::new(1 << 30).instrumented("bench", "memory");
    fill(&bare, &f);
    fill(&spied, &f);
    let stack = MemoryCache::new(1 << 30)
        .instrumented("bench-loader", "memory")
        .with_fallback(MemoryCache::new(1 << 30).instrumented("bench-loader", "lower"));
    fill(&stack, &f);
    let loader = ModuleLoader::new("bench-loader", stack);
    // The managed path: the loader's own engine generation, a LoadedModule
    // (module + engine) per hit.
    let managed = ModuleLoader::new(
        "bench-managed",
        MemoryCache::new(1 << 30).instrumented("bench-managed", "memory"),
    );
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    for w in &f.wasm {
        rt.block_on(managed.load(w)).expect("valid wasm");
    }

    let mut g = c.benchmark_group("memory_hit");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % KEYS;
        i
    };
    g.bench_function("dashmap_get_clone_floor", |b| {
        b.iter(|| {
            black_box(
                floor
                    .get(&(f.keys[next()], engine_key(engine)))
                    .map(|m| m.clone()),
            )
        })
    });
    g.bench_function("moka_sync_get", |b| {
        b.iter(|| black_box(moka_cache.get(&(f.keys[next()], engine_key(engine)))))
    });
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| black_box(quick.get(&(f.keys[next()], engine_key(engine)))))
    });
    g.bench_function("quick_cache_get_by_engine_instance", |b| {
        b.iter(|| black_box(quick_by_instance.get(&(f.keys[next()], engine.id()))))
    });
    g.bench_function("tier_bare_load_now", |b| {
        b.iter(|| black_box(bare.load_now(f.keys[next()], engine)))
    });
    g.bench_function("tier_instrumented_load_now", |b| {
        b.iter(|| black_box(spied.load_now(f.keys[next()], engine)))
    });
    g.bench_function("tier_bare_load_async", |b| {
        b.iter(|| black_box(bare.load(f.keys[next()], engine).now_or_never()))
    });
    g.bench_function("tier_instrumented_load_async", |b| {
        b.iter(|| black_box(spied.load(f.keys[next()], engine).now_or_never()))
    });
    g.bench_function("loader_with_hash_memory_hit", |b| {
        b.iter(|| {
            let n = next();
            black_box(
                loader
                    .load_into_with_hash(engine, f.keys[n], &f.wasm[n])
                    .now_or_never(),
            )
        })
    });
    g.bench_function("loader_get_memory_hit", |b| {
        b.iter(|| black_box(loader.load_now_into(engine, f.keys[next()])))
    });
    g.bench_function("loader_load_now_memory_hit", |b| {
        b.iter(|| black_box(managed.load_now(f.keys[next()])))
    });
    g.finish();
}

fn hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (label, size) in [("10KB", 10_000usize), ("1MB", 1 << 20), ("5MB", 5 << 20)] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("sha256_module_hash", label), |b| {
            b.iter(|| black_box(ModuleHash::new(black_box(&bytes))))
        });
    }
    g.finish();
}

/// Time `iters` memory hits spread over `threads` threads (wall time of the
/// whole group, so per-operation time falls as threads scale). With
/// `shared_keys` every thread cycles over all keys; otherwise each thread
/// has its own share of them (as when requests for different modules land
/// on different threads).
fn hits_on_threads(
    cache: &Arc<dyn ModuleCache + Send + Sync>,
    f: &Arc<Fixture>,
    threads: usize,
    iters: u64,
    shared_keys: bool,
) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let per = iters / threads as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, f, barrier) = (cache.clone(), f.clone(), barrier.clone());
            let (span, base) = if shared_keys {
                (KEYS, t * 17)
            } else {
                (KEYS / threads, t * (KEYS / threads))
            };
            std::thread::spawn(move || {
                barrier.wait();
                let mut i = 0;
                for _ in 0..per {
                    i = (i + 1) % span;
                    black_box(cache.load_now(f.keys[(base + i) % KEYS], &f.engine));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn threads(c: &mut Criterion) {
    let f = Arc::new(fixture());
    let bare: Arc<dyn ModuleCache + Send + Sync> = Arc::new(MemoryCache::new(1 << 30));
    let spied: Arc<dyn ModuleCache + Send + Sync> =
        Arc::new(MemoryCache::new(1 << 30).instrumented("bench-threads", "memory"));
    fill(&bare, &f);
    fill(&spied, &f);
    let mut g = c.benchmark_group("threads");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for (name, cache) in [("bare", &bare), ("instrumented", &spied)] {
        for shared in [false, true] {
            for n in [1usize, 2] {
                let keys = if shared { "shared_keys" } else { "own_keys" };
                g.bench_function(BenchmarkId::new(name, format!("{keys}/{n}_threads")), |b| {
                    b.iter_custom(|iters| {
                        hits_on_threads(cache, &f, n, iters.max(n as u64), shared)
                    })
                });
            }
        }
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    eprintln!(
        "memory bench: REAL MODULES NOT USED here (a memory hit does not depend on module \
         size); real modules: --bench disk, --features redis --bench redis, \
         --features wasix --bench wasix"
    );
    // The recorder must exist before instrumented tiers register handles.
    let handle = prometheus::install().expect("install the Prometheus recorder");
    memory_hit(c);
    hash(c);
    threads(c);
    black_box(handle.render().len());
}

criterion_group!(benches, all);
criterion_main!(benches);
