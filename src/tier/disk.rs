//! A bounded, crash-safe filesystem tier.
//!
//! ## Layout
//!
//! ```text
//! <dir>/                                  mode 0700, created on first save
//!   .tierscope-lock                       advisory lock around changes
//!   <deterministic id>-<artifact format>-wasmer<version>-ts<format>/
//!     <MODULE HASH>.bin                   header + artifact (see [`crate::entry`])
//!     .tmp-<MODULE HASH>-<pid>-<n>        a write in progress
//! ```
//!
//! The namespace directory binds the engine configuration, the wasmer
//! version and tierscope's entry format: a cache written by another wasmer
//! never reaches this one's deserializer (wasmer #3193), and the header
//! repeats the binding so a file copied across namespaces is still refused.
//!
//! Only namespace-shaped directories are scanned, and only files with
//! tierscope's magic number (and temporary files of tierscope's own pattern)
//! are ever evicted: anything else in the directory (a stray file, another
//! program's data) is left alone and reported once with `tracing::warn!`.
//!
//! ## Trust
//!
//! Entries become executable code, so whoever can write to the directory
//! can run code in this process. [`FileSystemCacheBuilder::open`] therefore
//! refuses a root or namespace directory that is group- or world-writable or
//! owned by another user (the error names the path, its mode and owner); a
//! root that does not exist yet is checked the same way when first used.
//! A directory shared on purpose needs [`FileSystemCacheBuilder::shared_directory`],
//! and should then carry a keyed MAC ([`FileSystemCacheBuilder::mac_key`]):
//! every entry is signed (BLAKE3 keyed hash in the header, see
//! [`crate::mac`]) and an entry that fails is [`CacheError::Integrity`],
//! removed and never deserialized. Without a key, a shared directory trusts
//! everyone who can write to it.
//!
//! Entries are opened without following symbolic links and without blocking
//! (`O_NOFOLLOW | O_NONBLOCK`), and must be regular files: a FIFO, socket,
//! device or link at an entry path is [`Corruption::NotARegularFile`]. The
//! file's length is compared with the header's claim and the tier's entry
//! bound ([`FileSystemCacheBuilder::max_entry_bytes`]) before anything is
//! mapped or allocated for the artifact.
//!
//! ## Reading an entry: one mapping, verified, then loaded
//!
//! A hit opens the entry once and, after the checks above, maps it
//! read-only; the header, the checksum (or the MAC) are verified over the
//! mapping and wasmer deserializes a slice of that same mapping (no copy,
//! no second open of the path that another writer could have replaced in
//! between). Reading the file into a buffer instead cost up to 4.8x the
//! mapped path on real modules (BENCHMARKS.md, section 3b): wasmer keeps
//! the buffer for the module's life, so every hit copied the artifact out
//! of the page cache into fresh pages that fault in one by one, while a
//! mapping of a cached file shares the page cache. The module (and its engine,
//! which keeps what it loaded, wasmer #4377) holds the mapping: page-cache
//! pages, clean and reclaimable, rather than anonymous memory; an entry
//! evicted meanwhile keeps its disk blocks until the last engine that
//! loaded it is dropped.
//!
//! A mapped file must not change or shrink while mapped (a change would
//! alter verified bytes; a read past a truncated end raises `SIGBUS`). So
//! only entries owned by this process' user and writable by nobody else
//! (`fstat` on the open descriptor) are mapped, and tierscope never writes
//! an entry in place: saves write a temporary file and rename it over the
//! entry (a new inode), evictions unlink (the inode outlives its name
//! while mapped), and a hit only touches the modification time. Only this
//! user (or root) could truncate a mapped entry, by hand. Any other entry
//! (another user's, in a shared directory; a group-writable one; every
//! entry off Unix; a filesystem that cannot map) is read into a buffer of
//! the checked length, as before, and verified the same way.
//!
//! ## Remembered verified mappings
//!
//! A hit remembers the mapping it verified, with the file's identity
//! (device, inode, length, modification and change times), for up to 256
//! entries and 256 MiB. The next hit on that entry `lstat`s the path and, if the
//! identity is unchanged, hands wasmer the same verified pages again: no
//! open, no mapping, no page faults, no second checksum pass (on
//! tree-sitter-cpp, 7 MB of artifact, the checksum alone is 10-20 % of a
//! hit; BENCHMARKS.md, section 8). This rests on what mapping already rests
//! on: a mapped entry is never changed in place. A change made anyway, by
//! this user or root, moves the file's change time; a change within the
//! same clock tick as the previous one would not, so only files whose
//! times are at least a second old when verified are remembered (the rule
//! Git applies to "racily clean" index entries), and a file written less
//! than a second before a hit is verified on every hit. A remembered entry
//! is forgotten when this tier removes or evicts it or finds it changed or
//! gone; until then it keeps an unlinked inode's blocks, as the mapping
//! held by every module loaded from it does. Off with
//! [`FileSystemCacheBuilder::remember_verified`]`(false)`.
//!
//! `contains` answers from the entry's header and length alone (a regular
//! file, valid header for this key and engine, exactly the announced
//! length): it does not read the artifact, so a `load` may still find the
//! checksum or MAC wrong.
//!
//! ## Crash safety
//!
//! A save writes a temporary file in the same directory, holding an
//! exclusive lock on it, then renames it over the final name: readers in
//! any process see the old entry or the new one, never a part. A writer
//! killed mid-write leaves only its temporary file, which is not a name any
//! reader looks up; [`FileSystemCache::open`] removes such files once no
//! process holds their lock. Entries are never modified after the rename,
//! which is also what makes mapping them safe (above). Every read verifies
//! the header and checksum
//! before the artifact reaches wasmer, so even a torn write after a power
//! loss (no `fsync` unless [`FileSystemCacheBuilder::sync_data`]) is caught
//! as [`CacheError::Corrupt`], removed, and recompiled by the loader. A
//! write that fails (a full disk) removes its temporary file and is an
//! error of the save alone: loads go on.
//!
//! ## Bound
//!
//! Total bytes (entry files, header included) are bounded; the least
//! recently used entries go first. Recency survives a restart through file
//! modification times: `open` rebuilds the index by scanning the directory,
//! and a hit refreshes its file's mtime (at most once a minute per entry).
//! A modification time in the future (a clock set back, a `touch`) is
//! clamped to the time of the scan, so such a file still ages and goes.
//! Entries of other namespaces (older wasmer versions) count against the
//! bound and, never being read, are the first to go.
//!
//! Several instances and processes may share one directory, and the bound
//! holds for the directory: every change (a new entry, evictions) happens
//! under an advisory lock (`flock` on `.tierscope-lock`) that also carries a
//! generation number. An instance that finds the generation moved since its
//! last change rescans the directory before adding an entry and evicting, so
//! it evicts what others wrote too. Between changes, the directory holds at
//! most the bound plus the temporary files being written. Files that another
//! process deleted are simply forgotten.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    aligned::{self, AlignedBuf},
    cache::{
        CacheError, Control, Corruption, Hit, IntegrityFailure, Lookup, ModuleCache, TierName,
        Verified,
    },
    engine::{EngineIdent, engine_key, ident_of},
    entry,
    mac::{KeyRing, MAC_LEN, MacKey},
    tier_events::{Eviction, EvictionCause, Observers, Residency},
    weights,
};

