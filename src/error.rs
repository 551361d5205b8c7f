//! Errors of [`ModuleCache`](crate::ModuleCache) operations: [`CacheError`],
//! its bounded class [`CacheErrorKind`] (the `kind` metric label), and the typed
//! reasons an entry is refused.

use std::{path::PathBuf, time::Duration};

use crate::TierName;

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

/// Why an entry failed its integrity check ([`CacheError::Integrity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityFailure {
    /// The keyed MAC does not match the bytes.
    #[error(
        "MAC mismatch ({bytes} bytes): the entry was tampered with, truncated, copied from \
         another key, written unsigned, or signed with a key this process does not hold"
    )]
    MacMismatch {
        /// Bytes of the entry as stored.
        bytes: u64,
    },
    /// Without a MAC key (`insecure_no_mac`), the entry's digest does not
    /// match its bytes.
    #[error(
        "digest mismatch ({bytes} bytes): the entry was corrupted, truncated, copied from \
         another key, or signed with a MAC key (this process runs without one)"
    )]
    DigestMismatch {
        /// Bytes of the entry as stored.
        bytes: u64,
    },
    /// Too short to hold its MAC.
    #[error("value of {bytes} bytes is shorter than its {mac_len}-byte MAC")]
    ShorterThanMac {
        /// Bytes of the entry as stored.
        bytes: u64,
        /// Bytes of the MAC.
        mac_len: u64,
    },
    /// Larger than the tier's limit: refused by its size, without reading
    /// more than its first bytes.
    #[error(
        "value of {bytes} bytes exceeds max_entry_bytes ({limit} bytes): refused by its size, \
         without reading more than its first {read} bytes"
    )]
    Oversized {
        /// Bytes of the entry as stored.
        bytes: u64,
        /// The tier's limit.
        limit: u64,
        /// Bytes read before refusing it.
        read: u64,
    },
}

/// Why a tier cannot be reached ([`CacheError::Unavailable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailability {
    /// The circuit breaker is open: calls fail fast until its next probe.
    #[error(
        "{}circuit breaker open (last failure: {last_failure}); {next}",
        server_prefix(server)
    )]
    CircuitOpen {
        /// The server (a cluster master) whose breaker is open, when the
        /// tier has one per server.
        server: Option<String>,
        /// What made it open.
        last_failure: String,
        /// When it lets the next call through (e.g. "next probe in 20 ms").
        next: String,
    },
    /// The connection was refused.
    #[error("connection refused ({endpoint}): {detail}")]
    ConnectionRefused {
        /// The address.
        endpoint: String,
        /// The client's words.
        detail: String,
    },
    /// The connection failed or broke.
    #[error("connection failed ({endpoint}): {detail}")]
    ConnectionFailed {
        /// The address.
        endpoint: String,
        /// The client's words.
        detail: String,
    },
    /// Authentication failed: a wrong or missing password.
    #[error("authentication failed ({endpoint}): {detail}")]
    AuthenticationFailed {
        /// The address.
        endpoint: String,
        /// The client's words.
        detail: String,
    },
    /// The server's access control list forbids a command.
    #[error("not permitted by the server's ACL ({endpoint}): {detail}")]
    NotPermitted {
        /// The address.
        endpoint: String,
        /// The client's words.
        detail: String,
    },
    /// The server answers but is not ready (loading, cluster down, a
    /// failover under way).
    #[error("server not ready ({endpoint}): {detail}")]
    NotReady {
        /// The address.
        endpoint: String,
        /// The client's words.
        detail: String,
    },
    /// The client's configuration is invalid.
    #[error("invalid client configuration ({endpoint}): {detail}")]
    InvalidConfiguration {
        /// The address.
        endpoint: String,
        /// The client's words.
        detail: String,
    },
}

fn server_prefix(server: &Option<String>) -> String {
    server
        .as_ref()
        .map_or_else(String::new, |s| format!("master {s}: "))
}

