//! The Redis tier against a real `redis-server` that each test starts on a
//! free loopback port: round trips, sharing between nodes, integrity,
//! outages, stalls and bad configurations.
#![cfg(feature = "redis")]

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    snapshot::{counter, gauge, take},
    tiny,
};
use metrics_util::debugging::DebuggingRecorder;
use parking_lot::Mutex;
use redis::Commands;
use redis_server::{Options, RedisServer, SilentServer, free_port};
use tierscope::{
    CacheError, Eviction, EvictionCause, FileSystemCache, InstrumentExt, IntegrityFailure,
    MemoryCache, ModuleCache, ModuleHash, ModuleLoader, RedisCache, RedisCacheBuilder, Residency,
    TierObserver, Unavailability, corpus, entry,
    tier::redis::{MAC_LEN, RedisTarget},
};
use wasmer::{Engine, Module};

const KEY: [u8; 32] = [0x5a; 32];
const OTHER_KEY: [u8; 32] = [0xa5; 32];

fn builder(server: &RedisServer) -> RedisCacheBuilder {
    RedisCache::builder(server.url()).mac_key(KEY)
}

fn cache(server: &RedisServer) -> RedisCache {
    builder(server).build().unwrap()
}

fn get_raw(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    server.connection().get(key).unwrap()
}

fn set_raw(server: &RedisServer, key: &str, value: &[u8]) {
    let _: () = server.connection().set(key, value).unwrap();
}

fn exists_raw(server: &RedisServer, key: &str) -> bool {
    server.connection().exists(key).unwrap()
}

