//! Configuration of the object-store tier: the builder, the target (a URL
//! or a store made by the caller), how a URL becomes a store, and what a
//! configuration may be refused for.

use std::{fmt, sync::Arc, time::Duration};

use object_store::{ObjectStore, RetryConfig, path::Path};
use parking_lot::Mutex;

use crate::{cache::TierName, entry, error::ConfigError, tier_events::Observers};

use super::*;

/// Where the tier's objects are.
///
/// From a URL: `s3://bucket[/prefix]`, `gs://bucket[/prefix]`,
/// `az://container[/prefix]` (and the other forms `object_store` knows),
/// `file:///dir` (a shared file system) or `memory:///` (tests). Credentials
/// and endpoints come from the environment as each `object_store` builder
/// reads it (`AmazonS3Builder::from_env`: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, ...;
/// `GoogleCloudStorageBuilder::from_env`; `MicrosoftAzureBuilder::from_env`)
/// and from [`ObjectsCacheBuilder::store_option`]. Or a store the caller
/// built ([`ObjectsTarget::store`]), used as it is (its own retries and
/// timeouts stay; the tier still bounds every operation).
#[derive(Clone)]
#[non_exhaustive]
pub enum ObjectsTarget {
    /// A store by URL.
    Url(String),
    /// A store made by the caller, and the path under which the tier's
    /// objects live.
    Store(Arc<dyn ObjectStore>, String),
}

impl ObjectsTarget {
    /// A store the caller configured, with the tier's objects under
    /// `prefix` (e.g. `"tierscope"`; `""` for the store's root).
    pub fn store(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        ObjectsTarget::Store(store, prefix.into())
    }
}

impl fmt::Debug for ObjectsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectsTarget::Url(url) => write!(f, "ObjectsTarget::Url({})", redact(url)),
            ObjectsTarget::Store(store, prefix) => {
                write!(f, "ObjectsTarget::Store({store}, {prefix:?})")
            }
        }
    }
}

impl From<&str> for ObjectsTarget {
    fn from(url: &str) -> Self {
        ObjectsTarget::Url(url.to_string())
    }
}

impl From<String> for ObjectsTarget {
    fn from(url: String) -> Self {
        ObjectsTarget::Url(url)
    }
}

impl From<&String> for ObjectsTarget {
    fn from(url: &String) -> Self {
        ObjectsTarget::Url(url.clone())
    }
}

/// A URL without user information or query (never a secret in messages).
pub(super) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<unparsable URL>".to_string(),
    }
}

/// Builder for [`ObjectsCache`]; the README's *Object-store tier* section
/// describes the design.
#[derive(Debug, Clone)]
pub struct ObjectsCacheBuilder {
    target: ObjectsTarget,
    options: Vec<(String, String)>,
    keys: Vec<MacKey>,
    insecure: bool,
    prefix: Option<String>,
    tier: String,
    timeout: Duration,
    connect_timeout: Duration,
    min_throughput: u64,
    failure_threshold: u32,
    probe_interval: Duration,
    max_entry_bytes: u64,
    multipart_threshold: u64,
    part_bytes: u64,
    upload_concurrency: usize,
    max_concurrency: usize,
    blocking_threshold: u64,
}

