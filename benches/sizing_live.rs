//! Live sizing's costs, each beside its baseline in one run (the
//! Prometheus recorder is installed for the whole run):
//!
//! - `live_hit`: an instrumented memory-tier hit (`load_now`) with live
//!   sizing off, on (models fed between timed batches of 4096 hits, so the
//!   hit path is measured alone), and on with the worker thread running
//!   beside the hits (on a 2-vCPU machine it competes for the core);
//! - `live_worker`: the worker's cost per lookup modelled (drain + models),
//!   on one core: a memory tier (five shadows feeding a disk LRU) and a
//!   disk tier (one LRU over five capacities), Zipf 0.9 over 400 keys;
//! - printed before the groups: drops at an offered rate (one thread
//!   recording R lookups per second for 2 s, the real worker draining), and
//!   the models' memory per distinct key (growth of the resident set).
//!
//! `cargo bench --bench sizing_live -- --warm-up-time 1 --measurement-time 3`
//! (`TIERSCOPE_ONLY_GROUPS=1` skips the printed measurements before the
//! groups; `TIERSCOPE_ROUNDS=N`, default 31, sets the alternating rounds
//! printed after `live_hit`'s rows, 0 skips them.)

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
#[path = "../tests/it/common/rng.rs"]
mod rng;
#[path = "support/rounds.rs"]
mod rounds;
use rng::{Rng, zipf_cdf};
use tierscope::{
    InstrumentExt, MemoryCache, ModuleCache, ModuleHash, corpus,
    observe::prometheus,
    sizing::live::{LiveSizing, SizingExt, SizingOptions, SizingTier, TierPolicy},
    sizing::memory::ShadowOptions,
};
use wasmer::{Engine, Module};

#[path = "../tests/it/common/process_memory.rs"]
mod process_memory;

/// Resident set size of this process, in bytes.
fn rss() -> usize {
    process_memory::rss_bytes() as usize
}

const KEYS: usize = 64;

/// Zipf(0.9) ranks over `n` keys, precomputed.
fn zipf_stream(n: usize, len: usize, seed: u64) -> Vec<u64> {
    let cdf = zipf_cdf(n, 0.9);
    let mut rng = Rng(seed);
    (0..len).map(|_| rng.pick(&cdf) as u64).collect()
}

/// A sizing of a memory tier (tier 0) in front of a disk tier (tier 1).
fn two_tiers(options: SizingOptions, memory: u64, disk: u64) -> LiveSizing {
    let sizing = LiveSizing::new("bench", options);
    let opts = ShadowOptions {
        shards: Some(1),
        ..Default::default()
    };
    // The tiers themselves are not used: events are recorded directly.
    let _m = SizingTier::new(
        (),
        &sizing,
        "memory",
        TierPolicy::Memory {
            capacity: memory,
            options: opts,
        },
    );
    let _d = SizingTier::new(
        (),
        &sizing,
        "disk",
        TierPolicy::Lru {
            capacity: Some(disk),
        },
    );
    sizing
}

