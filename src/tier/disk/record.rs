//! Verification records: a process that verified a large entry in full
//! leaves a small file beside it (`<MODULE HASH>.vfy`) naming the entry
//! file it verified by identity (device, inode, length, modification and
//! change times, see [`FileId`]) and header. Another process's first hit of
//! the entry, finding the same file still there, unchanged by the same
//! rule a remembered mapping already uses within a process, trusts that
//! verification instead of reading every byte again: a verification per
//! file version, not per process.
//!
//! A record is written only:
//! - for an entry of at least [`RECORD_MIN_BYTES`] (below that, reading
//!   and checking a record costs about what the checksum does);
//! - of a mapped entry, in a private directory, without a MAC key (the
//!   cases where mapping is allowed and the checksum is the whole check);
//! - after the checksum over every byte matched;
//! - when the file's times were [settled](FileId::settled) at that moment,
//!   so that any later write, truncation or mode change gives the file
//!   other times.
//!
//! A record is trusted only if it is a regular file of exactly
//! [`RECORD_LEN`] bytes owned by this user and writable by nobody else,
//! its own checksum holds, it names the very file just opened and checked
//! (same identity from the same `fstat`) and that file's header, and that
//! identity is still settled. Any other record is ignored (the entry is
//! verified in full, and a good record replaces it). A record goes with its
//! entry (eviction, removal, refusal) and a scan removes records whose
//! entry is gone.

use std::{fs, io, path::Path};

use wasmer_types::ModuleHash;

use super::*;

/// Extension of a record file, beside its entry's `.bin`.
pub(super) const RECORD_EXT: &str = "vfy";

/// Entries smaller than this (the whole file) are verified on every first
/// hit: their checksum costs about what opening a record does.
pub(super) const RECORD_MIN_BYTES: u64 = 1 << 20;

const MAGIC: [u8; 8] = *b"TSVRFY01";

/// Magic, device, inode, length, mtime (seconds, nanoseconds), ctime
/// (seconds, nanoseconds), the header's XXH3-128, and the XXH3-64 of all
/// that.
pub(super) const RECORD_LEN: usize = 8 + 7 * 8 + 16 + 8;

/// The record of `rel` (`<namespace>/<HASH>.bin`): `<namespace>/<HASH>.vfy`.
pub(super) fn record_rel(rel: &str) -> Option<String> {
    rel.strip_suffix(ENTRY_EXT)
        .and_then(|stem| stem.strip_suffix('.'))
        .map(|stem| format!("{stem}.{RECORD_EXT}"))
}

/// `<64 upper-case hex digits>.vfy`.
pub(super) fn is_record_name(name: &str) -> bool {
    record_entry_name(name).is_some()
}

/// The entry a record name belongs to: `<HASH>.vfy` → `<HASH>.bin`.
pub(super) fn record_entry_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(RECORD_EXT)?.strip_suffix('.')?;
    let entry = format!("{stem}.{ENTRY_EXT}");
    is_entry_name(&entry).then_some(entry)
}

/// The XXH3-128 of an entry's header, which a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordHeader(u128);

impl RecordHeader {
    /// The header of `entry`, a whole entry file whose header was checked.
    pub(super) fn of(entry: &[u8]) -> Self {
        RecordHeader(xxhash_rust::xxh3::xxh3_128(&entry[..entry::HEADER_LEN]))
    }
}

fn encode(id: &FileId, header: &RecordHeader) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[..8].copy_from_slice(&MAGIC);
    let fields = [
        id.dev,
        id.ino,
        id.len,
        id.mtime.0 as u64,
        id.mtime.1 as u64,
        id.ctime.0 as u64,
        id.ctime.1 as u64,
    ];
    for (i, f) in fields.iter().enumerate() {
        out[8 + 8 * i..16 + 8 * i].copy_from_slice(&f.to_le_bytes());
    }
    let digest_at = 8 + 7 * 8;
    out[digest_at..digest_at + 16].copy_from_slice(&header.0.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&out[..RECORD_LEN - 8]);
    out[RECORD_LEN - 8..].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Whether `record` is a sound record of the file `id` with `header`: the
/// very bytes this module writes for them (its own checksum included).
fn vouches_for(record: &[u8; RECORD_LEN], id: &FileId, header: &RecordHeader) -> bool {
    *record == encode(id, header)
}

