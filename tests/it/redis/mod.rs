//! The Redis tier against a real `redis-server` (or a real three-master
//! Redis Cluster) that each test starts on free loopback ports: round trips,
//! sharing between nodes, integrity, outages, stalls, bad configurations and
//! clusters. One test binary; the groups are modules, the helpers are here.

use crate::common;
use crate::support::{redis_cluster, redis_server};

mod cluster;
mod integrity;
mod outage;
mod round_trip;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    Recording, panics,
    snapshot::{counter, gauge, take},
    tiny,
};
use metrics_util::debugging::DebuggingRecorder;
use redis::Commands;
use redis_cluster::RedisCluster;
use redis_server::{Options, RedisServer, SilentServer, free_port};
use tierscope::{
    CacheError, EvictionCause, FileSystemCache, InstrumentExt, IntegrityFailure, Lookup,
    MemoryCache, ModuleCache, ModuleHash, ModuleLoader, RedisCache, RedisCacheBuilder, RedisTarget,
    Unavailability, corpus, entry, internals::redis::MAC_LEN,
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

// --- hardening (issue 9): oversized values, the breaker, extreme settings ---

/// Make `key` a value of `bytes` bytes (zeros and a final `x`) with one small
/// `SETRANGE`: the test process never holds it.
fn plant_huge(server: &RedisServer, key: &str, bytes: u64) {
    let reply = server.command(&["SETRANGE", key, &(bytes - 1).to_string(), "x"]);
    assert_eq!(reply, format!(":{bytes}\r\n"));
}

/// Bytes the server has sent to all clients so far (`INFO stats`).
fn net_output_bytes(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_net_output_bytes in {info}"))
}