fn live_hit(c: &mut Criterion) {
    const BATCH: u64 = 4096;
    let engine = Engine::default();
    let wasm: Vec<Vec<u8>> = (0..KEYS as u64).map(corpus::tiny).collect();
    let keys: Vec<ModuleHash> = wasm.iter().map(ModuleHash::new).collect();
    let modules: Vec<Module> = wasm
        .iter()
        .map(|w| Module::new(&engine, w).unwrap())
        .collect();
    let off = MemoryCache::new(1 << 30).instrumented("bench-off", "memory");
    // Sizing on, models driven between batches (no worker competing for
    // the core): the hit path's own cost.
    let manual = LiveSizing::new(
        "bench-on",
        SizingOptions::default()
            .background(false)
            .buffer(2 * BATCH as usize),
    );
    let on = MemoryCache::new(1 << 30)
        .instrumented("bench-on", "memory")
        .with_sizing(&manual);
    // Sizing on with its worker thread running beside the hits.
    let sizing = LiveSizing::new("bench-worker", SizingOptions::default());
    let worker = MemoryCache::new(1 << 30)
        .instrumented("bench-worker", "memory")
        .with_sizing(&sizing);
    for (k, m) in keys.iter().zip(&modules) {
        futures::executor::block_on(off.save(*k, &engine, m)).unwrap();
        futures::executor::block_on(on.save(*k, &engine, m)).unwrap();
        futures::executor::block_on(worker.save(*k, &engine, m)).unwrap();
    }
    manual.flush();
    let mut g = c.benchmark_group("live_hit");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(criterion::Throughput::Elements(BATCH));
    // Each iteration: 4096 hits timed, then (sizing on) the models fed,
    // untimed, so the ring never fills.
    fn batch(
        keys: &[ModuleHash],
        iters: u64,
        hit: impl Fn(ModuleHash),
        after: impl Fn(),
    ) -> Duration {
        let mut spent = Duration::ZERO;
        let mut i = 0usize;
        for _ in 0..iters {
            let t = Instant::now();
            for _ in 0..BATCH {
                i = (i + 1) % KEYS;
                hit(keys[i]);
            }
            spent += t.elapsed();
            after();
        }
        spent
    }
    // The synchronous hit path, and the same hit through the trait's
    // `load().await` (wasmer-wasix's API), its future polled once. Both
    // always inlined into the timed loop, for every row alike: left to
    // itself the compiler inlined some rows' hit and called others' (the
    // call alone moved a row by 3-4 ns).
    #[inline(always)]
    fn now(cache: &impl ModuleCache, key: ModuleHash, engine: &Engine) {
        black_box(cache.load_now(key, engine));
    }
    #[inline(always)]
    fn awaited(cache: &impl ModuleCache, key: ModuleHash, engine: &Engine) {
        use futures::FutureExt;
        black_box(cache.load(key, engine).now_or_never().map(Result::unwrap));
    }
    let e = &engine;
    g.bench_function("instrumented_load_now_sizing_off", |b| {
        b.iter_custom(|iters| batch(&keys, iters, |k| now(&off, k, e), || {}))
    });
    g.bench_function("instrumented_load_now_sizing_on", |b| {
        b.iter_custom(|iters| batch(&keys, iters, |k| now(&on, k, e), || manual.flush()))
    });
    g.bench_function("instrumented_load_now_sizing_on_worker_running", |b| {
        b.iter_custom(|iters| batch(&keys, iters, |k| now(&worker, k, e), || {}))
    });
    g.bench_function("instrumented_load_async_sizing_off", |b| {
        b.iter_custom(|iters| batch(&keys, iters, |k| awaited(&off, k, e), || {}))
    });
    g.bench_function("instrumented_load_async_sizing_on", |b| {
        b.iter_custom(|iters| batch(&keys, iters, |k| awaited(&on, k, e), || manual.flush()))
    });
    g.finish();
    // Alternating rounds: on this noisy machine rows measured seconds
    // apart differ by more than the cost measured; each round times both
    // sides back to back (order swapped every round) and keeps their ratio.
    let rounds = rounds::count(31);
    if rounds > 0 {
        const BATCHES: u64 = 200;
        let per_hit = |d: Duration| d.as_nanos() as f64 / (BATCHES * BATCH) as f64;
        let (mut off_ns, mut on_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let time_off = || batch(&keys, BATCHES, |k| now(&off, k, e), || {});
            let time_on = || batch(&keys, BATCHES, |k| now(&on, k, e), || manual.flush());
            let (a, b) = if round % 2 == 0 {
                let a = time_off();
                (a, time_on())
            } else {
                let b = time_on();
                (time_off(), b)
            };
            off_ns.push(per_hit(a));
            on_ns.push(per_hit(b));
            ratios.push(b.as_secs_f64() / a.as_secs_f64());
        }
        eprintln!(
            "live_hit, {rounds} alternating rounds of {} hits each way (load_now): sizing off {:.2} ns, on {:.2} ns (medians); on/off ratio median {:.3} (quartiles {:.3}-{:.3})",
            BATCHES * BATCH,
            rounds::quartile(&mut off_ns, 2),
            rounds::quartile(&mut on_ns, 2),
            rounds::quartile(&mut ratios, 2),
            rounds::quartile(&mut ratios, 1),
            rounds::quartile(&mut ratios, 3),
        );
    }
    let r = manual.report();
    eprintln!(
        "live_hit, sizing on: modelled {} lookups, dropped {}",
        r.modelled, r.dropped
    );
    sizing.flush();
    let r = sizing.report();
    eprintln!(
        "live_hit, worker running: modelled {} lookups, dropped {} ({:.2}%)",
        r.modelled,
        r.dropped,
        100.0 * r.dropped as f64 / (r.modelled + r.dropped).max(1) as f64
    );
}

