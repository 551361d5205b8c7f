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
//! let module = loader.load_or_compile(&engine, b"(module)").await?;
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
//! [`EngineIdent::namespace`], which binds the engine's deterministic id, its
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
//! survives) and reports an eviction with cause [`EvictionCause::Corrupt`];
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
//! reported through [`TierObserver::available`] (the spy turns them into the
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
//! [`ConnectionManager`], which multiplexes every call over one connection
//! and reconnects after a failure. A Redis Cluster is reached through the
//! crate's asynchronous cluster client
//! ([`redis::cluster_async::ClusterConnection`]), which routes each key to
//! its node and follows `MOVED`/`ASK` redirections:
//!
//! ```no_run
//! use tierscope::{RedisCache, tier::redis::RedisTarget};
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
//! an eviction with cause [`EvictionCause::Corrupt`]. (So a 256 MiB value
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

use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use redis::{
    Cmd, FromRedisValue, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Corruption, Hit, IntegrityFailure, ModuleCache, TierName, Unavailability},
    engine::{EngineIdent, engine_key, ident_of},
    entry,
    observer::{Eviction, EvictionCause, Observers, TierObserver},
    sizes,
};

/// Bytes of the MAC that ends every value.
pub const MAC_LEN: usize = 32;
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

/// Domain separation for the unkeyed digest of [`RedisCacheBuilder::insecure_no_mac`].
const UNKEYED_CONTEXT: &str = "tierscope 2025 redis tier unkeyed entry digest v1";

/// Deletes a value only if it is still the one that failed verification
/// (same length, same last 32 bytes): a good value saved meanwhile by
/// another node survives.
const DELETE_IF_UNCHANGED: &str = r"
if redis.call('STRLEN', KEYS[1]) == tonumber(ARGV[2])
    and redis.call('GETRANGE', KEYS[1], -32, -1) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

pub use crate::mac::MacKey;

/// Deletes a value only if it is still larger than the limit in `ARGV[1]`
/// (a good value saved meanwhile by another node is never that large), and
/// answers the size it deleted (0: nothing deleted).
const DELETE_IF_OVERSIZED: &str = r"
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return n
end
return 0
";

/// A configuration [`RedisCacheBuilder::build`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// Neither a MAC key nor the explicit opt-out was given.
    #[error(
        "the Redis tier needs a MAC key: values in a shared Redis become executable code on every \
         node that loads them, so each is signed and verified. Set one with `mac_key`, \
         `mac_key_from_hex` or `mac_keys_from_env` ({MAC_KEY_ENV}=<64 hex digits>, the same on \
         every node), or, for a trusted test set-up only, call `insecure_no_mac()`"
    )]
    MissingMacKey,
    /// Both MAC keys and `insecure_no_mac()` were given.
    #[error("`insecure_no_mac()` was called although MAC keys were given: choose one")]
    ConflictingMac,
    /// A MAC key could not be read.
    #[error(transparent)]
    MacKey(#[from] crate::mac::MacKeyError),
    /// The Redis URL or client configuration is invalid.
    #[error("invalid Redis target: {0}")]
    Target(#[source] RedisError),
    /// A setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The builder method.
        setting: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl From<RedisConfigError> for CacheError {
    fn from(e: RedisConfigError) -> Self {
        CacheError::other(e)
    }
}

/// Where the tier's Redis is: a single server or a cluster.
///
/// Built from a URL (`"redis://[:password@]host:port/[db]"`, `rediss://` for
/// TLS if the `redis` crate was built with TLS), a [`redis::Client`], a list
/// of cluster node URLs ([`RedisTarget::cluster`]) or a
/// [`redis::cluster::ClusterClient`].
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisTarget {
    /// A single server by URL.
    Url(String),
    /// A single server through a configured client.
    Client(redis::Client),
    /// A Redis Cluster by the URLs of some of its nodes.
    ClusterUrls(Vec<String>),
    /// A Redis Cluster through a configured client (its own connection and
    /// response timeouts are replaced by the tier's). Boxed: it is large.
    Cluster(Box<ClusterClient>),
}

impl RedisTarget {
    /// A Redis Cluster reached through any of `nodes` (URLs).
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisTarget::ClusterUrls(nodes.into_iter().map(Into::into).collect())
    }
}

impl fmt::Debug for RedisTarget {
    // URLs may hold passwords: only the kind is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Url(_) => f.write_str("RedisTarget::Url(..)"),
            RedisTarget::Client(c) => {
                write!(f, "RedisTarget::Client({})", c.get_connection_info().addr())
            }
            RedisTarget::ClusterUrls(urls) => {
                write!(f, "RedisTarget::ClusterUrls({} nodes)", urls.len())
            }
            RedisTarget::Cluster(_) => f.write_str("RedisTarget::Cluster(..)"),
        }
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        RedisTarget::Url(url.to_string())
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        RedisTarget::Url(url)
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        RedisTarget::Url(url.clone())
    }
}

impl From<redis::Client> for RedisTarget {
    fn from(client: redis::Client) -> Self {
        RedisTarget::Client(client)
    }
}

impl From<ClusterClient> for RedisTarget {
    fn from(client: ClusterClient) -> Self {
        RedisTarget::Cluster(Box::new(client))
    }
}

/// Builder for [`RedisCache`]; see the [module docs](self) for the design.
#[derive(Debug, Clone)]
pub struct RedisCacheBuilder {
    target: RedisTarget,
    keys: Vec<MacKey>,
    insecure: bool,
    prefix: String,
    tier: String,
    timeout: Duration,
    connect_timeout: Duration,
    failure_threshold: u32,
    probe_interval: Duration,
    max_entry_bytes: u64,
    ttl: Option<Duration>,
    blocking_threshold: u64,
}