const ENTRY_EXT: &str = "bin";
const TMP_PREFIX: &str = ".tmp-";
const LOCK_NAME: &str = ".tierscope-lock";
/// The tier name the disk tier's own errors carry (an instrumented tier's
/// errors carry the spy's name instead).
fn disk_tier_name() -> TierName {
    static NAME: OnceLock<TierName> = OnceLock::new();
    *NAME.get_or_init(|| TierName::intern("disk"))
}
/// Default for [`FileSystemCacheBuilder::temp_grace`].
const TMP_GRACE: Duration = Duration::from_secs(10);
/// Default for [`FileSystemCacheBuilder::touch_interval`].
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Entry files: read-only for their owner, nothing for others.
const ENTRY_MODE: u32 = 0o400;
/// Entry files in a shared directory: read-only for the owner and group.
const ENTRY_MODE_SHARED: u32 = 0o440;
/// Default for [`FileSystemCacheBuilder::lock_timeout`].
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`FileSystemCacheBuilder::max_entry_bytes`].
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 30;
/// Domain separation for the disk MAC.
const MAC_DOMAIN: &[u8] = b"tierscope disk entry mac v1";
/// At most this many foreign paths are remembered (each reported once).
const MAX_REPORTED: usize = 4096;

/// A filesystem tier. Cheap to clone (clones share the index).
#[derive(Clone)]
pub struct FileSystemCache {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    capacity: Option<u64>,
    /// Largest entry file read or written (header included).
    max_entry: u64,
    sync_data: bool,
    inline_io: bool,
    map_entries: bool,
    remember_verified: bool,
    temp_grace: Duration,
    touch_interval: Duration,
    lock_timeout: Duration,
    shared_directory: bool,
    mac: Option<KeyRing>,
    dir_lock: Mutex<DirLock>,
    index: Mutex<Index>,
    /// Entries verified in this process, with their mappings (see
    /// [`VerifiedMaps`]).
    verified: Mutex<VerifiedMaps>,
    observers: Observers,
}

