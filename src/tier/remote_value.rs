//! The value format of the remote tiers (Redis, object store), their
//! signing, and opening a value: the remote tiers' only `unsafe`.
//!
//! ```text
//! value  offset  size  field
//!             0   128  entry header (see crate::entry)
//!           128     n  the artifact (Module::serialize() output)
//!       128 + n    32  BLAKE3 keyed MAC over (u64 LE length of the storage
//!                      key, the storage key, header, artifact)
//! ```
//!
//! The storage key is the Redis key or the object's path: a valid value
//! copied under another key fails its MAC. The MAC is checked (in constant
//! time) before the header is parsed, and both before wasmer sees a byte.
//! Values are signed with the first configured key and accepted under any
//! (rotation); without a key (`insecure_no_mac`) an unkeyed BLAKE3 digest
//! takes the MAC's place.
//!
//! A value may be checked whole ([`Signing::authenticate`]) or as it
//! arrives ([`Signing::verifier`], so a large object is hashed while the
//! network delivers it). Either way the proof is an [`Authenticated`]
//! value, the only thing [`open`] accepts; its bytes must start on an
//! [`ARTIFACT_ALIGN`](crate::aligned::ARTIFACT_ALIGN) boundary (an
//! [`AlignedBuf`](crate::aligned::AlignedBuf)), which a debug assertion
//! checks before `Module::deserialize`.

use bytes::Bytes;
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    aligned,
    cache::{CacheError, Corruption, IntegrityFailure},
    engine::EngineIdent,
    entry,
    mac::MacKey,
};

/// Bytes of the MAC that ends every value.
pub(crate) const MAC_LEN: usize = crate::mac::MAC_LEN;

/// Domain separation for the unkeyed digest of `insecure_no_mac`. (Its
/// text names the Redis tier, where it was first used: changing it would
/// refuse every unsigned value already stored.)
pub(crate) const UNKEYED_CONTEXT: &str = "tierscope 2025 redis tier unkeyed entry digest v1";

/// How values are signed and verified.
pub(crate) enum Signing {
    /// BLAKE3 keyed MAC: sign with the first key, accept any.
    Keyed(Vec<MacKey>),
    /// An unkeyed BLAKE3 digest (`insecure_no_mac`).
    Unkeyed,
}

impl Signing {
    /// The keys' fingerprints, for `Debug` output (never the keys).
    pub(crate) fn fingerprints(&self) -> Vec<String> {
        match self {
            Signing::Keyed(keys) => keys.iter().map(MacKey::fingerprint).collect(),
            Signing::Unkeyed => vec!["INSECURE: unkeyed".into()],
        }
    }
}

/// Why a value was refused before (or by) wasmer.
pub(crate) enum Rejected {
    Integrity(IntegrityFailure),
    Corrupt(Corruption),
    Deserialize(wasmer::DeserializeError),
}

impl Rejected {
    /// The error a tier answers, naming where the value was.
    pub(crate) fn into_error(self, location: String) -> CacheError {
        match self {
            Rejected::Integrity(reason) => CacheError::Integrity { location, reason },
            Rejected::Corrupt(reason) => CacheError::Corrupt { location, reason },
            Rejected::Deserialize(e) => CacheError::Deserialize(e),
        }
    }
}

/// A value whose MAC was verified: the entry (header and artifact) and
/// nothing else. Only [`Signing::authenticate`] and [`Verifier::finish`]
/// make one.
pub(crate) struct Authenticated {
    entry: Bytes,
}

impl Signing {
    fn hasher(key: Option<&MacKey>, storage_key: &[u8]) -> blake3::Hasher {
        let mut h = match key {
            Some(k) => blake3::Hasher::new_keyed(&k.0),
            None => blake3::Hasher::new_derive_key(UNKEYED_CONTEXT),
        };
        h.update(&(storage_key.len() as u64).to_le_bytes());
        h.update(storage_key);
        h
    }

