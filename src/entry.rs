//! The on-disk (and on-wire) entry format, verified before any byte reaches
//! wasmer's `unsafe` deserializer.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "TIERSCP\0"
//!      8     2  entry format version (little endian), = FORMAT_VERSION
//!     10     6  reserved, zero
//!     16     8  artifact length in bytes (little endian)
//!     24    16  XXH3-128 of the artifact
//!     40    16  engine context: binds deterministic id, artifact format,
//!               wasmer version and entry format version
//!     56    32  module hash (the cache key)
//!     88    32  disk MAC: BLAKE3 keyed hash of the entry (this field
//!               zeroed) when the disk tier has a MAC key, else zero
//!    120     8  reserved, zero (keeps the artifact 128-byte aligned, as
//!               wasmer's archive reader needs 8-byte alignment)
//!    128     n  the artifact (`Module::serialize()` output)
//! ```
//!
//! `decode` checks, in order: length of the header, magic, format version,
//! engine context, key, announced length against actual length, checksum.
//! `decode_header` checks the header alone and returns the announced
//! length, so a reader can compare it with the file's length (and its own
//! bound) before reading, or allocating for, the artifact.
//! Any failure is a `Corruption`; it never panics on any input (a property
//! test feeds it arbitrary bytes).

use wasmer_types::ModuleHash;

use crate::{
    cache::Corruption,
    engine::{EngineIdent, FORMAT_VERSION},
};

/// The magic number every entry starts with.
pub const MAGIC: [u8; 8] = *b"TIERSCP\0";

/// Bytes before the artifact.
pub const HEADER_LEN: usize = 128;

// An entry that starts aligned has its artifact aligned too (see
// `crate::aligned`).
const _: () = assert!(HEADER_LEN.is_multiple_of(crate::aligned::ARTIFACT_ALIGN));

/// Where the disk tier's MAC lives in the header (zero when unsigned). The
/// MAC is computed with this field zeroed; [`decode`] does not read it.
pub const MAC_RANGE: std::ops::Range<usize> = 88..120;

/// XXH3-128 of an artifact: the checksum in every header. Computed by
/// `twox-hash`, which picks AVX2 at run time (45 GiB/s on this project's
/// machine against 23 GiB/s for `xxhash-rust`'s portable SSE2 path, the
/// same hash): verifying a 16 MB artifact costs ~0.4 ms.
pub fn checksum(artifact: &[u8]) -> [u8; 16] {
    twox_hash::XxHash3_128::oneshot(artifact).to_le_bytes()
}

/// The header for `artifact`, stored under `key` by `ident`'s engine.
pub fn encode_header(key: &ModuleHash, ident: &EngineIdent, artifact: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&(artifact.len() as u64).to_le_bytes());
    h[24..40].copy_from_slice(&checksum(artifact));
    h[40..56].copy_from_slice(&ident.context);
    h[56..88].copy_from_slice(key.as_bytes());
    h
}

/// Header followed by the artifact, in one buffer.
pub fn encode(key: &ModuleHash, ident: &EngineIdent, artifact: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + artifact.len());
    out.extend_from_slice(&encode_header(key, ident, artifact));
    out.extend_from_slice(artifact);
    out
}

/// Check a whole entry (header + artifact) and return the artifact's byte
/// range within `entry`.
pub fn decode(
    entry: &[u8],
    key: &ModuleHash,
    ident: &EngineIdent,
) -> Result<std::ops::Range<usize>, Corruption> {
    check(entry, key, ident, true)
}

/// [`decode`] without the checksum, for bytes that a BLAKE3 hash (keyed
/// or not) over the whole entry has already verified: the checksum could
/// only repeat that verdict, at about 33 us per MB.
pub fn decode_authenticated(
    entry: &[u8],
    key: &ModuleHash,
    ident: &EngineIdent,
) -> Result<std::ops::Range<usize>, Corruption> {
    check(entry, key, ident, false)
}

