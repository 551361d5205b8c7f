//! tierscope against wasmer-wasix's own caches, side by side in one run, on
//! the same artifacts and engines: real third-party modules
//! (`scripts/fetch-real-modules`: tree-sitter grammars, sql.js, esbuild;
//! 6 KB to 14 MB of wasm) and the generated corpus (artifacts of about
//! 25 KB, 1 MB and 7 MB). The Prometheus recorder is installed for the whole
//! run.
//!
//! Group `wasix_memory_hit` (a tiny generated module; every future
//! completes on its first poll, `now_or_never`):
//! - `bare tier load_now` / `bare tier load`: tierscope's `MemoryCache`,
//!   synchronous hit path and async trait;
//! - `instrumented tier load`: the same tier behind the spy;
//! - `adapter load`: that instrumented tier through `WasixCache` (wasix's
//!   trait);
//! - `Runtime::load_hashed_module`: the whole path a wasix runtime takes
//!   for a module it already knows the hash of, over that adapter;
//! - `wasix SharedCache load`: wasix's own in-memory cache;
//! - `tierscope stack load` / `tierscope loader load_into`: a memory
//!   hit through `memory.with_fallback(disk)` (instrumented tiers) and
//!   through a `ModuleLoader` over it;
//! - `wasix stack load`: a memory hit through wasix's
//!   `in_memory().with_fallback(FileSystemCache)` (what the wasmer CLI uses).
//!
//! Group `wasix_disk_hit`, per module (a fresh `Engine` per batch of
//! iterations, outside the timing: an engine keeps the code of every module
//! it loaded until it is dropped, wasmer #4377):
//! - `raw_deserialize_from_file`: wasmer's call on the bare artifact, no
//!   checks (what wasix's `FileSystemCache` does); `xxh3_128`: tierscope's
//!   checksum alone over the artifact in memory; their sum is the floor;
//! - `tierscope_inline`: tierscope's `FileSystemCache` hit on the calling
//!   thread (`inline_io(true)`), in the steady state: the entry was
//!   verified by an earlier hit of this process and its mapping is
//!   remembered (`lstat`, deserialize from the verified mapping);
//! - `tierscope_pooled`: the same through tokio's blocking pool (the
//!   tier's default);
//! - `tierscope_pooled_verify_every_hit`: pooled, remembering off, as on a
//!   file's first verification (open, map, header and XXH3-128
//!   checksum, deserialize from the mapping);
//! - `tierscope_pooled_first_hit_recorded`: a process's first hit of an
//!   entry that an earlier hit (of another process) verified in full and
//!   recorded: a tier opened afresh on the directory for every iteration
//!   (outside the timing), with the defaults (open, map, header, the
//!   verification record checked against the file's identity,
//!   deserialize). Entries under 1 MiB have no record: their first hit
//!   checksums every byte, as `tierscope_pooled_verify_every_hit` does;
//! - `wasix_filesystem`: wasix's `FileSystemCache::load` (a task on the
//!   runtime, then `spawn_blocking`, then `deserialize_from_file`);
//!
//! Group `wasix_stack_disk_hit`, per module: a disk hit through a stack
//! whose memory tier is cold (tierscope's stack lives for the whole bench
//! and its memory tier forgets the engine before every iteration; wasix's
//! `SharedCache` cannot forget, so its stack is made afresh for every
//! iteration; both outside the timing; the promotion into memory is
//! timed):
//! - `tierscope_stack`: instrumented `memory.with_fallback(disk)`;
//! - `tierscope_loader`: `ModuleLoader::load_lazy_into` over that
//!   stack (a flight task, then the stack);
//! - `wasix_stack`: `in_memory().with_fallback(FileSystemCache)`.
//!
//! Before the disk groups, the same disk and stack paths run in alternating
//! rounds (every variant a few iterations per round, the order rotated),
//! and the medians of the per-round means are printed on stderr: on a
//! shared, noisy machine, those ratios are steadier than ratios of
//! criterion medians taken minutes apart. `TIERSCOPE_ROUNDS=0` skips them.
//!
//! `scripts/fetch-real-modules && cargo bench --features wasix --bench wasix`

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tierscope::{
    FallbackCache, FileSystemCache, InstrumentExt, Instrumented, MemoryCache, ModuleCache,
    ModuleHash, ModuleLoader, corpus,
    observe::prometheus,
    wasix::{WasixCache, runtime_with_engine},
};
use wasmer::{Engine, Module};
use wasmer_wasix::runtime::{
    Runtime,
    module_cache::{
        FileSystemCache as WasixFileSystemCache, HashedModuleData, ModuleCache as WasixModuleCache,
        SharedCache,
    },
    task_manager::tokio::TokioTaskManager,
};

