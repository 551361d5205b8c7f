//! The same events as OpenTelemetry instruments, read back with the SDK's
//! in-memory exporter after the scripted sequence of tests/metrics.rs.

use crate::common;

use common::script::Script;
use opentelemetry::{KeyValue, metrics::MeterProvider as _};
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporter, SdkMeterProvider,
    data::{AggregatedMetrics, MetricData, ResourceMetrics},
};
use tierscope::observe::otel::OtelRecorder;

/// What one OTel metric holds: its unit and, per data point, the
/// attributes with a value (sum or gauge) or a histogram count.
struct Found {
    unit: String,
    points: Vec<(Vec<KeyValue>, f64)>,
}

fn find(all: &[ResourceMetrics], name: &str) -> Found {
    let mut found = Found {
        unit: String::new(),
        points: Vec::new(),
    };
    let mut seen = false;
    // The exporter keeps every export; the last one holds the totals.
    if let Some(rm) = all.last() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                seen = true;
                found.unit = m.unit().to_string();
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => found.points.extend(
                        s.data_points()
                            .map(|p| (p.attributes().cloned().collect(), p.value() as f64)),
                    ),
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => found.points.extend(
                        g.data_points()
                            .map(|p| (p.attributes().cloned().collect(), p.value())),
                    ),
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => found.points.extend(
                        h.data_points()
                            .map(|p| (p.attributes().cloned().collect(), p.count() as f64)),
                    ),
                    other => panic!("{name}: unexpected data {other:?}"),
                }
            }
        }
    }
    assert!(seen, "no OTel metric named {name}");
    found
}

impl Found {
    fn value(&self, attrs: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .points
            .iter()
            .filter(|(kv, _)| {
                attrs.iter().all(|(k, v)| {
                    kv.iter()
                        .any(|x| x.key.as_str() == *k && x.value.as_str() == *v)
                })
            })
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{attrs:?} matched {} points",
            matching.len()
        );
        matching[0]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_sequence_as_otel_instruments() {
    let script = Script::new();
    let (w_a, w_b) = (script.w_a as f64, script.w_b as f64);
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let recorder = OtelRecorder::new(provider.meter("tierscope"));
    let loader = metrics::with_local_recorder(&recorder, || script.loader("otel"));

    script.play(&loader).await;
    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();

    let tier = |t: &'static str, r: &'static str| {
        [
            ("cache.name", "otel"),
            ("cache.tier", t),
            ("cache.result", r),
        ]
    };
    let lookups = find(&all, "tierscope.lookups");
    assert_eq!(lookups.value(&tier("memory", "hit")), 1.0);
    assert_eq!(lookups.value(&tier("memory", "miss")), 4.0);
    assert_eq!(lookups.value(&tier("memory", "error")), 0.0);
    assert_eq!(lookups.value(&tier("disk", "hit")), 1.0);
    assert_eq!(lookups.value(&tier("disk", "miss")), 2.0);
    assert_eq!(lookups.value(&tier("disk", "error")), 1.0);
    let saves = find(&all, "tierscope.saves");
    assert_eq!(saves.value(&tier("memory", "ok")), 4.0);
    assert_eq!(saves.value(&tier("disk", "ok")), 3.0);

    let promotions = find(&all, "tierscope.promotions");
    assert_eq!(
        promotions.value(&[
            ("cache.promotion.from", "disk"),
            ("cache.promotion.to", "memory"),
            ("cache.result", "ok")
        ]),
        1.0
    );
    let ev = |t: &'static str, c: &'static str| [("cache.tier", t), ("cache.eviction.cause", c)];
    let evictions = find(&all, "tierscope.evictions");
    assert_eq!(evictions.value(&ev("memory", "explicit")), 2.0);
    assert_eq!(evictions.value(&ev("memory", "capacity")), 1.0);
    assert_eq!(evictions.value(&ev("disk", "corrupt")), 1.0);
    let evicted = find(&all, "tierscope.evicted.size");
    assert_eq!(evicted.unit, "By");
    assert_eq!(evicted.value(&ev("memory", "capacity")), w_a);
    let errors = find(&all, "tierscope.errors");
    assert_eq!(
        errors.value(&[
            ("cache.tier", "disk"),
            ("cache.operation", "load"),
            ("error.type", "corrupt")
        ]),
        1.0
    );
    assert_eq!(
        find(&all, "tierscope.read.size").value(&[("cache.tier", "memory")]),
        w_a
    );
    assert_eq!(
        find(&all, "tierscope.written.size").value(&[("cache.tier", "disk")]),
        w_a + 2.0 * w_b
    );
    let size = find(&all, "tierscope.size");
    assert_eq!(size.unit, "By");
    assert_eq!(size.value(&[("cache.tier", "memory")]), w_b);
    assert_eq!(
        find(&all, "tierscope.entries").value(&[("cache.tier", "disk")]),
        2.0
    );
    assert_eq!(
        find(&all, "tierscope.compilations")
            .value(&[("cache.name", "otel"), ("cache.result", "ok")]),
        3.0
    );
    let compile = find(&all, "tierscope.compile.duration");
    assert_eq!(compile.unit, "s");
    assert_eq!(compile.value(&[("cache.name", "otel")]), 3.0);
    let duration = find(&all, "tierscope.operation.duration");
    assert_eq!(duration.unit, "s");
    assert_eq!(
        duration.value(&[
            ("cache.tier", "disk"),
            ("cache.operation", "save"),
            ("cache.result", "ok")
        ]),
        3.0
    );
}

#[tokio::test]
async fn every_tier_operation_is_an_exported_span_with_tier_op_result_and_bytes() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tierscope::{InstrumentExt, MemoryCache, ModuleCache, ModuleHash};
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let engine = wasmer::Engine::default();
    let wasm = tierscope::corpus::tiny(3);
    let key = ModuleHash::new(&wasm);
    let module = wasmer::Module::new(&engine, &wasm).unwrap();
    let cache = MemoryCache::new(1 << 20).instrumented("spans", "memory");

    assert!(cache.load(key, &engine).await.is_err()); // miss
    cache.save(key, &engine, &module).await.unwrap();
    cache.load(key, &engine).await.unwrap(); // hit
    provider.force_flush().unwrap();

    let got: Vec<Vec<(String, String)>> = spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "tierscope")
        .map(|s| {
            s.attributes
                .iter()
                .filter(|kv| ["cache", "tier", "op", "result", "bytes"].contains(&kv.key.as_str()))
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect()
        })
        .collect();
    let bytes = module.serialize().unwrap().len().to_string();
    let expect = |op: &str, result: &str, bytes: Option<&str>| {
        let mut v = vec![
            ("cache".to_string(), "spans".to_string()),
            ("tier".to_string(), "memory".to_string()),
            ("op".to_string(), op.to_string()),
            ("result".to_string(), result.to_string()),
        ];
        if let Some(b) = bytes {
            v.push(("bytes".to_string(), b.to_string()));
        }
        v.sort();
        v
    };
    let mut got: Vec<_> = got
        .into_iter()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    got.sort();
    let mut want = vec![
        expect("load", "miss", None),
        expect("save", "ok", Some(&bytes)),
        expect("load", "hit", Some(&bytes)),
    ];
    want.sort();
    assert_eq!(got, want);
}