async fn until_saved(redis: &RedisCache, key: ModuleHash, engine: &Engine) {
    for _ in 0..400 {
        if redis.contains(key, engine).await.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the save after a compile never reached Redis");
}

fn exports(module: &Module) -> Vec<String> {
    module.exports().map(|e| e.name().to_string()).collect()
}

/// Records what a tier reports.
#[derive(Debug, Default)]
struct Watch {
    evictions: Mutex<Vec<Eviction>>,
    available: Mutex<Vec<bool>>,
}

impl Watch {
    fn attach(cache: &impl ModuleCache) -> Arc<Self> {
        let w = Arc::new(Watch::default());
        cache.attach_observer(w.clone());
        w
    }
    fn evictions(&self) -> Vec<Eviction> {
        self.evictions.lock().clone()
    }
    fn availability(&self) -> Vec<bool> {
        self.available.lock().clone()
    }
}

impl TierObserver for Watch {
    fn evicted(&self, eviction: Eviction) {
        self.evictions.lock().push(eviction);
    }
    fn resident(&self, _: Residency) {}
    fn available(&self, available: bool) {
        self.available.lock().push(available);
    }
}

// --- metrics helpers (one snapshot per test: snapshots reset counters) ---

/// One node: memory -> disk -> redis, each tier instrumented under `name`.
struct Node {
    loader: ModuleLoader<Arc<dyn ModuleCache + Send + Sync>>,
    memory: MemoryCache,
    disk: FileSystemCache,
    redis: RedisCache,
}

fn node(name: &str, dir: &Path, redis: RedisCache) -> Node {
    let memory = MemoryCache::new(64 << 20);
    let disk = FileSystemCache::open(dir, 1 << 30).unwrap();
    let stack: Arc<dyn ModuleCache + Send + Sync> = Arc::new(
        memory.clone().instrumented(name, "memory").with_fallback(
            disk.clone()
                .instrumented(name, "disk")
                .with_fallback(redis.clone().instrumented(name, "redis")),
        ),
    );
    Node {
        loader: ModuleLoader::new(name, stack),
        memory,
        disk,
        redis,
    }
}

// --- tests ---

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
    let hit = redis.load_traced(key, &engine).await.unwrap();
    let loaded = redis.load(key, &engine).await.unwrap();

    // assert
    assert_eq!(exports(&loaded), ["add"]);
    assert_eq!(exports(&hit.module), ["add"]);
    assert_eq!(hit.tier, None);
    let artifact = module.serialize().unwrap().len() as u64;
    assert_eq!(hit.bytes, Some(artifact));
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
    let from_a = a.loader.load_or_compile(&engine, &wasm).await.unwrap();
    until_saved(&a.redis, key, &engine).await;
    let from_b = b.loader.load_or_compile(&engine, &wasm).await.unwrap();
    let again = b.loader.load_or_compile(&engine, &wasm).await.unwrap();

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_value_is_refused_deleted_counted_and_recompiled() {
    // arrange: a node whose only tier is Redis; the module is compiled and saved
    let server = RedisServer::start();
    let engine = Engine::default();
    let wasm = corpus::tiny(3);
    let key = ModuleHash::new(&wasm);
    let redis = cache(&server);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let loader = metrics::with_local_recorder(&recorder, || {
        ModuleLoader::new("solo", redis.clone().instrumented("solo", "redis"))
    });
    loader.load_or_compile(&engine, &wasm).await.unwrap();
    until_saved(&redis, key, &engine).await;
    let rkey = redis.redis_key(key, &engine);
    let mut value = get_raw(&server, &rkey).unwrap();
    let mid = entry::HEADER_LEN + (value.len() - entry::HEADER_LEN) / 2;
    value[mid] ^= 0x01;
    set_raw(&server, &rkey, &value);

    // act: the loader meets the tampered value, recompiles and saves again
    let module = loader.load_or_compile(&engine, &wasm).await.unwrap();
    until_saved(&redis, key, &engine).await;
    // (through the tier, not the loader: the loader may still hold the
    // flight that is saving, and would answer from it)
    let third = loader.cache().load(key, &engine).await;

    // assert
    assert_eq!(exports(&module), ["add"]);
    assert!(third.is_ok());
    let good = get_raw(&server, &rkey).unwrap();
    assert_ne!(good, value, "the bad value was replaced");
    let s = take(&snapshotter);
    let labels = |k: &'static str, v: &'static str| [("cache", "solo"), ("tier", "redis"), (k, v)];
    assert_eq!(
        counter(
            &s,
            "tierscope_compilations_total",
            &[("cache", "solo"), ("result", "ok")]
        ),
        2
    );
    assert_eq!(
        counter(&s, "tierscope_lookups_total", &labels("result", "error")),
        1
    );
    assert_eq!(
        counter(&s, "tierscope_lookups_total", &labels("result", "hit")),
        1
    );
    assert_eq!(
        counter(
            &s,
            "tierscope_errors_total",
            &[
                ("cache", "solo"),
                ("tier", "redis"),
                ("op", "load"),
                ("kind", "integrity")
            ]
        ),
        1
    );
    assert_eq!(
        counter(&s, "tierscope_evictions_total", &labels("cause", "corrupt")),
        1
    );
    assert_eq!(
        counter(
            &s,
            "tierscope_evicted_bytes_total",
            &labels("cause", "corrupt")
        ),
        value.len() as u64
    );
    // Redis answered: an integrity failure never opens the breaker
    assert!(redis.is_available());
}

#[tokio::test]
async fn every_kind_of_bad_value_is_an_integrity_error_and_is_deleted() {
    // arrange
    let server = RedisServer::start();
    let engine = Engine::default();
    let redis = cache(&server);
    let watch = Watch::attach(&redis);
    let stranger = RedisCache::builder(server.url())
        .mac_key(OTHER_KEY)
        .build()
        .unwrap();
    let (key, module, _) = tiny(&engine, 4);
    let (other, other_module, _) = tiny(&engine, 5);
    let rkey = redis.redis_key(key, &engine);
    redis.save(key, &engine, &module).await.unwrap();
    redis.save(other, &engine, &other_module).await.unwrap();
    let good = get_raw(&server, &rkey).unwrap();
    let other_value = get_raw(&server, &redis.redis_key(other, &engine)).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("other bytes", b"definitely not a tierscope entry".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 100].to_vec()),
        ("a flipped MAC byte", {
            let mut v = good.clone();
            *v.last_mut().unwrap() ^= 0x80;
            v
        }),
        ("a flipped header byte", {
            let mut v = good.clone();
            v[20] ^= 0x01;
            v
        }),
        ("a valid value copied from another key", other_value),
    ];
    // signed with a key this node does not hold
    stranger.save(key, &engine, &module).await.unwrap();
    cases.push((
        "signed with an unknown key",
        get_raw(&server, &rkey).unwrap(),
    ));

    for (i, (what, bad)) in cases.iter().enumerate() {
        set_raw(&server, &rkey, bad);

        // act
        let err = redis.load(key, &engine).await.unwrap_err();

        // assert: refused, named, deleted, reported
        match &err {
            CacheError::Integrity { location, reason } => {
                assert!(location.contains(&rkey), "{what}: {location}");
                assert!(location.contains("redis"), "{what}: {location}");
                assert!(
                    matches!(
                        reason,
                        IntegrityFailure::MacMismatch { .. }
                            | IntegrityFailure::ShorterThanMac { .. }
                    ),
                    "{what}: {reason}"
                );
            }
            other => panic!("{what}: expected Integrity, got {other:?}"),
        }
        assert!(
            !exists_raw(&server, &rkey),
            "{what}: the bad value was not deleted"
        );
        let evictions = watch.evictions();
        assert_eq!(evictions.len(), i + 1, "{what}");
        assert_eq!(evictions[i].cause, EvictionCause::Corrupt);
        assert_eq!(evictions[i].bytes, bad.len() as u64);
    }
    // the stranger's values fail here, and ours fail there
    redis.save(key, &engine, &module).await.unwrap();
    assert!(matches!(
        stranger.load(key, &engine).await.unwrap_err(),
        CacheError::Integrity { .. }
    ));
    assert!(redis.is_available(), "integrity failures are not outages");
    assert_eq!(watch.availability(), [true]);
}

