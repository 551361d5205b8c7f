//! [`SizingTier`]: the decorator that hands each lookup of one tier to its
//! live model.

use std::sync::Arc;

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use super::{LiveSizing, TierPolicy};
use crate::{
    FileSystemCache, MemoryCache,
    cache::{CacheError, Control, Hit, Lookup, ModuleCache, Origin, tier_names},
    engine::engine_key,
    recording::{
        counters::HitCounters,
        ring::{Event, Kind, key_id, miss_event},
    },
    weights,
};

/// A tier whose policy and capacity live sizing can model.
pub trait Sizable {
    /// The policy the tier is modelled under, with its capacity now.
    fn sizing_policy(&self) -> TierPolicy;

    /// The per-thread hit counters of the tier's spy, if it is one: sizing
    /// then records in rings kept beside them (see
    /// [`SizingExt::with_sizing`]).
    #[doc(hidden)]
    fn spy_hits(&self) -> Option<&Arc<HitCounters>> {
        None
    }
}

impl Sizable for MemoryCache {
    fn sizing_policy(&self) -> TierPolicy {
        TierPolicy::Memory {
            capacity: self.capacity_bytes(),
            options: self.shadow_options(),
        }
    }
}

impl Sizable for FileSystemCache {
    fn sizing_policy(&self) -> TierPolicy {
        TierPolicy::Lru {
            capacity: self.capacity_bytes(),
        }
    }
}

#[cfg(feature = "redis")]
impl Sizable for crate::RedisCache {
    /// Unbounded (its store's own eviction is not modelled).
    fn sizing_policy(&self) -> TierPolicy {
        TierPolicy::Lru { capacity: None }
    }
}

impl<C: Sizable + ?Sized> Sizable for Arc<C> {
    fn sizing_policy(&self) -> TierPolicy {
        (**self).sizing_policy()
    }

    fn spy_hits(&self) -> Option<&Arc<HitCounters>> {
        (**self).spy_hits()
    }
}

/// Extension method: `tier.with_sizing(&sizing)`.
pub trait SizingExt: ModuleCache + Sizable + Sized {
    /// Model this tier live (see [`SizingTier`]), under the name its spy
    /// gives it ([`tier_names`]), or `memory` / `lru` for an unnamed tier.
    ///
    /// When the tier is a spy ([`Instrumented`](crate::Instrumented)), the spy itself records
    /// the events, in a ring per thread kept beside its per-thread hit
    /// counts: a hit then finds both with one thread-local lookup, and the
    /// returned decorator only holds the sizing. The spy goes on recording
    /// for this sizing for as long as it lives, whoever calls it.
    fn with_sizing(self, sizing: &LiveSizing) -> SizingTier<Self> {
        let policy = self.sizing_policy();
        let name = tier_names(&self).first().map_or_else(
            || match policy {
                TierPolicy::Memory { .. } => "memory".to_string(),
                TierPolicy::Lru { .. } => "lru".to_string(),
            },
            |n| n.to_string(),
        );
        let mut sized = SizingTier::new(self, sizing, &name, policy);
        if let (Some(tier), Some(hits)) = (sized.records_as, sized.inner.spy_hits())
            && sizing.attach_spy(hits, tier)
        {
            // The spy records; this decorator records nothing.
            sized.records_as = None;
        }
        sized
    }
}

impl<C: ModuleCache + Sizable + Sized> SizingExt for C {}

/// Wraps one tier and hands each of its lookups (and the size of each of
/// its saves) to a [`LiveSizing`]'s models, off the hit path (see
/// [`LiveSizing`]). Place it around the tier's spy so both see the
/// same calls: `memory.instrumented(..).with_sizing(&sizing)`. Built that
/// way ([`SizingExt::with_sizing`]), the spy records the events itself and
/// this decorator only holds the sizing (see there).
///
/// A lookup that ends in an error (not a miss) is not modelled.
#[derive(Clone)]
pub struct SizingTier<C> {
    inner: C,
    /// The models' shared state, one pointer away from the hit path.
    state: Arc<super::State>,
    sizing: LiveSizing,
    /// Index of this tier in the models, under which this decorator
    /// records its events. `None`: it records nothing, because the wrapped
    /// spy records them itself, or because the stack has too many sized
    /// tiers.
    records_as: Option<u8>,
    /// Index of this tier in the models (`None`: too many sized tiers).
    index: Option<u8>,
}