    fn tag(key: Option<&MacKey>, storage_key: &[u8], entry: &[&[u8]]) -> blake3::Hash {
        let mut h = Self::hasher(key, storage_key);
        for part in entry {
            h.update(part);
        }
        h.finalize()
    }

    /// The tag for a new value whose entry is the concatenation of
    /// `entry`'s parts: under the first key.
    pub(crate) fn sign(&self, storage_key: &[u8], entry: &[&[u8]]) -> [u8; MAC_LEN] {
        let key = match self {
            Signing::Keyed(keys) => keys.first(),
            Signing::Unkeyed => None,
        };
        *Self::tag(key, storage_key, entry).as_bytes()
    }

    /// True when `tag` is valid under any configured key.
    #[cfg(test)]
    fn verify(&self, storage_key: &[u8], entry: &[u8], tag: &[u8; MAC_LEN]) -> bool {
        let mut verifier = self.verifier(storage_key);
        verifier.update(entry);
        verifier.matches(tag)
    }

    /// Check a whole value's MAC; the entry it carries on success.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn authenticate(
        &self,
        storage_key: &[u8],
        value: Bytes,
    ) -> Result<Authenticated, Rejected> {
        let entry_len = entry_len(value.len() as u64)? as usize;
        let mut verifier = self.verifier(storage_key);
        verifier.update(&value[..entry_len]);
        let tag: &[u8; MAC_LEN] = value[entry_len..].try_into().expect("MAC_LEN bytes");
        verifier.finish(value.slice(..entry_len), tag)
    }

    /// A MAC check fed as the value arrives: [`Verifier::update`] with the
    /// entry's bytes, in order, then [`Verifier::finish`] with the tag.
    pub(crate) fn verifier(&self, storage_key: &[u8]) -> Verifier {
        let hashers = match self {
            Signing::Keyed(keys) => keys
                .iter()
                .map(|k| Self::hasher(Some(k), storage_key))
                .collect(),
            Signing::Unkeyed => vec![Self::hasher(None, storage_key)],
        };
        Verifier {
            hashers,
            keyed: matches!(self, Signing::Keyed(_)),
            bytes: 0,
        }
    }
}

/// The length of the entry in a value of `value_len` bytes, or why there
/// is none.
pub(crate) fn entry_len(value_len: u64) -> Result<u64, Rejected> {
    value_len
        .checked_sub(MAC_LEN as u64)
        .ok_or(Rejected::Integrity(IntegrityFailure::ShorterThanMac {
            bytes: value_len,
            mac_len: MAC_LEN as u64,
        }))
}

/// A MAC check in progress (one hasher per accepted key).
pub(crate) struct Verifier {
    hashers: Vec<blake3::Hasher>,
    keyed: bool,
    bytes: u64,
}

impl Verifier {
    /// Feed the next bytes of the entry.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for h in &mut self.hashers {
            h.update(bytes);
        }
        self.bytes += bytes.len() as u64;
    }

    fn matches(&self, tag: &[u8; MAC_LEN]) -> bool {
        let tag = blake3::Hash::from_bytes(*tag);
        // Every hasher is finalized: the time does not depend on which key
        // matched. `blake3::Hash` compares in constant time.
        self.hashers
            .iter()
            .fold(false, |ok, h| (h.finalize() == tag) | ok)
    }

    /// The verdict: `entry` (exactly the bytes fed) as [`Authenticated`]
    /// when `tag` is valid under any key.
    pub(crate) fn finish(
        self,
        entry: Bytes,
        tag: &[u8; MAC_LEN],
    ) -> Result<Authenticated, Rejected> {
        debug_assert_eq!(entry.len() as u64, self.bytes);
        if entry.len() as u64 == self.bytes && self.matches(tag) {
            return Ok(Authenticated { entry });
        }
        let bytes = self.bytes + MAC_LEN as u64;
        Err(Rejected::Integrity(if self.keyed {
            IntegrityFailure::MacMismatch { bytes }
        } else {
            IntegrityFailure::DigestMismatch { bytes }
        }))
    }
}

