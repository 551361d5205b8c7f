//! [`WasixCache`]: a tierscope cache as a wasmer-wasix `ModuleCache`.

use std::{collections::HashMap, fmt, sync::Arc, time::Instant};

use metrics::{Counter, Histogram};
use parking_lot::Mutex;
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;
use wasmer_wasix::runtime::module_cache::{
    CacheError as WasixError, ModuleCache as WasixModuleCache,
    progress::{ModuleLoadProgress, ModuleLoadProgressReporter},
};

use crate::{
    CacheErrorKind, Lookup, ModuleCache, TierName,
    names::{self, label},
    wasix::to_wasix_error,
};

/// Misses remembered while the runtime compiles (to time the compile and
/// count it on the save that follows). Misses whose compile never comes
/// (invalid wasm) are dropped past this many.
const PENDING_LIMIT: usize = 4096;

/// What happened to one load the runtime asked for, as told to a
/// [`WasixCache::on_load`] listener.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LoadEvent {
    /// A tier served the module (`tier` names it when the tier is
    /// instrumented).
    Hit {
        /// The tier that served the module.
        tier: Option<TierName>,
    },
    /// Every tier missed: the runtime compiles next.
    Miss,
    /// A tier failed (corruption, integrity, timeout, ...): the runtime
    /// logs it and compiles next.
    Error {
        /// The class of the error.
        kind: CacheErrorKind,
        /// Its message.
        message: String,
    },
    /// The runtime compiled a module after a miss or an error, and asks
    /// the cache to save it (told before the save: see `SaveFailed`).
    Compiled,
    /// A save the runtime asked for failed (a full disk, an entry above a
    /// tier's bound, an unwritable directory): the module runs, but is not
    /// cached in the tier that failed. The runtime itself only logs it.
    SaveFailed {
        /// The class of the error.
        kind: CacheErrorKind,
        /// Its message (naming the tier, path or bound).
        message: String,
    },
}

type Listener = Arc<dyn Fn(ModuleHash, &LoadEvent) + Send + Sync>;

/// Any tierscope [`ModuleCache`] (a single tier, an instrumented
/// [`FallbackCache`](crate::FallbackCache) chain, an
/// `Arc<dyn ModuleCache + Send + Sync>`) as a wasmer-wasix
/// [`ModuleCache`](WasixModuleCache), for `PluggableRuntime::set_module_cache`
/// or `OverriddenRuntime::with_module_cache`.
///
/// tierscope's trait is source-compatible with wasix's; this adapter makes
/// it *the same* trait at run time. Errors are mapped to
/// wasix's: a miss is `NotFound`, so the runtime compiles
/// quietly; corruption, integrity failures, timeouts and unavailable tiers
/// are `Other` with their message, which the runtime logs as a warning
/// before compiling. The tiers' own spies have counted them already.
///
/// The runtime compiles between a miss and its `save`: the adapter counts
/// those compiles as `tierscope_compilations_total{cache, result="ok"}`
/// and times them in `tierscope_compile_duration_seconds`, as
/// [`ModuleLoader`](crate::ModuleLoader) does (a compile that fails never
/// reaches the cache, so it is not seen).
///
/// ```
/// use tierscope::{InstrumentExt, MemoryCache, wasix::WasixCache};
///
/// let cache = WasixCache::new("modules", MemoryCache::new(64 << 20).instrumented("modules", "memory"));
/// # let _ = cache;
/// ```
pub struct WasixCache<C> {
    inner: C,
    name: String,
    compiled_ok: Counter,
    compile_duration: Histogram,
    /// Per key: when the first outstanding miss was answered, and how many
    /// misses still wait for their compile's save.
    pending: Mutex<HashMap<ModuleHash, (Instant, u32)>>,
    listener: Option<Listener>,
}

impl<C> WasixCache<C> {
    /// Adapt `inner`, naming it `name` in metrics (the `cache` label; use
    /// the name of its tiers). Metric handles are registered now, with the
    /// recorder installed now.
    pub fn new(name: impl Into<String>, inner: C) -> Self {
        let name = name.into();
        names::describe_all();
        WasixCache {
            compiled_ok: metrics::counter!(names::COMPILATIONS, label::CACHE => name.clone(), label::RESULT => "ok"),
            compile_duration: metrics::histogram!(names::COMPILE_DURATION, label::CACHE => name.clone()),
            inner,
            name,
            pending: Mutex::new(HashMap::new()),
            listener: None,
        }
    }