impl ObjectsCacheBuilder {
    pub(super) fn new(target: ObjectsTarget) -> Self {
        ObjectsCacheBuilder {
            target,
            options: Vec::new(),
            keys: Vec::new(),
            insecure: false,
            prefix: None,
            tier: DEFAULT_TIER_NAME.to_string(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            min_throughput: DEFAULT_MIN_THROUGHPUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_bytes: DEFAULT_PART_BYTES,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            blocking_threshold: DEFAULT_BLOCKING_THRESHOLD,
        }
    }

    /// An option of the `object_store` builder for the URL's scheme, as
    /// its config keys spell it (e.g. `("aws_endpoint",
    /// "http://127.0.0.1:9000")`, `("aws_allow_http", "true")`,
    /// `("aws_access_key_id", ..)`); applied after the environment, so it
    /// wins. Keys the builder does not know are refused by
    /// [`build`](Self::build). Ignored for [`ObjectsTarget::Store`].
    pub fn store_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
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

    /// Add the MAC keys listed in [`MAC_KEY_ENV`] (`TIERSCOPE_OBJECTS_KEY`):
    /// 64 hex digits each, comma-separated, the signing key first.
    pub fn mac_keys_from_env(self) -> Result<Self, ConfigError> {
        Ok(self.mac_keys(MacKey::list_from_env(MAC_KEY_ENV)?))
    }

    /// **Insecure.** Store objects with an unkeyed BLAKE3 digest in the
    /// MAC's place: anyone able to write to the bucket can then make every
    /// node that loads from it run arbitrary machine code. Accidental
    /// corruption and objects copied between keys are still caught. Only
    /// for a trusted test set-up; never mix with nodes that sign.
    pub fn insecure_no_mac(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// The path under which the tier's objects live. Default: the URL's
    /// path (`s3://bucket/PREFIX`), or `tierscope` when it has none.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The tier's name in errors and logs. Default `objects`.
    pub fn tier_name(mut self, name: impl Into<String>) -> Self {
        self.tier = name.into();
        self
    }

    /// The bound of an operation that moves no large body (a `HEAD`, a
    /// miss, a `DELETE`), and the fixed part of every other: a transfer of
    /// `n` bytes may take `timeout + n / min_throughput` (connection set-up,
    /// retries and waiting for a free request slot included), then answers
    /// [`CacheError::Timeout`]. Default 1 s; zero is refused; anything above
    /// [`MAX_DURATION`] is saturated to it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound of one connection attempt (TCP and TLS). Default 1 s; zero is
    /// refused.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The slowest transfer the tier waits for, in bytes per second: an
    /// object of `n` bytes gets `n / min_throughput` on top of
    /// [`timeout`](Self::timeout). Default 16 MiB/s (a 136 MB artifact:
    /// about 8 s more). Zero is refused.
    pub fn min_throughput(mut self, bytes_per_second: u64) -> Self {
        self.min_throughput = bytes_per_second;
        self
    }

    /// Consecutive failures (timeouts, connection errors, server errors,
    /// refused credentials) that open the circuit breaker. Default 3; 0
    /// counts as 1.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// How long the open breaker refuses calls before letting one through
    /// as a probe. Default 1 s.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Largest object stored (header + artifact + 32-byte MAC); larger saves
    /// answer [`CacheError::TooLarge`] before any network I/O, and a larger
    /// object found on a load is refused by the size its `GET` announces
    /// (only what was already in flight is transferred), then deleted.
    /// Give every node of a fleet the same limit. Default 1 GiB.
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// Objects of at least this many bytes are uploaded in parts (a
    /// multipart upload, one node of the fleet at a time: see the module
    /// docs); smaller ones in one conditional `PUT`. Default 32 MiB.
    pub fn multipart_threshold(mut self, bytes: u64) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// Bytes of each part of a multipart upload. Default 16 MiB; at least
    /// 5 MiB (S3's smallest part).
    pub fn part_bytes(mut self, bytes: u64) -> Self {
        self.part_bytes = bytes;
        self
    }

    /// Parts of one multipart upload in flight at once. Default 4; 0
    /// counts as 1.
    pub fn upload_concurrency(mut self, parts: usize) -> Self {
        self.upload_concurrency = parts.max(1);
        self
    }

    /// Operations (`load`, `save`, `contains`) in flight at once; more wait
    /// for a slot, within their time bound. Default 16; 0 counts as 1.
    pub fn max_concurrency(mut self, operations: usize) -> Self {
        self.max_concurrency = operations.max(1);
        self
    }

    /// Objects of at least this many bytes are deserialized (and modules of
    /// at least this size serialized and signed) on tokio's blocking pool.
    /// Default 256 KiB; 0 always uses the pool, `u64::MAX` never.
    pub fn blocking_threshold(mut self, bytes: u64) -> Self {
        self.blocking_threshold = bytes;
        self
    }

    fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            setting,
            reason: reason.into(),
        }
    }

