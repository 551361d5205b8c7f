//! Round trips: save, load, contains, misses, sharing between nodes, TTLs and large values.

use super::*;

#[tokio::test]
async fn round_trip_contains_and_miss() {
    // arrange
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 1);
    let redis = cache(&server);
    let missing = ModuleHash::from_bytes([9; 32]);

    // act
    redis.save(key, &engine, &module).await.unwrap();
    let hit = redis.lookup(key, &engine, Lookup::request()).await.unwrap();
    let loaded = redis.load(key, &engine).await.unwrap();

    // assert
    assert_eq!(exports(&loaded), ["add"]);
    assert_eq!(exports(&hit.module), ["add"]);
    assert_eq!(hit.tier(), None);
    let artifact = module.serialize().unwrap().len() as u64;
    assert_eq!(hit.bytes(), Some(artifact));
    assert!(redis.contains(key, &engine).await.unwrap());
    assert!(!redis.contains(missing, &engine).await.unwrap());
    assert!(matches!(
        redis.load(missing, &engine).await.unwrap_err(),
        CacheError::NotFound
    ));

    let rkey = redis.redis_key(key, &engine);
    let ns = &tierscope::engine::ident_of(&engine).namespace;
    assert_eq!(rkey, format!("tierscope:{ns}:{key}"));
    assert!(rkey.contains(wasmer_types::VERSION));
    let raw = get_raw(&server, &rkey).unwrap();
    assert_eq!(
        raw.len() as u64,
        entry::HEADER_LEN as u64 + artifact + MAC_LEN as u64
    );
    assert_eq!(raw[..8], entry::MAGIC);
}

#[tokio::test]
async fn prefix_and_tier_name_are_configurable() {
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 2);
    let redis = builder(&server)
        .prefix("app1")
        .tier_name("shared")
        .build()
        .unwrap();

    redis.save(key, &engine, &module).await.unwrap();

    assert!(redis.redis_key(key, &engine).starts_with("app1:"));
    assert!(exists_raw(&server, &redis.redis_key(key, &engine)));
    assert_eq!(redis.tier_name(), "shared");
    server.command(&["SET", &redis.redis_key(key, &engine), "junk"]);
    let err = redis.load(key, &engine).await.unwrap_err();
    assert!(err.to_string().contains("tier shared"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_modules_through_redis() {
    // arrange: two independent stacks sharing one Redis
    let server = RedisServer::start();
    let engine = Engine::default();
    let wasm = corpus::module(20_000, 77);
    let key = ModuleHash::new(&wasm);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        (
            node("node-a", dir_a.path(), cache(&server)),
            node("node-b", dir_b.path(), cache(&server)),
        )
    });

    // act: A compiles (and saves to every tier), then B loads
    let from_a = a.loader.load_into(&engine, &wasm).await.unwrap();
    until_saved(&a.redis, key, &engine).await;
    let from_b = b.loader.load_into(&engine, &wasm).await.unwrap();
    let again = b.loader.load_into(&engine, &wasm).await.unwrap();

    // assert: a remote hit on B, promoted into B's disk and memory, no compile
    assert_eq!(exports(&from_a), exports(&from_b));
    assert_eq!(from_b, again);
    assert!(b.disk.contains(key, &engine).await.unwrap());
    assert!(b.memory.contains(key, &engine).await.unwrap());
    let artifact = from_a.serialize().unwrap().len() as u64;
    let s = take(&snapshotter);
    let lookups = |node, tier, result| {
        counter(
            &s,
            "tierscope_lookups_total",
            &[("cache", node), ("tier", tier), ("result", result)],
        )
    };
    let compilations = |node| {
        counter(
            &s,
            "tierscope_compilations_total",
            &[("cache", node), ("result", "ok")],
        )
    };
    let promotions = |to| {
        counter(
            &s,
            "tierscope_promotions_total",
            &[
                ("cache", "node-b"),
                ("from", "redis"),
                ("to", to),
                ("result", "ok"),
            ],
        )
    };
    assert_eq!(compilations("node-a"), 1);
    assert_eq!(compilations("node-b"), 0, "node B must not compile");
    assert_eq!(lookups("node-a", "redis", "miss"), 1);
    assert_eq!(lookups("node-b", "redis", "hit"), 1);
    assert_eq!(lookups("node-b", "redis", "error"), 0);
    assert_eq!(lookups("node-b", "disk", "miss"), 1);
    assert_eq!(lookups("node-b", "memory", "miss"), 1);
    assert_eq!(lookups("node-b", "memory", "hit"), 1);
    assert_eq!(promotions("disk"), 1);
    assert_eq!(promotions("memory"), 1);
    assert_eq!(
        counter(
            &s,
            "tierscope_read_bytes_total",
            &[("cache", "node-b"), ("tier", "redis")]
        ),
        artifact
    );
    assert_eq!(
        gauge(
            &s,
            "tierscope_tier_available",
            &[("cache", "node-b"), ("tier", "redis")]
        ),
        1.0
    );
}

