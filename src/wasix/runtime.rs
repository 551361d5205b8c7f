//! A `PluggableRuntime` over a tierscope stack, in one call.

use std::sync::Arc;

use wasmer::Engine;
use wasmer_wasix::{PluggableRuntime, runtime::task_manager::tokio::TokioTaskManager};

use crate::{ModuleCache, wasix::WasixCache};

/// Why [`runtime`] could not build a runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// [`runtime`] was called outside a tokio runtime.
    #[error(
        "tierscope::wasix::runtime needs a tokio runtime: call it inside one, or pass a handle to runtime_with_engine"
    )]
    NoTokioRuntime,
}

/// A wasix `PluggableRuntime` whose module cache is `cache` (adapted by
/// [`WasixCache`], named `name` in metrics), on the current tokio runtime
/// (a `TokioTaskManager` on [`tokio::runtime::Handle::current`]) and a
/// default engine (`Engine::default()`).
///
/// Fails only outside a tokio runtime.
pub fn runtime<C>(name: impl Into<String>, cache: C) -> Result<PluggableRuntime, RuntimeError>
where
    C: ModuleCache + Send + Sync + 'static,
{
    let handle = tokio::runtime::Handle::try_current().map_err(|_| RuntimeError::NoTokioRuntime)?;
    Ok(runtime_with_engine(
        handle,
        Engine::default(),
        WasixCache::new(name, cache),
    ))
}

/// A wasix `PluggableRuntime` running its tasks on `handle`, compiling into
/// `engine`, with `cache` as its module cache.
///
/// Keep one engine per runtime: tierscope's memory tier keys by engine
/// instance, and the engine holds the code of every module it loaded until
/// it is dropped (see the [module docs](crate::wasix)).
pub fn runtime_with_engine<C>(
    handle: tokio::runtime::Handle,
    engine: Engine,
    cache: WasixCache<C>,
) -> PluggableRuntime
where
    C: ModuleCache + Send + Sync + 'static,
{
    let tasks = TokioTaskManager::new(handle);
    let mut runtime = PluggableRuntime::new(Arc::new(tasks));
    runtime.set_engine(engine).set_module_cache(cache);
    runtime
}
