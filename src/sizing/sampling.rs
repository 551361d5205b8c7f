//! Spatial (hash) sampling for large key spaces, as in SHARDS (Waldspurger
//! et al., FAST'15) and mini-simulations (ATC'17).
//!
//! A key is modelled iff its hash falls under a threshold: rate R keeps
//! about R of the keys and all of their requests, so each modelled key's
//! reuse pattern is intact. Stack distances are scaled by 1/R (LRU), or the
//! policy is replayed in a cache of R × C (mini-simulation, memory tier).
//!
//! `Sampling::Bounded` is SHARDS' fixed-size variant: exact until
//! `max_keys` distinct keys are seen, then the threshold is lowered to keep
//! at most `max_keys` keys (those of smallest hash), evicting the others
//! from the model and rescaling what was counted, so memory stays bounded
//! whatever the key count. Every `Curve` reports the rate
//! in use.

use std::collections::BinaryHeap;

use super::{
    KeyMap, Request,
    estimate::{CompileCosts, Totals},
    mix64,
};

/// How a model samples keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Every key (exact).
    Off,
    /// A fixed share of keys, in (0, 1] (values outside are clamped; a
    /// rate that is not a number means 1).
    Rate(f64),
    /// Exact up to `max_keys` distinct keys, then sampled at the rate that
    /// keeps at most that many (fixed memory).
    Bounded {
        /// Keys modelled at most (at least 1).
        max_keys: usize,
    },
}

impl Default for Sampling {
    /// `Bounded { max_keys: 100_000 }`: exact for any module cache, a few
    /// MiB of model per grid point past that.
    fn default() -> Self {
        Sampling::Bounded { max_keys: 100_000 }
    }
}

/// A key's sampling hash (the same for every model, so a stack's tiers
/// sample the same keys).
#[inline]
pub(crate) fn key_hash(key: u64) -> u64 {
    mix64(key ^ 0x5348_4152_4453_2121)
}

/// Decides which keys are modelled.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    /// Keys whose hash is <= threshold are modelled.
    threshold: u64,
    max_keys: Option<usize>,
    /// Modelled keys by hash, largest on top (bounded mode only).
    heap: BinaryHeap<(u64, u64)>,
}

/// What admitting a new key changed.
#[derive(Debug, Default)]
pub(crate) struct Lowered {
    /// Keys no longer modelled: remove them from the model.
    pub(crate) evicted: Vec<u64>,
    /// New rate / old rate: multiply every sampled count by it.
    pub(crate) factor: f64,
}

impl Sampler {
    /// A sampler in `mode`.
    pub(crate) fn new(mode: Sampling) -> Self {
        let (threshold, max_keys) = match mode {
            Sampling::Off => (u64::MAX, None),
            Sampling::Rate(r) => {
                let r = if r.is_nan() { 1.0 } else { r.clamp(1e-9, 1.0) };
                let t = if r >= 1.0 {
                    u64::MAX
                } else {
                    (r * 18_446_744_073_709_551_616.0) as u64
                };
                (t, None)
            }
            Sampling::Bounded { max_keys } => (u64::MAX, Some(max_keys.max(1))),
        };
        Sampler {
            threshold,
            max_keys,
            heap: BinaryHeap::new(),
        }
    }

    /// The share of keys modelled now.
    pub(crate) fn rate(&self) -> f64 {
        if self.threshold == u64::MAX {
            1.0
        } else {
            (self.threshold as f64 + 1.0) / 18_446_744_073_709_551_616.0
        }
    }

    /// Whether this sampler may lower its rate (bounded mode).
    #[inline]
    pub(crate) fn bounded(&self) -> bool {
        self.max_keys.is_some()
    }

    /// Whether a key of this [`key_hash`] is modelled.
    #[inline]
    pub(crate) fn sampled(&self, hash: u64) -> bool {
        hash <= self.threshold
    }

    /// A key not modelled before is now (call only for sampled keys new to
    /// the model). In bounded mode this may lower the rate.
    pub(crate) fn admit(&mut self, key: u64, hash: u64) -> Option<Lowered> {
        let max = self.max_keys?;
        self.heap.push((hash, key));
        if self.heap.len() <= max {
            return None;
        }
        let old = self.rate();
        let mut lowered = Lowered::default();
        // Drop the largest hash (and any tied with it); the new threshold
        // excludes it.
        let (top, _) = self.heap.peek().copied()?;
        while let Some(&(h, k)) = self.heap.peek() {
            if h < top {
                break;
            }
            self.heap.pop();
            lowered.evicted.push(k);
        }
        self.threshold = top.saturating_sub(1);
        lowered.factor = self.rate() / old;
        Some(lowered)
    }

    /// Bytes this sampler holds per modelled key.
    pub(crate) const BYTES_PER_KEY: usize = 16;
}

/// What a model does with the keys the sampler drops.
pub(crate) trait Modelled {
    /// Stop modelling `key` (it left the sample).
    fn forget(&mut self, key: u64);
    /// The rate fell to `rate`, `factor` times the old one: multiply every
    /// sampled count by `factor` and rescale what depends on the rate.
    fn rescale(&mut self, factor: f64, rate: f64);
}

/// What every model does before its own work, in one place: the exact
/// totals of every request, the sampling decision, compile costs, and the
/// fixed-size lowering of the rate as new keys arrive.
///
/// A model calls [`offer`](Self::offer) for each request and models it
/// only if that says so; when a modelled key was new to it, it calls
/// [`admitted`](Self::admitted) after modelling the request.
#[derive(Debug, Clone)]
pub(crate) struct Front {
    sampler: Sampler,
    pub(crate) totals: Totals,
    pub(crate) costs: CompileCosts,
    /// Every key modelled, for good: no hash needed.
    all: bool,
    /// Keys modelled at every request while others are sampled.
    exact: Option<KeyMap<()>>,
}

