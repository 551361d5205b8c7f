//! The loader: coalesced compiles, errors to every waiter, hits.

use crate::common;

use std::sync::Arc;

use common::snapshot::{counter, take};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tierscope::{LoadError, MemoryCache, ModuleCache, ModuleHash, ModuleLoader, corpus};
use wasmer::Engine;

/// `n` tasks asking the loader for `wasm` at the same moment.
fn all_at_once(
    n: usize,
    loader: &ModuleLoader<MemoryCache>,
    engine: &Engine,
    wasm: &Arc<[u8]>,
) -> Vec<tokio::task::JoinHandle<Result<wasmer::Module, LoadError>>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    (0..n)
        .map(|_| {
            let (loader, engine, wasm, barrier) = (
                loader.clone(),
                engine.clone(),
                wasm.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                loader.load_into(&engine, &wasm).await
            })
        })
        .collect()
}

fn loader_with_recorder(name: &str) -> (ModuleLoader<MemoryCache>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let loader = metrics::with_local_recorder(&recorder, || {
        ModuleLoader::new(name, MemoryCache::new(256 << 20))
    });
    (loader, snap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_callers_cause_exactly_one_compile() {
    let (loader, snap) = loader_with_recorder("coalesce");
    let engine = Engine::default();
    // Big enough that the compile takes a while (tens of ms).
    let wasm: Arc<[u8]> = corpus::module(400_000, 1).into();
    let tasks = all_at_once(64, &loader, &engine, &wasm);
    let mut modules = Vec::new();
    for t in tasks {
        modules.push(t.await.unwrap().unwrap());
    }

    assert!(
        modules.iter().all(|m| *m == modules[0]),
        "all got the same module"
    );
    let snap = take(&snap);
    assert_eq!(
        counter(&snap, "tierscope_compilations_total", &[("result", "ok")]),
        1
    );
    assert_eq!(
        counter(
            &snap,
            "tierscope_compilations_total",
            &[("result", "error")]
        ),
        0
    );
    // Everyone who did not lead, and was not served by the memory tier
    // after the compile finished, waited on the leader.
    let coalesced = counter(&snap, "tierscope_coalesced_total", &[]);
    assert!((1..=63).contains(&coalesced), "coalesced = {coalesced}");
    let key = ModuleHash::new(&wasm);
    assert!(loader.cache().contains(key, &engine).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_wasm_reaches_every_waiter_and_is_never_cached() {
    let (loader, snap) = loader_with_recorder("invalid");
    let engine = Engine::default();
    // Valid header, garbage body.
    let wasm: Arc<[u8]> = b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0f".to_vec().into();
    let tasks = all_at_once(16, &loader, &engine, &wasm);

    let key = ModuleHash::new(&wasm);
    for t in tasks {
        match t.await.unwrap() {
            Err(LoadError::Compile { key: k, source }) => {
                assert_eq!(k, key);
                assert!(!source.to_string().is_empty());
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
    }
    let phase1 = take(&snap);
    let failed = counter(
        &phase1,
        "tierscope_compilations_total",
        &[("result", "error")],
    );
    assert!((1..=16).contains(&failed), "{failed}");
    assert_eq!(
        counter(&phase1, "tierscope_compilations_total", &[("result", "ok")]),
        0
    );
    assert!(!loader.cache().contains(key, &engine).await.unwrap());
    // Not cached: asking again compiles (and fails) again.
    let err = loader.load_into(&engine, &wasm).await.unwrap_err();
    assert!(err.to_string().contains(&key.to_string()), "{err}");
    // (counters restart from zero after a snapshot)
    assert_eq!(
        counter(
            &take(&snap),
            "tierscope_compilations_total",
            &[("result", "error")]
        ),
        1
    );
}

#[tokio::test]
async fn a_known_hash_skips_hashing_and_a_hit_skips_compiling() {
    let (loader, snap) = loader_with_recorder("hash");
    let engine = Engine::default();
    let wasm = corpus::tiny(77);
    let key = ModuleHash::new(&wasm);

    let first = loader
        .load_into_with_hash(&engine, key, &wasm)
        .await
        .unwrap();
    // Let the save that follows the answer land.
    for _ in 0..100 {
        if loader.cache().contains(key, &engine).await.unwrap() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let second = loader
        .load_into_with_hash(&engine, key, &wasm)
        .await
        .unwrap();
    let lazy = loader
        .load_lazy_into(&engine, key, || panic!("bytes are not needed on a hit"))
        .await
        .unwrap();

    assert_eq!(first, second);
    assert_eq!(first, lazy);
    assert_eq!(
        counter(
            &take(&snap),
            "tierscope_compilations_total",
            &[("result", "ok")]
        ),
        1
    );
}

#[tokio::test]
async fn a_failing_tier_still_yields_a_module() {
    #[derive(Debug)]
    struct Down;
    #[async_trait::async_trait]
    impl ModuleCache for Down {
        async fn load(
            &self,
            _: ModuleHash,
            _: &Engine,
        ) -> Result<wasmer::Module, tierscope::CacheError> {
            Err(tierscope::CacheError::Unavailable {
                tier: "down".into(),
                reason: tierscope::Unavailability::ConnectionRefused {
                    endpoint: "test".into(),
                    detail: "test".into(),
                },
            })
        }
        async fn contains(&self, _: ModuleHash, _: &Engine) -> Result<bool, tierscope::CacheError> {
            Ok(false)
        }
        async fn save(
            &self,
            _: ModuleHash,
            _: &Engine,
            _: &wasmer::Module,
        ) -> Result<(), tierscope::CacheError> {
            Err(tierscope::CacheError::Unavailable {
                tier: "down".into(),
                reason: tierscope::Unavailability::ConnectionRefused {
                    endpoint: "test".into(),
                    detail: "test".into(),
                },
            })
        }
    }
    let loader = ModuleLoader::new("down", Down);
    let engine = Engine::default();

    let module = loader.load_into(&engine, &corpus::tiny(5)).await.unwrap();

    assert_eq!(module.exports().count(), 1);
}

/// A tier whose first `load` panics, then behaves as an empty memory tier.
#[derive(Debug)]
struct PanicsOnce {
    panicked: std::sync::atomic::AtomicBool,
    inner: MemoryCache,
}

#[async_trait::async_trait]
impl ModuleCache for PanicsOnce {
    async fn load(
        &self,
        key: ModuleHash,
        engine: &Engine,
    ) -> Result<wasmer::Module, tierscope::CacheError> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a tier bug");
        }
        self.inner.load(key, engine).await
    }
    async fn contains(
        &self,
        key: ModuleHash,
        engine: &Engine,
    ) -> Result<bool, tierscope::CacheError> {
        self.inner.contains(key, engine).await
    }
    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &wasmer::Module,
    ) -> Result<(), tierscope::CacheError> {
        self.inner.save(key, engine, module).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_fails_its_callers_once_and_the_next_call_starts_afresh() {
    // Arrange
    let tier = PanicsOnce {
        panicked: Default::default(),
        inner: MemoryCache::new(64 << 20),
    };
    let loader = ModuleLoader::new("panicking-tier", tier);
    let engine = Engine::default();
    let wasm = corpus::tiny(77);

    // Act
    let first = loader.load_into(&engine, &wasm).await;
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(loader.load_into(&engine, &wasm).await);
    }

    // Assert
    assert!(matches!(first, Err(LoadError::Task { .. })), "{first:?}");
    for r in later {
        r.expect("a fresh flight after the panicked one");
    }
    // The last flight answers before it saves; give its save a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while loader.in_flight() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(loader.in_flight(), 0, "no finished flight is kept");
}

#[test]
fn a_runtime_shut_down_mid_flight_does_not_poison_the_module() {
    // Arrange: a compile that takes a while, on runtime A.
    let loader = ModuleLoader::new("shutdown", MemoryCache::new(64 << 20));
    let engine = Engine::default();
    let wasm = corpus::module(150_000, 9);
    let runtime_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // Act: start the load on A, shut A down after 100 ms.
    let (l, e, w) = (loader.clone(), engine.clone(), wasm.clone());
    let _ = runtime_a.block_on(async move {
        tokio::time::timeout(std::time::Duration::from_millis(100), async move {
            l.load_into(&e, &w).await
        })
        .await
    });
    runtime_a.shutdown_timeout(std::time::Duration::from_millis(0));
    // The compile on A's blocking pool may still be finishing: wait for
    // the flight to go (its task is dropped, its guard removes it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while loader.in_flight() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!("flights after shutdown: {}", loader.in_flight());
    let runtime_b = tokio::runtime::Runtime::new().unwrap();
    let result = runtime_b.block_on(async {
        let r = loader.load_into(&engine, &wasm).await;
        // B's own flight ends after its save.
        while loader.in_flight() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        r
    });

    // Assert
    result.expect("runtime B compiles the module");
    assert_eq!(loader.in_flight(), 0);
}