    /// Call `listener` with the outcome of every load and every compile
    /// the runtime saves (e.g. to log which tier served a module).
    pub fn on_load(
        mut self,
        listener: impl Fn(ModuleHash, &LoadEvent) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The adapted cache.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The adapted cache, back.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// The `cache` label of the compile metrics.
    pub fn cache_name(&self) -> &str {
        &self.name
    }

    fn tell(&self, key: ModuleHash, event: impl FnOnce() -> LoadEvent) {
        if let Some(listener) = &self.listener {
            listener(key, &event());
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for WasixCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasixCache")
            .field("name", &self.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<C: ModuleCache + Send + Sync> WasixCache<C> {
    async fn load_inner(&self, key: ModuleHash, engine: &Engine) -> Result<Module, WasixError> {
        // A memory hit answers here, without a tier future.
        if let Some(hit) = self.inner.load_now(key, engine) {
            self.tell(key, || LoadEvent::Hit { tier: hit.tier() });
            return Ok(hit.module);
        }
        // `lookup` counts the memory tier's miss (`load_now` does not).
        match self.inner.lookup(key, engine, Lookup::request()).await {
            Ok(hit) => {
                self.tell(key, || LoadEvent::Hit { tier: hit.tier() });
                Ok(hit.module)
            }
            Err(error) => {
                {
                    let mut pending = self.pending.lock();
                    if pending.len() >= PENDING_LIMIT {
                        pending.clear();
                    }
                    pending.entry(key).or_insert((Instant::now(), 0)).1 += 1;
                }
                if error.is_not_found() {
                    self.tell(key, || LoadEvent::Miss);
                } else {
                    tracing::debug!(
                        %key,
                        error = &error as &dyn std::error::Error,
                        "tier error answered to the wasix runtime, which compiles",
                    );
                    self.tell(key, || LoadEvent::Error {
                        kind: error.kind(),
                        message: error.to_string(),
                    });
                }
                Err(to_wasix_error(error))
            }
        }
    }
}

#[async_trait::async_trait]
impl<C> WasixModuleCache for WasixCache<C>
where
    C: ModuleCache + fmt::Debug + Send + Sync,
{
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, WasixError> {
        self.load_inner(key, engine).await
    }

    /// Loads exactly as [`load`](WasixModuleCache::load) does, and reports
    /// `LocalCacheHit` on a hit. The module is returned even if the
    /// reporter asks to abort: the load has already completed.
    async fn load_with_progress(
        &self,
        key: ModuleHash,
        engine: &Engine,
        on_progress: ModuleLoadProgressReporter,
    ) -> Result<Module, WasixError> {
        let module = self.load_inner(key, engine).await?;
        if let Err(abort) = on_progress.notify(ModuleLoadProgress::LocalCacheHit) {
            tracing::debug!(%key, ?abort, "progress reporter aborted after the module was loaded");
        }
        Ok(module)
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, WasixError> {
        self.inner
            .contains(key, engine)
            .await
            .map_err(to_wasix_error)
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), WasixError> {
        let missed = {
            let mut pending = self.pending.lock();
            match pending.get_mut(&key) {
                Some((since, waiting)) => {
                    let since = *since;
                    *waiting -= 1;
                    if *waiting == 0 {
                        pending.remove(&key);
                    }
                    Some(since)
                }
                None => None,
            }
        };
        if let Some(since) = missed {
            // The runtime compiled after our miss: count it as the loader would.
            self.compiled_ok.increment(1);
            self.compile_duration.record(since.elapsed());
            self.tell(key, || LoadEvent::Compiled);
        }
        let saved = self.inner.save(key, engine, module).await;
        if let Err(error) = &saved {
            self.tell(key, || LoadEvent::SaveFailed {
                kind: error.kind(),
                message: error.to_string(),
            });
        }
        saved.map_err(to_wasix_error)
    }
}
