//! Accuracy of the sizing models against brute-force simulations and the
//! real memory tier, and trace format round trips.

use crate::common;

use std::collections::VecDeque;

use common::rng::{Rng, zipf_cdf};

use proptest::prelude::*;
use tierscope::{
    MemoryCache, ModuleCache, ModuleHash,
    sizing::{
        Curve, Request, ServedBy,
        lru::LruModel,
        memory::{MemoryModel, ShadowOptions},
        sampling::Sampling,
        stack::StackModel,
        trace::{self, CsvOptions, Format, TraceError, TraceReader},
    },
};

// ---------------------------------------------------------------------------
// Workloads

/// Sizes log-uniform in [lo, hi].
fn log_size(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    (l + (h - l) * rng.unit()).exp() as u64
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Zipf(f64),
    /// A loop over more keys than most caches hold.
    Loop,
    /// A small hot set interleaved with scans of one-off keys.
    Scan,
}

/// `n` requests over `keys` keys of sizes in [lo, hi]; with `changing`,
/// one request in eight gives its key a new size.
fn workload(
    shape: Shape,
    keys: u64,
    n: usize,
    lo: u64,
    hi: u64,
    changing: bool,
    seed: u64,
) -> Vec<Request> {
    let mut rng = Rng(seed | 1);
    let mut sizes: Vec<u64> = (0..keys).map(|_| log_size(&mut rng, lo, hi)).collect();
    let cdf: Vec<f64> = match shape {
        Shape::Zipf(a) => zipf_cdf(keys as usize, a),
        _ => Vec::new(),
    };
    let mut scan_next = keys;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = match shape {
            Shape::Zipf(_) => rng.pick(&cdf) as u64,
            Shape::Loop => i as u64 % keys,
            Shape::Scan => {
                if (i / 50) % 2 == 0 {
                    rng.below(keys.min(8))
                } else {
                    scan_next += 1;
                    scan_next
                }
            }
        };
        let size = if (key as usize) < sizes.len() {
            if changing && rng.below(8) == 0 {
                sizes[key as usize] = log_size(&mut rng, lo, hi);
            }
            sizes[key as usize]
        } else {
            log_size(&mut rng, lo, hi)
        };
        out.push(Request::new(i as u64 * 1000, key, size));
    }
    out
}

// ---------------------------------------------------------------------------
// Brute-force byte-bounded LRU (the semantics documented in sizing::lru)

struct BruteLru {
    cap: u64,
    /// Least recent first.
    order: VecDeque<(u64, u64)>,
    total: u128,
}

impl BruteLru {
    fn new(cap: u64) -> Self {
        BruteLru {
            cap,
            order: VecDeque::new(),
            total: 0,
        }
    }

    fn access(&mut self, key: u64, bytes: u64) -> bool {
        let size = bytes.max(1);
        let pos = self.order.iter().position(|&(k, _)| k == key);
        let hit = pos.is_some();
        if let Some(p) = pos {
            let (_, s) = self.order.remove(p).unwrap();
            self.total -= s as u128;
        }
        if size <= self.cap {
            self.order.push_back((key, size));
            self.total += size as u128;
        }
        while self.total > self.cap as u128 {
            let (_, s) = self.order.pop_front().unwrap();
            self.total -= s as u128;
        }
        hit
    }
}

fn brute_misses(trace: &[Request], cap: u64) -> (u64, f64) {
    let mut lru = BruteLru::new(cap);
    let (mut misses, mut hit_bytes) = (0, 0f64);
    for r in trace {
        if lru.access(r.key, r.bytes) {
            hit_bytes += r.bytes.max(1) as f64;
        } else {
            misses += 1;
        }
    }
    (misses, hit_bytes)
}

fn lru_curve(trace: &[Request], grid: &[u64], sampling: Sampling) -> Curve {
    let mut m = LruModel::new(grid, sampling);
    for r in trace {
        m.access(r);
    }
    m.curve()
}

fn check_lru_exact(trace: &[Request], grid: &[u64]) {
    let curve = lru_curve(trace, grid, Sampling::Off);
    assert_eq!(curve.sampling_rate, 1.0);
    let bytes: f64 = trace.iter().map(|r| r.bytes.max(1) as f64).sum();
    for p in &curve.points {
        let (misses, hit_bytes) = brute_misses(trace, p.capacity);
        assert_eq!(p.misses, misses, "misses at capacity {}", p.capacity);
        let want = if bytes > 0.0 { hit_bytes / bytes } else { 0.0 };
        assert!(
            (p.byte_hit_ratio - want).abs() < 1e-9,
            "byte hit ratio at {}: {} vs {want}",
            p.capacity,
            p.byte_hit_ratio
        );
    }
}

