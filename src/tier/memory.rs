//! A byte-bounded in-memory tier on `quick_cache` (S3-FIFO-style eviction).
//!
//! Entries are weighed by serialized artifact size (see the artifact-weight table in the crate docs for
//! how that is known without a serialize on every save). The policy is
//! quick_cache's CLOCK-Pro/S3-FIFO hybrid: new entries enter a probation
//! queue and only entries hit again earn a place in the main queue, so a
//! scan of one-off modules cannot flush the hot set. It was chosen over moka
//! (TinyLFU) by benchmark, beside an unbounded `DashMap` floor: see
//! `benches/memory.rs` and BENCHMARKS.md. Its read locks are sharded
//! (crossbeam's `ShardedLock`), so hits on several threads do not contend
//! on a lock word.

use std::{fmt, sync::Arc, time::Instant};

use quick_cache::{Lifecycle, Weighter, sync::Cache};
use wasmer::{Engine, EngineId, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, Control, Hit, Lookup, ModuleCache},
    engine::{engine_key, note_code_held},
    tier_events::{Eviction, EvictionCause, Observers, Residency},
    weights,
};

/// Entries are keyed by engine *instance*, not configuration: a module's
/// machine code lives in the engine that loaded it and a `Module` does not
/// keep that engine alive, so a module is only ever served to callers of
/// the very engine that holds its code.
type Key = (ModuleHash, EngineId);

#[derive(Clone)]
struct Entry {
    module: Module,
    bytes: u64,
    inserted: Instant,
}

#[derive(Clone, Copy, Default)]
struct ByArtifactBytes;

impl Weighter<Key, Entry> for ByArtifactBytes {
    fn weight(&self, _key: &Key, val: &Entry) -> u64 {
        // Zero-weight entries are never evicted by quick_cache: weigh at least 1.
        val.bytes.max(1)
    }
}

/// Collects what quick_cache evicts during one insert, so it can be
/// reported after the shard lock is released.
#[derive(Clone, Copy, Default)]
struct CollectEvictions;

impl Lifecycle<Key, Entry> for CollectEvictions {
    type RequestState = Vec<Dropped>;

    fn on_evict(&self, state: &mut Self::RequestState, key: Key, val: Entry) {
        state.push(Dropped::of(key, &val));
    }
}

/// What is reported of an entry that left the tier.
#[derive(Clone, Copy)]
struct Dropped {
    engine: EngineId,
    bytes: u64,
    inserted: Instant,
}

impl Dropped {
    fn of(key: Key, entry: &Entry) -> Self {
        Dropped {
            engine: key.1,
            bytes: entry.bytes,
            inserted: entry.inserted,
        }
    }
}

type Inner = Cache<Key, Entry, ByArtifactBytes, KeyHasher, CollectEvictions>;

/// Hashes a `(ModuleHash, EngineId)` key in a few instructions.
///
/// A module hash is already SHA-256 output, uniformly distributed: its first
/// eight bytes, mixed with the engine key and a per-process random seed by
/// a 64-bit finalizer, make a good table hash. A general-purpose hasher
/// spends a third of a memory hit hashing 32 bytes that need no hashing.
/// The random seed keeps bucket positions unpredictable, so crafted modules
/// cannot pile into one bucket.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    seed: u64,
}

impl Default for KeyHasher {
    fn default() -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        // RandomState draws its keys from the OS once per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x7469_6572_7363_6f70);
        KeyHasher { seed: h.finish() }
    }
}

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = KeyHasherState;
    #[inline]
    fn build_hasher(&self) -> KeyHasherState {
        KeyHasherState(self.seed)
    }
}

/// The state of [`KeyHasher`].
#[derive(Clone, Copy, Debug)]
pub struct KeyHasherState(u64);

impl std::hash::Hasher for KeyHasherState {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).rotate_left(29);
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).rotate_left(29);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // splitmix64's finalizer: every input bit affects every output bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A bounded, concurrent, in-memory tier.
///
/// ```
/// use tierscope::MemoryCache;
/// let memory = MemoryCache::new(256 << 20); // 256 MiB of artifacts
/// assert_eq!(memory.capacity_bytes(), 256 << 20);
/// ```
#[derive(Clone)]
pub struct MemoryCache {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Inner,
    capacity: u64,
    observers: Observers,
    /// The options live sizing's shadows are built with.
    shadow: super::memory_policy::ShadowOptions,
}

