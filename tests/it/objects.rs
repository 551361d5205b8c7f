//! The object-store tier against a real S3 server (`s3s-fs`, started in
//! this process on a free loopback port, stopped after each test): round
//! trips, multipart uploads, the upload skip, integrity, outages; and, in
//! `large`, a 136 MB artifact and two processes sharing one bucket.
//!
//! Every load here passes the tier's debug assertion that the artifact
//! handed to `Module::deserialize` is 16-byte aligned: small objects (one
//! chunk) and large ones (many chunks, hashed in batches) alike.

mod large;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tierscope::{
    CacheError, Eviction, EvictionCause, IntegrityFailure, MemoryCache, ModuleCache, ModuleHash,
    ModuleLoader, ObjectsCache, ObjectsCacheBuilder, RemoteRequest, RequestOp, RequestResult,
    Residency, TierObserver, Unavailability, entry,
};
use wasmer::{Engine, Module};

use crate::{
    common::tiny,
    support::s3_server::{S3Server, SilentServer},
};

const KEY: [u8; 32] = [0x3c; 32];

fn builder_with(url: &str, options: Vec<(&'static str, String)>) -> ObjectsCacheBuilder {
    options
        .into_iter()
        .fold(ObjectsCache::builder(url).mac_key(KEY), |b, (k, v)| {
            b.store_option(k, v)
        })
}

fn builder(server: &S3Server) -> ObjectsCacheBuilder {
    builder_with(&server.url("cache"), server.options())
}

/// A client of the server with the `object_store` crate's own defaults.
fn raw_store(server: &S3Server) -> Arc<dyn object_store::ObjectStore> {
    let builder = server.options().into_iter().fold(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(crate::support::s3_server::BUCKET),
        |b, (k, v)| b.with_config(k.parse().unwrap(), v),
    );
    Arc::new(builder.build().unwrap())
}

/// A module with one data segment of `bytes` pseudo-random bytes: a large
/// artifact (the segment is stored in it) that compiles in moments.
pub fn data_module(bytes: usize, seed: u64) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let pages = (bytes as u64).div_ceil(65536).max(1);
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    let mut memory = vec![1, 0];
    leb(pages, &mut memory);
    section(5, &memory, &mut wasm);
    let mut data = vec![1, 0, 0x41, 0, 0x0b];
    leb(bytes as u64, &mut data);
    let mut x = seed | 1;
    data.extend((0..bytes).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    section(11, &data, &mut wasm);
    wasm
}

/// Every event the tier reports.
#[derive(Debug, Default)]
pub struct Events {
    pub requests: Mutex<Vec<RemoteRequest>>,
    pub evictions: Mutex<Vec<Eviction>>,
    pub available: Mutex<Vec<bool>>,
}

impl Events {
    pub fn attach(cache: &impl ModuleCache) -> Arc<Events> {
        let e = Arc::new(Events::default());
        cache.control(&mut tierscope::Control::AttachObserver(e.clone()));
        e
    }

    /// Requests of `op` that ended in `result`, and forget them all.
    pub fn count(&self, op: RequestOp, result: RequestResult) -> usize {
        let requests = self.requests.lock();
        requests
            .iter()
            .filter(|r| r.op == op && r.result == result)
            .count()
    }

    pub fn received(&self) -> u64 {
        self.requests.lock().iter().map(|r| r.received).sum()
    }
}

impl TierObserver for Events {
    fn evicted(&self, eviction: Eviction) {
        self.evictions.lock().push(eviction);
    }
    fn resident(&self, _: Residency) {}
    fn available(&self, available: bool) {
        self.available.lock().push(available);
    }
    fn request(&self, request: RemoteRequest) {
        self.requests.lock().push(request);
    }
}

fn exports(module: &Module) -> Vec<String> {
    module.exports().map(|e| e.name().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_contains_miss_and_the_upload_skip() {
    // arrange
    let server = S3Server::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 1);
    let objects = builder(&server).build().unwrap();
    let events = Events::attach(&objects);
    let missing = ModuleHash::from_bytes([9; 32]);

    // act
    objects.save(key, &engine, &module).await.unwrap();
    let saved = events.count(RequestOp::Put, RequestResult::Ok);
    objects.save(key, &engine, &module).await.unwrap();
    let hit = objects
        .lookup(key, &engine, tierscope::Lookup::request())
        .await
        .unwrap();

    // assert
    assert_eq!(saved, 1);
    assert_eq!(
        events.count(RequestOp::Put, RequestResult::Ok),
        1,
        "the second save sent nothing"
    );
    assert_eq!(events.count(RequestOp::Head, RequestResult::Ok), 1);
    assert_eq!(exports(&hit.module), ["add"]);
    let artifact = module.serialize().unwrap().len() as u64;
    assert_eq!(hit.bytes(), Some(artifact));
    assert!(objects.contains(key, &engine).await.unwrap());
    assert!(!objects.contains(missing, &engine).await.unwrap());
    assert!(
        objects
            .load(missing, &engine)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let path = objects.object_path(key, &engine);
    let ns = &tierscope::engine::ident_of(&engine).namespace;
    assert_eq!(path, format!("cache/{ns}/{key}"));
    let raw = std::fs::read(server.object_file(&path)).unwrap();
    assert_eq!(raw.len() as u64, entry::HEADER_LEN as u64 + artifact + 32);
    assert_eq!(raw[..8], entry::MAGIC);
    let sent: u64 = events.requests.lock().iter().map(|r| r.sent).sum();
    assert_eq!(sent, raw.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_go_in_parts_under_a_lease_and_come_back_whole() {
    // arrange: 12 MB of data, parts of 5 MiB
    let server = S3Server::start();
    let engine = Engine::default();
    let wasm = data_module(12 << 20, 7);
    let module = Module::new(&engine, &wasm).unwrap();
    let key = ModuleHash::new(&wasm);
    let objects = builder(&server)
        .multipart_threshold(6 << 20)
        .part_bytes(5 << 20)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let events = Events::attach(&objects);

    // act
    objects.save(key, &engine, &module).await.unwrap();
    let fresh = Engine::default();
    let loaded = objects.load(key, &fresh).await.unwrap();

    // assert
    assert_eq!(
        events.count(RequestOp::CreateMultipart, RequestResult::Ok),
        1
    );
    assert_eq!(events.count(RequestOp::PutPart, RequestResult::Ok), 3);
    assert_eq!(
        events.count(RequestOp::CompleteMultipart, RequestResult::Ok),
        1
    );
    // the lease: created, then deleted
    assert_eq!(events.count(RequestOp::Put, RequestResult::Ok), 1);
    assert_eq!(events.count(RequestOp::Delete, RequestResult::Ok), 1);
    let path = objects.object_path(key, &engine);
    assert!(!server.object_file(&format!("{path}.uploading")).exists());
    assert_eq!(loaded.serialize().unwrap(), module.serialize().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_skips_the_upload_and_an_abandoned_one_is_replaced() {
    // arrange: another node's lease on the object
    let server = S3Server::start();
    let engine = Engine::default();
    let wasm = data_module(1 << 20, 8);
    let module = Module::new(&engine, &wasm).unwrap();
    let key = ModuleHash::new(&wasm);
    let objects = builder(&server)
        .multipart_threshold(512 << 10)
        .part_bytes(5 << 20)
        .timeout(Duration::from_secs(1))
        .min_throughput(1 << 40)
        .build()
        .unwrap();
    let events = Events::attach(&objects);
    let lease = format!("{}.uploading", objects.object_path(key, &engine));
    let store = objects.store();
    object_store::ObjectStoreExt::put(&*store, &lease.as_str().into(), "elsewhere".into())
        .await
        .unwrap();

    // act: a save while the lease is fresh, another once it is stale (older
    // than twice the upload's bound, 2 s)
    objects.save(key, &engine, &module).await.unwrap();
    let skipped = !objects.contains(key, &engine).await.unwrap();
    let conflicts = events.count(RequestOp::Put, RequestResult::Conflict);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    objects.save(key, &engine, &module).await.unwrap();

    // assert
    assert!(skipped, "a fresh lease means another node uploads");
    assert_eq!(conflicts, 1);
    assert_eq!(
        events.count(RequestOp::CreateMultipart, RequestResult::Ok),
        1
    );
    assert!(objects.contains(key, &engine).await.unwrap());
    assert!(!server.object_file(&lease).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_and_a_truncated_object_are_refused_and_deleted() {
    let server = S3Server::start();
    let engine = Engine::default();
    let (key, module, wasm) = tiny(&engine, 3);
    let objects = builder(&server).build().unwrap();
    let events = Events::attach(&objects);
    let file = server.object_file(&objects.object_path(key, &engine));

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 2] = [
        ("tampered", |b| b[entry::HEADER_LEN + 40] ^= 1),
        ("truncated", |b| b.truncate(b.len() - 100)),
    ];
    for (what, damage) in damages {
        // arrange
        objects.save(key, &engine, &module).await.unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        damage(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();

        // act
        let refused = objects.load(key, &engine).await.unwrap_err();

        // assert
        assert!(
            matches!(
                refused,
                CacheError::Integrity {
                    reason: IntegrityFailure::MacMismatch { .. },
                    ..
                }
            ),
            "{what}: {refused}"
        );
        assert!(!file.exists(), "{what}: deleted");
        assert!(objects.load(key, &engine).await.unwrap_err().is_not_found());
    }
    let evictions = events.evictions.lock().clone();
    assert_eq!(evictions.len(), 2);
    assert!(evictions.iter().all(|e| e.cause == EvictionCause::Corrupt));

    // Through a loader, a bad object is compiled over and saved anew.
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        b"junk that is no tierscope value at all, not even close",
    )
    .unwrap();
    let loader = ModuleLoader::new(
        "objects-integrity",
        MemoryCache::new(64 << 20).with_fallback(objects.clone()),
    );
    let loaded = loader.load_into(&engine, &wasm).await.unwrap();
    assert_eq!(exports(&loaded), ["add"]);
    for _ in 0..200 {
        if objects.load(key, &Engine::default()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the loader never saved a good object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_object_is_refused_by_its_size_and_deleted() {
    let server = S3Server::start();
    let engine = Engine::default();
    let key = ModuleHash::from_bytes([5; 32]);
    let objects = builder(&server).max_entry_bytes(1 << 20).build().unwrap();
    let events = Events::attach(&objects);
    let path = objects.object_path(key, &engine);
    let junk = vec![7u8; 64 << 20];
    object_store::ObjectStoreExt::put(&*raw_store(&server), &path.as_str().into(), junk.into())
        .await
        .unwrap();

    let refused = objects.load(key, &engine).await.unwrap_err();

    assert!(
        matches!(
            refused,
            CacheError::Integrity {
                reason: IntegrityFailure::Oversized { bytes, .. },
                ..
            } if bytes == 64 << 20
        ),
        "{refused}"
    );
    assert!(!server.object_file(&path).exists());
    assert!(
        events.received() < 1 << 20,
        "read {} bytes",
        events.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_opens_the_breaker_and_loads_go_on_by_compiling() {
    // arrange
    let mut server = S3Server::start();
    let engine = Engine::default();
    let (key, module, wasm) = tiny(&engine, 4);
    let objects = builder(&server)
        .timeout(Duration::from_millis(300))
        .probe_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let events = Events::attach(&objects);
    objects.save(key, &engine, &module).await.unwrap();
    server.stop();

    // act: three failures open the breaker; then calls fail fast
    let mut failures = Vec::new();
    for _ in 0..3 {
        failures.push(objects.load(key, &engine).await.unwrap_err());
    }
    let started = Instant::now();
    let fast = objects.load(key, &engine).await.unwrap_err();
    let fast_took = started.elapsed();
    let loader = ModuleLoader::new(
        "objects-outage",
        MemoryCache::new(64 << 20).with_fallback(objects.clone()),
    );
    let compiled = loader.load_into(&engine, &wasm).await.unwrap();

    // assert
    for f in &failures {
        assert!(
            matches!(
                f,
                CacheError::Unavailable { .. } | CacheError::Timeout { .. }
            ),
            "{f}"
        );
    }
    assert!(matches!(
        fast,
        CacheError::Unavailable {
            reason: Unavailability::CircuitOpen { .. },
            ..
        }
    ));
    assert!(fast_took < Duration::from_millis(50), "{fast_took:?}");
    assert!(!objects.is_available());
    assert_eq!(exports(&compiled), ["add"]);

    // The server comes back: the next probe closes the breaker.
    server.restart();
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if objects.load(key, &Engine::default()).await.is_ok() {
            back = true;
            break;
        }
    }
    assert!(back, "never recovered");
    assert!(objects.is_available());
    assert_eq!(*events.available.lock(), [true, false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_costs_one_timeout_per_call_then_nothing() {
    let silent = SilentServer::start();
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 5);
    let objects = builder_with("s3://modules/cache", silent.options())
        .timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let events = Events::attach(&objects);

    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let e = objects.load(key, &engine).await.unwrap_err();
        took.push(started.elapsed());
        assert!(matches!(e, CacheError::Timeout { .. }), "{e}");
    }
    let started = Instant::now();
    let e = objects.save(key, &engine, &module).await.unwrap_err();
    let open_took = started.elapsed();

    for t in &took {
        assert!(*t < Duration::from_millis(600), "{t:?}");
    }
    assert!(matches!(e, CacheError::Unavailable { .. }), "{e}");
    assert!(open_took < Duration::from_millis(50), "{open_took:?}");
    assert_eq!(events.count(RequestOp::Get, RequestResult::Timeout), 3);
}