/// What identifies one version of an entry file: its inode, and the length
/// and change times `fstat` / `lstat` give. Any write to the file changes
/// the times (unless it lands in the same clock tick as the last change:
/// see [`VerifiedMaps`]); a save replaces the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    /// The identity of the file behind `md`, when the platform gives one.
    fn of(md: &fs::Metadata) -> Option<FileId> {
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
    fn settled(&self, now: SystemTime) -> bool {
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
const SETTLED_AFTER: Duration = Duration::from_secs(1);

/// Entries remembered at most.
const VERIFIED_MAX: usize = 256;

/// Bytes of remembered mappings at most (an entry larger than this is not
/// remembered). The pages are the page cache's, clean and reclaimable, but
/// those a hit touched count in the process' resident set.
const VERIFIED_MAX_BYTES: u64 = 256 << 20;

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
struct VerifiedMaps {
    entries: LruCache<String, (FileId, Bytes)>,
    /// Bytes of the mappings in `entries`.
    bytes: u64,
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
    fn remember(&mut self, rel: String, id: FileId, data: Bytes) {
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
    fn forget(&mut self, rel: &str) {
        if let Some((_, old)) = self.entries.pop(rel) {
            self.bytes -= old.len() as u64;
        }
    }
}

/// This instance's handle on the directory's advisory lock.
#[derive(Default)]
struct DirLock {
    file: Option<File>,
    /// The generation this instance last saw or wrote: another value means
    /// someone else changed the directory since.
    seen: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    bytes: u64,
    /// Last mtime we wrote (or found) for the file.
    touched: SystemTime,
    /// When the entry was created, when known.
    created: Option<SystemTime>,
}

struct Index {
    /// Relative path (`namespace/HASH.bin`) to metadata, least recent first.
    lru: LruCache<String, Meta>,
    bytes: u64,
}

impl Index {
    fn empty() -> Self {
        Index {
            lru: LruCache::unbounded(),
            bytes: 0,
        }
    }

    fn insert(&mut self, rel: String, meta: Meta) -> Option<Meta> {
        self.bytes += meta.bytes;
        let old = self.lru.push(rel.clone(), meta);
        match old {
            Some((k, m)) if k == rel => {
                self.bytes -= m.bytes;
                Some(m)
            }
            // `push` on an unbounded cache never evicts another key.
            _ => None,
        }
    }

    fn remove(&mut self, rel: &str) -> Option<Meta> {
        let m = self.lru.pop(rel)?;
        self.bytes -= m.bytes;
        Some(m)
    }
}

/// A cache directory that other users could write to.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing cache directory \"{}\" (mode {mode:04o}, owner uid {owner}; this process runs as uid {euid}): {why}, \
     so other users could plant entries that this process would run as code. Make it private \
     (chmod 0700, owned by uid {euid}), or opt in with FileSystemCacheBuilder::shared_directory(true) \
     and sign entries with a mac_key",
    path.display()
)]
pub struct UnsafeDirectory {
    /// The directory.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner.
    pub owner: u32,
    /// This process' effective uid.
    pub euid: u32,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Builder for [`FileSystemCache`].
#[derive(Debug, Clone)]
pub struct FileSystemCacheBuilder {
    root: PathBuf,
    capacity: Option<u64>,
    max_entry_bytes: Option<u64>,
    sync_data: bool,
    inline_io: bool,
    map_entries: bool,
    remember_verified: bool,
    temp_grace: Duration,
    touch_interval: Duration,
    lock_timeout: Duration,
    shared_directory: bool,
    mac_keys: Vec<MacKey>,
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
    /// most [`DEFAULT_MAX_ENTRY_BYTES`] (1 GiB).
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
    /// remembered: see the [module docs](self)). Off: every hit
    /// maps and verifies its entry.
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
    pub fn open(self) -> Result<FileSystemCache, CacheError> {
        let default_max = self
            .capacity
            .unwrap_or(DEFAULT_MAX_ENTRY_BYTES)
            .min(DEFAULT_MAX_ENTRY_BYTES);
        let max_entry = self
            .max_entry_bytes
            .unwrap_or(default_max)
            .min(self.capacity.unwrap_or(u64::MAX));
        let cache = FileSystemCache {
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
        };
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
}

impl FileSystemCache {
    /// Open a tier in `dir` bounded to `capacity_bytes`.
    pub fn open(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Result<Self, CacheError> {
        Self::builder(dir).capacity(capacity_bytes).open()
    }

    /// A builder for finer settings.
    pub fn builder(dir: impl Into<PathBuf>) -> FileSystemCacheBuilder {
        FileSystemCacheBuilder {
            root: dir.into(),
            capacity: None,
            max_entry_bytes: None,
            sync_data: false,
            inline_io: false,
            map_entries: true,
            remember_verified: true,
            temp_grace: TMP_GRACE,
            touch_interval: TOUCH_INTERVAL,
            lock_timeout: LOCK_TIMEOUT,
            shared_directory: false,
            mac_keys: Vec::new(),
        }
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.shared.root
    }

    /// The configured bound, if any.
    pub fn capacity_bytes(&self) -> Option<u64> {
        self.shared.capacity
    }

    /// Entries and bytes this process knows to be resident, with the bound.
    pub fn residency(&self) -> Residency {
        let index = self.shared.index.lock();
        Residency {
            entries: index.lru.len() as u64,
            bytes: index.bytes,
            capacity: self.shared.capacity,
        }
    }

    /// The file that holds (or would hold) `key` for `engine`.
    pub fn entry_path(&self, key: ModuleHash, engine: &Engine) -> PathBuf {
        self.shared.root.join(rel_path(&key, &ident_of(engine)))
    }

    /// Rebuild the index from the directory: forget entries that are gone,
    /// learn entries other processes wrote, remove abandoned temporary
    /// files, then evict down to the bound. Returns the number of entries.
    pub fn rescan(&self) -> Result<usize, CacheError> {
        let locked = self.with_dir_lock(self.shared.lock_timeout, |this, _| {
            let count = this.scan_into_index()?;
            let evicted = this.enforce_bound(None);
            Ok((count, evicted > 0))
        })?;
        let count = match locked {
            Some(count) => count,
            None => {
                // Held elsewhere for longer than the bound: read the
                // directory anyway, evict nothing (the holder's own changes
                // keep the bound; the next save here rescans under the lock).
                tracing::warn!(
                    dir = %self.shared.root.display(),
                    waited = ?self.shared.lock_timeout,
                    "the cache directory's lock is held elsewhere: scanned without it",
                );
                self.scan_into_index()?
            }
        };
        self.shared.observers.resident(self.residency());
        Ok(count)
    }

    /// Remove one entry (reported with cause `explicit`).
    pub fn remove(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let rel = rel_path(&key, &ident_of(engine));
        let path = self.shared.root.join(&rel);
        self.shared.verified.lock().forget(&rel);
        let meta = self.shared.index.lock().remove(&rel);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(CacheError::FileWrite { path, error }),
        }
        if let Some(meta) = meta {
            self.report(EvictionCause::Explicit, meta);
        }
        Ok(true)
    }

    fn report(&self, cause: EvictionCause, meta: Meta) {
        let obs = &self.shared.observers;
        if obs.is_empty() {
            return;
        }
        let age = meta
            .created
            .and_then(|c| SystemTime::now().duration_since(c).ok());
        obs.evicted(Eviction {
            cause,
            bytes: meta.bytes,
            age,
        });
        obs.resident(self.residency());
    }

    /// Check that the root and the namespace directory `ns` (when given
    /// and present) are private, unless shared on purpose: before every
    /// entry this tier verifies, maps or writes, since a directory made
    /// writable by others since the open (a `chmod 777`) lets them plant
    /// entries. Two `stat`s, beside a load's open, `fstat` and checksum. A
    /// directory that does not exist yet is fine: it is checked when it
    /// does.
    fn ensure_trusted(&self, ns: Option<&Path>) -> Result<(), CacheError> {
        let shared = &self.shared;
        if shared.shared_directory {
            return Ok(());
        }
        for dir in std::iter::once(shared.root.as_path()).chain(ns) {
            match fs::metadata(dir) {
                Ok(md) => check_private(dir, &md)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error) => {
                    return Err(CacheError::FileRead {
                        path: dir.to_path_buf(),
                        error,
                    });
                }
            }
        }
        Ok(())
    }

    /// Run `f` holding the directory's advisory lock (when the directory
    /// exists and the lock file can be opened; otherwise unlocked, which only
    /// weakens the bound across instances). `f` learns whether someone else
    /// changed the directory since this instance last did, and returns
    /// whether it changed the directory itself. Waits at most `wait` for a
    /// lock another instance or process holds: past it, `Ok(None)` and `f`
    /// does not run.
    fn with_dir_lock<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&Self, bool) -> Result<(T, bool), CacheError>,
    ) -> Result<Option<T>, CacheError> {
        let shared = &self.shared;
        // This instance's own users wait for each other (the lock is held
        // for file operations only, never across a wait).
        let mut lock = shared.dir_lock.lock();
        if lock.file.is_none() {
            lock.file = open_lock_file(&shared.root, shared.shared_directory);
        }
        let Some(file) = lock.file.as_ref() else {
            return f(self, true).map(|(t, _)| Some(t));
        };
        match lock_within(file, wait) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                warn_once(&shared.root.join(LOCK_NAME), &format!("cannot lock: {e}"));
                return f(self, true).map(|(t, _)| Some(t));
            }
        }
        let generation = read_generation(file);
        let others_changed = lock.seen != Some(generation);
        let result = f(self, others_changed);
        let mut seen = generation;
        if matches!(result, Ok((_, true))) {
            seen = generation.wrapping_add(1);
            write_generation(file, seen);
        }
        let _ = file.unlock();
        lock.seen = Some(seen);
        result.map(|(t, _)| Some(t))
    }

    /// Scan the directory and replace the index with what it holds, keeping
    /// the recency this instance knows better than the files' mtimes.
    fn scan_into_index(&self) -> Result<usize, CacheError> {
        let shared = &self.shared;
        let known: std::collections::HashMap<String, Meta> = shared
            .index
            .lock()
            .lru
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut found = self.scan(&known)?;
        // Least recently touched first, so the LRU order matches the files'.
        found.sort_by_key(|(_, m)| m.touched);
        let count = found.len();
        let mut index = shared.index.lock();
        *index = Index::empty();
        for (rel, meta) in found {
            index.insert(rel, meta);
        }
        Ok(count)
    }

    fn scan(
        &self,
        known: &std::collections::HashMap<String, Meta>,
    ) -> Result<Vec<(String, Meta)>, CacheError> {
        let shared = &self.shared;
        let mut found: Vec<(String, Meta)> = Vec::new();
        let namespaces = match fs::read_dir(&shared.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(error) => {
                return Err(CacheError::FileRead {
                    path: shared.root.clone(),
                    error,
                });
            }
        };
        let now = SystemTime::now();
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            if ns_name == LOCK_NAME {
                continue;
            }
            let is_dir = ns.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !is_namespace_name(&ns_name) {
                warn_once(&ns.path(), "not a cache namespace directory: left alone");
                continue;
            }
            if !shared.shared_directory {
                // Files may vanish under us (another process evicting).
                let Ok(md) = fs::symlink_metadata(ns.path()) else {
                    continue;
                };
                check_private(&ns.path(), &md)?;
            }
            let Ok(files) = fs::read_dir(ns.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let path = file.path();
                if is_temp_name(&name) {
                    // This process's own temporary files are writes in
                    // progress by some instance here (one may not have
                    // locked its file yet): never abandoned.
                    if temp_pid(&name) != Some(std::process::id()) {
                        remove_if_abandoned(&path, shared.temp_grace);
                    }
                    continue;
                }
                if !is_entry_name(&name) {
                    warn_once(&path, "not a cache entry: left alone");
                    continue;
                }
                // `DirEntry::metadata` does not follow links.
                let Ok(md) = file.metadata() else { continue };
                if !md.is_file() {
                    warn_once(&path, "not a regular file: left alone until read");
                    continue;
                }
                let rel = format!("{ns_name}/{name}");
                let known = known.get(&rel).filter(|m| m.bytes == md.len());
                if known.is_none() && !has_magic(&path) {
                    warn_once(&path, "no tierscope magic number: left alone until read");
                    continue;
                }
                let mut touched = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if touched > now {
                    // A clock set back, or a `touch`: age it from now on.
                    touched = now;
                    set_mtime(&path, now);
                }
                if let Some(k) = known {
                    touched = touched.max(k.touched);
                }
                found.push((
                    rel,
                    Meta {
                        bytes: md.len(),
                        touched,
                        created: known.and_then(|k| k.created).or(md.created().ok()),
                    },
                ));
            }
        }
        Ok(found)
    }

    /// Evict least recently used entries until the bound holds. `keep` is
    /// never evicted (the entry just written). Returns how many files went.
    /// Callers hold the directory lock.
    fn enforce_bound(&self, keep: Option<&str>) -> usize {
        let Some(capacity) = self.shared.capacity else {
            return 0;
        };
        let mut evicted = 0;
        loop {
            let victim = {
                let mut index = self.shared.index.lock();
                if index.bytes <= capacity {
                    return evicted;
                }
                let Some((rel, meta)) = index.lru.pop_lru() else {
                    return evicted;
                };
                index.bytes -= meta.bytes;
                if keep == Some(rel.as_str()) {
                    // Only the newest entry is left and it alone exceeds the
                    // bound: put it back (saves refuse such entries first).
                    index.insert(rel, meta);
                    return evicted;
                }
                (rel, meta)
            };
            let path = self.shared.root.join(&victim.0);
            self.shared.verified.lock().forget(&victim.0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    evicted += 1;
                    self.report(EvictionCause::Capacity, victim.1);
                }
                // Another process got there first: nothing of ours to report.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = &e as &dyn std::error::Error,
                    "unable to evict a cache file"
                ),
            }
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(&FileSystemCache) -> Result<T, CacheError> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        let off_thread = !self.shared.inline_io;
        crate::tier::blocking::run(disk_tier_name(), off_thread, move || f(&this)).await?
    }

    fn load_blocking(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
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
        let verified = match &self.shared.mac {
            Some(ring) => {
                if !verify_mac(ring, &rel, &data) {
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
        self.deserialize_verified(key, engine, rel, &path, data, md_times, mapped)
            .map(|hit| hit.with_verified(Verified::Full))
    }

    /// The remembered verified mapping of `rel`, if its file at `path` is
    /// still the one verified (see [`VerifiedMaps`]); a changed or missing
    /// file is forgotten.
    fn remembered(&self, rel: &str, path: &Path) -> Option<(Bytes, FileTimes)> {
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

    /// Deserialize `data`, an entry of `rel` whose header, length and
    /// checksum (or MAC) were verified for `key` and `engine`, and record
    /// the hit. `mapped`: the identity of the file `data` maps, to
    /// remember the mapping by.
    #[allow(clippy::too_many_arguments)]
    fn deserialize_verified(
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
        // the change time, first). The bytes are therefore the artifact
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
    fn contains_blocking(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
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

    /// Record a hit in the index and, now and then, in the file's mtime.
    fn note_hit(&self, rel: String, path: &Path, bytes: u64, times: FileTimes) {
        let now = SystemTime::now();
        let mut index = self.shared.index.lock();
        let meta = match index.lru.get_mut(&rel) {
            Some(meta) => meta,
            None => {
                drop(index);
                // Written by another process since we scanned: learn it,
                // and what else changed, under the directory's lock if it is
                // free now. A hit never waits for it: when another process
                // holds it, the entry is only added to this index (the next
                // save here rescans under the lock and evicts).
                let meta = Meta {
                    bytes,
                    touched: times.modified.min(now),
                    created: times.created,
                };
                let learned = self.with_dir_lock(Duration::ZERO, |this, others_changed| {
                    if others_changed {
                        this.scan_into_index()?;
                    }
                    this.shared.index.lock().insert(rel.clone(), meta);
                    Ok(((), this.enforce_bound(Some(&rel)) > 0))
                });
                match learned {
                    Ok(Some(())) => {}
                    Ok(None) => {
                        self.shared.index.lock().insert(rel, meta);
                    }
                    Err(e) => tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "unable to rescan the cache directory"
                    ),
                }
                self.shared.observers.resident(self.residency());
                return;
            }
        };
        // A touch time in the future (a clock set back) is stale too.
        let stale = now
            .duration_since(meta.touched)
            .map_or(true, |d| d >= self.shared.touch_interval);
        if stale {
            meta.touched = now;
        }
        drop(index);
        if stale {
            // Best effort: a failure only loses recency across a restart.
            set_mtime(path, now);
        }
    }

    fn discard_corrupt(&self, rel: &str, path: &Path, bytes: u64) {
        self.shared.verified.lock().forget(rel);
        let known = self.shared.index.lock().remove(rel);
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = &e as &dyn std::error::Error,
                "unable to remove a corrupt cache file"
            ),
        }
        let meta = known.unwrap_or(Meta {
            bytes,
            touched: SystemTime::now(),
            created: None,
        });
        self.report(EvictionCause::Corrupt, meta);
    }

    fn save_blocking(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let shared = &self.shared;
        let ident = ident_of(engine);
        let artifact = module.serialize()?;
        weights::record(key, engine_key(engine), artifact.len() as u64);
        let file_len = (entry::HEADER_LEN + artifact.len()) as u64;
        if file_len > shared.max_entry {
            return Err(CacheError::TooLarge {
                tier: disk_tier_name(),
                size: file_len,
                limit: shared.max_entry,
            });
        }
        let rel = rel_path(&key, &ident);
        let path = shared.root.join(&rel);
        let dir = shared.root.join(&ident.namespace);
        self.ensure_trusted(None)?;
        create_dir(&dir, shared.shared_directory).map_err(|error| CacheError::FileWrite {
            path: dir.clone(),
            error,
        })?;
        // Created just now, by us or (racing) by someone else: check it.
        self.ensure_trusted(Some(&dir))?;
        // Unique within the process (several caches may share a directory)
        // and, with the pid, across processes.
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{key}-{}-{n}", std::process::id()));
        let mut header = entry::encode_header(&key, &ident, &artifact);
        if let Some(ring) = &shared.mac {
            let tag = ring.sign(&mac_parts(&rel, &header, &artifact));
            header[entry::MAC_RANGE].copy_from_slice(&tag);
        }
        let file = match write_locked(
            &tmp,
            &[&header, &artifact],
            shared.sync_data,
            shared.shared_directory,
        ) {
            Ok(file) => file,
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::FileWrite { path, error });
            }
        };
        // Make the entry visible, learn what others wrote, and evict, all
        // under the directory lock so the bound holds for the directory.
        let replaced = self.with_dir_lock(shared.lock_timeout, |this, others_changed| {
            if others_changed && let Err(e) = this.scan_into_index() {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            if let Err(error) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::FileWrite {
                    path: path.clone(),
                    error,
                });
            }
            let now = SystemTime::now();
            let replaced = this.shared.index.lock().insert(
                rel.clone(),
                Meta {
                    bytes: file_len,
                    touched: now,
                    created: Some(now),
                },
            );
            this.enforce_bound(Some(&rel));
            Ok((replaced, true))
        })?;
        let Some(replaced) = replaced else {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Timeout {
                op: "save",
                tier: disk_tier_name(),
                after: shared.lock_timeout,
            });
        };
        if shared.sync_data {
            // Make the rename itself durable.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        drop(file); // releases the temporary file's lock
        if let Some(old) = replaced {
            self.report(EvictionCause::Replaced, old);
        }
        shared.observers.resident(self.residency());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct FileTimes {
    modified: SystemTime,
    created: Option<SystemTime>,
}

fn rel_path(key: &ModuleHash, ident: &EngineIdent) -> String {
    format!("{}/{key}.{ENTRY_EXT}", ident.namespace)
}

/// What the disk MAC covers: a domain, the entry's relative path (namespace
/// and key), the header with its MAC field zeroed, the artifact.
fn mac_parts<'a>(
    rel: &'a str,
    header: &'a [u8; entry::HEADER_LEN],
    artifact: &'a [u8],
) -> [&'a [u8]; 4] {
    // `header` is passed with its MAC field zeroed by the callers.
    [MAC_DOMAIN, rel.as_bytes(), header, artifact]
}

