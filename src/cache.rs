//! The [`ModuleCache`] trait and the blanket implementation that lets `Arc<dyn ModuleCache + Send + Sync>` (or `Box`, or `&`) be used
//! wherever a cache is expected.
//!
//! The trait is source-compatible with `wasmer_wasix::runtime::module_cache::ModuleCache`:
//! the same `load`, `contains`, `save` and `with_fallback`, keyed by
//! [`ModuleHash`], answering a miss with [`CacheError::NotFound`].
//! A few provided methods are added so that combinators can tell *which*
//! tier served a hit and tiers can report their evictions; implementations
//! written against wasmer's trait compile unchanged because every addition
//! has a default.

use std::{fmt::Debug, ops::Deref, sync::Arc};

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{FallbackCache, tier_events::TierObserver};
pub use crate::{
    error::{CacheError, Corruption, ErrorKind, IntegrityFailure, Unavailability},
    tier_name::TierName,
};

/// A cache for compiled WebAssembly modules.
///
/// ## Deterministic ID
///
/// Every tier in this crate keys entries on the module hash **and** on the
/// engine: tiers holding bytes (disk, Redis) on the engine's
/// [`Engine::deterministic_id()`], so a module compiled under one engine
/// configuration is never served to another; tiers holding live [`Module`]s
/// (memory) on the engine *instance*, because a module's machine code lives
/// in the engine that loaded it and is freed with that engine.
///
/// ## Assumptions
///
/// Implementations can assume that cache keys are unique and that using the
/// same key to load or save will always result in the "same" module, and
/// that [`ModuleCache::load()`] is called far more often than
/// [`ModuleCache::save()`].
///
/// ## Outcomes
///
/// Every call ends in exactly one of three ways: a hit (`Ok`), a miss
/// (`Err(CacheError::NotFound)`), or an error with a [`CacheError::kind`].
#[async_trait::async_trait]
pub trait ModuleCache: Debug {
    /// Load a module based on its hash.
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError>;

    /// Check if a module is present in the cache.
    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError>;

    /// Save a module so it can be retrieved with [`ModuleCache::load()`] at a
    /// later time.
    ///
    /// Implementations may assume the [`Module`] was compiled with `engine`.
    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError>;

    /// Chain a second [`ModuleCache`] that will be used as a fallback if
    /// lookups on the primary cache fail. A hit in the fallback is promoted
    /// into the primary.
    ///
    /// The general assumption is that each subsequent cache in the chain will
    /// be significantly slower than the previous one.
    fn with_fallback<C>(self, other: C) -> FallbackCache<Self, C>
    where
        Self: Sized,
        C: ModuleCache,
    {
        FallbackCache::new(self, other)
    }

    /// Like [`ModuleCache::load()`], but also says which named tier served
    /// the hit, so that a combinator can label the promotion it performs.
    ///
    /// The default calls `load` and names no tier; [`crate::Instrumented`]
    /// names its tier and [`FallbackCache`] passes the name up from below.
    async fn load_hit(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        self.load(key, engine).await.map(Hit::new)
    }

    /// A hit this cache can serve at once, without waiting: memory tiers
    /// answer here so that decorators and combinators above them add no
    /// future (and no allocation) to a memory hit.
    ///
    /// `None` means "ask [`ModuleCache::load_hit()`]": a miss, or a tier
    /// that cannot answer synchronously (the default). Implementations must
    /// not count anything for a `None`, since the caller will ask again.
    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        let _ = (key, engine);
        None
    }

    /// Store a module that was found in a lower tier (`from`, when known).
    ///
    /// The default is a plain [`ModuleCache::save()`]; the spy decorator
    /// overrides it to count the promotion.
    async fn promote(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        from: Option<TierName>,
    ) -> Result<(), CacheError> {
        let _ = from;
        self.save(key, engine, module).await
    }

    /// Attach an observer that receives this tier's evictions and resident
    /// size. Tiers without such events ignore it (the default).
    ///
    /// Combinators forward the call to the tier it belongs to: a
    /// [`FallbackCache`] gives it to its primary only.
    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        let _ = observer;
    }

    /// The names of the named tiers in this cache, fastest first (see
    /// [`crate::Instrumented`]). Empty for an unnamed tier (the default).
    fn tier_names(&self) -> Vec<TierName> {
        Vec::new()
    }

    /// Called once when this cache becomes the primary of a
    /// [`FallbackCache`], with the names of the tiers below it: the spy
    /// registers its promotion counters for them up front (with the
    /// recorder installed at construction). The default ignores it.
    fn expect_promotions_from(&self, lower: &[TierName]) {
        let _ = lower;
    }

    /// Drop every in-process entry whose machine code belongs to `engine`.
    ///
    /// Called when an engine is retired (see [`crate::EngineGenerations`]):
    /// its modules must not take capacity any more, and the engine can only
    /// be freed once nothing holds them. Tiers that hold bytes, not code
    /// (disk, Redis), ignore it (the default); combinators forward it to
    /// every tier. Returns the keys of the entries dropped, so the caller
    /// can warm them up again under a newer engine.
    fn forget_engine(&self, engine: &Engine) -> Vec<ModuleHash> {
        let _ = engine;
        Vec::new()
    }
}

