//! [`ModuleLoader`]: wasm bytes in, a [`Module`] out, through the tiers,
//! compiling once per key however many callers ask at the same moment.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, atomic::AtomicU64},
};

use futures::future::{BoxFuture, Shared};
use metrics::{Counter, Histogram};
use parking_lot::Mutex;
use wasmer::{CompileError, Engine, EngineId, Module};
use wasmer_types::ModuleHash;

mod flight;
mod generations;
mod loaded;
mod switch;

pub use generations::{EngineGeneration, EngineRecycling};
pub use loaded::{LoadedModule, Served};

use crate::{
    cache::ModuleCache,
    names::{self, label},
};
use generations::Generations;

/// Why [`ModuleLoader`] could not produce a module. Cheap to clone: every
/// caller waiting on one compile receives the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The wasm failed to validate or compile. Never cached: the next call
    /// tries again.
    #[error("compiling module {key} failed: {source}")]
    Compile {
        /// The module hash.
        key: ModuleHash,
        /// wasmer's error.
        #[source]
        source: Arc<CompileError>,
    },
    /// The task doing the work died (a panic inside wasmer, or the runtime
    /// shutting down).
    #[error("loading module {key} failed: {reason}")]
    Task {
        /// The module hash.
        key: ModuleHash,
        /// What happened.
        reason: String,
    },
}

type Flight = Shared<BoxFuture<'static, Result<(Module, Served), LoadError>>>;

/// Flights in progress, by module and engine *instance*: a module loaded
/// into one engine is never handed to a caller of another.
type InFlight = HashMap<(ModuleHash, EngineId), (u64, Flight)>;

struct Inner<C> {
    cache: C,
    name: String,
    inflight: Mutex<InFlight>,
    next_flight: AtomicU64,
    generations: Generations,
    compiled_ok: Counter,
    compiled_err: Counter,
    compile_duration: Histogram,
    coalesced: Counter,
}