/// Check an authenticated entry's header and deserialize its artifact.
/// Returns the module and the artifact length.
pub(crate) fn open(
    value: Authenticated,
    key: &ModuleHash,
    ident: &EngineIdent,
    engine: &Engine,
) -> Result<(Module, u64), Rejected> {
    let entry_bytes = value.entry;
    // The BLAKE3 hash already verified covers every byte of the entry: the
    // header's own checksum would only repeat it.
    let range = entry::decode_authenticated(&entry_bytes, key, ident).map_err(Rejected::Corrupt)?;
    let artifact_len = (range.end - range.start) as u64;
    let artifact = entry_bytes.slice(range);
    debug_assert!(
        aligned::is_aligned(&artifact),
        "a remote value must arrive in an AlignedBuf"
    );
    // SAFETY: `Module::deserialize` requires bytes that this wasmer
    // serialized for this engine's configuration, starting at the alignment
    // its archive needs. Integrity: `value` is `Authenticated`, so its
    // BLAKE3 keyed MAC was verified (constant-time) under a key only the
    // operator's nodes hold, over this exact storage key (which names the
    // engine namespace and module hash) and the whole entry: the bytes were
    // written by one of those nodes. Then `entry::decode_authenticated`
    // verified our magic and format version, that the entry was written for
    // this module hash under this engine configuration and wasmer version,
    // and its exact length (the XXH3 checksum is skipped: the hash above
    // already covers every byte). (Under `insecure_no_mac` the digest is
    // unkeyed and the operator has accepted that whoever writes to the
    // store is trusted.) Alignment: wasmer 7.4.2 ends in
    // `rkyv::access_unchecked` on the metadata 32 bytes into the artifact,
    // which must sit at `MetadataHeader::ALIGN` = 16 bytes (see
    // `crate::aligned`); the remote tiers read every value into an
    // `AlignedBuf` (16-byte aligned by construction) and the artifact
    // starts `entry::HEADER_LEN` = 128 bytes into it, so it is 16-byte
    // aligned, as the debug assertion above checks.
    #[allow(unsafe_code)]
    let module = unsafe { Module::deserialize(engine, artifact) };
    if module.is_ok() {
        crate::engine::note_code_loaded(engine, artifact_len);
    }
    module
        .map(|m| (m, artifact_len))
        .map_err(Rejected::Deserialize)
}

/// A new value, in three parts so that a large artifact is never copied:
/// write `header`, `artifact`, `tag` one after the other.
pub(crate) struct ValueParts {
    pub(crate) header: [u8; entry::HEADER_LEN],
    pub(crate) artifact: Bytes,
    pub(crate) tag: [u8; MAC_LEN],
}

impl ValueParts {
    /// Serialize `module` and sign its entry under `storage_key`.
    pub(crate) fn build(
        signing: &Signing,
        storage_key: &str,
        key: &ModuleHash,
        ident: &EngineIdent,
        module: &Module,
    ) -> Result<Self, CacheError> {
        let artifact = module.serialize()?;
        let header = entry::encode_header(key, ident, &artifact);
        let tag = signing.sign(storage_key.as_bytes(), &[&header, &artifact]);
        Ok(ValueParts {
            header,
            artifact,
            tag,
        })
    }

    /// Bytes of the whole value.
    pub(crate) fn len(&self) -> u64 {
        (entry::HEADER_LEN + self.artifact.len() + MAC_LEN) as u64
    }