#[path = "support/disk_cases.rs"]
mod disk_cases;
#[path = "support/real_modules.rs"]
mod real_modules;
#[path = "support/rounds.rs"]
mod rounds;

use disk_cases::{batch, raw_from_file, timed};

const MEMORY_CAPACITY: u64 = 1 << 30;

type Stack = FallbackCache<Instrumented<MemoryCache>, Instrumented<FileSystemCache>>;

fn memory_hit(
    c: &mut Criterion,
    tokio: &tokio::runtime::Runtime,
    tmp: &Path,
    wasix_fs: &WasixFileSystemCache,
) {
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
    let disk = FileSystemCache::open(tmp.join("memory-hit-disk"), 1 << 30).unwrap();
    let stack = stack(&disk);
    let loader = ModuleLoader::new("bench-wasix", stack.clone());
    let wasix_stack = WasixModuleCache::with_fallback(SharedCache::default(), wasix_fs.clone());
    tokio.block_on(async {
        bare.save(key, &engine, &module).await.unwrap();
        spied.save(key, &engine, &module).await.unwrap();
        WasixModuleCache::save(&shared, key, &engine, &module)
            .await
            .unwrap();
        stack.save(key, &engine, &module).await.unwrap();
        WasixModuleCache::save(&wasix_stack, key, &engine, &module)
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
    let wasm = Bytes::from(wasm);
    let lazy = || {
        let wasm = wasm.clone();
        move || wasm
    };
    assert!(
        loader
            .load_lazy_into(&engine, key, lazy())
            .now_or_never()
            .expect("a memory hit completes at once")
            .is_ok()
    );

    let mut g = c.benchmark_group("wasix_memory_hit");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("bare tier load_now", |b| {
        b.iter(|| black_box(bare.load_now(key, &engine)))
    });
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
    g.bench_function("tierscope stack load", |b| {
        b.iter(|| black_box(stack.load(key, &engine).now_or_never()))
    });
    g.bench_function("tierscope loader load_into", |b| {
        b.iter(|| black_box(loader.load_lazy_into(&engine, key, lazy()).now_or_never()))
    });
    g.bench_function("wasix stack load", |b| {
        b.iter(|| black_box(WasixModuleCache::load(&wasix_stack, key, &engine).now_or_never()))
    });
    g.finish();
}

/// tierscope's usual stack: an instrumented memory tier in front of an
/// instrumented disk tier (blocking pool), both named as in production.
fn stack(disk: &FileSystemCache) -> Stack {
    MemoryCache::new(MEMORY_CAPACITY)
        .instrumented("bench-wasix", "memory")
        .with_fallback(disk.clone().instrumented("bench-wasix", "disk"))
}

struct Case {
    label: String,
    key: ModuleHash,
    wasm: Bytes,
    /// The bare artifact (`Module::serialize_to_file`).
    raw: PathBuf,
    /// The same artifact in memory.
    artifact: Bytes,
    inline: FileSystemCache,
    pooled: FileSystemCache,
    /// As `pooled`, mapping and verifying on every hit.
    pooled_verifying: FileSystemCache,
    /// The tiers' directory (for a tier opened afresh, as by a new process).
    dir: PathBuf,
    wasix: WasixFileSystemCache,
}

fn cases(
    engine: &Engine,
    tmp: &Path,
    tokio: &tokio::runtime::Runtime,
    wasix: &WasixFileSystemCache,
) -> Vec<Case> {
    disk_cases::prepare(engine, tmp, &tmp.join("tierscope"))
        .into_iter()
        .map(|p| {
            tokio
                .block_on(WasixModuleCache::save(wasix, p.key, engine, &p.module))
                .unwrap();
            Case {
                label: p.label,
                key: p.key,
                wasm: Bytes::from(p.wasm),
                raw: p.raw,
                artifact: p.artifact,
                inline: p.inline,
                pooled: p.pooled,
                pooled_verifying: p.pooled_verifying,
                dir: p.dir,
                wasix: wasix.clone(),
            }
        })
        .collect()
}

/// As [`timed`], but every iteration gets its own `setup(engine)` (a stack
/// whose memory tier is cold for `engine`), made before and dropped after
/// the timed `op`.
fn timed_fresh<S>(
    artifact_len: usize,
    iters: u64,
    setup: &dyn Fn(&Engine) -> S,
    op: &dyn Fn(&Engine, &S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let engine = Engine::default();
        let n = batch(artifact_len).min(iters - done).max(1);
        for _ in 0..n {
            let state = setup(&engine);
            let start = Instant::now();
            op(&engine, &state);
            total += start.elapsed();
            drop(state);
        }
        done += n;
    }
    total
}

fn disk_hit(c: &mut Criterion, tokio: &tokio::runtime::Runtime, cases: &[Case]) {
    let mut g = disk_cases::group(c, "wasix_disk_hit");
    for case in cases {
        let Case {
            label,
            key,
            raw,
            artifact,
            inline,
            pooled,
            pooled_verifying,
            dir,
            wasix,
            ..
        } = case;
        let (key, len) = (*key, artifact.len());
        disk_cases::floor_and_inline(
            &mut g,
            label,
            key,
            raw,
            artifact,
            inline,
            "tierscope_inline",
        );
        for (name, tier) in [
            ("tierscope_pooled", pooled),
            ("tierscope_pooled_verify_every_hit", pooled_verifying),
        ] {
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    timed(len, iters, &|e| {
                        black_box(tokio.block_on(tier.load(key, e)).unwrap());
                    })
                })
            });
        }
        g.bench_function(
            BenchmarkId::new("tierscope_pooled_first_hit_recorded", label),
            |b| {
                b.iter_custom(|iters| {
                    timed_fresh(
                        len,
                        iters,
                        &|_| disk_cases::open_pooled(dir),
                        &|e, fresh| {
                            black_box(tokio.block_on(fresh.load(key, e)).unwrap());
                        },
                    )
                })
            },
        );
        g.bench_function(BenchmarkId::new("wasix_filesystem", label), |b| {
            b.iter_custom(|iters| {
                timed(len, iters, &|e| {
                    black_box(
                        tokio
                            .block_on(WasixModuleCache::load(wasix, key, e))
                            .unwrap(),
                    );
                })
            })
        });
    }
    g.finish();
}

