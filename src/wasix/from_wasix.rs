//! [`WasixTier`]: a wasmer-wasix cache as a tierscope tier.

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;
use wasmer_wasix::runtime::module_cache::ModuleCache as WasixModuleCache;

use crate::{CacheError, ModuleCache, wasix::from_wasix_error};

/// Any wasmer-wasix cache (`SharedCache`, `FileSystemCache`,
/// `ThreadLocalCache`, or your own) as a tierscope tier, so that the spy
/// can instrument it and it chains with tierscope tiers, in one line:
///
/// ```
/// use tierscope::{FileSystemCache, InstrumentExt, ModuleCache, wasix::WasixTier};
/// use wasmer_wasix::runtime::module_cache::SharedCache;
/// # let dir = tempfile::tempdir().unwrap();
///
/// let stack = WasixTier::new(SharedCache::default())
///     .instrumented("modules", "memory")
///     .with_fallback(FileSystemCache::open(dir.path(), 1 << 30).unwrap().instrumented("modules", "disk"));
/// ```
///
/// Errors are mapped back: `NotFound` is a miss, the
/// other variants keep their meaning (`Other` is kind `other`).
///
/// # Engines: wasix's in-memory caches key by configuration
///
/// wasix's `SharedCache` (and `ThreadLocalCache`) key live modules by
/// `Engine::deterministic_id()`, the engine **configuration**, not the
/// engine instance. A module's machine code lives in the engine that
/// compiled or deserialized it and is freed with that engine, and a
/// `Module` does not keep its engine alive. So if two engine instances of
/// the same configuration share one of these caches, a module saved
/// through the first is served to the second, and once the first engine is
/// dropped it runs freed memory (see "Keys and engines" in the README;
/// tierscope's own [`MemoryCache`](crate::MemoryCache) keys by instance for
/// this reason). Use them with **one engine for their whole life** (one
/// runtime, as `PluggableRuntime` does), or prefer `MemoryCache`. Tiers
/// that hold bytes (wasix's `FileSystemCache`) deserialize into the asking
/// engine and are sound with any number of engines.
///
/// The wrapper does not know an artifact's size: a tierscope memory tier
/// above it serializes a promoted module once to weigh it.
#[derive(Debug, Clone, Default)]
pub struct WasixTier<C>(C);

impl<C> WasixTier<C> {
    /// Wrap `cache`.
    pub fn new(cache: C) -> Self {
        WasixTier(cache)
    }

    /// The wrapped cache.
    pub fn get_ref(&self) -> &C {
        &self.0
    }

    /// The wrapped cache, back.
    pub fn into_inner(self) -> C {
        self.0
    }
}

impl<C> From<C> for WasixTier<C>
where
    C: WasixModuleCache,
{
    fn from(cache: C) -> Self {
        WasixTier(cache)
    }
}

#[async_trait::async_trait]
impl<C> ModuleCache for WasixTier<C>
where
    C: WasixModuleCache + Send + Sync,
{
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.0.load(key, engine).await.map_err(from_wasix_error)
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        self.0.contains(key, engine).await.map_err(from_wasix_error)
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        self.0
            .save(key, engine, module)
            .await
            .map_err(from_wasix_error)
    }
}
