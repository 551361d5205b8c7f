//! The seed's fallback behaviour, nested chains, and errors never lost.

use crate::common;

use std::sync::Arc;

use common::{ADD_WAT, Spy, tiny};
use tierscope::{
    CacheError, FallbackCache, FileSystemCache, InstrumentExt, Lookup, MemoryCache, ModuleCache,
    ModuleHash, Unavailability,
};
use wasmer::{Engine, Module};

#[tokio::test]
async fn load_from_primary() {
    let engine = Engine::default();
    let module = Module::new(&engine, ADD_WAT).unwrap();
    let key = ModuleHash::from_bytes([0; 32]);
    let primary = MemoryCache::new(1 << 20);
    let fallback = MemoryCache::new(1 << 20);
    primary.save(key, &engine, &module).await.unwrap();
    let primary = Spy::new(primary);
    let fallback = Spy::new(fallback);
    let cache = FallbackCache::new(&primary, &fallback);

    let got = cache.load(key, &engine).await.unwrap();

    // We should have received the same module
    assert_eq!(module, got);
    assert_eq!(primary.success(), 1);
    assert_eq!(primary.failures(), 0);
    // but the fallback wasn't touched at all
    assert_eq!(fallback.success(), 0);
    assert_eq!(fallback.failures(), 0);
    // And the fallback still doesn't have our module
    assert!(fallback.load(key, &engine).await.is_err());
}

#[tokio::test]
async fn loading_from_fallback_also_populates_primary() {
    let engine = Engine::default();
    let module = Module::new(&engine, ADD_WAT).unwrap();
    let key = ModuleHash::from_bytes([0; 32]);
    let primary = MemoryCache::new(1 << 20);
    let fallback = MemoryCache::new(1 << 20);
    fallback.save(key, &engine, &module).await.unwrap();
    let primary = Spy::new(primary);
    let fallback = Spy::new(fallback);
    let cache = FallbackCache::new(&primary, &fallback);

    let got = cache.load(key, &engine).await.unwrap();

    // We should have received the same module
    assert_eq!(module, got);
    // We got a hit on the fallback
    assert_eq!(fallback.success(), 1);
    assert_eq!(fallback.failures(), 0);
    // the load() on our primary failed
    assert_eq!(primary.failures(), 1);
    // but afterwards, we updated the primary cache with our module
    assert_eq!(primary.success(), 1);
    assert_eq!(primary.load(key, &engine).await.unwrap(), module);
}

#[tokio::test]
async fn saving_will_update_both() {
    let engine = Engine::default();
    let module = Module::new(&engine, ADD_WAT).unwrap();
    let key = ModuleHash::from_bytes([0; 32]);
    let primary = MemoryCache::new(1 << 20);
    let fallback = MemoryCache::new(1 << 20);
    let cache = FallbackCache::new(&primary, &fallback);

    cache.save(key, &engine, &module).await.unwrap();

    assert_eq!(primary.load(key, &engine).await.unwrap(), module);
    assert_eq!(fallback.load(key, &engine).await.unwrap(), module);
}

#[tokio::test]
async fn a_hit_in_the_lowest_tier_is_promoted_into_every_tier_above() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 1);
    let top = MemoryCache::new(1 << 20);
    let middle = MemoryCache::new(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let bottom = FileSystemCache::open(dir.path(), 1 << 30).unwrap();
    bottom.save(key, &engine, &module).await.unwrap();
    let cache = top
        .clone()
        .with_fallback(middle.clone().with_fallback(bottom));

    let got = cache.lookup(key, &engine, Lookup::request()).await.unwrap();

    assert!(got.tier().is_none(), "unnamed tiers name no origin");
    assert!(top.contains(key, &engine).await.unwrap());
    assert!(middle.contains(key, &engine).await.unwrap());
    // The promoted copies are usable modules.
    assert!(top.load(key, &engine).await.unwrap().exports().count() > 0);
}

#[tokio::test]
async fn the_origin_tier_is_reported_through_nested_chains() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 2);
    let bottom = MemoryCache::new(1 << 20);
    bottom.save(key, &engine, &module).await.unwrap();
    let cache = MemoryCache::new(1 << 20)
        .instrumented("t-origin", "memory")
        .with_fallback(
            MemoryCache::new(1 << 20)
                .instrumented("t-origin", "disk")
                .with_fallback(bottom.instrumented("t-origin", "redis")),
        );

    let first = cache.lookup(key, &engine, Lookup::request()).await.unwrap();
    let second = cache.lookup(key, &engine, Lookup::request()).await.unwrap();

    assert_eq!(first.tier().as_deref(), Some("redis"));
    assert_eq!(second.tier().as_deref(), Some("memory"));
    let names: Vec<_> = tierscope::tier_names(&cache)
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["memory", "disk", "redis"]);
}

/// A tier that always fails with a given error.
#[derive(Debug)]
struct Broken(fn() -> CacheError);

#[async_trait::async_trait]
impl ModuleCache for Broken {
    async fn load(&self, _: ModuleHash, _: &Engine) -> Result<Module, CacheError> {
        Err((self.0)())
    }
    async fn contains(&self, _: ModuleHash, _: &Engine) -> Result<bool, CacheError> {
        Err((self.0)())
    }
    async fn save(&self, _: ModuleHash, _: &Engine, _: &Module) -> Result<(), CacheError> {
        Err((self.0)())
    }
}

fn unavailable() -> CacheError {
    CacheError::Unavailable {
        tier: "broken".into(),
        reason: Unavailability::ConnectionRefused {
            endpoint: "test".into(),
            detail: "test".into(),
        },
    }
}

#[tokio::test]
async fn the_fallback_error_is_not_dropped_when_the_primary_merely_missed() {
    let engine = Engine::default();
    let key = ModuleHash::from_bytes([9; 32]);
    let cache = MemoryCache::new(1 << 20).with_fallback(Broken(unavailable));

    let err = cache.load(key, &engine).await.unwrap_err();

    // wasmer-wasix would answer the primary's NotFound here.
    assert!(matches!(err, CacheError::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_broken_primary_still_lets_the_fallback_serve() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 3);
    let fallback = MemoryCache::new(1 << 20);
    fallback.save(key, &engine, &module).await.unwrap();
    let cache = Broken(unavailable).with_fallback(fallback);

    assert_eq!(cache.load(key, &engine).await.unwrap(), module);
    assert!(cache.contains(key, &engine).await.unwrap());
    // save reports the primary's failure although the fallback stored it
    assert!(cache.save(key, &engine, &module).await.is_err());
}

#[tokio::test]
async fn arc_dyn_module_cache_is_a_cache() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 4);
    let shared: Arc<dyn ModuleCache + Send + Sync> = Arc::new(MemoryCache::new(1 << 20));
    let cache = shared.clone().with_fallback(MemoryCache::new(1 << 20));

    cache.save(key, &engine, &module).await.unwrap();

    assert_eq!(shared.load(key, &engine).await.unwrap(), module);
    let boxed: Box<dyn ModuleCache + Send + Sync> = Box::new(cache);
    assert!(boxed.contains(key, &engine).await.unwrap());
}