fn grid_around(lo: u64, hi: u64, points: usize) -> Vec<u64> {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    (0..points)
        .map(|i| (l + (h - l) * i as f64 / (points - 1) as f64).exp() as u64)
        .collect()
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (0.6f64..1.2).prop_map(Shape::Zipf),
        Just(Shape::Loop),
        Just(Shape::Scan),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The one-pass model equals a brute-force LRU at every grid size:
    /// Zipf 0.6-1.2, loops, scans, 1 KB - 10 MB, sizes that change.
    #[test]
    fn lru_model_is_exact(
        shape in shape(),
        keys in 4u64..300,
        n in 1usize..1500,
        changing in any::<bool>(),
        seed in any::<u64>(),
        extra in proptest::collection::vec(1u64..200_000_000, 0..4),
    ) {
        let trace = workload(shape, keys, n, 1_000, 10_000_000, changing, seed);
        let mut grid = grid_around(8_000, 400_000_000, 14);
        grid.extend(extra);
        check_lru_exact(&trace, &grid);
    }
}

#[test]
fn lru_model_is_exact_across_slot_compactions() {
    // Enough requests over enough keys to compact and grow the slot space
    // several times, with shrinking sizes (historical maxima) and objects
    // larger than some capacities (filtered trees).
    for (shape, changing) in [
        (Shape::Zipf(0.9), true),
        (Shape::Loop, false),
        (Shape::Scan, true),
    ] {
        let trace = workload(shape, 900, 6_000, 1_000, 10_000_000, changing, 7);
        check_lru_exact(&trace, &grid_around(50_000, 2_000_000_000, 9));
    }
}

#[test]
fn lru_edge_cases_do_not_panic() {
    let trace = vec![
        Request::new(5, 1, 0),
        Request::new(1, 1, u64::MAX),
        Request::new(0, u64::MAX, 1),
        Request::new(u64::MAX, 1, 3),
        Request::new(2, 1, 0),
    ];
    let c = lru_curve(&trace, &[0, 1, 2, 4, u64::MAX], Sampling::Off);
    assert_eq!(c.points.len(), 4);
    // Exact for the weights the model counts (0 as 1, at most 1 TiB).
    let weighed: Vec<Request> = trace
        .iter()
        .map(|r| Request::new(r.time_us, r.key, tierscope::sizing::weight(r.bytes)))
        .collect();
    check_lru_exact(&weighed, &[1, 2, 4, 1 << 40, u64::MAX]);
    let empty = lru_curve(&[], &[], Sampling::Rate(f64::NAN));
    assert!(empty.points.is_empty());
    assert_eq!(empty.duration_seconds, None);
}

// ---------------------------------------------------------------------------
// Sampling

fn mae(a: &Curve, b: &Curve) -> f64 {
    let n = a.points.len().max(1) as f64;
    a.points
        .iter()
        .zip(&b.points)
        .map(|(x, y)| (x.hit_ratio - y.hit_ratio).abs())
        .sum::<f64>()
        / n
}

#[test]
fn sampling_at_a_tenth_is_within_two_points_of_exact() {
    let trace = workload(
        Shape::Zipf(0.9),
        100_000,
        600_000,
        1_000,
        100_000,
        false,
        11,
    );
    let distinct = trace
        .iter()
        .map(|r| r.key)
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(distinct > 60_000, "{distinct} distinct keys");
    let grid = grid_around(1 << 20, 8 << 30, 20);
    let exact = lru_curve(&trace, &grid, Sampling::Off);
    let sampled = lru_curve(&trace, &grid, Sampling::Rate(0.1));
    assert!((sampled.sampling_rate - 0.1).abs() < 1e-6);
    let e = mae(&exact, &sampled);
    assert!(e <= 0.02, "MAE {e}");

    // Fixed memory: exact up to the bound, then sampled, the rate reported.
    let bounded = lru_curve(&trace, &grid, Sampling::Bounded { max_keys: 10_000 });
    assert!(bounded.sampling_rate < 0.2, "{}", bounded.sampling_rate);
    let e = mae(&exact, &bounded);
    assert!(e <= 0.02, "bounded MAE {e}");
    let ws = exact.working_set_bytes as f64;
    assert!(((bounded.working_set_bytes as f64 - ws) / ws).abs() < 0.1);

    // Memory shadows sampled at a tenth (mini-simulations).
    let mem_grid = grid_around(16 << 20, 4 << 30, 6);
    let mut exact_mem = MemoryModel::new(&mem_grid, ShadowOptions::default(), Sampling::Off);
    let mut mini = MemoryModel::new(&mem_grid, ShadowOptions::default(), Sampling::Rate(0.1));
    for r in &trace {
        exact_mem.access(r);
        mini.access(r);
    }
    let e = mae(&exact_mem.curve(), &mini.curve());
    assert!(e <= 0.03, "memory mini-simulation MAE {e}");
}

