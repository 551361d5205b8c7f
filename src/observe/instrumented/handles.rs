//! The metric handles of one spy: the operations it times and counts
//! ([`TierMetrics`]), and what the wrapped tier reports through its
//! observer ([`ObserverMetrics`]: evictions, residency, availability,
//! verification, remote requests). Registered once, at construction.

use std::{fmt, sync::OnceLock};

use metrics::{Counter, Gauge, Histogram};
use parking_lot::RwLock;

use super::InstrumentOptions;
use crate::{
    cache::{CacheError, CacheErrorKind, TierName, Verified},
    names::{self, label},
    tier_events::{
        Eviction, EvictionCause, RemoteRequest, RequestOp, RequestResult, Residency, TierObserver,
    },
};

pub(super) const OPS: [&str; 4] = ["load", "save", "contains", "reload"];
pub(super) const LOAD: usize = 0;
pub(super) const SAVE: usize = 1;
pub(super) const CONTAINS: usize = 2;
/// An engine switch's reload (see [`Lookup::reload`]): a lookup of its own.
pub(super) const RELOAD: usize = 3;
/// Result labels by op: load, contains and reload answer hit/miss/error,
/// save ok/error.
pub(super) const RESULTS: [[&str; 3]; 4] = [
    ["hit", "miss", "error"],
    ["ok", "error", ""],
    ["hit", "miss", "error"],
    ["hit", "miss", "error"],
];
pub(super) const HIT: usize = 0;
pub(super) const MISS: usize = 1;
pub(super) const ERR: usize = 2;
pub(super) const SAVE_OK: usize = 0;
pub(super) const SAVE_ERR: usize = 1;

pub(super) struct TierMetrics {
    pub(super) cache: String,
    pub(super) tier: TierName,
    pub(super) sample_mask: u64,
    pub(super) lookups: [Counter; 3],
    /// An engine switch's reloads that reached this tier, by result.
    pub(super) reloads: [Counter; 3],
    pub(super) saves: [Counter; 2],
    pub(super) duration: [[Histogram; 3]; 4],
    pub(super) errors: [[Counter; CacheErrorKind::ERRORS.len()]; 4],
    /// What [`HitCounters`] publishes to: the `hit` lookups and read bytes.
    pub(super) hits: Counter,
    pub(super) read_bytes: Counter,
    pub(super) written_bytes: Counter,
    pub(super) promotions: RwLock<Vec<(TierName, [Counter; 2])>>,
}

impl TierMetrics {
    pub(super) fn new(cache: String, tier: TierName, options: InstrumentOptions) -> Self {
        let c = || cache.clone();
        let t = || tier.to_string();
        let lookups = RESULTS[LOAD].map(|r| {
            metrics::counter!(names::LOOKUPS, label::CACHE => c(), label::TIER => t(), label::RESULT => r)
        });
        let reloads = RESULTS[RELOAD].map(|r| {
            metrics::counter!(names::RELOADS, label::CACHE => c(), label::TIER => t(), label::RESULT => r)
        });
        let saves = [RESULTS[SAVE][SAVE_OK], RESULTS[SAVE][SAVE_ERR]].map(|r| {
            metrics::counter!(names::SAVES, label::CACHE => c(), label::TIER => t(), label::RESULT => r)
        });
        let duration = std::array::from_fn(|op| {
            std::array::from_fn(|r| {
                let result = RESULTS[op][r];
                if result.is_empty() {
                    return Histogram::noop();
                }
                metrics::histogram!(
                    names::OPERATION_DURATION,
                    label::CACHE => c(), label::TIER => t(), label::OP => OPS[op], label::RESULT => result
                )
            })
        });
        let errors = std::array::from_fn(|op| {
            CacheErrorKind::ERRORS.map(|kind| {
                metrics::counter!(
                    names::ERRORS,
                    label::CACHE => c(), label::TIER => t(), label::OP => OPS[op], label::KIND => kind.as_str()
                )
            })
        });
        let read_bytes =
            metrics::counter!(names::READ_BYTES, label::CACHE => c(), label::TIER => t());
        TierMetrics {
            hits: lookups[HIT].clone(),
            read_bytes,
            written_bytes: metrics::counter!(names::WRITTEN_BYTES, label::CACHE => c(), label::TIER => t()),
            sample_mask: u64::from(options.latency_sample_every - 1),
            lookups,
            reloads,
            saves,
            duration,
            errors,
            promotions: RwLock::new(Vec::new()),
            cache,
            tier,
        }
    }