/// A request the model is to model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    /// The key's sampling hash (0 when every key is modelled).
    pub(crate) hash: u64,
    /// A key modelled exactly among sampled ones: its requests count for
    /// themselves alone, not 1 / rate.
    pub(crate) exact: bool,
}

impl Front {
    pub(crate) fn new(sampling: Sampling) -> Self {
        let sampler = Sampler::new(sampling);
        Front {
            all: !sampler.bounded() && sampler.rate() >= 1.0,
            sampler,
            totals: Totals::default(),
            costs: CompileCosts::default(),
            exact: None,
        }
    }

    /// Model `keys` at every request (see [`LruModel::exact_keys`]).
    ///
    /// [`LruModel::exact_keys`]: super::lru::LruModel::exact_keys
    pub(crate) fn set_exact(&mut self, keys: impl IntoIterator<Item = u64>) {
        let set: KeyMap<()> = keys.into_iter().map(|k| (k, ())).collect();
        self.exact = (!set.is_empty() && !self.all).then_some(set);
    }

    /// Count `req` in the totals; `Some` if its key is modelled.
    #[inline]
    pub(crate) fn offer(&mut self, req: &Request) -> Option<Offer> {
        self.totals.add(req);
        if self.all {
            return Some(Offer {
                hash: 0,
                exact: false,
            });
        }
        if let Some(set) = &self.exact
            && set.contains_key(&req.key)
        {
            return Some(Offer {
                hash: 0,
                exact: true,
            });
        }
        let hash = key_hash(req.key);
        self.sampler
            .sampled(hash)
            .then_some(Offer { hash, exact: false })
    }

    /// Whether the model must say when a key is new to it (bounded mode).
    #[inline]
    pub(crate) fn tracks_keys(&self) -> bool {
        self.sampler.bounded()
    }

    /// The model met `key` (of sampling hash `hash`) for the first time:
    /// in bounded mode the rate may fall, and `model` forgets the keys that
    /// leave the sample (possibly this one) and rescales its counts.
    pub(crate) fn admitted(&mut self, key: u64, hash: u64, model: &mut impl Modelled) {
        let Some(lowered) = self.sampler.admit(key, hash) else {
            return;
        };
        for k in lowered.evicted {
            model.forget(k);
            self.costs.forget(k);
        }
        model.rescale(lowered.factor, self.sampler.rate());
    }

    /// The share of keys modelled now.
    #[inline]
    pub(crate) fn rate(&self) -> f64 {
        self.sampler.rate()
    }

    /// `n` counted at the current rate, as an estimate of the whole.
    pub(crate) fn scaled(&self, n: f64) -> u64 {
        (n / self.rate()).round() as u64
    }
}

/// The most requested keys of a stream, in bounded memory (Misra-Gries:
/// `capacity` counters; every key requested more than 1 / (capacity + 1)
/// of the time is kept, and the counts kept are lower bounds). A first
/// pass over a trace with it finds the keys to model exactly
/// ([`LruModel::exact_keys`](super::lru::LruModel::exact_keys)).
#[derive(Debug, Clone)]
pub struct FrequentKeys {
    counts: KeyMap<u64>,
    capacity: usize,
}

impl FrequentKeys {
    /// At most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        FrequentKeys {
            counts: KeyMap::default(),
            capacity: capacity.max(1),
        }
    }

    /// One request of `key`.
    #[inline]
    pub fn observe(&mut self, key: u64) {
        if let Some(c) = self.counts.get_mut(&key) {
            *c += 1;
        } else if self.counts.len() < self.capacity {
            self.counts.insert(key, 1);
        } else {
            // Every counter loses one (this key's would-be one too); those
            // at zero free their place. Each key costs at most the count it
            // added, so this is constant time per request amortized.
            self.counts.retain(|_, c| {
                *c -= 1;
                *c > 0
            });
        }
    }

    /// The keys kept, most requested first.
    pub fn keys(&self) -> Vec<u64> {
        let mut v: Vec<(u64, u64)> = self.counts.iter().map(|(&k, &c)| (c, k)).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, k)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_keeps_about_that_share() {
        let s = Sampler::new(Sampling::Rate(0.1));
        let kept = (0..100_000u64).filter(|&k| s.sampled(key_hash(k))).count();
        assert!((9_000..11_000).contains(&kept), "{kept}");
        assert!((s.rate() - 0.1).abs() < 1e-9);
        assert_eq!(Sampler::new(Sampling::Off).rate(), 1.0);
        assert_eq!(Sampler::new(Sampling::Rate(f64::NAN)).rate(), 1.0);
        assert!(Sampler::new(Sampling::Rate(-3.0)).rate() > 0.0);
    }

    #[test]
    fn bounded_keeps_at_most_max_keys_and_lowers_the_rate() {
        let mut s = Sampler::new(Sampling::Bounded { max_keys: 100 });
        let mut kept = std::collections::HashSet::new();
        let mut factor = 1.0;
        for k in 0..10_000u64 {
            let h = key_hash(k);
            if !s.sampled(h) {
                continue;
            }
            kept.insert(k);
            if let Some(l) = s.admit(k, h) {
                for e in l.evicted {
                    kept.remove(&e);
                }
                factor *= l.factor;
            }
            assert!(kept.len() <= 100);
        }
        assert!((factor - s.rate()).abs() < 1e-9);
        assert!(s.rate() > 0.005 && s.rate() < 0.02, "{}", s.rate());
        assert!(kept.iter().all(|&k| s.sampled(key_hash(k))));
    }
}