impl RedisCacheBuilder {
    /// Add a MAC key. The first key added signs every save; every key added
    /// is accepted on loads (for rotation).
    pub fn mac_key(mut self, key: impl Into<MacKey>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Add several MAC keys, in order (the first of all keys signs).
    pub fn mac_keys(mut self, keys: impl IntoIterator<Item = MacKey>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// Add a MAC key given as 64 hex digits.
    pub fn mac_key_from_hex(self, hex_digits: &str) -> Result<Self, RedisConfigError> {
        Ok(self.mac_key(MacKey::from_hex(hex_digits)?))
    }

    /// Add the MAC keys listed in [`MAC_KEY_ENV`] (`TIERSCOPE_REDIS_KEY`):
    /// 64 hex digits each, comma-separated, the signing key first.
    pub fn mac_keys_from_env(self) -> Result<Self, RedisConfigError> {
        Ok(self.mac_keys(MacKey::list_from_env(MAC_KEY_ENV)?))
    }

    /// **Insecure.** Store values without a MAC, with an unkeyed BLAKE3
    /// digest in its place.
    ///
    /// Anyone able to write to this Redis can then make every node that
    /// loads from it run arbitrary machine code. Accidental corruption and
    /// values copied between keys are still caught (and the entry header's
    /// checksum still verified), but nothing else. Use only for a trusted
    /// test set-up; never mix with nodes that sign.
    pub fn insecure_no_mac(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// The first part of every key. Default `tierscope`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The tier's name in errors and logs. Default `redis`.
    pub fn tier_name(mut self, name: impl Into<String>) -> Self {
        self.tier = name.into();
        self
    }

    /// The longest an operation waits for Redis (connection set-up
    /// included) before answering [`CacheError::Timeout`]. Default 250 ms;
    /// zero is refused by [`build`](Self::build); anything above
    /// [`MAX_DURATION`] (e.g. `Duration::MAX`) is saturated to it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound of one connection attempt (TCP, TLS, `AUTH`, `HELLO`) made by
    /// the client, also in the background after a failure. Default 1 s;
    /// zero is refused, anything above [`MAX_DURATION`] saturated to it.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Consecutive failures (timeouts, connection and authentication errors)
    /// that open the circuit breaker. Default 3; 0 counts as 1.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// How long the open breaker refuses calls before letting one through
    /// as a probe. Default 1 s; anything above [`MAX_DURATION`] (e.g.
    /// `Duration::MAX`) is saturated to it.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Largest value stored (header + artifact + 32-byte MAC); larger saves
    /// answer [`CacheError::TooLarge`] before any network I/O. A larger
    /// value found on a load is refused by its size, which the server
    /// reports in the round trip that reads at most its first
    /// [`FIRST_READ_BYTES`]: [`CacheError::Integrity`], deleted. Give every
    /// node of a fleet the same limit. Default 64 MiB; at most
    /// [`REDIS_MAX_VALUE_BYTES`].
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// Let Redis expire each entry this long after it was saved (`SET ..
    /// PX`). Default: no expiry. Under 1 ms is refused; anything above
    /// [`MAX_DURATION`] is saturated to it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Values of at least this many bytes are verified and deserialized
    /// (and modules of at least this size serialized) on tokio's blocking
    /// pool instead of the calling task. Default 256 KiB (about 70 µs of
    /// work); 0 always uses the pool, `u64::MAX` never.
    pub fn blocking_threshold(mut self, bytes: u64) -> Self {
        self.blocking_threshold = bytes;
        self
    }

    /// Check the settings and make the tier. Does no I/O: the connection is
    /// made on the first operation.
    pub fn build(self) -> Result<RedisCache, RedisConfigError> {
        let signing = match (self.keys.is_empty(), self.insecure) {
            (true, false) => return Err(RedisConfigError::MissingMacKey),
            (false, true) => return Err(RedisConfigError::ConflictingMac),
            (true, true) => Signing::Unkeyed,
            (false, false) => Signing::Keyed(self.keys),
        };
        let timeout = self.timeout.min(MAX_DURATION);
        let connect_timeout = self.connect_timeout.min(MAX_DURATION);
        let probe_interval = self.probe_interval.min(MAX_DURATION);
        let ttl = self.ttl.map(|ttl| ttl.min(MAX_DURATION));
        if self.timeout.is_zero() {
            return Err(RedisConfigError::Invalid {
                setting: "timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(RedisConfigError::Invalid {
                setting: "connect_timeout",
                reason: "must be greater than zero".into(),
            });
        }
        let overhead = (entry::HEADER_LEN + MAC_LEN) as u64;
        if self.max_entry_bytes <= overhead || self.max_entry_bytes > REDIS_MAX_VALUE_BYTES {
            return Err(RedisConfigError::Invalid {
                setting: "max_entry_bytes",
                reason: format!(
                    "{} is outside {}..={REDIS_MAX_VALUE_BYTES} (a header and MAC need {overhead} bytes; \
                     Redis strings hold at most 512 MiB)",
                    self.max_entry_bytes,
                    overhead + 1
                ),
            });
        }
        if let Some(ttl) = ttl
            && ttl.as_millis() == 0
        {
            return Err(RedisConfigError::Invalid {
                setting: "ttl",
                reason: "must be at least 1 ms".into(),
            });
        }
        let breaker = Arc::new(Breaker::new(self.failure_threshold, probe_interval));
        let (target, endpoint) = match self.target {
            RedisTarget::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(RedisConfigError::Target)?;
                let endpoint = client.get_connection_info().addr().to_string();
                (Target::Single(client), endpoint)
            }
            RedisTarget::Client(client) => {
                let endpoint = client.get_connection_info().addr().to_string();
                (Target::Single(client), endpoint)
            }
            RedisTarget::ClusterUrls(urls) => {
                if urls.is_empty() {
                    return Err(RedisConfigError::Invalid {
                        setting: "target",
                        reason: "a cluster needs at least one node URL".into(),
                    });
                }
                let mut addrs = Vec::with_capacity(urls.len());
                for url in &urls {
                    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                        .map_err(RedisConfigError::Target)?;
                    addrs.push(info.addr().to_string());
                }
                let client = ClusterClient::builder(urls)
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout)
                    .build()
                    .map_err(RedisConfigError::Target)?;
                (
                    Target::Cluster(Box::new(client)),
                    format!("cluster {}", addrs.join(",")),
                )
            }
            RedisTarget::Cluster(client) => (Target::Cluster(client), "cluster".to_string()),
        };
        Ok(RedisCache {
            shared: Arc::new(Shared {
                tier: TierName::intern(&self.tier),
                prefix: self.prefix,
                endpoint,
                conn: Mutex::new(None),
                signing,
                timeout,
                connect_timeout,
                max_entry_bytes: self.max_entry_bytes,
                ttl,
                blocking_threshold: self.blocking_threshold,
                shards: matches!(target, Target::Cluster(_)).then(Shards::default),
                target,
                breaker,
                observers: Observers::default(),
                reported: Mutex::new(true),
            }),
        })
    }
}

/// The shared remote tier on Redis (single server or cluster). Cheap to
/// clone: clones share the connection and the circuit breaker.
///
/// See the [module docs](self) for keys, values, the MAC, time bounds and
/// the breaker.
#[derive(Clone)]
pub struct RedisCache {
    shared: Arc<Shared>,
}

struct Shared {
    tier: TierName,
    prefix: String,
    target: Target,
    /// Where Redis is, for messages (never a password).
    endpoint: String,
    conn: Mutex<Option<Conn>>,
    signing: Signing,
    timeout: Duration,
    connect_timeout: Duration,
    max_entry_bytes: u64,
    ttl: Option<Duration>,
    blocking_threshold: u64,
    /// The breaker of a single server; in a cluster, of calls whose master
    /// is not known yet (and of `ping`).
    breaker: Arc<Breaker>,
    /// A cluster's breakers, one per master.
    shards: Option<Shards>,
    observers: Observers,
    /// The availability last reported; its lock serializes reports so the
    /// last one always carries the current state.
    reported: Mutex<bool>,
}

/// A cluster's circuit breakers, one per master, found through the
/// cluster's slot map (`CLUSTER SLOTS`, fetched in the background on first
/// use, after failures at most once a second, and once a minute anyway):
/// a dead master opens only its own breaker, and keys on the other masters
/// go on being served.
#[derive(Default)]
struct Shards {
    /// (first slot, last slot, master address, its breaker), by first slot;
    /// empty until the slot map is first fetched.
    map: Mutex<Vec<SlotRange>>,
    /// Every master's breaker by address, kept across slot map changes.
    known: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
    refresh: Mutex<Refresh>,
}

/// First slot, last slot, the master serving them, its breaker.
type SlotRange = (u16, u16, Arc<str>, Arc<Breaker>);

#[derive(Default)]
struct Refresh {
    in_flight: bool,
    /// When the last fetch started.
    started: Option<Instant>,
    /// When a slot map was last installed.
    fetched: Option<Instant>,
}

/// Least time between two fetches of the slot map after failures.
const SLOT_MAP_RETRY: Duration = Duration::from_secs(1);
/// A slot map older than this is fetched again (masters may have changed).
const SLOT_MAP_MAX_AGE: Duration = Duration::from_secs(60);
/// Slots of a Redis Cluster.
const CLUSTER_SLOTS: u16 = 16384;

impl Shards {
    /// The master serving `slot` and its breaker, if the slot map is known.
    fn owner(&self, slot: u16) -> Option<(Arc<str>, Arc<Breaker>)> {
        let map = self.map.lock();
        let i = map.partition_point(|r| r.0 <= slot).checked_sub(1)?;
        let (_, last, addr, breaker) = &map[i];
        (slot <= *last).then(|| (Arc::clone(addr), Arc::clone(breaker)))
    }

