//! The [`ModuleCache`] trait and the blanket implementation that lets `Arc<dyn ModuleCache + Send + Sync>` (or `Box`, or `&`) be used
//! wherever a cache is expected.
//!
//! The trait is source-compatible with `wasmer_wasix::runtime::module_cache::ModuleCache`:
//! the same `load`, `contains`, `save` and `with_fallback`, keyed by
//! [`ModuleHash`], answering a miss with [`CacheError::NotFound`].
//! A few provided methods are added (see the trait's docs) so that the
//! memory-hit path stays synchronous, lookups and stores say what they are
//! for, and combinators and spies learn the stack's shape; implementations
//! written against wasmer's trait compile unchanged because every addition
//! has a default.

use std::{fmt::Debug, ops::Deref, sync::Arc};

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{FallbackCache, tier_events::TierObserver};
pub use crate::{
    error::{CacheError, CacheErrorKind, Corruption, IntegrityFailure, Unavailability},
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
///
/// ## Beyond wasmer-wasix's four methods
///
/// The first four methods are wasmer-wasix's; a tier written against
/// wasix's trait compiles unchanged. The others carry what tierscope's
/// decorators and combinators need, each with a default in terms of the
/// four: the synchronous memory-hit path ([`load_now`](Self::load_now),
/// [`answers_now`](Self::answers_now)), lookups and stores that say what
/// they are for ([`lookup`](Self::lookup), [`store`](Self::store): a
/// caller's request or an engine switch's reload, a save or a promotion),
/// and one method, [`control`](Self::control), for everything about the
/// stack's shape (names, observers, engines). A decorator forwards these
/// five; a tier implements the ones it has something to say in.
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

    /// A hit this cache can serve at once, without waiting: memory tiers
    /// answer here so that decorators and combinators above them add no
    /// future (and no allocation) to a memory hit.
    ///
    /// `None` is a miss of this cache when it [answers now](Self::answers_now),
    /// and otherwise means "ask [`lookup`](Self::lookup)" (the default: a
    /// tier that cannot answer synchronously). Either way nothing counts
    /// it as a miss yet: a caller asks `lookup` next (which counts the
    /// miss of a tier that answers now), or, if it does not, says so with
    /// [`Control::Missed`]. So `load_now` then `load` is one lookup.
    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        let _ = (key, engine);
        None
    }

    /// Whether [`load_now`](Self::load_now) answers for every key this
    /// cache's first tier holds, so that its `None` is a miss of that tier
    /// (true for a memory tier, and for a chain or decorator over one).
    /// Default false.
    fn answers_now(&self) -> bool {
        false
    }

    /// Like [`ModuleCache::load()`], for a lookup of kind `how` (a caller's
    /// request, or an engine switch's reload: spies count them apart, and
    /// combinators copy a reload's hit into no faster tier), and
    /// saying which named tier served the hit, so that a combinator can
    /// label the promotion it performs.
    ///
    /// The default calls `load` and names no tier; [`crate::Instrumented`]
    /// names its tier and [`FallbackCache`] passes the name up from below.
    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        how: Lookup,
    ) -> Result<Hit, CacheError> {
        let _ = how;
        self.load(key, engine).await.map(Hit::new)
    }

    /// Store a module: a caller's save, or a hit from a lower tier copied
    /// up ([`Origin`]). The default is a plain [`ModuleCache::save()`]; the
    /// spy counts a promotion as one.
    async fn store(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        origin: Origin,
    ) -> Result<(), CacheError> {
        let _ = origin;
        self.save(key, engine, module).await
    }

    /// Handle a [`Control`] message about the stack's shape: tiers act on
    /// the messages meant for them, decorators pass every message to the
    /// cache they wrap, and combinators to the tiers each message concerns.
    /// The default ignores every message.
    fn control(&self, message: &mut Control<'_>) {
        let _ = message;
    }
}

/// What a lookup is for, as told to [`ModuleCache::lookup`]: spies count a
/// caller's request in `tierscope_lookups_total` and an engine switch's
/// reload in `tierscope_reloads_total`, never one as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lookup {
    reload: bool,
}

impl Lookup {
    /// A caller's request (the default).
    pub const fn request() -> Self {
        Lookup { reload: false }
    }

