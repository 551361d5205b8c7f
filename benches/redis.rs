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
//! - where a hit's time goes, for the buffer question of issue 14 (is
//!   deserializing from the owned buffer a network read produces slower
//!   than from resident or mapped pages, and why?):
//!   - `get_drop`: the raw `GET` alone, the value dropped at once (the
//!     allocator hands the same pages back next time);
//!   - `get_keep`: the raw `GET`, the value kept until the batch ends (as a
//!     loaded module keeps its buffer: fresh pages every time);
//!   - `deserialize_resident`: `Module::deserialize` of an artifact fetched
//!     once, whose pages are resident (no network, no fresh pages);
//!   - `copy_keep`: copy the artifact into a fresh heap buffer, kept;
//!   - `copy_then_deserialize`: the same copy, then deserialize from it;
//!   - `copy_anon_then_deserialize`: copy into a fresh anonymous mapping
//!     (transparent huge pages requested), then deserialize from it;
//!
//! on the real third-party modules of `scripts/fetch-real-modules` (loudly
//! skipped when missing) and on generated ~25 KB and ~1 MB artifacts. Each
//! batch of iterations runs on a fresh engine (wasmer keeps code memory
//! until its engine is dropped), made and dropped outside the timing, and
//! so are the buffers kept by `*_keep`.
//!
//! `scripts/fetch-real-modules && cargo bench --features redis --bench redis`

#[path = "../tests/it/support/redis_server.rs"]
mod redis_server;

#[path = "support/real_modules.rs"]
mod real_modules;

use std::{
    cell::RefCell,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use futures::{FutureExt, future::BoxFuture};
use redis::Commands;
use redis_server::RedisServer;
use tierscope::{ModuleCache, ModuleHash, RedisCache, corpus, entry, internals::redis::MAC_LEN};
use wasmer::{Engine, Module};

/// (label, wasm bytes) giving artifacts of about 25 KB and 1 MB (as in
/// `benches/disk.rs`).
const SIZES: [(&str, usize); 2] = [("25KB", 3_700), ("1MB", 210_000)];

thread_local! {
    /// Buffers the `*_keep` variants keep until their batch ends (emptied
    /// outside the timing), as a loaded module keeps its artifact.
    static KEPT: RefCell<Vec<Bytes>> = const { RefCell::new(Vec::new()) };
}

/// A decomposition step over the resident artifact.
type BufOp = fn(&Engine, &Bytes);

fn keep(b: Bytes) {
    KEPT.with(|k| k.borrow_mut().push(b));
}

/// `bytes` copied into a fresh anonymous mapping (transparent huge pages
/// requested), read-only, as `Bytes`.
fn anon_copy(bytes: &[u8]) -> Bytes {
    let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    map.copy_from_slice(bytes);
    Bytes::from_owner(map.make_read_only().unwrap())
}

/// # Safety
/// `artifact` must be this wasmer's serialization for `engine`'s
/// configuration.
#[allow(unsafe_code)]
unsafe fn deserialize(engine: &Engine, artifact: Bytes) -> Module {
    // SAFETY: the caller's contract.
    unsafe { Module::deserialize(engine, artifact) }.unwrap()
}

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
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let inline = RedisCache::builder(server.url())
        .mac_key(key)
        .timeout(Duration::from_secs(10))
        .blocking_threshold(u64::MAX)
        .build()
        .unwrap();
    let raw = rt
        .block_on(server.client().get_multiplexed_async_connection())
        .unwrap();

    let mut modules: Vec<(String, Vec<u8>, bool)> = real_modules::load()
        .into_iter()
        .map(|(name, wasm)| (name.to_string(), wasm, true))
        .collect();
    if modules.is_empty() {
        eprintln!("redis bench: NO REAL MODULE, generated artifacts only");
    }
    for (label, wasm_size) in SIZES {
        modules.push((label.to_string(), corpus::module(wasm_size, 11), false));
    }

    let mut g = c.benchmark_group("redis_hit");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (label, wasm, real) in &modules {
        let label = label.as_str();
        let hash = ModuleHash::new(wasm);
        let module = if *real {
            real_modules::compile(&engine, label, wasm)
        } else {
            Module::new(&engine, wasm).unwrap()
        };
        let artifact = module.serialize().unwrap().len() as u64;
        rt.block_on(tier.save(hash, &engine, &module)).unwrap();
        let redis_key = tier.redis_key(hash, &engine);
        eprintln!("{label}: artifact {artifact} bytes");
        if artifact > 16 << 20 {
            // About 0.1 s a hit: ten flat samples.
            g.sample_size(10).sampling_mode(SamplingMode::Flat);
        } else {
            g.sample_size(30).sampling_mode(SamplingMode::Auto);
        }

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
                KEPT.with(|k| k.borrow_mut().clear());
                done += n;
            }
            total
        };
        let get = |conn: &redis::aio::MultiplexedConnection| {
            let mut conn = conn.clone();
            let redis_key = redis_key.clone();
            async move {
                let value: Bytes = redis::cmd("GET")
                    .arg(&redis_key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                value
            }
        };

        g.bench_function(
            BenchmarkId::new("raw_get_deserialize_baseline", label),
            |b| {
                b.iter_custom(|iters| {
                    timed(iters, &|engine| {
                        let get = get(&raw);
                        async move {
                            let value = get.await;
                            let artifact = value.slice(entry::HEADER_LEN..value.len() - MAC_LEN);
                            // SAFETY: the artifact was produced by `Module::serialize`
                            // for this engine configuration by `tier.save` above, on
                            // this machine, and nothing else writes to this private
                            // server.
                            #[allow(unsafe_code)]
                            black_box(unsafe { deserialize(&engine, artifact) });
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

        // Where the time goes.
        g.bench_function(BenchmarkId::new("get_drop", label), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|_| {
                    let get = get(&raw);
                    async move { drop(black_box(get.await)) }.boxed()
                })
            })
        });
        g.bench_function(BenchmarkId::new("get_keep", label), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|_| {
                    let get = get(&raw);
                    async move { keep(black_box(get.await)) }.boxed()
                })
            })
        });
        let value: Vec<u8> = server.connection().get(&redis_key).unwrap();
        let resident = Bytes::from(value.clone()).slice(entry::HEADER_LEN..value.len() - MAC_LEN);
        let sync_op = |f: BufOp| {
            let resident = resident.clone();
            move |engine: Engine| {
                f(&engine, &resident);
                futures::future::ready(()).boxed()
            }
        };
        let ops: [(&str, BufOp); 4] = [
            ("deserialize_resident", |e, a| {
                // SAFETY: as above.
                #[allow(unsafe_code)]
                black_box(unsafe { deserialize(e, a.clone()) });
            }),
            ("copy_keep", |_, a| {
                keep(black_box(Bytes::copy_from_slice(a)))
            }),
            ("copy_then_deserialize", |e, a| {
                // SAFETY: as above.
                #[allow(unsafe_code)]
                black_box(unsafe { deserialize(e, Bytes::copy_from_slice(a)) });
            }),
            ("copy_anon_then_deserialize", |e, a| {
                // SAFETY: as above.
                #[allow(unsafe_code)]
                black_box(unsafe { deserialize(e, anon_copy(a)) });
            }),
        ];
        for (name, f) in ops {
            let op = sync_op(f);
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| timed(iters, &op))
            });
        }
        // The checks the tier adds, alone.
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