    pub(super) fn error(&self, op: usize, e: &CacheError) {
        if let Some(i) = CacheErrorKind::ERRORS.iter().position(|k| *k == e.kind()) {
            self.errors[op][i].increment(1);
        }
    }

    /// The promotion counters (ok, error) for hits coming from `from`,
    /// registered by [`Control::ExpectPromotionsFrom`] when the chain
    /// is built (or here, late, for a tier nobody announced). Promotions
    /// follow a slow-tier hit, so the lock here is off the hot path.
    pub(super) fn promotion_counters(&self, from: &str) -> [Counter; 2] {
        if let Some((_, c)) = self.promotions.read().iter().find(|(f, _)| &**f == from) {
            return c.clone();
        }
        let counters = ["ok", "error"].map(|r| {
            metrics::counter!(
                names::PROMOTIONS,
                label::CACHE => self.cache.clone(),
                label::FROM => from.to_string(),
                label::TO => self.tier.to_string(),
                label::RESULT => r
            )
        });
        self.promotions
            .write()
            .push((TierName::intern(from), counters.clone()));
        counters
    }
}

/// The metrics the wrapped tier reports itself, as its [`TierObserver`]:
/// evictions (counters and an age histogram), residency and availability
/// (gauges).
pub(super) struct ObserverMetrics {
    pub(super) evictions: [Counter; EvictionCause::ALL.len()],
    pub(super) evicted_bytes: [Counter; EvictionCause::ALL.len()],
    pub(super) eviction_age: Histogram,
    /// Registered when the tier first reports its residency (at attach):
    /// absent for tiers that cannot know it (a remote tier).
    pub(super) entries: OnceLock<Gauge>,
    pub(super) size: OnceLock<Gauge>,
    /// Registered when the tier first reports a bound (at attach): absent
    /// for unbounded tiers, as the contract says.
    pub(super) capacity: OnceLock<Gauge>,
    /// Registered when the tier first reports availability (tiers with a
    /// circuit breaker do at attach): absent for the others.
    pub(super) available: OnceLock<Gauge>,
    /// Hits by how they were verified ([`Verified::ALL`] order), registered
    /// when the tier says it verifies (at attach): absent for the others.
    pub(super) verified: OnceLock<[Counter; Verified::ALL.len()]>,
    /// Registered when the tier first reports a request to its store
    /// (remote tiers that do): by op and result, then sent and received
    /// bytes.
    pub(super) requests: [[OnceLock<Counter>; RequestResult::ALL.len()]; RequestOp::ALL.len()],
    pub(super) transferred: [OnceLock<Counter>; 2],
    pub(super) cache: String,
    pub(super) tier: String,
}

impl fmt::Debug for ObserverMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserverMetrics")
            .field("cache", &self.cache)
            .field("tier", &self.tier)
            .finish()
    }
}

impl ObserverMetrics {
    pub(super) fn new(cache: &str, tier: &str) -> Self {
        let c = || cache.to_string();
        let t = || tier.to_string();
        ObserverMetrics {
            evictions: EvictionCause::ALL.map(|cause| {
                metrics::counter!(names::EVICTIONS, label::CACHE => c(), label::TIER => t(), label::CAUSE => cause.as_str())
            }),
            evicted_bytes: EvictionCause::ALL.map(|cause| {
                metrics::counter!(names::EVICTED_BYTES, label::CACHE => c(), label::TIER => t(), label::CAUSE => cause.as_str())
            }),
            eviction_age: metrics::histogram!(names::EVICTION_AGE, label::CACHE => c(), label::TIER => t()),
            entries: OnceLock::new(),
            size: OnceLock::new(),
            capacity: OnceLock::new(),
            available: OnceLock::new(),
            verified: OnceLock::new(),
            requests: Default::default(),
            transferred: Default::default(),
            cache: c(),
            tier: t(),
        }
    }
}