/// Check a header alone (the first [`HEADER_LEN`] bytes of `header`): magic,
/// format version, engine context and key. Returns the artifact length it
/// announces, not yet compared with anything.
pub fn decode_header(
    header: &[u8],
    key: &ModuleHash,
    ident: &EngineIdent,
) -> Result<u64, Corruption> {
    let header = header.get(..HEADER_LEN).ok_or(Corruption::Truncated {
        actual: header.len() as u64,
        expected: HEADER_LEN as u64,
    })?;
    if header[0..8] != MAGIC {
        return Err(Corruption::BadMagic);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
        return Err(Corruption::FormatVersion {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    if header[40..56] != ident.context {
        return Err(Corruption::ForeignEngine);
    }
    if header[56..88] != *key.as_bytes() {
        return Err(Corruption::WrongKey);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    Ok(u64::from_le_bytes(len))
}

fn check(
    entry: &[u8],
    key: &ModuleHash,
    ident: &EngineIdent,
    checksum_artifact: bool,
) -> Result<std::ops::Range<usize>, Corruption> {
    let announced = decode_header(entry, key, ident)?;
    let header = &entry[..HEADER_LEN];
    let actual = (entry.len() - HEADER_LEN) as u64;
    if actual < announced {
        return Err(Corruption::Truncated {
            actual: entry.len() as u64,
            expected: announced.saturating_add(HEADER_LEN as u64),
        });
    }
    if actual > announced {
        return Err(Corruption::TrailingBytes {
            actual: entry.len() as u64,
            expected: announced + HEADER_LEN as u64,
        });
    }
    let artifact = &entry[HEADER_LEN..];
    if checksum_artifact && header[24..40] != checksum(artifact) {
        return Err(Corruption::Checksum);
    }
    Ok(HEADER_LEN..entry.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_xxh3_128_as_every_entry_written_before() {
        // Entries written with xxhash-rust's XXH3-128 must still verify.
        for len in [0usize, 1, 17, 129, 240, 241, 1 << 10, (1 << 20) + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            assert_eq!(
                checksum(&data),
                xxhash_rust::xxh3::xxh3_128(&data).to_le_bytes(),
                "{len} bytes"
            );
        }
    }
    use crate::engine::ident_of;
    use proptest::prelude::*;
    use wasmer::Engine;

    fn fixture() -> (ModuleHash, std::sync::Arc<EngineIdent>, Vec<u8>) {
        let key = ModuleHash::from_bytes([7; 32]);
        let ident = ident_of(&Engine::default());
        let artifact: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        (key, ident, artifact)
    }

    #[test]
    fn round_trip() {
        let (key, ident, artifact) = fixture();
        let entry = encode(&key, &ident, &artifact);
        let range = decode(&entry, &key, &ident).unwrap();
        assert_eq!(&entry[range], &artifact[..]);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let (key, ident, artifact) = fixture();
        let entry = encode(&key, &ident, &artifact[..200]);
        for i in 0..entry.len() {
            let reserved = (10..16).contains(&i) || (88..HEADER_LEN).contains(&i);
            let mut bad = entry.clone();
            bad[i] ^= 0x40;
            let result = decode(&bad, &key, &ident);
            assert_eq!(result.is_err(), !reserved, "byte {i}");
        }
    }

    #[test]
    fn the_authenticated_decoder_checks_all_but_the_checksum() {
        let (key, ident, artifact) = fixture();
        let mut entry = encode(&key, &ident, &artifact);
        *entry.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&entry, &key, &ident), Err(Corruption::Checksum));
        assert!(decode_authenticated(&entry, &key, &ident).is_ok());
        entry[0] = b'X';
        assert_eq!(
            decode_authenticated(&entry, &key, &ident),
            Err(Corruption::BadMagic)
        );
    }

    #[test]
    fn the_header_alone_announces_the_length() {
        let (key, ident, artifact) = fixture();
        let entry = encode(&key, &ident, &artifact);
        assert_eq!(decode_header(&entry[..HEADER_LEN], &key, &ident), Ok(1000));
        assert!(matches!(
            decode_header(&entry[..HEADER_LEN - 1], &key, &ident),
            Err(Corruption::Truncated { .. })
        ));
        let other = ModuleHash::from_bytes([8; 32]);
        assert_eq!(
            decode_header(&entry, &other, &ident),
            Err(Corruption::WrongKey)
        );
        // The MAC field is not part of the structural checks.
        let mut signed = entry.clone();
        signed[MAC_RANGE].fill(0xAB);
        assert!(decode(&signed, &key, &ident).is_ok());
    }

    #[test]
    fn each_check_names_its_reason() {
        let (key, ident, artifact) = fixture();
        let entry = encode(&key, &ident, &artifact);
        assert!(matches!(
            decode(&entry[..50], &key, &ident),
            Err(Corruption::Truncated { .. })
        ));
        assert!(matches!(
            decode(&entry[..entry.len() - 1], &key, &ident),
            Err(Corruption::Truncated { .. })
        ));
        let mut long = entry.clone();
        long.push(0);
        assert!(matches!(
            decode(&long, &key, &ident),
            Err(Corruption::TrailingBytes { .. })
        ));
        let mut magic = entry.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, &key, &ident), Err(Corruption::BadMagic));
        let mut version = entry.clone();
        version[8] = 99;
        assert!(matches!(
            decode(&version, &key, &ident),
            Err(Corruption::FormatVersion { found: 99, .. })
        ));
        let other = ModuleHash::from_bytes([8; 32]);
        assert_eq!(decode(&entry, &other, &ident), Err(Corruption::WrongKey));
        let mut sum = entry.clone();
        *sum.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&sum, &key, &ident), Err(Corruption::Checksum));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (key, ident, _) = fixture();
            let _ = decode(&bytes, &key, &ident);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_header_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..HEADER_LEN,
            len in any::<u64>(),
        ) {
            let (key, ident, artifact) = fixture();
            let mut entry = encode(&key, &ident, &artifact[..tail.len().min(artifact.len())]);
            entry[16..24].copy_from_slice(&len.to_le_bytes());
            entry.truncate(HEADER_LEN);
            entry.extend_from_slice(&tail);
            let _ = decode(&entry, &key, &ident);
            let _ = decode(&entry[..cut], &key, &ident);
        }
    }
}
