//! Exact byte-weighted LRU curves in one pass: Mattson's stack distances
//! over a Fenwick tree.
//!
//! # What it is exact for
//!
//! A byte-bounded LRU of capacity C, per request `(key, bytes)`:
//! 1. it is a hit iff `key` is resident;
//! 2. `key` becomes the most recent entry, at its new size;
//! 3. if that size exceeds C the key is not admitted (it is removed if it
//!    was resident, and nothing is evicted for it);
//! 4. least recent entries are evicted until the total fits in C.
//!
//! That is how the disk tier behaves (it refuses a file larger than its
//! bound) and what `tests/sizing.rs` simulates by brute force. Such a cache
//! always holds a prefix of the recency stack (inclusion), so a key is
//! resident iff its own size plus the bytes above it in the stack never
//! exceeded C since its last request: one pass answers every C.
//!
//! - Each request takes a new time slot; each key's bytes sit at its
//!   latest slot, so the bytes above a slot are a suffix sum: a Fenwick
//!   tree over blocks of 64 slots plus a scan within one block, O(log n)
//!   with about two cache misses per request. Slots are compacted when
//!   they run out (the slot space is kept at four to eight times the
//!   distinct keys).
//! - A key whose size *shrinks* frees bytes without bringing back what was
//!   evicted, so "bytes above" is no longer monotone: from the first shrink
//!   on, that tree switches to a segment tree keeping each slot's
//!   historical maximum (still O(log n), about twice the cost). Traces
//!   whose sizes never shrink never pay for it.
//! - An object larger than a grid capacity is invisible at that capacity
//!   (never admitted, it evicts nothing). The first time one appears, the
//!   grid points it exceeds get their own tree (a copy of the shared one,
//!   which is exact up to then) that filters such objects out.
//!
//! Sizes weigh `weight``(bytes)`: 0 counts as 1 byte, and
//! sizes above `MAX_OBJECT_BYTES` as that. With sampling (`Sampling`), distances are
//! scaled by 1 / rate (SHARDS) and the curve is an estimate.

mod core;
mod fenwick;
mod hist_max;

pub(crate) use self::core::LruCore;
use super::{
    Curve, Request,
    estimate::{Counts, point},
    sampling::{Front, Modelled, Sampler, Sampling},
};

/// A byte-bounded LRU at every capacity of a grid, in one pass.
///
/// ```
/// use tierscope::sizing::{Request, lru::LruModel, sampling::Sampling};
/// let mut m = LruModel::new(&[1 << 20, 4 << 20], Sampling::Off);
/// for i in 0..100u64 {
///     m.access(&Request::new(i, i % 4, 1 << 20)); // four 1 MiB objects
/// }
/// let c = m.curve();
/// assert_eq!(c.points[0].hit_ratio, 0.0); // 1 MiB: a loop of 4 always misses
/// assert_eq!(c.points[1].misses, 4); // 4 MiB: all but the first four hit
/// ```
#[derive(Debug, Clone)]
pub struct LruModel {
    /// One core for the whole grid; one per grid point under
    /// [`SizeOnHit::Keep`].
    cores: Cores,
    front: Front,
    grid: Vec<u64>,
}

/// What a hit does to an object whose size differs from the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SizeOnHit {
    /// The object takes the size the request gives (it is stored again, as
    /// a tier that saves what it serves would). The default: exact for
    /// every grid point in one pass.
    #[default]
    Update,
    /// The object keeps the size it was stored with at its last miss, as
    /// libCacheSim's simulators do (`cachesim ... lru`). Since what is
    /// stored then depends on the capacity, each grid point is its own
    /// pass (grid-size times the work of [`Update`](Self::Update)).
    Keep,
}

/// The first core inline (the only one but under [`SizeOnHit::Keep`]).
#[derive(Debug, Clone)]
struct Cores {
    first: LruCore,
    rest: Vec<LruCore>,
}