fn stack_disk_hit(c: &mut Criterion, tokio: &tokio::runtime::Runtime, cases: &[Case]) {
    let mut g = disk_cases::group(c, "wasix_stack_disk_hit");
    for case in cases {
        let Case {
            label,
            key,
            wasm,
            artifact,
            pooled,
            wasix,
            ..
        } = case;
        let (key, len) = (*key, artifact.len());
        // tierscope's stack and loader live for the whole bench, as in a
        // server; before each iteration their memory tier forgets the
        // engine (outside the timing), so the load is a disk hit. (A fresh
        // stack per iteration would time the first touch of a new memory
        // tier's table, which a server pays once.)
        let ts_stack = stack(pooled);
        let loader = ModuleLoader::new("bench-wasix", stack(pooled));
        g.bench_function(BenchmarkId::new("tierscope_stack", label), |b| {
            b.iter_custom(|iters| {
                timed_fresh(
                    len,
                    iters,
                    &|e| drop(tierscope::forget_engine(ts_stack.primary(), e)),
                    &|e, _| {
                        black_box(tokio.block_on(ts_stack.load(key, e)).unwrap());
                    },
                )
            })
        });
        g.bench_function(BenchmarkId::new("tierscope_loader", label), |b| {
            b.iter_custom(|iters| {
                timed_fresh(
                    len,
                    iters,
                    &|e| drop(tierscope::forget_engine(loader.cache().primary(), e)),
                    &|e, _| {
                        let wasm = wasm.clone();
                        let m = tokio.block_on(loader.load_lazy_into(e, key, move || wasm));
                        black_box(m.unwrap());
                    },
                )
            })
        });
        g.bench_function(BenchmarkId::new("wasix_stack", label), |b| {
            b.iter_custom(|iters| {
                timed_fresh(
                    len,
                    iters,
                    // wasix's `SharedCache` has no removal: a fresh one.
                    &|_| WasixModuleCache::with_fallback(SharedCache::default(), wasix.clone()),
                    &|e, s| {
                        black_box(tokio.block_on(WasixModuleCache::load(s, key, e)).unwrap());
                    },
                )
            })
        });
    }
    g.finish();
}

