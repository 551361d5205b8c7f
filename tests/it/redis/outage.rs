//! Outages: a stopped, stalled, silent, unreachable or misconfigured server costs bounded time and a clear error, and the tier recovers.

use super::*;

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
    let watch = Recording::attach(&redis);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let n = metrics::with_local_recorder(&recorder, || node("ops", dir.path(), redis.clone()));
    let wasm: Vec<Vec<u8>> = (0..12).map(|i| corpus::tiny(100 + i)).collect();
    for w in &wasm[..4] {
        n.loader.load_into(&engine, w).await.unwrap();
        until_saved(&redis, ModuleHash::new(w), &engine).await;
    }

    // act 1: Redis dies; the workload goes on (old modules and new ones)
    server.stop();
    let mut answered = 0;
    for w in wasm[..10].iter().chain(&wasm[..4]) {
        let started = Instant::now();
        let module = n.loader.load_into(&engine, w).await;
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
    n.loader.load_into(&engine, fresh).await.unwrap();
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
    let watch = Recording::attach(&redis);

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
    panics(); // installs the counting hook
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
                let before = panics();
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
                prop_assert_eq!(panics(), before);
                Ok(())
            },
        )
        .unwrap();
}
