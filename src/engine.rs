//! Engine identity: which engine configuration a cached artifact belongs to.
//!
//! [`Engine::deterministic_id()`] allocates a fresh `String` on every call
//! (and takes the engine's lock), far too slow for a memory hit that should
//! cost tens of nanoseconds. Engines are few and long-lived, so each distinct
//! deterministic id is interned once into an [`EngineIdent`] and every
//! [`Engine`] instance (by [`wasmer::EngineId`], shared by its clones) is
//! mapped to a small copyable [`EngineKey`]. A one-entry thread-local
//! cache makes the common case (one engine per process) a thread-local read.

use std::{
    cell::Cell,
    collections::HashMap,
    sync::{Arc, OnceLock},
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

#[derive(Default)]
struct Registry {
    by_engine: HashMap<EngineId, EngineKey>,
    by_id: HashMap<(String, String), EngineKey>,
    idents: Vec<Arc<EngineIdent>>,
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

thread_local! {
    static LAST: Cell<Option<(EngineId, EngineKey)>> = const { Cell::new(None) };
}

/// The [`EngineKey`] of an engine: a thread-local read in the common case.
#[inline]
pub fn engine_key(engine: &Engine) -> EngineKey {
    let id = engine.id();
    if let Some((last_id, key)) = LAST.with(Cell::get)
        && last_id == id
    {
        return key;
    }
    let key = engine_key_slow(engine, id);
    LAST.with(|c| c.set(Some((id, key))));
    key
}

#[cold]
fn engine_key_slow(engine: &Engine, id: EngineId) -> EngineKey {
    if let Some(key) = registry().read().by_engine.get(&id) {
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
    reg.by_engine.insert(id, key);
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

#[cfg(test)]
mod tests {
    use super::*;

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
