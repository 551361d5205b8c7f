//! Exact metric values per tier after a scripted sequence, read with
//! metrics-util's DebuggingRecorder.

use crate::common;

use common::{
    script::Script,
    snapshot::{counter, gauge, histogram_len, take},
};
use metrics_util::debugging::DebuggingRecorder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_sequence_yields_exact_counts_per_tier() {
    let script = Script::new();
    let (w_a, w_b) = (script.w_a, script.w_b);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let loader = metrics::with_local_recorder(&recorder, || script.loader("seq"));

    script.play(&loader).await;

    let s = take(&snapshotter);
    let mem = |result| [("cache", "seq"), ("tier", "memory"), ("result", result)];
    let dsk = |result| [("cache", "seq"), ("tier", "disk"), ("result", result)];
    let lookups = "tierscope_lookups_total";
    let saves = "tierscope_saves_total";

    assert_eq!(counter(&s, lookups, &mem("hit")), 1);
    assert_eq!(counter(&s, lookups, &mem("miss")), 4);
    assert_eq!(counter(&s, lookups, &mem("error")), 0);
    assert_eq!(counter(&s, saves, &mem("ok")), 4);
    assert_eq!(counter(&s, saves, &mem("error")), 0);
    assert_eq!(counter(&s, lookups, &dsk("hit")), 1);
    assert_eq!(counter(&s, lookups, &dsk("miss")), 2);
    assert_eq!(counter(&s, lookups, &dsk("error")), 1);
    assert_eq!(counter(&s, saves, &dsk("ok")), 3);
    assert_eq!(counter(&s, saves, &dsk("error")), 0);

    let promo = |result| {
        [
            ("cache", "seq"),
            ("from", "disk"),
            ("to", "memory"),
            ("result", result),
        ]
    };
    assert_eq!(counter(&s, "tierscope_promotions_total", &promo("ok")), 1);
    assert_eq!(
        counter(&s, "tierscope_promotions_total", &promo("error")),
        0
    );

    let ev = |tier, cause| [("cache", "seq"), ("tier", tier), ("cause", cause)];
    let evictions = "tierscope_evictions_total";
    assert_eq!(counter(&s, evictions, &ev("memory", "explicit")), 2);
    assert_eq!(counter(&s, evictions, &ev("memory", "capacity")), 1);
    assert_eq!(counter(&s, evictions, &ev("memory", "replaced")), 0);
    assert_eq!(counter(&s, evictions, &ev("memory", "corrupt")), 0);
    assert_eq!(counter(&s, evictions, &ev("disk", "corrupt")), 1);
    assert_eq!(counter(&s, evictions, &ev("disk", "capacity")), 0);
    assert_eq!(
        counter(
            &s,
            "tierscope_evicted_bytes_total",
            &ev("memory", "capacity")
        ),
        w_a
    );
    assert_eq!(
        counter(
            &s,
            "tierscope_evicted_bytes_total",
            &ev("memory", "explicit")
        ),
        w_a + w_b
    );
    assert_eq!(
        counter(&s, "tierscope_evicted_bytes_total", &ev("disk", "corrupt")),
        w_b + tierscope::entry::HEADER_LEN as u64
    );
    assert_eq!(
        histogram_len(&s, "tierscope_eviction_age_seconds", &[("tier", "memory")]),
        3
    );

    let err = |tier, op, kind| [("cache", "seq"), ("tier", tier), ("op", op), ("kind", kind)];
    assert_eq!(
        counter(
            &s,
            "tierscope_errors_total",
            &err("disk", "load", "corrupt")
        ),
        1
    );
    for kind in [
        "io",
        "integrity",
        "deserialize",
        "serialize",
        "timeout",
        "unavailable",
        "other",
    ] {
        assert_eq!(
            counter(&s, "tierscope_errors_total", &err("disk", "load", kind)),
            0,
            "{kind}"
        );
    }

    let tier = |t| [("cache", "seq"), ("tier", t)];
    assert_eq!(
        counter(&s, "tierscope_read_bytes_total", &tier("memory")),
        w_a
    );
    assert_eq!(
        counter(&s, "tierscope_read_bytes_total", &tier("disk")),
        w_a
    );
    assert_eq!(
        counter(&s, "tierscope_written_bytes_total", &tier("memory")),
        2 * w_a + 2 * w_b
    );
    assert_eq!(
        counter(&s, "tierscope_written_bytes_total", &tier("disk")),
        w_a + 2 * w_b
    );

    assert_eq!(gauge(&s, "tierscope_entries", &tier("memory")), 1.0);
    assert_eq!(
        gauge(&s, "tierscope_size_bytes", &tier("memory")),
        w_b as f64
    );
    assert_eq!(
        gauge(&s, "tierscope_capacity_bytes", &tier("memory")),
        (w_a + w_b - 1) as f64
    );
    assert_eq!(gauge(&s, "tierscope_entries", &tier("disk")), 2.0);
    assert_eq!(
        gauge(&s, "tierscope_capacity_bytes", &tier("disk")),
        (1u64 << 30) as f64
    );

    let cache = [("cache", "seq")];
    assert_eq!(
        counter(
            &s,
            "tierscope_compilations_total",
            &[("cache", "seq"), ("result", "ok")]
        ),
        3
    );
    assert_eq!(
        counter(
            &s,
            "tierscope_compilations_total",
            &[("cache", "seq"), ("result", "error")]
        ),
        0
    );
    assert_eq!(counter(&s, "tierscope_coalesced_total", &cache), 0);
    assert_eq!(
        histogram_len(&s, "tierscope_compile_duration_seconds", &cache),
        3
    );

    // Slow-path operations are always timed (a memory miss is the
    // loader's lookup after its synchronous ask).
    let dur = |t, op, r| [("cache", "seq"), ("tier", t), ("op", op), ("result", r)];
    let d = "tierscope_operation_duration_seconds";
    assert_eq!(histogram_len(&s, d, &dur("memory", "load", "miss")), 4);
    assert_eq!(histogram_len(&s, d, &dur("disk", "load", "hit")), 1);
    assert_eq!(histogram_len(&s, d, &dur("disk", "load", "error")), 1);
    assert_eq!(histogram_len(&s, d, &dur("disk", "save", "ok")), 3);

    // Every metric carries a description (HELP) and its unit.
    for (key, unit, help, _) in &s {
        assert!(help.is_some(), "{} has no description", key.key().name());
        assert!(unit.is_some(), "{} has no unit", key.key().name());
    }
}