    /// The loader loading what the memory tier held into the next engine
    /// generation (see [`crate::EngineRecycling`]): not a caller's
    /// request, and its hit is not copied into faster tiers (the loader
    /// stores it in the in-process tiers when the next engine takes over).
    pub const fn reload() -> Self {
        Lookup { reload: true }
    }

    /// Whether this is an engine switch's reload.
    pub const fn is_reload(self) -> bool {
        self.reload
    }
}

/// Why a module is stored into a tier, as told to [`ModuleCache::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A caller's save (after a compile).
    Save,
    /// A hit in a lower tier, copied up. A reload's copy (`lookup` is
    /// [`Lookup::reload`]) goes to the in-process tiers only (those that
    /// [answer now](ModuleCache::answers_now)): the others hold it already.
    Promotion {
        /// The tier that served the hit, when named.
        from: Option<TierName>,
        /// The lookup the hit answered.
        lookup: Lookup,
    },
}

/// A message about a cache stack's shape, handled by
/// [`ModuleCache::control`]. Tiers, decorators and combinators each act on
/// what concerns them; the functions beside it ([`tier_names`],
/// [`forget_engine`]) send the common ones.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control<'a> {
    /// Report evictions, residency and availability to this observer (the
    /// spy attaches one to the tier it wraps). Combinators give it to their
    /// primary only.
    AttachObserver(Arc<dyn TierObserver>),
    /// Append the names of the named tiers, fastest first.
    TierNames(&'a mut Vec<TierName>),
    /// This cache became the primary of a [`FallbackCache`] whose fallback
    /// holds these named tiers: spies register their promotion counters for
    /// them now (with the recorder installed at this moment).
    ExpectPromotionsFrom(&'a [TierName]),
    /// Append the keys of the in-process entries whose machine code
    /// belongs to this engine, longest held first, dropping nothing (what
    /// an engine switch loads into the next engine before it retires this
    /// one). Tiers that hold bytes, not code, ignore it.
    EngineEntries(&'a Engine, &'a mut Vec<ModuleHash>),
    /// Drop every in-process entry whose machine code belongs to this
    /// engine (it is being retired: see [`crate::EngineRecycling`]), and
    /// append the keys dropped. Tiers that hold bytes, not code, ignore it.
    ForgetEngine(&'a Engine, &'a mut Vec<ModuleHash>),
    /// A caller's [`ModuleCache::load_now`] on this cache returned `None`
    /// and it will not [`lookup`](ModuleCache::lookup) (it waits for
    /// another caller's load of the same module): tiers that
    /// [answer now](ModuleCache::answers_now) count the miss it was.
    /// Combinators pass it to their primary only.
    Missed(&'a Engine, ModuleHash),
    /// An engine switch put these modules, loaded into this (new) engine,
    /// into the in-process tiers in this order, fresh, in place of the old
    /// engine's copies: models of those tiers (live sizing) do the same to
    /// what they shadow.
    Reinserted(&'a Engine, &'a [ModuleHash]),
}

/// The names of the named (instrumented) tiers in `cache`, fastest first.
pub fn tier_names(cache: &(impl ModuleCache + ?Sized)) -> Vec<TierName> {
    let mut names = Vec::new();
    cache.control(&mut Control::TierNames(&mut names));
    names
}

/// The keys of `cache`'s in-process entries whose machine code belongs to
/// `engine`, longest held first.
pub(crate) fn engine_entries(
    cache: &(impl ModuleCache + ?Sized),
    engine: &Engine,
) -> Vec<ModuleHash> {
    let mut keys = Vec::new();
    cache.control(&mut Control::EngineEntries(engine, &mut keys));
    keys
}

/// Drop every in-process entry of `cache` whose machine code belongs to
/// `engine`, for a caller that retires an engine of its own (the loader
/// does this for its own engines); returns the keys dropped.
pub fn forget_engine(cache: &(impl ModuleCache + ?Sized), engine: &Engine) -> Vec<ModuleHash> {
    let mut keys = Vec::new();
    cache.control(&mut Control::ForgetEngine(engine, &mut keys));
    keys
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

    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        (**self).load_now(key, engine)
    }

    fn answers_now(&self) -> bool {
        (**self).answers_now()
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        how: Lookup,
    ) -> Result<Hit, CacheError> {
        (**self).lookup(key, engine, how).await
    }

    async fn store(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        origin: Origin,
    ) -> Result<(), CacheError> {
        (**self).store(key, engine, module, origin).await
    }

    fn control(&self, message: &mut Control<'_>) {
        (**self).control(message)
    }
}

/// A successful [`ModuleCache::lookup()`]: the module and, when known,
/// the name of the tier that held it and the size of its artifact.
///
/// Two words: the module and one word that packs the rest, so that a hit
/// travels up a stack of decorators in registers rather than through the
/// stack at each layer.
#[derive(Clone)]
pub struct Hit {
    /// The module that was found.
    pub module: Module,
    /// Bits 0-47: artifact bytes; bit 48: bytes known; bits 49-59: the
    /// serving tier's [`TierName`] number (0: none); bits 60-61: how the
    /// bytes were verified ([`Verified`]).
    meta: u64,
}

const HIT_BYTES_MASK: u64 = (1 << 48) - 1;
const HIT_BYTES_KNOWN: u64 = 1 << 48;
const HIT_TIER_SHIFT: u32 = 49;
const HIT_TIER_MASK: u64 = ((1 << 11) - 1) << HIT_TIER_SHIFT;
const HIT_CHECK_SHIFT: u32 = 60;
const HIT_CHECK_MASK: u64 = 0b11 << HIT_CHECK_SHIFT;

/// How a tier that verifies artifacts before wasmer sees them (disk,
/// Redis) vouched for the bytes of one hit: the `check` label of
/// `tierscope_verified_hits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verified {
    /// Every byte was checked on this hit (checksum or keyed MAC).
    Full,
    /// The bytes are a mapping this process checked on an earlier hit, of
    /// a file found unchanged since (the disk tier's remembered mappings).
    Remembered,
    /// The bytes are a mapping of a disk entry file that an earlier hit, of
    /// this or another process, checked in full and recorded beside it, the
    /// file found unchanged since (the disk tier's verification records).
    Recorded,
}

