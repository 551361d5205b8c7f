//! The in-memory tier.

use crate::common;

use common::{Recording, sized, tiny};
use tierscope::{CacheError, EvictionCause, MemoryCache, ModuleCache, ModuleHash, weights};
use wasmer::Engine;

#[tokio::test]
async fn round_trip() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 10);
    let cache = MemoryCache::new(1 << 20);

    cache.save(key, &engine, &module).await.unwrap();

    assert_eq!(cache.load(key, &engine).await.unwrap(), module);
    assert!(cache.contains(key, &engine).await.unwrap());
    let r = cache.residency();
    assert_eq!(r.entries, 1);
    assert_eq!(r.bytes, module.serialize().unwrap().len() as u64);
    assert_eq!(r.capacity, Some(1 << 20));
}

#[tokio::test]
async fn missing_entry_is_not_found() {
    let engine = Engine::default();
    let cache = MemoryCache::new(1 << 20);
    let key = ModuleHash::from_bytes([1; 32]);

    let err = cache.load(key, &engine).await.unwrap_err();

    assert!(matches!(err, CacheError::NotFound));
    assert!(!cache.contains(key, &engine).await.unwrap());
}

#[tokio::test]
async fn another_engine_configuration_never_sees_the_entry() {
    use wasmer::sys::{Cranelift, CraneliftOptLevel, EngineBuilder};
    let engine = Engine::default();
    let mut cfg = Cranelift::new();
    cfg.opt_level(CraneliftOptLevel::None);
    let other: Engine = EngineBuilder::new(cfg).engine().into();
    let (key, module, _) = tiny(&engine, 11);
    let cache = MemoryCache::new(1 << 20);

    cache.save(key, &engine, &module).await.unwrap();

    assert!(cache.load(key, &other).await.unwrap_err().is_not_found());
    assert!(cache.load(key, &engine.clone()).await.is_ok());
}

#[tokio::test]
async fn inserting_past_capacity_evicts_and_reports_cause_and_bytes() {
    let engine = Engine::default();
    let modules: Vec<_> = (0..6).map(|i| sized(&engine, 4_000, 100 + i)).collect();
    let weight = modules[0].1.serialize().unwrap().len() as u64;
    // Room for about three entries, one shard so the bound is exact.
    let cache = MemoryCache::builder(weight * 3 + weight / 2)
        .shards(1)
        .build();
    let seen = Recording::attach(&cache);

    for (key, module, _) in &modules {
        cache.save(*key, &engine, module).await.unwrap();
    }

    let evictions = seen.evictions();
    assert!(evictions.len() >= 3, "{evictions:?}");
    let total: u64 = modules
        .iter()
        .map(|(_, m, _)| m.serialize().unwrap().len() as u64)
        .sum();
    for e in &evictions {
        assert_eq!(e.cause, EvictionCause::Capacity);
        assert!(e.bytes > 0 && e.bytes < weight * 2, "{e:?}");
        assert!(e.age.is_some());
    }
    let evicted: u64 = evictions.iter().map(|e| e.bytes).sum();
    let r = cache.residency();
    assert!(r.bytes <= cache.capacity_bytes());
    assert_eq!(r.bytes + evicted, total);
    assert_eq!(seen.last_residency(), r);
}

#[tokio::test]
async fn replacing_and_removing_are_reported() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 12);
    let cache = MemoryCache::new(1 << 20);
    let seen = Recording::attach(&cache);

    cache.save(key, &engine, &module).await.unwrap();
    cache.save(key, &engine, &module).await.unwrap();
    assert!(cache.remove(key, &engine));
    assert!(!cache.remove(key, &engine));

    let causes: Vec<_> = seen.evictions().iter().map(|e| e.cause).collect();
    assert_eq!(causes, [EvictionCause::Replaced, EvictionCause::Explicit]);
    assert_eq!(cache.residency().entries, 0);
}

#[tokio::test]
async fn weight_comes_from_a_size_hint_without_serializing() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 13);
    // A lower tier that saw the bytes recorded this size.
    weights::record(key, tierscope::engine::engine_key(&engine), 12_345);
    let cache = MemoryCache::new(1 << 20);

    cache.save(key, &engine, &module).await.unwrap();

    assert_eq!(cache.residency().bytes, 12_345);
}
