//! The [`ModuleCache`] trait, its error type and the blanket implementation
//! that lets `Arc<dyn ModuleCache + Send + Sync>` (or `Box`, or `&`) be used
//! wherever a cache is expected.
//!
//! The trait is source-compatible with `wasmer_wasix::runtime::module_cache::ModuleCache`:
//! the same `load`, `contains`, `save` and `with_fallback`, keyed by
//! [`ModuleHash`], answering a miss with [`CacheError::NotFound`].
//! A few provided methods are added so that combinators can tell *which*
//! tier served a hit and tiers can report their evictions; implementations
//! written against wasmer's trait compile unchanged because every addition
//! has a default.

use std::{fmt::Debug, ops::Deref, path::PathBuf, sync::Arc, time::Duration};

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{FallbackCache, observer::TierObserver};

/// A cache for compiled WebAssembly modules.
///
/// ## Deterministic ID
///
/// Every tier in this crate keys entries on the module hash **and** on the
/// engine: tiers holding bytes (disk, Redis) on the engine's
/// [`Engine::deterministic_id()`], so a module compiled under one engine
/// configuration is never served to another; tiers holding live [`Module`]s
/// (memory) on the engine *instance*, because a module's machine code lives
/// in the engine that loaded it and is freed with that engine.
///
/// ## Assumptions
///
/// Implementations can assume that cache keys are unique and that using the
/// same key to load or save will always result in the "same" module, and
/// that [`ModuleCache::load()`] is called far more often than
/// [`ModuleCache::save()`].
///
/// ## Outcomes
///
/// Every call ends in exactly one of three ways: a hit (`Ok`), a miss
/// (`Err(CacheError::NotFound)`), or an error with a [`CacheError::kind`].
#[async_trait::async_trait]
pub trait ModuleCache: Debug {
    /// Load a module based on its hash.
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError>;

    /// Check if a module is present in the cache.
    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError>;

    /// Save a module so it can be retrieved with [`ModuleCache::load()`] at a
    /// later time.
    ///
    /// Implementations may assume the [`Module`] was compiled with `engine`.
    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError>;

    /// Chain a second [`ModuleCache`] that will be used as a fallback if
    /// lookups on the primary cache fail. A hit in the fallback is promoted
    /// into the primary.
    ///
    /// The general assumption is that each subsequent cache in the chain will
    /// be significantly slower than the previous one.
    fn with_fallback<C>(self, other: C) -> FallbackCache<Self, C>
    where
        Self: Sized,
        C: ModuleCache,
    {
        FallbackCache::new(self, other)
    }

    /// Like [`ModuleCache::load()`], but also says which named tier served
    /// the hit, so that a combinator can label the promotion it performs.
    ///
    /// The default calls `load` and names no tier; [`crate::Instrumented`]
    /// names its tier and [`FallbackCache`] passes the name up from below.
    async fn load_traced(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        self.load(key, engine).await.map(|module| Hit {
            module,
            tier: None,
            bytes: None,
        })
    }

    /// A hit this cache can serve at once, without waiting: memory tiers
    /// answer here so that decorators and combinators above them add no
    /// future (and no allocation) to a memory hit.
    ///
    /// `None` means "ask [`ModuleCache::load_traced()`]": a miss, or a tier
    /// that cannot answer synchronously (the default). Implementations must
    /// not count anything for a `None`, since the caller will ask again.
    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        let _ = (key, engine);
        None
    }

    /// Store a module that was found in a lower tier (`from`, when known).
    ///
    /// The default is a plain [`ModuleCache::save()`]; the spy decorator
    /// overrides it to count the promotion.
    async fn promote(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        from: Option<TierName>,
    ) -> Result<(), CacheError> {
        let _ = from;
        self.save(key, engine, module).await
    }

    /// Attach an observer that receives this tier's evictions and resident
    /// size. Tiers without such events ignore it (the default).
    ///
    /// Combinators forward the call to the tier it belongs to: a
    /// [`FallbackCache`] gives it to its primary only.
    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        let _ = observer;
    }

    /// The names of the named tiers in this cache, fastest first (see
    /// [`crate::Instrumented`]). Empty for an unnamed tier (the default).
    fn tier_names(&self) -> Vec<TierName> {
        Vec::new()
    }

    /// Called once when this cache becomes the primary of a
    /// [`FallbackCache`], with the names of the tiers below it: the spy
    /// registers its promotion counters for them up front (with the
    /// recorder installed at construction). The default ignores it.
    fn expect_promotions_from(&self, lower: &[TierName]) {
        let _ = lower;
    }

    /// Drop every in-process entry whose machine code belongs to `engine`.
    ///
    /// Called when an engine is retired (see [`crate::EngineGenerations`]):
    /// its modules must not take capacity any more, and the engine can only
    /// be freed once nothing holds them. Tiers that hold bytes, not code
    /// (disk, Redis), ignore it (the default); combinators forward it to
    /// every tier. Returns the keys of the entries dropped, so the caller
    /// can warm them up again under a newer engine.
    fn forget_engine(&self, engine: &Engine) -> Vec<ModuleHash> {
        let _ = engine;
        Vec::new()
    }
}