impl Cores {
    fn all(&self) -> impl Iterator<Item = &LruCore> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

impl Modelled for Cores {
    fn forget(&mut self, key: u64) {
        self.first.forget(key);
        for c in &mut self.rest {
            c.forget(key);
        }
    }
    fn rescale(&mut self, factor: f64, _rate: f64) {
        self.first.rescale(factor);
        for c in &mut self.rest {
            c.rescale(factor);
        }
    }
}

impl LruModel {
    /// A model of an LRU at each capacity of `grid` (bytes; sorted and
    /// deduplicated, zeros dropped).
    pub fn new(grid: &[u64], sampling: Sampling) -> Self {
        let front = Front::new(sampling);
        let mut core = LruCore::new(grid);
        core.set_scale(1.0 / front.rate());
        LruModel {
            grid: core.grid().to_vec(),
            cores: Cores {
                first: core,
                rest: Vec::new(),
            },
            front,
        }
    }

    /// Model `rule` for objects whose size changes between requests
    /// (default [`SizeOnHit::Update`]; traces whose sizes never change
    /// give the same curve under both). Call before the first request.
    pub fn size_on_hit(mut self, rule: SizeOnHit) -> Self {
        let scale = 1.0 / self.front.rate();
        let mut cores: Vec<LruCore> = match rule {
            SizeOnHit::Update => {
                let mut core = LruCore::new(&self.grid);
                core.set_scale(scale);
                vec![core]
            }
            SizeOnHit::Keep => self
                .grid
                .iter()
                .map(|&c| {
                    let mut core = LruCore::new(&[c]);
                    core.set_scale(scale);
                    core.keep = true;
                    core
                })
                .collect(),
        };
        if !cores.is_empty() {
            let first = cores.remove(0);
            self.cores = Cores { first, rest: cores };
        }
        self
    }

    /// Model these keys at every request while the others are sampled
    /// (no effect without sampling). Give it the most requested keys of
    /// the trace (`tierscope size` finds them
    /// in a first pass, in bounded memory): where a few keys carry much of
    /// the traffic, whether they fall in the sample is what moves a sampled
    /// curve most, and modelled exactly they no longer do. Call before the
    /// first request; they add to the keys modelled.
    pub fn exact_keys(mut self, keys: impl IntoIterator<Item = u64>) -> Self {
        self.front.set_exact(keys);
        self
    }

    /// The capacities modelled.
    pub fn grid(&self) -> &[u64] {
        &self.grid
    }

    /// Feed one request.
    #[inline]
    pub fn access(&mut self, req: &Request) {
        let Some(offer) = self.front.offer(req) else {
            return;
        };
        let cost = self.front.costs.cost(req);
        let new = self
            .cores
            .first
            .access(req.key, req.bytes, cost, offer.exact);
        for core in &mut self.cores.rest {
            core.access(req.key, req.bytes, cost, offer.exact);
        }
        // A new key may lower the rate (bounded sampling): keys of the
        // largest hashes leave the model, possibly this one, and what was
        // counted is rescaled (as SHARDS' fixed-size variant).
        if new && !offer.exact && self.front.tracks_keys() {
            self.front.admitted(req.key, offer.hash, &mut self.cores);
        }
    }

    /// The curve so far.
    pub fn curve(&self) -> Curve {
        let rate = self.front.rate();
        let totals = &self.front.totals;
        let first = &self.cores.first;
        let counts: Vec<Counts> = if self.cores.rest.is_empty() {
            first.counts()
        } else {
            self.cores.all().flat_map(LruCore::counts).collect()
        };
        Curve {
            points: self
                .grid
                .iter()
                .zip(&counts)
                .map(|(&cap, c)| {
                    point(
                        cap,
                        c,
                        &first.sampled,
                        totals.both(),
                        rate,
                        self.front.costs.known(),
                    )
                })
                .collect(),
            requests: totals.requests,
            bytes: totals.bytes,
            distinct_keys: first.distinct(),
            working_set_bytes: first.live_bytes(),
            sampling_rate: rate,
            duration_seconds: totals.duration_seconds(),
            cold_compile_seconds: self.front.costs.known().then(|| first.cold_compile / rate),
        }
    }

    /// Approximate bytes of model state per modelled key (the key map, the
    /// slot trees, the sampler).
    pub fn bytes_per_key(&self) -> usize {
        self.cores.all().map(LruCore::bytes_per_key).sum::<usize>() + Sampler::BYTES_PER_KEY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_memory_per_key_is_small() {
        let mut m = LruModel::new(&[1 << 20], Sampling::Off);
        for i in 0..10_000u64 {
            m.access(&Request::new(i, i, 100));
        }
        assert!(m.bytes_per_key() <= 128, "{}", m.bytes_per_key());
    }
}
