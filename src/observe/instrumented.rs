//! [`Instrumented`]: the spy decorator that records one tier's metrics.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use metrics::{Counter, Gauge, Histogram};
use parking_lot::RwLock;
use tracing::{Instrument as _, field::Empty};
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Control, ErrorKind, Hit, Lookup, ModuleCache, Origin, TierName, Verified},
    engine::engine_key,
    observe::{
        hot::HitCounters,
        names::{self, label},
    },
    sizing::live::ring::{Kind, key_id, miss_event},
    tier_events::{
        Eviction, EvictionCause, RemoteRequest, RequestOp, RequestResult, Residency, TierObserver,
    },
    weights,
};

/// Wraps any [`ModuleCache`] and records, under a `cache` and a `tier`
/// name, every metric of the contract (`docs/metrics.md`) through the
/// `metrics` facade, plus a debug-level `tracing` span per operation.
///
/// Metric handles are registered **once, at construction**, with whatever
/// recorder is installed then (install it first); the hot path touches only
/// handles. Hits are counted in the tier's per-thread counters (a plain
/// load and store; see [`crate::observe::hot`]), which reach the recorder
/// as increments on [`crate::observe::flush`] (exporters run it on scrape
/// and on a timer) and when the tier is dropped. One in
/// `latency_sample_every` memory-tier hits (served through
/// [`ModuleCache::load_now`]) is timed; every other operation is always
/// timed.
///
/// ```
/// use tierscope::{FileSystemCache, InstrumentExt, MemoryCache, ModuleCache};
/// # let dir = tempfile::tempdir().unwrap();
/// let cache = MemoryCache::new(64 << 20)
///     .instrumented("modules", "memory")
///     .with_fallback(
///         FileSystemCache::open(dir.path(), 1 << 30).unwrap().instrumented("modules", "disk"),
///     );
/// ```
pub struct Instrumented<C> {
    inner: C,
    metrics: Arc<TierMetrics>,
    /// What the tier reports itself (also holds the verified-hit counters).
    observed: Arc<ObserverMetrics>,
    /// Hits and read bytes, counted per thread. Beside `metrics` rather
    /// than in it: one pointer less to follow on the memory-hit path.
    hits: Arc<HitCounters>,
}