/// Loads modules through a cache, compiling on a miss.
///
/// - [`ModuleLoader::load`] (and `_with_hash`, `_lazy`) load into the
///   loader's own engine, managed in [`EngineRecycling`]: each result is
///   a [`LoadedModule`], the module paired with the engine that holds its
///   code, and code memory stays bounded under eviction churn. This is the
///   API to use unless you manage engines yourself.
/// - [`ModuleLoader::load_into`] (and `_with_hash`, `_lazy`) load into
///   an engine of yours: the memory tier keys by engine instance, so a
///   module is only served to callers of the engine that holds its code,
///   but recycling that engine is up to you.
/// - A memory hit is answered synchronously through
///   [`ModuleCache::load_now`]: no task, no allocation.
/// - Otherwise one caller per (module, engine) becomes the leader: it asks
///   the tiers and, on a miss **or a tier error**, compiles on tokio's
///   blocking pool and saves through the cache (a failed save is logged and
///   counted by the tiers' spies, never fatal). Every other caller asking
///   meanwhile waits for the leader's result (`tierscope_coalesced_total`).
///   The work runs in its own task, so a cancelled caller never strands the
///   others; if that task dies (a panic in a tier or in wasmer, or the
///   runtime shutting down), its callers get [`LoadError::Task`] and the
///   next call starts afresh.
/// - Invalid wasm reaches every waiter as [`LoadError::Compile`] and is not
///   cached.
///
/// Needs a tokio runtime. Metric handles are registered at construction.
///
/// ```
/// use tierscope::{MemoryCache, ModuleLoader};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let loader = ModuleLoader::new("modules", MemoryCache::new(64 << 20));
/// let module = loader.load(b"(module)").await.unwrap();
/// let again = loader.load(b"(module)").await.unwrap();
/// assert_eq!(*module, *again);
/// let store = module.store(); // always a store of the module's own engine
/// # let _ = store;
/// # });
/// ```
pub struct ModuleLoader<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for ModuleLoader<C> {
    fn clone(&self) -> Self {
        ModuleLoader {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for ModuleLoader<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleLoader")
            .field("name", &self.inner.name)
            .field("cache", &self.inner.cache)
            .field("in_flight", &self.inner.inflight.lock().len())
            .field("generations", &self.inner.generations)
            .finish()
    }
}

impl<C> ModuleLoader<C>
where
    C: ModuleCache + Send + Sync + 'static,
{
    /// A loader for the cache stack `cache`, named `name` in metrics (the
    /// `cache` label; use the same name as its tiers), loading into
    /// generations of `Engine::default()` with the default code budget.
    pub fn new(name: impl Into<String>, cache: C) -> Self {
        Self::with_engines(name, cache, EngineRecycling::default())
    }

    /// A loader whose own engines come from `engines` (factory and code
    /// budget).
    pub fn with_engines(name: impl Into<String>, cache: C, engines: EngineRecycling) -> Self {
        let name = name.into();
        names::describe_all();
        let compiled =
            ["ok", "error"].map(|r| metrics::counter!(names::COMPILATIONS, label::CACHE => name.clone(), label::RESULT => r));
        let [compiled_ok, compiled_err] = compiled;
        ModuleLoader {
            inner: Arc::new(Inner {
                compile_duration: metrics::histogram!(names::COMPILE_DURATION, label::CACHE => name.clone()),
                coalesced: metrics::counter!(names::COALESCED, label::CACHE => name.clone()),
                generations: Generations::new(&name, engines),
                compiled_ok,
                compiled_err,
                cache,
                name,
                inflight: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
            }),
        }
    }

    /// The cache stack.
    pub fn cache(&self) -> &C {
        &self.inner.cache
    }

    /// Flights (compiles or lower-tier loads) in progress now.
    pub fn in_flight(&self) -> usize {
        self.inner.inflight.lock().len()
    }

    /// The engine new loads go to now (the current generation's). Modules
    /// from [`ModuleLoader::load`] carry their own; use this one only for
    /// work that is not tied to a loaded module.
    pub fn engine(&self) -> Engine {
        self.inner.generations.with_current(|g| g.engine().clone())
    }

    /// The current engine generation (started on first use).
    pub fn generation(&self) -> Arc<EngineGeneration> {
        self.inner.generations.with_current(Arc::clone)
    }

    /// Hash `wasm` and load or compile it into the loader's engine.
    ///
    /// Hashing costs about 0.55 ms per MB, more than a disk hit: callers that
    /// already know the hash should use [`ModuleLoader::load_with_hash`].
    pub async fn load(&self, wasm: &[u8]) -> Result<LoadedModule, LoadError> {
        let key = ModuleHash::new(wasm);
        self.load_with_hash(key, wasm).await
    }

    /// Load or compile `wasm`, whose hash the caller already knows, into
    /// the loader's engine. `key` must be `ModuleHash::new(wasm)`: it is
    /// trusted, not checked.
    pub async fn load_with_hash(
        &self,
        key: ModuleHash,
        wasm: &[u8],
    ) -> Result<LoadedModule, LoadError> {
        if let Some(loaded) = self.load_now(key) {
            return Ok(loaded);
        }
        let wasm = bytes::Bytes::copy_from_slice(wasm);
        Box::pin(self.managed_flight(key, Box::new(move || wasm))).await
    }

    /// Like [`ModuleLoader::load_with_hash`], but fetches the wasm bytes
    /// only when a compile is needed (e.g. from a registry).
    pub async fn load_lazy<F>(&self, key: ModuleHash, wasm: F) -> Result<LoadedModule, LoadError>
    where
        F: FnOnce() -> bytes::Bytes + Send + 'static,
    {
        if let Some(loaded) = self.load_now(key) {
            return Ok(loaded);
        }
        Box::pin(self.managed_flight(key, Box::new(wasm))).await
    }

    /// The synchronous hit path of [`ModuleLoader::load`]: the module if a
    /// tier can serve it at once (a memory hit) in the current generation,
    /// without a future, a task or an allocation.
    #[inline]
    pub fn load_now(&self, key: ModuleHash) -> Option<LoadedModule> {
        self.inner.generations.with_current(|g| {
            self.inner
                .cache
                .load_now(key, g.engine())
                .map(|hit| LoadedModule::new(hit.module, Arc::clone(g), Served::Memory))
        })
    }

    async fn managed_flight(
        &self,
        key: ModuleHash,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
    ) -> Result<LoadedModule, LoadError> {
        let generation = self.generation();
        let (module, served) = self
            .flight(
                generation.engine(),
                key,
                wasm,
                Some(Arc::clone(&generation)),
            )
            .await?;
        Ok(LoadedModule::new(module, generation, served))
    }

    /// Hash `wasm` (SHA-256, the [`ModuleHash`]) and load or compile it
    /// into `engine`, an engine the caller manages (see the type's docs).
    ///
    /// Hashing costs about 0.55 ms per MB, more than a disk hit: callers that
    /// already know the hash should use
    /// [`ModuleLoader::load_into_with_hash`].
    pub async fn load_into(&self, engine: &Engine, wasm: &[u8]) -> Result<Module, LoadError> {
        let key = ModuleHash::new(wasm);
        self.load_into_with_hash(engine, key, wasm).await
    }

    /// Load or compile `wasm`, whose hash the caller already knows, into
    /// `engine`. `key` must be `ModuleHash::new(wasm)`: it is trusted, not
    /// checked.
    pub async fn load_into_with_hash(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: &[u8],
    ) -> Result<Module, LoadError> {
        if let Some(module) = self.load_now_into(engine, key) {
            return Ok(module);
        }
        // Boxed, so that this future stays small: creating and polling it
        // on a memory hit costs a few words, not the whole slow path's state.
        Box::pin(self.slow_path(engine, key, wasm)).await
    }

    /// The synchronous hit path for an engine of the caller's: the module
    /// if a tier can serve it at once (a memory hit), without a future, a
    /// task or an allocation.
    #[inline]
    pub fn load_now_into(&self, engine: &Engine, key: ModuleHash) -> Option<Module> {
        self.inner.cache.load_now(key, engine).map(|hit| hit.module)
    }

    /// Like [`ModuleLoader::load_into_with_hash`], but fetches the
    /// wasm bytes only when a compile is needed (e.g. from a registry).
    pub async fn load_lazy_into<F>(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: F,
    ) -> Result<Module, LoadError>
    where
        F: FnOnce() -> bytes::Bytes + Send + 'static,
    {
        if let Some(module) = self.load_now_into(engine, key) {
            return Ok(module);
        }
        Box::pin(self.flight(engine, key, Box::new(wasm), None))
            .await
            .map(|(module, _)| module)
    }

    async fn slow_path(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: &[u8],
    ) -> Result<Module, LoadError> {
        let wasm = bytes::Bytes::copy_from_slice(wasm);
        self.flight(engine, key, Box::new(move || wasm), None)
            .await
            .map(|(module, _)| module)
    }
}
