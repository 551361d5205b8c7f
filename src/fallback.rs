//! [`FallbackCache`]: chain a faster tier in front of a slower one.

use std::sync::Arc;

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Hit, ModuleCache, TierName},
    tier_events::TierObserver,
};

/// [`FallbackCache`] is a combinator for the [`ModuleCache`] trait that
/// chains two caching strategies together, typically via
/// [`ModuleCache::with_fallback()`].
///
/// Behaviour, as wasmer-wasix's:
/// - `load` asks the primary first; on any failure it asks the fallback, and
///   a fallback hit is **promoted** (saved) into the primary. A failed
///   promotion is logged and counted (by the primary's spy), never fatal.
/// - `contains` asks the primary, then the fallback.
/// - `save` writes both (the fallback first, so that the slower tier, which
///   serializes anyway, records the artifact size the memory tier uses as
///   its weight: see the artifact-weight table in the crate docs).
///
/// Chains nest: in `memory.with_fallback(disk.with_fallback(redis))` a
/// Redis hit is promoted into the disk tier by the inner combinator and into
/// the memory tier by the outer one, each promotion labelled with the tier
/// that served the hit (`from = redis`).
///
/// Unlike wasmer's, a failure of the fallback is never dropped: when both
/// tiers fail, the error returned is the fallback's if the primary merely
/// missed, and any error not returned is logged. Each tier's spy counts its
/// own errors in any case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FallbackCache<Primary, Fallback> {
    primary: Primary,
    fallback: Fallback,
}

impl<Primary, Fallback> FallbackCache<Primary, Fallback> {
    /// Chain `primary` in front of `fallback`. A named (instrumented)
    /// primary registers its promotion counters for the fallback's tiers
    /// now, with the recorder installed at this moment.
    pub fn new(primary: Primary, fallback: Fallback) -> Self
    where
        Primary: ModuleCache,
        Fallback: ModuleCache,
    {
        primary.expect_promotions_from(&fallback.tier_names());
        FallbackCache { primary, fallback }
    }

    /// The faster tier.
    pub fn primary(&self) -> &Primary {
        &self.primary
    }

    /// The faster tier, mutably.
    pub fn primary_mut(&mut self) -> &mut Primary {
        &mut self.primary
    }

    /// The slower tier.
    pub fn fallback(&self) -> &Fallback {
        &self.fallback
    }

    /// The slower tier, mutably.
    pub fn fallback_mut(&mut self) -> &mut Fallback {
        &mut self.fallback
    }

    /// Both tiers, primary first.
    pub fn into_inner(self) -> (Primary, Fallback) {
        let FallbackCache { primary, fallback } = self;
        (primary, fallback)
    }
}

#[async_trait::async_trait]
impl<Primary, Fallback> ModuleCache for FallbackCache<Primary, Fallback>
where
    Primary: ModuleCache + Send + Sync,
    Fallback: ModuleCache + Send + Sync,
{
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.load_hit(key, engine).await.map(|hit| hit.module)
    }

    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        self.primary.load_now(key, engine)
    }

    async fn load_hit(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        let primary_error = match self.primary.load_hit(key, engine).await {
            Ok(hit) => return Ok(hit),
            Err(e) => e,
        };
        let fallback_error = match self.fallback.load_hit(key, engine).await {
            Ok(hit) => {
                if !primary_error.is_not_found() {
                    tracing::debug!(
                        %key,
                        error = &primary_error as &dyn std::error::Error,
                        "primary tier failed; served by the fallback",
                    );
                }
                if let Err(e) = self
                    .primary
                    .promote(key, engine, &hit.module, hit.tier())
                    .await
                {
                    tracing::warn!(
                        %key,
                        error = &e as &dyn std::error::Error,
                        "unable to promote a module to the primary cache",
                    );
                }
                return Ok(hit);
            }
            Err(e) => e,
        };
        match (primary_error.is_not_found(), fallback_error.is_not_found()) {
            (true, _) => Err(fallback_error),
            (false, true) => Err(primary_error),
            (false, false) => {
                tracing::warn!(
                    %key,
                    error = &fallback_error as &dyn std::error::Error,
                    "fallback tier failed as well as the primary",
                );
                Err(primary_error)
            }
        }
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        match self.primary.contains(key, engine).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => tracing::debug!(
                %key,
                error = &e as &dyn std::error::Error,
                "primary tier failed on contains; asking the fallback",
            ),
        }
        self.fallback.contains(key, engine).await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let fallback = self.fallback.save(key, engine, module).await;
        let primary = self.primary.save(key, engine, module).await;
        match (primary, fallback) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(p), Err(f)) => {
                tracing::warn!(
                    %key,
                    error = &f as &dyn std::error::Error,
                    "fallback tier failed to save as well as the primary",
                );
                Err(p)
            }
        }
    }

    async fn promote(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        from: Option<TierName>,
    ) -> Result<(), CacheError> {
        // A hit from below this whole chain: every tier of it gets a copy.
        let fallback = self.fallback.promote(key, engine, module, from).await;
        let primary = self.primary.promote(key, engine, module, from).await;
        primary.and(fallback)
    }

    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        self.primary.attach_observer(observer);
    }

    fn tier_names(&self) -> Vec<TierName> {
        let mut names = self.primary.tier_names();
        names.extend(self.fallback.tier_names());
        names
    }

    fn expect_promotions_from(&self, lower: &[TierName]) {
        // A hit from below this chain is promoted into both of its tiers.
        self.primary.expect_promotions_from(lower);
        self.fallback.expect_promotions_from(lower);
    }

    fn forget_engine(&self, engine: &Engine) -> Vec<ModuleHash> {
        let mut keys = self.primary.forget_engine(engine);
        keys.extend(self.fallback.forget_engine(engine));
        keys
    }
}