fn verify_mac(ring: &KeyRing, rel: &str, data: &[u8]) -> bool {
    let Some((head, artifact)) = data.split_at_checked(entry::HEADER_LEN) else {
        return false;
    };
    let mut header = [0u8; entry::HEADER_LEN];
    header.copy_from_slice(head);
    let mut tag = [0u8; MAC_LEN];
    tag.copy_from_slice(&header[entry::MAC_RANGE]);
    header[entry::MAC_RANGE].fill(0);
    ring.verify(&mac_parts(rel, &header, artifact), &tag)
}

/// Why an entry file was not read.
enum Refused {
    Io(io::Error),
    /// Refused, with the file's length for the eviction report.
    Corrupt(Corruption, u64),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Io(e)
    }
}

/// `O_NOFOLLOW | O_NONBLOCK`: never follow a link, never wait on a FIFO.
#[cfg(unix)]
fn no_follow_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// An entry file that passed [`check_entry_file`].
struct CheckedFile {
    /// Positioned after the header.
    file: File,
    header: [u8; entry::HEADER_LEN],
    /// Length of the file (= header + announced artifact), at most the bound.
    len: u64,
    times: FileTimes,
    /// Only this process' user can change or truncate the file (see
    /// [`may_map`]).
    private: bool,
    /// The file's identity, from the same `fstat`.
    id: Option<FileId>,
}