#[async_trait::async_trait]
impl<D, C> ModuleCache for D
where
    D: Deref<Target = C> + Debug + Send + Sync,
    C: ModuleCache + Send + Sync + ?Sized,
{
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        (**self).load(key, engine).await
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        (**self).contains(key, engine).await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        (**self).save(key, engine, module).await
    }

    async fn load_traced(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        (**self).load_traced(key, engine).await
    }

    async fn promote(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
        from: Option<TierName>,
    ) -> Result<(), CacheError> {
        (**self).promote(key, engine, module, from).await
    }

    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        (**self).load_now(key, engine)
    }

    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        (**self).attach_observer(observer)
    }

    fn tier_names(&self) -> Vec<TierName> {
        (**self).tier_names()
    }

    fn expect_promotions_from(&self, lower: &[TierName]) {
        (**self).expect_promotions_from(lower)
    }

    fn forget_engine(&self, engine: &Engine) -> Vec<ModuleHash> {
        (**self).forget_engine(engine)
    }
}

/// The user's name for one tier (e.g. `memory`, `disk`, `redis`).
///
/// Interned: each distinct name is stored once for the life of the process
/// (names come from configuration, so there are few), which makes a
/// `TierName` a copyable pointer. A memory hit carries one without touching
/// a reference count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierName(&'static str);

impl TierName {
    /// The interned name for `name`.
    pub fn intern(name: &str) -> TierName {
        static NAMES: std::sync::OnceLock<
            parking_lot::Mutex<std::collections::HashSet<&'static str>>,
        > = std::sync::OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock();
        if let Some(known) = names.get(name) {
            return TierName(known);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(leaked);
        TierName(leaked)
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for TierName {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl std::fmt::Display for TierName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Debug for TierName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)
    }
}

/// A successful [`ModuleCache::load_traced()`]: the module and, when known,
/// the name of the tier that held it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The module that was found.
    pub module: Module,
    /// The tier that served it, if that tier is named.
    pub tier: Option<TierName>,
    /// Serialized artifact bytes of the module, when the tier knows them.
    pub bytes: Option<u64>,
}

/// Why an entry was judged corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// Fewer bytes than the header announces, or than a header needs.
    #[error("truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        actual: u64,
        /// Bytes required.
        expected: u64,
    },
    /// More bytes than the header announces.
    #[error("trailing bytes: {actual} bytes, expected {expected}")]
    TrailingBytes {
        /// Bytes present.
        actual: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The file does not start with tierscope's magic number.
    #[error("bad magic number (not a tierscope entry)")]
    BadMagic,
    /// Written by another version of tierscope's entry format.
    #[error("entry format version {found}, this build reads {expected}")]
    FormatVersion {
        /// Version in the entry.
        found: u16,
        /// Version this build writes and reads.
        expected: u16,
    },
    /// Written under another engine configuration or wasmer version.
    #[error("written by another engine configuration or wasmer version")]
    ForeignEngine,
    /// The entry holds another module than the key asks for.
    #[error("entry belongs to another module hash")]
    WrongKey,
    /// The artifact's checksum does not match the header.
    #[error("checksum mismatch")]
    Checksum,
    /// Not a regular file (a FIFO, a device, a socket, a directory or a
    /// symbolic link): never opened for reading nor followed.
    #[error("not a regular file")]
    NotARegularFile,
    /// Larger than the tier accepts: refused before being read.
    #[error("{actual} bytes, above the {limit}-byte limit")]
    Oversized {
        /// Bytes present.
        actual: u64,
        /// The tier's limit.
        limit: u64,
    },
}

