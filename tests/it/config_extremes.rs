//! Every builder setter fed extreme values (0, MAX, NaN, infinities):
//! building and using the tier never panics. Errors are fine; panics are
//! not. (The Redis builder has its own, in tests/redis.rs.)

use crate::common;

use std::{sync::OnceLock, time::Duration};

use proptest::prelude::*;
use tierscope::{
    EngineRecycling, FileSystemCache, InstrumentExt, InstrumentOptions, Instrumented, MemoryCache,
    ModuleCache, ModuleHash, ModuleLoader,
};
use wasmer::{Engine, Module};

fn fixture() -> &'static (Engine, ModuleHash, Module, Vec<u8>) {
    static F: OnceLock<(Engine, ModuleHash, Module, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let engine = Engine::default();
        let (key, module, wasm) = common::tiny(&engine, 31337);
        (engine, key, module, wasm)
    })
}

fn u64s() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 40),
        any::<u64>()
    ]
}

fn f64s() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-1.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        any::<f64>()
    ]
}

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        (0u64..u64::MAX).prop_map(Duration::from_secs)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn memory_tier_and_spy_settings(
        capacity in u64s(),
        shards in prop_oneof![Just(0usize), Just(1), Just(usize::MAX), any::<usize>()],
        hot in f64s(),
        sample in prop_oneof![Just(0u32), Just(1), Just(u32::MAX), Just((1 << 31) + 1), any::<u32>()],
    ) {
        let (engine, key, module, _) = fixture();
        let tier = MemoryCache::builder(capacity).shards(shards).hot_allocation(hot).build();
        let spy = Instrumented::with_options(
            tier,
            "extremes",
            "memory",
            InstrumentOptions::default().latency_sample_every(sample),
        );
        let _ = futures::executor::block_on(spy.save(*key, engine, module));
        for _ in 0..3 {
            let _ = spy.load_now(*key, engine);
        }
        let _ = futures::executor::block_on(spy.load(*key, engine));
        let _ = futures::executor::block_on(spy.contains(*key, engine));
    }

    #[test]
    fn disk_tier_settings(
        capacity in u64s(),
        max_entry in u64s(),
        grace in durations(),
        touch in durations(),
        sync in any::<bool>(),
        inline in any::<bool>(),
    ) {
        let (engine, key, module, _) = fixture();
        let dir = tempfile::tempdir().unwrap();
        let opened = FileSystemCache::builder(dir.path())
            .capacity(capacity)
            .max_entry_bytes(max_entry)
            .temp_grace(grace)
            .touch_interval(touch)
            .sync_data(sync)
            .inline_io(inline)
            .build();
        if let Ok(tier) = opened {
            let tier = tier.instrumented("extremes", "disk");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let _ = tier.save(*key, engine, module).await;
                let _ = tier.load(*key, engine).await;
                let _ = tier.contains(*key, engine).await;
            });
        }
    }

    #[test]
    fn loader_code_budget(budget in u64s()) {
        let (_, _, _, wasm) = fixture();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let loader = ModuleLoader::with_engines(
                "extremes",
                MemoryCache::new(1 << 20),
                EngineRecycling::default().code_budget(budget),
            );
            let a = loader.load(wasm).await.unwrap();
            let b = loader.load(wasm).await.unwrap();
            prop_assert!(a.generation().number() >= 1 && b.generation().number() >= 1);
            Ok(())
        })?;
    }
}
