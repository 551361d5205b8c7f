//! Why cache at all: for generated modules of about 10 KB, 1 MB and 5 MB of
//! wasm, the compile (what a miss costs) beside a memory hit, a disk hit
//! and, with the `redis` feature, a remote hit, in one run.
//!
//! `cargo bench --bench why_cache` (add `--features redis` for the remote
//! column; it starts its own redis-server).

use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tierscope::{FileSystemCache, MemoryCache, ModuleCache, ModuleHash, corpus};
use wasmer::{Engine, Module};

#[cfg(feature = "redis")]
#[path = "../tests/it/support/redis_server.rs"]
mod redis_server;

const SIZES: [(&str, usize); 3] = [("10KB", 10_000), ("1MB", 1_000_000), ("5MB", 5_000_000)];

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    #[cfg(feature = "redis")]
    let server = redis_server::RedisServer::start();
    let mut g = c.benchmark_group("why_cache");
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    for (label, size) in SIZES {
        let engine = Engine::default();
        let wasm = corpus::module(size, 5);
        let key = ModuleHash::new(&wasm);
        let module = Module::new(&engine, &wasm).unwrap();
        eprintln!(
            "{label}: wasm {} bytes, artifact {} bytes",
            wasm.len(),
            module.serialize().unwrap().len()
        );
        g.measurement_time(Duration::from_secs(if size > 2_000_000 { 30 } else { 5 }));
        g.bench_function(BenchmarkId::new("compile", label), |b| {
            // A fresh engine now and then: an engine keeps every module's
            // code memory until it is dropped (wasmer #4377).
            b.iter_batched(
                Engine::default,
                |e| black_box(Module::new(&e, &wasm).unwrap()),
                criterion::BatchSize::PerIteration,
            )
        });
        g.measurement_time(Duration::from_secs(3));

        let memory = MemoryCache::new(1 << 30);
        rt.block_on(memory.save(key, &engine, &module)).unwrap();
        g.bench_function(BenchmarkId::new("memory_hit", label), |b| {
            b.iter(|| black_box(memory.load(key, &engine).now_or_never().unwrap().unwrap()))
        });

        let disk = FileSystemCache::builder(tmp.path().join(label))
            .capacity(1 << 30)
            .inline_io(true)
            .build()
            .unwrap();
        rt.block_on(disk.save(key, &engine, &module)).unwrap();
        g.bench_function(BenchmarkId::new("disk_hit", label), |b| {
            b.iter_batched(
                Engine::default,
                |e| black_box(disk.load(key, &e).now_or_never().unwrap().unwrap()),
                criterion::BatchSize::PerIteration,
            )
        });

        #[cfg(feature = "redis")]
        {
            let remote = tierscope::RedisCache::builder(server.url())
                .mac_key(tierscope::MacKey::new([7; 32]))
                .build()
                .unwrap();
            rt.block_on(remote.save(key, &engine, &module)).unwrap();
            g.bench_function(BenchmarkId::new("remote_hit", label), |b| {
                b.iter_batched(
                    Engine::default,
                    |e| black_box(rt.block_on(remote.load(key, &e)).unwrap()),
                    criterion::BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
