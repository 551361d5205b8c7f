//! Integrity: tampered, truncated, foreign and oversized values are refused, deleted and counted, never deserialized, and never open the breaker.

use super::*;

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
    loader.load_into(&engine, &wasm).await.unwrap();
    until_saved(&redis, key, &engine).await;
    let rkey = redis.redis_key(key, &engine);
    let mut value = get_raw(&server, &rkey).unwrap();
    let mid = entry::HEADER_LEN + (value.len() - entry::HEADER_LEN) / 2;
    value[mid] ^= 0x01;
    set_raw(&server, &rkey, &value);

    // act: the loader meets the tampered value, recompiles and saves again
    let module = loader.load_into(&engine, &wasm).await.unwrap();
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
    let watch = Recording::attach(&redis);
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
        .mac_key(tierscope::MacKey::from_hex(&hex::encode(OTHER_KEY)).unwrap())
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
async fn a_huge_value_under_one_key_never_opens_the_breaker_for_another() {
    // arrange: default settings (250 ms, 64 MiB, 3 failures); B holds a good value
    let server = RedisServer::start();
    let engine = Engine::default();
    let (a, _, _) = tiny(&engine, 30);
    let (b, module_b, _) = tiny(&engine, 31);
    let redis = cache(&server);
    let watch = Recording::attach(&redis);
    redis.save(b, &engine, &module_b).await.unwrap();
    let key_a = redis.redis_key(a, &engine);
    let huge: u64 = 256 << 20;

    // act + assert: a 256 MiB junk value under A, put back after each load
    for round in 0..4 {
        plant_huge(&server, &key_a, huge);
        let sent_before = net_output_bytes(&server);
        let err = redis.load(a, &engine).await.map(drop).unwrap_err();
        let sent = net_output_bytes(&server) - sent_before;
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
        // The server sent its first read and a few replies (INFO's own
        // among them), not the 256 MiB: the length was checked first.
        assert!(
            sent < tierscope::internals::redis::FIRST_READ_BYTES + (64 << 10),
            "round {round}: the value was not checked server-side: {sent} bytes sent"
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
