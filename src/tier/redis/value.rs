//! The value format: an entry (header and artifact, as on disk) followed by
//! its MAC. Opening a value is the tier's only `unsafe`: wasmer
//! deserializes the artifact once the MAC and the header were verified.

use bytes::Bytes;
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Corruption, IntegrityFailure},
    engine::EngineIdent,
    entry,
};

use super::*;

/// Why a value was refused before (or by) wasmer.
pub(super) enum Rejected {
    Integrity(IntegrityFailure),
    Corrupt(Corruption),
    Deserialize(wasmer::DeserializeError),
}

/// Check a value (MAC first, then the entry header) and deserialize it.
/// Returns the module and the artifact length.
pub(super) fn open_value(
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
pub(super) fn build_value(
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
