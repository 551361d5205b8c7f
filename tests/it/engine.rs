//! Engine lifecycle: a module is only ever served to a caller of the engine
//! that holds its code, and engine generations bound code memory.
//!
//! wasmer keeps a module's machine code in the engine that loaded it and a
//! `Module` does not keep that engine alive. Serving engine A's module to a
//! caller of engine B (same configuration) works while A lives; once A is
//! dropped, B's caller runs freed memory (reproduced on the earlier main: a
//! function returning 42 returned another module's 1). These tests drop the
//! first engine, reuse its memory with other engines' code, and check every
//! call still answers 42.

use std::sync::Arc;

use tierscope::{
    EngineRecycling, FileSystemCache, MemoryCache, ModuleCache, ModuleHash, ModuleLoader,
};
use wasmer::{Engine, Instance, Module, Store, imports};

const ANSWER_WAT: &str = r#"(module (func (export "answer") (result i32) i32.const 42))"#;

fn answer_wasm() -> Vec<u8> {
    wat::parse_str(ANSWER_WAT).unwrap()
}

/// Instantiate `module` in a store of `engine` and call `answer`.
fn call_answer(engine: &Engine, module: &Module) -> i32 {
    let mut store = Store::new(engine.clone());
    let instance = Instance::new(&mut store, module, &imports! {}).unwrap();
    let f = instance
        .exports
        .get_typed_function::<(), i32>(&store, "answer")
        .unwrap();
    f.call(&mut store).unwrap()
}