#[test]
fn below_the_bound_sampling_is_exact() {
    let trace = workload(Shape::Zipf(1.0), 500, 5_000, 1_000, 1_000_000, false, 3);
    let grid = grid_around(100_000, 100_000_000, 8);
    let exact = lru_curve(&trace, &grid, Sampling::Off);
    let bounded = lru_curve(&trace, &grid, Sampling::default());
    assert_eq!(exact, bounded);
}

// ---------------------------------------------------------------------------
// Memory shadows against the real tier

struct Modules {
    engine: wasmer::Engine,
    modules: Vec<(ModuleHash, wasmer::Module)>,
}

fn modules(n: usize) -> Modules {
    let engine = wasmer::Engine::default();
    let modules = (0..n)
        .map(|i| {
            let wasm = tierscope::corpus::tiny(0x5151_0000 + i as u64);
            let hash = ModuleHash::new(&wasm);
            (hash, wasmer::Module::new(&engine, &wasm).unwrap())
        })
        .collect();
    Modules { engine, modules }
}

/// Replays `trace` single-threaded through a real `MemoryCache` (weights
/// given by `weights::record`), and each memory miss through a brute-force
/// disk LRU of `disk` bytes; returns (memory misses, compiles).
fn replay_real(m: &Modules, trace: &[Request], memory: MemoryCache, disk: u64) -> (u64, u64) {
    let ekey = tierscope::engine::engine_key(&m.engine);
    let mut lower = BruteLru::new(disk);
    let (mut misses, mut compiles) = (0, 0);
    for r in trace {
        let (hash, module) = &m.modules[r.key as usize];
        if memory.get(*hash, &m.engine).is_some() {
            continue;
        }
        misses += 1;
        if !lower.access(r.key, r.bytes) {
            compiles += 1;
        }
        tierscope::weights::record(*hash, ekey, r.bytes);
        futures::executor::block_on(memory.save(*hash, &m.engine, module)).unwrap();
    }
    (misses, compiles)
}

#[test]
fn memory_shadows_equal_a_real_memory_tier() {
    let m = modules(64);
    let grid = [256 << 10, 1 << 20, 3 << 20, 8 << 20, 20 << 20, 60 << 20];
    let disk_grid = [4 << 20, 32 << 20];
    for (i, shape) in [Shape::Zipf(0.8), Shape::Zipf(1.1), Shape::Loop, Shape::Scan]
        .into_iter()
        .enumerate()
    {
        // Scans use one-off keys: map every key into the module set.
        let mut trace = workload(shape, 64, 4_000, 8_000, 3_000_000, i == 0, 40 + i as u64);
        for r in &mut trace {
            r.key %= 64;
        }
        // One shard: the default below 64 MiB, and what makes a shadow
        // exact request by request (documented in sizing::memory).
        let options = ShadowOptions {
            shards: Some(1),
            ..ShadowOptions::default()
        };
        let mut model = MemoryModel::new(&grid, options, Sampling::Off);
        let mut stack = StackModel::new(&grid, &disk_grid, options, Sampling::Off);
        for r in &trace {
            model.access(r);
            stack.access(r);
        }
        let curve = model.curve();
        let stack_grid = stack.grid();
        for (gi, p) in curve.points.iter().enumerate() {
            for (di, &disk) in disk_grid.iter().enumerate() {
                let real = MemoryCache::builder(p.capacity).shards(1).build();
                let (misses, compiles) = replay_real(&m, &trace, real, disk);
                assert_eq!(
                    p.misses, misses,
                    "{shape:?}: memory misses at {}",
                    p.capacity
                );
                let sp = &stack_grid[gi * disk_grid.len() + di];
                assert_eq!((sp.memory, sp.disk), (p.capacity, disk));
                assert_eq!(
                    sp.compiles, compiles,
                    "{shape:?}: compiles at memory {} disk {disk}",
                    p.capacity
                );
            }
        }
        // The tier's default options (one shard below 64 MiB) give the same.
        let mut default = MemoryModel::new(&grid, ShadowOptions::default(), Sampling::Off);
        for r in &trace {
            default.access(r);
        }
        assert_eq!(default.curve(), curve);
    }
}