/// Open an entry without following links or blocking, and check that it is
/// a regular file no larger than `max`, whose header is valid for `key`
/// and announces exactly the file's length.
fn check_entry_file(
    path: &Path,
    key: &ModuleHash,
    ident: &EngineIdent,
    max: u64,
) -> Result<CheckedFile, Refused> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if is_not_a_file_error(&e) => {
            return Err(Refused::Corrupt(Corruption::NotARegularFile, 0));
        }
        Err(e) => return Err(Refused::Io(e)),
    };
    let mut md = file.metadata()?;
    if !md.is_file() {
        return Err(Refused::Corrupt(Corruption::NotARegularFile, 0));
    }
    if make_read_only(&file, &md) {
        md = file.metadata()?;
    }
    let len = md.len();
    if len > max {
        return Err(Refused::Corrupt(
            Corruption::Oversized {
                actual: len,
                limit: max,
            },
            len,
        ));
    }
    let mut header = [0u8; entry::HEADER_LEN];
    if len < entry::HEADER_LEN as u64 {
        return Err(Refused::Corrupt(
            Corruption::Truncated {
                actual: len,
                expected: entry::HEADER_LEN as u64,
            },
            len,
        ));
    }
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // Shrank under us.
            return Err(Refused::Corrupt(
                Corruption::Truncated {
                    actual: 0,
                    expected: entry::HEADER_LEN as u64,
                },
                len,
            ));
        }
        Err(e) => return Err(Refused::Io(e)),
    }
    let announced =
        entry::decode_header(&header, key, ident).map_err(|c| Refused::Corrupt(c, len))?;
    let expected = announced.saturating_add(entry::HEADER_LEN as u64);
    if len < expected {
        return Err(Refused::Corrupt(
            Corruption::Truncated {
                actual: len,
                expected,
            },
            len,
        ));
    }
    if len > expected {
        return Err(Refused::Corrupt(
            Corruption::TrailingBytes {
                actual: len,
                expected,
            },
            len,
        ));
    }
    let times = FileTimes {
        modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        created: md.created().ok(),
    };
    Ok(CheckedFile {
        file,
        header,
        len,
        times,
        private: may_map(&md),
        id: FileId::of(&md),
    })
}