#[async_trait::async_trait]
impl<D, C> ModuleCache for D
where
    D: Deref<Target = C> + Debug + Send + Sync,
    C: ModuleCache + Send + Sync + ?Sized,
{
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        (**self).load(key, engine).await
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        (**self).contains(key, engine).await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        (**self).save(key, engine, module).await
    }

    async fn load_hit(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        (**self).load_hit(key, engine).await
    }

    async fn promote(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        from: Option<TierName>,
    ) -> Result<(), CacheError> {
        (**self).promote(key, engine, module, from).await
    }

    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        (**self).load_now(key, engine)
    }

    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        (**self).attach_observer(observer)
    }

    fn tier_names(&self) -> Vec<TierName> {
        (**self).tier_names()
    }

    fn expect_promotions_from(&self, lower: &[TierName]) {
        (**self).expect_promotions_from(lower)
    }

    fn forget_engine(&self, engine: &Engine) -> Vec<ModuleHash> {
        (**self).forget_engine(engine)
    }
}

/// A successful [`ModuleCache::load_hit()`]: the module and, when known,
/// the name of the tier that held it and the size of its artifact.
///
/// Two words: the module and one word that packs the rest, so that a hit
/// travels up a stack of decorators in registers (a wider hit was copied
/// through the stack at each layer, and each copy stalled on store
/// forwarding: about 4 ns a layer).
#[derive(Clone)]
pub struct Hit {
    /// The module that was found.
    pub module: Module,
    /// Bits 0-47: artifact bytes; bit 48: bytes known; bits 49-63: the
    /// serving tier's [`TierName`] number (0: none).
    meta: u64,
}

const HIT_BYTES_MASK: u64 = (1 << 48) - 1;
const HIT_BYTES_KNOWN: u64 = 1 << 48;
const HIT_TIER_SHIFT: u32 = 49;

impl Hit {
    /// A hit on `module`, from no named tier, size unknown.
    #[inline]
    pub fn new(module: Module) -> Self {
        Hit { module, meta: 0 }
    }

    /// This hit, saying that tier `tier` served it.
    #[inline]
    #[must_use]
    pub fn with_tier(mut self, tier: Option<TierName>) -> Self {
        self.set_tier(tier);
        self
    }

    /// This hit, with its artifact's size (sizes past 2^48 - 1 bytes are
    /// kept as that).
    #[inline]
    #[must_use]
    pub fn with_bytes(mut self, bytes: Option<u64>) -> Self {
        self.meta &= !(HIT_BYTES_MASK | HIT_BYTES_KNOWN);
        if let Some(b) = bytes {
            self.meta |= b.min(HIT_BYTES_MASK) | HIT_BYTES_KNOWN;
        }
        self
    }

    /// The tier that served this hit, if that tier is named (and its name
    /// is one of the first [`TierName::MAX_IDS`] interned).
    #[inline]
    pub fn tier(&self) -> Option<TierName> {
        match (self.meta >> HIT_TIER_SHIFT) as u16 {
            0 => None,
            id => TierName::from_id(id),
        }
    }

    /// Say which tier served this hit.
    #[inline]
    pub fn set_tier(&mut self, tier: Option<TierName>) {
        let id = tier.map_or(0, TierName::id);
        self.meta = (self.meta & ((1 << HIT_TIER_SHIFT) - 1)) | (u64::from(id) << HIT_TIER_SHIFT);
    }

    /// Name `tier` as the tier that served this hit, unless one is named.
    #[inline]
    pub(crate) fn name_tier_if_unnamed(&mut self, tier: TierName) {
        if self.meta >> HIT_TIER_SHIFT == 0 {
            self.set_tier(Some(tier));
        }
    }

    /// Serialized artifact bytes of the module, when the tier knows them.
    #[inline]
    pub fn bytes(&self) -> Option<u64> {
        (self.meta & HIT_BYTES_KNOWN != 0).then_some(self.meta & HIT_BYTES_MASK)
    }

    /// The module.
    #[inline]
    pub fn into_module(self) -> Module {
        self.module
    }
}

impl std::fmt::Debug for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hit")
            .field("module", &self.module)
            .field("tier", &self.tier())
            .field("bytes", &self.bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_object_safe() {
        let _: Option<Box<dyn ModuleCache>> = None;
        let _: Option<Arc<dyn ModuleCache + Send + Sync>> = None;
    }

    #[test]
    fn a_hit_is_two_words_and_keeps_its_tier_and_size() {
        assert_eq!(std::mem::size_of::<Option<Hit>>(), 16);
        let engine = Engine::default();
        let module = Module::new(&engine, "(module)").unwrap();
        let hit = Hit::new(module);
        assert_eq!((hit.tier(), hit.bytes()), (None, None));
        let tier = TierName::intern("hit-test-tier");
        let hit = hit.with_bytes(Some(0)).with_tier(Some(tier));
        assert_eq!((hit.tier(), hit.bytes()), (Some(tier), Some(0)));
        let mut hit = hit.with_bytes(Some(u64::MAX));
        assert_eq!(hit.bytes(), Some((1 << 48) - 1));
        hit.set_tier(None);
        assert_eq!((hit.tier(), hit.bytes()), (None, Some((1 << 48) - 1)));
        let hit = hit.with_bytes(None).with_tier(Some(tier));
        assert_eq!((hit.tier(), hit.bytes()), (Some(tier), None));
    }

    #[test]
    fn key_is_displayed_as_hex() {
        let key = ModuleHash::from_bytes(std::array::from_fn(|i| i as u8));
        assert_eq!(
            key.to_string(),
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
        );
    }
}