    /// All masters' breakers closed; `None` while the slot map is unknown.
    fn available(&self) -> Option<bool> {
        let map = self.map.lock();
        (!map.is_empty()).then(|| map.iter().all(|r| r.3.available()))
    }
}

/// The cluster slot of `key` (CRC16/XMODEM modulo 16384 over the key, or
/// over its hash tag: the bytes between the first `{` and the next `}`,
/// when not empty), as Redis computes it.
fn key_slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &byte in tag.unwrap_or(key) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % CLUSTER_SLOTS
}

/// The masters' slot ranges in a `CLUSTER SLOTS` reply.
fn parse_slot_map(reply: &Value) -> Option<Vec<(u16, u16, String)>> {
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (first, last) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let (host, port) = (text(master.first()?)?, int(master.get(1)?)?);
        map.push((first, last, format!("{host}:{port}")));
    }
    map.sort_by_key(|r| r.0);
    Some(map)
}

enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A connection of either kind.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Signing {
    Keyed(Vec<MacKey>),
    Unkeyed,
}

impl Signing {
    fn hasher(key: Option<&MacKey>) -> blake3::Hasher {
        match key {
            Some(k) => blake3::Hasher::new_keyed(&k.0),
            None => blake3::Hasher::new_derive_key(UNKEYED_CONTEXT),
        }
    }

    fn tag(key: Option<&MacKey>, redis_key: &[u8], entry: &[u8]) -> blake3::Hash {
        let mut h = Self::hasher(key);
        h.update(&(redis_key.len() as u64).to_le_bytes());
        h.update(redis_key);
        h.update(entry);
        h.finalize()
    }

    /// The tag for a new value: under the first key.
    fn sign(&self, redis_key: &[u8], entry: &[u8]) -> blake3::Hash {
        match self {
            Signing::Keyed(keys) => Self::tag(keys.first(), redis_key, entry),
            Signing::Unkeyed => Self::tag(None, redis_key, entry),
        }
    }

    /// True when `tag` is valid under any configured key. `blake3::Hash`
    /// compares in constant time.
    fn verify(&self, redis_key: &[u8], entry: &[u8], tag: &[u8; MAC_LEN]) -> bool {
        let tag = blake3::Hash::from_bytes(*tag);
        match self {
            Signing::Keyed(keys) => keys
                .iter()
                .any(|k| Self::tag(Some(k), redis_key, entry) == tag),
            Signing::Unkeyed => Self::tag(None, redis_key, entry) == tag,
        }
    }
}

/// `now + d`, saturated instead of overflowing (settings are at most
/// [`MAX_DURATION`] anyway).
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(MAX_DURATION))
        .unwrap_or(now)
}