/// Whether the record at `path` vouches for the entry file `id` whose
/// header is `header`, by the rules of this module (the caller checks that
/// `id` is settled). Any failure (no record, another user's, a torn or
/// stale one) is a plain `false`.
pub(super) fn recorded(path: &Path, id: &FileId, header: &RecordHeader) -> bool {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let Ok(file) = options.open(path) else {
        return false;
    };
    let Ok(md) = file.metadata() else {
        return false;
    };
    if !md.is_file() || md.len() != RECORD_LEN as u64 || !owned_and_private(&md) {
        return false;
    }
    let mut record = [0u8; RECORD_LEN];
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        if file.read_exact_at(&mut record, 0).is_err() {
            return false;
        }
    }
    #[cfg(not(unix))]
    {
        use std::io::Read;
        let mut file = file;
        if file.read_exact(&mut record).is_err() {
            return false;
        }
    }
    vouches_for(&record, id, header)
}

/// This user's, and writable by nobody else.
fn owned_and_private(md: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        md.uid() == rustix::process::geteuid().as_raw() && md.mode() & 0o022 == 0
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        false
    }
}

/// Write (or replace) the record at `path` of the entry file `id` whose
/// header is `header`: a read-only temporary file beside it, renamed into
/// place, so a reader sees the old record, the new one or none.
pub(super) fn write_record(
    key: &ModuleHash,
    path: &Path,
    id: &FileId,
    header: &RecordHeader,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(dir, key);
    let result = write_locked(&tmp, &[&encode(id, header)], false, false)
        .and_then(|file| fs::rename(&tmp, path).map(|()| drop(file)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl FileSystemCache {
    /// Whether this tier writes and trusts records (see the module docs).
    pub(super) fn records_on(&self) -> bool {
        let s = &self.shared;
        s.remember_verified && s.map_entries && !s.shared_directory && s.mac.is_none()
    }

    /// Forget everything this tier knows verified of `rel`: its remembered
    /// mapping and its record (best effort: a record left behind names a
    /// file that is gone, and a scan removes it).
    pub(super) fn forget_verified(&self, rel: &str) {
        self.shared.verified.lock().forget(rel);
        if let Some(record) = record_rel(rel) {
            let _ = fs::remove_file(self.shared.root.join(record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> FileId {
        FileId {
            dev: 3,
            ino: 77,
            len: 2 << 20,
            mtime: (1_000, 5),
            ctime: (1_001, 6),
        }
    }

    #[test]
    fn a_record_vouches_only_for_its_own_file_and_header() {
        let bytes = [7u8; entry::HEADER_LEN];
        let header = RecordHeader::of(&bytes);
        let record = encode(&id(), &header);
        assert!(vouches_for(&record, &id(), &header));
        // Any other identity or header.
        for other in [
            FileId { ino: 78, ..id() },
            FileId { dev: 4, ..id() },
            FileId { len: 1, ..id() },
            FileId {
                mtime: (1_000, 6),
                ..id()
            },
            FileId {
                ctime: (1_002, 6),
                ..id()
            },
        ] {
            assert!(!vouches_for(&record, &other, &header), "{other:?}");
        }
        let mut other_bytes = bytes;
        other_bytes[100] ^= 1;
        assert!(!vouches_for(
            &record,
            &id(),
            &RecordHeader::of(&other_bytes)
        ));
        // Any byte of the record changed.
        for i in 0..RECORD_LEN {
            let mut torn = record;
            torn[i] ^= 0x40;
            assert!(!vouches_for(&torn, &id(), &header), "byte {i}");
        }
    }

    #[test]
    fn record_names_follow_their_entries() {
        let hash = "A".repeat(64);
        assert_eq!(
            record_rel(&format!("ns/{hash}.bin")),
            Some(format!("ns/{hash}.vfy"))
        );
        assert!(is_record_name(&format!("{hash}.vfy")));
        assert_eq!(
            record_entry_name(&format!("{hash}.vfy")),
            Some(format!("{hash}.bin"))
        );
        assert!(!is_record_name(&format!("{hash}.bin")));
        assert!(!is_record_name("short.vfy"));
        assert!(!is_record_name(&format!("{}.vfy", "a".repeat(64))));
    }
}
