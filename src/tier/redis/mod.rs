//! The shared remote tier on Redis: one compiled artifact per module,
//! signed, shared by every node that holds the key.
//!
//! A [`RedisCache`] sits at the bottom of a stack, below the memory and disk
//! tiers of each node: a module compiled by one node is a remote hit for
//! all the others, and is promoted into their local tiers on the way up.
//!
//! ```no_run
//! use std::time::Duration;
//! use tierscope::{
//!     FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleLoader, RedisCache,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // TIERSCOPE_REDIS_KEY=<64 hex digits>[,<older key>...]: the same on every node
//! let redis = RedisCache::builder("redis://cache.internal:6379/")
//!     .mac_keys_from_env()?
//!     .timeout(Duration::from_millis(250))
//!     .build()?;
//! let cache = MemoryCache::new(64 << 20)
//!     .instrumented("modules", "memory")
//!     .with_fallback(
//!         FileSystemCache::open("/var/cache/modules", 1 << 30)?
//!             .instrumented("modules", "disk")
//!             .with_fallback(redis.instrumented("modules", "redis")),
//!     );
//! let loader = ModuleLoader::new("modules", cache);
//! let engine = wasmer::Engine::default();
//! let module = loader.load_into(&engine, b"(module)").await?;
//! # let _ = module;
//! # Ok(())
//! # }
//! ```
//!
//! ## Keys and values
//!
//! ```text
//! key    {prefix}:{namespace}:{MODULE HASH}     e.g. tierscope:<engine id>-<format>-wasmer7.4.2-ts1:9F86...
//!
//! value  offset  size  field
//!             0   128  entry header (see crate::entry)
//!           128     n  the artifact (Module::serialize() output)
//!       128 + n    32  BLAKE3 keyed MAC over (u64 LE length of key, key, header, artifact)
//! ```
//!
//! The prefix is configurable (default `tierscope`); the namespace is
//! [`EngineIdent::namespace`](crate::engine::EngineIdent::namespace), which binds the engine's deterministic id, its
//! artifact format, the wasmer version and tierscope's entry format version:
//! nodes running another wasmer never read each other's artifacts.
//!
//! ## Why a MAC
//!
//! An artifact is machine code that `Module::deserialize` maps as executable
//! without being able to check it. Whoever can write to the Redis server
//! could otherwise run code on every node that loads from it. Each value
//! therefore ends with a BLAKE3 keyed hash under a 32-byte key that only the
//! nodes hold, computed over the Redis key as well as the entry, so a valid
//! value copied under another key fails too. On a load the MAC is checked
//! (in constant time) **before** the entry header is parsed, and both before
//! any byte reaches wasmer. A value that fails (tampered, truncated, copied,
//! written by a node with another key, or not a tierscope value at all) is
//! [`CacheError::Integrity`]: it is never deserialized, the tier deletes it
//! (only if it is still the same value, so a fresh save by another node
//! survives) and reports an eviction with cause [`EvictionCause::Corrupt`](crate::EvictionCause::Corrupt);
//! the loader then compiles and saves a good one.
//!
//! Several keys may be configured for rotation: values are signed with the
//! first and accepted under any. Roll a new key out as the *second* key on
//! every node, then make it the first, then drop the old one.
//!
//! [`RedisCacheBuilder::insecure_no_mac`] replaces the MAC by an unkeyed
//! BLAKE3 digest: accidental corruption and values copied between keys are
//! still caught (and the entry header still carries its checksum), but
//! anyone who can write to Redis can forge a value. Only for trusted test
//! set-ups; do not mix signed and unsigned nodes on one server (each would
//! delete the other's values).
//!
//! ## Time bounds and the circuit breaker
//!
//! Every operation (`load`, `contains`, `save`) waits at most
//! [`RedisCacheBuilder::timeout`] for Redis, connection set-up included, and
//! then answers [`CacheError::Timeout`]. CPU work (MAC, checksum,
//! (de)serialization) is not counted in that bound; values of
//! [`RedisCacheBuilder::blocking_threshold`] bytes or more are processed on
//! tokio's blocking pool. A load that finds a bad value spends at most one
//! more timeout deleting it.
//!
//! After [`RedisCacheBuilder::failure_threshold`] consecutive failures
//! (timeouts, refused or dropped connections, failed authentication; misses
//! and bad values, whether oversized, corrupt or failing their MAC, are
//! *not* failures: Redis answered, and a bad value under one key says
//! nothing about the server's health for the others) the breaker
//! opens: every call then answers [`CacheError::Unavailable`] at once
//! without touching Redis. After [`RedisCacheBuilder::probe_interval`], one
//! call is let through as a probe; if Redis answers, the breaker closes,
//! otherwise it stays open for another interval. A dead Redis therefore
//! costs each node at most one timeout per probe interval. Changes are
//! reported through [`TierObserver::available`](crate::TierObserver::available) (the spy turns them into the
//! gauge `tierscope_tier_available`), and the current state is reported to
//! an observer when it attaches.
//!
//! The connection is made lazily, on the first operation (construction does
//! no I/O), so an unreachable server or a wrong password surfaces on first
//! use as a [`CacheError::Unavailable`] that names the tier, the address and
//! the reason. It belongs to the tokio runtime of that first operation.
//!
//! ## Single server and Redis Cluster
//!
//! A single server is reached through the `redis` crate's
//! [`ConnectionManager`](redis::aio::ConnectionManager), which multiplexes every call over one connection
//! and reconnects after a failure. A Redis Cluster is reached through the
//! crate's asynchronous cluster client
//! ([`redis::cluster_async::ClusterConnection`]), which routes each key to
//! its node and follows `MOVED`/`ASK` redirections:
//!
//! ```no_run
//! use tierscope::{RedisCache, RedisTarget};
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisCache::builder(RedisTarget::cluster([
//!     "redis://10.0.0.1:6379/",
//!     "redis://10.0.0.2:6379/",
//!     "redis://10.0.0.3:6379/",
//! ]))
//! .mac_keys_from_env()?
//! .build()?;
//! # let _ = redis;
//! # Ok(())
//! # }
//! ```
//!
//! Every command touches a single key (`STRLEN`, `GETRANGE`, `SET`,
//! `EXISTS`, and one-key scripts that delete a bad value only if it is
//! unchanged or still oversized), so no hash tag is needed: entries spread
//! over all slots. (`contains` is an `EXISTS`: it does not fetch or verify
//! the value.)
//!
//! In a cluster each master has its own circuit breaker: the tier fetches
//! the slot map (`CLUSTER SLOTS`) in the background on first use, again at
//! most once a second after a failure, and once a minute anyway, and counts
//! each call against the master serving its key's slot (calls made before
//! the map is known count against one breaker for the whole cluster). When
//! a master dies, its keys fail within the timeout until its breaker opens
//! and then answer [`CacheError::Unavailable`] at once, while keys on the
//! other masters go on hitting; [`RedisCache::is_available`] and the
//! availability reported to observers are false while any master's breaker
//! is open. For the other masters to go on serving while one is down
//! without a replica, run the cluster with
//! `cluster-require-full-coverage no` (with the default `yes`, every master
//! refuses every key once the dead one is marked failed). A test kills and
//! restarts a master of a real three-master cluster.
//!
//! ## Limits
//!
//! Entries larger than [`RedisCacheBuilder::max_entry_bytes`] (header,
//! artifact and MAC; default 64 MiB, at most Redis' 512 MiB string limit) are
//! refused with [`CacheError::TooLarge`] before any network I/O. A load
//! reads a value in ranges, never as a whole: one round trip pipelines
//! `EXISTS`, `STRLEN` and `GETRANGE` of the first [`FIRST_READ_BYTES`]
//! (1 MiB, or the limit if smaller), so a miss or a value up to that size
//! costs one round trip like a plain `GET`, and a larger value within the
//! limit one more `GETRANGE` for the rest. A value larger than the limit,
//! such as junk written by someone else, costs at most that first read: it
//! is [`CacheError::Integrity`], deleted if still oversized, and reported as
//! an eviction with cause [`EvictionCause::Corrupt`](crate::EvictionCause::Corrupt). (So a 256 MiB value
//! under a 1 MiB limit costs no memory, and no timeout.) Give every node the
//! same limit: a node deletes values larger than its own. Keep the timeout
//! in proportion to the limit: a 64 MiB value needs about half a second on
//! a 1 Gbit/s link, and a timeout of a value within the limit is counted as
//! a failure of the server. Entries may expire ([`RedisCacheBuilder::ttl`]);
//! Redis' own evictions and expirations are invisible to clients and are not
//! reported, and neither is the tier's residency (unknown to a client).
//!
//! Durations above [`MAX_DURATION`] (ten years, e.g. `Duration::MAX`) are
//! saturated to it: unbounded in practice, and no deadline overflows.

use std::{fmt, sync::Arc, time::Duration};

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Control, Hit, IntegrityFailure, Lookup, ModuleCache, Verified},
    engine::{engine_key, ident_of},
    entry, weights,
};

mod admission;
mod cluster;
mod config;
mod connection;
mod fetch;

use crate::tier::breaker::{Breaker, Verdict};
use crate::tier::remote_value::{self, Signing, ValueParts};
use cluster::*;
pub use config::{RedisCacheBuilder, RedisTarget};
use connection::*;
use fetch::*;

/// Bytes of the MAC that ends every value.
pub const MAC_LEN: usize = remote_value::MAC_LEN;
/// Redis' largest string value (`proto-max-bulk-len`, 512 MiB by default).
pub const REDIS_MAX_VALUE_BYTES: u64 = 512 << 20;
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "tierscope";
/// Default tier name used in errors and logs.
pub const DEFAULT_TIER_NAME: &str = "redis";
/// Default bound of one operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default bound of one connection attempt made by the client in the
/// background (a caller never waits longer than its operation's timeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of consecutive failures that opens the breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Default time the breaker stays open before a probe.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default largest entry (header + artifact + MAC).
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 64 << 20;
/// At most this much of a value (or `max_entry_bytes`, if smaller) is read
/// in the round trip that learns its size: values up to this size cost one
/// round trip, and an oversized value costs no more than this transfer.
pub const FIRST_READ_BYTES: u64 = 1 << 20;
/// Default size from which MAC, checksum and (de)serialization run on
/// tokio's blocking pool.
pub const DEFAULT_BLOCKING_THRESHOLD: u64 = 256 << 10;
/// The environment variable read by [`RedisCacheBuilder::mac_keys_from_env`]:
/// one or more keys of 64 hex digits, separated by commas, signing key first.
pub const MAC_KEY_ENV: &str = "TIERSCOPE_REDIS_KEY";

/// The longest duration a setting takes: longer ones (up to
/// `Duration::MAX`) are saturated to it. Ten years: unbounded in practice,
/// and far enough from the clock's limits that no deadline overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub use crate::mac::MacKey;

/// The shared remote tier on Redis (single server or cluster). Cheap to
/// clone: clones share the connection and the circuit breaker.
///
/// The README's *Redis tier* section describes keys, values, the MAC, time
/// bounds and the breaker.
#[derive(Clone)]
pub struct RedisCache {
    shared: Arc<Shared>,
}

impl RedisCache {
    /// A builder for the tier at `target`: a URL
    /// (`"redis://[:password@]host:port/"`), a [`redis::Client`], or a
    /// cluster ([`RedisTarget::cluster`], [`redis::cluster::ClusterClient`]).
    ///
    /// A MAC key is required (or the explicit
    /// [`RedisCacheBuilder::insecure_no_mac`]).
    pub fn builder(target: impl Into<RedisTarget>) -> RedisCacheBuilder {
        RedisCacheBuilder::new(target.into())
    }

    /// The Redis key that holds (or would hold) `key` for `engine`.
    pub fn redis_key(&self, key: ModuleHash, engine: &Engine) -> String {
        self.shared.redis_key(&key, &ident_of(engine))
    }

    /// The tier's name (in errors and logs).
    pub fn tier_name(&self) -> &str {
        self.shared.tier.as_str()
    }

    /// The bound of one operation.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// False while the circuit breaker is open (for a cluster: while any
    /// master's breaker is open).
    pub fn is_available(&self) -> bool {
        self.shared.available()
    }

    /// Send `PING` through the breaker and the time bound: a readiness
    /// check that also warms the connection up.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let s = &*self.shared;
        let call = self.shared.admit()?;
        let deadline = deadline_after(s.timeout);
        let result = s
            .query::<String>("ping", deadline, &redis::cmd("PING"))
            .await;
        call.settle_with(&result);
        result.map(drop)
    }

    async fn fetch_and_open(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        let s = &*self.shared;
        let ident = ident_of(engine);
        let redis_key = s.redis_key(&key, &ident);
        let call = self.shared.admit_key(&redis_key)?;
        let deadline = deadline_after(s.timeout);
        let got = s.fetch(&redis_key, deadline).await;
        // Only whether the server answered counts: a bad value is the
        // value's fault, never the server's, and never opens the breaker.
        call.settle_with(&got);
        let value = match got? {
            Fetched::Missing => return Err(CacheError::NotFound),
            Fetched::Value(value) => value,
            Fetched::TooLarge(size) => {
                s.discard_oversized(&redis_key).await;
                return Err(CacheError::Integrity {
                    location: s.location(&redis_key),
                    reason: IntegrityFailure::Oversized {
                        bytes: size,
                        limit: s.max_entry_bytes,
                        read: s.max_entry_bytes.min(FIRST_READ_BYTES),
                    },
                });
            }
        };
        let big = value.len() as u64 >= s.blocking_threshold;
        let opened = {
            let shared = Arc::clone(&self.shared);
            let (redis_key, ident, engine, value) = (
                redis_key.clone(),
                Arc::clone(&ident),
                engine.clone(),
                value.clone(),
            );
            s.cpu(big, move || {
                let value = shared.signing.authenticate(redis_key.as_bytes(), value)?;
                remote_value::open(value, &key, &ident, &engine)
            })
            .await?
        };
        let rejected = match opened {
            Ok((module, artifact_len)) => {
                weights::record(key, engine_key(engine), artifact_len);
                return Ok(Hit::new(module).with_bytes(Some(artifact_len)));
            }
            Err(rejected) => rejected,
        };
        s.discard(&redis_key, &value).await;
        Err(rejected.into_error(s.location(&redis_key)))
    }

    async fn save_value(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let s = &*self.shared;
        let ekey = engine_key(engine);
        let overhead = (entry::HEADER_LEN + MAC_LEN) as u64;
        let too_large = |size: u64| CacheError::TooLarge {
            tier: s.tier,
            size,
            limit: s.max_entry_bytes,
        };
        let hint = weights::lookup(key, ekey);
        if let Some(artifact) = hint
            && artifact + overhead > s.max_entry_bytes
        {
            return Err(too_large(artifact + overhead));
        }
        let ident = ident_of(engine);
        let redis_key = s.redis_key(&key, &ident);
        let call = self.shared.admit_key(&redis_key)?;
        let big = hint.is_none_or(|b| b + overhead >= s.blocking_threshold);
        let (value, artifact_len) = {
            let shared = Arc::clone(&self.shared);
            let (redis_key, module) = (redis_key.clone(), module.clone());
            s.cpu(big, move || {
                ValueParts::build(&shared.signing, &redis_key, &key, &ident, &module)
                    .map(|parts| (parts.concat(), parts.artifact.len() as u64))
            })
            .await??
        };
        weights::record(key, ekey, artifact_len);
        if value.len() as u64 > s.max_entry_bytes {
            call.settle(Verdict::Neutral);
            return Err(too_large(value.len() as u64));
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(&redis_key).arg(&value[..]);
        if let Some(ttl) = s.ttl {
            cmd.arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        }
        let deadline = deadline_after(s.timeout);
        let result = s.query::<()>("save", deadline, &cmd).await;
        call.settle_with(&result);
        result
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        let keys = s.signing.fingerprints();
        f.debug_struct("RedisCache")
            .field("tier", &s.tier)
            .field("endpoint", &s.endpoint)
            .field("prefix", &s.prefix)
            .field("mac_keys", &keys)
            .field("timeout", &s.timeout)
            .field("available", &s.available())
            .finish()
    }
}

#[async_trait::async_trait]
impl ModuleCache for RedisCache {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.fetch_and_open(key, engine).await.map(|hit| hit.module)
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        _how: Lookup,
    ) -> Result<Hit, CacheError> {
        // Every value's MAC covers every byte, on every hit.
        self.fetch_and_open(key, engine)
            .await
            .map(|hit| hit.with_verified(Verified::Full))
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let s = &*self.shared;
        let redis_key = s.redis_key(&key, &ident_of(engine));
        let call = self.shared.admit_key(&redis_key)?;
        let deadline = deadline_after(s.timeout);
        let result = s
            .query::<bool>("contains", deadline, redis::cmd("EXISTS").arg(&redis_key))
            .await;
        call.settle_with(&result);
        result
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        self.save_value(key, engine, module).await
    }

    fn control(&self, message: &mut Control<'_>) {
        if let Control::AttachObserver(observer) = message {
            let s = &*self.shared;
            let _serial = s.reported.lock();
            observer.verifies();
            // A client cannot know what the server holds: no residency.
            s.observers.attach(Arc::clone(observer), None);
            observer.available(s.available());
        }
    }
}