/// Possible errors that may occur during [`ModuleCache`] operations.
///
/// The first six variants are wasmer-wasix's; the rest let operators tell
/// apart what matters in production. [`CacheError::kind`] gives the bounded
/// label used in metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Serializing a module to bytes failed.
    #[error("unable to serialize the module")]
    Serialize(#[from] wasmer::SerializeError),
    /// Deserializing a verified artifact failed.
    #[error("unable to deserialize the module")]
    Deserialize(#[from] wasmer::DeserializeError),
    /// Reading a file failed.
    #[error("unable to read from \"{}\"", path.display())]
    FileRead {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// Writing a file failed.
    #[error("unable to write to \"{}\"", path.display())]
    FileWrite {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// The item was not found: a miss.
    #[error("not found")]
    NotFound,
    /// A stored entry failed its structural checks (magic, version, length,
    /// checksum) and was not deserialized.
    #[error("corrupt cache entry at {location}: {reason}")]
    Corrupt {
        /// Where the entry was (a path, or a tier and key).
        location: String,
        /// What check failed.
        reason: Corruption,
    },
    /// An entry from a shared tier failed its keyed MAC: tampered, truncated,
    /// or signed with a key this process does not hold. Never deserialized.
    #[error("integrity check failed for {location}: {reason}")]
    Integrity {
        /// Where the entry was.
        location: String,
        /// What check failed.
        reason: String,
    },
    /// An operation took longer than its bound.
    #[error("{op} on tier {tier} timed out after {after:?}")]
    Timeout {
        /// The operation (`load`, `save`, `contains`).
        op: &'static str,
        /// The tier.
        tier: String,
        /// The bound that passed.
        after: Duration,
    },
    /// A tier cannot be reached (connection refused, circuit breaker open,
    /// authentication failed).
    #[error("tier {tier} is unavailable: {reason}")]
    Unavailable {
        /// The tier.
        tier: String,
        /// Why.
        reason: String,
    },
    /// An entry is larger than the tier accepts.
    #[error("entry of {size} bytes exceeds the {limit}-byte limit of tier {tier}")]
    TooLarge {
        /// The tier.
        tier: String,
        /// Bytes of the entry.
        size: u64,
        /// Largest entry the tier accepts.
        limit: u64,
    },
    /// A catch-all variant for any other errors that may occur.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl CacheError {
    /// Wrap any error as [`CacheError::Other`].
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        CacheError::Other(Box::new(error))
    }

    /// The bounded class of this error, as used for the `kind` label.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CacheError::Serialize(_) => ErrorKind::Serialize,
            CacheError::Deserialize(_) => ErrorKind::Deserialize,
            CacheError::FileRead { .. } | CacheError::FileWrite { .. } => ErrorKind::Io,
            CacheError::NotFound => ErrorKind::NotFound,
            CacheError::Corrupt { .. } => ErrorKind::Corrupt,
            CacheError::Integrity { .. } => ErrorKind::Integrity,
            CacheError::Timeout { .. } => ErrorKind::Timeout,
            CacheError::Unavailable { .. } => ErrorKind::Unavailable,
            CacheError::TooLarge { .. } | CacheError::Other(_) => ErrorKind::Other,
        }
    }

    /// True for a miss ([`CacheError::NotFound`]).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CacheError::NotFound)
    }
}

/// The class of a [`CacheError`]: the `kind` label of
/// `tierscope_errors_total`. `NotFound` is a miss and is never counted as an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// File or socket I/O failed.
    Io,
    /// An entry failed its checksum or structural checks.
    Corrupt,
    /// An entry failed its keyed MAC.
    Integrity,
    /// wasmer refused to deserialize an artifact.
    Deserialize,
    /// wasmer could not serialize a module.
    Serialize,
    /// An operation passed its time bound.
    Timeout,
    /// A tier could not be reached.
    Unavailable,
    /// Anything else.
    Other,
    /// A miss, not an error.
    NotFound,
}

impl ErrorKind {
    /// Every kind that is counted as an error, in label order.
    pub const ERRORS: [ErrorKind; 8] = [
        ErrorKind::Io,
        ErrorKind::Corrupt,
        ErrorKind::Integrity,
        ErrorKind::Deserialize,
        ErrorKind::Serialize,
        ErrorKind::Timeout,
        ErrorKind::Unavailable,
        ErrorKind::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Deserialize => "deserialize",
            ErrorKind::Serialize => "serialize",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Other => "other",
            ErrorKind::NotFound => "not_found",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_object_safe() {
        let _: Option<Box<dyn ModuleCache>> = None;
        let _: Option<Arc<dyn ModuleCache + Send + Sync>> = None;
    }

    #[test]
    fn key_is_displayed_as_hex() {
        let key = ModuleHash::from_bytes(std::array::from_fn(|i| i as u8));
        assert_eq!(
            key.to_string(),
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
        );
    }

    #[test]
    fn every_error_kind_has_a_distinct_label() {
        let mut labels: Vec<_> = ErrorKind::ERRORS.iter().map(|k| k.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ERRORS.len());
        assert!(!labels.contains(&"not_found"));
    }

    #[test]
    fn errors_name_where_they_happened() {
        let e = CacheError::Corrupt {
            location: "/tmp/x/ABCD.bin".into(),
            reason: Corruption::Checksum,
        };
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(
            e.to_string(),
            "corrupt cache entry at /tmp/x/ABCD.bin: checksum mismatch"
        );
        let t = CacheError::Timeout {
            op: "load",
            tier: "redis".into(),
            after: Duration::from_millis(250),
        };
        assert_eq!(t.kind(), ErrorKind::Timeout);
        assert!(t.to_string().contains("load on tier redis timed out"));
    }
}
