//! Shadows of the memory tier: its own policy at each grid capacity.
//!
//! quick_cache's S3-FIFO/CLOCK-Pro-like policy has no inclusion property
//! (a bigger cache is not a superset of a smaller one), so one pass cannot
//! answer every size: each grid point gets a shadow, a quick_cache whose
//! values are only the entries' weights. Every option is derived by the
//! same function as [`MemoryCache`](crate::MemoryCache)'s builder
//! (`tier/memory_policy.rs`): shard count, `estimated_items_capacity`
//! (which sizes the ghost list), hot allocation, weight capacity; each
//! shard is a quick_cache shard with exactly the options quick_cache's
//! concurrent cache gives its shards. So, as in the tier:
//! - an entry heavier than `hot_allocation` (0.9) of its shard's capacity
//!   is refused (never admitted);
//! - entries weigh at least 1 byte;
//! - a request is a `get`, and a miss is followed by an insert (the
//!   tier's `save` after a compile or a lower tier's hit).
//!
//! **Exactness.** With one shard (the default below 64 MiB, or
//! `shards: Some(1)`), a shadow gives exactly the hits of the same requests
//! replayed single-threaded through a real `MemoryCache` of that capacity
//! (`tests/it/sizing.rs` checks it). With several shards, keys are spread by
//! a hash whose seed differs from the tier's (the tier's is random per
//! process), so hits match in distribution, not request by request.
//!
//! With sampling, each shadow is a mini-simulation (ATC'17): the sampled
//! requests replayed in a cache of rate × capacity (and rate × the expected
//! item count), object sizes unscaled.

use quick_cache::{OptionsBuilder, Weighter, unsync};

use super::{
    Curve, Request,
    estimate::{Counts, SampledTotals, point},
    normalize_grid,
    sampling::{Front, Modelled, Sampling},
};
use crate::tier::memory_policy::{self, MemoryPolicy};

pub use crate::tier::memory_policy::ShadowOptions;

#[derive(Clone, Copy, Default)]
struct ByWeight;

impl Weighter<u64, u64> for ByWeight {
    fn weight(&self, _key: &u64, val: &u64) -> u64 {
        // As the tier: zero-weight entries would never be evicted.
        (*val).max(1)
    }
}

type ShadowShard = unsync::Cache<u64, u64, ByWeight, super::MixState>;

/// One memory tier of one capacity, values replaced by weights.
pub(crate) struct Shadow {
    shards: Vec<ShadowShard>,
    policy: MemoryPolicy,
    /// Per-shard weight capacity at rate 1.
    shard_weight: u64,
    /// Per-shard item estimate and weight capacity in use (at the rate).
    scaled: (usize, u64),
}

