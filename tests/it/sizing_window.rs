//! Live sizing's window over time: `max_age` holds whether or not lookups
//! keep coming, and an empty window publishes no ratio.

use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use tierscope::{
    InstrumentExt, Lookup, MemoryCache, ModuleCache, ModuleHash,
    engine::engine_key,
    sizing::live::{LiveSizing, SizingExt, SizingOptions, Window},
    weights,
};
use wasmer::{Engine, Module};

use crate::common::{
    self,
    snapshot::{gauge, take},
};

#[tokio::test]
async fn an_idle_tiers_window_empties_after_max_age() {
    // Arrange: a window of a million lookups but at most 100 ms; ten
    // 1 KB modules in a memory tier that holds them all.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let engine = Engine::default();
    let module = Module::new(&engine, common::ADD_WAT).unwrap();
    let keys: Vec<ModuleHash> = (0..10u8)
        .map(|i| {
            let key = ModuleHash::from_bytes([i.wrapping_add(0xA0); 32]);
            weights::record(key, engine_key(&engine), 1_000);
            key
        })
        .collect();
    let (sizing, stack) = metrics::with_local_recorder(&recorder, || {
        let sizing = LiveSizing::new(
            "idle",
            SizingOptions::default()
                .background(false)
                .scales(&[1.0, 2.0])
                .window(Window::requests(1_000_000).max_age(Duration::from_millis(100))),
        );
        let stack = MemoryCache::builder(1 << 20)
            .shards(1)
            .build()
            .instrumented("idle", "memory")
            .with_sizing(&sizing);
        (sizing, stack)
    });

    // Act: 1,000 lookups (ten misses, then hits), then silence.
    for i in 0..1_000usize {
        let key = keys[i % keys.len()];
        if stack.load_now(key, &engine).is_none() {
            let miss = stack
                .lookup(key, &engine, Lookup::request())
                .await
                .unwrap_err();
            assert!(miss.is_not_found(), "{miss}");
            stack.save(key, &engine, &module).await.unwrap();
        }
    }
    sizing.flush();
    let busy = sizing.report();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(50));
        sizing.flush();
    }
    let idle = sizing.report();
    let s = take(&snapshotter);

    // Assert: the busy window held the lookups at a 0.99 hit ratio; 300 ms
    // later it holds none, and the hit-ratio gauges carry no number.
    let memory = busy.tier("memory").unwrap();
    assert_eq!(memory.window_requests, 1_000, "{busy:?}");
    assert!((memory.at(1.0).unwrap().hit_ratio - 0.99).abs() < 1e-9);
    let memory = idle.tier("memory").unwrap();
    assert_eq!(memory.window_requests, 0, "{memory:?}");
    for p in &memory.points {
        assert!(p.hit_ratio.is_nan(), "{p:?}");
        assert!(p.byte_hit_ratio.is_nan(), "{p:?}");
    }
    assert!(memory.measured_hit_ratio.is_nan());
    let tier = [("cache", "idle"), ("tier", "memory")];
    assert_eq!(gauge(&s, "tierscope_sizing_window_requests", &tier), 0.0);
    for scale in ["1", "2"] {
        let labels = [("cache", "idle"), ("tier", "memory"), ("scale", scale)];
        assert!(gauge(&s, "tierscope_sizing_hit_ratio", &labels).is_nan());
        assert!(gauge(&s, "tierscope_sizing_byte_hit_ratio", &labels).is_nan());
    }
    // Nothing was requested within the window: no working set either.
    assert_eq!(gauge(&s, "tierscope_sizing_working_set_bytes", &tier), 0.0);

    // A lookup after the silence starts a fresh window.
    stack.load_now(keys[0], &engine).unwrap();
    sizing.flush();
    let again = sizing.report();
    let memory = again.tier("memory").unwrap();
    assert_eq!(memory.window_requests, 1);
    assert_eq!(memory.at(1.0).unwrap().hit_ratio, 1.0);
}