/// Whether nobody but root can write or truncate the file behind `md` (an
/// `fstat` of the open descriptor): owned by the effective user, with no
/// write permission for anyone, the owner included (entries are written
/// read-only: see `write_locked`). Only such a file is mapped: a file that
/// a process can truncate could raise `SIGBUS` on a read of the mapping,
/// and one it can write could change after it was verified. What remains:
/// root, or this user changing the mode first (`chmod u+w`), which moves
/// the file's change time (so a remembered mapping is dropped, see
/// `VerifiedMaps`) but cannot be kept from a mapping already handed to a
/// module. Unix only; elsewhere entries are always read.
fn may_map(md: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        md.uid() == rustix::process::geteuid().as_raw() && md.mode() & 0o222 == 0
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        false
    }
}

/// Make an entry this user owns read-only, if some write bit is set (an
/// entry written before entries were read-only, or changed by hand):
/// `fchmod` on the open descriptor, which an owner may do on a read-only
/// one. True if the mode changed. Best effort: a file that stays writable
/// is read, not mapped ([`may_map`]).
fn make_read_only(file: &File, md: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = md.mode() & 0o7777;
        if md.uid() != rustix::process::geteuid().as_raw() || mode & 0o222 == 0 {
            return false;
        }
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode & !0o222)).is_ok()
    }
    #[cfg(not(unix))]
    {
        let _ = (file, md);
        false
    }
}