    /// Check the settings and make the tier. Does no I/O: the store is
    /// reached on the first operation.
    pub fn build(self) -> Result<ObjectsCache, ConfigError> {
        let signing = match (self.keys.is_empty(), self.insecure) {
            (true, false) => {
                return Err(ConfigError::MissingMacKey {
                    tier: "object-store",
                    env: MAC_KEY_ENV,
                });
            }
            (false, true) => return Err(ConfigError::ConflictingMac),
            (true, true) => Signing::Unkeyed,
            (false, false) => Signing::Keyed(self.keys),
        };
        if self.timeout.is_zero() {
            return Err(Self::invalid("timeout", "must be greater than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Self::invalid(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.min_throughput == 0 {
            return Err(Self::invalid("min_throughput", "must be greater than zero"));
        }
        let overhead = (entry::HEADER_LEN + MAC_LEN) as u64;
        if self.max_entry_bytes <= overhead || self.max_entry_bytes > MAX_OBJECT_BYTES {
            return Err(Self::invalid(
                "max_entry_bytes",
                format!(
                    "{} is outside {}..={MAX_OBJECT_BYTES}",
                    self.max_entry_bytes,
                    overhead + 1
                ),
            ));
        }
        if self.part_bytes < MIN_PART_BYTES || self.part_bytes > MAX_PART_BYTES {
            return Err(Self::invalid(
                "part_bytes",
                format!(
                    "{} is outside {MIN_PART_BYTES}..={MAX_PART_BYTES} (S3's part sizes)",
                    self.part_bytes
                ),
            ));
        }
        if self.max_entry_bytes.div_ceil(self.part_bytes) > MAX_PARTS {
            return Err(Self::invalid(
                "part_bytes",
                format!("max_entry_bytes would need more than {MAX_PARTS} parts"),
            ));
        }
        let timeout = self.timeout.min(MAX_DURATION);
        let connect_timeout = self.connect_timeout.min(MAX_DURATION);
        let probe_interval = self.probe_interval.min(MAX_DURATION);
        // The longest any single request may run: the bound of the largest
        // object. The tier's own deadlines are the real bound; the client's
        // is a backstop that never cuts a transfer the tier still allows.
        let longest = transfer_bound(timeout, self.min_throughput, self.max_entry_bytes);
        let (store, url_prefix, endpoint) = match self.target {
            ObjectsTarget::Store(store, prefix) => {
                let endpoint = store.to_string();
                (store, prefix, endpoint)
            }
            ObjectsTarget::Url(url) => {
                let (store, prefix) =
                    store_from_url(&url, &self.options, timeout, connect_timeout, longest)?;
                (store, prefix, redact(&url))
            }
        };
        let prefix = match self.prefix {
            Some(p) => p,
            None if url_prefix.is_empty() => DEFAULT_PREFIX.to_string(),
            None => url_prefix,
        };
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| {
            Self::invalid("prefix", format!("{prefix:?} is not an object path: {e}"))
        })?;
        Ok(ObjectsCache {
            shared: Arc::new(Shared {
                tier: TierName::intern(&self.tier),
                prefix,
                endpoint,
                store,
                signing,
                timeout,
                min_throughput: self.min_throughput,
                max_entry_bytes: self.max_entry_bytes,
                multipart_threshold: self.multipart_threshold,
                part_bytes: self.part_bytes,
                upload_concurrency: self.upload_concurrency,
                blocking_threshold: self.blocking_threshold,
                slots: tokio::sync::Semaphore::new(self.max_concurrency),
                breaker: Breaker::new(self.failure_threshold, probe_interval),
                observers: Observers::default(),
                reported: Mutex::new(true),
            }),
        })
    }
}

/// `timeout + bytes / min_throughput`, saturated at [`MAX_DURATION`].
pub(super) fn transfer_bound(timeout: Duration, min_throughput: u64, bytes: u64) -> Duration {
    let transfer = Duration::try_from_secs_f64(bytes as f64 / min_throughput.max(1) as f64)
        .unwrap_or(MAX_DURATION);
    timeout.saturating_add(transfer).min(MAX_DURATION)
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The store for `url` (credentials from the environment, then `options`),
/// with the tier's time bounds as the client's, and the URL's path.
fn store_from_url(
    url: &str,
    options: &[(String, String)],
    timeout: Duration,
    connect_timeout: Duration,
    longest: Duration,
) -> Result<(Arc<dyn ObjectStore>, String), ConfigError> {
    use object_store::ObjectStoreScheme as Scheme;
    let shown = redact(url);
    let parsed = url::Url::parse(url).map_err(|e| ConfigError::Target {
        target: shown.clone(),
        reason: e.to_string(),
        source: None,
    })?;
    let (scheme, path) = Scheme::parse(&parsed).map_err(|e| ConfigError::Target {
        target: shown.clone(),
        reason: e.to_string(),
        source: None,
    })?;
    let store_error = |e: object_store::Error| ConfigError::Target {
        target: shown.clone(),
        reason: format!("the object store refused the configuration: {e}"),
        source: Some(Box::new(e)),
    };
    // The client's own bounds: connection set-up, a stalled body, the
    // whole request (a backstop), and few retries within the tier's bound
    // (the breaker paces retrying a dead store, not the client).
    let client = [
        ("connect_timeout", humantime(connect_timeout)),
        ("read_timeout", humantime(timeout)),
        ("timeout", humantime(longest)),
    ];
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: timeout,
        ..RetryConfig::default()
    };
    macro_rules! configure {
        ($builder:expr, $key:ty) => {{
            let mut b = $builder.with_url(url).with_retry(retry);
            for (k, v) in client
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .chain(options.iter().cloned())
            {
                let key: $key =
                    k.to_ascii_lowercase()
                        .parse()
                        .map_err(|_| ConfigError::Invalid {
                            setting: "store_option",
                            reason: format!("unknown option {k:?} for {shown}"),
                        })?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(store_error)?) as Arc<dyn ObjectStore>
        }};
    }
    let store = match scheme {
        Scheme::AmazonS3 => configure!(
            object_store::aws::AmazonS3Builder::from_env(),
            object_store::aws::AmazonS3ConfigKey
        ),
        Scheme::GoogleCloudStorage => configure!(
            object_store::gcp::GoogleCloudStorageBuilder::from_env(),
            object_store::gcp::GoogleConfigKey
        ),
        Scheme::MicrosoftAzure => configure!(
            object_store::azure::MicrosoftAzureBuilder::from_env(),
            object_store::azure::AzureConfigKey
        ),
        Scheme::Local => {
            // The whole URL path is the directory; objects go under the
            // tier's prefix inside it.
            let dir = parsed.to_file_path().map_err(|()| ConfigError::Target {
                target: shown.clone(),
                reason: "not a local path".into(),
                source: None,
            })?;
            std::fs::create_dir_all(&dir).map_err(|e| ConfigError::Target {
                target: shown.clone(),
                reason: format!("cannot create {}: {e}", dir.display()),
                source: None,
            })?;
            let store =
                object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(store_error)?;
            return Ok((Arc::new(store), String::new()));
        }
        Scheme::Memory => {
            return Ok((
                Arc::new(object_store::memory::InMemory::new()),
                path.to_string(),
            ));
        }
        other => {
            return Err(ConfigError::Target {
                target: shown,
                reason: format!("{other:?} is not supported (use s3://, gs://, az://, file://)"),
                source: None,
            });
        }
    };
    Ok((store, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(url: &str) -> ObjectsCacheBuilder {
        ObjectsCache::builder(url).mac_key([1; 32])
    }

    #[test]
    fn a_key_is_required_and_says_why() {
        let e = ObjectsCache::builder("memory:///").build().unwrap_err();
        assert!(matches!(
            e,
            ConfigError::MissingMacKey {
                tier: "object-store",
                ..
            }
        ));
        assert!(e.to_string().contains(MAC_KEY_ENV), "{e}");
        assert!(matches!(
            b("memory:///").insecure_no_mac().build().unwrap_err(),
            ConfigError::ConflictingMac
        ));
    }

    #[test]
    fn settings_are_checked_without_io() {
        assert!(b("memory:///").timeout(Duration::ZERO).build().is_err());
        assert!(b("memory:///").min_throughput(0).build().is_err());
        assert!(b("memory:///").max_entry_bytes(100).build().is_err());
        assert!(b("memory:///").part_bytes(1 << 20).build().is_err());
        assert!(b("not a url").build().is_err());
        assert!(b("ftp://host/x").build().is_err());
        let e = b("s3://bucket/p")
            .store_option("aws_no_such_option", "1")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("aws_no_such_option"), "{e}");
        let tier = b("s3://bucket/some/prefix")
            .store_option("aws_region", "us-east-1")
            .build()
            .unwrap();
        assert_eq!(tier.shared.prefix.as_ref(), "some/prefix");
        let tier = b("s3://bucket")
            .store_option("aws_region", "us-east-1")
            .build()
            .unwrap();
        assert_eq!(tier.shared.prefix.as_ref(), DEFAULT_PREFIX);
        let tier = b("memory:///").prefix("/a/b/").build().unwrap();
        assert_eq!(tier.shared.prefix.as_ref(), "a/b");
    }

    #[test]
    fn urls_never_show_secrets() {
        let shown = redact("s3://user:secret@bucket/p?token=abc");
        assert!(
            !shown.contains("secret") && !shown.contains("abc"),
            "{shown}"
        );
        let t = ObjectsTarget::from("s3://user:secret@bucket/p");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn transfer_bounds_grow_with_size_and_saturate() {
        let t = Duration::from_secs(1);
        assert_eq!(transfer_bound(t, 1 << 20, 0), t);
        assert_eq!(transfer_bound(t, 1 << 20, 4 << 20), Duration::from_secs(5));
        assert_eq!(transfer_bound(MAX_DURATION, 1, u64::MAX), MAX_DURATION);
    }
}