impl ObserverMetrics {
    /// `tierscope_remote_requests_total` for (op, result), registered on
    /// first use (normally at attach, by `will_report_requests`).
    fn request_counter(
        &self,
        o: usize,
        op: RequestOp,
        r: usize,
        result: RequestResult,
    ) -> &Counter {
        self.requests[o][r].get_or_init(|| {
            metrics::counter!(
                names::REMOTE_REQUESTS,
                label::CACHE => self.cache.clone(),
                label::TIER => self.tier.clone(),
                label::OP => op.as_str(),
                label::RESULT => result.as_str()
            )
        })
    }

    /// `tierscope_remote_transferred_bytes_total`, `sent` (0) or
    /// `received` (1).
    fn transferred_counter(&self, i: usize) -> &Counter {
        self.transferred[i].get_or_init(|| {
            metrics::counter!(
                names::REMOTE_TRANSFERRED_BYTES,
                label::CACHE => self.cache.clone(),
                label::TIER => self.tier.clone(),
                label::DIRECTION => ["sent", "received"][i]
            )
        })
    }
}

impl TierObserver for ObserverMetrics {
    fn evicted(&self, eviction: Eviction) {
        if let Some(i) = EvictionCause::ALL.iter().position(|c| *c == eviction.cause) {
            self.evictions[i].increment(1);
            self.evicted_bytes[i].increment(eviction.bytes);
        }
        if let Some(age) = eviction.age {
            self.eviction_age.record(age.as_secs_f64());
        }
    }

    fn resident(&self, r: Residency) {
        let gauge = |name: &'static str| metrics::gauge!(name, label::CACHE => self.cache.clone(), label::TIER => self.tier.clone());
        self.entries
            .get_or_init(|| gauge(names::ENTRIES))
            .set(r.entries as f64);
        self.size
            .get_or_init(|| gauge(names::SIZE_BYTES))
            .set(r.bytes as f64);
        if let Some(cap) = r.capacity {
            self.capacity
                .get_or_init(|| gauge(names::CAPACITY_BYTES))
                .set(cap as f64);
        }
    }

    fn verifies(&self) {
        self.verified.get_or_init(|| {
            Verified::ALL.map(|v| {
                metrics::counter!(names::VERIFIED_HITS, label::CACHE => self.cache.clone(), label::TIER => self.tier.clone(), label::CHECK => v.as_str())
            })
        });
    }

    fn available(&self, available: bool) {
        self.available
            .get_or_init(|| {
                metrics::gauge!(names::TIER_AVAILABLE, label::CACHE => self.cache.clone(), label::TIER => self.tier.clone())
            })
            .set(if available { 1.0 } else { 0.0 });
    }

    fn will_report_requests(&self) {
        for (o, op) in RequestOp::ALL.iter().enumerate() {
            for (r, result) in RequestResult::ALL.iter().enumerate() {
                self.request_counter(o, *op, r, *result);
            }
        }
        self.transferred_counter(0);
        self.transferred_counter(1);
    }

    fn request(&self, r: RemoteRequest) {
        let (Some(o), Some(x)) = (
            RequestOp::ALL.iter().position(|o| *o == r.op),
            RequestResult::ALL.iter().position(|x| *x == r.result),
        ) else {
            return;
        };
        self.request_counter(o, r.op, x, r.result).increment(1);
        self.transferred_counter(0).increment(r.sent);
        self.transferred_counter(1).increment(r.received);
    }
}
