//! A remote hit through [`RedisCache::load`] beside its baseline, in one run
//! against one `redis-server` that the bench starts itself:
//! - baseline: a raw `GET` of the same key over a plain multiplexed
//!   connection, then `unsafe Module::deserialize` of the artifact bytes
//!   inside the value (no MAC, no header check, no breaker, no timeout);
//! - the tier as configured by default (values of 256 KiB or more are
//!   verified and deserialized on tokio's blocking pool);
//! - the tier with everything inline (`blocking_threshold(u64::MAX)`), to
//!   show what the hop to the blocking pool costs;
//! - the two checks the tier adds, alone: the BLAKE3 keyed MAC over the
//!   value and the XXH3-128 checksum of the artifact (in `entry::decode`);
//!
//! for a ~25 KB and a ~1 MB artifact. Each batch of iterations runs on a
//! fresh engine (wasmer keeps code memory until its engine is dropped).
//!
//! `cargo bench --features redis --bench redis`

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::{FutureExt, future::BoxFuture};
use redis::Commands;
use redis_server::RedisServer;
use tierscope::{ModuleCache, ModuleHash, RedisCache, corpus, entry, tier::redis::MAC_LEN};
use wasmer::{Engine, Module};

/// (label, wasm bytes) giving artifacts of about 25 KB and 1 MB (as in
/// `benches/disk.rs`).
const SIZES: [(&str, usize); 2] = [("25KB", 3_700), ("1MB", 210_000)];

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::default();
    let key = [0x42; 32];
    let tier = RedisCache::builder(server.url())
        .mac_key(key)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let inline = RedisCache::builder(server.url())
        .mac_key(key)
        .timeout(Duration::from_secs(2))
        .blocking_threshold(u64::MAX)
        .build()
        .unwrap();
    let raw = rt
        .block_on(server.client().get_multiplexed_async_connection())
        .unwrap();

    let mut g = c.benchmark_group("redis_hit");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (label, wasm_size) in SIZES {
        let wasm = corpus::module(wasm_size, 11);
        let hash = ModuleHash::new(&wasm);
        let module = Module::new(&engine, &wasm).unwrap();
        let artifact = module.serialize().unwrap().len() as u64;
        rt.block_on(tier.save(hash, &engine, &module)).unwrap();
        let redis_key = tier.redis_key(hash, &engine);
        eprintln!("{label}: artifact {artifact} bytes");

        // An Engine keeps the code memory of every module it loaded until
        // the engine itself is dropped (wasmer #4377), so each batch of
        // iterations runs on a fresh engine of the same configuration (same
        // deterministic id, so the tier still hits), outside the timing.
        let batch = (512u64 << 20) / artifact.max(1);
        let timed = |iters: u64, op: &dyn Fn(Engine) -> BoxFuture<'static, ()>| -> Duration {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let engine = Engine::default();
                let n = batch.min(iters - done).max(1);
                total += rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        op(engine.clone()).await;
                    }
                    start.elapsed()
                });
                done += n;
            }
            total
        };

        g.bench_function(
            BenchmarkId::new("raw_get_deserialize_baseline", label),
            |b| {
                b.iter_custom(|iters| {
                    timed(iters, &|engine| {
                        let mut conn = raw.clone();
                        let redis_key = redis_key.clone();
                        async move {
                            let value: Bytes = redis::cmd("GET")
                                .arg(&redis_key)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                            let artifact = value.slice(entry::HEADER_LEN..value.len() - MAC_LEN);
                            // SAFETY: the artifact was produced by `Module::serialize`
                            // for this engine configuration by `tier.save` above, on
                            // this machine, and nothing else writes to this private
                            // server.
                            #[allow(unsafe_code)]
                            let module = unsafe { Module::deserialize(&engine, artifact) };
                            black_box(module.unwrap());
                        }
                        .boxed()
                    })
                })
            },
        );
        for (name, cache) in [
            ("redis_cache_load", &tier),
            ("redis_cache_load_inline", &inline),
        ] {
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &|engine| {
                        let cache = cache.clone();
                        async move {
                            black_box(cache.load(hash, &engine).await.unwrap());
                        }
                        .boxed()
                    })
                })
            });
        }
        // Where the difference goes: the checks the tier adds, alone.
        let value: Vec<u8> = server.connection().get(&redis_key).unwrap();
        g.bench_function(BenchmarkId::new("part_blake3_keyed_mac", label), |b| {
            b.iter(|| {
                let mut h = blake3::Hasher::new_keyed(&key);
                h.update(&(redis_key.len() as u64).to_le_bytes());
                h.update(redis_key.as_bytes());
                h.update(&value[..value.len() - MAC_LEN]);
                black_box(h.finalize())
            })
        });
        g.bench_function(BenchmarkId::new("part_xxh3_checksum", label), |b| {
            b.iter(|| {
                black_box(entry::checksum(
                    &value[entry::HEADER_LEN..value.len() - MAC_LEN],
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
