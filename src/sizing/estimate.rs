//! From what a model counted to a [`Point`]: the totals every model keeps
//! exactly, the sampled counts, and the estimator that turns sampled
//! counts into ratios.
//!
//! # The estimator (SHARDS-adj)
//!
//! A sampled model counts, over the requests of its sampled keys, hits
//! and misses at each capacity. Dividing sampled hits by sampled requests
//! (a ratio estimator) is what SHARDS does unadjusted, and it is biased on
//! skewed traffic: a few very popular keys carry much of the requests, and
//! whether their hashes fall under the threshold swings the sampled
//! request count far from its expectation (rate × requests). Those keys
//! hit at nearly every size, so a sample without them reads low, one with
//! them high.
//!
//! SHARDS-adj (Waldspurger et al., FAST '15, section 4.3) puts the
//! difference between the expected and the sampled reference count into
//! the smallest-distance bucket: counted as hits at every size. Here that
//! is written the equivalent way: the **misses** are estimated from the
//! sample (each sampled miss stands for 1 / rate misses, the Horvitz-
//! Thompson estimate) and divided by the **exact** request count, which
//! every model keeps for all requests, sampled or not:
//!
//! `hit ratio = 1 - (sampled misses / rate) / requests`
//!
//! and likewise for bytes (`sampled miss bytes / rate / bytes requested`).
//! Misses come from the long tail, which a hash sample covers well; the
//! hot keys, whose presence in the sample is luck, are hits and no longer
//! move the estimate. With a bounded sample (the rate lowered as keys
//! arrive) counts are kept "at the current rate" (multiplied by new rate
//! / old rate at each lowering), so `count / rate` weighs each request by
//! the rate in force when it was counted, and the expected sampled count is
//! always `rate × requests`.

use super::{Point, Request, weight};

/// The compile cost of a miss: the request's own compile time, else the
/// key's last known one, else the mean per byte so far times its bytes.
#[derive(Debug, Default, Clone)]
pub(crate) struct CompileCosts {
    by_key: Option<super::KeyMap<u64>>,
    known_us: f64,
    known_bytes: f64,
}

impl CompileCosts {
    /// Learn from `req` and answer its compile cost in seconds if it missed.
    pub(crate) fn cost(&mut self, req: &Request) -> Option<f64> {
        if let Some(us) = req.compile_us {
            self.by_key
                .get_or_insert_with(Default::default)
                .insert(req.key, us);
            self.known_us += us as f64;
            self.known_bytes += weight(req.bytes) as f64;
            return Some(us as f64 / 1e6);
        }
        let by_key = self.by_key.as_ref()?;
        if let Some(&us) = by_key.get(&req.key) {
            return Some(us as f64 / 1e6);
        }
        (self.known_bytes > 0.0)
            .then(|| self.known_us / self.known_bytes * weight(req.bytes) as f64 / 1e6)
    }

    /// Forget one key (it left the sample).
    pub(crate) fn forget(&mut self, key: u64) {
        if let Some(m) = self.by_key.as_mut() {
            m.remove(&key);
        }
    }

    /// Whether any compile time was seen.
    pub(crate) fn known(&self) -> bool {
        self.by_key.is_some()
    }
}

/// Totals every model keeps exactly, sampled or not.
#[derive(Debug, Default, Clone)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    first_us: Option<u64>,
    last_us: Option<u64>,
}

impl Totals {
    pub(crate) fn add(&mut self, req: &Request) {
        self.requests += 1;
        self.bytes = self.bytes.saturating_add(weight(req.bytes));
        let t = req.time_us;
        self.first_us = Some(self.first_us.map_or(t, |f| f.min(t)));
        self.last_us = Some(self.last_us.map_or(t, |l| l.max(t)));
    }

    /// Requests and bytes, for [`point`].
    pub(crate) fn both(&self) -> (f64, f64) {
        (self.requests as f64, self.bytes as f64)
    }

    pub(crate) fn duration_seconds(&self) -> Option<f64> {
        match (self.first_us, self.last_us) {
            (Some(f), Some(l)) if l > f => Some((l - f) as f64 / 1e6),
            _ => None,
        }
    }
}

/// Hit counters of a sampled model, for one grid point, scaled as the
/// sampling rate changes (all counts are "as sampled at the current rate").
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) hits: f64,
    pub(crate) hit_bytes: f64,
    pub(crate) miss_compile: f64,
}

impl Counts {
    pub(crate) fn scale(&mut self, f: f64) {
        self.hits *= f;
        self.hit_bytes *= f;
        self.miss_compile *= f;
    }
}

/// Sampled request totals, scaled like [`Counts`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SampledTotals {
    pub(crate) requests: f64,
    pub(crate) bytes: f64,
}

impl SampledTotals {
    pub(crate) fn scale(&mut self, f: f64) {
        self.requests *= f;
        self.bytes *= f;
    }
}

/// Build a point from sampled counts: `sampled` are the requests the
/// model counted (at the current rate), `requests` and `bytes` the exact
/// totals of the stream the point is about (see the module docs).
pub(crate) fn point(
    capacity: u64,
    c: &Counts,
    sampled: &SampledTotals,
    (requests, bytes): (f64, f64),
    rate: f64,
    compile_known: bool,
) -> Point {
    let exact = rate >= 1.0;
    let ratio = |hits: f64, sampled: f64, total: f64| {
        if exact {
            // Every request counted: the plain ratio, bit for bit.
            return if sampled > 0.0 {
                (hits / sampled).clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        if total > 0.0 {
            let misses = (sampled - hits).max(0.0) / rate;
            (1.0 - misses / total).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let hit_ratio = ratio(c.hits, sampled.requests, requests);
    let misses = if exact {
        (sampled.requests - c.hits).round().max(0.0)
    } else {
        ((sampled.requests - c.hits).max(0.0) / rate)
            .min(requests)
            .round()
    };
    Point {
        capacity,
        hit_ratio,
        byte_hit_ratio: ratio(c.hit_bytes, sampled.bytes, bytes),
        misses: misses as u64,
        compile_seconds: compile_known.then(|| c.miss_compile / rate.max(f64::MIN_POSITIVE)),
    }
}