/// Builder for [`MemoryCache`].
#[derive(Debug, Clone)]
pub struct MemoryCacheBuilder {
    capacity: u64,
    shards: Option<usize>,
    hot_allocation: f64,
}

impl MemoryCacheBuilder {
    /// Number of independently locked shards (rounded up to a power of
    /// two). Each shard holds `capacity / shards` bytes and an entry larger
    /// than about 90 % of that is not admitted. The default is the number of
    /// cores times four, at most one shard per 32 MiB of capacity, rounded
    /// up to a power of two (so a shard holds 16 MiB or more), and halved
    /// until each shard expects at least 32 entries.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards.max(1));
        self
    }

    /// Share of each shard for entries that were hit since admission
    /// (quick_cache's hot queue), between 0.5 and 0.99. Default 0.9.
    /// Values outside the range are clamped into it; NaN keeps the default.
    pub fn hot_allocation(mut self, share: f64) -> Self {
        if !share.is_nan() {
            self.hot_allocation = share.clamp(0.5, 0.99);
        }
        self
    }

    /// Build the tier.
    pub fn build(self) -> MemoryCache {
        // Shared with the sizing shadows, so their policy cannot drift.
        let policy = super::memory_policy::derive(
            self.capacity,
            self.shards,
            self.hot_allocation,
            super::memory_policy::parallelism(),
        );
        let capacity = policy.capacity;
        let options = policy
            .options()
            .expect("memory tier options are valid by construction");
        let cache = Inner::with_options(
            options,
            ByArtifactBytes,
            KeyHasher::default(),
            CollectEvictions,
        );
        MemoryCache {
            shared: Arc::new(Shared {
                cache,
                capacity,
                observers: Observers::default(),
                shadow: super::memory_policy::ShadowOptions {
                    shards: self.shards,
                    hot_allocation: self.hot_allocation,
                    parallelism: super::memory_policy::parallelism(),
                },
            }),
        }
    }
}

impl MemoryCache {
    /// A tier holding at most `capacity_bytes` of serialized artifacts.
    pub fn new(capacity_bytes: u64) -> Self {
        Self::builder(capacity_bytes).build()
    }

    /// A builder for finer settings.
    pub fn builder(capacity_bytes: u64) -> MemoryCacheBuilder {
        MemoryCacheBuilder {
            capacity: capacity_bytes,
            shards: None,
            hot_allocation: 0.9,
        }
    }

