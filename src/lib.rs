//! # tierscope
//!
//! Tiered caches for compiled WebAssembly modules (wasmer [`Module`]s),
//! with every tier observable.
//!
//! - [`ModuleCache`]: the trait, source-compatible with wasmer-wasix's
//!   (`load`, `contains`, `save`, `with_fallback`, keyed by [`ModuleHash`],
//!   a miss is [`CacheError::NotFound`]).
//! - Tiers: [`MemoryCache`] (byte-bounded), [`FileSystemCache`] (bounded,
//!   crash-safe, verified before deserialize).
//! - [`FallbackCache`]: chains tiers and promotes hits upward.
//! - [`Instrumented`]: the spy decorator recording per-tier metrics through
//!   the `metrics` facade (names in [`observe::names`]).
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
//! [`Module`]: wasmer::Module
//! [`ModuleHash`]: wasmer_types::ModuleHash

#![deny(missing_docs)]

pub mod cache;
// Internals that tests, benches and the CLI reach into: public so they can,
// hidden so that `cargo doc` shows the crate as a user meets it.
#[doc(hidden)]
pub mod corpus;
#[doc(hidden)]
pub mod engine;
#[doc(hidden)]
pub mod entry;
pub mod fallback;
pub mod generations;
pub mod loader;
pub mod mac;
pub mod observe;
pub mod observer;
#[doc(hidden)]
pub mod sizes;
pub mod sizing;
pub mod tier;
#[cfg(feature = "wasix")]
pub mod wasix;

pub use cache::{CacheError, Corruption, ErrorKind, Hit, ModuleCache, TierName};
pub use fallback::FallbackCache;
pub use generations::{EngineGenerations, Generation, LoadedModule};
pub use loader::{LoadError, ModuleLoader};
pub use mac::MacKey;
pub use observe::instrumented::{InstrumentExt, InstrumentOptions, Instrumented};
pub use observer::{Eviction, EvictionCause, Residency, TierObserver};
#[cfg(feature = "redis")]
pub use tier::redis::{RedisCache, RedisCacheBuilder, RedisConfigError, RedisTarget};
pub use tier::{
    disk::{FileSystemCache, FileSystemCacheBuilder},
    memory::{MemoryCache, MemoryCacheBuilder},
};
pub use wasmer_types::ModuleHash;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
