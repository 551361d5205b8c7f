//! Engine generations: code memory bounded under eviction churn.
//!
//! ## Why
//!
//! wasmer keeps a module's machine code in the [`Engine`] that compiled or
//! deserialized it and frees it only when that engine is dropped (wasmer
//! #4377). A [`Module`] does not keep its engine alive. Two consequences for
//! a cache:
//!
//! - **Churn leaks.** Every time the memory tier evicts a module and a
//!   lower tier serves it again, the module is deserialized once more into
//!   the engine: the engine now holds two copies of the code, one of which
//!   nothing uses. The memory tier's byte bound bounds what it *holds*, not
//!   what the engine *keeps*.
//! - **Engines must travel with modules.** A module served to a `Store` of
//!   another engine runs code the other engine may already have freed.
//!
//! ## What this does
//!
//! [`EngineRecycling`] owns the engine a [`crate::ModuleLoader`] loads
//! into. It accounts, per generation, the code loaded into the engine and
//! the part of it the in-process tiers still hold; the rest (evicted code
//! the engine keeps) is bounded by a budget
//! ([`EngineRecycling::code_budget`]). Past the budget the loader
//! switches to a fresh engine of the same configuration (from the factory),
//! in a task of its own, so that no caller waits and the memory tier's hit
//! ratio carries across:
//!
//! - while the old engine goes on serving, what the memory tier holds is
//!   loaded into the fresh one from the tiers below (disk and Redis entries
//!   stay valid: same configuration, same deterministic id), as reloads,
//!   counted apart from callers' lookups (`tierscope_reloads_total`);
//! - then the fresh engine becomes current, the memory tier drops the old
//!   engine's entries ([`crate::forget_engine`]; evictions with cause
//!   `retired`) and takes the reloaded ones in their place;
//! - the old engine is released when nothing uses it: each
//!   [`LoadedModule`](crate::LoadedModule) keeps its generation (and so its
//!   engine) alive, so modules callers still hold keep working, and the old
//!   engine's memory returns once they are dropped.
//!
//! Resident code is then at most about the memory tier's capacity plus the
//! budget, plus whatever retired generations callers still use.
//!
//! ## Metrics
//!
//! `tierscope_engine_code_bytes{state}` (`cached`, `evicted`, `retired`),
//! `tierscope_engine_code_budget_bytes`, `tierscope_engine_generations_total`
//! and `tierscope_engine_generations_alive`, all labelled with the loader's
//! `cache` name (see `docs/metrics.md`).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use wasmer::Engine;

use crate::{
    engine::{CodeLedger, track_code},
    names::{self, label},
};

/// Default for [`EngineRecycling::code_budget`]: 256 MiB of evicted code.
pub const DEFAULT_CODE_BUDGET: u64 = 256 << 20;

type Factory = Arc<dyn Fn() -> Engine + Send + Sync>;

/// The engines a [`crate::ModuleLoader`] loads into, one generation at a
/// time (see "Engines and memory" in the README).
///
/// ```
/// use tierscope::{EngineRecycling, MemoryCache, ModuleLoader};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let engines = EngineRecycling::new(wasmer::Engine::default).code_budget(64 << 20);
/// let loader = ModuleLoader::with_engines("modules", MemoryCache::new(32 << 20), engines);
/// let loaded = loader.load(b"(module (func (export \"f\")))").await.unwrap();
/// let mut store = loaded.store(); // a store of the engine that holds the code
/// let instance = wasmer::Instance::new(&mut store, &loaded, &wasmer::imports! {}).unwrap();
/// # let _ = instance;
/// # });
/// ```
#[derive(Clone)]
pub struct EngineRecycling {
    factory: Factory,
    budget: u64,
}

impl EngineRecycling {
    /// Generations whose engines come from `factory` (called once per
    /// generation; every engine it returns must have the same
    /// configuration, or disk and Redis entries will not be shared across
    /// generations).
    pub fn new<F>(factory: F) -> Self
    where
        F: Fn() -> Engine + Send + Sync + 'static,
    {
        EngineRecycling {
            factory: Arc::new(factory),
            budget: DEFAULT_CODE_BUDGET,
        }
    }

