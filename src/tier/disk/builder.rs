//! [`FileSystemCacheBuilder`]: the disk tier's settings and their defaults.

use std::{path::PathBuf, sync::Arc, time::Duration};

use parking_lot::Mutex;

use super::*;

/// Default for [`FileSystemCacheBuilder::temp_grace`].
pub(super) const TMP_GRACE: Duration = Duration::from_secs(10);

/// Default for [`FileSystemCacheBuilder::touch_interval`].
pub(super) const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Default for [`FileSystemCacheBuilder::lock_timeout`].
pub(super) const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Default for [`FileSystemCacheBuilder::max_entry_bytes`].
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 30;

/// Builder for [`FileSystemCache`].
#[derive(Debug, Clone)]
pub struct FileSystemCacheBuilder {
    pub(super) root: PathBuf,
    pub(super) capacity: Option<u64>,
    pub(super) max_entry_bytes: Option<u64>,
    pub(super) sync_data: bool,
    pub(super) inline_io: bool,
    pub(super) map_entries: bool,
    pub(super) remember_verified: bool,
    pub(super) temp_grace: Duration,
    pub(super) touch_interval: Duration,
    pub(super) lock_timeout: Duration,
    pub(super) shared_directory: bool,
    pub(super) mac_keys: Vec<MacKey>,
}

impl FileSystemCacheBuilder {
    /// Bound the total bytes of entry files. Without it the tier is
    /// unbounded (not recommended: wasmer #4093).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = Some(bytes);
        self
    }

    /// The largest entry file (header included) the tier writes or reads;
    /// a larger file found at an entry path is [`Corruption::Oversized`],
    /// refused before it is read, and removed. Default: the capacity, at
    /// most 1 GiB.
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = Some(bytes);
        self
    }

    /// `fsync` each entry before it becomes visible. Off by default: a torn
    /// entry after power loss is caught by its checksum and recompiled.
    pub fn sync_data(mut self, on: bool) -> Self {
        self.sync_data = on;
        self
    }

    /// Do file I/O and deserialization on the calling task instead of
    /// tokio's blocking pool. Only for callers that already run on a thread
    /// allowed to block (a dedicated runtime, `spawn_blocking`, a benchmark).
    pub fn inline_io(mut self, on: bool) -> Self {
        self.inline_io = on;
        self
    }

    /// Map entries (the default: the verified pages are the loaded pages,
    /// shared with the page cache), or read each one into memory (`false`):
    /// a copy per hit, and then nothing that happens to the file, even as
    /// root, reaches a module loaded from it (see "Safety" in the README).
    /// Reading also turns remembered mappings off.
    pub fn map_entries(mut self, on: bool) -> Self {
        self.map_entries = on;
        self
    }

    /// Remember the mapping of each entry this process verified, and serve
    /// later hits on the unchanged file from it without mapping and
    /// verifying it again (on by default; only entries whose file has not
    /// changed for a second or more, at most 256 of them and 256 MiB, are
    /// remembered: see [`FileSystemCache`](super::FileSystemCache)); and
    /// record the full verification of an entry of 1 MiB or more beside it,
    /// so that other processes' first hits of the unchanged file trust it
    /// (verification records, same page). Off: every hit maps and verifies
    /// its entry in full, and records are neither written nor read.
    pub fn remember_verified(mut self, on: bool) -> Self {
        self.remember_verified = on;
        self
    }

    /// Temporary files younger than this are never removed by the cleaner,
    /// even when unlocked (their writer may not have locked them yet).
    /// Default 10 s.
    pub fn temp_grace(mut self, grace: Duration) -> Self {
        self.temp_grace = grace;
        self
    }

    /// A hit rewrites its file's modification time (the recency that
    /// survives a restart) when the stored one is older than this.
    /// Default 60 s; zero refreshes on every hit.
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// How long a save (or a rescan) waits for the directory's advisory
    /// lock when another instance or process holds it, before it gives up
    /// with [`CacheError::Timeout`] (a save) or goes on without it (a
    /// rescan reads the directory; it evicts nothing then). Default 2 s. A
    /// load never waits for the lock: the bookkeeping a hit does under it
    /// (learning an entry another process wrote) is skipped while it is
    /// busy.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Accept a root or namespace directory that is group- or
    /// world-writable or owned by another user. Off by default: such a
    /// directory is refused, since whoever can write to it can run code in
    /// this process. When sharing on purpose, also set a [`mac_key`] (the
    /// same on every process that shares the directory). New directories
    /// are then created with mode 0770 and entries with 0640 (less the
    /// umask), so the group can read and evict them.
    ///
    /// [`mac_key`]: FileSystemCacheBuilder::mac_key
    pub fn shared_directory(mut self, on: bool) -> Self {
        self.shared_directory = on;
        self
    }

    /// Sign every entry with a BLAKE3 keyed MAC under `key`, and accept only
    /// entries that carry a valid one: an entry forged by someone without
    /// the key (or written unsigned) is [`CacheError::Integrity`], never
    /// deserialized, removed and recompiled. Called several times, the first
    /// key signs and any key is accepted (for rotation). Every process
    /// sharing the directory needs the key: unsigned and signed writers on
    /// one directory would remove each other's entries.
    pub fn mac_key(mut self, key: impl Into<MacKey>) -> Self {
        self.mac_keys.push(key.into());
        self
    }

    /// [`mac_key`](FileSystemCacheBuilder::mac_key) for each key, the
    /// signing key first.
    pub fn mac_keys(mut self, keys: impl IntoIterator<Item = MacKey>) -> Self {
        self.mac_keys.extend(keys);
        self
    }

    /// Open the tier: check that the directory (if it exists) is private
    /// (see [`shared_directory`](FileSystemCacheBuilder::shared_directory)),
    /// scan it to rebuild the LRU index, remove temporary files left by
    /// crashed writers, and evict down to the bound.
    pub fn build(self) -> Result<FileSystemCache, CacheError> {
        let cache = self.build_unscanned();
        cache.ensure_trusted(None)?;
        if cache.shared.shared_directory && cache.shared.mac.is_none() {
            tracing::warn!(
                dir = %cache.shared.root.display(),
                "shared cache directory without a MAC key: whoever can write to it can run code \
                 in this process (set FileSystemCacheBuilder::mac_key)"
            );
        }
        cache.rescan()?;
        Ok(cache)
    }

    /// The tier with these settings, before any check or scan of the
    /// directory (`open` does both; `build_for_maintenance` neither).
    pub(super) fn build_unscanned(self) -> FileSystemCache {
        let default_max = self
            .capacity
            .unwrap_or(DEFAULT_MAX_ENTRY_BYTES)
            .min(DEFAULT_MAX_ENTRY_BYTES);
        let max_entry = self
            .max_entry_bytes
            .unwrap_or(default_max)
            .min(self.capacity.unwrap_or(u64::MAX));
        FileSystemCache {
            shared: Arc::new(Shared {
                root: self.root,
                capacity: self.capacity,
                max_entry,
                sync_data: self.sync_data,
                inline_io: self.inline_io,
                map_entries: self.map_entries,
                remember_verified: self.remember_verified && self.map_entries,
                temp_grace: self.temp_grace,
                touch_interval: self.touch_interval,
                lock_timeout: self.lock_timeout,
                shared_directory: self.shared_directory,
                mac: KeyRing::new(self.mac_keys),
                dir_lock: Mutex::new(DirLock::default()),
                index: Mutex::new(Index::empty()),
                verified: Mutex::new(VerifiedMaps::default()),
                observers: Observers::default(),
            }),
        }
    }
}