#[test]
fn an_entry_above_ninety_percent_of_a_shard_is_refused_by_both() {
    let m = modules(2);
    let trace: Vec<Request> = (0..10).map(|i| Request::new(i, i % 2, 950_000)).collect();
    let mut model = MemoryModel::new(&[1_000_000], ShadowOptions::default(), Sampling::Off);
    for r in &trace {
        model.access(r);
    }
    let real = MemoryCache::new(1_000_000);
    let (misses, _) = replay_real(&m, &trace, real, 0);
    assert_eq!(misses, 10);
    assert_eq!(model.curve().points[0].misses, 10);
}

// ---------------------------------------------------------------------------
// Compile times

#[test]
fn compile_seconds_follow_the_misses() {
    // Two keys alternating, each compiled once in the trace (1 s and 3 s).
    let mut trace = Vec::new();
    for i in 0..100u64 {
        let mut r = Request::new(i * 36_000_000, i % 2, 1_000);
        if i < 2 {
            r.compile_us = Some(1_000_000 + 2_000_000 * (i % 2));
            r.served = Some(ServedBy::Compile);
        }
        trace.push(r);
    }
    let c = lru_curve(&trace, &[1_000, 2_000], Sampling::Off);
    // 1 KB: every request misses: 50 × 1 s + 50 × 3 s over 99 × 36 s.
    let p = &c.points[0];
    assert_eq!(p.misses, 100);
    assert!((p.compile_seconds.unwrap() - 200.0).abs() < 1e-9);
    let per_hour = c.compile_seconds_per_hour(p).unwrap();
    assert!((per_hour - 200.0 * 3600.0 / (99.0 * 36.0)).abs() < 1e-6);
    assert!((c.points[1].compile_seconds.unwrap() - 4.0).abs() < 1e-9);
    assert_eq!(c.knee(0.01).unwrap().capacity, 2_000);
    // No compile times: none reported.
    let plain: Vec<Request> = trace
        .iter()
        .map(|r| Request::new(r.time_us, r.key, r.bytes))
        .collect();
    assert_eq!(
        lru_curve(&plain, &[1_000], Sampling::Off).points[0].compile_seconds,
        None
    );
}

// ---------------------------------------------------------------------------
// Trace formats

fn read_all(bytes: &[u8], format: Format) -> Result<Vec<Request>, TraceError> {
    TraceReader::new(bytes, format).collect()
}

fn request() -> impl Strategy<Value = Request> {
    (
        0u64..u32::MAX as u64,
        any::<u64>(),
        0u64..=u32::MAX as u64,
        proptest::option::of(0u64..10_000_000_000),
        proptest::option::of(prop_oneof![
            Just(ServedBy::Memory),
            Just(ServedBy::Disk),
            Just(ServedBy::Remote),
            Just(ServedBy::Compile),
        ]),
    )
        .prop_map(|(t, key, bytes, compile_us, served)| Request {
            time_us: t,
            key,
            bytes,
            compile_us,
            served,
        })
}