/// Fill freed code memory with other modules' code: 200 small modules, each
/// in an engine of its own, instantiated and called.
fn churn_other_engines() {
    let mut keep = Vec::new();
    for seed in 0..200u64 {
        let engine = Engine::default();
        let wasm = wat::parse_str(format!(
            r#"(module (func (export "answer") (result i32) i32.const {}))"#,
            1 + seed % 7
        ))
        .unwrap();
        let module = Module::new(&engine, &wasm).unwrap();
        assert_eq!(call_answer(&engine, &module), (1 + seed % 7) as i32);
        keep.push((engine, module));
    }
    // Keep them alive while the test goes on: their code occupies the pages
    // the dropped engine released.
    std::mem::forget(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tier_never_serves_a_module_to_another_engine() {
    // Arrange
    let loader = ModuleLoader::new("engine-uaf", MemoryCache::new(64 << 20));
    let wasm = answer_wasm();
    let engine_a = Engine::default();
    let module_a = loader.load_into(&engine_a, &wasm).await.unwrap();
    assert_eq!(call_answer(&engine_a, &module_a), 42);

    // Act: engine A goes away, its pages are reused, engine B asks.
    drop(module_a);
    drop(engine_a);
    churn_other_engines();
    let engine_b = Engine::default();
    let module_b = loader.load_into(&engine_b, &wasm).await.unwrap();

    // Assert (the save that follows a compile lands after its answer)
    assert_eq!(call_answer(&engine_b, &module_b), 42);
    while loader.in_flight() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let key = ModuleHash::new(&wasm);
    assert!(
        loader.load_now_into(&engine_b, key).is_some(),
        "B's module is cached for B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_from_disk_loads_into_the_asking_engine() {
    // Arrange: memory in front of disk; engine A compiles and saves to both.
    let dir = tempfile::tempdir().unwrap();
    let cache = MemoryCache::new(64 << 20)
        .with_fallback(FileSystemCache::open(dir.path(), 1 << 30).unwrap());
    let loader = ModuleLoader::new("engine-promote", cache);
    let wasm = answer_wasm();
    let key = ModuleHash::new(&wasm);
    let engine_a = Engine::default();
    let module_a = loader.load_into(&engine_a, &wasm).await.unwrap();
    assert_eq!(call_answer(&engine_a, &module_a), 42);
    drop(module_a);
    drop(engine_a);
    churn_other_engines();

    // Act: B misses memory (A's entry is not B's), hits disk, is promoted.
    let engine_b = Engine::default();
    assert!(loader.cache().load_now(key, &engine_b).is_none());
    let module_b = loader.cache().load(key, &engine_b).await.unwrap();

    // Assert
    assert_eq!(call_answer(&engine_b, &module_b), 42);
    let promoted = loader.cache().load_now(key, &engine_b).unwrap().module;
    assert_eq!(call_answer(&engine_b, &promoted), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_never_hands_one_engines_module_to_another() {
    // Arrange: two engines of one configuration ask at the same moment.
    let loader = ModuleLoader::new("engine-coalesce", MemoryCache::new(64 << 20));
    let wasm = answer_wasm();
    let engine_a = Engine::default();
    let engine_b = Engine::default();

    // Act
    let (a, b) = tokio::join!(
        loader.load_into(&engine_a, &wasm),
        loader.load_into(&engine_b, &wasm)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    drop(a);
    drop(engine_a);
    churn_other_engines();

    // Assert: B's module is B's own, alive after A is gone.
    assert_eq!(call_answer(&engine_b, &b), 42);
    assert_eq!(loader.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_modules_carry_their_engine_across_generation_switches() {
    // Arrange: a memory tier too small for the set, disk behind it, and a
    // budget of zero evicted bytes: every eviction starts a new generation.
    let dir = tempfile::tempdir().unwrap();
    let modules: Vec<Vec<u8>> = (0..12)
        .map(|s| tierscope::corpus::module(4_000, s))
        .collect();
    let cache = MemoryCache::builder(60_000)
        .shards(1)
        .build()
        .with_fallback(FileSystemCache::open(dir.path(), 1 << 30).unwrap());
    let engines = EngineRecycling::new(Engine::default).code_budget(0);
    let loader = ModuleLoader::with_engines("engine-gens", cache, engines);
    let answer = answer_wasm();

    let first = loader.load(&answer).await.unwrap();
    let first_generation = Arc::downgrade(&loader.generation());
    assert_eq!(first.generation().number(), 1);

    // Act: churn through the set until the generation changes.
    for round in 0..4 {
        for wasm in &modules {
            let loaded = loader.load(wasm).await.unwrap();
            let mut store = loaded.store();
            Instance::new(&mut store, &loaded, &imports! {}).unwrap();
        }
        if loader.generation().number() > 1 {
            break;
        }
        assert!(round < 3, "no generation switch after {round} rounds");
    }
    // Let the flights finish their bookkeeping.
    while loader.in_flight() > 0 {
        tokio::task::yield_now().await;
    }

    // Assert: the old module still runs in its own engine's store...
    assert!(first.generation().is_retired());
    let mut store = first.store();
    let instance = Instance::new(&mut store, &first, &imports! {}).unwrap();
    let f = instance
        .exports
        .get_typed_function::<(), i32>(&store, "answer")
        .unwrap();
    assert_eq!(f.call(&mut store).unwrap(), 42);
    drop((f, instance, store));
    // ...the new generation serves a fresh copy...
    let again = loader.load(&answer).await.unwrap();
    assert!(again.generation().number() > 1);
    assert_eq!(call_answer(again.engine(), &again), 42);
    // ...and the old generation (with its engine) is released once the
    // last module of it is dropped.
    assert!(first_generation.upgrade().is_some());
    drop(first);
    assert!(first_generation.upgrade().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_generation_leaves_the_memory_tier() {
    // Arrange
    let memory = MemoryCache::builder(60_000).shards(1).build();
    let dir = tempfile::tempdir().unwrap();
    let cache = memory
        .clone()
        .with_fallback(FileSystemCache::open(dir.path(), 1 << 30).unwrap());
    let engines = EngineRecycling::new(Engine::default).code_budget(0);
    let loader = ModuleLoader::with_engines("engine-forget", cache, engines);
    let modules: Vec<Vec<u8>> = (0..12)
        .map(|s| tierscope::corpus::module(4_000, 100 + s))
        .collect();

    // Act
    let mut generations = std::collections::BTreeSet::new();
    for wasm in modules.iter().chain(modules.iter()) {
        let loaded = loader.load(wasm).await.unwrap();
        generations.insert(loaded.generation().number());
    }
    while loader.in_flight() > 0 {
        tokio::task::yield_now().await;
    }

    // Assert: several generations ran; only the current one's entries stay.
    assert!(generations.len() > 1, "{generations:?}");
    let current = loader.engine();
    for wasm in &modules {
        let key = ModuleHash::new(wasm);
        if let Some(hit) = memory.load_now(key, &current) {
            assert_eq!(
                hit.module.serialize().unwrap().len() as u64,
                hit.bytes().unwrap()
            );
        }
    }
    let resident = memory.residency();
    let current_gen = loader.generation();
    assert_eq!(
        resident.bytes,
        current_gen.cached_code_bytes(),
        "every resident byte belongs to the current generation"
    );
}