impl<C: Clone> Clone for Instrumented<C> {
    fn clone(&self) -> Self {
        Instrumented {
            inner: self.inner.clone(),
            metrics: Arc::clone(&self.metrics),
            observed: Arc::clone(&self.observed),
            hits: Arc::clone(&self.hits),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Instrumented<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("cache", &self.metrics.cache)
            .field("tier", &self.metrics.tier)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Settings of an [`Instrumented`] tier.
#[derive(Debug, Clone, Copy)]
pub struct InstrumentOptions {
    latency_sample_every: u32,
}

impl Default for InstrumentOptions {
    fn default() -> Self {
        InstrumentOptions {
            latency_sample_every: 128,
        }
    }
}

impl InstrumentOptions {
    /// Time one in `n` synchronous (memory) hits; rounded up to a power of
    /// two, 1 times every hit. Every hit is still counted. Default 128: two
    /// clock reads and a histogram record cost twice the hit itself, and the
    /// quantiles of a uniform sample are unbiased. Values above 2^31 are
    /// taken as 2^31.
    pub fn latency_sample_every(mut self, n: u32) -> Self {
        self.latency_sample_every = n.clamp(1, 1 << 31).next_power_of_two();
        self
    }
}

const OPS: [&str; 4] = ["load", "save", "contains", "reload"];
const LOAD: usize = 0;
const SAVE: usize = 1;
const CONTAINS: usize = 2;
/// An engine switch's reload (see [`Lookup::reload`]): a lookup of its own.
const RELOAD: usize = 3;
/// Result labels by op: load, contains and reload answer hit/miss/error,
/// save ok/error.
const RESULTS: [[&str; 3]; 4] = [
    ["hit", "miss", "error"],
    ["ok", "error", ""],
    ["hit", "miss", "error"],
    ["hit", "miss", "error"],
];
const HIT: usize = 0;
const MISS: usize = 1;
const ERR: usize = 2;
const SAVE_OK: usize = 0;
const SAVE_ERR: usize = 1;

struct TierMetrics {
    cache: String,
    tier: TierName,
    sample_mask: u64,
    lookups: [Counter; 3],
    /// An engine switch's reloads that reached this tier, by result.
    reloads: [Counter; 3],
    saves: [Counter; 2],
    duration: [[Histogram; 3]; 4],
    errors: [[Counter; ErrorKind::ERRORS.len()]; 4],
    /// What [`HitCounters`] publishes to: the `hit` lookups and read bytes.
    hits: Counter,
    read_bytes: Counter,
    written_bytes: Counter,
    promotions: RwLock<Vec<(TierName, [Counter; 2])>>,
}

impl TierMetrics {
    fn new(cache: String, tier: TierName, options: InstrumentOptions) -> Self {
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
            ErrorKind::ERRORS.map(|kind| {
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

    fn error(&self, op: usize, e: &CacheError) {
        if let Some(i) = ErrorKind::ERRORS.iter().position(|k| *k == e.kind()) {
            self.errors[op][i].increment(1);
        }
    }

    /// The promotion counters (ok, error) for hits coming from `from`,
    /// registered by [`Control::ExpectPromotionsFrom`] when the chain
    /// is built (or here, late, for a tier nobody announced). Promotions
    /// follow a slow-tier hit, so the lock here is off the hot path.
    fn promotion_counters(&self, from: &str) -> [Counter; 2] {
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
struct ObserverMetrics {
    evictions: [Counter; EvictionCause::ALL.len()],
    evicted_bytes: [Counter; EvictionCause::ALL.len()],
    eviction_age: Histogram,
    /// Registered when the tier first reports its residency (at attach):
    /// absent for tiers that cannot know it (a remote tier).
    entries: OnceLock<Gauge>,
    size: OnceLock<Gauge>,
    /// Registered when the tier first reports a bound (at attach): absent
    /// for unbounded tiers, as the contract says.
    capacity: OnceLock<Gauge>,
    /// Registered when the tier first reports availability (tiers with a
    /// circuit breaker do at attach): absent for the others.
    available: OnceLock<Gauge>,
    /// Hits by how they were verified ([`Verified::ALL`] order), registered
    /// when the tier says it verifies (at attach): absent for the others.
    verified: OnceLock<[Counter; Verified::ALL.len()]>,
    /// Registered when the tier first reports a request to its store
    /// (remote tiers that do): by op and result, then sent and received
    /// bytes.
    requests: [[OnceLock<Counter>; RequestResult::ALL.len()]; RequestOp::ALL.len()],
    transferred: [OnceLock<Counter>; 2],
    cache: String,
    tier: String,
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
    fn new(cache: &str, tier: &str) -> Self {
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

impl<C: ModuleCache> Instrumented<C> {
    /// Wrap `inner`, naming its cache stack and tier.
    pub fn new(inner: C, cache: impl Into<String>, tier: impl Into<String>) -> Self {
        Self::with_options(inner, cache, tier, InstrumentOptions::default())
    }

    /// Wrap `inner` with explicit [`InstrumentOptions`].
    pub fn with_options(
        inner: C,
        cache: impl Into<String>,
        tier: impl Into<String>,
        options: InstrumentOptions,
    ) -> Self {
        let cache = cache.into();
        let tier = TierName::intern(&tier.into());
        names::describe_all();
        let observed = Arc::new(ObserverMetrics::new(&cache, &tier));
        inner.control(&mut Control::AttachObserver(
            Arc::clone(&observed) as Arc<dyn TierObserver>
        ));
        let metrics = TierMetrics::new(cache, tier, options);
        Instrumented {
            observed,
            hits: HitCounters::new(metrics.hits.clone(), metrics.read_bytes.clone()),
            metrics: Arc::new(metrics),
            inner,
        }
    }
}

impl<C> Instrumented<C> {
    /// The wrapped tier.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped tier, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// The per-thread hit counters (where live sizing keeps its rings).
    pub(crate) fn hit_counters(&self) -> &Arc<HitCounters> {
        &self.hits
    }

    /// The cache stack's name (`cache` label).
    pub fn cache_name(&self) -> &str {
        &self.metrics.cache
    }

    /// What a memory hit does beyond counting, for one hit in
    /// `latency_sample_every` (timed since `start`) or with debug tracing
    /// on. Out of line, so that [`ModuleCache::load_now`] stays small: one
    /// rare call on its path.
    #[cold]
    #[inline(never)]
    fn after_memory_hit(&self, start: Option<quanta::Instant>, bytes: Option<u64>) {
        if let Some(start) = start {
            self.metrics.duration[LOAD][HIT].record(start.elapsed().as_secs_f64());
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let span = self.span("load");
            span.record("result", "hit");
            span.record("bytes", bytes);
        }
    }

    fn span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "tierscope",
            cache = %self.metrics.cache,
            tier = %self.metrics.tier,
            op,
            result = Empty,
            bytes = Empty,
        )
    }
}

impl<C: ModuleCache + Send + Sync> Instrumented<C> {
    /// A caller's lookup that the synchronous path could not answer:
    /// always timed.
    async fn load_slow(
        &self,
        key: ModuleHash,
        engine: &Engine,
        how: Lookup,
    ) -> Result<Hit, CacheError> {
        let metrics = &*self.metrics;
        let span = self.span("load");
        let start = quanta::Instant::now();
        let result = self
            .inner
            .lookup(key, engine, how)
            .instrument(span.clone())
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        match result {
            Ok(mut hit) => {
                metrics.duration[LOAD][HIT].record(elapsed);
                let bytes = hit
                    .bytes()
                    .or_else(|| weights::lookup(key, engine_key(engine)));
                let local = self.hits.local();
                local.hit(bytes.unwrap_or(0));
                local.record(Kind::Hit, || key_id(&key, engine), bytes.unwrap_or(0));
                if let (Some(v), Some(counters)) = (hit.verified(), self.observed.verified.get())
                    && let Some(i) = Verified::ALL.iter().position(|x| *x == v)
                {
                    counters[i].increment(1);
                }
                span.record("result", "hit");
                span.record("bytes", bytes);
                hit.name_tier_if_unnamed(metrics.tier);
                Ok(hit.with_bytes(bytes))
            }
            Err(e) if e.is_not_found() => {
                metrics.lookups[MISS].increment(1);
                metrics.duration[LOAD][MISS].record(elapsed);
                self.record_miss(key, engine);
                span.record("result", "miss");
                Err(e)
            }
            Err(e) => {
                metrics.lookups[ERR].increment(1);
                metrics.duration[LOAD][ERR].record(elapsed);
                metrics.error(LOAD, &e);
                span.record("result", "error");
                Err(e)
            }
        }
    }

    /// An engine switch's reload (see [`Lookup::reload`]): counted in
    /// `tierscope_reloads_total` and timed as op `reload`, never as a
    /// caller's lookup, and not shown to live sizing (whose models follow
    /// what callers ask for).
    async fn reload(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        let metrics = &*self.metrics;
        let span = self.span("reload");
        let start = quanta::Instant::now();
        let result = if self.inner.answers_now() {
            self.inner.load_now(key, engine).ok_or(CacheError::NotFound)
        } else {
            self.inner
                .lookup(key, engine, Lookup::reload())
                .instrument(span.clone())
                .await
        };
        let elapsed = start.elapsed().as_secs_f64();
        let r = match &result {
            Ok(_) => HIT,
            Err(e) if e.is_not_found() => MISS,
            Err(e) => {
                metrics.error(RELOAD, e);
                ERR
            }
        };
        metrics.reloads[r].increment(1);
        metrics.duration[RELOAD][r].record(elapsed);
        span.record("result", RESULTS[RELOAD][r]);
        result.map(|mut hit| {
            hit.name_tier_if_unnamed(metrics.tier);
            hit
        })
    }

    /// Hand a caller's miss of this tier to live sizing, if it is sized.
    fn record_miss(&self, key: ModuleHash, engine: &Engine) {
        if self.hits.sized() {
            let (kind, bytes) = miss_event(key, engine);
            self.hits
                .local()
                .record(kind, || key_id(&key, engine), bytes);
        }
    }

    async fn store_counted(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        origin: Origin,
    ) -> Result<(), CacheError> {
        let metrics = &*self.metrics;
        let span = self.span("save");
        let start = quanta::Instant::now();
        let result = self
            .inner
            .store(key, engine, module, origin)
            .instrument(span.clone())
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        let (from, reload) = match origin {
            Origin::Promotion { from, lookup } => (
                Some(from.unwrap_or_else(|| TierName::intern("unnamed"))),
                lookup.is_reload(),
            ),
            _ => (None, false),
        };
        if reload {
            // Part of the reload the tiers below counted: not a caller's
            // save, nor a promotion. Only a failure is worth a count.
            if let Err(e) = &result {
                metrics.error(RELOAD, e);
            }
            return result;
        }
        match &result {
            Ok(()) => {
                metrics.saves[SAVE_OK].increment(1);
                metrics.duration[SAVE][SAVE_OK].record(elapsed);
                let bytes = weights::lookup(key, engine_key(engine));
                if let Some(b) = bytes {
                    metrics.written_bytes.increment(b);
                }
                span.record("result", "ok");
                span.record("bytes", bytes);
            }
            Err(e) => {
                metrics.saves[SAVE_ERR].increment(1);
                metrics.duration[SAVE][SAVE_ERR].record(elapsed);
                metrics.error(SAVE, e);
                span.record("result", "error");
            }
        }
        // Live sizing learns the size of what was saved (saved or not: the
        // weight is known once the module was weighed).
        if self.hits.sized()
            && let Some(b) = weights::lookup(key, engine_key(engine))
        {
            self.hits
                .local()
                .record(Kind::Size, || key_id(&key, engine), b);
        }
        if let Some(from) = from {
            let [ok, err] = metrics.promotion_counters(&from);
            if result.is_ok() { ok } else { err }.increment(1);
        }
        result
    }
}

impl<C: ModuleCache> Instrumented<C> {
    /// A caller's miss of a tier that answers synchronously (its
    /// `load_now` said `None`): counted as the lookup it was, timed when
    /// the hit tick samples it (`start`). Out of line: misses are rare
    /// beside hits, and the hit path stays small.
    #[cold]
    #[inline(never)]
    fn missed_now(&self, key: ModuleHash, engine: &Engine, start: Option<quanta::Instant>) {
        let metrics = &*self.metrics;
        metrics.lookups[MISS].increment(1);
        if let Some(start) = start {
            metrics.duration[LOAD][MISS].record(start.elapsed().as_secs_f64());
        }
        if self.hits.sized() {
            let (kind, bytes) = miss_event(key, engine);
            self.hits
                .local()
                .record(kind, || key_id(&key, engine), bytes);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            self.span("load").record("result", "miss");
        }
    }
}

#[async_trait::async_trait]
impl<C: ModuleCache + Send + Sync> ModuleCache for Instrumented<C> {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.lookup(key, engine, Lookup::request())
            .await
            .map(|hit| hit.module)
    }

    // Always inlined (its cold parts are out of line): the memory-hit path,
    // where a call and the copies it brings cost several per cent.
    #[inline(always)]
    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        let local = self.hits.local();
        let start = local
            .sampled(self.metrics.sample_mask)
            .then(quanta::Instant::now);
        // The `Hit` (two words) is taken out of the answer and put back in
        // a new `Some`, which keeps it in registers (borrowing it inside the
        // answer left the answer on the stack, and the copy out then
        // stalled on store forwarding).
        let Some(hit) = self.inner.load_now(key, engine) else {
            if self.inner.answers_now() {
                self.missed_now(key, engine, start);
            }
            return None;
        };
        let bytes = hit.bytes().unwrap_or(0);
        local.hit(bytes);
        local.record(Kind::Hit, move || key_id(&key, engine), bytes);
        // `level_enabled!` is one load of the global level filter (the
        // full `enabled!` asks the subscriber); the cold path asks again.
        if start.is_some() || tracing::level_enabled!(tracing::Level::DEBUG) {
            self.after_memory_hit(start, hit.bytes());
        }
        // `tier` is left as the inner tier set it: `lookup` names this
        // tier, and the loader's fast path never needs the name.
        Some(hit)
    }

    fn answers_now(&self) -> bool {
        self.inner.answers_now()
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        how: Lookup,
    ) -> Result<Hit, CacheError> {
        if how.is_reload() {
            return self.reload(key, engine).await;
        }
        if self.inner.answers_now() {
            // The synchronous answer is the whole answer. After the same
            // caller's `load_now`, that answer was counted already.
            let hit = if how.is_after_load_now() {
                self.inner.load_now(key, engine)
            } else {
                self.load_now(key, engine)
            };
            return match hit {
                Some(mut hit) => {
                    hit.name_tier_if_unnamed(self.metrics.tier);
                    Ok(hit)
                }
                None => Err(CacheError::NotFound),
            };
        }
        self.load_slow(key, engine, how).await
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let metrics = &*self.metrics;
        let span = self.span("contains");
        let start = quanta::Instant::now();
        let result = self
            .inner
            .contains(key, engine)
            .instrument(span.clone())
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        let r = match &result {
            Ok(true) => HIT,
            Ok(false) => MISS,
            Err(e) => {
                metrics.error(CONTAINS, e);
                ERR
            }
        };
        metrics.duration[CONTAINS][r].record(elapsed);
        span.record("result", RESULTS[CONTAINS][r]);
        result
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        self.store_counted(key, engine, module, Origin::Save).await
    }

    async fn store(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        origin: Origin,
    ) -> Result<(), CacheError> {
        self.store_counted(key, engine, module, origin).await
    }

    fn control(&self, message: &mut Control<'_>) {
        match message {
            // This tier's name stands for the tier it wraps.
            Control::TierNames(names) => names.push(self.metrics.tier),
            Control::ExpectPromotionsFrom(lower) => {
                for from in lower.iter() {
                    let _ = self.metrics.promotion_counters(from);
                }
                self.inner.control(message);
            }
            _ => self.inner.control(message),
        }
    }
}

/// Extension method: `tier.instrumented("modules", "disk")`.
pub trait InstrumentExt: ModuleCache + Sized {
    /// Wrap this tier in the spy decorator (see [`Instrumented`]).
    fn instrumented(self, cache: impl Into<String>, tier: impl Into<String>) -> Instrumented<Self> {
        Instrumented::new(self, cache, tier)
    }
}

impl<C: ModuleCache + Sized> InstrumentExt for C {}
