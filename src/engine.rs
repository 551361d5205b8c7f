//! Engine identity: which engine configuration a cached artifact belongs to.
//!
//! `Engine::deterministic_id()` allocates a fresh `String` on every call
//! (and takes the engine's lock), far too slow for a memory hit that should
//! cost tens of nanoseconds. Engines are few and long-lived, so each distinct
//! deterministic id is interned once into an `EngineIdent` and every
//! `Engine` instance (by `wasmer::EngineId`, shared by its clones) is
//! mapped to a small copyable `EngineKey`. A one-entry thread-local
//! cache makes the common case (one engine per process) a thread-local read.
//!
//! Engine *configuration* identifies bytes (disk and Redis entries are
//! portable between engines of one configuration). Engine *instance*
//! (`EngineId`) identifies code: wasmer keeps a module's machine code in
//! the engine that compiled or deserialized it, and a `wasmer::Module` does
//! not keep that engine alive. In-process tiers therefore key by instance
//! (see `crate::MemoryCache`).
//!
//! ## Process-wide tables
//!
//! - Configurations (`by_id`, `idents`): one entry per distinct engine
//!   configuration ever seen: a handful per process (configurations come
//!   from code, not traffic), so unbounded by design.
//! - Instances (`by_engine`): at most `MAX_TRACKED_INSTANCES` engine
//!   instances, the oldest entry dropped first; a dropped one is
//!   looked up again (one `deterministic_id()` call) if it comes back.
//!   Runtimes that create an engine per tenant or request stay bounded.
//! - Code ledgers: one weak entry per engine generation that asked for
//!   accounting (`crate::EngineRecycling`); dead entries are pruned on
//!   every registration, so the table holds only live generations.

use std::{
    cell::Cell,
    collections::HashMap,
    num::NonZeroUsize,
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
};

use parking_lot::RwLock;
use wasmer::{Engine, EngineId};

/// The version of tierscope's entry format: bump it whenever the bytes a
/// tier writes change meaning. Part of every disk path and Redis key.
pub const FORMAT_VERSION: u16 = 1;

/// The wasmer version this crate was built against; artifacts never cross
/// wasmer versions (stale caches across versions crashed users: wasmer #3193).
pub const WASMER_VERSION: &str = wasmer_types::VERSION;

/// A compact handle for one engine configuration (one deterministic id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineKey(u32);

impl EngineKey {
    /// The handle as a number (stable within the process).
    pub(crate) fn index(self) -> u32 {
        self.0
    }
}

/// Everything a tier needs to know about an engine configuration.
#[derive(Debug)]
pub struct EngineIdent {
    /// `engine.deterministic_id()`.
    pub deterministic_id: String,
    /// `engine.artifact_format()`.
    pub artifact_format: String,
    /// A file-name-safe name binding the deterministic id, the artifact
    /// format, the wasmer version and the entry format version.
    pub namespace: String,
    /// 16 bytes binding the same four facts, written into every entry
    /// header so a file copied between namespaces is still caught.
    pub context: [u8; 16],
}

impl EngineIdent {
    fn new(deterministic_id: String, artifact_format: String) -> Self {
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let namespace = format!(
            "{}-{}-wasmer{}-ts{}",
            safe(&deterministic_id),
            safe(&artifact_format),
            safe(WASMER_VERSION),
            FORMAT_VERSION
        );
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            deterministic_id.as_bytes(),
            artifact_format.as_bytes(),
            WASMER_VERSION.as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(&FORMAT_VERSION.to_le_bytes());
        let context = hasher.digest128().to_le_bytes();
        EngineIdent {
            deterministic_id,
            artifact_format,
            namespace,
            context,
        }
    }
}

/// How many engine instances the identity table remembers (the oldest
/// entry dropped first; the per-thread cache in front of it keeps the
/// common lookup off the table).
pub const MAX_TRACKED_INSTANCES: usize = 1024;

struct Registry {
    by_engine: lru::LruCache<EngineId, EngineKey>,
    by_id: HashMap<(String, String), EngineKey>,
    idents: Vec<Arc<EngineIdent>>,
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        RwLock::new(Registry {
            by_engine: lru::LruCache::new(
                NonZeroUsize::new(MAX_TRACKED_INSTANCES).unwrap_or(NonZeroUsize::MIN),
            ),
            by_id: HashMap::new(),
            idents: Vec::new(),
        })
    })
}

