//! wasmer-wasix integration (feature `wasix`, wasmer-wasix `=0.704.2`,
//! Rust 1.95).
//!
//! tierscope's [`ModuleCache`](crate::ModuleCache) is source-compatible
//! with wasmer-wasix's, but it is a different trait: a tierscope stack
//! cannot be handed to `PluggableRuntime::set_module_cache` as it is. This
//! module bridges both ways:
//!
//! - [`WasixCache`]: any tierscope cache (one tier, an instrumented
//!   [`FallbackCache`](crate::FallbackCache) chain, an `Arc<dyn ...>`)
//!   **as** a wasix [`ModuleCache`](wasmer_wasix::runtime::module_cache::ModuleCache), with errors mapped
//!   so the runtime behaves right: a miss is `NotFound`; corruption,
//!   integrity failures and timeouts are `Other` carrying their message
//!   (the runtime logs them and compiles) and are still counted by the spy.
//!   The runtime's compiles are counted too (`tierscope_compilations_total`).
//! - [`WasixTier`]: any wasix cache (`SharedCache`, `FileSystemCache`,
//!   `ThreadLocalCache` or your own) as a tierscope tier, so the spy can
//!   instrument it and it chains with tierscope tiers.
//! - [`runtime`] / [`runtime_with_engine`]: a `PluggableRuntime` (tokio
//!   task manager, engine) over a tierscope stack, in one call.
//!
//! ```no_run
//! use tierscope::{FileSystemCache, InstrumentExt, MemoryCache, ModuleCache};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tokio = tokio::runtime::Runtime::new()?;
//! let stack = MemoryCache::new(64 << 20)
//!     .instrumented("modules", "memory")
//!     .with_fallback(FileSystemCache::open("/var/cache/modules", 1 << 30)?.instrumented("modules", "disk"));
//! let runtime = tierscope::wasix::runtime_with_engine(
//!     tokio.handle().clone(),
//!     wasmer::Engine::default(),
//!     tierscope::wasix::WasixCache::new("modules", stack),
//! );
//! // hand `runtime` to a WasiRunner (`RuntimeOrEngine::Runtime(Arc::new(runtime))`)
//! # Ok(()) }
//! ```
//!
//! ## Engines
//!
//! A wasix runtime compiles into the one engine it holds. tierscope's
//! memory tier keys by engine *instance*, so that is sound, but the engine
//! keeps the code of every module it loaded until it is dropped (see
//! "Engines and memory" in the README): a runtime that lives long with a
//! memory tier smaller than its working set should be rebuilt with a fresh
//! engine now and then, calling
//! [`forget_engine`](crate::forget_engine) on the
//! stack for the old one.

mod from_wasix;
mod into_wasix;
mod runtime;

pub use from_wasix::WasixTier;
pub use into_wasix::{LoadEvent, WasixCache};
pub use runtime::{RuntimeError, runtime, runtime_with_engine};

use crate::CacheError;
use wasmer_wasix::runtime::module_cache::CacheError as WasixError;

/// A tierscope error as wasix's: the six shared variants map to
/// themselves, everything else (corruption, integrity, timeouts, an
/// unavailable or full tier) becomes `Other` carrying the original error
/// and its message. wasix's runtime treats anything but `NotFound` as a
/// warning and compiles.
pub(crate) fn to_wasix_error(error: CacheError) -> WasixError {
    match error {
        CacheError::NotFound => WasixError::NotFound,
        CacheError::Serialize(e) => WasixError::Serialize(e),
        CacheError::Deserialize(e) => WasixError::Deserialize(e),
        CacheError::FileRead { path, error } => WasixError::FileRead { path, error },
        CacheError::FileWrite { path, error } => WasixError::FileWrite { path, error },
        other => WasixError::Other(Box::new(other)),
    }
}

/// A wasix error as tierscope's: the shared variants map to themselves and
/// `Other` stays `Other` (kind `other`).
pub(crate) fn from_wasix_error(error: WasixError) -> CacheError {
    match error {
        WasixError::NotFound => CacheError::NotFound,
        WasixError::Serialize(e) => CacheError::Serialize(e),
        WasixError::Deserialize(e) => CacheError::Deserialize(e),
        WasixError::FileRead { path, error } => CacheError::FileRead { path, error },
        WasixError::FileWrite { path, error } => CacheError::FileWrite { path, error },
        WasixError::Other(e) => CacheError::Other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Corruption;

    #[test]
    fn a_miss_stays_a_miss_and_corruption_keeps_its_message() {
        assert!(matches!(
            to_wasix_error(CacheError::NotFound),
            WasixError::NotFound
        ));
        let corrupt = CacheError::Corrupt {
            location: "/c/ABCD.bin".into(),
            reason: Corruption::Checksum,
        };
        let mapped = to_wasix_error(corrupt);
        assert!(matches!(mapped, WasixError::Other(_)));
        assert_eq!(
            mapped.to_string(),
            "corrupt cache entry at /c/ABCD.bin: checksum mismatch"
        );
        let timeout = CacheError::Timeout {
            op: "load",
            tier: "redis".into(),
            after: std::time::Duration::from_millis(250),
        };
        let mapped = to_wasix_error(timeout);
        assert!(matches!(mapped, WasixError::Other(_)));
        assert!(mapped.to_string().contains("load on tier redis timed out"));
        let back = from_wasix_error(WasixError::NotFound);
        assert!(back.is_not_found());
        let back = from_wasix_error(WasixError::Other("boom".into()));
        assert_eq!(back.kind(), crate::CacheErrorKind::Other);
        assert_eq!(back.to_string(), "boom");
    }
}
