//! [`ModuleLoader`]: wasm bytes in, a [`Module`] out, through the tiers,
//! compiling once per key however many callers ask at the same moment.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, Shared},
};
use metrics::{Counter, Histogram};
use parking_lot::Mutex;
use tracing::Instrument as _;
use wasmer::{CompileError, Engine, EngineId, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{Lookup, ModuleCache, Origin, TierName, engine_entries, forget_engine},
    engine::{engine_key, note_code_loaded},
    generations::{EngineGenerations, Generation, Generations, LoadedModule, SwitchGuard},
    observe::names::{self, label},
    weights,
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

/// How a load was answered: what [`LoadedModule::served`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Served {
    /// At once, by a tier that answers synchronously (the memory tier):
    /// the caller's lookup was a memory hit.
    Memory,
    /// By a tier's lookup after the memory tier missed: the tier that held
    /// the module, when it is named (instrumented).
    Tier(Option<TierName>),
    /// By waiting for another caller's load of the same module (the memory
    /// tier missed; `tierscope_coalesced_total` counts these).
    Coalesced,
    /// By compiling the wasm: every tier missed, or failed.
    Compiled,
}

type Flight = Shared<BoxFuture<'static, Result<(Module, Served), LoadError>>>;

/// How many modules an engine switch loads into the next engine at once.
const RELOAD_CONCURRENCY: usize = 4;

/// Passes an engine switch makes over the memory tier's entries: each picks
/// up what callers loaded into the old engine during the one before.
const RELOAD_PASSES: usize = 4;

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
///   loader's own engine, managed in [`EngineGenerations`]: each result is
///   a [`LoadedModule`], the module paired with the engine that holds its
///   code, and code memory stays bounded under eviction churn. This is the
///   API to use unless you manage engines yourself.
/// - [`ModuleLoader::load_or_compile`] (and `_with_hash`, `_lazy`) load into
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
        Self::with_engines(name, cache, EngineGenerations::default())
    }

    /// A loader whose own engines come from `engines` (factory and code
    /// budget).
    pub fn with_engines(name: impl Into<String>, cache: C, engines: EngineGenerations) -> Self {
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
    pub fn generation(&self) -> Arc<Generation> {
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
        if let Some(loaded) = self.get_loaded(key) {
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
        if let Some(loaded) = self.get_loaded(key) {
            return Ok(loaded);
        }
        Box::pin(self.managed_flight(key, Box::new(wasm))).await
    }

    /// The synchronous hit path of [`ModuleLoader::load`]: the module if a
    /// tier can serve it at once (a memory hit) in the current generation,
    /// without a future, a task or an allocation.
    #[inline]
    pub fn get_loaded(&self, key: ModuleHash) -> Option<LoadedModule> {
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
    /// [`ModuleLoader::load_or_compile_with_hash`].
    pub async fn load_or_compile(&self, engine: &Engine, wasm: &[u8]) -> Result<Module, LoadError> {
        let key = ModuleHash::new(wasm);
        self.load_or_compile_with_hash(engine, key, wasm).await
    }

    /// Load or compile `wasm`, whose hash the caller already knows, into
    /// `engine`. `key` must be `ModuleHash::new(wasm)`: it is trusted, not
    /// checked.
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

    /// The synchronous hit path for an engine of the caller's: the module
    /// if a tier can serve it at once (a memory hit), without a future, a
    /// task or an allocation.
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

    /// Load or compile `key` into `engine` once, however many callers ask
    /// meanwhile: the first leads (in a task of its own), the others wait
    /// for its answer. Each caller's `load_now` has missed already.
    async fn flight(
        &self,
        engine: &Engine,
        key: ModuleHash,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
        generation: Option<Arc<Generation>>,
    ) -> Result<(Module, Served), LoadError> {
        let slot = (key, engine.id());
        // Join the flight in progress, or start one (the map's lock is
        // released before any wait).
        let joined = {
            let mut inflight = self.inner.inflight.lock();
            match inflight.get(&slot) {
                Some((_, flight)) => Ok(flight.clone()),
                None => {
                    let (id, flight, tx) = self.inner.new_flight(key);
                    inflight.insert(slot, (id, flight.clone()));
                    Err((flight, (id, tx)))
                }
            }
        };
        let (flight, work) = match joined {
            Ok(flight) => {
                self.inner.coalesced.increment(1);
                return flight.await.map(|(module, _)| (module, Served::Coalesced));
            }
            Err(lead) => lead,
        };
        // Spawned after the map's lock is released: a runtime that is
        // shutting down drops the task at once, and its guard takes the lock.
        let (id, tx) = work;
        let inner = Arc::clone(&self.inner);
        let engine = engine.clone();
        let span =
            tracing::debug_span!("tierscope.load_or_compile", cache = %self.inner.name, %key);
        // The work runs in its own task: a cancelled caller never strands
        // the others. Waiters are answered as soon as the module exists;
        // the save happens after.
        tokio::spawn(
            async move {
                // Removes this flight (and only this one) from the map
                // however the task ends: answered, panicked, or dropped by a
                // runtime shutting down.
                let guard = FlightGuard {
                    inflight: &inner.inflight,
                    slot,
                    id,
                };
                let (result, compiled) = inner.lead(key, &engine, wasm).await;
                match compiled {
                    Some((module, wasm_len)) => {
                        // Callers arriving during the save join this flight
                        // and get the module at once.
                        let _ = tx.send(result);
                        inner.save(key, &engine, &module).await;
                        let bytes = weights::lookup(key, engine_key(&engine)).unwrap_or(wasm_len);
                        note_code_loaded(&engine, bytes);
                        drop(guard);
                    }
                    None => {
                        // Nothing to save: remove the flight first, so a
                        // caller arriving after the answer starts afresh (an
                        // error is never cached).
                        drop(guard);
                        let _ = tx.send(result);
                    }
                }
                // Off every caller's path: a switch it causes reloads in a
                // task of its own.
                Inner::after_load(&inner, generation.as_ref());
            }
            .instrument(span),
        );
        flight.await
    }
}

/// Removes one flight from the in-flight map when dropped, if the entry
/// is still that flight.
struct FlightGuard<'a> {
    inflight: &'a Mutex<InFlight>,
    slot: (ModuleHash, EngineId),
    id: u64,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock();
        if inflight
            .get(&self.slot)
            .is_some_and(|(id, _)| *id == self.id)
        {
            inflight.remove(&self.slot);
        }
    }
}

