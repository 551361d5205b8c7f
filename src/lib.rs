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
//!   the `metrics` facade (names in [`names`]).
//! - [`sizing`]: what-if models of each tier, offline from traces and live
//!   inside a running stack ([`sizing::live`]: `tier.with_sizing(&sizing)`,
//!   hit ratios at other sizes exported as metrics).
//! - [`ModuleLoader`]: wasm bytes to a [`Module`] through the tiers,
//!   compiling once per key however many callers ask, into engines it
//!   recycles ([`EngineGenerations`]) so that code memory stays bounded;
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
//! | code ledgers (engine instance to the code it holds) | the tiers report code loaded and held per engine, the generations read it | one weak entry per engine of a live [`EngineGenerations`] generation, pruned whenever one is added |
//! | artifact weights ((module, engine) to artifact bytes) | the disk and Redis tiers learn a module's size, the memory tier weighs it without serializing | 8,192 entries; beyond them quick_cache's policy drops those not asked for again first |
//! | live instrumented tiers (weak references to their per-thread hit counters) | [`observe::flush`] takes no argument and must publish every tier's pending hits (exporters call it on scrape and on their timer) | one entry per live instrumented tier, removed when the tier is dropped; no slot limit |
//! | the disk tier's temporary-file counter | unique names for files being written, across caches sharing a directory | one `u64` |
//! | the disk tier's "foreign file" warnings | each foreign path is reported once, not on every scan | 4,096 paths |
//! | the process collector (feature `prometheus`) | one `process_*` metric set per process | one |
//!
//! [`Module`]: wasmer::Module
//! [`ModuleHash`]: wasmer_types::ModuleHash

#![deny(missing_docs)]

mod aligned;
mod cache;
mod error;
pub mod names;
mod recording;
mod tier_name;
// Test data (feature `test-util`).
#[cfg(feature = "test-util")]
pub mod corpus;
// Internals that tests, benches and the CLI reach into: public so they can,
// hidden so that `cargo doc` shows the crate as a user meets it.
#[doc(hidden)]
pub mod engine;
#[doc(hidden)]
pub mod entry;
pub mod fallback;
pub mod loader;
pub mod mac;
pub mod observe;
pub mod tier_events;
// The artifact-weight table: a test hook with `test-util` (tests set a
// module's weight), private otherwise, since a caller could change what
// every memory tier of the process charges for a module.
pub mod sizing;
pub mod tier;
#[cfg(feature = "wasix")]
pub mod wasix;
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod weights;
#[cfg(not(feature = "test-util"))]
mod weights;

pub use cache::{
    CacheError, Control, Corruption, ErrorKind, Hit, IntegrityFailure, Lookup, ModuleCache, Origin,
    TierName, Unavailability, Verified, forget_engine, tier_names,
};
pub use fallback::FallbackCache;
pub use loader::{EngineGenerations, Generation, LoadedModule};
pub use loader::{LoadError, ModuleLoader, Served};
pub use mac::MacKey;
pub use observe::instrumented::{InstrumentExt, InstrumentOptions, Instrumented};
#[cfg(feature = "objects")]
pub use tier::objects::{ObjectsCache, ObjectsCacheBuilder, ObjectsConfigError, ObjectsTarget};
#[cfg(feature = "redis")]
pub use tier::redis::{RedisCache, RedisCacheBuilder, RedisConfigError, RedisTarget};
pub use tier::{
    disk::{FileSystemCache, FileSystemCacheBuilder},
    memory::{MemoryCache, MemoryCacheBuilder},
};
pub use tier_events::{
    Eviction, EvictionCause, RemoteRequest, RequestOp, RequestResult, Residency, TierObserver,
};
pub use wasmer_types::ModuleHash;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