/// Possible errors that may occur during [`ModuleCache`](crate::ModuleCache) operations.
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
    /// An entry failed its keyed MAC (or, without a key, its digest):
    /// tampered, truncated, or signed with a key this process does not
    /// hold. Never deserialized.
    #[error("integrity check failed for {location}: {reason}")]
    Integrity {
        /// Where the entry was.
        location: String,
        /// What check failed.
        reason: IntegrityFailure,
    },
    /// An operation took longer than its bound.
    #[error("{op} on tier {tier} timed out after {after:?}")]
    Timeout {
        /// The operation (`load`, `save`, `contains`).
        op: &'static str,
        /// The tier.
        tier: TierName,
        /// The bound that passed.
        after: Duration,
    },
    /// A tier cannot be reached (connection refused, circuit breaker open,
    /// authentication failed).
    #[error("tier {tier} is unavailable: {reason}")]
    Unavailable {
        /// The tier.
        tier: TierName,
        /// Why.
        reason: Unavailability,
    },
    /// An entry is larger than the tier accepts.
    #[error("entry of {size} bytes exceeds the {limit}-byte limit of tier {tier}")]
    TooLarge {
        /// The tier.
        tier: TierName,
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
    pub fn kind(&self) -> CacheErrorKind {
        match self {
            CacheError::Serialize(_) => CacheErrorKind::Serialize,
            CacheError::Deserialize(_) => CacheErrorKind::Deserialize,
            CacheError::FileRead { .. } | CacheError::FileWrite { .. } => CacheErrorKind::Io,
            CacheError::NotFound => CacheErrorKind::NotFound,
            CacheError::Corrupt { .. } => CacheErrorKind::Corrupt,
            CacheError::Integrity { .. } => CacheErrorKind::Integrity,
            CacheError::Timeout { .. } => CacheErrorKind::Timeout,
            CacheError::Unavailable { .. } => CacheErrorKind::Unavailable,
            CacheError::TooLarge { .. } | CacheError::Other(_) => CacheErrorKind::Other,
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
pub enum CacheErrorKind {
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

impl CacheErrorKind {
    /// Every kind that is counted as an error, in label order.
    pub const ERRORS: [CacheErrorKind; 8] = [
        CacheErrorKind::Io,
        CacheErrorKind::Corrupt,
        CacheErrorKind::Integrity,
        CacheErrorKind::Deserialize,
        CacheErrorKind::Serialize,
        CacheErrorKind::Timeout,
        CacheErrorKind::Unavailable,
        CacheErrorKind::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheErrorKind::Io => "io",
            CacheErrorKind::Corrupt => "corrupt",
            CacheErrorKind::Integrity => "integrity",
            CacheErrorKind::Deserialize => "deserialize",
            CacheErrorKind::Serialize => "serialize",
            CacheErrorKind::Timeout => "timeout",
            CacheErrorKind::Unavailable => "unavailable",
            CacheErrorKind::Other => "other",
            CacheErrorKind::NotFound => "not_found",
        }
    }
}

impl std::fmt::Display for CacheErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_error_kind_has_a_distinct_label() {
        let mut labels: Vec<_> = CacheErrorKind::ERRORS.iter().map(|k| k.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), CacheErrorKind::ERRORS.len());
        assert!(!labels.contains(&"not_found"));
    }

    #[test]
    fn errors_name_where_they_happened() {
        let e = CacheError::Corrupt {
            location: "/tmp/x/ABCD.bin".into(),
            reason: Corruption::Checksum,
        };
        assert_eq!(e.kind(), CacheErrorKind::Corrupt);
        assert_eq!(
            e.to_string(),
            "corrupt cache entry at /tmp/x/ABCD.bin: checksum mismatch"
        );
        let t = CacheError::Timeout {
            op: "load",
            tier: TierName::intern("redis"),
            after: Duration::from_millis(250),
        };
        assert_eq!(t.kind(), CacheErrorKind::Timeout);
        assert!(t.to_string().contains("load on tier redis timed out"));
    }
}

/// A configuration a builder (or [`MacKey`](crate::MacKey)) refused: one
/// type for every tier's builder and for MAC keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A shared tier was built with neither a MAC key nor the explicit
    /// opt-out.
    #[error(
        "the {tier} tier needs a MAC key: what a shared tier holds becomes executable code on \
         every node that loads it, so each value is signed and verified. Set one with `mac_key` \
         or `mac_keys_from_env` ({env}=<64 hex digits>, the same on every node), or, for a \
         trusted test set-up only, call `insecure_no_mac()`"
    )]
    MissingMacKey {
        /// The tier's kind: `Redis`, `object-store`.
        tier: &'static str,
        /// The environment variable `mac_keys_from_env` reads.
        env: &'static str,
    },
    /// Both MAC keys and `insecure_no_mac()` were given.
    #[error("`insecure_no_mac()` was called although MAC keys were given: choose one")]
    ConflictingMac,
    /// A MAC key (or list of keys) is malformed.
    #[error("invalid MAC key: {reason}")]
    BadMacKey {
        /// What was wrong.
        reason: String,
    },
    /// The MAC key environment variable is missing or invalid.
    #[error(
        "cannot read MAC keys from ${var}: {reason} (expected 64 hex digits per key, comma-separated, signing key first)"
    )]
    MacKeyEnv {
        /// The variable.
        var: String,
        /// What was wrong.
        reason: String,
    },
    /// The target (a URL, a client's configuration) is not one the tier
    /// can reach.
    #[error("invalid target {target}: {reason}")]
    Target {
        /// The URL, without its query or password (which may hold
        /// secrets), or the kind of target.
        target: String,
        /// What was wrong.
        reason: String,
        /// The client crate's error, if it gave one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The builder method.
        setting: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl From<ConfigError> for CacheError {
    fn from(e: ConfigError) -> Self {
        CacheError::other(e)
    }
}