/// Two spies with the same `cache`/`tier` names (two instances of one
/// stack, or a stack rebuilt on a configuration reload) must add up their
/// hits, as their misses do: counters are published as increments, never
/// with `absolute` (a `fetch_max` in `metrics` 0.24).
fn same_named_spies_hits(recorder: &dyn metrics::Recorder, cache: &str) -> impl FnMut(u32) {
    use tierscope::{InstrumentExt, MemoryCache, ModuleCache};
    let engine = wasmer::Engine::default();
    let (key, module, _) = common::tiny(&engine, 4242);
    let build = {
        let cache = cache.to_string();
        move || MemoryCache::new(1 << 20).instrumented(cache.clone(), "memory")
    };
    let mut spies = vec![metrics::with_local_recorder(recorder, &build)];
    let mut step = 0;
    move |hits: u32| {
        step += 1;
        let spy = match step {
            // A second spy under the same names, alive beside the first.
            2 => {
                spies.push(metrics::with_local_recorder(recorder, &build));
                spies.last().unwrap()
            }
            // The first spy goes (a rebuild) and a new one takes its names.
            3 => {
                spies.remove(0);
                spies.push(metrics::with_local_recorder(recorder, &build));
                spies.last().unwrap()
            }
            _ => &spies[0],
        };
        futures::executor::block_on(spy.save(key, &engine, &module)).unwrap();
        for _ in 0..hits {
            assert!(spy.load_now(key, &engine).is_some());
        }
        tierscope::observe::flush();
    }
}

#[test]
fn hits_of_same_named_spies_and_rebuilds_add_up_in_prometheus() {
    let (recorder, handle) = tierscope::observe::prometheus::recorder();
    let hit_line = |n: u32| {
        format!("tierscope_lookups_total{{cache=\"same-prom\",tier=\"memory\",result=\"hit\"}} {n}")
    };
    // `recorder` outlives the closure's uses.
    let recorder: &'static _ = Box::leak(Box::new(recorder));
    let mut step = same_named_spies_hits(recorder, "same-prom");

    step(10);
    assert!(handle.render().contains(&hit_line(10)));
    step(5);
    let text = handle.render();
    assert!(text.contains(&hit_line(15)), "{text}");
    step(7);
    let text = handle.render();
    assert!(text.contains(&hit_line(22)), "{text}");
}