#[tokio::test]
async fn rotation_signs_with_the_first_key_and_accepts_the_others() {
    // arrange
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 7);
    let old = RedisCache::builder(server.url())
        .mac_key(KEY)
        .build()
        .unwrap();
    let rotated = RedisCache::builder(server.url())
        .mac_key(OTHER_KEY)
        .mac_key(KEY)
        .build()
        .unwrap();
    let new_only = RedisCache::builder(server.url())
        .mac_key_from_hex(&hex::encode(OTHER_KEY))
        .unwrap()
        .build()
        .unwrap();

    // act + assert: a value signed with the old key is read by the rotated node
    old.save(key, &engine, &module).await.unwrap();
    assert!(rotated.load(key, &engine).await.is_ok());
    // the rotated node signs with its first key: the new-only node reads it
    rotated.save(key, &engine, &module).await.unwrap();
    assert!(new_only.load(key, &engine).await.is_ok());
    assert!(rotated.load(key, &engine).await.is_ok());
}

#[tokio::test]
async fn insecure_mode_round_trips_and_still_catches_corruption() {
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 8);
    let insecure = RedisCache::builder(server.url())
        .insecure_no_mac()
        .build()
        .unwrap();
    assert!(format!("{insecure:?}").contains("INSECURE"));

    insecure.save(key, &engine, &module).await.unwrap();
    assert!(insecure.load(key, &engine).await.is_ok());
    // signed nodes refuse unsigned values
    assert!(matches!(
        cache(&server).load(key, &engine).await.unwrap_err(),
        CacheError::Integrity { .. }
    ));
    insecure.save(key, &engine, &module).await.unwrap();
    let rkey = insecure.redis_key(key, &engine);
    let mut v = get_raw(&server, &rkey).unwrap();
    v[entry::HEADER_LEN + 10] ^= 0x04;
    set_raw(&server, &rkey, &v);
    assert!(matches!(
        insecure.load(key, &engine).await.unwrap_err(),
        CacheError::Integrity { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_workload_then_restarted() {
    // arrange: one node, memory -> disk -> redis, with a short probe interval
    let mut server = RedisServer::start();
    let engine = Engine::default();
    let dir = tempfile::tempdir().unwrap();
    let redis = builder(&server)
        .timeout(Duration::from_millis(250))
        .probe_interval(Duration::from_millis(200))
        .failure_threshold(3)
        .build()
        .unwrap();
    let watch = Watch::attach(&redis);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let n = metrics::with_local_recorder(&recorder, || node("ops", dir.path(), redis.clone()));
    let wasm: Vec<Vec<u8>> = (0..12).map(|i| corpus::tiny(100 + i)).collect();
    for w in &wasm[..4] {
        n.loader.load_or_compile(&engine, w).await.unwrap();
        until_saved(&redis, ModuleHash::new(w), &engine).await;
    }

    // act 1: Redis dies; the workload goes on (old modules and new ones)
    server.stop();
    let mut answered = 0;
    for w in wasm[..10].iter().chain(&wasm[..4]) {
        let started = Instant::now();
        let module = n.loader.load_or_compile(&engine, w).await;
        assert!(module.is_ok(), "every load still returns a module");
        assert!(started.elapsed() < Duration::from_secs(2));
        answered += 1;
    }
    assert_eq!(answered, 14);
    // the loader saves after answering: let the last saves finish
    tokio::time::sleep(Duration::from_millis(100)).await;

    // assert 1: the breaker opened and errors were counted by kind
    assert!(!redis.is_available());
    assert_eq!(watch.availability(), [true, false]);
    let err = redis
        .load(ModuleHash::new(&wasm[0]), &engine)
        .await
        .unwrap_err();
    // (refused by the open breaker, or, on a slow machine where the probe
    // interval already passed, a failed probe that keeps it open)
    assert!(
        matches!(&err, CacheError::Unavailable { tier, reason } if *tier == "redis" && matches!(reason, Unavailability::CircuitOpen { .. } | Unavailability::ConnectionRefused { .. })),
        "{err}"
    );
    assert!(!redis.is_available());

    // act 2: Redis comes back on the same port (empty)
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis.is_available() {
        assert!(Instant::now() < deadline, "the breaker never closed");
        let _ = redis.contains(ModuleHash::new(&wasm[0]), &engine).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a new module is compiled, saved remotely, and served remotely again
    let fresh = &wasm[11];
    n.loader.load_or_compile(&engine, fresh).await.unwrap();
    until_saved(&redis, ModuleHash::new(fresh), &engine).await;
    let remote = redis.load(ModuleHash::new(fresh), &engine).await;

    // assert 2
    assert!(remote.is_ok(), "remote hits resume: {:?}", remote.err());
    assert_eq!(watch.availability(), [true, false, true]);
    let s = take(&snapshotter);
    let errors = |op, kind| {
        counter(
            &s,
            "tierscope_errors_total",
            &[
                ("cache", "ops"),
                ("tier", "redis"),
                ("op", op),
                ("kind", kind),
            ],
        )
    };
    assert!(
        errors("load", "unavailable") >= 6,
        "{}",
        errors("load", "unavailable")
    );
    assert!(
        errors("save", "unavailable") >= 6,
        "{}",
        errors("save", "unavailable")
    );
    assert_eq!(errors("load", "integrity"), 0);
    assert_eq!(
        counter(
            &s,
            "tierscope_compilations_total",
            &[("cache", "ops"), ("result", "ok")]
        ),
        11
    );
    assert_eq!(
        gauge(
            &s,
            "tierscope_tier_available",
            &[("cache", "ops"), ("tier", "redis")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_stalled_redis_times_out_within_its_bound() {
    // arrange: a warm connection, then every client paused for 2 s
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 9);
    let timeout = Duration::from_millis(250);
    let margin = Duration::from_millis(200);
    let redis = builder(&server).timeout(timeout).build().unwrap();
    redis.save(key, &engine, &module).await.unwrap();
    assert!(
        server
            .command(&["CLIENT", "PAUSE", "2000", "ALL"])
            .starts_with("+OK")
    );

    // act + assert: load, contains and save each time out in bound
    for op in ["load", "contains", "save"] {
        let started = Instant::now();
        let err = match op {
            "load" => redis.load(key, &engine).await.map(drop).unwrap_err(),
            "contains" => redis.contains(key, &engine).await.map(drop).unwrap_err(),
            _ => redis.save(key, &engine, &module).await.unwrap_err(),
        };
        let elapsed = started.elapsed();
        assert!(
            matches!(&err, CacheError::Timeout { op: o, tier, after } if *o == op && tier == "redis" && *after == timeout),
            "{op}: {err:?}"
        );
        assert!(
            elapsed >= timeout - Duration::from_millis(5),
            "{op}: {elapsed:?}"
        );
        assert!(elapsed < timeout + margin, "{op} took {elapsed:?}");
    }
    // three timeouts opened the breaker: the next call answers at once
    let started = Instant::now();
    let err = redis.load(key, &engine).await.unwrap_err();
    assert!(matches!(err, CacheError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(20));
}

#[tokio::test]
async fn a_silent_server_costs_at_most_one_timeout_per_probe_interval() {
    // arrange: a server that accepts connections and never answers
    let silent = SilentServer::start();
    let engine = Engine::default();
    let key = ModuleHash::from_bytes([1; 32]);
    let timeout = Duration::from_millis(100);
    let probe = Duration::from_millis(300);
    let redis = RedisCache::builder(silent.url())
        .mac_key(KEY)
        .timeout(timeout)
        .probe_interval(probe)
        .failure_threshold(3)
        .build()
        .unwrap();
    let watch = Watch::attach(&redis);

    // act: a tight loop of loads for 1.2 s
    let run = Duration::from_millis(1200);
    let started = Instant::now();
    let (mut timeouts, mut refused) = (0u32, 0u32);
    while started.elapsed() < run {
        let t = Instant::now();
        match redis.load(key, &engine).await {
            Err(CacheError::Timeout { .. }) => {
                timeouts += 1;
                assert!(t.elapsed() < timeout + Duration::from_millis(200));
            }
            Err(CacheError::Unavailable { .. }) => {
                refused += 1;
                assert!(t.elapsed() < Duration::from_millis(20));
            }
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // assert: 3 timeouts to open, then at most one per probe interval
    let probes = (run.as_millis() / probe.as_millis()) as u32 + 1;
    assert!(timeouts >= 3, "{timeouts}");
    assert!(timeouts <= 3 + probes, "{timeouts} timeouts in {run:?}");
    assert!(refused > 20, "{refused}");
    assert_eq!(watch.availability(), [true, false]);
}

#[tokio::test]
async fn an_unreachable_address_is_a_clear_error_on_first_use() {
    // arrange: nothing listens on this port
    let port = free_port();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 10);
    let redis = RedisCache::builder(format!("redis://127.0.0.1:{port}/"))
        .mac_key(KEY)
        .build()
        .expect("construction does no I/O");

    // act
    let started = Instant::now();
    let load = redis.load(key, &engine).await.unwrap_err();
    let save = redis.save(key, &engine, &module).await.unwrap_err();
    let ping = redis.ping().await.unwrap_err();
    let elapsed = started.elapsed();

    // assert
    for err in [&load, &save, &ping] {
        match err {
            CacheError::Unavailable { tier, reason } => {
                assert_eq!(tier.as_str(), "redis");
                assert!(
                    matches!(reason, Unavailability::ConnectionRefused { endpoint, .. }
                        if endpoint.contains(&format!("127.0.0.1:{port}"))),
                    "{reason}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(
        load.to_string()
            .starts_with("tier redis is unavailable: connection refused"),
        "{load}"
    );
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    // the third failure opened the breaker
    assert!(!redis.is_available());
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_a_clear_error_on_first_use() {
    // arrange
    let server = RedisServer::start_with(Options {
        password: Some("s3cret".into()),
        ..Options::default()
    });
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 11);
    let wrong = RedisCache::builder(server.url_with_password("wrong"))
        .mac_key(KEY)
        .build()
        .unwrap();
    let missing = RedisCache::builder(format!("redis://127.0.0.1:{}/", server.port()))
        .mac_key(KEY)
        .build()
        .unwrap();
    let right = cache(&server);

    // act
    let started = Instant::now();
    let wrong_err = wrong.load(key, &engine).await.unwrap_err();
    let missing_err = missing.save(key, &engine, &module).await.unwrap_err();
    let elapsed = started.elapsed();

    // assert
    for err in [&wrong_err, &missing_err] {
        match err {
            CacheError::Unavailable { tier, reason } => {
                assert_eq!(tier.as_str(), "redis");
                assert!(
                    matches!(reason, Unavailability::AuthenticationFailed { .. }),
                    "{reason}"
                );
                let text = err.to_string();
                assert!(
                    !text.contains("s3cret") && !text.contains("wrong@"),
                    "{text}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    right.save(key, &engine, &module).await.unwrap();
    assert!(right.load(key, &engine).await.is_ok());
}

#[tokio::test]
async fn oversized_saves_are_refused_before_any_network_io() {
    // arrange: an unreachable server, so any I/O would answer Unavailable
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 12);
    let redis = RedisCache::builder(format!("redis://127.0.0.1:{}/", free_port()))
        .mac_key(KEY)
        .max_entry_bytes(1024)
        .build()
        .unwrap();

    // act: twice (the second time the size is known before serializing)
    let first = redis.save(key, &engine, &module).await.unwrap_err();
    let second = redis.save(key, &engine, &module).await.unwrap_err();

    // assert
    for err in [first, second] {
        match err {
            CacheError::TooLarge { tier, size, limit } => {
                assert_eq!(tier, "redis");
                assert_eq!(limit, 1024);
                let artifact = module.serialize().unwrap().len() as u64;
                assert_eq!(size, artifact + (entry::HEADER_LEN + MAC_LEN) as u64);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    assert!(
        redis.is_available(),
        "a refused size is not a Redis failure"
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
    let watch = Watch::attach(&redis);

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
    let hit = redis.load_traced(key, &engine).await.unwrap();

    let artifact = module.serialize().unwrap().len() as u64;
    assert!(artifact > 16 << 10, "{artifact}");
    assert_eq!(hit.bytes, Some(artifact));
    assert_eq!(
        tierscope::sizes::lookup(key, tierscope::engine::engine_key(&engine)),
        Some(artifact)
    );
}

#[test]
fn construction_without_a_key_says_why() {
    let err = RedisCache::builder("redis://127.0.0.1:6379/")
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("needs a MAC key"), "{msg}");
    assert!(msg.contains("TIERSCOPE_REDIS_KEY"), "{msg}");
    assert!(msg.contains("insecure_no_mac"), "{msg}");
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

// --- hardening (issue 9): oversized values, the breaker, extreme settings ---

/// Make `key` a value of `bytes` bytes (zeros and a final `x`) with one small
/// `SETRANGE`: the test process never holds it.
fn plant_huge(server: &RedisServer, key: &str, bytes: u64) {
    let reply = server.command(&["SETRANGE", key, &(bytes - 1).to_string(), "x"]);
    assert_eq!(reply, format!(":{bytes}\r\n"));
}

#[tokio::test]
async fn a_huge_value_under_one_key_never_opens_the_breaker_for_another() {
    // arrange: default settings (250 ms, 64 MiB, 3 failures); B holds a good value
    let server = RedisServer::start();
    let engine = Engine::default();
    let (a, _, _) = tiny(&engine, 30);
    let (b, module_b, _) = tiny(&engine, 31);
    let redis = cache(&server);
    let watch = Watch::attach(&redis);
    redis.save(b, &engine, &module_b).await.unwrap();
    let key_a = redis.redis_key(a, &engine);
    let huge: u64 = 256 << 20;

    // act + assert: a 256 MiB junk value under A, put back after each load
    for round in 0..4 {
        plant_huge(&server, &key_a, huge);
        let started = Instant::now();
        let err = redis.load(a, &engine).await.map(drop).unwrap_err();
        let elapsed = started.elapsed();
        match &err {
            CacheError::Integrity { location, reason } => {
                assert!(location.contains(&key_a), "{location}");
                assert!(
                    matches!(reason, IntegrityFailure::Oversized { bytes, limit, .. }
                        if *bytes == huge && *limit == 64 << 20),
                    "{reason}"
                );
            }
            other => panic!("round {round}: expected Integrity, got {other:?}"),
        }
        assert!(
            elapsed < Duration::from_millis(250),
            "round {round}: the value was not checked server-side: {elapsed:?}"
        );
        assert!(!exists_raw(&server, &key_a), "round {round}: not deleted");
        assert!(
            redis.is_available(),
            "round {round}: a bad value opened the breaker"
        );
    }
    let hit = redis.load(b, &engine).await;

    // assert: B still hits; nothing but evictions was reported
    assert!(hit.is_ok(), "key B: {:?}", hit.err());
    assert_eq!(watch.availability(), [true]);
    let evictions = watch.evictions();
    assert_eq!(evictions.len(), 4, "{evictions:?}");
    for e in evictions {
        assert_eq!(e.cause, EvictionCause::Corrupt);
        assert_eq!(e.bytes, huge);
    }
}

#[tokio::test]
async fn bad_values_never_count_as_breaker_failures() {
    // arrange: a breaker that opens on the first failure
    let server = RedisServer::start();
    let engine = Engine::default();
    let (a, module_a, _) = tiny(&engine, 32);
    let (b, module_b, _) = tiny(&engine, 33);
    let redis = builder(&server)
        .failure_threshold(1)
        .max_entry_bytes(1 << 20)
        .build()
        .unwrap();
    redis.save(b, &engine, &module_b).await.unwrap();
    redis.save(a, &engine, &module_a).await.unwrap();
    let key_a = redis.redis_key(a, &engine);
    let good = get_raw(&server, &key_a).unwrap();

    // act: every kind of bad value under A, one after the other
    let mut flipped = good.clone();
    flipped[200] ^= 1;
    let bad: [(&str, &dyn Fn()); 5] = [
        (
            "just over the limit",
            &(|| plant_huge(&server, &key_a, (1 << 20) + 1)),
        ),
        (
            "far over the limit",
            &(|| plant_huge(&server, &key_a, 64 << 20)),
        ),
        ("failed MAC", &(|| set_raw(&server, &key_a, &flipped))),
        (
            "shorter than a MAC",
            &(|| set_raw(&server, &key_a, b"junk")),
        ),
        ("empty", &(|| set_raw(&server, &key_a, b""))),
    ];
    for (what, plant) in &bad {
        plant();
        let sent_before = net_output_bytes(&server);
        let err = redis.load(a, &engine).await.map(drop).unwrap_err();
        let sent = net_output_bytes(&server) - sent_before;

        // assert
        assert!(
            matches!(err, CacheError::Integrity { .. }),
            "{what}: {err:?}"
        );
        // at most the first read (the limit here) and some protocol
        assert!(
            sent < (1 << 20) + (64 << 10),
            "{what}: the server sent {sent} bytes for a value it should have refused"
        );
        assert!(redis.is_available(), "{what} opened the breaker");
        assert!(
            redis.load(b, &engine).await.is_ok(),
            "{what}: B no longer hits"
        );
    }
    // a value exactly at the limit is fetched (and here fails its MAC)
    plant_huge(&server, &key_a, 1 << 20);
    let err = redis.load(a, &engine).await.map(drop).unwrap_err();
    assert!(
        matches!(
            &err,
            CacheError::Integrity {
                reason: IntegrityFailure::MacMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn duration_max_settings_do_not_panic() {
    // arrange: every duration at its maximum
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 34);
    let max = builder(&server)
        .timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .probe_interval(Duration::MAX)
        .ttl(Duration::MAX)
        .build()
        .unwrap();
    let dead = RedisCache::builder(format!("redis://127.0.0.1:{}/", free_port()))
        .mac_key(KEY)
        .timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .probe_interval(Duration::MAX)
        .failure_threshold(1)
        .build()
        .unwrap();

    // act + assert: a working server answers every operation
    max.save(key, &engine, &module).await.unwrap();
    assert!(max.load(key, &engine).await.is_ok());
    assert!(max.contains(key, &engine).await.unwrap());
    max.ping().await.unwrap();
    let pttl: i64 = server
        .connection()
        .pttl(max.redis_key(key, &engine))
        .unwrap();
    assert!(pttl > 0, "{pttl}");
    // a dead one opens the breaker, which then stays open
    assert!(matches!(
        dead.load(key, &engine).await.map(drop).unwrap_err(),
        CacheError::Unavailable { .. }
    ));
    assert!(!dead.is_available());
    let err = dead.save(key, &engine, &module).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CacheError::Unavailable {
                reason: Unavailability::CircuitOpen { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

/// Bytes the server has sent to all clients so far (`INFO stats`).
fn net_output_bytes(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_net_output_bytes in {info}"))
}

/// Counts panics on any thread (the default hook still prints them).
fn count_panics() -> Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::{OnceLock, atomic::AtomicUsize};
    static COUNT: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicUsize::new(0));
            let seen = count.clone();
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                previous(info);
            }));
            count
        })
        .clone()
}

#[test]
fn extreme_builder_settings_never_panic() {
    use proptest::{
        prelude::*,
        test_runner::{Config, TestRunner},
    };

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::from_nanos(1)),
            Just(Duration::from_millis(1)),
            Just(Duration::from_millis(250)),
            Just(Duration::MAX),
            Just(Duration::from_secs(u64::MAX)),
            Just(Duration::from_secs(u64::MAX / 1000)),
            Just(Duration::from_millis(u64::MAX)),
            any::<u64>().prop_map(Duration::from_nanos),
            any::<u64>().prop_map(Duration::from_millis),
        ]
    }
    fn bytes() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(160),
            Just(161),
            Just(1 << 20),
            Just(512 << 20),
            Just((512 << 20) + 1),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }
    fn count() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), Just(1), Just(3), Just(u32::MAX), any::<u32>()]
    }

    // arrange: one server for every case, a module to save
    let panics = count_panics();
    let server = RedisServer::start();
    let cluster = RedisServer::start_with(Options {
        cluster: true,
        ..Options::default()
    });
    let dead = format!("redis://127.0.0.1:{}/", free_port());
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 35);
    let settings = (
        (duration(), duration(), duration()),
        proptest::option::of(duration()),
        count(),
        bytes(),
        bytes(),
        prop_oneof![
            Just(String::new()),
            Just("{tag}".to_string()),
            Just("p".repeat(10_000))
        ],
    );
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });

    // act + assert
    runner
        .run(
            &settings,
            |((timeout, connect, probe), ttl, failures, max_entry, blocking, prefix)| {
                let before = panics.load(std::sync::atomic::Ordering::SeqCst);
                let make = |target: RedisTarget| {
                    let mut b = RedisCache::builder(target)
                        .mac_key(KEY)
                        .timeout(timeout)
                        .connect_timeout(connect)
                        .probe_interval(probe)
                        .failure_threshold(failures)
                        .max_entry_bytes(max_entry)
                        .blocking_threshold(blocking)
                        .prefix(prefix.clone());
                    if let Some(ttl) = ttl {
                        b = b.ttl(ttl);
                    }
                    b.build()
                };
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                let targets = [
                    RedisTarget::from(server.url()),
                    RedisTarget::from(&dead),
                    RedisTarget::cluster([cluster.url()]),
                    RedisTarget::cluster([dead.clone()]),
                ];
                for target in targets {
                    let Ok(redis) = make(target) else { continue };
                    rt.block_on(async {
                        // every result is fine; only a panic or a hang is not
                        let _ = redis.save(key, &engine, &module).await;
                        for _ in 0..4 {
                            let _ = redis.load(key, &engine).await;
                        }
                        let _ = redis.contains(key, &engine).await;
                        let _ = redis.ping().await;
                    });
                }
                drop(rt);
                prop_assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), before);
                Ok(())
            },
        )
        .unwrap();
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
        stored.len() as u64 > tierscope::tier::redis::FIRST_READ_BYTES,
        "{}",
        stored.len()
    );

    // act
    let hit = redis.load_traced(key, &engine).await.unwrap();

    // assert: the whole value, verified (MAC and header) and deserialized
    let artifact = module.serialize().unwrap().len() as u64;
    assert_eq!(hit.bytes, Some(artifact));
    assert_eq!(
        stored.len() as u64,
        artifact + (entry::HEADER_LEN + MAC_LEN) as u64
    );
    assert_eq!(exports(&hit.module), exports(&module));
}
