//! Spatial (hash) sampling for large key spaces, as in SHARDS (Waldspurger
//! et al., FAST'15) and mini-simulations (ATC'17).
//!
//! A key is modelled iff its hash falls under a threshold: rate R keeps
//! about R of the keys and all of their requests, so each modelled key's
//! reuse pattern is intact. Stack distances are scaled by 1/R (LRU), or the
//! policy is replayed in a cache of R × C (mini-simulation, memory tier).
//!
//! [`Sampling::Bounded`] is SHARDS' fixed-size variant: exact until
//! `max_keys` distinct keys are seen, then the threshold is lowered to keep
//! at most `max_keys` keys (those of smallest hash), evicting the others
//! from the model and rescaling what was counted, so memory stays bounded
//! whatever the key count. Every [`Curve`](super::Curve) reports the rate
//! in use.

use std::collections::BinaryHeap;

use super::mix64;

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
pub fn key_hash(key: u64) -> u64 {
    mix64(key ^ 0x5348_4152_4453_2121)
}

/// Decides which keys are modelled.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Keys whose hash is <= threshold are modelled.
    threshold: u64,
    max_keys: Option<usize>,
    /// Modelled keys by hash, largest on top (bounded mode only).
    heap: BinaryHeap<(u64, u64)>,
}

/// What admitting a new key changed.
#[derive(Debug, Default)]
pub struct Lowered {
    /// Keys no longer modelled: remove them from the model.
    pub evicted: Vec<u64>,
    /// New rate / old rate: multiply every sampled count by it.
    pub factor: f64,
}

impl Sampler {
    /// A sampler in `mode`.
    pub fn new(mode: Sampling) -> Self {
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
    pub fn rate(&self) -> f64 {
        if self.threshold == u64::MAX {
            1.0
        } else {
            (self.threshold as f64 + 1.0) / 18_446_744_073_709_551_616.0
        }
    }

    /// Whether this sampler may lower its rate (bounded mode).
    #[inline]
    pub fn bounded(&self) -> bool {
        self.max_keys.is_some()
    }

    /// Whether a key of this [`key_hash`] is modelled.
    #[inline]
    pub fn sampled(&self, hash: u64) -> bool {
        hash <= self.threshold
    }

    /// A key not modelled before is now (call only for sampled keys new to
    /// the model). In bounded mode this may lower the rate.
    pub fn admit(&mut self, key: u64, hash: u64) -> Option<Lowered> {
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
    pub const BYTES_PER_KEY: usize = 16;
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