proptest! {
    #[test]
    fn tierscope_trace_round_trips(reqs in proptest::collection::vec(request(), 0..200)) {
        let mut w = trace::TierscopeWriter::new(Vec::new()).unwrap();
        for r in &reqs {
            w.write(r).unwrap();
        }
        let bytes = w.finish().unwrap();
        prop_assert_eq!(read_all(&bytes, Format::Tierscope).unwrap(), reqs);
    }

    #[test]
    fn oracle_general_round_trips(
        reqs in proptest::collection::vec(request(), 0..200),
        few_keys in any::<bool>(),
    ) {
        // Whole seconds, no compile or tier: what the format holds.
        let reqs: Vec<Request> = reqs
            .iter()
            .map(|r| Request::new(r.time_us * 1_000_000, if few_keys { r.key % 5 } else { r.key }, r.bytes))
            .collect();
        let mut bytes = Vec::new();
        trace::write_oracle_general(&mut bytes, &reqs).unwrap();
        prop_assert_eq!(bytes.len(), reqs.len() * 24);
        prop_assert_eq!(read_all(&bytes, Format::OracleGeneral).unwrap(), reqs.clone());
        // The next-access field: the index of the next request to the same
        // object, -1 for none.
        for (i, rec) in bytes.chunks(24).enumerate() {
            let next = i64::from_le_bytes(rec[16..24].try_into().unwrap());
            let want = reqs[i + 1..]
                .iter()
                .position(|r| r.key == reqs[i].key)
                .map_or(-1, |p| (i + 1 + p) as i64);
            prop_assert_eq!(next, want, "record {}", i);
        }
    }

    #[test]
    fn csv_round_trips(
        reqs in proptest::collection::vec(request(), 0..200),
        header in any::<bool>(),
        layout in 0usize..3,
    ) {
        let mut csv = CsvOptions { has_header: header, ..CsvOptions::default() };
        match layout {
            0 => {}
            1 => { csv.time_col = Some(3); csv.key_col = 1; csv.size_col = Some(2); csv.delimiter = b'\t'; }
            _ => { csv.time_col = None; csv.size_col = None; csv.key_col = 4; }
        }
        let reqs: Vec<Request> = reqs
            .iter()
            .map(|r| Request::new(
                if csv.time_col.is_some() { r.time_us * 1_000_000 } else { 0 },
                r.key,
                if csv.size_col.is_some() { r.bytes } else { 1 },
            ))
            .collect();
        let mut bytes = Vec::new();
        trace::write_csv(&mut bytes, &csv, &reqs).unwrap();
        prop_assert_eq!(read_all(&bytes, Format::Csv(csv)).unwrap(), reqs);
    }

    #[test]
    fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = read_all(&bytes, Format::OracleGeneral);
        let _ = read_all(&bytes, Format::Tierscope);
        let _ = read_all(&bytes, Format::Csv(CsvOptions::default()));
        let _ = read_all(&bytes, Format::Csv(CsvOptions { numeric_keys: false, ..CsvOptions::default() }));
    }
}

#[test]
fn malformed_traces_name_the_offset_or_line() {
    // A truncated binary record.
    let mut bytes = Vec::new();
    trace::write_oracle_general(&mut bytes, &[Request::new(0, 1, 2), Request::new(0, 1, 2)])
        .unwrap();
    bytes.truncate(40);
    let err = read_all(&bytes, Format::OracleGeneral).unwrap_err();
    assert!(
        matches!(
            err,
            TraceError::Truncated {
                offset: 24,
                got: 16
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("byte offset 24"), "{err}");

    // A next access that points backwards: not oracleGeneral.
    let mut bad = Vec::new();
    trace::write_oracle_record(&mut bad, 0, 1, 1, -1).unwrap();
    trace::write_oracle_record(&mut bad, 0, 1, 1, 0).unwrap();
    let err = read_all(&bad, Format::OracleGeneral).unwrap_err();
    assert!(err.to_string().contains("byte offset 24"), "{err}");

    // CSV: the line is named.
    let err = read_all(b"1,2,3\n4,x,5\n", Format::Csv(CsvOptions::default())).unwrap_err();
    assert!(err.to_string().starts_with("line 2:"), "{err}");
    let err = read_all(b"1,2\n", Format::Csv(CsvOptions::default())).unwrap_err();
    assert!(err.to_string().contains("line 1: no column 3"), "{err}");

    // tierscope: the header is required.
    let err = read_all(b"1,2,3,,\n", Format::Tierscope).unwrap_err();
    assert!(
        err.to_string().contains("line 1: not a tierscope trace"),
        "{err}"
    );
    let text = format!("{}\n1,2,3,,memory\n1,2,3,,attic\n", trace::TIERSCOPE_HEADER);
    let err = read_all(text.as_bytes(), Format::Tierscope).unwrap_err();
    assert!(err.to_string().starts_with("line 3:"), "{err}");
}

#[test]
fn csv_string_keys_and_options() {
    let csv = CsvOptions::parse(
        "time-col=0,obj-id-col=2,obj-size-col=1,obj-id-is-num=false,has-header=true,delimiter=;",
    )
    .unwrap();
    let got = read_all(
        b"size;name\n10;\"a.wasm\"\n20;b.wasm\n30;a.wasm\n",
        Format::Csv(csv),
    )
    .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].key, got[2].key);
    assert_ne!(got[0].key, got[1].key);
    assert_eq!(got[0].key, trace::string_key("a.wasm"));
    assert_eq!((got[1].bytes, got[1].time_us), (20, 0));
    assert!(CsvOptions::parse("obj-id-col=x").is_err());
    assert!(CsvOptions::parse("colour=red").is_err());
}

