//! The shared object-store tier: one signed object per compiled module in
//! S3, Google Cloud Storage, Azure Blob Storage or a shared file system,
//! through the Apache Arrow project's `object_store` crate (feature
//! `objects`).
//!
//! Redis is the place for hot, small artifacts; a bucket is the place for
//! all of them. An [`ObjectsCache`] sits at the bottom of a stack (below
//! Redis, or directly below disk): a module any node compiled is a hit for
//! every other node, promoted into its upper tiers on the way up.
//!
//! ```
//! use tierscope::{InstrumentExt, MemoryCache, ModuleCache, ModuleHash, ObjectsCache};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // In production: "s3://bucket/prefix", credentials from the environment
//! // (AWS_ACCESS_KEY_ID, ...), the MAC key in TIERSCOPE_OBJECTS_KEY:
//! // ObjectsCache::builder("s3://modules/cache").mac_keys_from_env()?.build()?
//! let objects = ObjectsCache::builder("memory:///").mac_key([7; 32]).build()?;
//! let cache = MemoryCache::new(64 << 20)
//!     .instrumented("modules", "memory")
//!     .with_fallback(objects.clone().instrumented("modules", "objects"));
//!
//! let engine = wasmer::Engine::default();
//! let wasm = wat::parse_str("(module (func (export \"f\")))")?;
//! let module = wasmer::Module::new(&engine, &wasm)?;
//! let key = ModuleHash::new(&wasm);
//! cache.save(key, &engine, &module).await?; // one signed object
//! assert!(objects.contains(key, &engine).await?);
//! let again = objects.load(key, &engine).await?; // verified, then deserialized
//! assert_eq!(again.exports().count(), 1);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Keys and objects
//!
//! ```text
//! path    {prefix}/{namespace}/{MODULE HASH}    e.g. cache/<engine id>-<format>-wasmer7.4.2-ts1/9F86...
//! object  the value format of the Redis tier: 128-byte entry header, the
//!         artifact, a 32-byte BLAKE3 keyed MAC over (path, header, artifact)
//! ```
//!
//! The prefix is the URL's path (`s3://bucket/PREFIX`), `tierscope` when it
//! has none, or [`ObjectsCacheBuilder::prefix`]; the namespace binds the
//! engine configuration, the wasmer version and the entry format, as on
//! disk and in Redis. The MAC is the Redis tier's (one shared module,
//! `tier::remote_value`), keyed by [`MAC_KEY_ENV`] (`TIERSCOPE_OBJECTS_KEY`:
//! a bucket is another trust domain than a Redis server, so it has its own
//! key): it is checked in constant time before the header is parsed, and
//! both before wasmer sees a byte. An object that fails (tampered,
//! truncated, copied to another path, signed with another key) is
//! [`CacheError::Integrity`]: never deserialized, deleted (if its ETag is
//! still the one read), and reported as an eviction with cause `corrupt`;
//! the loader compiles and saves a good one.
//!
//! ## Large artifacts
//!
//! A load is one `GET`. Its response announces the size before the body:
//! an object larger than [`ObjectsCacheBuilder::max_entry_bytes`] is refused
//! at once (the connection is dropped; only what was in flight is
//! transferred) and deleted. Otherwise the body streams into **one
//! pre-sized buffer** (an aligned buffer, the
//! alignment wasmer's archive needs), and the MAC is computed as the bytes
//! arrive, so a hit costs the transfer, one copy from the socket's
//! buffers, and the deserialize: wasmer keeps that same buffer as the
//! module's artifact, so a 136 MB artifact costs the process 136 MB, not
//! twice that (`tests/it/objects/large.rs` measures it).
//!
//! A save serializes the module once and never copies the artifact again:
//! the header, the artifact and the MAC are sent as slices of their
//! buffers. Objects under [`ObjectsCacheBuilder::multipart_threshold`]
//! (32 MiB) go in one `PUT`; larger ones in a multipart upload of
//! [`ObjectsCacheBuilder::part_bytes`] (16 MiB) parts,
//! [`ObjectsCacheBuilder::upload_concurrency`] (4) at a time.
//!
//! ## Writes that do not waste
//!
//! A fleet warming the same module uploads it once:
//! - every save first asks `HEAD`: an object already there is not sent
//!   again (one cheap request per node);
//! - a single `PUT` is conditional (`If-None-Match: *`): of two nodes that
//!   both missed the `HEAD`, the second is refused by the store
//!   (`conflict`) and its bytes stop there;
//! - multipart uploads cannot be conditional through `object_store`, so a
//!   node first creates a small lease object `{path}.uploading`
//!   conditionally: only its winner uploads (the others skip, their module
//!   is there moments later), and deletes it when done. A lease older than
//!   twice its upload's time bound is from a node that died: the next saver
//!   replaces it. (Give the bucket a lifecycle rule that aborts incomplete
//!   multipart uploads after a day, as for any S3 workload.)
//!
//! Every request is reported to the tier's observers
//! ([`TierObserver::request`](crate::TierObserver::request)): the spy
//! exports `tierscope_remote_requests_total{op, result}` and
//! `tierscope_remote_transferred_bytes_total{direction}`, what a bill
//! counts.
//!
//! ## Time bounds, concurrency, the circuit breaker
//!
//! An operation moving `n` bytes may take
//! [`ObjectsCacheBuilder::timeout`] (1 s) plus `n /`
//! [`ObjectsCacheBuilder::min_throughput`] (16 MiB/s): connection set-up,
//! the client's retries (at most two, within the timeout) and waiting for
//! one of [`ObjectsCacheBuilder::max_concurrency`] (16) operation slots
//! included. A load does not know `n` until the `GET`'s response headers
//! arrive: they must come within the timeout. Past its bound an operation
//! answers [`CacheError::Timeout`] and the loader compiles: a slow store
//! never stalls a node for longer than that.
//!
//! The circuit breaker is the Redis tier's (`tier::breaker`): after
//! [`ObjectsCacheBuilder::failure_threshold`] (3) consecutive failures
//! (timeouts, refused or dropped connections, server errors, refused
//! credentials) every call answers [`CacheError::Unavailable`] at once,
//! and one probe goes through per [`ObjectsCacheBuilder::probe_interval`]
//! (1 s). Misses, conflicts and bad objects are answers, never failures;
//! waiting for a slot in vain says nothing of the store either. The state
//! is reported to observers (`tierscope_tier_available`).