    /// How many bytes of evicted code (code the engine keeps for modules
    /// no in-process tier holds) a generation may accumulate before a fresh
    /// engine replaces it. Default 256 MiB. `u64::MAX`
    /// never recycles; `0` recycles at the first eviction. A smaller budget
    /// means lower resident memory and more disk hits after each switch.
    pub fn code_budget(mut self, bytes: u64) -> Self {
        self.budget = bytes;
        self
    }

    /// The configured budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }
}

impl Default for EngineRecycling {
    /// Generations of `Engine::default()`.
    fn default() -> Self {
        EngineRecycling::new(Engine::default)
    }
}

impl fmt::Debug for EngineRecycling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineRecycling")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// The metric handles of one loader's generations.
struct GenerationGauges {
    cached: Gauge,
    evicted: Gauge,
    retired: Gauge,
    alive: Gauge,
    started: Counter,
    /// Code of retired generations that are still alive.
    retired_bytes: AtomicU64,
    alive_count: AtomicU64,
}

impl GenerationGauges {
    fn new(cache: &str, budget: u64) -> Self {
        let code = |state: &'static str| metrics::gauge!(names::ENGINE_CODE_BYTES, label::CACHE => cache.to_string(), label::STATE => state);
        metrics::gauge!(names::ENGINE_CODE_BUDGET, label::CACHE => cache.to_string())
            .set(budget as f64);
        GenerationGauges {
            cached: code("cached"),
            evicted: code("evicted"),
            retired: code("retired"),
            alive: metrics::gauge!(names::ENGINE_GENERATIONS_ALIVE, label::CACHE => cache.to_string()),
            started: metrics::counter!(names::ENGINE_GENERATIONS, label::CACHE => cache.to_string()),
            retired_bytes: AtomicU64::new(0),
            alive_count: AtomicU64::new(0),
        }
    }
}

/// One engine and the accounting of the code it holds.
pub struct EngineGeneration {
    number: u64,
    engine: Engine,
    ledger: Arc<CodeLedger>,
    retired: AtomicBool,
    /// Bytes added to the `retired` gauge when this generation retired.
    retired_bytes: AtomicU64,
    gauges: Arc<GenerationGauges>,
}

impl EngineGeneration {
    /// The engine of this generation.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// 1 for the first generation, then 2, 3, ...
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Bytes of code loaded into this generation's engine so far.
    pub fn loaded_code_bytes(&self) -> u64 {
        self.ledger.loaded()
    }

    /// Bytes of that code the in-process tiers hold now.
    pub fn cached_code_bytes(&self) -> u64 {
        self.ledger.held()
    }

    /// Bytes of code the engine keeps for modules no tier holds.
    pub fn evicted_code_bytes(&self) -> u64 {
        self.ledger.unheld()
    }

    /// Whether a newer generation has replaced this one.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

impl Drop for EngineGeneration {
    fn drop(&mut self) {
        let g = &self.gauges;
        if self.retired.load(Ordering::Acquire) {
            let bytes = self.retired_bytes.load(Ordering::Relaxed);
            let left = g
                .retired_bytes
                .fetch_sub(bytes, Ordering::Relaxed)
                .saturating_sub(bytes);
            g.retired.set(left as f64);
        }
        let alive = g
            .alive_count
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        g.alive.set(alive as f64);
    }
}

impl fmt::Debug for EngineGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineGeneration")
            .field("number", &self.number)
            .field("loaded", &self.ledger.loaded())
            .field("cached", &self.ledger.held())
            .field("retired", &self.is_retired())
            .finish()
    }
}

/// The live state: the current generation of one loader.
pub(crate) struct Generations {
    config: EngineRecycling,
    current: RwLock<Option<Arc<EngineGeneration>>>,
    next_number: AtomicU64,
    /// A switch is being prepared (at most one at a time).
    switching: Arc<AtomicBool>,
    gauges: Arc<GenerationGauges>,
}