#[cfg(feature = "opentelemetry")]
#[test]
fn hits_of_same_named_spies_and_rebuilds_add_up_in_opentelemetry() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    };
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let recorder: &'static _ = Box::leak(Box::new(tierscope::observe::otel::OtelRecorder::new(
        provider.meter("tierscope"),
    )));
    let mut step = same_named_spies_hits(recorder, "same-otel");
    let hits = || {
        provider.force_flush().unwrap();
        let all = exporter.get_finished_metrics().unwrap();
        let mut total = 0;
        for sm in all.last().unwrap().scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == "tierscope.lookups") {
                if let AggregatedMetrics::U64(MetricData::Sum(s)) = m.data() {
                    for p in s.data_points() {
                        let attrs: Vec<_> = p.attributes().map(|kv| kv.value.to_string()).collect();
                        if attrs.contains(&"same-otel".to_string())
                            && attrs.contains(&"hit".to_string())
                        {
                            total += p.value();
                        }
                    }
                }
            }
        }
        total
    };

    step(10);
    step(5);
    assert_eq!(hits(), 15);
    step(7);
    assert_eq!(hits(), 22);
}

/// `stack.load()` through the fallback combinator itself (no loader), from
/// four tasks on four threads, every module on disk at the start: each
/// caller's lookup is counted once by the memory tier, its misses are
/// exactly the loads that reached the disk (counted by a spy of the test's
/// own below the disk's metrics), each miss is timed once, and each disk
/// hit was promoted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stack_loads_from_several_threads_count_each_callers_lookup_once() {
    use std::sync::Arc;
    use tierscope::{InstrumentExt, MemoryCache, ModuleCache};

    const TASKS: u64 = 4;
    const LOADS: u64 = 400;
    let engine = wasmer::Engine::default();
    let modules: Arc<Vec<_>> = Arc::new((0..16).map(|i| common::tiny(&engine, 7100 + i)).collect());
    let dir = tempfile::tempdir().unwrap();
    let disk = common::Spy::new(common::open_disk(dir.path(), 1 << 30));
    for (key, module, _) in modules.iter() {
        disk.inner.save(*key, &engine, module).await.unwrap();
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let stack = Arc::new(metrics::with_local_recorder(&recorder, || {
        MemoryCache::new(1 << 30)
            .instrumented("stack-threads", "memory")
            .with_fallback(disk.instrumented("stack-threads", "disk"))
    }));

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (stack, modules, engine) = (stack.clone(), modules.clone(), engine.clone());
            tokio::spawn(async move {
                let mut rng = common::rng::Rng(t + 1);
                for _ in 0..LOADS {
                    let (key, _, _) = &modules[rng.below(modules.len() as u64) as usize];
                    stack.load(*key, &engine).await.unwrap();
                    // Let the other tasks interleave with this one.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let s = take(&snapshotter);
    let lookups = "tierscope_lookups_total";
    let mem = |result| {
        [
            ("cache", "stack-threads"),
            ("tier", "memory"),
            ("result", result),
        ]
    };
    let dsk = |result| {
        [
            ("cache", "stack-threads"),
            ("tier", "disk"),
            ("result", result),
        ]
    };
    let reached_disk = stack.fallback().get_ref().success() as u64;
    let loads = TASKS * LOADS;
    assert!(reached_disk >= modules.len() as u64, "{reached_disk}");
    assert_eq!(counter(&s, lookups, &mem("hit")), loads - reached_disk);
    assert_eq!(counter(&s, lookups, &mem("miss")), reached_disk);
    assert_eq!(counter(&s, lookups, &mem("error")), 0);
    assert_eq!(counter(&s, lookups, &dsk("hit")), reached_disk);
    assert_eq!(counter(&s, lookups, &dsk("miss")), 0);
    let miss_times = [
        ("cache", "stack-threads"),
        ("tier", "memory"),
        ("op", "load"),
        ("result", "miss"),
    ];
    assert_eq!(
        histogram_len(&s, "tierscope_operation_duration_seconds", &miss_times) as u64,
        reached_disk
    );
    let promoted = [
        ("cache", "stack-threads"),
        ("from", "disk"),
        ("to", "memory"),
        ("result", "ok"),
    ];
    assert_eq!(
        counter(&s, "tierscope_promotions_total", &promoted),
        reached_disk
    );
}
