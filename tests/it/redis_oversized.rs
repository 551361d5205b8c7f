//! An oversized value in Redis is refused without being downloaded: the
//! process' peak memory stays flat. In a process of its own, so that no
//! other test moves the peak (`VmHWM`) while it is measured.

use crate::common;
use crate::support::redis_server;

use std::time::Duration;

use common::{in_own_process, process_memory, tiny};
use redis_server::RedisServer;
use tierscope::{CacheError, IntegrityFailure, ModuleCache, RedisCache};
use wasmer::Engine;

#[tokio::test]
async fn a_256_mib_value_over_a_1_mib_limit_is_refused_with_flat_memory() {
    if !in_own_process(
        "redis_oversized::a_256_mib_value_over_a_1_mib_limit_is_refused_with_flat_memory",
    ) {
        return;
    }
    // arrange: a 1 MiB limit and a generous timeout (a download would finish)
    let server = RedisServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 1);
    let redis = RedisCache::builder(server.url())
        .mac_key([7; 32])
        .max_entry_bytes(1 << 20)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    redis.save(key, &engine, &module).await.unwrap(); // warm everything up
    let rkey = redis.redis_key(key, &engine);
    let huge: u64 = 256 << 20;
    // one small command: the test process never holds the value
    let reply = server.command(&["SETRANGE", &rkey, &(huge - 1).to_string(), "x"]);
    assert_eq!(reply, format!(":{huge}\r\n"));
    let peak_before = process_memory::peak_rss_bytes();

    // act
    let err = redis.load(key, &engine).await.map(drop).unwrap_err();
    let grown = process_memory::peak_rss_bytes().saturating_sub(peak_before);

    // assert: refused as an integrity failure, deleted, memory flat
    eprintln!("peak RSS grew by {} KiB", grown >> 10);
    match &err {
        CacheError::Integrity { reason, .. } => assert!(
            matches!(reason, IntegrityFailure::Oversized { bytes, limit, .. }
                if *bytes == huge && *limit == 1 << 20),
            "{reason}"
        ),
        other => panic!("expected Integrity, got {other:?}"),
    }
    assert_eq!(server.command(&["EXISTS", &rkey]), ":0\r\n", "not deleted");
    assert!(
        grown < 64 << 20,
        "peak RSS grew by {} MiB while refusing the value",
        grown >> 20
    );
    assert!(redis.is_available());
    // the next save and load work as before
    redis.save(key, &engine, &module).await.unwrap();
    assert!(redis.load(key, &engine).await.is_ok());
}