/// What a bounded read found under a key.
enum Fetched {
    /// No value.
    Missing,
    /// A value larger than `max_entry_bytes`, of this many bytes: at most
    /// its first [`FIRST_READ_BYTES`] were transferred.
    TooLarge(u64),
    /// A value within the limit.
    Value(Bytes),
}

/// Why a value was refused before (or by) wasmer.
enum Rejected {
    Integrity(IntegrityFailure),
    Corrupt(Corruption),
    Deserialize(wasmer::DeserializeError),
}

// ---------------------------------------------------------------------------
// Circuit breaker

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Open, with one probe in flight.
    Probing,
}

struct Breaker {
    threshold: u32,
    interval: Duration,
    state: Mutex<(BreakerState, String)>,
}

/// What a finished call tells the breaker.
enum Verdict {
    /// Redis answered (a hit, a miss, a refused value, a command error).
    Answered,
    /// Redis did not answer (timeout, connection or authentication error).
    Failed(String),
    /// Redis was not involved after all (e.g. a module too large to save).
    Neutral,
}

impl Breaker {
    fn new(threshold: u32, interval: Duration) -> Self {
        Breaker {
            threshold,
            interval,
            state: Mutex::new((BreakerState::Closed { failures: 0 }, String::new())),
        }
    }

    fn available(&self) -> bool {
        matches!(self.state.lock().0, BreakerState::Closed { .. })
    }

    /// Let a call through (`Ok(probe)`) or say why not: the last failure,
    /// and when the next probe goes.
    fn admit(&self) -> Result<bool, (String, String)> {
        let mut guard = self.state.lock();
        let (state, last) = &mut *guard;
        match *state {
            BreakerState::Closed { .. } => Ok(false),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::Probing;
                    Ok(true)
                } else {
                    Err((
                        last.clone(),
                        format!("next probe in {} ms", (until - now).as_millis() + 1),
                    ))
                }
            }
            BreakerState::Probing => Err((last.clone(), "a probe is in flight".to_string())),
        }
    }

    /// Record a call's verdict; true when availability changed.
    fn settle(&self, probe: bool, verdict: Verdict) -> bool {
        let mut guard = self.state.lock();
        let (state, last) = &mut *guard;
        match (verdict, *state) {
            (Verdict::Answered, BreakerState::Closed { .. }) => {
                *state = BreakerState::Closed { failures: 0 };
                false
            }
            (Verdict::Answered, BreakerState::Probing) if probe => {
                *state = BreakerState::Closed { failures: 0 };
                last.clear();
                true
            }
            (Verdict::Failed(reason), BreakerState::Closed { failures }) => {
                let failures = failures + 1;
                *last = reason;
                if failures >= self.threshold {
                    *state = BreakerState::Open {
                        until: deadline_after(self.interval),
                    };
                    true
                } else {
                    *state = BreakerState::Closed { failures };
                    false
                }
            }
            (Verdict::Failed(reason), BreakerState::Probing) if probe => {
                *last = reason;
                *state = BreakerState::Open {
                    until: deadline_after(self.interval),
                };
                false
            }
            (Verdict::Neutral, BreakerState::Probing) if probe => {
                // No evidence either way: let the next call probe at once.
                *state = BreakerState::Open {
                    until: Instant::now(),
                };
                false
            }
            // Calls admitted before the breaker opened: only the probe decides.
            _ => false,
        }
    }
}

/// One admitted call. Dropping it without a verdict (a cancelled caller)
/// counts as neutral, so an abandoned probe never leaves the breaker stuck.
struct Call {
    shared: Arc<Shared>,
    breaker: Arc<Breaker>,
    /// The cluster master it went to, when known.
    master: Option<Arc<str>>,
    probe: bool,
    settled: bool,
}

impl Call {
    fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        self.shared.settle(&self, verdict);
    }

    /// Settle from an operation's result.
    fn settle_with<T>(self, result: &Result<T, CacheError>) {
        let verdict = match result {
            Err(CacheError::Timeout { op, after, .. }) => {
                Verdict::Failed(format!("{op} timed out after {after:?}"))
            }
            Err(CacheError::Unavailable { reason, .. }) => Verdict::Failed(reason.to_string()),
            _ => Verdict::Answered,
        };
        self.settle(verdict);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(self, Verdict::Neutral);
        }
    }
}

// ---------------------------------------------------------------------------
// Shared internals

impl Shared {
    fn redis_key(&self, key: &ModuleHash, ident: &EngineIdent) -> String {
        format!("{}:{}:{key}", self.prefix, ident.namespace)
    }

    fn location(&self, redis_key: &str) -> String {
        format!("tier {} ({}) key {redis_key}", self.tier, self.endpoint)
    }

    /// Admit a call that touches no key (through the tier's own breaker).
    fn admit(self: &Arc<Self>) -> Result<Call, CacheError> {
        self.admit_through(Arc::clone(&self.breaker), None)
    }

    /// Admit a call on `redis_key`: in a cluster, through the breaker of
    /// the master serving its slot, once the slot map is known.
    fn admit_key(self: &Arc<Self>, redis_key: &str) -> Result<Call, CacheError> {
        let Some(shards) = &self.shards else {
            return self.admit();
        };
        self.refresh_slot_map(false);
        match shards.owner(key_slot(redis_key.as_bytes())) {
            Some((master, breaker)) => self.admit_through(breaker, Some(master)),
            None => self.admit(),
        }
    }

    fn admit_through(
        self: &Arc<Self>,
        breaker: Arc<Breaker>,
        master: Option<Arc<str>>,
    ) -> Result<Call, CacheError> {
        match breaker.admit() {
            Ok(probe) => Ok(Call {
                shared: Arc::clone(self),
                breaker,
                master,
                probe,
                settled: false,
            }),
            Err((last_failure, next)) => Err(CacheError::Unavailable {
                tier: self.tier,
                reason: Unavailability::CircuitOpen {
                    server: master.map(|m| m.to_string()),
                    last_failure,
                    next,
                },
            }),
        }
    }