/// Engine instances the identity table remembers now (for tests and docs).
pub fn tracked_instances() -> usize {
    registry().read().by_engine.len()
}

thread_local! {
    /// The last engine instance this thread asked about (its
    /// [`instance_bits`]; `u64::MAX`, which no engine has, for none) and
    /// its key.
    static LAST: Cell<(u64, EngineKey)> = const { Cell::new((u64::MAX, EngineKey(0))) };
}

/// The [`EngineKey`] of an engine: a thread-local read in the common case.
#[inline(always)]
pub fn engine_key(engine: &Engine) -> EngineKey {
    let bits = instance_bits(engine);
    let (last, key) = LAST.with(Cell::get);
    if last == bits {
        return key;
    }
    let key = engine_key_slow(engine, engine.id());
    LAST.with(|c| c.set((bits, key)));
    key
}

/// The engine instance's id as a number (wasmer's `EngineId` keeps its
/// `u64` private but hashes as exactly that `u64`).
#[inline(always)]
pub(crate) fn instance_bits(engine: &Engine) -> u64 {
    use std::hash::{Hash, Hasher};
    struct Capture(u64);
    impl Hasher for Capture {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }
    let mut c = Capture(0);
    engine.id().hash(&mut c);
    c.finish()
}

/// Forget this thread's last engine (tests).
#[cfg(test)]
fn forget_last() {
    LAST.with(|c| c.set((u64::MAX, EngineKey(0))));
}

#[cold]
fn engine_key_slow(engine: &Engine, id: EngineId) -> EngineKey {
    if let Some(key) = registry().read().by_engine.peek(&id) {
        return *key;
    }
    let ids = (engine.deterministic_id(), engine.artifact_format());
    let mut reg = registry().write();
    let key = match reg.by_id.get(&ids) {
        Some(key) => *key,
        None => {
            let key = EngineKey(reg.idents.len() as u32);
            reg.idents
                .push(Arc::new(EngineIdent::new(ids.0.clone(), ids.1.clone())));
            reg.by_id.insert(ids, key);
            key
        }
    };
    reg.by_engine.put(id, key);
    key
}

/// The identity behind an [`EngineKey`].
pub fn engine_ident(key: EngineKey) -> Arc<EngineIdent> {
    // Keys are only minted by `engine_key_slow`, which pushes the ident first.
    Arc::clone(&registry().read().idents[key.0 as usize])
}

/// The identity of an engine (cold paths: disk and remote tiers).
pub fn ident_of(engine: &Engine) -> Arc<EngineIdent> {
    engine_ident(engine_key(engine))
}

/// Code bytes one engine holds: loaded into it (compiled or deserialized)
/// and held by in-process tiers (resident in a memory tier). The
/// difference is code the engine keeps for modules no cache holds any more:
/// wasmer frees an engine's code only when the engine is dropped (wasmer
/// #4377), so that difference is what eviction churn leaks.
///
/// Bytes are serialized artifact bytes, the same unit every tier weighs
/// entries in: a close proxy for the machine code and metadata the engine
/// maps (wasmer exposes no in-memory size, wasmer #3249).
#[derive(Debug, Default)]
pub(crate) struct CodeLedger {
    loaded: AtomicU64,
    held: AtomicI64,
}

impl CodeLedger {
    /// Bytes of code loaded into the engine since it was tracked.
    pub(crate) fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Bytes of that code resident in in-process tiers now.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed).max(0) as u64
    }

    /// Bytes the engine retains for modules no tier holds.
    pub(crate) fn unheld(&self) -> u64 {
        self.loaded().saturating_sub(self.held())
    }
}