#[tokio::test]
async fn entries_expire_after_the_configured_ttl() {
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 13);
    let redis = builder(&server)
        .ttl(Duration::from_millis(300))
        .build()
        .unwrap();

    redis.save(key, &engine, &module).await.unwrap();

    let pttl: i64 = server
        .connection()
        .pttl(redis.redis_key(key, &engine))
        .unwrap();
    assert!((1..=300).contains(&pttl), "{pttl}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        redis.load(key, &engine).await.unwrap_err(),
        CacheError::NotFound
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_modules_round_trip_on_the_blocking_pool() {
    let server = RedisServer::start();
    let engine = Engine::default();
    let wasm = corpus::module(100_000, 15);
    let key = ModuleHash::new(&wasm);
    let module = Module::new(&engine, &wasm).unwrap();
    let redis = builder(&server)
        .blocking_threshold(16 << 10)
        .build()
        .unwrap();

    redis.save(key, &engine, &module).await.unwrap();
    let hit = redis.lookup(key, &engine, Lookup::request()).await.unwrap();

    let artifact = module.serialize().unwrap().len() as u64;
    assert!(artifact > 16 << 10, "{artifact}");
    assert_eq!(hit.bytes(), Some(artifact));
    assert_eq!(
        tierscope::weights::lookup(key, tierscope::engine::engine_key(&engine)),
        Some(artifact)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_larger_than_the_first_read_are_read_in_two_ranges() {
    // arrange: an artifact over FIRST_READ_BYTES (1 MiB)
    let server = RedisServer::start();
    let engine = Engine::default();
    let wasm = corpus::module(300_000, 17);
    let key = ModuleHash::new(&wasm);
    let module = Module::new(&engine, &wasm).unwrap();
    let redis = cache(&server);
    redis.save(key, &engine, &module).await.unwrap();
    let stored = get_raw(&server, &redis.redis_key(key, &engine)).unwrap();
    assert!(
        stored.len() as u64 > tierscope::internals::redis::FIRST_READ_BYTES,
        "{}",
        stored.len()
    );

    // act
    let hit = redis.lookup(key, &engine, Lookup::request()).await.unwrap();

    // assert: the whole value, verified (MAC and header) and deserialized
    let artifact = module.serialize().unwrap().len() as u64;
    assert_eq!(hit.bytes(), Some(artifact));
    assert_eq!(
        stored.len() as u64,
        artifact + (entry::HEADER_LEN + MAC_LEN) as u64
    );
    assert_eq!(exports(&hit.module), exports(&module));
}

#[tokio::test]
async fn values_read_whole_or_in_two_ranges_reach_wasmer_aligned() {
    // A small value arrives in the first range, one over FIRST_READ_BYTES
    // (1 MiB) in two; either way it is opened from one aligned buffer (the
    // tier's debug assertion before `Module::deserialize` checks it).
    let server = RedisServer::start();
    let engine = Engine::default();
    let redis = cache(&server);
    let big = format!(
        r#"(module (memory 40) (data (i32.const 0) "{}"))"#,
        "x".repeat(2 << 20)
    );
    for (i, wat) in ["(module (func (export \"f\")))", big.as_str()]
        .iter()
        .enumerate()
    {
        let wasm = wat::parse_str(wat).unwrap();
        let key = ModuleHash::new(&wasm);
        let module = Module::new(&engine, &wasm).unwrap();
        redis.save(key, &engine, &module).await.unwrap();
        let loaded = redis.load(key, &Engine::default()).await.unwrap();
        assert_eq!(
            loaded.serialize().unwrap(),
            module.serialize().unwrap(),
            "value {i}"
        );
    }
    let big_key = redis.redis_key(ModuleHash::new(wat::parse_str(&big).unwrap()), &engine);
    assert!(get_raw(&server, &big_key).unwrap().len() > 2 << 20);
}
