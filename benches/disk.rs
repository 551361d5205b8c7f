//! Disk-tier hits beside the raw wasmer call they wrap, in one run, on real
//! third-party modules (`scripts/fetch-real-modules`: tree-sitter grammars,
//! sql.js, esbuild; 6 KB to 14 MB of wasm) and on generated ones (artifacts
//! of about 25 KB, 1 MB and 7 MB).
//!
//! Group `disk_hit`, per module:
//! - `raw_deserialize_from_file`: wasmer's `Module::deserialize_from_file`
//!   of the bare artifact (no header, no checksum): the file is mapped.
//! - `xxh3_128`: the checksum alone, over the artifact in memory (so
//!   "raw + checksum" is the sum of the two medians).
//! - `tier_inline`: `FileSystemCache::load` on the calling thread: the
//!   steady state, where the entry was verified by an earlier hit of this
//!   process and its mapping is remembered (`lstat`, deserialize).
//! - `tier_inline_verify_every_hit`: the same with remembering off, as on
//!   a process' first hit of an entry (open, map, verify header and
//!   XXH3-128 checksum, deserialize).
//! - generated modules only: the raw call and the tier through tokio's
//!   blocking pool (the tier's default).
//!
//! Group `disk_why`, real modules only: where deserializing from an owned
//! buffer loses to the mapped path (`fs_read`, `read_then_deserialize`,
//! `deserialize_prefaulted`, `deserialize_unchecked_prefaulted`,
//! `map_then_deserialize`, `map_populate_then_deserialize`,
//! `deserialize_from_file`). Page faults per operation of each path are
//! printed on stderr before the group runs.
//!
//! Group `checksum`: the entry checksum (XXH3-128 through `twox-hash`,
//! which picks AVX2 at run time) beside `xxhash-rust`'s XXH3-128 (the same
//! hash, its portable path), over 16 MiB.
//!
//! `scripts/fetch-real-modules && cargo bench --bench disk`

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tierscope::{FileSystemCache, ModuleCache, ModuleHash};
use wasmer::{Engine, Module};

#[path = "support/disk_cases.rs"]
mod disk_cases;
#[path = "support/real_modules.rs"]
mod real_modules;

use disk_cases::{raw_from_file, timed};

struct Case {
    label: String,
    real: bool,
    key: ModuleHash,
    /// The bare artifact (`Module::serialize_to_file`).
    raw: PathBuf,
    /// The same artifact in memory.
    artifact: Bytes,
    inline: FileSystemCache,
    pooled: FileSystemCache,
    inline_verifying: FileSystemCache,
}

fn cases(engine: &Engine, tmp: &Path) -> Vec<Case> {
    disk_cases::prepare(engine, tmp, tmp)
        .into_iter()
        .map(|p| Case {
            label: p.label,
            real: p.real,
            key: p.key,
            raw: p.raw,
            artifact: p.artifact,
            inline: p.inline,
            pooled: p.pooled,
            inline_verifying: p.inline_verifying,
        })
        .collect()
}

fn hit(c: &mut Criterion) {
    let engine = Engine::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases(&engine, tmp.path());

    let mut g = disk_cases::group(c, "disk_hit");
    for case in &cases {
        let Case {
            label,
            key,
            raw,
            artifact,
            inline,
            pooled,
            inline_verifying,
            ..
        } = case;
        let (key, len) = (*key, artifact.len());
        disk_cases::floor_and_inline(&mut g, label, key, raw, artifact, inline, "tier_inline");
        g.bench_function(
            BenchmarkId::new("tier_inline_verify_every_hit", label),
            |b| {
                b.iter_custom(|iters| {
                    timed(len, iters, &|e| {
                        black_box(
                            inline_verifying
                                .load(key, e)
                                .now_or_never()
                                .unwrap()
                                .unwrap(),
                        );
                    })
                })
            },
        );
        if case.real {
            continue;
        }
        g.bench_function(BenchmarkId::new("raw_in_blocking_pool", label), |b| {
            b.iter_custom(|iters| {
                timed(len, iters, &|e| {
                    let (engine, raw) = (e.clone(), raw.clone());
                    let m = rt.block_on(async move {
                        tokio::task::spawn_blocking(move || raw_from_file(&engine, &raw)).await
                    });
                    black_box(m.unwrap());
                })
            })
        });
        g.bench_function(BenchmarkId::new("tier_blocking_pool", label), |b| {
            b.iter_custom(|iters| {
                timed(len, iters, &|e| {
                    black_box(rt.block_on(pooled.load(key, e)).unwrap());
                })
            })
        });
    }
    g.finish();

    // The peer benches against wasmer-wasix's caches (`SharedCache`,
    // `FileSystemCache`, `in_memory().with_fallback(FileSystemCache)`) on the
    // same modules live in `benches/wasix.rs` (feature `wasix`), so that
    // default builds stay lean and the comparison runs in one process.

    why(c, &cases);
}