    fn settle(self: &Arc<Self>, call: &Call, verdict: Verdict) {
        let failed = match &verdict {
            Verdict::Failed(reason) => Some(reason.clone()),
            _ => None,
        };
        if failed.is_some() {
            // A failure in a cluster may mean its masters changed.
            self.refresh_slot_map(true);
        }
        if call.breaker.settle(call.probe, verdict) {
            let available = call.breaker.available();
            let master = call.master.as_deref().unwrap_or("");
            match failed {
                Some(reason) if !available => tracing::warn!(
                    tier = %self.tier,
                    endpoint = %self.endpoint,
                    master,
                    threshold = call.breaker.threshold,
                    probe_interval = ?call.breaker.interval,
                    %reason,
                    "remote tier unavailable: circuit breaker opened",
                ),
                _ => tracing::info!(
                    tier = %self.tier,
                    endpoint = %self.endpoint,
                    master,
                    "remote tier available again: circuit breaker closed",
                ),
            }
            self.report_availability();
        }
    }

    /// Available: the breaker closed (in a cluster, every master's, once
    /// the slot map is known).
    fn available(&self) -> bool {
        self.shards
            .as_ref()
            .and_then(Shards::available)
            .unwrap_or_else(|| self.breaker.available())
    }

    fn report_availability(&self) {
        let mut reported = self.reported.lock();
        let available = self.available();
        if *reported != available {
            *reported = available;
            self.observers.available(available);
        }
    }

    /// Fetch a cluster's slot map in the background, if none is known or
    /// it is old, or (`after_failure`) if the last fetch is a second old.
    fn refresh_slot_map(self: &Arc<Self>, after_failure: bool) {
        let Some(shards) = &self.shards else {
            return;
        };
        let now = Instant::now();
        {
            let mut refresh = shards.refresh.lock();
            let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
            let due = match (since(refresh.fetched), since(refresh.started)) {
                _ if refresh.in_flight => false,
                (_, None) => true,
                (None, Some(tried)) => tried >= SLOT_MAP_RETRY,
                (Some(age), Some(tried)) => {
                    age >= SLOT_MAP_MAX_AGE || (after_failure && tried >= SLOT_MAP_RETRY)
                }
            };
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if !due {
                return;
            }
            refresh.in_flight = true;
            refresh.started = Some(now);
            let shared = Arc::clone(self);
            runtime.spawn(async move { shared.fetch_slot_map().await });
        }
    }

