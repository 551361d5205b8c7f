//! Bounded telemetry memory: how much the process grows while 10 million
//! operations are recorded and nobody scrapes.
//!
//! metrics-exporter-prometheus buffers every histogram sample (about 16.5
//! bytes) until upkeep or a render folds it into buckets. Rows, in one run:
//!
//! 1. baseline: a raw exporter histogram handle recording 10 M samples, no
//!    upkeep, no render;
//! 2. tierscope: 10 M instrumented memory hits on a recorder with no upkeep
//!    and no render (hits are counted per thread; one in 128 is timed);
//! 3. tierscope: 10 M instrumented misses (every one timed) with the
//!    recorder from `observe::prometheus::install`, whose upkeep thread
//!    folds samples every 50 ms.
//!
//! `cargo bench --bench telemetry_memory`

use std::{hint::black_box, time::Instant};

use tierscope::{InstrumentExt, MemoryCache, ModuleCache, ModuleHash, corpus, observe::prometheus};
use wasmer::{Engine, Module};

const OPS: u64 = 10_000_000;

#[path = "../tests/it/common/process_memory.rs"]
mod process_memory;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    process_memory::rss_bytes()
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn row(name: &str, f: impl FnOnce()) -> i64 {
    let before = rss() as i64;
    let start = Instant::now();
    f();
    let grown = rss() as i64 - before;
    println!(
        "{name:<62} {:>10} in {:.2} s",
        mib(grown),
        start.elapsed().as_secs_f64()
    );
    grown
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Each row runs in a fresh process, so memory freed by one row cannot
    // hide the growth of the next.
    if let Some(which) = std::env::var_os("TELEMETRY_ROW") {
        run_row(which.to_str().unwrap_or_default());
        return;
    }
    println!("growth of the resident set while {OPS} operations are recorded, no scrape:");
    let exe = std::env::current_exe().unwrap();
    let mut grown = Vec::new();
    for which in ["hits", "misses", "baseline"] {
        let out = std::process::Command::new(&exe)
            .env("TELEMETRY_ROW", which)
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        let protocol = String::from_utf8_lossy(&out.stderr);
        let bytes: i64 = protocol
            .lines()
            .find_map(|l| l.strip_prefix("grown "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("row {which} failed: {protocol}"));
        grown.push(bytes);
    }
    let limit = 16 << 20;
    println!(
        "target: under {} each; tierscope hits {}, misses {} (baseline {})",
        mib(limit),
        if grown[0] < limit { "met" } else { "MISSED" },
        if grown[1] < limit { "met" } else { "MISSED" },
        mib(grown[2]),
    );
}

fn run_row(which: &str) {
    let engine = Engine::default();
    let wasm = corpus::tiny(1);
    let key = ModuleHash::new(&wasm);
    let module = Module::new(&engine, &wasm).unwrap();
    let grown = match which {
        "hits" => {
            // Instrumented memory hits, recorder with no upkeep at all.
            let (recorder, handle) = prometheus::recorder();
            let cache = metrics::with_local_recorder(&recorder, || {
                MemoryCache::new(1 << 30).instrumented("telemetry", "memory")
            });
            futures::executor::block_on(cache.save(key, &engine, &module)).unwrap();
            let g = row("tierscope: instrumented memory hits, no upkeep", || {
                for _ in 0..OPS {
                    black_box(cache.load_now(key, &engine));
                }
            });
            black_box(handle.render().len());
            g
        }
        "misses" => {
            // Instrumented misses, every one timed, with tierscope's upkeep.
            let installed = prometheus::install().expect("install the recorder");
            let cache = MemoryCache::new(1 << 30).instrumented("telemetry", "memory");
            let absent = ModuleHash::from_bytes([0xAB; 32]);
            let g = row(
                "tierscope: instrumented misses (all timed), install()",
                || {
                    for _ in 0..OPS {
                        let r = futures::FutureExt::now_or_never(cache.load(absent, &engine));
                        black_box(r);
                    }
                },
            );
            black_box(installed.render().len());
            g
        }
        _ => {
            // Baseline: a raw exporter histogram, no upkeep, no render.
            let (recorder, handle) = prometheus::recorder();
            let histogram = metrics::with_local_recorder(&recorder, || {
                metrics::histogram!("baseline_operation_duration_seconds")
            });
            let g = row("baseline: raw exporter histogram handle, no upkeep", || {
                for i in 0..OPS {
                    histogram.record(black_box(i as f64 * 1e-9));
                }
            });
            black_box(handle.render().len());
            g
        }
    };
    eprintln!("grown {grown}");
}