/// Ways to get from an artifact file to a `Module`, to find where the owned
/// buffer loses to the mapped file.
fn why_ops() -> Vec<(&'static str, WhyOp)> {
    vec![
        // Read the file into a fresh buffer, drop it: the read alone.
        ("fs_read", |_, raw, _| {
            drop(black_box(std::fs::read(raw).unwrap()))
        }),
        // What the disk tier did up to 0.1 (minus its checks).
        ("read_then_deserialize", |e, raw, _| {
            let bytes = std::fs::read(raw).unwrap();
            // SAFETY: as in `raw_from_file`.
            #[allow(unsafe_code)]
            let m = unsafe { Module::deserialize(e, bytes) };
            drop(black_box(m.unwrap()));
        }),
        // The same deserialization from a buffer read once, whose pages are
        // already resident: no read, no fresh pages.
        ("deserialize_prefaulted", |e, _, artifact| {
            // SAFETY: as in `raw_from_file`.
            #[allow(unsafe_code)]
            let m = unsafe { Module::deserialize(e, artifact.clone()) };
            drop(black_box(m.unwrap()));
        }),
        // ... without wasmer's archive validation (rkyv `access` checks).
        ("deserialize_unchecked_prefaulted", |e, _, artifact| {
            // SAFETY: as in `raw_from_file`.
            #[allow(unsafe_code)]
            let m = unsafe { Module::deserialize_unchecked(e, artifact.clone()) };
            drop(black_box(m.unwrap()));
        }),
        // Map the file, hand the mapping to wasmer as `Bytes` (no copy).
        ("map_then_deserialize", |e, raw, _| {
            let file = std::fs::File::open(raw).unwrap();
            // SAFETY: a private temporary file nobody else writes.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            // SAFETY: as in `raw_from_file`.
            #[allow(unsafe_code)]
            let m = unsafe { Module::deserialize(e, Bytes::from_owner(map)) };
            drop(black_box(m.unwrap()));
        }),
        // The same, the whole mapping faulted in by one `MAP_POPULATE`.
        ("map_populate_then_deserialize", |e, raw, _| {
            let file = std::fs::File::open(raw).unwrap();
            // SAFETY: a private temporary file nobody else writes.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.unwrap();
            // SAFETY: as in `raw_from_file`.
            #[allow(unsafe_code)]
            let m = unsafe { Module::deserialize(e, Bytes::from_owner(map)) };
            drop(black_box(m.unwrap()));
        }),
        ("deserialize_from_file", |e, raw, _| {
            drop(black_box(raw_from_file(e, raw)))
        }),
    ]
}

type WhyOp = fn(&Engine, &Path, &Bytes);

/// Minor and major page faults of this process so far.
fn faults() -> (u64, u64) {
    let stat = procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| (s.minflt, s.majflt));
    stat.unwrap_or((0, 0))
}

fn why(c: &mut Criterion, cases: &[Case]) {
    let real: Vec<&Case> = cases.iter().filter(|c| c.real).collect();
    if real.is_empty() {
        eprintln!("disk_why: no real module found, group skipped (scripts/fetch-real-modules)");
        return;
    }
    eprintln!("page faults per operation (mean of 16, fresh engine, after one warm-up):");
    for case in &real {
        for (name, op) in why_ops() {
            let engine = Engine::default();
            op(&engine, &case.raw, &case.artifact);
            let before = faults();
            for _ in 0..16 {
                op(&engine, &case.raw, &case.artifact);
            }
            let after = faults();
            eprintln!(
                "  {:<18} {:<34} minor {:>7.0}  major {:>3.0}",
                case.label,
                name,
                (after.0 - before.0) as f64 / 16.0,
                (after.1 - before.1) as f64 / 16.0
            );
        }
    }
    let mut g = c.benchmark_group("disk_why");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
    for case in real {
        for (name, op) in why_ops() {
            let len = case.artifact.len();
            g.bench_function(BenchmarkId::new(name, &case.label), |b| {
                b.iter_custom(|iters| timed(len, iters, &|e| op(e, &case.raw, &case.artifact)))
            });
        }
    }
    g.finish();
}

/// The entry checksum beside `xxhash-rust`'s XXH3-128 of the same bytes.
fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..16u64 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    assert_eq!(
        tierscope::entry::checksum(&data),
        xxhash_rust::xxh3::xxh3_128(&data).to_le_bytes()
    );
    let mut g = c.benchmark_group("checksum");
    g.throughput(criterion::Throughput::Bytes(data.len() as u64));
    g.bench_function("entry_checksum_twox_hash_16MiB", |b| {
        b.iter(|| black_box(tierscope::entry::checksum(black_box(&data))))
    });
    g.bench_function("xxhash_rust_xxh3_128_16MiB", |b| {
        b.iter(|| black_box(xxhash_rust::xxh3::xxh3_128(black_box(&data))))
    });
    g.finish();
}

criterion_group!(benches, hit, checksum);
criterion_main!(benches);
