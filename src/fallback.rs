//! [`FallbackCache`]: chain a faster tier in front of a slower one.

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::cache::{CacheError, Control, Hit, Lookup, ModuleCache, Origin, tier_names};

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
        primary.control(&mut Control::ExpectPromotionsFrom(&tier_names(&fallback)));
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
        // A primary hit without `self.lookup`'s boxed future (an
        // `async_trait` method called from another allocates one). The
        // primary counts the hit; on a miss `lookup` asks it again and
        // counts the miss there, once.
        if let Some(hit) = self.primary.load_now(key, engine) {
            return Ok(hit.module);
        }
        self.lookup(key, engine, Lookup::request())
            .await
            .map(|hit| hit.module)
    }

    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        self.primary.load_now(key, engine)
    }

    fn answers_now(&self) -> bool {
        self.primary.answers_now()
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        how: Lookup,
    ) -> Result<Hit, CacheError> {
        let primary_error = match self.primary.lookup(key, engine, how).await {
            Ok(hit) => return Ok(hit),
            Err(e) => e,
        };
        let below = how;
        let fallback_error = match self.fallback.lookup(key, engine, below).await {
            Ok(hit) if how.is_reload() => return Ok(hit),
            Ok(hit) => {
                if !primary_error.is_not_found() {
                    tracing::debug!(
                        %key,
                        error = &primary_error as &dyn std::error::Error,
                        "primary tier failed; served by the fallback",
                    );
                }
                let origin = Origin::Promotion {
                    from: hit.tier(),
                    lookup: below,
                };
                if let Err(e) = self.primary.store(key, engine, &hit.module, origin).await {
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
        self.store(key, engine, module, Origin::Save).await
    }

    async fn store(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        origin: Origin,
    ) -> Result<(), CacheError> {
        // The slower tier first: it serializes anyway, and records the
        // artifact size the memory tier weighs by. A promotion from below
        // this whole chain gives every tier of it a copy; a reload's, only
        // the in-process tiers.
        let all = !matches!(origin, Origin::Promotion { lookup, .. } if lookup.is_reload());
        let fallback = if all || self.fallback.answers_now() {
            self.fallback.store(key, engine, module, origin).await
        } else {
            Ok(())
        };
        let primary = if all || self.primary.answers_now() {
            self.primary.store(key, engine, module, origin).await
        } else {
            Ok(())
        };
        match (primary, fallback) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(p), Err(f)) => {
                tracing::warn!(
                    %key,
                    error = &f as &dyn std::error::Error,
                    "fallback tier failed to store as well as the primary",
                );
                Err(p)
            }
        }
    }

    fn control(&self, message: &mut Control<'_>) {
        match message {
            // Evictions and residency are the primary's own to report; a
            // caller's `load_now` asked the primary only.
            Control::AttachObserver(_) | Control::Missed(..) => self.primary.control(message),
            // Names and engines concern every tier; a hit from below this
            // chain is promoted into both of its tiers.
            _ => {
                self.primary.control(message);
                self.fallback.control(message);
            }
        }
    }
}
