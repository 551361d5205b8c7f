//! The exact LRU pass against only reading and decoding the same trace,
//! and model memory per distinct key.
//!
//! `cargo bench --bench sizing`. A 10 M-request `oracleGeneral` trace
//! (Zipf 0.9 over 1 M objects of 1 KB to 1 MB, and again over 10 k
//! objects, the size of a large module cache) is written to a temporary
//! file once; each measurement reads and decodes all of it, one also runs
//! the exact LRU model at 16 grid sizes. Memory is measured by a counting
//! allocator: heap bytes held by the model after the pass, per distinct
//! key, exact (1 M keys) and with the default bounded sampling (10 M keys).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    io::{BufWriter, Write as _},
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
#[path = "../tests/it/common/rng.rs"]
mod rng;
use rng::{Rng, zipf_cdf};
use tierscope::sizing::{
    Request,
    lru::LruModel,
    sampling::Sampling,
    trace::{Format, TraceReader, write_oracle_record},
};

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const REQUESTS: u64 = 10_000_000;

/// Zipf(0.9) over `keys` by inverse CDF.
fn write_trace(path: &Path, requests: u64, keys: u64) {
    let mut rng = Rng(0x9E37_79B9);
    let cdf = zipf_cdf(keys as usize, 0.9);
    let sizes: Vec<u32> = (0..keys)
        .map(|_| (1_000f64 * 1_000f64.powf(rng.unit())) as u32)
        .collect();
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..requests {
        let k = rng.pick(&cdf);
        // Keys spread over the id space, as hashed ids are.
        let id = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        write_oracle_record(&mut w, (i / 1000) as u32, id, sizes[k], -1).unwrap();
    }
    w.flush().unwrap();
}

fn grid() -> Vec<u64> {
    (0..16).map(|i| (1u64 << 20) << i).collect() // 1 MiB .. 32 GiB
}

fn read(path: &Path) -> impl Iterator<Item = Request> {
    TraceReader::open(path, Format::OracleGeneral)
        .unwrap()
        .map(|r| r.unwrap())
}

fn bench(c: &mut Criterion) {
    for keys in [1_000_000u64, 10_000] {
        passes(c, keys);
    }
    memory();
}

fn passes(c: &mut Criterion, keys: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zipf.oracleGeneral.bin");
    write_trace(&path, REQUESTS, keys);

    let mut g = c.benchmark_group(format!("sizing_10M_requests_{}k_objects", keys / 1000));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(40))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(REQUESTS));
    g.bench_function("read_and_decode_only", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for r in read(&path) {
                sum = sum.wrapping_add(r.key ^ r.bytes);
            }
            black_box(sum)
        })
    });
    g.bench_function("read_decode_and_exact_lru_16_sizes", |b| {
        b.iter(|| {
            let mut m = LruModel::new(&grid(), Sampling::Off);
            for r in read(&path) {
                m.access(&r);
            }
            black_box(m.curve())
        })
    });
    g.finish();
}

/// Memory per distinct key.
fn memory() {
    for (label, keys, sampling) in [
        ("exact, 1 M distinct keys", 1_000_000u64, Sampling::Off),
        (
            "bounded sampling (default 100 k keys), 10 M distinct keys",
            10_000_000,
            Sampling::default(),
        ),
    ] {
        let before = HELD.load(Ordering::Relaxed);
        let mut m = LruModel::new(&grid(), sampling);
        for i in 0..keys {
            m.access(&Request::new(
                i,
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                4096,
            ));
        }
        let held = HELD.load(Ordering::Relaxed).saturating_sub(before);
        let curve = m.curve();
        eprintln!(
            "model memory, {label}: {:.1} MiB held, {:.1} bytes per distinct key, sampling rate {:.5}",
            held as f64 / (1 << 20) as f64,
            held as f64 / keys as f64,
            curve.sampling_rate,
        );
        black_box(curve);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