fn live_worker(c: &mut Criterion) {
    // 400 keys of 100 KB: memory at 10 MB (a quarter of the working set),
    // disk at 20 MB; memory events for every lookup, disk events for the
    // ones the real memory tier would miss (keys 60 and up: about 36 %).
    const BATCH: usize = 4096;
    let stream = zipf_stream(400, 1 << 20, 0x5eed);
    let mut g = c.benchmark_group("live_worker");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(criterion::Throughput::Elements(BATCH as u64));
    let sizing = two_tiers(
        SizingOptions::default().background(false).buffer(2 * BATCH),
        10_000_000,
        20_000_000,
    );
    let mut at = 0usize;
    g.bench_function("model_4096_memory_and_disk_lookups", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..BATCH / 2 {
                    let k = stream[at % stream.len()];
                    at += 1;
                    sizing.record_lookup(0, k, 100_000, k < 60);
                    if k >= 60 {
                        sizing.record_lookup(1, k, 100_000, k < 200);
                    }
                }
                let t = Instant::now();
                sizing.flush();
                spent += t.elapsed();
            }
            spent
        })
    });
    g.bench_function("record_4096_lookups_baseline", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                for _ in 0..BATCH {
                    let k = stream[at % stream.len()];
                    at += 1;
                    sizing.record_lookup(0, k, 100_000, true);
                }
                spent += t.elapsed();
                sizing.flush();
            }
            spent
        })
    });
    g.finish();
}

/// One thread offering `rate` lookups per second for `seconds` to a
/// sizing with its worker; (offered, dropped).
fn offered(rate: u64, seconds: u64) -> (u64, u64) {
    let sizing = two_tiers(SizingOptions::default(), 10_000_000, 20_000_000);
    let stream = zipf_stream(400, 1 << 16, 7);
    let start = Instant::now();
    let total = rate * seconds;
    let mut sent = 0u64;
    while sent < total {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(total) {
            let k = stream[(sent as usize) % stream.len()];
            sizing.record_lookup(0, k, 100_000, k < 60);
            sent += 1;
        }
        std::hint::spin_loop();
    }
    sizing.flush();
    let r = sizing.report();
    (sent, r.dropped)
}

/// Heap bytes per distinct key of a memory + disk sizing fed `keys`
/// distinct keys (each on both tiers), exact up to `max_keys`.
fn bytes_per_key(keys: u64) -> (usize, usize) {
    let before = rss();
    let sizing = two_tiers(
        SizingOptions::default().background(false).buffer(1 << 12),
        1 << 30,
        1 << 32,
    );
    for k in 0..keys {
        sizing.record_lookup(0, k * 0x9E37_79B9, 50_000, false);
        sizing.record_lookup(1, k * 0x9E37_79B9, 50_000, false);
        if k % 1024 == 0 {
            sizing.flush();
        }
    }
    sizing.flush();
    let grown = rss().saturating_sub(before);
    let modelled = sizing.modelled_keys();
    drop(sizing);
    (grown, modelled)
}

fn all(c: &mut Criterion) {
    let handle = prometheus::install().expect("install the Prometheus recorder");
    if std::env::var_os("TIERSCOPE_ONLY_GROUPS").is_some() {
        live_hit(c);
        live_worker(c);
        return;
    }
    for keys in [1_000u64, 16_384, 100_000] {
        let (bytes, modelled) = bytes_per_key(keys);
        eprintln!(
            "{keys} distinct keys on memory + disk: {modelled} modelled, resident +{:.1} MiB, {:.0} bytes per modelled key",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / modelled.max(1) as f64
        );
    }
    for rate in [250_000u64, 500_000, 1_000_000, 2_000_000, 4_000_000] {
        let (sent, dropped) = offered(rate, 2);
        eprintln!(
            "offered {rate}/s for 2 s: {sent} lookups, dropped {dropped} ({:.2}%)",
            100.0 * dropped as f64 / sent.max(1) as f64
        );
    }
    live_hit(c);
    live_worker(c);
    black_box(handle.render().len());
}

criterion_group!(benches, all);
criterion_main!(benches);