impl<C> Inner<C> {
    /// A new flight for `key`: its id, its shared answer, and the sender
    /// that answers it (a dropped sender answers [`LoadError::Task`]).
    fn new_flight(
        &self,
        key: ModuleHash,
    ) -> (
        u64,
        Flight,
        futures::channel::oneshot::Sender<Result<(Module, Served), LoadError>>,
    ) {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = futures::channel::oneshot::channel();
        let flight = rx
            .map(move |received| {
                received.unwrap_or_else(|_| {
                    Err(LoadError::Task {
                        key,
                        reason:
                            "the loading task ended without an answer (panic or runtime shutdown)"
                                .into(),
                    })
                })
            })
            .boxed()
            .shared();
        (id, flight, tx)
    }
}

impl<C: ModuleCache + Send + Sync + 'static> Inner<C> {
    async fn lead(
        &self,
        key: ModuleHash,
        engine: &Engine,
        wasm: Box<dyn FnOnce() -> bytes::Bytes + Send>,
    ) -> (Result<(Module, Served), LoadError>, Option<(Module, u64)>) {
        // The caller's `load_now` missed (and was counted): the tiers that
        // answer at once are asked again without counting.
        let lookup = Lookup::request().after_load_now();
        match self.cache.lookup(key, engine, lookup).await {
            Ok(hit) => {
                let served = Served::Tier(hit.tier());
                return (Ok((hit.module, served)), None);
            }
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
            Module::new(&compile_engine, &wasm).map(|m| (m, wasm.len() as u64))
        })
        .await;
        let elapsed = start.elapsed().as_secs_f64();
        let (module, wasm_len) = match compiled {
            Ok(Ok(compiled)) => {
                self.compiled_ok.increment(1);
                self.compile_duration.record(elapsed);
                compiled
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
        (
            Ok((module.clone(), Served::Compiled)),
            Some((module, wasm_len)),
        )
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

    /// After a flight of `generation`: if its evicted code passed the
    /// budget, start the switch to a fresh engine in a task of its own
    /// ([`Inner::switch`]; no caller waits for it); drop in-process entries
    /// a flight of a retired generation saved after its switch.
    fn after_load(this: &Arc<Self>, generation: Option<&Arc<Generation>>) {
        let Some(generation) = generation else {
            return;
        };
        if let Some(guard) = this.generations.should_switch(generation) {
            let (weak, old) = (Arc::downgrade(this), Arc::clone(generation));
            let span = tracing::debug_span!("tierscope.engine_switch", cache = %this.name);
            tokio::spawn(Inner::switch(weak, guard, old).instrument(span));
        } else if generation.is_retired() {
            forget_engine(&this.cache, generation.engine());
        }
        this.generations.refresh();
    }

    /// Switch from `old` to a fresh engine without making callers wait or
    /// miss: load what the memory tier holds for `old` into the next
    /// engine from the tiers below, as reloads (counted in
    /// `tierscope_reloads_total`, not as callers' lookups), at most
    /// [`RELOAD_CONCURRENCY`] at a time, while `old` goes on serving; then
    /// make the next generation current, drop `old`'s entries from the
    /// memory tier and put the reloaded modules in their place. Later
    /// passes (at most [`RELOAD_PASSES`]) pick up what callers loaded into
    /// `old` during the one before. Gives the switch up if the loader goes
    /// away.
    async fn switch(this: Weak<Self>, guard: SwitchGuard, old: Arc<Generation>) {
        let Some(next) = this.upgrade().map(|inner| inner.generations.prepare()) else {
            return;
        };
        let mut staged: HashMap<ModuleHash, (Module, Option<TierName>)> = HashMap::new();
        let mut asked: HashSet<ModuleHash> = HashSet::new();
        for _pass in 0..RELOAD_PASSES {
            let Some(inner) = this.upgrade() else {
                return;
            };
            let keys: Vec<ModuleHash> = engine_entries(&inner.cache, old.engine())
                .into_iter()
                .filter(|k| asked.insert(*k))
                .collect();
            if keys.is_empty() {
                break;
            }
            let engine = next.engine();
            let cache = &inner.cache;
            let loaded: Vec<_> = futures::stream::iter(keys)
                .map(|key| async move { (key, cache.lookup(key, engine, Lookup::reload()).await) })
                .buffer_unordered(RELOAD_CONCURRENCY)
                .collect()
                .await;
            for (key, result) in loaded {
                match result {
                    Ok(hit) => {
                        let from = hit.tier();
                        staged.insert(key, (hit.module, from));
                    }
                    Err(e) => tracing::debug!(
                        %key,
                        error = &e as &dyn std::error::Error,
                        "an engine switch could not reload a module; its next request loads it",
                    ),
                }
            }
        }
        let Some(inner) = this.upgrade() else {
            return;
        };
        // What the memory tier holds for `old` at the switch, longest held
        // first: the next engine gets exactly that (what it reloaded of
        // it), so the tier's contents, and live sizing's shadows of them,
        // carry across. Inserted shortest held first, so that the tier's
        // next evictions take those before the long-held ones.
        let held = engine_entries(&inner.cache, old.engine());
        let Some(retired) = inner.generations.switch_to(guard, Arc::clone(&next)) else {
            return;
        };
        forget_engine(&inner.cache, retired.engine());
        let engine = next.engine();
        let mut reloaded = 0usize;
        for key in held.iter().rev() {
            let Some((module, from)) = staged.remove(key) else {
                continue;
            };
            let origin = Origin::Promotion {
                from,
                lookup: Lookup::reload(),
            };
            match inner.cache.store(*key, engine, &module, origin).await {
                Ok(()) => reloaded += 1,
                Err(e) => tracing::debug!(
                    %key,
                    error = &e as &dyn std::error::Error,
                    "a reloaded module could not be stored",
                ),
            }
        }
        tracing::debug!(
            generation = next.number(),
            reloaded,
            held = held.len(),
            "engine switch done"
        );
        inner.generations.refresh();
    }
}
