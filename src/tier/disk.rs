//! A bounded, crash-safe filesystem tier.
//!
//! ## Layout
//!
//! ```text
//! <dir>/                                  mode 0700, created on first save
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
//! ## Crash safety
//!
//! A save writes a temporary file in the same directory, holding an
//! exclusive lock on it, then renames it over the final name: readers in
//! any process see the old entry or the new one, never a part. A writer
//! killed mid-write leaves only its temporary file, which is not a name any
//! reader looks up; [`FileSystemCache::open`] removes such files once no
//! process holds their lock. Every read verifies the header and checksum
//! before the artifact reaches wasmer, so even a torn write after a power
//! loss (no `fsync` unless [`FileSystemCacheBuilder::sync_data`]) is caught
//! as [`CacheError::Corrupt`], removed, and recompiled by the loader.
//!
//! ## Bound
//!
//! Total bytes (entry files, header included) are bounded; the least
//! recently used entries go first. Recency survives a restart through file
//! modification times: `open` rebuilds the index by scanning the directory,
//! and a hit refreshes its file's mtime (at most once a minute per entry).
//! Entries of other namespaces (older wasmer versions) count against the
//! bound and, never being read, are the first to go.
//!
//! Several processes may share one directory. Each enforces the bound over
//! the entries it knows (found at open, or written or read since); files
//! that another process deleted are simply forgotten. Call
//! [`FileSystemCache::rescan`] to pick up what other processes wrote.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
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
    cache::{CacheError, Hit, ModuleCache},
    engine::{EngineIdent, engine_key, ident_of},
    entry,
    mac::MacKey,
    observer::{Eviction, EvictionCause, Observers, Residency, TierObserver},
    sizes,
};

const ENTRY_EXT: &str = "bin";
const TMP_PREFIX: &str = ".tmp-";
/// Default for [`FileSystemCacheBuilder::temp_grace`].
const TMP_GRACE: Duration = Duration::from_secs(10);
/// Default for [`FileSystemCacheBuilder::touch_interval`].
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// A filesystem tier. Cheap to clone (clones share the index).
#[derive(Clone)]
pub struct FileSystemCache {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    capacity: Option<u64>,
    sync_data: bool,
    inline_io: bool,
    temp_grace: Duration,
    touch_interval: Duration,
    index: Mutex<Index>,
    observers: Observers,
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

/// Builder for [`FileSystemCache`].
#[derive(Debug, Clone)]
pub struct FileSystemCacheBuilder {
    root: PathBuf,
    capacity: Option<u64>,
    sync_data: bool,
    inline_io: bool,
    temp_grace: Duration,
    touch_interval: Duration,
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

    /// Accept a root or namespace directory that other users may write to.
    pub fn shared_directory(mut self, on: bool) -> Self {
        self.shared_directory = on;
        self
    }

    /// Sign entries with a keyed MAC.
    pub fn mac_key(mut self, key: impl Into<MacKey>) -> Self {
        self.mac_keys.push(key.into());
        self
    }

