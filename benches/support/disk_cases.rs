//! What the disk-hit benches (`disk.rs`, `wasix.rs`) share: the modules
//! (real ones from `real_modules`, then generated ones of three artifact
//! sizes), each compiled, its bare artifact written to a file and saved in a
//! disk tier; the timing loop that gives every batch a fresh engine; and
//! the benches both groups start with (the raw floor, the checksum, the
//! inline tier hit).
//!
//! Include with `#[path = "support/disk_cases.rs"] mod disk_cases;` beside
//! `real_modules`.

#![allow(dead_code)]

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, measurement::WallTime};
use futures::FutureExt;
use tierscope::{FileSystemCache, ModuleCache, ModuleHash, corpus};
use wasmer::{Engine, Module};

use crate::real_modules;

/// (label, wasm bytes) giving artifacts of about 25 KB, 1 MB and 7 MB.
pub const SIZES: [(&str, usize); 3] = [
    ("gen-25KB", 3_700),
    ("gen-1MB", 210_000),
    ("gen-7MB", 1_450_000),
];

/// One module ready for disk hits.
pub struct Prepared {
    pub label: String,
    /// A real third-party module (else generated).
    pub real: bool,
    pub key: ModuleHash,
    pub wasm: Vec<u8>,
    pub module: Module,
    /// The bare artifact (`Module::serialize_to_file`).
    pub raw: PathBuf,
    /// The same artifact in memory.
    pub artifact: Bytes,
    /// The disk tiers' directory.
    pub dir: PathBuf,
    /// A disk tier holding it, doing its I/O on the caller's thread.
    pub inline: FileSystemCache,
    /// The same directory, on tokio's blocking pool (the default).
    pub pooled: FileSystemCache,
    /// As `inline`, but mapping and verifying on every hit (what a hit
    /// costs the first time a process loads the entry): remembering
    /// verified mappings off.
    pub inline_verifying: FileSystemCache,
    /// As `pooled`, verifying on every hit.
    pub pooled_verifying: FileSystemCache,
}

/// Every module, real ones first; bare artifacts under `tmp`, disk tiers
/// under `cache_root/<label>`.
pub fn prepare(engine: &Engine, tmp: &Path, cache_root: &Path) -> Vec<Prepared> {
    let mut modules: Vec<(String, bool, Vec<u8>)> = real_modules::load()
        .into_iter()
        .map(|(name, wasm)| (name.to_string(), true, wasm))
        .collect();
    for (label, wasm_size) in SIZES {
        modules.push((label.to_string(), false, corpus::module(wasm_size, 11)));
    }
    let mut out = Vec::new();
    for (label, real, wasm) in modules {
        let key = ModuleHash::new(&wasm);
        let module = if real {
            real_modules::compile(engine, &label, &wasm)
        } else {
            Module::new(engine, &wasm).unwrap()
        };
        let raw = tmp.join(format!("{label}.raw"));
        module.serialize_to_file(&raw).unwrap();
        let artifact = Bytes::from(std::fs::read(&raw).unwrap());
        let dir = cache_root.join(&label);
        let inline = FileSystemCache::builder(&dir)
            .capacity(1 << 32)
            .inline_io(true)
            .build()
            .unwrap();
        futures::executor::block_on(inline.save(key, engine, &module)).unwrap();
        let pooled = open_pooled(&dir);
        let verifying = |inline: bool| {
            FileSystemCache::builder(&dir)
                .capacity(1 << 32)
                .inline_io(inline)
                .remember_verified(false)
                .build()
                .unwrap()
        };
        let (inline_verifying, pooled_verifying) = (verifying(true), verifying(false));
        eprintln!(
            "{label}: {} bytes of wasm, artifact {} bytes",
            wasm.len(),
            artifact.len()
        );
        out.push(Prepared {
            label,
            real,
            key,
            wasm,
            module,
            raw,
            artifact,
            dir,
            inline,
            pooled,
            inline_verifying,
            pooled_verifying,
        });
    }
    out
}

/// A disk tier on `dir` with the defaults (blocking pool, remembering and
/// recording verifications), as a process opens one.
pub fn open_pooled(dir: &Path) -> FileSystemCache {
    FileSystemCache::open(dir, 1 << 32).unwrap()
}

/// Iterations per fresh engine: about 512 MiB of artifacts.
pub fn batch(artifact_len: usize) -> u64 {
    (512u64 << 20) / (artifact_len as u64).max(1)
}

/// Time `iters` runs of `op`. An Engine keeps the code memory of every
/// module it loaded until the engine itself is dropped (wasmer #4377), so
/// each batch of iterations runs on a fresh engine of the same
/// configuration (same deterministic id, so every cache still hits),
/// created and dropped outside the timing.
pub fn timed(artifact_len: usize, iters: u64, op: &dyn Fn(&Engine)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let engine = Engine::default();
        let n = batch(artifact_len).min(iters - done).max(1);
        let start = Instant::now();
        for _ in 0..n {
            op(&engine);
        }
        total += start.elapsed();
        done += n;
    }
    total
}

/// wasmer's own mapped load of a bare artifact: the floor of a disk hit.
pub fn raw_from_file(engine: &Engine, raw: &Path) -> Module {
    // SAFETY: the file holds this wasmer's own serialization of a module
    // compiled with this configuration, written by `prepare`.
    #[allow(unsafe_code)]
    let m = unsafe { Module::deserialize_from_file(engine, raw) };
    m.unwrap()
}

/// A group for disk hits: 30 samples, 1 s of warm-up, 3 s of measurement.
pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(30);
    g
}

/// In `g`, for module `label`: wasmer's `deserialize_from_file` of the bare
/// artifact (`raw_deserialize_from_file`), the entry checksum alone over
/// the artifact in memory (`xxh3_128`; the two make the floor), and the
/// tier's hit on the calling thread (`inline_name`).
#[allow(clippy::too_many_arguments)]
pub fn floor_and_inline(
    g: &mut BenchmarkGroup<'_, WallTime>,
    label: &str,
    key: ModuleHash,
    raw: &Path,
    artifact: &Bytes,
    inline: &FileSystemCache,
    inline_name: &str,
) {
    let len = artifact.len();
    g.bench_function(BenchmarkId::new("raw_deserialize_from_file", label), |b| {
        b.iter_custom(|iters| timed(len, iters, &|e| drop(black_box(raw_from_file(e, raw)))))
    });
    g.bench_function(BenchmarkId::new("xxh3_128", label), |b| {
        b.iter(|| black_box(tierscope::entry::checksum(black_box(artifact))))
    });
    g.bench_function(BenchmarkId::new(inline_name, label), |b| {
        b.iter_custom(|iters| {
            timed(len, iters, &|e| {
                black_box(inline.load(key, e).now_or_never().unwrap().unwrap());
            })
        })
    });
}
