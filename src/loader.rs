//! [`ModuleLoader`]: wasm bytes in, a [`Module`] out, through the tiers,
//! compiling once per key however many callers ask at the same moment.

use std::{collections::HashMap, fmt, sync::Arc};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use metrics::{Counter, Histogram};
use parking_lot::Mutex;
use tracing::Instrument as _;
use wasmer::{CompileError, Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::ModuleCache,
    engine::{EngineKey, engine_key},
    observe::names::{self, label},
};

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

type Flight = Shared<BoxFuture<'static, Result<Module, LoadError>>>;

struct Inner<C> {
    cache: C,
    name: String,
    inflight: Mutex<HashMap<(ModuleHash, EngineKey), Flight>>,
    compiled_ok: Counter,
    compiled_err: Counter,
    compile_duration: Histogram,
    coalesced: Counter,
}

/// Loads modules through a cache, compiling on a miss.
///
/// - A memory hit is answered synchronously through
///   [`ModuleCache::load_now`]: no task, no allocation.
/// - Otherwise one caller per (module, engine) becomes the leader: it asks
///   the tiers and, on a miss **or a tier error**, compiles on tokio's
///   blocking pool and saves through the cache (a failed save is logged and
///   counted by the tiers' spies, never fatal). Every other caller asking
///   meanwhile waits for the leader's result (`tierscope_coalesced_total`).
///   The work runs in its own task, so a cancelled caller never strands the
///   others.
/// - Invalid wasm reaches every waiter as [`LoadError::Compile`] and is not
///   cached.
///
/// Needs a tokio runtime. Metric handles are registered at construction.
///
/// ```
/// use tierscope::{MemoryCache, ModuleLoader};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let loader = ModuleLoader::new("modules", MemoryCache::new(64 << 20));
/// let engine = wasmer::Engine::default();
/// let module = loader.load_or_compile(&engine, b"(module)").await.unwrap();
/// let again = loader.load_or_compile(&engine, b"(module)").await.unwrap();
/// assert_eq!(module, again);
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
            .finish()
    }
}