    /// Ask a master for the slot map (bounded by the timeout) and install it.
    async fn fetch_slot_map(&self) {
        let Some(shards) = &self.shards else {
            return;
        };
        let work = async {
            let mut failure = None;
            // A random master may be the dead one: try a few.
            for _ in 0..3 {
                let Conn::Cluster(mut conn) = self.connection()? else {
                    return Ok(None);
                };
                let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                match conn.route_command(cmd, routing).await {
                    Ok(reply) => return Ok(parse_slot_map(&reply)),
                    Err(e) => failure = Some(e),
                }
            }
            Err(failure
                .unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no master answered"))))
        };
        let fetched = self
            .bounded("slot map", deadline_after(self.timeout), work)
            .await;
        let installed = match fetched {
            Ok(Some(map)) if !map.is_empty() => {
                let mut known = shards.known.lock();
                let threshold = self.breaker.threshold;
                let interval = self.breaker.interval;
                let map = map
                    .into_iter()
                    .map(|(first, last, addr)| {
                        let addr: Arc<str> = addr.into();
                        let breaker = known
                            .entry(Arc::clone(&addr))
                            .or_insert_with(|| Arc::new(Breaker::new(threshold, interval)));
                        (first, last, addr, Arc::clone(breaker))
                    })
                    .collect();
                *shards.map.lock() = map;
                true
            }
            Ok(_) => {
                tracing::debug!(tier = %self.tier, "unexpected CLUSTER SLOTS reply");
                false
            }
            Err(e) => {
                tracing::debug!(
                    tier = %self.tier,
                    error = &e as &dyn std::error::Error,
                    "unable to fetch the cluster's slot map",
                );
                false
            }
        };
        {
            let mut refresh = shards.refresh.lock();
            refresh.in_flight = false;
            if installed {
                refresh.fetched = Some(Instant::now());
            }
        }
        if installed {
            self.report_availability();
        }
    }

    /// The connection, made on first use (no I/O here: both kinds connect
    /// lazily, inside the caller's time bound).
    fn connection(&self) -> Result<Conn, RedisError> {
        let mut slot = self.conn.lock();
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.timeout))
                    // One attempt per reconnect: the breaker paces retries.
                    .set_number_of_retries(0);
                Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?)
            }
            Target::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forget the connection: the next call makes a new one. Needed after
    /// an authentication failure, which the connection manager never
    /// retries by itself.
    fn reset_connection(&self) {
        *self.conn.lock() = None;
    }

    /// Run one command, unbounded (callers bound it).
    async fn attempt<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        match cmd.query_async::<T>(&mut conn).await {
            // The multiplexer may answer from a connection that broke
            // (or failed to reconnect) before this call; it has started
            // a fresh attempt by now: try once more, within the bound.
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                let mut conn = self.connection()?;
                cmd.query_async::<T>(&mut conn).await
            }
            other => other,
        }
    }

    /// Run `work` (Redis commands), bounded by `deadline`.
    async fn bounded<T>(
        &self,
        op: &'static str,
        deadline: Instant,
        work: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(op, e)),
            Err(_elapsed) => Err(self.timed_out(op)),
        }
    }

    /// Run one command, bounded by `deadline`.
    async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        deadline: Instant,
        cmd: &Cmd,
    ) -> Result<T, CacheError> {
        self.bounded(op, deadline, self.attempt(cmd)).await
    }

    /// Run one pipeline, unbounded (callers bound it); as [`Self::attempt`].
    async fn attempt_pipeline<T: FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        match pipeline.query_async::<T>(&mut conn).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                let mut conn = self.connection()?;
                pipeline.query_async::<T>(&mut conn).await
            }
            other => other,
        }
    }

    /// Read the value under `redis_key`, never transferring more than
    /// [`FIRST_READ_BYTES`] (or the limit, if smaller) of a value larger than
    /// `max_entry_bytes`, and never more than the limit in all.
    ///
    /// One round trip pipelines `EXISTS`, `STRLEN` (the server reports the
    /// size before sending anything) and `GETRANGE` of the first
    /// [`FIRST_READ_BYTES`]: a miss, or a value up to that size, costs one
    /// round trip, like a plain `GET`; a larger value within the limit costs
    /// a second `GETRANGE` for the rest; an oversized one costs no more than
    /// that first part. (Checking the size before any transfer costs every
    /// hit a second round trip; a Lua script doing it in one costs the
    /// server a copy of the value into Lua and back, measured at 2.3x the
    /// server time of `GET` for 25 KB and 5-11x for 1 MiB, blocking every
    /// other client meanwhile.)
    async fn fetch(&self, redis_key: &str, deadline: Instant) -> Result<Fetched, CacheError> {
        let limit = self.max_entry_bytes;
        let first = limit.min(FIRST_READ_BYTES);
        let work = async {
            // A writer may replace the value between two commands: then the
            // lengths disagree and the read starts over (once).
            for _ in 0..2 {
                let mut pipeline = redis::pipe();
                pipeline
                    .cmd("EXISTS")
                    .arg(redis_key)
                    .cmd("STRLEN")
                    .arg(redis_key)
                    .cmd("GETRANGE")
                    .arg(redis_key)
                    .arg(0)
                    .arg(first - 1);
                let (exists, size, head): (bool, u64, Bytes) =
                    self.attempt_pipeline(&pipeline).await?;
                if !exists {
                    return Ok(Fetched::Missing);
                }
                if size > limit {
                    return Ok(Fetched::TooLarge(size));
                }
                if head.len() as u64 == size {
                    return Ok(Fetched::Value(head));
                }
                if (head.len() as u64) < first {
                    continue; // shorter than STRLEN said: replaced in between
                }
                let mut rest = redis::cmd("GETRANGE");
                rest.arg(redis_key).arg(first).arg(size - 1);
                let tail: Bytes = self.attempt(&rest).await?;
                if first + tail.len() as u64 != size {
                    continue;
                }
                let mut value = Vec::with_capacity(head.len() + tail.len());
                value.extend_from_slice(&head);
                value.extend_from_slice(&tail);
                return Ok(Fetched::Value(value.into()));
            }
            // Replaced twice while being read: a writer is at work; its
            // value will be there for the next load.
            Ok(Fetched::Missing)
        };
        self.bounded("load", deadline, work).await
    }

    fn timed_out(&self, op: &'static str) -> CacheError {
        CacheError::Timeout {
            op,
            tier: self.tier,
            after: self.timeout,
        }
    }

    fn classify(&self, op: &'static str, e: RedisError) -> CacheError {
        use redis::{ErrorKind as K, ServerErrorKind as S};
        let unavailable = |what: fn(String, String) -> Unavailability| CacheError::Unavailable {
            tier: self.tier,
            reason: what(self.endpoint.clone(), e.to_string()),
        };
        if e.is_timeout() {
            return self.timed_out(op);
        }
        let code = e.code();
        if e.kind() == K::AuthenticationFailed || matches!(code, Some("NOAUTH" | "WRONGPASS")) {
            self.reset_connection();
            return unavailable(|endpoint, detail| Unavailability::AuthenticationFailed {
                endpoint,
                detail,
            });
        }
        if code == Some("NOPERM") {
            return unavailable(|endpoint, detail| Unavailability::NotPermitted {
                endpoint,
                detail,
            });
        }
        if e.is_connection_refusal() {
            return unavailable(|endpoint, detail| Unavailability::ConnectionRefused {
                endpoint,
                detail,
            });
        }
        match e.kind() {
            K::Io => unavailable(|endpoint, detail| Unavailability::ConnectionFailed {
                endpoint,
                detail,
            }),
            K::ClusterConnectionNotFound
            | K::Server(S::ClusterDown | S::MasterDown | S::TryAgain | S::BusyLoading) => {
                unavailable(|endpoint, detail| Unavailability::NotReady { endpoint, detail })
            }
            K::InvalidClientConfig => unavailable(|endpoint, detail| {
                Unavailability::InvalidConfiguration { endpoint, detail }
            }),
            _ => CacheError::other(CommandError {
                tier: self.tier,
                endpoint: self.endpoint.clone(),
                op,
                source: e,
            }),
        }
    }

    /// Run CPU work on the blocking pool when `big`, else inline.
    async fn cpu<T, F>(&self, big: bool, f: F) -> Result<T, CacheError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if !big || tokio::runtime::Handle::try_current().is_err() {
            return Ok(f());
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| CacheError::Other(format!("{} tier worker failed: {e}", self.tier).into()))
    }

    /// Delete a value refused for its size if it is still oversized, and
    /// report it.
    async fn discard_oversized(&self, redis_key: &str) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE_IF_OVERSIZED)
            .arg(1)
            .arg(redis_key)
            .arg(self.max_entry_bytes);
        let deadline = deadline_after(self.timeout);
        match self.query::<u64>("load", deadline, &cmd).await {
            Ok(0) => {} // replaced meanwhile (by a good value) or already gone
            Ok(bytes) => self.observers.evicted(Eviction {
                cause: EvictionCause::Corrupt,
                bytes,
                age: None,
            }),
            Err(e) => tracing::warn!(
                tier = %self.tier,
                key = redis_key,
                error = &e as &dyn std::error::Error,
                "unable to delete an oversized value (the next save replaces it)",
            ),
        }
    }

    /// Delete a refused value if it is still there unchanged, and report it.
    async fn discard(&self, redis_key: &str, value: &[u8]) {
        let tail = &value[value.len().saturating_sub(MAC_LEN)..];
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE_IF_UNCHANGED)
            .arg(1)
            .arg(redis_key)
            .arg(tail)
            .arg(value.len());
        let deadline = deadline_after(self.timeout);
        match self.query::<u64>("load", deadline, &cmd).await {
            Ok(1) => self.observers.evicted(Eviction {
                cause: EvictionCause::Corrupt,
                bytes: value.len() as u64,
                age: None,
            }),
            // Replaced meanwhile (by a good value) or already gone.
            Ok(_) => {}
            Err(e) => tracing::warn!(
                tier = %self.tier,
                key = redis_key,
                error = &e as &dyn std::error::Error,
                "unable to delete a value that failed verification (the next save replaces it)",
            ),
        }
    }
}

