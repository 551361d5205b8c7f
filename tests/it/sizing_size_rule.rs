//! The size-on-hit rule: under `SizeOnHit::Keep` a hit keeps the size the
//! object was stored with (libCacheSim's rule), checked against a
//! brute-force LRU; under `Update` (the default) it takes the new size.

use std::collections::VecDeque;

use proptest::prelude::*;
use tierscope::sizing::{
    Request,
    lru::{LruModel, SizeOnHit},
    sampling::Sampling,
};

/// A byte-bounded LRU, least recent first; `keep`: a hit keeps the stored
/// size. Returns the misses of `trace`.
fn brute(trace: &[Request], cap: u64, keep: bool) -> u64 {
    let mut order: VecDeque<(u64, u64)> = VecDeque::new();
    let mut total = 0u64;
    let mut misses = 0;
    for r in trace {
        let size = r.bytes.max(1);
        let pos = order.iter().position(|&(k, _)| k == r.key);
        let stored = pos.map(|p| {
            let (_, s) = order.remove(p).unwrap();
            total -= s;
            s
        });
        misses += u64::from(stored.is_none());
        let size = match stored {
            Some(s) if keep => s,
            _ => size,
        };
        if size <= cap {
            order.push_back((r.key, size));
            total += size;
        }
        while total > cap {
            let (_, s) = order.pop_front().unwrap();
            total -= s;
        }
    }
    misses
}

fn trace() -> impl Strategy<Value = Vec<Request>> {
    proptest::collection::vec((0u64..12, 1u64..400), 1..300).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (k, b))| Request::new(i as u64, k, b))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn both_rules_match_a_brute_force_lru(reqs in trace()) {
        let grid = [100u64, 300, 700, 1500, 4000];
        for (rule, keep) in [(SizeOnHit::Update, false), (SizeOnHit::Keep, true)] {
            let mut m = LruModel::new(&grid, Sampling::Off).size_on_hit(rule);
            for r in &reqs {
                m.access(r);
            }
            let c = m.curve();
            for p in &c.points {
                prop_assert_eq!(p.misses, brute(&reqs, p.capacity, keep), "{:?} at {}", rule, p.capacity);
            }
        }
    }
}

#[test]
fn the_rules_differ_only_when_sizes_change() {
    // A key stored at 100 bytes, asked again at 900: kept, it fits beside
    // another 100-byte key in 950 bytes; updated, it pushes that key out.
    let reqs = [(1, 100), (2, 100), (1, 900), (2, 100)]
        .iter()
        .enumerate()
        .map(|(i, &(k, b))| Request::new(i as u64, k, b))
        .collect::<Vec<_>>();
    let misses = |rule| {
        let mut m = LruModel::new(&[950], Sampling::Off).size_on_hit(rule);
        reqs.iter().for_each(|r| m.access(r));
        m.curve().points[0].misses
    };
    assert_eq!(misses(SizeOnHit::Keep), 2);
    assert_eq!(misses(SizeOnHit::Update), 3);
}
