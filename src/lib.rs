//! # tierscope
//!
//! Tiered caches for compiled WebAssembly modules (wasmer [`Module`]s),
//! with every tier observable.
//!
//! - [`ModuleCache`]: the trait, source-compatible with wasmer-wasix's
//!   (`load`, `contains`, `save`, `with_fallback`, keyed by [`ModuleHash`],
//!   a miss is [`CacheError::NotFound`]).
//! - Tiers: [`MemoryCache`] (byte-bounded), [`FileSystemCache`] (bounded,
//!   crash-safe, verified before deserialize); shared remote tiers on Redis
//!   (feature `redis`) and on object stores such as S3 (feature `objects`).
//! - [`FallbackCache`]: chains tiers and promotes hits upward.
//! - [`Instrumented`]: the spy decorator recording per-tier metrics through
//!   the `metrics` facade (names in `docs/metrics.md`).
//! - [`sizing`]: what-if models of each tier, offline from traces and live
//!   inside a running stack ([`sizing::LiveSizing`]: `tier.with_sizing(&sizing)`,
//!   hit ratios at other sizes exported as metrics).
//! - [`ModuleLoader`]: wasm bytes to a [`Module`] through the tiers,
//!   compiling once per key however many callers ask, into engines it
//!   recycles ([`EngineRecycling`]) so that code memory stays bounded;
//!   each result is a [`LoadedModule`], the module with its engine.
//!
//! ```
//! use tierscope::{FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleLoader};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! // memory (64 MiB) in front of disk (1 GiB), each tier instrumented
//! let cache = MemoryCache::new(64 << 20)
//!     .instrumented("modules", "memory")
//!     .with_fallback(
//!         FileSystemCache::open(dir.path(), 1 << 30)?.instrumented("modules", "disk"),
//!     );
//! let loader = ModuleLoader::new("modules", cache);
//!
//! let wasm = wat::parse_str(r#"(module (func (export "add") (param i32 i32) (result i32)
//!     local.get 0 local.get 1 i32.add))"#)?;
//! let module = loader.load(&wasm).await?; // compiles, saves to both tiers
//! let again = loader.load(&wasm).await?;  // a memory hit
//! assert_eq!(*module, *again);
//! let mut store = module.store(); // a store of the engine holding the code
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Process-wide state
//!
//! Everything else belongs to the value that holds it. These tables are
//! shared by the whole process, each for a reason and each bounded:
//!
//! | table | why process-wide | bound |
//! |---|---|---|
//! | tier names ([`TierName::intern`]) | a memory hit carries its tier's name as a copyable pointer, without a reference count | one entry per distinct name; names come from configuration, so there are few (never intern untrusted input) |
//! | engine identities (engine instance to its configuration key) | every tier keys on the engine, and wasmer gives an engine no cheap identity | the 1,024 most recently used instances (`MAX_TRACKED_INSTANCES`); configurations: one per distinct engine configuration the program builds; a one-entry cache per thread |
//! | code ledgers (engine instance to the code it holds) | the tiers report code loaded and held per engine, the generations read it | one weak entry per engine of a live [`EngineRecycling`] generation, pruned whenever one is added |
//! | artifact weights ((module, engine) to artifact bytes) | the disk and Redis tiers learn a module's size, the memory tier weighs it without serializing | 8,192 entries; beyond them quick_cache's policy drops those not asked for again first |
//! | live instrumented tiers (weak references to their per-thread hit counters) | [`observe::flush`] takes no argument and must publish every tier's pending hits (exporters call it on scrape and on their timer) | one entry per live instrumented tier, removed when the tier is dropped; no slot limit |
//! | the disk tier's temporary-file counter | unique names for files being written, across caches sharing a directory | one `u64` |
//! | the disk tier's "foreign file" warnings | each foreign path is reported once, not on every scan | 4,096 paths |
//! | the process collector (feature `prometheus`) | one `process_*` metric set per process | one |
//!
//! [`Module`]: wasmer::Module
//! [`ModuleHash`]: wasmer_types::ModuleHash

#![deny(missing_docs)]

/// A module the crate's own CLI, tests and benches reach into: public
/// with feature `test-util` (which `cli` turns on) and hidden from the
/// docs, since it is not API and may change in any release; crate-private
/// otherwise.
macro_rules! internal_mod {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[cfg(feature = "test-util")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "test-util"))]
        #[allow(dead_code)]
        pub(crate) mod $name;
    };
}

mod aligned;
mod cache;
mod error;
mod fallback;
mod loader;
mod mac;
mod recording;
mod tier;
mod tier_events;
mod tier_name;

pub mod observe;
pub mod sizing;
#[cfg(feature = "wasix")]
pub mod wasix;

/// Generated wasm modules of chosen sizes (test data).
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod corpus;
internal_mod!(
    /// Engine identities and the code ledgers.
    engine
);
internal_mod!(
    /// The entry format the disk tier writes.
    entry
);
internal_mod!(
    /// Metric and label names (the reference for users is docs/metrics.md).
    names
);
internal_mod!(
    /// The artifact-weight table (tests set a module's weight with it).
    weights
);
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod internals;

pub mod disk {
    //! Maintenance of a disk tier's directory, as `tierscope cache` does it:
    //! what it holds ([`FileSystemCache::inventory`]), whether each entry
    //! passes the checks a load makes ([`FileSystemCache::verify`]), and
    //! removing entries by age, size or all ([`FileSystemCache::trim`],
    //! [`FileSystemCache::clear`]), safely while runtimes use it.
    //!
    //! [`FileSystemCache::inventory`]: crate::FileSystemCache::inventory
    //! [`FileSystemCache::verify`]: crate::FileSystemCache::verify
    //! [`FileSystemCache::trim`]: crate::FileSystemCache::trim
    //! [`FileSystemCache::clear`]: crate::FileSystemCache::clear
    pub use crate::tier::disk::{
        CacheFile, EntryVerdict, FileKind, Inventory, Namespace, TrimReport, UnsafeDirectory,
        VerifySummary,
    };
}

pub use cache::{
    CacheError, CacheErrorKind, Control, Corruption, Hit, IntegrityFailure, Lookup, ModuleCache,
    Origin, TierName, Unavailability, Verified, forget_engine, tier_names,
};
pub use error::ConfigError;
pub use fallback::FallbackCache;
pub use loader::{
    EngineGeneration, EngineRecycling, LoadError, LoadedModule, ModuleLoader, Served,
};
pub use mac::MacKey;
pub use observe::instrumented::{InstrumentExt, InstrumentOptions, Instrumented};
#[cfg(feature = "objects")]
pub use tier::objects::{ObjectsCache, ObjectsCacheBuilder, ObjectsTarget};
#[cfg(feature = "redis")]
pub use tier::redis::{RedisCache, RedisCacheBuilder, RedisTarget};
pub use tier::{
    disk::{FileSystemCache, FileSystemCacheBuilder},
    memory::{MemoryCache, MemoryCacheBuilder},
};
pub use tier_events::{
    Eviction, EvictionCause, RemoteRequest, RequestOp, RequestResult, Residency, TierObserver,
};
#[doc(no_inline)]
pub use wasmer_types::ModuleHash;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
