//! Sampled curves against exact ones on seeded Zipf traces (sizes
//! 10 KB-2 MB): within 0.01 mean absolute error and 0.02 at worst, for hit
//! ratio and byte hit ratio, at the default bound, as `tierscope size`
//! samples (the most requested keys, from a first pass, modelled at every
//! request); no worse as the bound grows; and live sizing's one-pass
//! sampling within bounds too. (BENCHMARKS.md, "Sampling error", has the
//! same errors on traces of up to 10 M objects, from
//! `benches/sizing_accuracy.rs`.)

use tierscope::sizing::{
    Curve, Request,
    lru::LruModel,
    memory::{MemoryModel, ShadowOptions},
    sampling::{FrequentKeys, Sampling},
};

use crate::sizing_traces::{Spec, errors, log_grid};

/// The LRU model as `tierscope size --disk` runs it: a first pass finds
/// the most requested keys (a tenth of the bound, at least 1,000).
fn lru_size(reqs: &[Request], grid: &[u64], sampling: Sampling) -> Curve {
    let bound = match sampling {
        Sampling::Bounded { max_keys } => max_keys,
        _ => 100_000,
    };
    let mut frequent = FrequentKeys::new((bound / 10).max(1_000));
    reqs.iter().for_each(|r| frequent.observe(r.key));
    let mut m = LruModel::new(grid, sampling).exact_keys(frequent.keys());
    reqs.iter().for_each(|r| m.access(r));
    m.curve()
}

/// One pass, as live sizing runs it.
fn lru_live(reqs: &[Request], grid: &[u64], sampling: Sampling) -> Curve {
    let mut m = LruModel::new(grid, sampling);
    reqs.iter().for_each(|r| m.access(r));
    m.curve()
}

/// 12 sizes from 0.1 % to 100 % of the bytes of all `spec`'s objects.
fn grid(spec: &Spec) -> Vec<u64> {
    let mean = (spec.hi - spec.lo) as f64 / ((spec.hi as f64).ln() - (spec.lo as f64).ln());
    let total = spec.objects as f64 * mean;
    log_grid((total / 1000.0) as u64, total as u64, 12)
}

fn assert_within(what: &str, exact: &Curve, sampled: &Curve, mae: f64, max: f64) {
    let (hm, hx, bm, bx) = errors(exact, sampled);
    assert!(
        hm <= mae && hx <= max && bm <= mae && bx <= max,
        "{what} (rate {:.4}): hit ratio MAE {hm:.4} max {hx:.4}, byte hit ratio MAE {bm:.4} max {bx:.4}",
        sampled.sampling_rate
    );
}

#[test]
fn lru_curves_at_the_default_bound_are_within_a_point_of_exact() {
    // 400 k objects, 1.2 M requests: the default bound of 100 k keys
    // samples them at about a quarter to a third. Zipf 1.2 asks for few
    // distinct objects (about 60 k here): a bound of 25 k keys stands in
    // for the default (a smaller bound only makes the error larger).
    for (alpha, bound) in [(0.6, 100_000), (0.9, 100_000), (1.2, 25_000)] {
        let spec = Spec::zipf(alpha, 400_000, 1_200_000, 7);
        let reqs: Vec<Request> = spec.requests().collect();
        let grid = grid(&spec);
        let exact = lru_live(&reqs, &grid, Sampling::Off);
        assert_eq!(exact.sampling_rate, 1.0);
        let sampled = lru_size(&reqs, &grid, Sampling::Bounded { max_keys: bound });
        assert!(
            sampled.sampling_rate < 0.9,
            "Zipf {alpha}: {}",
            sampled.sampling_rate
        );
        assert_within(&format!("Zipf {alpha}"), &exact, &sampled, 0.01, 0.02);
        // Requests, distinct keys and working set are exact or close.
        assert_eq!(sampled.requests, exact.requests);
        let d = sampled.distinct_keys as f64 / exact.distinct_keys as f64;
        assert!((d - 1.0).abs() < 0.05, "Zipf {alpha}: distinct keys {d}");

        // A tenth of that bound, a rate of a few percent: within twice the
        // bounds (with little skew, the sizes of 10 k sampled objects of
        // 10 KB-2 MB move the byte hit ratio), and the error at the
        // default bound is no larger.
        let small = lru_size(&reqs, &grid, Sampling::Bounded { max_keys: 10_000 });
        assert!(small.sampling_rate < sampled.sampling_rate);
        assert_within(
            &format!("Zipf {alpha}, 10 k keys"),
            &exact,
            &small,
            0.02,
            0.04,
        );
        let (s, _, sb, _) = errors(&exact, &small);
        let (d, _, db, _) = errors(&exact, &sampled);
        assert!(
            d <= s + 0.002,
            "Zipf {alpha}: MAE {d} at {bound} keys, {s} at 10 k"
        );
        assert!(
            db <= sb + 0.002,
            "Zipf {alpha}: byte MAE {db} at {bound} keys, {sb} at 10 k"
        );
    }
}