impl Verified {
    /// Every value, in label order.
    pub const ALL: [Verified; 3] = [Verified::Full, Verified::Remembered, Verified::Recorded];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verified::Full => "full",
            Verified::Remembered => "remembered",
            Verified::Recorded => "recorded",
        }
    }
}

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
        match ((self.meta & HIT_TIER_MASK) >> HIT_TIER_SHIFT) as u16 {
            0 => None,
            id => TierName::from_id(id),
        }
    }

    /// Say which tier served this hit.
    #[inline]
    pub(crate) fn set_tier(&mut self, tier: Option<TierName>) {
        let id = tier.map_or(0, TierName::id);
        self.meta = (self.meta & !HIT_TIER_MASK) | (u64::from(id) << HIT_TIER_SHIFT);
    }

    /// Name `tier` as the tier that served this hit, unless one is named.
    #[inline]
    pub(crate) fn name_tier_if_unnamed(&mut self, tier: TierName) {
        if self.meta & HIT_TIER_MASK == 0 {
            self.set_tier(Some(tier));
        }
    }

    /// This hit, saying how its bytes were verified.
    #[inline]
    #[must_use]
    pub fn with_verified(mut self, verified: Verified) -> Self {
        let v = match verified {
            Verified::Full => 1u64,
            Verified::Remembered => 2,
            Verified::Recorded => 3,
        };
        self.meta = (self.meta & !HIT_CHECK_MASK) | (v << HIT_CHECK_SHIFT);
        self
    }

    /// How the serving tier verified this hit's bytes, when it verifies
    /// them (`None` for a memory hit, or a tier that does not say).
    #[inline]
    pub fn verified(&self) -> Option<Verified> {
        match (self.meta & HIT_CHECK_MASK) >> HIT_CHECK_SHIFT {
            1 => Some(Verified::Full),
            2 => Some(Verified::Remembered),
            3 => Some(Verified::Recorded),
            _ => None,
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
            .field("verified", &self.verified())
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
        assert_eq!(hit.verified(), None);
        let hit = hit.with_verified(Verified::Remembered).with_bytes(Some(7));
        assert_eq!(hit.verified(), Some(Verified::Remembered));
        let mut hit = hit.with_verified(Verified::Full);
        hit.set_tier(None);
        assert_eq!(
            (hit.tier(), hit.bytes(), hit.verified()),
            (None, Some(7), Some(Verified::Full))
        );
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
