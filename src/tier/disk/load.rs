//! The load path: a remembered mapping, or the entry opened, checked,
//! mapped (or read) and verified, then deserialized (the tier's second
//! `unsafe`); and `contains`, from the header alone.

use std::{
    io::{self},
    path::Path,
    time::SystemTime,
};

use bytes::Bytes;
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use super::*;

impl FileSystemCache {
    pub(super) fn load_blocking(
        &self,
        key: ModuleHash,
        engine: &Engine,
    ) -> Result<Hit, CacheError> {
        let ident = ident_of(engine);
        let rel = rel_path(&key, &ident);
        let path = self.shared.root.join(&rel);
        // A remembered mapping is of a file verified when its directories
        // were trusted; a file put in its place since is another inode,
        // and goes the whole way below.
        if self.shared.remember_verified
            && let Some((data, md_times)) = self.remembered(&rel, &path)
        {
            return self
                .deserialize_verified(key, engine, rel, &path, data, md_times, None)
                .map(|hit| hit.with_verified(Verified::Remembered));
        }
        self.ensure_trusted(Some(&self.shared.root.join(&ident.namespace)))?;
        let (data, md_times, mapped) = match read_entry(
            &path,
            &key,
            &ident,
            self.shared.max_entry,
            self.shared.map_entries,
        ) {
            Ok(v) => v,
            Err(Refused::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                // Perhaps deleted by another process: forget it.
                self.shared.index.lock().remove(&rel);
                return Err(CacheError::NotFound);
            }
            Err(Refused::Io(error)) => return Err(CacheError::FileRead { path, error }),
            Err(Refused::Corrupt(reason, bytes)) => {
                self.discard_corrupt(&rel, &path, bytes);
                return Err(CacheError::Corrupt {
                    location: path.display().to_string(),
                    reason,
                });
            }
        };
        let file_len = data.len() as u64;
        // A large mapped entry another hit (of any process) verified in
        // full, its file unchanged since: trust that verification (see
        // `record`). The header was checked against this key and engine
        // and the length against the header just now, on this descriptor.
        // A file whose times are not settled is neither trusted on a
        // record nor recorded (the rule for remembering a mapping).
        let record = mapped
            .filter(|id| {
                self.records_on() && file_len >= RECORD_MIN_BYTES && id.settled(SystemTime::now())
            })
            .and_then(|id| Some((id, self.shared.root.join(record_rel(&rel)?))))
            .map(|(id, at)| (id, at, RecordHeader::of(&data)));
        if let Some((id, at, header)) = &record
            && recorded(at, id, header)
        {
            return self
                .deserialize_verified(key, engine, rel, &path, data, md_times, mapped)
                .map(|hit| hit.with_verified(Verified::Recorded));
        }
        let verified = match &self.shared.mac {
            Some(ring) => {
                if !ring.verify_disk_entry(&rel, &data) {
                    self.discard_corrupt(&rel, &path, file_len);
                    return Err(CacheError::Integrity {
                        location: path.display().to_string(),
                        reason: IntegrityFailure::MacMismatch { bytes: file_len },
                    });
                }
                // The keyed hash covers every byte: the checksum would only
                // repeat its verdict.
                entry::decode_authenticated(&data, &key, &ident)
            }
            None => entry::decode(&data, &key, &ident),
        };
        if let Err(reason) = verified {
            self.discard_corrupt(&rel, &path, file_len);
            return Err(CacheError::Corrupt {
                location: path.display().to_string(),
                reason,
            });
        }
        let hit = self
            .deserialize_verified(key, engine, rel, &path, data, md_times, mapped)?
            .with_verified(Verified::Full);
        // Record this verification for other processes: best effort.
        if let Some((id, at, header)) = record
            && let Err(e) = write_record(&key, &at, &id, &header)
        {
            tracing::debug!(
                path = %at.display(),
                error = &e as &dyn std::error::Error,
                "cannot record a verified cache entry"
            );
        }
        Ok(hit)
    }

