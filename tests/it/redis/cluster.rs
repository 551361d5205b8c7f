//! A Redis Cluster: reached through the cluster client, one breaker per master, a fleet surviving a dead master.

use super::*;

/// The cluster tests' own MAC key.
const KEY: [u8; 32] = [0x3c; 32];
const TIMEOUT: Duration = Duration::from_millis(250);
/// Scheduling slack on a shared 2-core machine.
const MARGIN: Duration = Duration::from_millis(250);

fn tier(cluster: &RedisCluster) -> RedisCache {
    RedisCache::builder(RedisTarget::cluster(cluster.urls()))
        .mac_key(KEY)
        .timeout(TIMEOUT)
        .probe_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// One node of the fleet: memory -> disk -> the shared cluster.
struct Stack {
    loader: ModuleLoader<Arc<dyn ModuleCache + Send + Sync>>,
    redis: RedisCache,
}

fn stack(name: &str, dir: &Path, redis: RedisCache) -> Stack {
    let cache: Arc<dyn ModuleCache + Send + Sync> = Arc::new(
        MemoryCache::new(64 << 20)
            .instrumented(name, "memory")
            .with_fallback(
                FileSystemCache::open(dir, 1 << 30)
                    .unwrap()
                    .instrumented(name, "disk")
                    .with_fallback(redis.clone().instrumented(name, "redis")),
            ),
    );
    Stack {
        loader: ModuleLoader::new(name, cache),
        redis,
    }
}

#[tokio::test]
async fn a_redis_cluster_is_reached_through_the_cluster_client() {
    // arrange: a one-node cluster holding every slot
    let server = RedisServer::start_with(Options {
        cluster: true,
        ..Options::default()
    });
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 14);
    let redis = RedisCache::builder(RedisTarget::cluster([server.url()]))
        .mac_key(KEY)
        .build()
        .unwrap();
    let watch = Recording::attach(&redis);

    // act
    redis.save(key, &engine, &module).await.unwrap();
    let loaded = redis.load(key, &engine).await.unwrap();

    // assert
    assert_eq!(exports(&loaded), ["add"]);
    assert!(redis.contains(key, &engine).await.unwrap());
    let rkey = redis.redis_key(key, &engine);
    set_raw(&server, &rkey, b"junk");
    assert!(matches!(
        redis.load(key, &engine).await.unwrap_err(),
        CacheError::Integrity { .. }
    ));
    assert!(!exists_raw(&server, &rkey));
    assert_eq!(watch.evictions().len(), 1);
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_clear_error_on_first_use_and_recovers() {
    // arrange: a cluster target on a port where nothing listens yet
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 16);
    let timeout = Duration::from_millis(250);
    let mut server = RedisServer::start_with(Options {
        cluster: true,
        ..Options::default()
    });
    server.stop();
    let redis = RedisCache::builder(RedisTarget::cluster([server.url()]))
        .mac_key(KEY)
        .timeout(timeout)
        .probe_interval(Duration::from_millis(100))
        .build()
        .unwrap();

    // act
    let started = Instant::now();
    let err = redis.load(key, &engine).await.unwrap_err();
    let elapsed = started.elapsed();

    // assert: a failure naming the tier, in bound
    match &err {
        CacheError::Unavailable { tier, .. } | CacheError::Timeout { tier, .. } => {
            assert_eq!(tier, "redis")
        }
        other => panic!("expected Unavailable or Timeout, got {other:?}"),
    }
    assert!(
        elapsed < timeout + Duration::from_millis(200),
        "{elapsed:?}"
    );

    // the cluster comes up: the tier recovers without being rebuilt
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match redis.save(key, &engine, &module).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redis.load(key, &engine).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_modules_through_a_cluster_and_survives_a_dead_master() {
    // arrange: three masters, two nodes of a fleet (separate engines, tiers
    // and Redis clients)
    let panics_before = panics();
    let mut cluster = RedisCluster::start(3);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        (
            stack("fleet-a", dirs[0].path(), tier(&cluster)),
            stack("fleet-b", dirs[1].path(), tier(&cluster)),
        )
    });
    let (engine_a, engine_b) = (Engine::default(), Engine::default());
    let wasm: Vec<Vec<u8>> = (0..24).map(|i| corpus::tiny(500 + i)).collect();
    let hashes: Vec<ModuleHash> = wasm.iter().map(ModuleHash::new).collect();

    // act 1: node A compiles every module, saving each into the cluster
    for w in &wasm {
        a.loader.load_into(&engine_a, w).await.unwrap();
    }
    for &h in &hashes {
        until_saved(&a.redis, h, &engine_a).await;
    }

    // assert 1: the entries spread over all three masters, each held by
    // the master that serves its slot and by no other
    let keys: Vec<String> = hashes
        .iter()
        .map(|&h| a.redis.redis_key(h, &engine_a))
        .collect();
    let owners: Vec<usize> = keys.iter().map(|k| cluster.owner_of_key(k)).collect();
    for master in 0..cluster.len() {
        let held = owners.iter().filter(|&&o| o == master).count();
        assert!(held > 0, "master {master} holds none of {owners:?}");
    }
    for (key, &owner) in keys.iter().zip(&owners) {
        for node in 0..cluster.len() {
            assert_eq!(
                cluster.holds(node, key),
                node == owner,
                "{key} on node {node}"
            );
        }
    }

    // act 2: node B loads every module
    for w in &wasm {
        b.loader.load_into(&engine_b, w).await.unwrap();
    }

    // assert 2: all remote hits, nothing compiled twice
    let s = take(&snapshotter);
    let compiled = |s, node| {
        counter(
            s,
            "tierscope_compilations_total",
            &[("cache", node), ("result", "ok")],
        )
    };
    let remote = |s, node, result| {
        counter(
            s,
            "tierscope_lookups_total",
            &[("cache", node), ("tier", "redis"), ("result", result)],
        )
    };
    assert_eq!(compiled(&s, "fleet-a"), 24);
    assert_eq!(compiled(&s, "fleet-b"), 0);
    assert_eq!(remote(&s, "fleet-b", "hit"), 24);

    // act 3: the master holding the first module dies
    let victim = owners[0];
    cluster.stop(victim);
    let dead: Vec<bool> = owners.iter().map(|&o| o == victim).collect();

    // assert 3: through A's warm client, each key on the dead master fails
    // within the bound, each key on the others still hits
    for (i, &h) in hashes.iter().enumerate() {
        let started = Instant::now();
        let got = a.redis.load(h, &engine_a).await;
        let elapsed = started.elapsed();
        if dead[i] {
            assert!(
                matches!(
                    got,
                    Err(CacheError::Timeout { .. } | CacheError::Unavailable { .. })
                ),
                "key {i} on the dead master: {:?}",
                got.map(drop)
            );
            assert!(
                elapsed < TIMEOUT + MARGIN,
                "key {i} failed after {elapsed:?}"
            );
        } else {
            assert!(
                got.is_ok(),
                "key {i} on live master {}: {:?}",
                owners[i],
                got.err()
            );
        }
    }
    // a node starting now (a fresh client, empty local tiers) still gets
    // every module: remote hits from the live masters, compiles for the rest
    let c = metrics::with_local_recorder(&recorder, || {
        stack("fleet-c", dirs[2].path(), tier(&cluster))
    });
    let engine_c = Engine::default();
    for (i, w) in wasm.iter().enumerate() {
        let started = Instant::now();
        let module = c.loader.load_into(&engine_c, w).await;
        assert!(module.is_ok(), "module {i}: {:?}", module.err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "module {i}: {:?}",
            started.elapsed()
        );
    }
    let s = take(&snapshotter);
    let on_dead = dead.iter().filter(|&&d| d).count() as u64;
    assert_eq!(compiled(&s, "fleet-c"), on_dead);
    assert_eq!(remote(&s, "fleet-c", "hit"), 24 - on_dead);

    // act 4: the master comes back on its port with its nodes.conf (empty)
    cluster.restart(victim);

    // assert 4: its slots serve again: A saves, B loads, without rebuilding
    let first = hashes[0];
    let module = a.loader.load_into(&engine_a, &wasm[0]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.redis.save(first, &engine_a, &module).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the master never served again: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.holds(victim, &keys[0]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.redis.load(first, &engine_b).await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "B never loaded from it again: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, &h) in hashes.iter().enumerate().filter(|(i, _)| !dead[*i]) {
        assert!(b.redis.load(h, &engine_b).await.is_ok(), "key {i}");
    }
    assert!(a.redis.is_available() && b.redis.is_available());
    assert_eq!(panics(), panics_before, "something panicked");
}