/// One timed run of a variant on `engine`; returns the time of the part that
/// counts (set-up of a cold stack excluded).
type Variant<'a> = (&'static str, Box<dyn Fn(&Engine) -> Duration + 'a>);

fn time_once(op: impl FnOnce()) -> Duration {
    let start = Instant::now();
    op();
    start.elapsed()
}

/// Alternating rounds, as the issue measured: for each module, `rounds`
/// rounds; in each, every variant runs a few iterations on its own fresh
/// engine, in an order rotated every round, so that a noisy neighbour
/// weighs on all of them alike. Prints the median of the per-round means
/// and the ratios. `TIERSCOPE_ROUNDS` (default 21; 0 skips).
fn alternating(tokio: &tokio::runtime::Runtime, cases: &[Case]) {
    let rounds = rounds::count(21);
    if rounds == 0 {
        return;
    }
    eprintln!("alternating rounds ({rounds}), medians of per-round means:");
    eprintln!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "module",
        "raw",
        "raw+xxh3",
        "ts_inline",
        "ts_pooled",
        "wasix_fs",
        "ts_stack",
        "ts_loader",
        "wasix_stk",
        "ts_verify",
        "ts_first",
        "pool/w",
        "inl/w",
        "inl/fl",
        "stk/w",
        "ldr/w",
        "vfy/w",
        "1st/w"
    );
    for case in cases {
        let Case {
            key,
            wasm,
            raw,
            artifact,
            inline,
            pooled,
            pooled_verifying,
            dir,
            wasix,
            ..
        } = case;
        let key = *key;
        let ts_stack = stack(pooled);
        let loader = ModuleLoader::new("bench-wasix", stack(pooled));
        let variants: Vec<Variant<'_>> = vec![
            (
                "raw",
                Box::new(|e| time_once(|| drop(black_box(raw_from_file(e, raw))))),
            ),
            (
                "raw+xxh3",
                Box::new(|e| {
                    time_once(|| {
                        black_box(tierscope::entry::checksum(black_box(artifact)));
                        drop(black_box(raw_from_file(e, raw)));
                    })
                }),
            ),
            (
                "ts_inline",
                Box::new(|e| {
                    time_once(|| {
                        drop(black_box(
                            inline.load(key, e).now_or_never().unwrap().unwrap(),
                        ))
                    })
                }),
            ),
            (
                "ts_pooled",
                Box::new(|e| {
                    time_once(|| drop(black_box(tokio.block_on(pooled.load(key, e)).unwrap())))
                }),
            ),
            (
                "wasix_fs",
                Box::new(|e| {
                    time_once(|| {
                        drop(black_box(
                            tokio
                                .block_on(WasixModuleCache::load(wasix, key, e))
                                .unwrap(),
                        ))
                    })
                }),
            ),
            (
                "ts_stack",
                Box::new(|e| {
                    drop(tierscope::forget_engine(ts_stack.primary(), e));
                    time_once(|| drop(black_box(tokio.block_on(ts_stack.load(key, e)).unwrap())))
                }),
            ),
            (
                "ts_loader",
                Box::new(|e| {
                    drop(tierscope::forget_engine(loader.cache().primary(), e));
                    let wasm = wasm.clone();
                    time_once(|| {
                        let m = tokio.block_on(loader.load_lazy_into(e, key, move || wasm));
                        drop(black_box(m.unwrap()))
                    })
                }),
            ),
            (
                "wasix_stack",
                Box::new(|e| {
                    let s = WasixModuleCache::with_fallback(SharedCache::default(), wasix.clone());
                    time_once(|| {
                        drop(black_box(
                            tokio.block_on(WasixModuleCache::load(&s, key, e)).unwrap(),
                        ))
                    })
                }),
            ),
            (
                "ts_verify",
                Box::new(|e| {
                    time_once(|| {
                        drop(black_box(
                            tokio.block_on(pooled_verifying.load(key, e)).unwrap(),
                        ))
                    })
                }),
            ),
            (
                "ts_first",
                Box::new(|e| {
                    let fresh = disk_cases::open_pooled(dir);
                    time_once(|| drop(black_box(tokio.block_on(fresh.load(key, e)).unwrap())))
                }),
            ),
        ];
        // Iterations per variant and round: about 10 ms of the raw call.
        let probe = {
            let e = Engine::default();
            (variants[0].1)(&e);
            (variants[0].1)(&e)
        };
        let n =
            (Duration::from_millis(10).as_nanos() / probe.as_nanos().max(1)).clamp(1, 200) as u32;
        let mut means: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); variants.len()];
        for round in 0..rounds {
            for i in 0..variants.len() {
                let v = (i + round) % variants.len();
                let engine = Engine::default();
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    total += (variants[v].1)(&engine);
                }
                means[v].push(total.as_secs_f64() / f64::from(n));
            }
        }
        let med: Vec<f64> = means.iter_mut().map(|m| rounds::quartile(m, 2)).collect();
        let us = |x: f64| format!("{:.1}", x * 1e6);
        eprintln!(
            "{:<18} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} | {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2}",
            case.label,
            us(med[0]),
            us(med[1]),
            us(med[2]),
            us(med[3]),
            us(med[4]),
            us(med[5]),
            us(med[6]),
            us(med[7]),
            us(med[8]),
            us(med[9]),
            med[3] / med[4],
            med[2] / med[4],
            med[2] / med[1],
            med[5] / med[7],
            med[6] / med[7],
            med[8] / med[4],
            med[9] / med[4],
        );
    }
    eprintln!("(µs; pool/w = tierscope pooled / wasix FileSystemCache, inl/w = inline / wasix,");
    eprintln!(" inl/fl = inline / (raw deserialize_from_file + XXH3), stk/w and ldr/w = tierscope");
    eprintln!(" stack and loader / wasix in_memory().with_fallback(FileSystemCache), cold memory;");
    eprintln!(
        " ts_verify, vfy/w = tierscope pooled verifying every hit (remember_verified(false)),"
    );
    eprintln!(" as a file's first verification, / wasix; ts_first, 1st/w = a tier opened afresh");
    eprintln!(" (as by a new process) on an entry an earlier hit verified and recorded, / wasix)");
}