/// Ledgers by engine instance; `LEDGERS_LIVE` lets the common case (no
/// generations in use) skip the lock.
fn ledgers() -> &'static RwLock<HashMap<EngineId, Weak<CodeLedger>>> {
    static LEDGERS: OnceLock<RwLock<HashMap<EngineId, Weak<CodeLedger>>>> = OnceLock::new();
    LEDGERS.get_or_init(Default::default)
}
static LEDGERS_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Start accounting the code of `engine`; accounting stops when the
/// returned ledger is dropped.
pub(crate) fn track_code(engine: &Engine) -> Arc<CodeLedger> {
    let ledger = Arc::new(CodeLedger::default());
    let mut table = ledgers().write();
    table.retain(|_, weak| weak.strong_count() > 0);
    table.insert(engine.id(), Arc::downgrade(&ledger));
    LEDGERS_LIVE.store(table.len(), Ordering::Relaxed);
    ledger
}

fn with_ledger(id: EngineId, f: impl FnOnce(&CodeLedger)) {
    if LEDGERS_LIVE.load(Ordering::Relaxed) == 0 {
        return;
    }
    if let Some(ledger) = ledgers().read().get(&id).and_then(Weak::upgrade) {
        f(&ledger);
    }
}

/// `bytes` of code were just loaded into `engine` (a compile, or a
/// deserialize by a tier). A no-op for untracked engines.
pub(crate) fn note_code_loaded(engine: &Engine, bytes: u64) {
    with_ledger(engine.id(), |l| {
        l.loaded.fetch_add(bytes, Ordering::Relaxed);
    });
}

/// An in-process tier now holds `delta` more (or fewer) bytes of the code
/// of engine `id`.
pub(crate) fn note_code_held(id: EngineId, delta: i64) {
    with_ledger(id, |l| {
        l.held.fetch_add(delta, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_bits_tell_engines_apart_and_clones_alike() {
        let (a, b) = (Engine::default(), Engine::default());
        assert_ne!(instance_bits(&a), instance_bits(&b));
        assert_eq!(instance_bits(&a), instance_bits(&a.clone()));
        assert_ne!(instance_bits(&a), u64::MAX);
    }

    #[test]
    fn clones_share_a_key_and_equal_configs_share_an_ident() {
        let a = Engine::default();
        let b = a.clone();
        let c = Engine::default();
        assert_eq!(engine_key(&a), engine_key(&b));
        // Same configuration: same deterministic id, so the same key.
        assert_eq!(engine_key(&a), engine_key(&c));
        let ident = ident_of(&a);
        assert_eq!(ident.deterministic_id, a.deterministic_id());
        assert!(ident.namespace.contains(WASMER_VERSION));
        assert!(
            ident
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn instance_table_is_bounded_however_many_engines_come_and_go() {
        let first = Engine::default();
        let key = engine_key(&first);
        for _ in 0..(MAX_TRACKED_INSTANCES + 200) {
            let e = Engine::default();
            assert_eq!(engine_key(&e), key);
        }
        assert!(tracked_instances() <= MAX_TRACKED_INSTANCES);
        // A forgotten instance is looked up again, same answer.
        forget_last();
        assert_eq!(engine_key(&first), key);
    }

    #[test]
    fn ledgers_account_only_tracked_engines_and_die_with_their_owner() {
        let engine = Engine::default();
        let ledger = track_code(&engine);
        note_code_loaded(&engine, 100);
        note_code_held(engine.id(), 60);
        assert_eq!(
            (ledger.loaded(), ledger.held(), ledger.unheld()),
            (100, 60, 40)
        );
        note_code_held(engine.id(), -60);
        assert_eq!(ledger.unheld(), 100);
        let untracked = Engine::default();
        note_code_loaded(&untracked, 5);
        assert_eq!(ledger.loaded(), 100);
        drop(ledger);
        let _other = track_code(&untracked); // prunes the dead entry
        assert!(!ledgers().read().contains_key(&engine.id()));
    }

    #[test]
    fn different_configs_get_different_keys() {
        use wasmer::sys::{Cranelift, CraneliftOptLevel, EngineBuilder};
        let mut cfg = Cranelift::new();
        cfg.opt_level(CraneliftOptLevel::None);
        let other: Engine = EngineBuilder::new(cfg).engine().into();
        let default = Engine::default();
        assert_ne!(other.deterministic_id(), default.deterministic_id());
        assert_ne!(engine_key(&other), engine_key(&default));
        assert_ne!(ident_of(&other).context, ident_of(&default).context);
    }
}
