//! Artifact size hints: how the memory tier weighs a `Module` without
//! serializing it.
//!
//! wasmer exposes no in-memory size for a module (wasmer #3249), so every
//! tier in this crate weighs an entry by its serialized artifact size. But
//! `Module::serialize()` is not free: for a module that was itself
//! deserialized, wasmer rebuilds the whole archive. Tiers that handle bytes
//! anyway (the disk and Redis tiers on every load and save, the loader after
//! a compile that it saves) record the artifact length here, keyed by module
//! hash and engine; the memory tier reads it. A promotion from disk, or a
//! compile saved through `memory.with_fallback(disk)` (whose save writes
//! the slower tier first), therefore never pays a serialize for the weight.
//! Only a memory-only stack saving a module it has never seen in bytes
//! serializes once to learn the size.
//!
//! The table is process-wide and bounded: 8,192 entries, beyond which
//! quick_cache's policy drops entries (those not asked for again first).

use std::sync::OnceLock;

use wasmer::Module;
use wasmer_types::ModuleHash;

use crate::{cache::CacheError, engine::EngineKey};

type Table = quick_cache::sync::Cache<(ModuleHash, EngineKey), u64>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table::new(8192))
}

/// Remember that `key` under `engine` serializes to `bytes` bytes.
pub fn record(key: ModuleHash, engine: EngineKey, bytes: u64) {
    table().insert((key, engine), bytes);
}

/// The remembered artifact size, if any tier has seen its bytes.
pub fn lookup(key: ModuleHash, engine: EngineKey) -> Option<u64> {
    table().get(&(key, engine))
}

/// The artifact size of `module`: the hint when there is one, otherwise one
/// serialize (whose size is then remembered).
pub fn weigh(key: ModuleHash, engine: EngineKey, module: &Module) -> Result<u64, CacheError> {
    if let Some(bytes) = lookup(key, engine) {
        return Ok(bytes);
    }
    let bytes = module.serialize()?.len() as u64;
    record(key, engine, bytes);
    Ok(bytes)
}
