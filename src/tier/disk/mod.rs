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
//! can run code in this process. [`FileSystemCacheBuilder::build`] therefore
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
//! open, no mapping, no page faults, no second checksum pass (what that
//! saves: BENCHMARKS.md). This rests on what mapping already rests
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
//! ## Verification records
//!
//! A remembered mapping saves the checksum pass within one process; a new
//! process (a restart, another runtime on the host, an engine per tenant)
//! would still read every byte of an entry on its first hit, a pass over
//! memory that is in the page cache but not the CPU's (about 0.7 ms for
//! a 7 MB artifact, which the hit then does not touch again). So a hit
//! that checked an entry of 1 MiB or more in full, its file settled,
//! writes a record beside it (`<MODULE HASH>.vfy`: the file's identity as
//! above and its header's hash, self-checked, read-only), and another
//! process's first hit of the same file, unchanged by the same rule,
//! trusts that verification: a verification per file version, not per
//! process. (Linux fs-verity would do better, checking every page as it
//! is read from storage, but needs kernel and filesystem support that
//! hosts may lack.) A record must be this user's and writable by nobody
//! else, name the very file just opened (same `fstat`) and its header, or
//! it is ignored: the entry is checked in full and a good record replaces
//! the bad one. Records go with their entries, a scan removes those whose
//! entry is gone. A hit that refreshes its file's modification time (the
//! recency, at most once per `touch_interval`) moves its change time too,
//! so the record is stale until a full check a second or more later
//! writes a new one. Records are kept only where mapping is and the checksum
//! is the whole check: a private directory, no MAC key. Off with
//! [`FileSystemCacheBuilder::remember_verified`]`(false)`, as remembered
//! mappings are. What a record does not catch that a full check does:
//! storage that returns other bytes than it was given without the file
//! being written (a failing disk), which a remembered mapping also trusts
//! once its clean pages are reclaimed and read again.
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
//!
//! ## Where each part lives
//!
//! - this module: [`FileSystemCache`], its public methods and the
//!   [`ModuleCache`] implementation;
//! - `builder`: [`FileSystemCacheBuilder`] and the defaults;
//! - `load` and `save`: the two paths through an entry;
//! - `entry_file`: opening, checking, mapping (the mapping's `unsafe`) and
//!   writing entry files, and the names they go by;
//! - `remembered`: verified mappings kept for later hits;
//! - `record`: verification records shared by processes;
//! - `index`: the LRU index, the directory scan, eviction;
//! - `inspect`: an operator's view: inventory, verify;
//! - `trim`: trim and clear, under the directory's lock;
//! - `dir_lock`: the advisory lock several processes share;
//! - `trust`: who may write the directory and the files it maps.

mod builder;
mod dir_lock;
mod entry_file;
mod index;
mod inspect;
mod load;
mod record;
mod remembered;
mod save;
mod trim;
mod trust;

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

pub use builder::FileSystemCacheBuilder;
pub use inspect::{CacheFile, EntryVerdict, FileKind, Inventory, Namespace, VerifySummary};
pub use trim::TrimReport;
pub use trust::UnsafeDirectory;

use crate::{
    aligned::{self, AlignedBuf},
    cache::{
        CacheError, Control, Corruption, Hit, IntegrityFailure, Lookup, ModuleCache, TierName,
        Verified,
    },
    engine::{EngineIdent, engine_key, ident_of},
    entry,
    mac::{KeyRing, MacKey},
    tier_events::{Eviction, EvictionCause, Observers, Residency},
    weights,
};
// The parts' items, for each other (each part imports `super::*`).
use builder::*;
use dir_lock::*;
use entry_file::*;
use index::*;
use record::*;
use remembered::*;
use trust::*;

/// The tier name the disk tier's own errors carry (an instrumented tier's
/// errors carry the spy's name instead).
fn disk_tier_name() -> TierName {
    static NAME: OnceLock<TierName> = OnceLock::new();
    *NAME.get_or_init(|| TierName::intern("disk"))
}

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

impl FileSystemCache {
    /// Open a tier in `dir` bounded to `capacity_bytes`.
    pub fn open(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Result<Self, CacheError> {
        Self::builder(dir).capacity(capacity_bytes).build()
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

    /// Remove one entry (reported with cause `explicit`).
    pub fn remove(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let rel = rel_path(&key, &ident_of(engine));
        let path = self.shared.root.join(&rel);
        self.forget_verified(&rel);
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

    async fn blocking<T, F>(&self, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(&FileSystemCache) -> Result<T, CacheError> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        let off_thread = !self.shared.inline_io;
        crate::tier::blocking::run(disk_tier_name(), off_thread, move || f(&this)).await?
    }
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