/// As in production, where an entry is saved once and loaded by processes
/// started later: once the entries are settled (a second old), a tier
/// opened afresh verifies each in full, which records the verification of
/// those of 1 MiB and more.
fn record_verifications(tokio: &tokio::runtime::Runtime, cases: &[Case]) {
    std::thread::sleep(Duration::from_millis(2_100));
    let engine = Engine::default();
    for case in cases {
        let fresh = disk_cases::open_pooled(&case.dir);
        drop(tokio.block_on(fresh.load(case.key, &engine)).unwrap());
        let record = fresh.entry_path(case.key, &engine).with_extension("vfy");
        eprintln!("{}: verification recorded: {}", case.label, record.exists());
    }
}

fn all(c: &mut Criterion) {
    let _metrics = prometheus::install().expect("install the Prometheus recorder");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _context = tokio.enter();
    let tmp = tempfile::tempdir().unwrap();
    let task_manager = Arc::new(TokioTaskManager::new(tokio.handle().clone()));
    let wasix_fs = WasixFileSystemCache::new(tmp.path().join("wasix"), task_manager);

    memory_hit(c, &tokio, tmp.path(), &wasix_fs);

    let engine = Engine::default();
    let cases = cases(&engine, tmp.path(), &tokio, &wasix_fs);
    drop(engine);
    record_verifications(&tokio, &cases);
    alternating(&tokio, &cases);
    disk_hit(c, &tokio, &cases);
    stack_disk_hit(c, &tokio, &cases);
}

criterion_group!(benches, all);
criterion_main!(benches);