/// A whole entry file, after [`check_entry_file`], in one open and one
/// `fstat`: mapped when `map` is on and [`may_map`] allows it (no copy: the same pages are
/// verified and then handed to wasmer, and stay in the page cache, shared,
/// clean and reclaimable, for as long as the module lives), else read into
/// one allocation of the checked length. Returns the bytes, the file's
/// times and, when the bytes are a mapping, the file's identity.
fn read_entry(
    path: &Path,
    key: &ModuleHash,
    ident: &EngineIdent,
    max: u64,
    map: bool,
) -> Result<(Bytes, FileTimes, Option<FileId>), Refused> {
    let checked = check_entry_file(path, key, ident, max)?;
    // `len` is at most `max`, which fits in memory on the platforms wasmer
    // supports; an allocation (or mapping) failure is an error, not an abort.
    let len_usize =
        usize::try_from(checked.len).map_err(|_| io::Error::other("entry too large"))?;
    if map && checked.private {
        match map_entry(&checked.file, len_usize) {
            Ok(map) => return Ok((Bytes::from_owner(map), checked.times, checked.id)),
            // A filesystem that cannot map (some FUSE or network ones):
            // read instead.
            Err(e) => tracing::debug!(
                path = %path.display(),
                error = &e as &dyn std::error::Error,
                "cannot map a cache entry: reading it"
            ),
        }
    }
    let CheckedFile {
        mut file,
        header,
        len,
        times,
        ..
    } = checked;
    // One buffer of the checked length, aligned for wasmer's deserializer
    // (see `crate::aligned`): exactly that many bytes are read, so a file
    // growing under us is not read past its checked length, and one that
    // shrank is refused as truncated.
    let mut buf =
        AlignedBuf::zeroed(len_usize).map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
    let data = buf.as_mut_slice();
    data[..entry::HEADER_LEN].copy_from_slice(&header);
    match file.read_exact(&mut data[entry::HEADER_LEN..]) {
        Ok(()) => Ok((buf.into_bytes(), times, None)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Refused::Corrupt(
            Corruption::Truncated {
                actual: 0,
                expected: len,
            },
            len,
        )),
        Err(e) => Err(Refused::Io(e)),
    }
}

/// Map the first `len` bytes of an entry file, read-only.
#[cfg(unix)]
fn map_entry(file: &File, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: a mapping is only sound while nobody changes or truncates
    // the file: a change would alter bytes after they were verified, and
    // reading a page past a truncated end raises SIGBUS. `read_entry` maps
    // only a file that `check_entry_file` found, on this very descriptor
    // (opened with O_NOFOLLOW, then `fstat`), to be a regular file owned by
    // this process' effective user with no write permission for anyone,
    // the owner included (`may_map`), whose length matched the header's
    // claim and the entry bound: only root, or this user after changing
    // the mode back, could open it to change or truncate it. tierscope itself
    // never writes or truncates an entry in place: a save writes a
    // temporary file and renames it over the entry (a new inode: this
    // mapping keeps the old one, unchanged), an eviction or a removal
    // unlinks it (the inode lives on until unmapped), and a hit only
    // updates its modification time. The mapping is read-only and `len` is
    // the checked length.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }?;
    Ok(map)
}

#[cfg(not(unix))]
fn map_entry(_file: &File, _len: usize) -> io::Result<memmap2::Mmap> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "entries are mapped on Unix only",
    ))
}

/// Errors of an `O_NOFOLLOW | O_NONBLOCK` open that mean "not a regular
/// file": a symbolic link (`ELOOP`), a socket or a FIFO without a writer
/// (`ENXIO`).
fn is_not_a_file_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        let raw = e.raw_os_error();
        raw == Some(Errno::LOOP.raw_os_error()) || raw == Some(Errno::NXIO.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Whether a file starts with tierscope's magic number (opened without
/// following links or blocking).
fn has_magic(path: &Path) -> bool {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let Ok(mut file) = options.open(path) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).is_ok() && magic == entry::MAGIC
}

/// Best effort: a failure only loses recency across a restart. Entries are
/// read-only, so the time is set by path (`utimensat`, which their owner
/// may do without write permission), not through a descriptor opened for
/// writing; links are not followed.
fn set_mtime(path: &Path, when: SystemTime) {
    #[cfg(unix)]
    {
        use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
        let Ok(since) = when.duration_since(SystemTime::UNIX_EPOCH) else {
            return;
        };
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: since.as_secs() as i64,
                tv_nsec: i64::from(since.subsec_nanos()),
            },
        };
        let _ = utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW);
    }
    #[cfg(not(unix))]
    {
        let mut options = OpenOptions::new();
        options.write(true);
        if let Ok(f) = options.open(path) {
            let _ = f.set_modified(when);
        }
    }
}

/// `<deterministic id>-<artifact format>-wasmer<version>-ts<format>`, in
/// the characters [`EngineIdent::namespace`] uses.
fn is_namespace_name(name: &str) -> bool {
    let safe = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let Some((rest, format)) = name.rsplit_once("-ts") else {
        return false;
    };
    safe && rest.contains("-wasmer")
        && !format.is_empty()
        && format.len() <= 5
        && format.bytes().all(|b| b.is_ascii_digit())
}

/// `<64 upper-case hex digits>.bin`.
fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".bin")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
}

/// `.tmp-<64 upper-case hex digits>-<pid>-<n>`.
fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
        return false;
    };
    let mut parts = rest.split('-');
    let (Some(hash), Some(pid), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    is_entry_name(&format!("{hash}.bin")) && digits(pid) && digits(n)
}

/// The writer's pid in a temporary file's name.
fn temp_pid(name: &str) -> Option<u32> {
    name.strip_prefix(TMP_PREFIX)?
        .split('-')
        .nth(1)?
        .parse()
        .ok()
}

/// Report a path that is not ours, once per process.
fn warn_once(path: &Path, what: &str) {
    static REPORTED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let mut reported = REPORTED.get_or_init(Default::default).lock();
    if reported.contains(path) || reported.len() >= MAX_REPORTED {
        return;
    }
    reported.insert(path.to_path_buf());
    drop(reported);
    tracing::warn!(path = %path.display(), "{what}");
}

/// Refuse a directory other users could write to.
fn check_private(path: &Path, md: &fs::Metadata) -> Result<(), CacheError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let euid = rustix::process::geteuid().as_raw();
        let mode = md.mode() & 0o7777;
        let why = if !md.is_dir() {
            Some("it is not a directory")
        } else if md.uid() != euid {
            Some("it is owned by another user")
        } else if mode & 0o022 != 0 {
            Some("it is group- or world-writable")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(CacheError::other(UnsafeDirectory {
                path: path.to_path_buf(),
                mode,
                owner: md.uid(),
                euid,
                why,
            }));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, md);
    Ok(())
}