    /// The value in one buffer (for stores that take one).
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn concat(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.len() as usize);
        value.extend_from_slice(&self.header);
        value.extend_from_slice(&self.artifact);
        value.extend_from_slice(&self.tag);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aligned::AlignedBuf, engine::ident_of};

    fn key(b: u8) -> MacKey {
        MacKey::new([b; 32])
    }

    #[test]
    fn the_mac_binds_key_and_bytes_and_rotation_accepts_old_keys() {
        let old = Signing::Keyed(vec![key(1)]);
        let rotated = Signing::Keyed(vec![key(2), key(1)]);
        let other = Signing::Keyed(vec![key(3)]);
        let tag = old.sign(b"k1", &[b"entry"]);
        assert!(old.verify(b"k1", b"entry", &tag));
        assert!(rotated.verify(b"k1", b"entry", &tag));
        assert!(!other.verify(b"k1", b"entry", &tag));
        assert!(!old.verify(b"k2", b"entry", &tag));
        assert!(!old.verify(b"k1", b"entrY", &tag));
        // key/entry boundary is unambiguous
        assert!(!old.verify(b"k1e", b"ntry", &tag));
        // the entry's parts are one stream
        assert_eq!(old.sign(b"k1", &[b"en", b"try"]), tag);
        let unkeyed = Signing::Unkeyed;
        assert!(!unkeyed.verify(b"k1", b"entry", &tag));
        let t = unkeyed.sign(b"k1", &[b"entry"]);
        assert!(unkeyed.verify(b"k1", b"entry", &t));
        assert!(!old.verify(b"k1", b"entry", &t));
    }

    #[test]
    fn the_tag_is_the_redis_tiers_own() {
        // Values written before the format moved here must still verify:
        // keyed BLAKE3 over (u64 LE key length, key, entry).
        let k = key(9);
        let mut h = blake3::Hasher::new_keyed(&k.0);
        h.update(&3u64.to_le_bytes());
        h.update(b"abc");
        h.update(b"entry");
        let signing = Signing::Keyed(vec![k]);
        assert_eq!(&signing.sign(b"abc", &[b"entry"]), h.finalize().as_bytes());
    }

    /// A whole value for `module` under `storage_key`, in an aligned buffer.
    fn value_of(signing: &Signing, storage_key: &str, hash: &ModuleHash, engine: &Engine) -> Bytes {
        let module = Module::new(engine, "(module (func (export \"f\")))").unwrap();
        let parts =
            ValueParts::build(signing, storage_key, hash, &ident_of(engine), &module).unwrap();
        let whole = parts.concat();
        let mut buf = AlignedBuf::zeroed(whole.len()).unwrap();
        buf.as_mut_slice().copy_from_slice(&whole);
        buf.into_bytes()
    }

    #[test]
    fn a_value_opens_whole_or_streamed_and_a_bad_one_never_does() {
        let engine = Engine::default();
        let signing = Signing::Keyed(vec![key(4)]);
        let hash = ModuleHash::from_bytes([3; 32]);
        let ident = ident_of(&engine);
        let value = value_of(&signing, "k", &hash, &engine);

        let whole = signing.authenticate(b"k", value.clone()).ok().unwrap();
        let (module, len) = open(whole, &hash, &ident, &engine).ok().unwrap();
        assert_eq!(len as usize, value.len() - entry::HEADER_LEN - MAC_LEN);
        assert_eq!(module.exports().count(), 1);

        let entry_len = value.len() - MAC_LEN;
        let mut streamed = signing.verifier(b"k");
        for chunk in value[..entry_len].chunks(7) {
            streamed.update(chunk);
        }
        let tag = value[entry_len..].try_into().unwrap();
        let streamed = streamed.finish(value.slice(..entry_len), tag).ok().unwrap();
        assert!(open(streamed, &hash, &ident, &engine).is_ok());

        // Another storage key, a flipped byte, a truncation: the MAC.
        assert!(signing.authenticate(b"k2", value.clone()).is_err());
        let mut flipped = value.to_vec();
        flipped[200] ^= 1;
        assert!(signing.authenticate(b"k", flipped.into()).is_err());
        assert!(
            signing
                .authenticate(b"k", value.slice(..value.len() - 1))
                .is_err()
        );
        assert!(matches!(
            signing.authenticate(b"k", value.slice(..5)),
            Err(Rejected::Integrity(IntegrityFailure::ShorterThanMac { .. }))
        ));
        // Signed for another module: the header.
        let other = ModuleHash::from_bytes([4; 32]);
        let auth = signing.authenticate(b"k", value).ok().unwrap();
        assert!(matches!(
            open(auth, &other, &ident, &engine),
            Err(Rejected::Corrupt(Corruption::WrongKey))
        ));
    }
}
