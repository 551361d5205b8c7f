//! Keyed MACs over cache entries (BLAKE3 keyed hash), shared by the tiers
//! whose storage other parties can write: the Redis tier (always, see
//! `tier::redis`, feature `redis`) and the disk tier in a shared directory
//! ([`crate::FileSystemCacheBuilder::mac_key`]).
//!
//! An artifact is machine code that `Module::deserialize` maps as executable
//! without being able to check it; a checksum only catches accidents, since
//! whoever forges an entry can compute it. A MAC under a 32-byte key that
//! only the operator's processes hold can be computed by nobody else. Tags
//! are compared in constant time (`blake3::Hash`'s equality).
//!
//! Several keys may be configured for rotation: entries are signed with the
//! first and accepted under any.

use std::fmt;

use crate::error::ConfigError;

/// Bytes of a MAC tag.
pub const MAC_LEN: usize = 32;

/// A 32-byte key for entries' MAC. Its `Debug` shows a fingerprint, never
/// the key.
#[derive(Clone)]
pub struct MacKey(pub(crate) [u8; 32]);

impl MacKey {
    /// A key from its bytes. Generate one with a CSPRNG, e.g.
    /// `openssl rand -hex 32`.
    pub fn new(bytes: [u8; 32]) -> Self {
        MacKey(bytes)
    }

    /// A key from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(hex_digits: &str) -> Result<Self, ConfigError> {
        let digits = hex_digits.trim();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|e| ConfigError::BadMacKey {
            reason: format!(
                "expected 64 hex digits (32 bytes), got {} characters: {e}",
                digits.len()
            ),
        })?;
        Ok(MacKey(bytes))
    }

    /// The keys listed in environment variable `var`: 64 hex digits each,
    /// separated by commas, the signing key first.
    pub fn list_from_env(var: &str) -> Result<Vec<MacKey>, ConfigError> {
        let env_error = |reason: String| ConfigError::MacKeyEnv {
            var: var.to_string(),
            reason,
        };
        let value = std::env::var(var).map_err(|e| env_error(e.to_string()))?;
        MacKey::list_from_str(&value).map_err(|e| env_error(e.to_string()))
    }

    /// The keys in `list`: 64 hex digits each, separated by commas, the
    /// signing key first.
    pub fn list_from_str(list: &str) -> Result<Vec<MacKey>, ConfigError> {
        let keys = list
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(MacKey::from_hex)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(ConfigError::BadMacKey {
                reason: "the list holds no key".into(),
            });
        }
        Ok(keys)
    }

    /// A short public fingerprint (first 4 bytes of the key's BLAKE3 hash,
    /// in hex) to compare configurations without showing the key.
    pub fn fingerprint(&self) -> String {
        hex::encode(&blake3::hash(&self.0).as_bytes()[..4])
    }

    /// The keyed hash of `parts`, each prefixed with its length (so the
    /// boundaries between parts are bound too).
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for part in parts {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    }
}

impl From<[u8; 32]> for MacKey {
    fn from(bytes: [u8; 32]) -> Self {
        MacKey(bytes)
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacKey(fingerprint {})", self.fingerprint())
    }
}

/// Signs with the first key, accepts any: for rotation.
#[derive(Clone)]
pub(crate) struct KeyRing {
    keys: Vec<MacKey>,
}

impl KeyRing {
    /// `None` without keys.
    pub(crate) fn new(keys: Vec<MacKey>) -> Option<Self> {
        if keys.is_empty() {
            None
        } else {
            Some(KeyRing { keys })
        }
    }

    /// The tag under the signing (first) key.
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        *self.keys[0].tag(parts).as_bytes()
    }

    /// True when `tag` is valid under any key, compared in constant time.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8; MAC_LEN]) -> bool {
        let tag = blake3::Hash::from_bytes(*tag);
        self.keys.iter().any(|k| k.tag(parts) == tag)
    }

    /// The keys' fingerprints.
    pub(crate) fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(MacKey::fingerprint).collect()
    }
}

/// Domain separation for the disk tier's entry MAC.
const DISK_DOMAIN: &[u8] = b"tierscope disk entry mac v1";

impl KeyRing {
    /// The disk tier's tag of an entry: over a domain, the entry's relative
    /// path (namespace and key), its header with the MAC field zeroed
    /// (`header` is passed so), and the artifact.
    pub(crate) fn sign_disk_entry(
        &self,
        rel: &str,
        header: &[u8; crate::entry::HEADER_LEN],
        artifact: &[u8],
    ) -> [u8; MAC_LEN] {
        self.sign(&[DISK_DOMAIN, rel.as_bytes(), header, artifact])
    }

    /// Whether `data`, a whole disk entry at `rel`, carries a valid tag
    /// in its header's MAC field (see [`KeyRing::sign_disk_entry`]).
    pub(crate) fn verify_disk_entry(&self, rel: &str, data: &[u8]) -> bool {
        use crate::entry::{HEADER_LEN, MAC_RANGE};
        let Some((head, artifact)) = data.split_at_checked(HEADER_LEN) else {
            return false;
        };
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(head);
        let mut tag = [0u8; MAC_LEN];
        tag.copy_from_slice(&header[MAC_RANGE]);
        header[MAC_RANGE].fill(0);
        self.verify(&[DISK_DOMAIN, rel.as_bytes(), &header, artifact], &tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_never_show() {
        let hex = format!("{}ff", "00".repeat(31));
        let k = MacKey::from_hex(&hex).unwrap();
        assert_eq!(k.0[31], 0xff);
        assert!(!format!("{k:?}").contains(&hex));
        assert!(MacKey::from_hex("abcd").is_err());
        assert!(MacKey::list_from_str(" , ").is_err());
        let e = MacKey::list_from_env("TIERSCOPE_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(
            e.to_string()
                .contains("$TIERSCOPE_TEST_SURELY_UNSET_VARIABLE")
        );
    }

    #[test]
    fn a_ring_signs_with_the_first_and_accepts_any() {
        let (a, b) = (MacKey::new([1; 32]), MacKey::new([2; 32]));
        let old = KeyRing::new(vec![b.clone()]).unwrap();
        let ring = KeyRing::new(vec![a, b]).unwrap();
        let parts: &[&[u8]] = &[b"path", b"entry"];
        assert!(ring.verify(parts, &old.sign(parts)));
        assert!(!old.verify(parts, &ring.sign(parts)));
        // Boundaries are bound: moving a byte between parts changes the tag.
        assert!(!ring.verify(&[b"pat", b"hentry"], &ring.sign(parts)));
        assert!(KeyRing::new(Vec::new()).is_none());
    }
}