    /// Open the tier: scan the directory (if it exists) to rebuild the LRU
    /// index, remove temporary files left by crashed writers, and evict
    /// down to the bound.
    pub fn open(self) -> Result<FileSystemCache, CacheError> {
        let cache = FileSystemCache {
            shared: Arc::new(Shared {
                root: self.root,
                capacity: self.capacity,
                sync_data: self.sync_data,
                inline_io: self.inline_io,
                temp_grace: self.temp_grace,
                touch_interval: self.touch_interval,
                index: Mutex::new(Index {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                }),
                observers: Observers::default(),
            }),
        };
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
            sync_data: false,
            inline_io: false,
            temp_grace: TMP_GRACE,
            touch_interval: TOUCH_INTERVAL,
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
        let shared = &self.shared;
        let mut found: Vec<(String, Meta)> = Vec::new();
        let namespaces = match fs::read_dir(&shared.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                *shared.index.lock() = Index {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                };
                return Ok(0);
            }
            Err(error) => {
                return Err(CacheError::FileRead {
                    path: shared.root.clone(),
                    error,
                });
            }
        };
        for ns in namespaces.flatten() {
            if !ns.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            let Ok(files) = fs::read_dir(ns.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_PREFIX) {
                    remove_if_abandoned(&file.path(), shared.temp_grace);
                    continue;
                }
                if Path::new(&name).extension().is_none_or(|e| e != ENTRY_EXT) {
                    continue;
                }
                // Files may vanish under us (another process evicting).
                let Ok(md) = file.metadata() else { continue };
                if !md.is_file() {
                    continue;
                }
                let touched = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((
                    format!("{ns_name}/{name}"),
                    Meta {
                        bytes: md.len(),
                        touched,
                        created: md.created().ok(),
                    },
                ));
            }
        }
        // Least recently touched first, so the LRU order matches the files'.
        found.sort_by_key(|(_, m)| m.touched);
        let count = found.len();
        {
            let mut index = shared.index.lock();
            *index = Index {
                lru: LruCache::unbounded(),
                bytes: 0,
            };
            for (rel, meta) in found {
                index.insert(rel, meta);
            }
        }
        self.enforce_bound(None);
        self.shared.observers.resident(self.residency());
        Ok(count)
    }

    /// Remove one entry (reported with cause `explicit`).
    pub fn remove(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let rel = rel_path(&key, &ident_of(engine));
        let path = self.shared.root.join(&rel);
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

    /// Evict least recently used entries until the bound holds. `keep` is
    /// never evicted (the entry just written).
    fn enforce_bound(&self, keep: Option<&str>) {
        let Some(capacity) = self.shared.capacity else {
            return;
        };
        loop {
            let victim = {
                let mut index = self.shared.index.lock();
                if index.bytes <= capacity {
                    return;
                }
                let Some((rel, meta)) = index.lru.pop_lru() else {
                    return;
                };
                index.bytes -= meta.bytes;
                if keep == Some(rel.as_str()) {
                    // Only the newest entry is left and it alone exceeds the
                    // bound: put it back (saves refuse such entries first).
                    index.insert(rel, meta);
                    return;
                }
                (rel, meta)
            };
            let path = self.shared.root.join(&victim.0);
            match fs::remove_file(&path) {
                Ok(()) => self.report(EvictionCause::Capacity, victim.1),
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
        if self.shared.inline_io || tokio::runtime::Handle::try_current().is_err() {
            return f(self);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| CacheError::Other(format!("disk tier worker failed: {e}").into()))?
    }

    fn load_blocking(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        let ekey = engine_key(engine);
        let ident = ident_of(engine);
        let rel = rel_path(&key, &ident);
        let path = self.shared.root.join(&rel);
        let (data, md_times) = match read_entry(&path) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Perhaps deleted by another process: forget it.
                self.shared.index.lock().remove(&rel);
                return Err(CacheError::NotFound);
            }
            Err(error) => return Err(CacheError::FileRead { path, error }),
        };
        let range = match entry::decode(&data, &key, &ident) {
            Ok(range) => range,
            Err(reason) => {
                self.discard_corrupt(&rel, &path, data.len() as u64);
                return Err(CacheError::Corrupt {
                    location: path.display().to_string(),
                    reason,
                });
            }
        };
        let file_len = data.len() as u64;
        let artifact_len = (range.end - range.start) as u64;
        sizes::record(key, ekey, artifact_len);
        let artifact = Bytes::from(data).slice(range);
        // SAFETY: `entry::decode` verified, before this point, that the
        // bytes carry our magic and format version, were written for this
        // exact module hash under this engine configuration and wasmer
        // version, have exactly the announced length, and match the XXH3-128
        // checksum taken of the `Module::serialize()` output when it was
        // saved. The bytes are therefore the artifact this wasmer produced
        // for this engine, which is what `Module::deserialize` requires.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(engine, artifact) };
        let module = match module {
            Ok(m) => m,
            Err(e) => {
                self.discard_corrupt(&rel, &path, file_len);
                return Err(CacheError::Deserialize(e));
            }
        };
        self.note_hit(rel, &path, file_len, md_times);
        Ok(Hit {
            module,
            tier: None,
            bytes: Some(artifact_len),
        })
    }

    /// Record a hit in the index and, now and then, in the file's mtime.
    fn note_hit(&self, rel: String, path: &Path, bytes: u64, times: FileTimes) {
        let now = SystemTime::now();
        let mut index = self.shared.index.lock();
        let meta = match index.lru.get_mut(&rel) {
            Some(meta) => meta,
            None => {
                // Written by another process since we scanned.
                index.insert(
                    rel.clone(),
                    Meta {
                        bytes,
                        touched: times.modified,
                        created: times.created,
                    },
                );
                drop(index);
                self.enforce_bound(Some(&rel));
                self.shared.observers.resident(self.residency());
                return;
            }
        };
        let stale = now
            .duration_since(meta.touched)
            .is_ok_and(|d| d >= self.shared.touch_interval);
        if stale {
            meta.touched = now;
        }
        drop(index);
        if stale {
            // Best effort: a failure only loses recency across a restart.
            if let Ok(f) = File::options().write(true).open(path) {
                let _ = f.set_modified(now);
            }
        }
    }

    fn discard_corrupt(&self, rel: &str, path: &Path, bytes: u64) {
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
        sizes::record(key, engine_key(engine), artifact.len() as u64);
        let file_len = (entry::HEADER_LEN + artifact.len()) as u64;
        if let Some(capacity) = shared.capacity
            && file_len > capacity
        {
            return Err(CacheError::TooLarge {
                tier: format!("disk at {}", shared.root.display()),
                size: file_len,
                limit: capacity,
            });
        }
        let rel = rel_path(&key, &ident);
        let path = shared.root.join(&rel);
        let dir = shared.root.join(&ident.namespace);
        create_private_dir(&dir).map_err(|error| CacheError::FileWrite {
            path: dir.clone(),
            error,
        })?;
        // Unique within the process (several caches may share a directory)
        // and, with the pid, across processes.
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{key}-{}-{n}", std::process::id()));
        let header = entry::encode_header(&key, &ident, &artifact);
        let written =
            write_locked(&tmp, &[&header, &artifact], shared.sync_data).and_then(|file| {
                fs::rename(&tmp, &path)?;
                Ok(file)
            });
        let file = match written {
            Ok(file) => file,
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::FileWrite { path, error });
            }
        };
        if shared.sync_data {
            // Make the rename itself durable.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        drop(file); // releases the lock
        let now = SystemTime::now();
        let replaced = shared.index.lock().insert(
            rel.clone(),
            Meta {
                bytes: file_len,
                touched: now,
                created: Some(now),
            },
        );
        if let Some(old) = replaced {
            self.report(EvictionCause::Replaced, old);
        }
        self.enforce_bound(Some(&rel));
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

/// Read a whole entry file with one open, one `fstat` and one read.
fn read_entry(path: &Path) -> io::Result<(Vec<u8>, FileTimes)> {
    let mut file = File::open(path)?;
    let md = file.metadata()?;
    let len = usize::try_from(md.len()).map_err(|_| io::Error::other("file too large"))?;
    let mut data = Vec::with_capacity(len);
    // `take` guards against a file growing under us; a shrinking one reads
    // short and fails the length check in `entry::decode`.
    (&mut file).take(len as u64).read_to_end(&mut data)?;
    let times = FileTimes {
        modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        created: md.created().ok(),
    };
    Ok((data, times))
}

/// Create `tmp` (which must not exist), lock it, write `parts`, and return
/// the still-locked file.
fn write_locked(tmp: &Path, parts: &[&[u8]], sync: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
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
/// older than the grace period.
fn remove_if_abandoned(path: &Path, grace: Duration) {
    let Ok(file) = File::options().read(true).write(true).open(path) else {
        return;
    };
    let old_enough = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace);
    if old_enough && file.try_lock().is_ok() {
        let _ = fs::remove_file(path);
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
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
            .finish()
    }
}

#[async_trait::async_trait]
impl ModuleCache for FileSystemCache {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.load_traced(key, engine).await.map(|hit| hit.module)
    }

    async fn load_traced(&self, key: ModuleHash, engine: &Engine) -> Result<Hit, CacheError> {
        let engine = engine.clone();
        self.blocking(move |this| this.load_blocking(key, &engine))
            .await
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        let path = self.entry_path(key, engine);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(CacheError::FileRead { path, error }),
        }
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

    fn attach_observer(&self, observer: Arc<dyn TierObserver>) {
        self.shared
            .observers
            .attach(observer, Some(self.residency()));
    }
}
