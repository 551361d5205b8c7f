//! What the wasix adapter adds to a memory hit, beside the bare tier in the
//! same run (the Prometheus recorder installed for the whole run):
//!
//! - `bare tier load`: tierscope's `MemoryCache::load().await`;
//! - `instrumented tier load`: the same tier behind the spy;
//! - `adapter load`: that instrumented tier through `WasixCache` (wasix's
//!   trait);
//! - `Runtime::load_hashed_module`: the whole path a wasix runtime takes
//!   for a module it already knows the hash of, over that adapter;
//! - `wasix SharedCache load`: wasix's own in-memory cache, for reference.
//!
//! Every future completes on its first poll (`now_or_never`).
//!
//! `cargo bench --features wasix --bench wasix`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tierscope::{
    InstrumentExt, MemoryCache, ModuleCache, ModuleHash, corpus,
    observe::prometheus,
    wasix::{WasixCache, runtime_with_engine},
};
use wasmer::{Engine, Module};
use wasmer_wasix::runtime::{
    Runtime,
    module_cache::{HashedModuleData, ModuleCache as WasixModuleCache, SharedCache},
};

fn all(c: &mut Criterion) {
    let _metrics = prometheus::install().expect("install the Prometheus recorder");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _context = tokio.enter();
    let engine = Engine::default();
    let wasm = corpus::tiny(1);
    let key = ModuleHash::new(&wasm);
    let module = Module::new(&engine, &wasm).unwrap();

    let bare = MemoryCache::new(64 << 20);
    let spied = MemoryCache::new(64 << 20).instrumented("bench-wasix", "memory");
    let adapter = WasixCache::new("bench-wasix", spied.clone());
    let shared = SharedCache::default();
    let runtime = runtime_with_engine(
        tokio.handle().clone(),
        engine.clone(),
        WasixCache::new("bench-wasix", spied.clone()),
    );
    futures::executor::block_on(async {
        bare.save(key, &engine, &module).await.unwrap();
        spied.save(key, &engine, &module).await.unwrap();
        WasixModuleCache::save(&shared, key, &engine, &module)
            .await
            .unwrap();
    });
    let data = HashedModuleData::new(wasm.clone());
    assert!(
        runtime
            .load_hashed_module(data.clone(), None)
            .now_or_never()
            .expect("a memory hit completes at once")
            .is_ok()
    );

    let mut g = c.benchmark_group("wasix_memory_hit");
    g.bench_function("bare tier load", |b| {
        b.iter(|| black_box(bare.load(key, &engine).now_or_never()))
    });
    g.bench_function("instrumented tier load", |b| {
        b.iter(|| black_box(spied.load(key, &engine).now_or_never()))
    });
    g.bench_function("adapter load", |b| {
        b.iter(|| black_box(WasixModuleCache::load(&adapter, key, &engine).now_or_never()))
    });
    g.bench_function("Runtime::load_hashed_module", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .load_hashed_module(data.clone(), None)
                    .now_or_never(),
            )
        })
    });
    g.bench_function("wasix SharedCache load", |b| {
        b.iter(|| black_box(WasixModuleCache::load(&shared, key, &engine).now_or_never()))
    });
    g.finish();
}

criterion_group!(benches, all);
criterion_main!(benches);