impl<C: std::fmt::Debug> std::fmt::Debug for SizingTier<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SizingTier")
            .field("cache", &self.sizing.cache_name())
            .field("records_as", &self.records_as)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<C> SizingTier<C> {
    /// Model `inner`, named `tier`, under `policy`, in `sizing`.
    #[doc(hidden)] // `SizingExt::with_sizing` is the way in; the benches call this
    pub fn new(inner: C, sizing: &LiveSizing, tier: &str, policy: TierPolicy) -> Self {
        let index = sizing.register(tier, policy);
        SizingTier {
            records_as: index,
            index,
            state: Arc::clone(&sizing.inner.state),
            sizing: sizing.clone(),
            inner,
        }
    }

    /// The wrapped tier.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// The models this tier feeds.
    pub fn sizing(&self) -> &LiveSizing {
        &self.sizing
    }

    #[inline]
    fn record(&self, kind: Kind, key: &ModuleHash, engine: &Engine, bytes: u64) {
        if let Some(tier) = self.records_as {
            self.state
                .record(Event::new(tier, kind, key_id(key, engine), bytes));
        }
    }

    fn record_miss(&self, key: &ModuleHash, engine: &Engine) {
        if self.records_as.is_some() {
            let (kind, bytes) = miss_event(*key, engine);
            self.record(kind, key, engine, bytes);
        }
    }

    fn record_save(&self, key: &ModuleHash, engine: &Engine) {
        if self.records_as.is_some()
            && let Some(b) = weights::lookup(*key, engine_key(engine))
        {
            self.record(Kind::Size, key, engine, b);
        }
    }
}

#[async_trait::async_trait]
impl<C: ModuleCache + Send + Sync> ModuleCache for SizingTier<C> {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        // A hit without `self.lookup`'s boxed future; `load_now` records
        // it, and a miss goes through `lookup`, which records it.
        if self.inner.answers_now()
            && let Some(hit) = self.load_now(key, engine)
        {
            return Ok(hit.module);
        }
        self.lookup(key, engine, Lookup::request())
            .await
            .map(|hit| hit.module)
    }

    // Always inlined, and the two-word `Hit` kept in registers, as the
    // spy's own `load_now` does (see there). A spy that records itself
    // leaves nothing to do here.
    #[inline(always)]
    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        // A miss is recorded by the `lookup` that follows, or by
        // `Control::Missed` (as the spy counts it).
        let hit = self.inner.load_now(key, engine)?;
        self.record(Kind::Hit, &key, engine, hit.bytes().unwrap_or(0));
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
        // The models follow callers' requests: an engine switch's reload
        // is not one.
        if self.records_as.is_none() || how.is_reload() {
            return self.inner.lookup(key, engine, how).await;
        }
        if self.inner.answers_now()
            && let Some(hit) = self.load_now(key, engine)
        {
            // A hit needs no second future (each `async_trait` call
            // allocates one); `load_now` recorded it. A miss goes on to
            // the inner tier's lookup, which counts (and times) it there.
            return Ok(hit);
        }
        let result = self.inner.lookup(key, engine, how).await;
        match &result {
            Ok(hit) => {
                let bytes = hit
                    .bytes()
                    .or_else(|| weights::lookup(key, engine_key(engine)))
                    .unwrap_or(0);
                self.record(Kind::Hit, &key, engine, bytes);
            }
            Err(e) if e.is_not_found() => self.record_miss(&key, engine),
            Err(_) => {}
        }
        result
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        self.inner.contains(key, engine).await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        self.store(key, engine, module, Origin::Save).await
    }

    async fn store(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        origin: Origin,
    ) -> Result<(), CacheError> {
        let result = self.inner.store(key, engine, module, origin).await;
        self.record_save(&key, engine);
        result
    }

    fn control(&self, message: &mut Control<'_>) {
        match (&*message, self.index) {
            (Control::Reinserted(engine, keys), Some(tier)) => {
                let ids: Vec<u64> = keys.iter().map(|k| key_id(k, engine)).collect();
                self.state.reinsert(tier, &ids);
            }
            (Control::Missed(engine, key), _)
                if self.records_as.is_some() && self.inner.answers_now() =>
            {
                self.record_miss(key, engine);
            }
            _ => {}
        }
        self.inner.control(message);
    }
}
