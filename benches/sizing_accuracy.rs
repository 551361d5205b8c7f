//! Sampling error of the sizing models against their exact runs, on
//! seeded Zipf traces (sizes 10 KB-2 MB), for several bounds and fixed
//! rates, beside the time of the exact run. Prints Markdown tables for
//! BENCHMARKS.md; not a criterion bench (it measures error, not time).
//!
//! "LRU (size)" is the LRU model as `tierscope size --disk` runs it (the
//! most requested keys, from a first pass, modelled at every request);
//! "LRU (live)" without that first pass, as live sizing runs it.
//!
//! `cargo bench --all-features --bench sizing_accuracy` runs the whole
//! matrix (Zipf 0.6, 0.9, 1.2 over 100 k, 1 M and 10 M objects; about
//! 15 minutes on a quiet machine); `TIERSCOPE_ACCURACY=quick` only the
//! 1 M-object traces, `TIERSCOPE_ACCURACY=100000,10000000` those counts.

use std::time::Instant;

#[path = "../tests/it/sizing_traces.rs"]
mod traces;

use tierscope::sizing::{
    Curve, Request,
    lru::LruModel,
    memory::{MemoryModel, ShadowOptions},
    sampling::{FrequentKeys, Sampling},
};
use traces::{Spec, errors, log_grid};

fn lru(reqs: &[Request], grid: &[u64], sampling: Sampling) -> (Curve, f64) {
    let t = Instant::now();
    let mut m = LruModel::new(grid, sampling);
    for r in reqs {
        m.access(r);
    }
    (m.curve(), t.elapsed().as_secs_f64())
}

/// As `tierscope size --disk` runs: a first pass finds the most requested
/// keys (a tenth of the bound, at least 1,000), modelled at every request.
fn lru_frequent(reqs: &[Request], grid: &[u64], sampling: Sampling) -> (Curve, f64) {
    let t = Instant::now();
    let bound = match sampling {
        Sampling::Bounded { max_keys } => max_keys,
        _ => 100_000,
    };
    let mut frequent = FrequentKeys::new((bound / 10).max(1_000));
    reqs.iter().for_each(|r| frequent.observe(r.key));
    let mut m = LruModel::new(grid, sampling).exact_keys(frequent.keys());
    for r in reqs {
        m.access(r);
    }
    (m.curve(), t.elapsed().as_secs_f64())
}

fn memory(reqs: &[Request], grid: &[u64], sampling: Sampling) -> (Curve, f64) {
    let options = ShadowOptions {
        shards: Some(1),
        ..ShadowOptions::default()
    };
    let t = Instant::now();
    let mut m = MemoryModel::new(grid, options, sampling);
    for r in reqs {
        m.access(r);
    }
    (m.curve(), t.elapsed().as_secs_f64())
}

fn samplings() -> Vec<(String, Sampling)> {
    let mut v: Vec<(String, Sampling)> = [10_000usize, 25_000, 50_000, 100_000, 200_000, 400_000]
        .into_iter()
        .map(|k| {
            (
                format!(
                    "bound {} k{}",
                    k / 1000,
                    if k == 100_000 { " (default)" } else { "" }
                ),
                Sampling::Bounded { max_keys: k },
            )
        })
        .collect();
    for r in [0.01, 0.1, 0.2, 0.5] {
        v.push((format!("rate {r}"), Sampling::Rate(r)));
    }
    v
}

fn main() {
    // Criterion-style arguments (`--bench`, filters) are ignored.
    // TIERSCOPE_ACCURACY=quick: the 1 M-object traces only; a list of
    // object counts (e.g. 100000,10000000): those.
    let only = std::env::var("TIERSCOPE_ACCURACY").unwrap_or_default();
    let all = [
        (100_000u64, 10_000_000u64),
        (1_000_000, 10_000_000),
        (10_000_000, 20_000_000),
    ];
    let sizes: Vec<(u64, u64)> = match only.as_str() {
        "" => all.to_vec(),
        "quick" => vec![all[1]],
        list => all
            .into_iter()
            .filter(|(o, _)| list.split(',').any(|x| x.trim().parse() == Ok(*o)))
            .collect(),
    };
    let mut specs = Vec::new();
    for &(objects, requests) in &sizes {
        for alpha in [0.6, 0.9, 1.2] {
            specs.push(Spec::zipf(alpha, objects, requests, 24));
        }
    }
    println!(
        "| trace | model | sampling | rate | hit ratio MAE | max | byte hit ratio MAE | max | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for spec in specs {
        let reqs: Vec<Request> = spec.requests().collect();
        // 12 sizes from 0.1 % to 100 % of all objects' bytes.
        let total = spec.objects as f64 * (spec.hi - spec.lo) as f64
            / ((spec.hi as f64).ln() - (spec.lo as f64).ln());
        let grid = log_grid((total / 1000.0) as u64, total as u64, 12);
        let name = format!(
            "Zipf {} over {} objects, {} M requests",
            spec.alpha,
            human(spec.objects),
            spec.requests / 1_000_000
        );
        let (exact, secs) = lru(&reqs, &grid, Sampling::Off);
        println!("| {name} | LRU | exact | 1 | - | - | - | - | {secs:.2} |");
        for (label, s) in samplings() {
            let (c, secs) = lru_frequent(&reqs, &grid, s);
            row(&name, "LRU (size)", &label, &exact, &c, secs);
            let (c, secs) = lru(&reqs, &grid, s);
            row(&name, "LRU (live)", &label, &exact, &c, secs);
        }
        // Memory-tier shadows (quick_cache) on the 1 M-object traces: 8
        // sizes (exact shadows are costly).
        if spec.objects == 1_000_000 {
            let mgrid = log_grid((total / 300.0) as u64, (total / 3.0) as u64, 8);
            let (exact, secs) = memory(&reqs, &mgrid, Sampling::Off);
            println!("| {name} | memory | exact | 1 | - | - | - | - | {secs:.2} |");
            for (label, s) in [
                ("bound 100 k (default)".to_string(), Sampling::default()),
                ("rate 0.01".to_string(), Sampling::Rate(0.01)),
            ] {
                let (c, secs) = memory(&reqs, &mgrid, s);
                row(&name, "memory", &label, &exact, &c, secs);
            }
        }
    }
}

fn row(name: &str, model: &str, label: &str, exact: &Curve, c: &Curve, secs: f64) {
    let (hm, hx, bm, bx) = errors(exact, c);
    println!(
        "| {name} | {model} | {label} | {:.4} | {hm:.4} | {hx:.4} | {bm:.4} | {bx:.4} | {secs:.2} |",
        c.sampling_rate
    );
}

fn human(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{} M", n / 1_000_000)
    } else {
        format!("{} k", n / 1000)
    }
}