    /// Deserialize `data`, an entry of `rel` whose header, length and
    /// checksum (or MAC) were verified for `key` and `engine`, and record
    /// the hit. `mapped`: the identity of the file `data` maps, to
    /// remember the mapping by.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deserialize_verified(
        &self,
        key: ModuleHash,
        engine: &Engine,
        rel: String,
        path: &Path,
        data: Bytes,
        md_times: FileTimes,
        mapped: Option<FileId>,
    ) -> Result<Hit, CacheError> {
        let file_len = data.len() as u64;
        let range = entry::HEADER_LEN..data.len();
        let artifact_len = (range.end - range.start) as u64;
        weights::record(key, engine_key(engine), artifact_len);
        // The same bytes that were verified: a slice of the mapping (or of
        // the buffer read), no copy, no second open of the path.
        let artifact = data.slice(range);
        debug_assert!(
            aligned::is_aligned(&artifact),
            "an artifact handed to wasmer must be {}-byte aligned",
            aligned::ARTIFACT_ALIGN
        );
        // SAFETY: the file was opened without following links, is a
        // regular file, and before this point `entry::decode` verified that
        // the bytes carry our magic and format version, were written for
        // this exact module hash under this engine configuration and wasmer
        // version, have exactly the announced length, and match the XXH3-128
        // checksum taken of the `Module::serialize()` output when it was
        // saved (with a MAC key configured, the BLAKE3 keyed MAC over the
        // entry path and every byte was verified instead of the checksum,
        // so the entry was written by a holder of the key). The root and
        // namespace directories were checked just before the entry was
        // opened to be writable only by this user, unless the operator
        // opted into a shared directory. When `read_entry` mapped the file,
        // the verified bytes are pages of a file that nobody but root can
        // write (this user's, mode without any write bit: `may_map`), which
        // tierscope never changes in place (see `map_entry`), so they are
        // still the verified bytes when wasmer reads them; otherwise they
        // are this process' own buffer. A remembered mapping
        // (`remembered`) is such a mapping, verified by an earlier hit, of
        // a file whose device, inode, length and modification and change
        // times are still those it had then, times that were at least a
        // second old when it was verified (`FileId::settled`): any write or
        // truncation through a descriptor since, or a chmod that would
        // allow one, would have moved them. The one change that moves no
        // time, a store through a writable shared mapping, needs a
        // descriptor opened for writing, which a read-only entry denies to
        // every process but root's (or one that changed the mode, moving
        // the change time, first). A recorded entry (`record`, a hit of
        // any process) is a mapping of a file whose header `check_entry_file`
        // just checked on this descriptor (magic, version, module hash,
        // engine, exact length) and for which a record of this user's,
        // writable by nobody else and self-checked, names that header and
        // the identity `fstat` gave on this same descriptor: the record is
        // written only after `entry::decode` verified the checksum over
        // every byte of a file with that identity, settled when verified,
        // so by the rule above its bytes are still the ones verified. The
        // bytes are therefore the artifact
        // this wasmer produced for this engine, which is what
        // `Module::deserialize` requires. They also
        // start on a 16-byte boundary, which wasmer's zero-copy archive
        // access needs (`rkyv::access_unchecked` on the metadata 32 bytes
        // in, with no alignment copy; see `crate::aligned` for where
        // wasmer and rkyv state it): a mapping starts on a page and the
        // read path's buffer is an `AlignedBuf`, and the entry header
        // before the artifact is 128 bytes (checked in debug builds just
        // above).
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(engine, artifact) };
        let module = match module {
            Ok(m) => {
                crate::engine::note_code_loaded(engine, artifact_len);
                m
            }
            Err(e) => {
                self.discard_corrupt(&rel, path, file_len);
                return Err(CacheError::Deserialize(e));
            }
        };
        if let Some(id) =
            mapped.filter(|id| self.shared.remember_verified && id.settled(SystemTime::now()))
        {
            self.shared.verified.lock().remember(rel.clone(), id, data);
        }
        self.note_hit(rel, path, file_len, md_times);
        Ok(Hit::new(module).with_bytes(Some(artifact_len)))
    }

    /// Whether a plausible entry is at `key`'s path: a regular file whose
    /// header is valid for this key and engine and whose length matches the
    /// header's claim and the entry bound. The checksum and MAC are not
    /// verified (that needs the whole file): a later `load` may still find
    /// the entry corrupt. A file that fails these checks is removed as a
    /// load would.
    pub(super) fn contains_blocking(
        &self,
        key: ModuleHash,
        engine: &Engine,
    ) -> Result<bool, CacheError> {
        let ident = ident_of(engine);
        self.ensure_trusted(Some(&self.shared.root.join(&ident.namespace)))?;
        let rel = rel_path(&key, &ident);
        let path = self.shared.root.join(&rel);
        match check_entry_file(&path, &key, &ident, self.shared.max_entry) {
            Ok(_) => Ok(true),
            Err(Refused::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(Refused::Io(error)) => Err(CacheError::FileRead { path, error }),
            Err(Refused::Corrupt(_, bytes)) => {
                self.discard_corrupt(&rel, &path, bytes);
                Ok(false)
            }
        }
    }
}
