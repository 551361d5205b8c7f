//! Disk-tier hits beside the raw wasmer call they wrap, in one run:
//! `Module::deserialize_from_file` of the same artifact (no checksum, no
//! header) against `FileSystemCache::load` (read, verify header and
//! XXH3-128 checksum, deserialize), for artifacts of about 25 KB, 1 MB and
//! 7 MB. The tier is measured both inline (`inline_io`) and through tokio's
//! blocking pool (the default), next to the raw call through the same pool.
//!
//! `cargo bench --bench disk`

use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tierscope::{FileSystemCache, ModuleCache, ModuleHash, corpus};
use wasmer::{Engine, Module};

/// (label, wasm bytes) giving artifacts of about 25 KB, 1 MB and 7 MB.
const SIZES: [(&str, usize); 3] = [("25KB", 3_700), ("1MB", 210_000), ("7MB", 1_450_000)];

fn bench(c: &mut Criterion) {
    let engine = Engine::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("disk_hit");
    g.measurement_time(Duration::from_secs(3));
    for (label, wasm_size) in SIZES {
        let wasm = corpus::module(wasm_size, 11);
        let key = ModuleHash::new(&wasm);
        let module = Module::new(&engine, &wasm).unwrap();
        let raw = tmp.path().join(format!("{label}.raw"));
        module.serialize_to_file(&raw).unwrap();
        let artifact = std::fs::metadata(&raw).unwrap().len();
        let dir = tmp.path().join(label);
        let inline = FileSystemCache::builder(&dir)
            .capacity(1 << 30)
            .inline_io(true)
            .open()
            .unwrap();
        futures::executor::block_on(inline.save(key, &engine, &module)).unwrap();
        let pooled = FileSystemCache::open(&dir, 1 << 30).unwrap();
        eprintln!("{label}: artifact {artifact} bytes");

        // An Engine keeps the code memory of every module it loaded until
        // the engine itself is dropped (wasmer #4377), so each batch of
        // iterations runs on a fresh engine of the same configuration
        // (same deterministic id, so the tier still hits), outside the timing.
        let batch = (512u64 << 20) / artifact.max(1);
        let timed = |iters: u64, op: &dyn Fn(&Engine)| -> Duration {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let engine = Engine::default();
                let n = batch.min(iters - done).max(1);
                let start = std::time::Instant::now();
                for _ in 0..n {
                    op(&engine);
                }
                total += start.elapsed();
                done += n;
            }
            total
        };
        g.bench_function(BenchmarkId::new("raw_deserialize_from_file", label), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|engine| {
                    // SAFETY: the file holds this wasmer's own serialization
                    // of a module compiled with this configuration, written
                    // just above.
                    #[allow(unsafe_code)]
                    let m = unsafe { Module::deserialize_from_file(engine, &raw) };
                    black_box(m.unwrap());
                })
            })
        });
        g.bench_function(BenchmarkId::new("tier_inline", label), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|engine| {
                    black_box(inline.load(key, engine).now_or_never().unwrap().unwrap());
                })
            })
        });
        g.bench_function(BenchmarkId::new("raw_in_blocking_pool", label), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|engine| {
                    let (engine, raw) = (engine.clone(), raw.clone());
                    let m = rt.block_on(async move {
                        tokio::task::spawn_blocking(move || {
                            // SAFETY: as above.
                            #[allow(unsafe_code)]
                            let m = unsafe { Module::deserialize_from_file(&engine, &raw) };
                            m
                        })
                        .await
                    });
                    black_box(m.unwrap().unwrap());
                })
            })
        });
        g.bench_function(BenchmarkId::new("tier_blocking_pool", label), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|engine| {
                    black_box(rt.block_on(pooled.load(key, engine)).unwrap());
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