    /// The configured bound in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.shared.capacity
    }

    /// The options a shadow of this tier is built with (live sizing).
    pub(crate) fn shadow_options(&self) -> super::memory_policy::ShadowOptions {
        self.shared.shadow
    }

    /// The largest entry one shard can hold.
    #[cfg(test)]
    pub(crate) fn shard_capacity_bytes(&self) -> u64 {
        self.shared.cache.shard_capacity()
    }

    /// Entries and bytes resident now, with the bound.
    pub fn residency(&self) -> Residency {
        Residency {
            entries: self.shared.cache.len() as u64,
            bytes: self.shared.cache.weight(),
            capacity: Some(self.shared.capacity),
        }
    }

    /// Drop one entry (reported with cause `explicit`). Returns whether it
    /// was present.
    pub fn remove(&self, key: ModuleHash, engine: &Engine) -> bool {
        match self.shared.cache.remove(&(key, engine.id())) {
            Some((key, entry)) => {
                self.report(EvictionCause::Explicit, &[Dropped::of(key, &entry)]);
                true
            }
            None => false,
        }
    }

    /// Drop every entry (each reported with cause `explicit`).
    pub fn clear(&self) {
        let drained: Vec<_> = self
            .shared
            .cache
            .drain()
            .map(|(k, e)| Dropped::of(k, &e))
            .collect();
        self.report(EvictionCause::Explicit, &drained);
    }

    /// Drop every entry whose code belongs to `engine` (each reported with
    /// cause `retired`); returns their keys, most recently inserted last.
    /// Called when an engine is retired (see [`crate::EngineRecycling`]),
    /// so that a retired engine's modules stop taking capacity and the
    /// engine can be freed.
    pub(crate) fn forget_engine(&self, engine: EngineId) -> Vec<ModuleHash> {
        let cache = &self.shared.cache;
        let keys: Vec<Key> = cache
            .iter()
            .filter(|(k, _)| k.1 == engine)
            .map(|(k, _)| k)
            .collect();
        let mut dropped: Vec<(ModuleHash, Dropped)> = keys
            .into_iter()
            .filter_map(|k| cache.remove(&k))
            .map(|(k, e)| (k.0, Dropped::of(k, &e)))
            .collect();
        dropped.sort_by_key(|(_, d)| d.inserted);
        let reported: Vec<Dropped> = dropped.iter().map(|(_, d)| *d).collect();
        self.report(EvictionCause::Retired, &reported);
        dropped.into_iter().map(|(k, _)| k).collect()
    }

    /// The keys of the entries whose code belongs to `engine`, longest
    /// held first.
    fn engine_entries(&self, engine: EngineId) -> Vec<ModuleHash> {
        let mut entries: Vec<(Instant, ModuleHash)> = self
            .shared
            .cache
            .iter()
            .filter(|(k, _)| k.1 == engine)
            .map(|(k, e)| (e.inserted, k.0))
            .collect();
        entries.sort_by_key(|(inserted, _)| *inserted);
        entries.into_iter().map(|(_, key)| key).collect()
    }

    fn report(&self, cause: EvictionCause, evicted: &[Dropped]) {
        for d in evicted {
            note_code_held(d.engine, -(d.bytes as i64));
        }
        let obs = &self.shared.observers;
        if obs.is_empty() {
            return;
        }
        let now = Instant::now();
        for d in evicted {
            obs.evicted(Eviction {
                cause,
                bytes: d.bytes,
                age: Some(now.saturating_duration_since(d.inserted)),
            });
        }
        obs.resident(self.residency());
    }

    fn insert(&self, key: Key, module: &Module, bytes: u64) {
        let cache = &self.shared.cache;
        let replaced = cache.remove(&key).map(|(k, e)| Dropped::of(k, &e));
        let mut evicted = Vec::new();
        let entry = Entry {
            module: module.clone(),
            bytes,
            inserted: Instant::now(),
        };
        note_code_held(key.1, bytes as i64);
        cache.insert_with_lifecycle(key, entry, &mut evicted);
        if let Some(old) = replaced {
            self.report(EvictionCause::Replaced, &[old]);
        }
        // Also reports the new residency when nothing was evicted.
        self.report(EvictionCause::Capacity, &evicted);
    }
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.residency();
        f.debug_struct("MemoryCache")
            .field("entries", &r.entries)
            .field("bytes", &r.bytes)
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

#[async_trait::async_trait]
impl ModuleCache for MemoryCache {
    #[inline]
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        self.get(key, engine).ok_or(CacheError::NotFound)
    }

    async fn lookup(
        &self,
        key: ModuleHash,
        engine: &Engine,
        _how: Lookup,
    ) -> Result<Hit, CacheError> {
        self.load_now(key, engine).ok_or(CacheError::NotFound)
    }

    #[inline]
    fn load_now(&self, key: ModuleHash, engine: &Engine) -> Option<Hit> {
        self.shared
            .cache
            .get(&(key, engine.id()))
            .map(|e| Hit::new(e.module).with_bytes(Some(e.bytes)))
    }

    /// Always: every entry is in memory, so `load_now`'s `None` is a miss.
    #[inline]
    fn answers_now(&self) -> bool {
        true
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        Ok(self.shared.cache.contains_key(&(key, engine.id())))
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let bytes = weights::weigh(key, engine_key(engine), module)?;
        self.insert((key, engine.id()), module, bytes);
        Ok(())
    }

    fn control(&self, message: &mut Control<'_>) {
        match message {
            Control::ForgetEngine(engine, keys) => {
                keys.extend(MemoryCache::forget_engine(self, engine.id()));
            }
            Control::EngineEntries(engine, keys) => keys.extend(self.engine_entries(engine.id())),
            Control::AttachObserver(observer) => self
                .shared
                .observers
                .attach(Arc::clone(observer), Some(self.residency())),
            _ => {}
        }
    }
}

impl MemoryCache {
    /// The synchronous hit path behind [`ModuleCache::load`]: no future, no
    /// allocation. `None` is a miss.
    #[inline]
    pub fn get(&self, key: ModuleHash, engine: &Engine) -> Option<Module> {
        self.shared.cache.get(&(key, engine.id())).map(|e| e.module)
    }
}