#[test]
fn one_pass_sampling_as_live_sizing_runs_it_is_within_bounds() {
    // Without the first pass, at the default bound.
    let spec = Spec::zipf(0.9, 400_000, 1_200_000, 13);
    let reqs: Vec<Request> = spec.requests().collect();
    let grid = grid(&spec);
    let exact = lru_live(&reqs, &grid, Sampling::Off);
    let sampled = lru_live(&reqs, &grid, Sampling::default());
    assert!(sampled.sampling_rate < 0.5, "{}", sampled.sampling_rate);
    assert_within("one pass", &exact, &sampled, 0.01, 0.02);
}

#[test]
fn a_fixed_rate_of_a_tenth_is_within_a_point_of_exact() {
    let spec = Spec::zipf(0.9, 200_000, 1_000_000, 11);
    let reqs: Vec<Request> = spec.requests().collect();
    let grid = grid(&spec);
    let exact = lru_live(&reqs, &grid, Sampling::Off);
    let sampled = lru_size(&reqs, &grid, Sampling::Rate(0.1));
    assert!((sampled.sampling_rate - 0.1).abs() < 1e-6);
    assert_within("rate 0.1", &exact, &sampled, 0.01, 0.02);
    // Misses are estimated, against the exact request count.
    assert_eq!(sampled.requests, exact.requests);
    for (e, s) in exact.points.iter().zip(&sampled.points) {
        let gap = (e.misses as f64 - s.misses as f64).abs() / exact.requests as f64;
        assert!(gap <= 0.02, "{e:?} vs {s:?}");
    }
}

#[test]
fn the_most_requested_keys_are_found_in_bounded_memory() {
    let spec = Spec::zipf(1.0, 100_000, 500_000, 5);
    let reqs: Vec<Request> = spec.requests().collect();
    let mut counts = std::collections::HashMap::<u64, u64>::new();
    reqs.iter()
        .for_each(|r| *counts.entry(r.key).or_default() += 1);
    let mut top: Vec<(u64, u64)> = counts.iter().map(|(&k, &c)| (c, k)).collect();
    top.sort_unstable_by(|a, b| b.cmp(a));
    let mut frequent = FrequentKeys::new(1_000);
    reqs.iter().for_each(|r| frequent.observe(r.key));
    let found: std::collections::HashSet<u64> = frequent.keys().into_iter().collect();
    assert!(found.len() <= 1_000);
    // Every key asked for more than 1 / 1,001 of the time is kept.
    for &(c, k) in top
        .iter()
        .take_while(|(c, _)| *c * 1_001 > reqs.len() as u64)
    {
        assert!(found.contains(&k), "a key asked {c} times was lost");
    }
    // And most of the hundred most requested.
    let hits = top
        .iter()
        .take(100)
        .filter(|(_, k)| found.contains(k))
        .count();
    assert!(hits >= 95, "{hits} of the top 100");
}

#[test]
fn memory_mini_simulations_at_a_tenth_are_within_bounds() {
    // The memory tier's shadows, sampled as mini-simulations (ATC '17):
    // hit ratio within a point; byte hit ratio within two (objects keep
    // their sizes in a cache a tenth the size: large ones weigh more).
    let spec = Spec::zipf(0.9, 100_000, 600_000, 3);
    let reqs: Vec<Request> = spec.requests().collect();
    let g = grid(&spec);
    let grid: Vec<u64> = g[3..9].to_vec();
    let options = ShadowOptions {
        shards: Some(1),
        ..ShadowOptions::default()
    };
    let mut exact = MemoryModel::new(&grid, options, Sampling::Off);
    let mut mini = MemoryModel::new(&grid, options, Sampling::Rate(0.1));
    for r in &reqs {
        exact.access(r);
        mini.access(r);
    }
    let (hm, hx, bm, bx) = errors(&exact.curve(), &mini.curve());
    assert!(hm <= 0.01 && hx <= 0.02, "hit ratio MAE {hm} max {hx}");
    assert!(bm <= 0.02 && bx <= 0.04, "byte hit ratio MAE {bm} max {bx}");
}