/// A command Redis answered with an error other than unavailability.
#[derive(Debug, thiserror::Error)]
#[error("{op} on tier {tier} ({endpoint}) failed: {source}")]
struct CommandError {
    tier: TierName,
    endpoint: String,
    op: &'static str,
    #[source]
    source: RedisError,
}

/// Check a value (MAC first, then the entry header) and deserialize it.
/// Returns the module and the artifact length.
fn open_value(
    signing: &Signing,
    redis_key: &str,
    key: &ModuleHash,
    ident: &EngineIdent,
    engine: &Engine,
    value: Bytes,
) -> Result<(Module, u64), Rejected> {
    let Some(entry_len) = value.len().checked_sub(MAC_LEN) else {
        return Err(Rejected::Integrity(IntegrityFailure::ShorterThanMac {
            bytes: value.len() as u64,
            mac_len: MAC_LEN as u64,
        }));
    };
    let (entry_bytes, tag) = value.split_at(entry_len);
    let tag: &[u8; MAC_LEN] = tag.try_into().expect("split at MAC_LEN from the end");
    if !signing.verify(redis_key.as_bytes(), entry_bytes, tag) {
        let bytes = value.len() as u64;
        return Err(Rejected::Integrity(match signing {
            Signing::Keyed(_) => IntegrityFailure::MacMismatch { bytes },
            Signing::Unkeyed => IntegrityFailure::DigestMismatch { bytes },
        }));
    }
    // The BLAKE3 hash just verified covers every byte of the entry: the
    // header's own checksum would only repeat it.
    let range = entry::decode_authenticated(entry_bytes, key, ident).map_err(Rejected::Corrupt)?;
    let artifact_len = (range.end - range.start) as u64;
    let artifact = value.slice(range);
    // SAFETY: before this point the value's BLAKE3 keyed MAC was verified
    // (constant-time) under a key only the operator's nodes hold, over this
    // exact Redis key (which names the engine namespace and module hash)
    // and the whole entry, so the bytes were written by one of those nodes;
    // then `entry::decode` verified our magic and format version, that the
    // entry was written for this module hash under this engine
    // configuration and wasmer version, and its exact length (the XXH3
    // checksum is skipped: the hash above already covers every byte). The
    // bytes are therefore an artifact this wasmer produced for this engine,
    // which is what `Module::deserialize` requires. (Under
    // `insecure_no_mac` the digest is unkeyed and the operator has accepted
    // that whoever writes to Redis is trusted.)
    #[allow(unsafe_code)]
    let module = unsafe { Module::deserialize(engine, artifact) };
    if module.is_ok() {
        crate::engine::note_code_loaded(engine, artifact_len);
    }
    module
        .map(|m| (m, artifact_len))
        .map_err(Rejected::Deserialize)
}

/// Serialize `module` and build its value: header, artifact, MAC.
fn build_value(
    signing: &Signing,
    redis_key: &str,
    key: &ModuleHash,
    ident: &EngineIdent,
    module: &Module,
) -> Result<(Vec<u8>, u64), CacheError> {
    let artifact = module.serialize()?;
    let mut value = Vec::with_capacity(entry::HEADER_LEN + artifact.len() + MAC_LEN);
    value.extend_from_slice(&entry::encode_header(key, ident, &artifact));
    value.extend_from_slice(&artifact);
    let tag = signing.sign(redis_key.as_bytes(), &value);
    value.extend_from_slice(tag.as_bytes());
    Ok((value, artifact.len() as u64))
}

// ---------------------------------------------------------------------------
// Public surface

