//! Configuration of the Redis tier: the builder, the target (a server or a
//! cluster), and what a configuration may be refused for.

use std::{fmt, sync::Arc, time::Duration};

use parking_lot::Mutex;
use redis::{RedisError, cluster::ClusterClient};

use crate::{cache::TierName, entry, error::ConfigError, tier_events::Observers};

use super::*;

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

/// The client refused a URL or configuration (the URL is not shown: it
/// may hold a password).
fn invalid_target(e: RedisError) -> ConfigError {
    ConfigError::Target {
        target: "Redis".into(),
        reason: e.to_string(),
        source: Some(Box::new(e)),
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

/// Builder for [`RedisCache`]; the README's *Redis tier* section describes
/// the design.
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
    /// The defaults, for `target`.
    pub(super) fn new(target: RedisTarget) -> Self {
        RedisCacheBuilder {
            target,
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

    /// Add the MAC keys listed in [`MAC_KEY_ENV`] (`TIERSCOPE_REDIS_KEY`):
    /// 64 hex digits each, comma-separated, the signing key first.
    pub fn mac_keys_from_env(self) -> Result<Self, ConfigError> {
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
    /// included) before answering [`CacheError::Timeout`](crate::CacheError::Timeout). Default 250 ms;
    /// zero is refused by [`build`](Self::build); anything above
    /// ten years (e.g. `Duration::MAX`) is saturated to it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound of one connection attempt (TCP, TLS, `AUTH`, `HELLO`) made by
    /// the client, also in the background after a failure. Default 1 s;
    /// zero is refused, anything above ten years saturated to it.
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
    /// as a probe. Default 1 s; anything above ten years (e.g.
    /// `Duration::MAX`) is saturated to it.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Largest value stored (header + artifact + 32-byte MAC); larger saves
    /// answer [`CacheError::TooLarge`](crate::CacheError::TooLarge) before any network I/O. A larger
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
    /// ten years is saturated to it.
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
    pub fn build(self) -> Result<RedisCache, ConfigError> {
        let signing = match (self.keys.is_empty(), self.insecure) {
            (true, false) => {
                return Err(ConfigError::MissingMacKey {
                    tier: "Redis",
                    env: MAC_KEY_ENV,
                });
            }
            (false, true) => return Err(ConfigError::ConflictingMac),
            (true, true) => Signing::Unkeyed,
            (false, false) => Signing::Keyed(self.keys),
        };
        let timeout = self.timeout.min(MAX_DURATION);
        let connect_timeout = self.connect_timeout.min(MAX_DURATION);
        let probe_interval = self.probe_interval.min(MAX_DURATION);
        let ttl = self.ttl.map(|ttl| ttl.min(MAX_DURATION));
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "connect_timeout",
                reason: "must be greater than zero".into(),
            });
        }
        let overhead = (entry::HEADER_LEN + MAC_LEN) as u64;
        if self.max_entry_bytes <= overhead || self.max_entry_bytes > REDIS_MAX_VALUE_BYTES {
            return Err(ConfigError::Invalid {
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
            return Err(ConfigError::Invalid {
                setting: "ttl",
                reason: "must be at least 1 ms".into(),
            });
        }
        let breaker = Arc::new(Breaker::new(self.failure_threshold, probe_interval));
        let (target, endpoint) = match self.target {
            RedisTarget::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(invalid_target)?;
                let endpoint = client.get_connection_info().addr().to_string();
                (Target::Single(client), endpoint)
            }
            RedisTarget::Client(client) => {
                let endpoint = client.get_connection_info().addr().to_string();
                (Target::Single(client), endpoint)
            }
            RedisTarget::ClusterUrls(urls) => {
                if urls.is_empty() {
                    return Err(ConfigError::Invalid {
                        setting: "target",
                        reason: "a cluster needs at least one node URL".into(),
                    });
                }
                let mut addrs = Vec::with_capacity(urls.len());
                for url in &urls {
                    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                        .map_err(invalid_target)?;
                    addrs.push(info.addr().to_string());
                }
                let client = ClusterClient::builder(urls)
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout)
                    .build()
                    .map_err(invalid_target)?;
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
        assert!(matches!(
            e,
            ConfigError::MissingMacKey { tier: "Redis", .. }
        ));
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
            ConfigError::ConflictingMac
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
            Err(ConfigError::Target { .. })
        ));
        assert!(b().build().is_ok());
    }
}
