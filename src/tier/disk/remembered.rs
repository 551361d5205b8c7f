//! Verified mappings kept for later hits: an entry verified once is served
//! again from the same pages while its file's identity is unchanged.

use std::{
    fs::{self},
    path::Path,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use lru::LruCache;

use super::*;

/// What identifies one version of an entry file: its inode, and the length
/// and change times `fstat` / `lstat` give. Any write to the file changes
/// the times (unless it lands in the same clock tick as the last change:
/// see [`VerifiedMaps`]); a save replaces the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl FileId {
    /// The identity of the file behind `md`, when the platform gives one.
    pub(super) fn of(md: &fs::Metadata) -> Option<FileId> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(FileId {
                dev: md.dev(),
                ino: md.ino(),
                len: md.len(),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = md;
            None
        }
    }

    /// Whether both change times are at least [`SETTLED_AFTER`] old: a
    /// later write then gets later times, whatever the clock's tick (the
    /// rule Git applies to "racily clean" index entries).
    pub(super) fn settled(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let horizon = now.as_secs() as i64 - SETTLED_AFTER.as_secs() as i64;
        // Seconds alone: a second of margin past the whole-second horizon.
        self.mtime.0 < horizon && self.ctime.0 < horizon
    }
}

/// How old an entry file's change times must be before its verified
/// mapping is remembered.
pub(super) const SETTLED_AFTER: Duration = Duration::from_secs(1);

/// Entries remembered at most.
pub(super) const VERIFIED_MAX: usize = 256;

/// Bytes of remembered mappings at most (an entry larger than this is not
/// remembered). The pages are the page cache's, clean and reclaimable, but
/// those a hit touched count in the process' resident set.
pub(super) const VERIFIED_MAX_BYTES: u64 = 256 << 20;

/// Entry files this process mapped and verified (checksum, or MAC), by
/// relative path, each with its [`FileId`] at verification and the mapping
/// itself. A hit on an entry whose `lstat` still gives the same identity
/// hands wasmer the same verified pages again, without mapping, faulting
/// in and checksumming them a second time.
///
/// Sound under the same conditions as mapping at all (`map_entry`): only
/// files owned by this user and writable by nobody else are mapped, and
/// tierscope never writes an entry in place, so the pages of a mapping
/// stay the verified bytes; a write by this user anyway (or root) changes
/// the file's times, and only files whose times are [settled](FileId::settled)
/// are remembered, so such a write is seen. Entries leave when removed or
/// evicted by this tier, when their file is found changed or gone, and
/// beyond [`VERIFIED_MAX`] entries or [`VERIFIED_MAX_BYTES`] (least
/// recently hit first). A remembered mapping
/// keeps its inode's blocks allocated after another process unlinks it,
/// as the mapping of every live module from this tier does.
pub(super) struct VerifiedMaps {
    pub(super) entries: LruCache<String, (FileId, Bytes)>,
    /// Bytes of the mappings in `entries`.
    pub(super) bytes: u64,
}

impl Default for VerifiedMaps {
    fn default() -> Self {
        VerifiedMaps {
            entries: LruCache::new(
                std::num::NonZeroUsize::new(VERIFIED_MAX).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            bytes: 0,
        }
    }
}

impl VerifiedMaps {
    /// Remember `data`, the verified mapping of `rel`'s file `id`, within
    /// the bounds.
    pub(super) fn remember(&mut self, rel: String, id: FileId, data: Bytes) {
        let len = data.len() as u64;
        if len > VERIFIED_MAX_BYTES {
            return;
        }
        self.bytes += len;
        if let Some((_, (_, old))) = self.entries.push(rel, (id, data)) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > VERIFIED_MAX_BYTES {
            let Some((_, (_, old))) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= old.len() as u64;
        }
    }

    /// Forget `rel`.
    pub(super) fn forget(&mut self, rel: &str) {
        if let Some((_, old)) = self.entries.pop(rel) {
            self.bytes -= old.len() as u64;
        }
    }
}

impl FileSystemCache {
    /// The remembered verified mapping of `rel`, if its file at `path` is
    /// still the one verified (see [`VerifiedMaps`]); a changed or missing
    /// file is forgotten.
    pub(super) fn remembered(&self, rel: &str, path: &Path) -> Option<(Bytes, FileTimes)> {
        let (id, data) = self.shared.verified.lock().entries.peek(rel).cloned()?;
        let now = fs::symlink_metadata(path)
            .ok()
            .filter(|md| md.is_file() && may_map(md))
            .and_then(|md| Some((FileId::of(&md)?, md)));
        let mut verified = self.shared.verified.lock();
        match now {
            Some((now_id, md)) if now_id == id => {
                verified.entries.promote(rel);
                let times = FileTimes {
                    modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    created: md.created().ok(),
                };
                Some((data, times))
            }
            _ => {
                verified.forget(rel);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn remembered_mappings_stay_within_their_count_and_bytes() {
        let id = |ino| FileId {
            dev: 1,
            ino,
            len: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        };
        let mut v = VerifiedMaps::default();
        let big = Bytes::from(vec![0u8; (VERIFIED_MAX_BYTES / 3) as usize]);
        for i in 0..5 {
            v.remember(format!("e{i}"), id(i), big.clone());
        }
        // Three fit in the byte bound: the two oldest went.
        assert_eq!(v.entries.len(), 3);
        assert_eq!(v.bytes, 3 * big.len() as u64);
        assert!(v.entries.peek("e0").is_none() && v.entries.peek("e4").is_some());
        // Replacing an entry counts its bytes once.
        v.remember("e4".into(), id(9), Bytes::from_static(b"x"));
        assert_eq!(v.bytes, 2 * big.len() as u64 + 1);
        v.forget("e4");
        v.forget("absent");
        assert_eq!(v.bytes, 2 * big.len() as u64);
        // Too large to remember at all.
        v.remember(
            "huge".into(),
            id(10),
            Bytes::from(vec![0u8; VERIFIED_MAX_BYTES as usize + 1]),
        );
        assert!(v.entries.peek("huge").is_none());
        // Many small ones: the count bound.
        let mut v = VerifiedMaps::default();
        for i in 0..(VERIFIED_MAX as u64 + 10) {
            v.remember(format!("s{i}"), id(i), Bytes::from_static(b"ab"));
        }
        assert_eq!(v.entries.len(), VERIFIED_MAX);
        assert_eq!(v.bytes, 2 * VERIFIED_MAX as u64);
    }

    #[test]
    pub(super) fn only_files_unchanged_for_a_second_are_settled() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |m: i64, c: i64| FileId {
            dev: 1,
            ino: 1,
            len: 1,
            mtime: (m, 0),
            ctime: (c, 0),
        };
        assert!(at(990, 990).settled(now));
        assert!(at(998, 998).settled(now));
        assert!(!at(999, 990).settled(now));
        assert!(!at(990, 999).settled(now));
        assert!(!at(990, 1_005).settled(now), "a change time in the future");
    }
}