impl Generations {
    pub(crate) fn new(cache: &str, config: EngineRecycling) -> Self {
        let gauges = Arc::new(GenerationGauges::new(cache, config.budget));
        Generations {
            config,
            current: RwLock::new(None),
            next_number: AtomicU64::new(1),
            switching: Arc::new(AtomicBool::new(false)),
            gauges,
        }
    }

    /// A new generation of a fresh engine from the factory, counted, not
    /// current yet.
    pub(crate) fn prepare(&self) -> Arc<EngineGeneration> {
        let engine = (self.config.factory)();
        let ledger = track_code(&engine);
        let g = &self.gauges;
        g.started.increment(1);
        let alive = g.alive_count.fetch_add(1, Ordering::Relaxed) + 1;
        g.alive.set(alive as f64);
        Arc::new(EngineGeneration {
            number: self.next_number.fetch_add(1, Ordering::Relaxed),
            engine,
            ledger,
            retired: AtomicBool::new(false),
            retired_bytes: AtomicU64::new(0),
            gauges: Arc::clone(&self.gauges),
        })
    }

    /// Run `f` with the current generation (started on first use).
    #[inline]
    pub(crate) fn with_current<R>(&self, f: impl FnOnce(&Arc<EngineGeneration>) -> R) -> R {
        if let Some(current) = self.current.read().as_ref() {
            return f(current);
        }
        let mut slot = self.current.write();
        let current = slot.get_or_insert_with(|| self.prepare());
        f(current)
    }

    /// After code was loaded into `generation`: whether it is the current
    /// one, its evicted code passed the budget and no switch is under way.
    /// True means the caller now owns the switch: it prepares the next
    /// generation and ends with [`Generations::switch_to`] (or drops the
    /// returned guard, which gives the switch up).
    pub(crate) fn should_switch(&self, generation: &Arc<EngineGeneration>) -> Option<SwitchGuard> {
        let is_current = || {
            self.current
                .read()
                .as_ref()
                .is_some_and(|cur| Arc::ptr_eq(cur, generation))
        };
        let due = generation.ledger.unheld() > self.config.budget
            && !generation.is_retired()
            && is_current();
        (due && !self.switching.swap(true, Ordering::AcqRel)).then(|| SwitchGuard {
            switching: Arc::clone(&self.switching),
        })
    }

    /// Make `next` (from [`Generations::prepare`]) current and retire the
    /// generation it replaces, which is returned (its in-process entries
    /// are the caller's to drop).
    pub(crate) fn switch_to(
        &self,
        guard: SwitchGuard,
        next: Arc<EngineGeneration>,
    ) -> Option<Arc<EngineGeneration>> {
        let old = self.current.write().replace(next);
        drop(guard);
        let old = old?;
        let bytes = old.ledger.loaded();
        old.retired_bytes.store(bytes, Ordering::Relaxed);
        old.retired.store(true, Ordering::Release);
        let total = self
            .gauges
            .retired_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        self.gauges.retired.set(total as f64);
        tracing::info!(
            generation = old.number,
            loaded_bytes = bytes,
            evicted_bytes = old.ledger.unheld(),
            budget = self.config.budget,
            "engine generation retired: its evicted code passed the budget"
        );
        Some(old)
    }

    /// Set the current generation's code gauges.
    pub(crate) fn refresh(&self) {
        if let Some(cur) = self.current.read().as_ref() {
            self.gauges.cached.set(cur.ledger.held() as f64);
            self.gauges.evicted.set(cur.ledger.unheld() as f64);
        }
    }
}

/// Held by whoever prepares an engine switch: while it lives no other
/// switch starts; dropped without [`Generations::switch_to`] (the loader
/// went away, the task panicked), the switch is given up and the next load
/// past the budget starts another.
pub(crate) struct SwitchGuard {
    switching: Arc<AtomicBool>,
}

impl Drop for SwitchGuard {
    fn drop(&mut self) {
        self.switching.store(false, Ordering::Release);
    }
}

impl fmt::Debug for Generations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generations")
            .field("config", &self.config)
            .field("current", &self.current.read())
            .finish()
    }
}
