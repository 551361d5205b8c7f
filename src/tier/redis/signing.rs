//! The MAC that ends every value: keyed BLAKE3 over the Redis key and the
//! entry, under the first of the configured keys, verified under any of
//! them (rotation); or, with `insecure_no_mac`, an unkeyed digest.

use super::*;

/// Domain separation for the unkeyed digest of [`RedisCacheBuilder::insecure_no_mac`].
pub(super) const UNKEYED_CONTEXT: &str = "tierscope 2025 redis tier unkeyed entry digest v1";

pub(super) enum Signing {
    Keyed(Vec<MacKey>),
    Unkeyed,
}

impl Signing {
    pub(super) fn hasher(key: Option<&MacKey>) -> blake3::Hasher {
        match key {
            Some(k) => blake3::Hasher::new_keyed(&k.0),
            None => blake3::Hasher::new_derive_key(UNKEYED_CONTEXT),
        }
    }

    pub(super) fn tag(key: Option<&MacKey>, redis_key: &[u8], entry: &[u8]) -> blake3::Hash {
        let mut h = Self::hasher(key);
        h.update(&(redis_key.len() as u64).to_le_bytes());
        h.update(redis_key);
        h.update(entry);
        h.finalize()
    }

    /// The tag for a new value: under the first key.
    pub(super) fn sign(&self, redis_key: &[u8], entry: &[u8]) -> blake3::Hash {
        match self {
            Signing::Keyed(keys) => Self::tag(keys.first(), redis_key, entry),
            Signing::Unkeyed => Self::tag(None, redis_key, entry),
        }
    }

    /// True when `tag` is valid under any configured key. `blake3::Hash`
    /// compares in constant time.
    pub(super) fn verify(&self, redis_key: &[u8], entry: &[u8], tag: &[u8; MAC_LEN]) -> bool {
        let tag = blake3::Hash::from_bytes(*tag);
        match self {
            Signing::Keyed(keys) => keys
                .iter()
                .any(|k| Self::tag(Some(k), redis_key, entry) == tag),
            Signing::Unkeyed => Self::tag(None, redis_key, entry) == tag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MacKey {
        MacKey::new([b; 32])
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
}