impl RedisCache {
    /// A builder for the tier at `target`: a URL
    /// (`"redis://[:password@]host:port/"`), a [`redis::Client`], or a
    /// cluster ([`RedisTarget::cluster`], [`redis::cluster::ClusterClient`]).
    ///
    /// A MAC key is required (or the explicit
    /// [`RedisCacheBuilder::insecure_no_mac`]).
    pub fn builder(target: impl Into<RedisTarget>) -> RedisCacheBuilder {
        RedisCacheBuilder {
            target: target.into(),
            keys: Vec::new(),
            insecure: false,
            prefix: DEFAULT_PREFIX.to_string(),
            tier: DEFAULT_TIER_NAME.to_string(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            ttl: None,
            blocking_threshold: DEFAULT_BLOCKING_THRESHOLD,
        }
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

    async fn load_hit(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
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
                open_value(&shared.signing, &redis_key, &key, &ident, &engine, value)
            })
            .await?
        };
        let rejected = match opened {
            Ok((module, artifact_len)) => {
                sizes::record(key, engine_key(engine), artifact_len);
                return Ok(Hit {
                    module,
                    tier: None,
                    bytes: Some(artifact_len),
                });
            }
            Err(rejected) => rejected,
        };
        s.discard(&redis_key, &value).await;
        let location = s.location(&redis_key);
        Err(match rejected {
            Rejected::Integrity(reason) => CacheError::Integrity { location, reason },
            Rejected::Corrupt(reason) => CacheError::Corrupt { location, reason },
            Rejected::Deserialize(e) => CacheError::Deserialize(e),
        })
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
            tier: s.tier.clone(),
            size,
            limit: s.max_entry_bytes,
        };
        let hint = sizes::lookup(key, ekey);
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
                build_value(&shared.signing, &redis_key, &key, &ident, &module)
            })
            .await??
        };
        sizes::record(key, ekey, artifact_len);
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
        let keys: Vec<String> = match &s.signing {
            Signing::Keyed(keys) => keys.iter().map(MacKey::fingerprint).collect(),
            Signing::Unkeyed => vec!["INSECURE: unkeyed".into()],
        };
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
        self.load_traced(key, engine).await.map(|hit| hit.module)
    }

    async fn load_traced(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        self.load_hit(key, engine).await
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

    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        let s = &*self.shared;
        let _serial = s.reported.lock();
        // A client cannot know what the server holds: no residency.
        s.observers.attach(Arc::clone(&observer), None);
        observer.available(s.available());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MacKey {
        MacKey::new([b; 32])
    }

    #[test]
    fn a_key_is_required_and_says_why() {
        let e = RedisCache::builder("redis://127.0.0.1:1/")
            .build()
            .unwrap_err();
        assert!(matches!(e, RedisConfigError::MissingMacKey));
        let msg = e.to_string();
        assert!(
            msg.contains("MAC key") && msg.contains(MAC_KEY_ENV),
            "{msg}"
        );
        assert!(matches!(
            RedisCache::builder("redis://127.0.0.1:1/")
                .mac_key(key(1))
                .insecure_no_mac()
                .build()
                .unwrap_err(),
            RedisConfigError::ConflictingMac
        ));
    }

    #[test]
    fn hex_keys_are_checked() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(MacKey::from_hex(&hex).unwrap().0[31], 0xff);
        assert!(MacKey::from_hex("abcd").is_err());
        assert!(MacKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(!format!("{:?}", key(7)).contains("0707"));
    }

    #[test]
    fn key_lists_put_the_signing_key_first() {
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        let keys = MacKey::list_from_str(&format!(" {a} ,{b},")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].0, [0x11; 32]);
        assert_eq!(keys[1].0, [0x22; 32]);
        assert!(MacKey::list_from_str(" , ").is_err());
        assert!(MacKey::list_from_str(&format!("{a},nothex")).is_err());
        let e = MacKey::list_from_env("TIERSCOPE_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(
            e.to_string()
                .contains("$TIERSCOPE_TEST_SURELY_UNSET_VARIABLE"),
            "{e}"
        );
    }

    #[test]
    fn settings_are_checked_without_io() {
        let b = || RedisCache::builder("redis://127.0.0.1:1/").mac_key(key(1));
        assert!(
            b().max_entry_bytes(REDIS_MAX_VALUE_BYTES + 1)
                .build()
                .is_err()
        );
        assert!(b().max_entry_bytes(100).build().is_err());
        assert!(b().timeout(Duration::ZERO).build().is_err());
        assert!(b().ttl(Duration::from_micros(10)).build().is_err());
        assert!(matches!(
            RedisCache::builder("not a url").mac_key(key(1)).build(),
            Err(RedisConfigError::Target(_))
        ));
        assert!(b().build().is_ok());
    }

    #[test]
    fn the_mac_binds_key_and_bytes_and_rotation_accepts_old_keys() {
        let old = Signing::Keyed(vec![key(1)]);
        let rotated = Signing::Keyed(vec![key(2), key(1)]);
        let other = Signing::Keyed(vec![key(3)]);
        let tag = *old.sign(b"k1", b"entry").as_bytes();
        assert!(old.verify(b"k1", b"entry", &tag));
        assert!(rotated.verify(b"k1", b"entry", &tag));
        assert!(!other.verify(b"k1", b"entry", &tag));
        assert!(!old.verify(b"k2", b"entry", &tag));
        assert!(!old.verify(b"k1", b"entrY", &tag));
        // key/entry boundary is unambiguous
        assert!(!old.verify(b"k1e", b"ntry", &tag));
        let unkeyed = Signing::Unkeyed;
        assert!(!unkeyed.verify(b"k1", b"entry", &tag));
        let t = *unkeyed.sign(b"k1", b"entry").as_bytes();
        assert!(unkeyed.verify(b"k1", b"entry", &t));
        assert!(!old.verify(b"k1", b"entry", &t));
    }

    #[test]
    fn key_slots_match_redis() {
        // reference values from `CLUSTER KEYSLOT` on redis-server 7.0
        for (key, slot) in [
            ("foo", 12182),
            ("bar", 5061),
            ("", 0),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("a{b", 13340),
            (
                "tierscope:abc:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
                5081,
            ),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key:?}");
        }
    }

    #[test]
    fn slot_maps_are_parsed_and_looked_up() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
        ]);
        let map = parse_slot_map(&reply).unwrap();
        assert_eq!(
            map,
            [
                (0, 5460, "10.0.0.1:7000".to_string()),
                (5461, 16383, "10.0.0.2:7001".to_string())
            ]
        );
        assert!(parse_slot_map(&Value::Int(1)).is_none());
        let shards = Shards::default();
        assert!(shards.owner(0).is_none());
        assert_eq!(shards.available(), None);
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        *shards.map.lock() = vec![(0, 5460, "a".into(), Arc::clone(&breaker))];
        assert_eq!(&*shards.owner(5460).unwrap().0, "a");
        assert!(shards.owner(5461).is_none());
        assert_eq!(shards.available(), Some(true));
        breaker.settle(false, Verdict::Failed("down".into()));
        assert_eq!(shards.available(), Some(false));
    }

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert_eq!(b.admit(), Ok(false));
        assert!(!b.settle(false, Verdict::Failed("x".into())));
        assert!(!b.settle(false, Verdict::Answered)); // resets the count
        assert!(!b.settle(false, Verdict::Failed("x".into())));
        assert!(b.settle(false, Verdict::Failed("y".into()))); // opens
        assert!(!b.available());
        assert!(b.admit().unwrap_err().0 == "y");
        // a late failure of a call admitted before: ignored
        assert!(!b.settle(false, Verdict::Failed("z".into())));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Ok(true)); // the probe
        assert!(b.admit().unwrap_err().1.contains("probe is in flight"));
        assert!(!b.settle(true, Verdict::Failed("still down".into())));
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Ok(true));
        assert!(!b.settle(true, Verdict::Neutral)); // abandoned: next call probes
        assert_eq!(b.admit(), Ok(true));
        assert!(b.settle(true, Verdict::Answered)); // closes
        assert!(b.available());
    }
}