#[test]
fn formats_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let ts = dir.path().join("a.trace");
    std::fs::write(&ts, format!("{}\n", trace::TIERSCOPE_HEADER)).unwrap();
    assert_eq!(Format::detect(&ts).unwrap(), Format::Tierscope);
    let bin = dir.path().join("x.oracleGeneral.bin");
    std::fs::write(&bin, [0u8; 24]).unwrap();
    assert_eq!(Format::detect(&bin).unwrap(), Format::OracleGeneral);
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "1,2,3\n").unwrap();
    assert_eq!(
        Format::detect(&csv).unwrap(),
        Format::Csv(CsvOptions::default())
    );
    assert!(Format::detect(&dir.path().join("missing")).is_err());
}

// ---------------------------------------------------------------------------
// The CLI

#[cfg(feature = "cli")]
mod cli {
    use std::process::Command;

    use super::*;

    fn tierscope(args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tierscope"))
            .args(args)
            .output()
            .unwrap()
    }

    fn demo_like_trace(path: &std::path::Path) {
        let mut w = trace::TierscopeWriter::new(std::fs::File::create(path).unwrap()).unwrap();
        let reqs = workload(Shape::Zipf(1.0), 40, 3_000, 25_000, 2_000_000, false, 5);
        let mut seen = std::collections::HashSet::new();
        for mut r in reqs {
            if seen.insert(r.key) {
                r.compile_us = Some(r.bytes / 10);
                r.served = Some(ServedBy::Compile);
            }
            w.write(&r).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn size_prints_tables_charts_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("demo.trace");
        demo_like_trace(&t);
        let prefix = dir.path().join("chart");
        let out = tierscope(&[
            "size",
            t.to_str().unwrap(),
            "--memory",
            "8MiB",
            "--disk",
            "16MiB",
            "--plot",
            prefix.to_str().unwrap(),
            "--no-progress",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "memory tier",
            "disk tier behind memory",
            "compile s/hour",
            "<- current",
            "the knee is",
            "halving to 4.0 MiB",
            "doubling to 16.0 MiB",
            "whole stack",
        ] {
            assert!(stdout.contains(want), "no `{want}` in:\n{stdout}");
        }
        for f in [
            "chart-memory.svg",
            "chart-memory.png",
            "chart-disk.svg",
            "chart-disk.png",
        ] {
            let bytes = std::fs::read(dir.path().join(f)).unwrap();
            if f.ends_with(".png") {
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{f}");
            } else {
                assert!(String::from_utf8_lossy(&bytes).contains("<svg"), "{f}");
            }
        }

        let out = tierscope(&[
            "size",
            t.to_str().unwrap(),
            "--disk",
            "4MiB",
            "--json",
            "--scales",
            "0.5,1,2",
        ]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tier = &v["tiers"][0];
        assert_eq!(tier["tier"], "disk");
        assert_eq!(tier["points"].as_array().unwrap().len(), 3);
        assert_eq!(tier["recommendation"]["current"], 4 << 20);
        assert!(
            tier["points"][0]["compile_seconds_per_hour"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn bad_input_exits_2_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.oracleGeneral.bin");
        let mut bytes = Vec::new();
        trace::write_oracle_record(&mut bytes, 0, 1, 1, -1).unwrap();
        bytes.extend_from_slice(&[0; 6]);
        std::fs::write(&bad, bytes).unwrap();
        let cases: Vec<(Vec<String>, &str)> = vec![
            (
                vec![
                    "size".into(),
                    bad.display().to_string(),
                    "--disk".into(),
                    "1MiB".into(),
                ],
                "byte offset 24",
            ),
            (vec!["size".into(), bad.display().to_string()], "--memory"),
            (
                vec![
                    "size".into(),
                    dir.path().join("none").display().to_string(),
                    "--disk".into(),
                    "1MiB".into(),
                ],
                "none",
            ),
            (
                vec![
                    "size".into(),
                    bad.display().to_string(),
                    "--disk".into(),
                    "lots".into(),
                ],
                "lots",
            ),
            (
                vec![
                    "size".into(),
                    bad.display().to_string(),
                    "--disk".into(),
                    "1MiB".into(),
                    "--csv".into(),
                    "bogus=1".into(),
                    "--format".into(),
                    "csv".into(),
                ],
                "bogus",
            ),
        ];
        for (args, want) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = tierscope(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(want), "{args:?}: {stderr}");
        }
    }
}