fn open_lock_file(root: &Path, shared: bool) -> Option<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(if shared { 0o660 } else { 0o600 })
            .custom_flags(no_follow_flags());
    }
    #[cfg(not(unix))]
    let _ = shared;
    let path = root.join(LOCK_NAME);
    let opened = match options.open(&path) {
        // Another user's lock file in a shared directory: a read-only
        // descriptor still takes the lock (the generation then cannot be
        // written, so this instance rescans before each change).
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let mut read_only = OpenOptions::new();
            read_only.read(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                read_only.custom_flags(no_follow_flags());
            }
            read_only.open(&path)
        }
        other => other,
    };
    match opened {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Some(f),
        Ok(_) => None,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn_once(&path, &format!("cannot open lock file: {e}"));
            }
            None
        }
    }
}

/// Take `file`'s advisory lock, waiting at most `wait` for another holder
/// (polling: `flock` has no timed wait). `Ok(false)`: still held elsewhere.
fn lock_within(file: &File, wait: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = Duration::from_micros(500);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn read_generation(file: &File) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        if file.read_exact_at(&mut b, 0).is_ok() {
            return u64::from_le_bytes(b);
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    0
}

fn write_generation(file: &File, generation: u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let _ = file.write_all_at(&generation.to_le_bytes(), 0);
    }
    #[cfg(not(unix))]
    let _ = (file, generation);
}

/// Create `tmp` (which must not exist), lock it, write `parts`, and return
/// the still-locked file.
///
/// The file is created read-only (0400, or 0440 in a shared directory):
/// the descriptor that creates it may write, nobody else can open it for
/// writing afterwards, not even this user without root (a `cp` over the
/// entry, a shell `>` redirect or a `truncate` fail with "permission
/// denied" instead of changing pages that live modules map).
fn write_locked(tmp: &Path, parts: &[&[u8]], sync: bool, shared: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if shared {
            ENTRY_MODE_SHARED
        } else {
            ENTRY_MODE
        });
    }
    #[cfg(not(unix))]
    let _ = shared;
    let mut file = options.open(tmp)?;
    file.lock()?;
    for part in parts {
        file.write_all(part)?;
    }
    if sync {
        file.sync_data()?;
    }
    Ok(file)
}

/// Remove a temporary file if its writer is gone (no lock held) and it is
/// older than the grace period. (Opened to read: a read-only descriptor
/// takes the lock, and temporary files are read-only.)
fn remove_if_abandoned(path: &Path, grace: Duration) {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let Ok(file) = options.open(path) else {
        return;
    };
    let Ok(md) = file.metadata() else { return };
    let old_enough = md
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace);
    if md.is_file() && old_enough && file.try_lock().is_ok() {
        let _ = fs::remove_file(path);
    }
}

/// Create `dir` and its missing parents: 0700, or 0770 for a shared
/// directory (less the umask).
fn create_dir(dir: &Path, shared: bool) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(if shared { 0o770 } else { 0o700 });
    }
    #[cfg(not(unix))]
    let _ = shared;
    builder.create(dir)
}

impl std::fmt::Debug for FileSystemCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.residency();
        f.debug_struct("FileSystemCache")
            .field("dir", &self.shared.root)
            .field("entries", &r.entries)
            .field("bytes", &r.bytes)
            .field("capacity", &self.shared.capacity)
            .field("shared_directory", &self.shared.shared_directory)
            .field(
                "mac_keys",
                &self.shared.mac.as_ref().map(KeyRing::fingerprints),
            )
            .finish()
    }
}

#[async_trait::async_trait]
impl ModuleCache for FileSystemCache {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.lookup(key, engine, Lookup::request())
            .await
            .map(|hit| hit.module)
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        _how: Lookup,
    ) -> Result<Hit, CacheError> {
        let engine = engine.clone();
        self.blocking(move |this| this.load_blocking(key, &engine))
            .await
    }

    /// True when a regular file with a valid header for this key and engine,
    /// of exactly the announced length, is at the entry path (checked on the
    /// blocking pool). The checksum and MAC are verified by `load` only; a
    /// file that fails these checks is removed and answers `false`.
    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let engine = engine.clone();
        self.blocking(move |this| this.contains_blocking(key, &engine))
            .await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let engine = engine.clone();
        let module = module.clone();
        self.blocking(move |this| this.save_blocking(key, &engine, &module))
            .await
    }

    fn control(&self, message: &mut Control<'_>) {
        if let Control::AttachObserver(observer) = message {
            observer.verifies();
            self.shared
                .observers
                .attach(Arc::clone(observer), Some(self.residency()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_mappings_stay_within_their_count_and_bytes() {
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
    fn only_files_unchanged_for_a_second_are_settled() {
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

    #[test]
    fn names_are_recognized() {
        let ident = ident_of(&Engine::default());
        assert!(is_namespace_name(&ident.namespace), "{}", ident.namespace);
        assert!(is_namespace_name("abc-universal-wasmer6.0.0-ts1"));
        assert!(!is_namespace_name("firmware"));
        assert!(!is_namespace_name("abc-wasmer1-ts"));
        assert!(!is_namespace_name("a b-wasmer1-ts1"));
        let key = ModuleHash::from_bytes([0xAB; 32]);
        assert!(is_entry_name(&format!("{key}.bin")));
        assert!(!is_entry_name(&format!(
            "{}.bin",
            key.to_string().to_lowercase()
        )));
        assert!(!is_entry_name("image.bin"));
        assert!(is_temp_name(&format!(".tmp-{key}-12-0")));
        assert_eq!(temp_pid(&format!(".tmp-{key}-12-0")), Some(12));
        assert!(!is_temp_name(&format!(".tmp-{key}-12")));
        assert!(!is_temp_name(".tmp-not-ours"));
    }
}