/// One shard of a shadow, as quick_cache's concurrent cache makes each of
/// its shards: `items` sizes the ghost list.
fn shadow_shard(items: usize, weight: u64, hot_allocation: f64) -> ShadowShard {
    let options = OptionsBuilder::new()
        .weight_capacity(weight)
        .estimated_items_capacity(items)
        .hot_allocation(hot_allocation)
        .build()
        .ok();
    match options {
        Some(o) => ShadowShard::with_options(o, ByWeight, super::MixState, Default::default()),
        // Unreachable (both required fields are set); a plain cache of the
        // same bound keeps the model going.
        None => ShadowShard::with(items, weight, ByWeight, super::MixState, Default::default()),
    }
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("capacity", &self.policy.capacity)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Shadow {
    /// A shadow of a tier of `capacity` bytes, sampled at `rate`.
    pub(crate) fn new(capacity: u64, options: &ShadowOptions, rate: f64) -> Self {
        let policy = memory_policy::derive(
            capacity,
            options.shards,
            options.hot_allocation,
            options.parallelism.max(1),
        );
        let (shards, items, weight) = policy.shard_layout();
        let rate = rate.clamp(f64::MIN_POSITIVE, 1.0);
        let scaled_items = ((items as f64 * rate).ceil() as usize).max(1);
        let scaled_weight = ((weight as f64 * rate).round() as u64).max(1);
        Shadow {
            shards: (0..shards)
                .map(|_| shadow_shard(scaled_items, scaled_weight, policy.hot_allocation))
                .collect(),
            policy,
            shard_weight: weight,
            scaled: (scaled_items, scaled_weight),
        }
    }

    #[inline]
    fn shard(&mut self, key: u64) -> &mut ShadowShard {
        let n = self.shards.len();
        let i = if n <= 1 {
            0
        } else {
            ((super::mix64(key ^ 0x7368_6164_6f77) >> 32) as usize) & (n - 1)
        };
        &mut self.shards[i]
    }

    /// A `get`, then an insert on a miss (the tier's `save`, which removes
    /// first). Returns whether it hit.
    #[inline]
    pub(crate) fn access(&mut self, key: u64, bytes: u64) -> bool {
        let shard = self.shard(key);
        if shard.get(&key).is_some() {
            return true;
        }
        // As `MemoryCache::insert` does (tier/memory.rs): remove, then
        // insert. quick_cache's `remove` also drops the key's ghost entry,
        // so a returning key is never admitted as hot through the ghost
        // list, in the tier as here; keep the two in step.
        shard.remove(&key);
        shard.insert(key, bytes);
        false
    }

    /// Stop modelling `key` (it left the sample).
    pub(crate) fn forget(&mut self, key: u64) {
        self.shard(key).remove(&key);
    }

    /// The sampling rate is now `rate`: shrink every shard to match.
    pub(crate) fn set_rate(&mut self, rate: f64) {
        let w = ((self.shard_weight as f64 * rate).round() as u64).max(1);
        self.scaled.1 = w;
        for s in &mut self.shards {
            s.set_capacity(w);
        }
    }

    /// The tier's entries were all inserted again, fresh, in the order of
    /// `order` ((key, weight); an engine switch: the new engine's copies
    /// take the place of the old engine's, without the policy's history):
    /// do the same to what this shadow holds. A shadow of the tier's own
    /// capacity (`exact`) then holds exactly `order`, as the tier does; any
    /// other keeps its own keys (a larger one holds what the tier had
    /// evicted: those go first, as the coldest) and takes from `order`
    /// only those it held.
    pub(crate) fn reinsert(&mut self, order: &[(u64, u64)], exact: bool) {
        let (items, weight) = self.scaled;
        let hot = self.policy.hot_allocation;
        let mut held: super::KeyMap<u64> = Default::default();
        for shard in &mut self.shards {
            held.extend(shard.iter().map(|(k, w)| (*k, *w)));
            *shard = shadow_shard(items, weight, hot);
        }
        let mut again: Vec<(u64, u64)> = Vec::new();
        if !exact {
            let listed: super::KeyMap<()> = order.iter().map(|(k, _)| (*k, ())).collect();
            let mut rest: Vec<(u64, u64)> = held
                .iter()
                .filter(|(k, _)| !listed.contains_key(*k))
                .map(|(k, w)| (*k, *w))
                .collect();
            rest.sort_unstable();
            again = rest;
        }
        again.extend(
            order
                .iter()
                .filter(|(k, _)| exact || held.contains_key(k))
                .copied(),
        );
        for (key, w) in again {
            self.shard(key).insert(key, w);
        }
    }

    /// Entries resident.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// The capacity modelled (at rate 1).
    pub(crate) fn capacity(&self) -> u64 {
        self.policy.capacity
    }
}

/// The memory tier at each capacity of a grid: one shadow each.
///
/// ```
/// use tierscope::sizing::{Request, memory::{MemoryModel, ShadowOptions}, sampling::Sampling};
/// let mut m = MemoryModel::new(&[4 << 20, 64 << 20], ShadowOptions::default(), Sampling::Off);
/// for i in 0..1000u64 {
///     m.access(&Request::new(i, i % 10, 1 << 20)); // ten 1 MiB modules in a loop
/// }
/// let c = m.curve();
/// assert!(c.points[0].hit_ratio < 0.5);
/// assert_eq!(c.points[1].misses, 10); // 64 MiB holds all ten
/// ```
#[derive(Debug)]
pub struct MemoryModel {
    front: Front,
    shadows: Shadows,
}

/// The shadows and what they counted (at the current rate).
#[derive(Debug)]
struct Shadows {
    shadows: Vec<Shadow>,
    counts: Vec<Counts>,
    compile_all: f64,
    /// Compile cost of the first requests of each key.
    cold_compile: f64,
    sampled: SampledTotals,
    /// Modelled keys and their last size.
    keys: super::KeyMap<u64>,
}

impl Shadows {
    /// `keys` that are modelled, with their last size.
    fn weighed(&self, keys: &[u64]) -> Vec<(u64, u64)> {
        keys.iter()
            .filter_map(|k| self.keys.get(k).map(|w| (*k, *w)))
            .collect()
    }
}

impl Modelled for Shadows {
    fn forget(&mut self, key: u64) {
        self.keys.remove(&key);
        for s in &mut self.shadows {
            s.forget(key);
        }
    }
    fn rescale(&mut self, factor: f64, rate: f64) {
        for s in &mut self.shadows {
            s.set_rate(rate);
        }
        for c in &mut self.counts {
            c.scale(factor);
        }
        self.compile_all *= factor;
        self.cold_compile *= factor;
        self.sampled.scale(factor);
    }
}

impl MemoryModel {
    /// Shadows of a memory tier at each capacity of `grid` (bytes; sorted
    /// and deduplicated, zeros dropped).
    pub fn new(grid: &[u64], options: ShadowOptions, sampling: Sampling) -> Self {
        let front = Front::new(sampling);
        let grid = normalize_grid(grid);
        MemoryModel {
            shadows: Shadows {
                shadows: grid
                    .iter()
                    .map(|&c| Shadow::new(c, &options, front.rate()))
                    .collect(),
                counts: vec![Counts::default(); grid.len()],
                compile_all: 0.0,
                cold_compile: 0.0,
                sampled: SampledTotals::default(),
                keys: Default::default(),
            },
            front,
        }
    }

    /// Feed one request.
    pub fn access(&mut self, req: &Request) {
        let Some(offer) = self.front.offer(req) else {
            return;
        };
        let m = &mut self.shadows;
        let size = super::weight(req.bytes);
        let new = m.keys.insert(req.key, size).is_none();
        let cost = self.front.costs.cost(req).unwrap_or(0.0);
        m.compile_all += cost;
        if new {
            m.cold_compile += cost;
        }
        m.sampled.requests += 1.0;
        m.sampled.bytes += size as f64;
        for (s, c) in m.shadows.iter_mut().zip(&mut m.counts) {
            if s.access(req.key, size) {
                c.hits += 1.0;
                c.hit_bytes += size as f64;
                c.miss_compile += cost; // hits' cost, turned into misses' below
            }
        }
        if new && self.front.tracks_keys() {
            self.front.admitted(req.key, offer.hash, &mut self.shadows);
        }
    }

    /// The curve so far.
    pub fn curve(&self) -> Curve {
        let rate = self.front.rate();
        let totals = &self.front.totals;
        let m = &self.shadows;
        Curve {
            points: m
                .shadows
                .iter()
                .zip(&m.counts)
                .map(|(s, c)| {
                    let mut c = *c;
                    c.miss_compile = (m.compile_all - c.miss_compile).max(0.0);
                    point(
                        s.capacity(),
                        &c,
                        &m.sampled,
                        totals.both(),
                        rate,
                        self.front.costs.known(),
                    )
                })
                .collect(),
            requests: totals.requests,
            bytes: totals.bytes,
            distinct_keys: self.front.scaled(m.keys.len() as f64),
            working_set_bytes: self.front.scaled(m.keys.values().sum::<u64>() as f64),
            sampling_rate: rate,
            duration_seconds: totals.duration_seconds(),
            cold_compile_seconds: self.front.costs.known().then(|| m.cold_compile / rate),
        }
    }

    /// Entries resident in each shadow now (sampled keys only).
    pub fn resident(&self) -> Vec<usize> {
        self.shadows.shadows.iter().map(Shadow::len).collect()
    }

    /// The tier, of `capacity` bytes, had its entries inserted again,
    /// fresh, in `order` (model keys): see `Shadow::reinsert` (keys not
    /// modelled, outside the sample, are left out).
    pub(crate) fn reinsert(&mut self, order: &[u64], capacity: u64) {
        let order = self.shadows.weighed(order);
        for s in &mut self.shadows.shadows {
            let exact = s.capacity() == capacity;
            s.reinsert(&order, exact);
        }
    }
}