use std::{fmt, sync::Arc, time::Duration};

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Control, Hit, Lookup, ModuleCache, Verified},
    engine::ident_of,
    tier::{
        breaker::Breaker,
        remote_value::{MAC_LEN, Signing},
    },
};

mod config;
mod store;
mod transfer;
mod upload;

pub use crate::mac::MacKey;
pub use config::{ObjectsCacheBuilder, ObjectsTarget};
use store::Shared;

/// Default path prefix, when the URL has none.
pub const DEFAULT_PREFIX: &str = "tierscope";
/// Default tier name used in errors and logs.
pub const DEFAULT_TIER_NAME: &str = "objects";
/// Default bound of an operation without a large body, and the fixed part
/// of every other.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound of one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default slowest transfer waited for, in bytes per second.
pub const DEFAULT_MIN_THROUGHPUT: u64 = 16 << 20;
/// Default number of consecutive failures that opens the breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Default time the breaker stays open before a probe.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default largest object (header + artifact + MAC).
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 30;
/// The largest `max_entry_bytes` accepted.
pub const MAX_OBJECT_BYTES: u64 = 16 << 30;
/// Default size from which an object is uploaded in parts.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 32 << 20;
/// Default part size of a multipart upload.
pub const DEFAULT_PART_BYTES: u64 = 16 << 20;
/// S3's smallest part (but the last).
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Default parts of one upload in flight at once.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Default operations in flight at once.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;
/// Default size from which (de)serialization runs on tokio's blocking pool.
pub const DEFAULT_BLOCKING_THRESHOLD: u64 = 256 << 10;
/// The environment variable read by
/// [`ObjectsCacheBuilder::mac_keys_from_env`]: one or more keys of 64 hex
/// digits, separated by commas, signing key first.
pub const MAC_KEY_ENV: &str = "TIERSCOPE_OBJECTS_KEY";
/// The longest duration a setting takes (ten years); longer ones are
/// saturated to it.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Suffix of the lease object that says a multipart upload is under way.
pub const LEASE_SUFFIX: &str = ".uploading";

/// The shared object-store tier. Cheap to clone: clones share the store
/// client, the circuit breaker and the operation slots.
///
/// The README's *Object-store tier* section describes paths, objects, the
/// upload skip, time bounds and the breaker.
#[derive(Clone)]
pub struct ObjectsCache {
    shared: Arc<Shared>,
}

impl ObjectsCache {
    /// A builder for the tier at `target`: a URL (`s3://bucket/prefix`,
    /// `gs://..`, `az://..`, `file:///dir`, `memory:///`) or a store the
    /// caller made ([`ObjectsTarget::store`]).
    ///
    /// A MAC key is required (or the explicit
    /// [`ObjectsCacheBuilder::insecure_no_mac`]).
    pub fn builder(target: impl Into<ObjectsTarget>) -> ObjectsCacheBuilder {
        ObjectsCacheBuilder::new(target.into())
    }

    /// The object path that holds (or would hold) `key` for `engine`.
    pub fn object_path(&self, key: ModuleHash, engine: &Engine) -> String {
        self.shared.path(&key, &ident_of(engine)).to_string()
    }

    /// The store the tier talks to (for tools and tests).
    pub fn store(&self) -> Arc<dyn object_store::ObjectStore> {
        Arc::clone(&self.shared.store)
    }

    /// The tier's name (in errors and logs).
    pub fn tier_name(&self) -> &str {
        self.shared.tier.as_str()
    }

    /// False while the circuit breaker is open.
    pub fn is_available(&self) -> bool {
        self.shared.breaker.available()
    }
}

impl fmt::Debug for ObjectsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        let keys = s.signing.fingerprints();
        f.debug_struct("ObjectsCache")
            .field("tier", &s.tier)
            .field("endpoint", &s.endpoint)
            .field("prefix", &s.prefix.as_ref())
            .field("mac_keys", &keys)
            .field("timeout", &s.timeout)
            .field("available", &s.breaker.available())
            .finish()
    }
}

#[async_trait::async_trait]
impl ModuleCache for ObjectsCache {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.shared.load(key, engine).await.map(|hit| hit.module)
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        _how: Lookup,
    ) -> Result<Hit, CacheError> {
        // Every object's MAC covers every byte, on every hit.
        self.shared
            .load(key, engine)
            .await
            .map(|hit| hit.with_verified(Verified::Full))
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        self.shared.contains(key, engine).await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        self.shared.save(key, engine, module).await
    }

    fn control(&self, message: &mut Control<'_>) {
        if let Control::AttachObserver(observer) = message {
            let s = &*self.shared;
            let _serial = s.reported.lock();
            // A client cannot know what a bucket holds: no residency.
            s.observers.attach(Arc::clone(observer), None);
            observer.will_report_requests();
            observer.verifies();
            observer.available(s.breaker.available());
        }
    }
}
