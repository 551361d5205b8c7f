//! An object-store hit through [`ObjectsCache::load`] beside its baseline,
//! in one run against one S3 server (s3s-fs, in this process, on a
//! loopback port, as the tests run it):
//! - baseline: a raw `GET` of the same object with the `object_store`
//!   crate (`get().bytes()`, its own pre-sized collect), copied once more
//!   only when the artifact inside is not 16-byte aligned (wasmer refuses
//!   misaligned metadata, so any raw user must), then `unsafe
//!   Module::deserialize` of it (no MAC, no header check, no breaker, no
//!   time bound);
//! - the tier: one `GET` streamed into an aligned buffer, the MAC computed
//!   as the bytes arrive, the header checked, the same deserialize;
//!
//! on the real third-party modules of `scripts/fetch-real-modules` (loudly
//! reported when missing) and a generated ~1 MB artifact. Each batch runs
//! on a fresh engine (wasmer keeps code memory until its engine is
//! dropped), made and dropped outside the timing.
//!
//! `scripts/fetch-real-modules && cargo bench --features objects --bench objects`

#[path = "../tests/it/support/s3_server.rs"]
mod s3_server;

#[path = "support/real_modules.rs"]
mod real_modules;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use object_store::{ObjectStore, ObjectStoreExt};
use s3_server::S3Server;
use tierscope::{ModuleCache, ModuleHash, ObjectsCache, corpus, entry};
use wasmer::{Engine, Module};

/// # Safety
/// `artifact` must be this wasmer's serialization for `engine`'s
/// configuration.
#[allow(unsafe_code)]
unsafe fn deserialize(engine: &Engine, artifact: Bytes) -> Module {
    // SAFETY: the caller's contract.
    unsafe { Module::deserialize(engine, artifact) }.unwrap()
}

/// `bytes` itself when it starts on a 16-byte boundary, else a copy in a
/// fresh allocation (the global allocator's large allocations are 16-byte
/// aligned on the 64-bit targets wasmer supports; checked below).
fn aligned(bytes: Bytes) -> Bytes {
    if (bytes.as_ptr() as usize).is_multiple_of(16) {
        return bytes;
    }
    let copy = Bytes::from(bytes.to_vec());
    assert!(
        (copy.as_ptr() as usize).is_multiple_of(16),
        "the copy is not aligned"
    );
    copy
}

fn raw_store(server: &S3Server) -> Arc<dyn ObjectStore> {
    let builder = server.options().into_iter().fold(
        object_store::aws::AmazonS3Builder::new().with_bucket_name(s3_server::BUCKET),
        |b, (k, v)| b.with_config(k.parse().unwrap(), v),
    );
    Arc::new(builder.build().unwrap())
}

fn bench(c: &mut Criterion) {
    let server = S3Server::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tier = server
        .options()
        .into_iter()
        .fold(
            ObjectsCache::builder(server.url("bench")).mac_key([0x42; 32]),
            |b, (k, v)| b.store_option(k, v),
        )
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let raw = raw_store(&server);

    let mut modules: Vec<(String, Vec<u8>, bool)> = real_modules::load()
        .into_iter()
        .map(|(name, wasm)| (name.to_string(), wasm, true))
        .collect();
    if modules.is_empty() {
        eprintln!("objects bench: NO REAL MODULE, a generated artifact only");
    }
    modules.push(("generated-1MB".into(), corpus::module(210_000, 77), false));

    let mut group = c.benchmark_group("objects_hit");
    group.sampling_mode(SamplingMode::Flat);
    for (name, wasm, real) in &modules {
        let engine = Engine::default();
        let module = if *real {
            real_modules::compile(&engine, name, wasm)
        } else {
            Module::new(&engine, wasm).unwrap()
        };
        let key = ModuleHash::new(wasm);
        rt.block_on(tier.save(key, &engine, &module)).unwrap();
        let path: object_store::path::Path = tier.object_path(key, &engine).as_str().into();
        let size = rt.block_on(raw.head(&path)).unwrap().size;
        group.throughput(criterion::Throughput::Bytes(size));

        group.bench_function(BenchmarkId::new("raw_get_deserialize", name), |b| {
            b.iter_custom(|iters| {
                let engine = Engine::default();
                let start = Instant::now();
                for _ in 0..iters {
                    let value = rt
                        .block_on(async { raw.get(&path).await?.bytes().await })
                        .unwrap();
                    let artifact = aligned(value.slice(entry::HEADER_LEN..value.len() - 32));
                    // SAFETY: saved just above by this wasmer, same engine config.
                    #[allow(unsafe_code)]
                    let m = unsafe { deserialize(&engine, artifact) };
                    std::hint::black_box(m);
                }
                let took = start.elapsed();
                drop(engine);
                took
            })
        });
        group.bench_function(BenchmarkId::new("tier_load", name), |b| {
            b.iter_custom(|iters| {
                let engine = Engine::default();
                let start = Instant::now();
                for _ in 0..iters {
                    let m = rt.block_on(tier.load(key, &engine)).unwrap();
                    std::hint::black_box(m);
                }
                let took = start.elapsed();
                drop(engine);
                took
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    targets = bench
}
criterion_main!(benches);
