//! [`Instrumented`]: the spy decorator that records one tier's metrics.

use std::{fmt, sync::Arc};

use tracing::{Instrument as _, field::Empty};
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Control, Hit, Lookup, ModuleCache, Origin, TierName, Verified},
    engine::engine_key,
    names,
    recording::{
        counters::HitCounters,
        ring::{Kind, key_id, miss_event},
    },
    tier_events::TierObserver,
    weights,
};

/// Wraps any [`ModuleCache`] and records, under a `cache` and a `tier`
/// name, every metric of the contract (`docs/metrics.md`) through the
/// `metrics` facade, plus a debug-level `tracing` span per operation.
///
/// Metric handles are registered **once, at construction**, with whatever
/// recorder is installed then (install it first); the hot path touches only
/// handles. Hits are counted in the tier's per-thread counters (a plain
/// load and store, kept per thread), which reach the recorder
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

mod handles;

use handles::*;

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
    /// A caller's lookup of a tier whose synchronous answer is the whole
    /// answer ([`ModuleCache::answers_now`]): a hit counted by `load_now`,
    /// a miss counted and timed here.
    #[inline(always)]
    fn lookup_now(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        match self.load_now(key, engine) {
            Some(mut hit) => {
                hit.name_tier_if_unnamed(self.metrics.tier);
                Ok(hit)
            }
            None => self.lookup_now_missed(key, engine),
        }
    }

    /// [`Self::lookup_now`]'s miss, timed on a second probe, so that a
    /// hit reads no clock (+20-25 ns on every memory hit when it did). A
    /// module stored between the two probes is a hit, counted once by
    /// `load_now`.
    #[cold]
    #[inline(never)]
    fn lookup_now_missed(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        let start = quanta::Instant::now();
        if let Some(mut hit) = self.load_now(key, engine) {
            hit.name_tier_if_unnamed(self.metrics.tier);
            return Ok(hit);
        }
        self.missed_now(key, engine, Some(start));
        Err(CacheError::NotFound)
    }

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
    /// `load_now` said `None`): counted as the lookup it was, timed since
    /// `start` when the lookup was (a caller that only said
    /// [`Control::Missed`] was not). Out of line: the hit path stays small.
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
        // Not through `self.lookup`: an `async_trait` method called from
        // another boxes a second future (+40-45 ns on a memory hit).
        if self.inner.answers_now() {
            return self.lookup_now(key, engine).map(|hit| hit.module);
        }
        self.load_slow(key, engine, Lookup::request())
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
        // A miss is not counted here: the caller asks `lookup` next, which
        // counts it, or says `Control::Missed`.
        let hit = self.inner.load_now(key, engine)?;
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
            return self.lookup_now(key, engine);
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
            Control::Missed(engine, key) => {
                if self.inner.answers_now() {
                    self.missed_now(*key, engine, None);
                }
                self.inner.control(message);
            }
            _ => self.inner.control(message),
        }
    }
}

/// A spy is modelled as the tier it wraps; live sizing records its
/// events in rings beside the spy's own per-thread counts (see
/// [`SizingExt::with_sizing`](crate::sizing::live::SizingExt::with_sizing)).
impl<C: crate::sizing::live::Sizable> crate::sizing::live::Sizable for Instrumented<C> {
    fn sizing_policy(&self) -> crate::sizing::live::TierPolicy {
        self.get_ref().sizing_policy()
    }

    fn spy_hits(&self) -> Option<&Arc<crate::recording::counters::HitCounters>> {
        Some(self.hit_counters())
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