impl<C> ModuleLoader<C>
where
    C: ModuleCache + Send + Sync + 'static,
{
    /// A loader for the cache stack `cache`, named `name` in metrics (the
    /// `cache` label; use the same name as its tiers).
    pub fn new(name: impl Into<String>, cache: C) -> Self {
        let name = name.into();
        names::describe_all();
        let compiled =
            ["ok", "error"].map(|r| metrics::counter!(names::COMPILATIONS, label::CACHE => name.clone(), label::RESULT => r));
        let [compiled_ok, compiled_err] = compiled;
        ModuleLoader {
            inner: Arc::new(Inner {
                compile_duration: metrics::histogram!(names::COMPILE_DURATION, label::CACHE => name.clone()),
                coalesced: metrics::counter!(names::COALESCED, label::CACHE => name.clone()),
                compiled_ok,
                compiled_err,
                cache,
                name,
                inflight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cache stack.
    pub fn cache(&self) -> &C {
        &self.inner.cache
    }

    /// Hash `wasm` (SHA-256, the [`ModuleHash`]) and load or compile it.
    ///
    /// Hashing costs about 0.55 ms per MB, more than a disk hit: callers that
    /// already know the hash should use
    /// [`ModuleLoader::load_or_compile_with_hash`].
    pub async fn load_or_compile(&self, engine: &Engine, wasm: &[u8]) -> Result<Module, LoadError> {
        let key = ModuleHash::new(wasm);
        self.load_or_compile_with_hash(engine, key, wasm).await
    }

    /// Load or compile `wasm`, whose hash the caller already knows. `key`
    /// must be `ModuleHash::new(wasm)`: it is trusted, not checked.
    pub async fn load_or_compile_with_hash(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: &[u8],
    ) -> Result<Module, LoadError> {
        if let Some(module) = self.get(engine, key) {
            return Ok(module);
        }
        // Boxed, so that this future stays small: creating and polling it
        // on a memory hit costs a few words, not the whole slow path's state.
        Box::pin(self.slow_path(engine, key, wasm)).await
    }

    /// The synchronous hit path: the module if a tier can serve it at once
    /// (a memory hit), without a future, a task or an allocation.
    #[inline]
    pub fn get(&self, engine: &Engine, key: ModuleHash) -> Option<Module> {
        self.inner.cache.load_now(key, engine).map(|hit| hit.module)
    }

    /// Like [`ModuleLoader::load_or_compile_with_hash`], but fetches the
    /// wasm bytes only when a compile is needed (e.g. from a registry).
    pub async fn load_or_compile_lazy<F>(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: F,
    ) -> Result<Module, LoadError>
    where
        F: FnOnce() -> bytes::Bytes + Send + 'static,
    {
        if let Some(module) = self.get(engine, key) {
            return Ok(module);
        }
        Box::pin(self.flight(engine, key, Box::new(wasm))).await
    }

    async fn slow_path(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: &[u8],
    ) -> Result<Module, LoadError> {
        let wasm = bytes::Bytes::copy_from_slice(wasm);
        self.flight(engine, key, Box::new(move || wasm)).await
    }

    async fn flight(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
    ) -> Result<Module, LoadError> {
        let slot = (key, engine_key(engine));
        let flight = {
            let mut inflight = self.inner.inflight.lock();
            match inflight.get(&slot) {
                Some(f) => {
                    self.inner.coalesced.increment(1);
                    f.clone()
                }
                None => {
                    let inner = Arc::clone(&self.inner);
                    let engine = engine.clone();
                    let span = tracing::debug_span!("tierscope.load_or_compile", cache = %self.inner.name, %key);
                    let (tx, rx) = futures::channel::oneshot::channel();
                    // The work runs in its own task: a cancelled caller
                    // never strands the others. Waiters are answered as
                    // soon as the module exists; the save happens after.
                    tokio::spawn(
                        async move {
                            let slot = (key, engine_key(&engine));
                            let (result, compiled) = inner.lead(key, &engine, wasm).await;
                            match compiled {
                                Some(module) => {
                                    // Callers arriving during the save join
                                    // this flight and get the module at once.
                                    let _ = tx.send(result);
                                    inner.save(key, &engine, &module).await;
                                    inner.inflight.lock().remove(&slot);
                                }
                                None => {
                                    // Nothing to save: a caller arriving
                                    // after the answer starts afresh (an
                                    // error is never cached).
                                    inner.inflight.lock().remove(&slot);
                                    let _ = tx.send(result);
                                }
                            }
                        }
                        .instrument(span),
                    );
                    let f = rx
                        .map(move |received| {
                            received.unwrap_or_else(|_| {
                                Err(LoadError::Task {
                                    key,
                                    reason: "the loading task ended without an answer (panic or runtime shutdown)".into(),
                                })
                            })
                        })
                        .boxed()
                        .shared();
                    inflight.insert(slot, f.clone());
                    f
                }
            }
        };
        flight.await
    }
}

impl<C: ModuleCache + Send + Sync> Inner<C> {
    async fn lead(
        &self,
        key: ModuleHash,
        engine: &Engine,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
    ) -> (Result<Module, LoadError>, Option<Module>) {
        match self.cache.load_traced(key, engine).await {
            Ok(hit) => return (Ok(hit.module), None),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!(
                %key,
                error = &e as &dyn std::error::Error,
                "cache failed; compiling instead",
            ),
        }
        let compile_engine = engine.clone();
        let start = quanta::Instant::now();
        let compiled = tokio::task::spawn_blocking(move || {
            let wasm = wasm();
            Module::new(&compile_engine, &wasm)
        })
        .await;
        let elapsed = start.elapsed().as_secs_f64();
        let module = match compiled {
            Ok(Ok(module)) => {
                self.compiled_ok.increment(1);
                self.compile_duration.record(elapsed);
                module
            }
            Ok(Err(e)) => {
                self.compiled_err.increment(1);
                let error = LoadError::Compile {
                    key,
                    source: Arc::new(e),
                };
                return (Err(error), None);
            }
            Err(e) => {
                self.compiled_err.increment(1);
                let error = LoadError::Task {
                    key,
                    reason: e.to_string(),
                };
                return (Err(error), None);
            }
        };
        (Ok(module.clone()), Some(module))
    }

    /// Save a freshly compiled module; a failure is logged (and counted by
    /// the tiers' spies), never fatal.
    async fn save(&self, key: ModuleHash, engine: &Engine, module: &Module) {
        if let Err(e) = self.cache.save(key, engine, module).await {
            tracing::warn!(
                %key,
                error = &e as &dyn std::error::Error,
                "compiled module could not be saved in every tier",
            );
        }
    }
}
