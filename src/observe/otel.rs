//! OpenTelemetry: the same events as OTel instruments.
//!
//! [`OtelRecorder`] is a `metrics` recorder that turns every tierscope metric
//! into an OpenTelemetry instrument of the given [`Meter`], renamed to OTel
//! conventions (dots, no `_total`, the unit in metadata) with attributes renamed likewise (`cache` becomes
//! `cache.name`, `tier` becomes `cache.tier`, ...). Counters become
//! monotonic sums, gauges gauges, histograms explicit-bucket histograms with
//! the same bucket bounds as the Prometheus export.
//!
//! Install it as the global recorder, or next to the Prometheus recorder
//! with `metrics_util::layers::FanoutBuilder`, before building caches. It
//! owns a [`Publisher`] that publishes pending counts every
//! 250 ms until the recorder is dropped; call
//! [`crate::observe::flush`] before forcing an export for exact values.
//!
//! ```no_run
//! use opentelemetry::metrics::MeterProvider as _;
//! # fn provider() -> opentelemetry_sdk::metrics::SdkMeterProvider { unimplemented!() }
//! let provider = provider(); // your SDK meter provider and exporter
//! let recorder = tierscope::observe::otel::OtelRecorder::new(provider.meter("tierscope"));
//! metrics::set_global_recorder(recorder).unwrap();
//! ```
//!
//! Spans: every tier operation opens a `tracing` span named `tierscope`
//! with fields `cache`, `tier`, `op`, `result` and `bytes` at debug level;
//! a `tracing-opentelemetry` layer exports them (see
//! `examples/opentelemetry.rs`).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::{
    KeyValue,
    metrics::{Counter as OtelCounter, Gauge as OtelGauge, Histogram as OtelHistogram, Meter},
};
use parking_lot::Mutex;

use crate::{
    names,
    observe::{PUBLISH_INTERVAL, Publisher},
};

/// The OTel name and unit of a tierscope metric (the Prometheus name).
/// Names outside the contract keep their name with `_` turned into `.`.
pub(crate) fn otel_name(prometheus: &str) -> (Cow<'static, str>, &'static str) {
    let known: &[(&str, &str, &str)] = &[
        (names::LOOKUPS, "tierscope.lookups", "{lookup}"),
        (names::RELOADS, "tierscope.reloads", "{lookup}"),
        (names::VERIFIED_HITS, "tierscope.verified.hits", "{hit}"),
        (names::SAVES, "tierscope.saves", "{save}"),
        (
            names::OPERATION_DURATION,
            "tierscope.operation.duration",
            "s",
        ),
        (names::PROMOTIONS, "tierscope.promotions", "{promotion}"),
        (names::ERRORS, "tierscope.errors", "{error}"),
        (names::EVICTIONS, "tierscope.evictions", "{eviction}"),
        (names::EVICTED_BYTES, "tierscope.evicted.size", "By"),
        (names::EVICTION_AGE, "tierscope.eviction.age", "s"),
        (names::ENTRIES, "tierscope.entries", "{entry}"),
        (names::SIZE_BYTES, "tierscope.size", "By"),
        (names::CAPACITY_BYTES, "tierscope.capacity", "By"),
        (names::READ_BYTES, "tierscope.read.size", "By"),
        (names::WRITTEN_BYTES, "tierscope.written.size", "By"),
        (
            names::COMPILATIONS,
            "tierscope.compilations",
            "{compilation}",
        ),
        (names::COMPILE_DURATION, "tierscope.compile.duration", "s"),
        (names::COALESCED, "tierscope.coalesced", "{call}"),
        (names::TIER_AVAILABLE, "tierscope.tier.available", "1"),
        (names::BUILD_INFO, "tierscope.build.info", "1"),
        (names::ENGINE_CODE_BYTES, "tierscope.engine.code.size", "By"),
        (
            names::ENGINE_CODE_BUDGET,
            "tierscope.engine.code.budget",
            "By",
        ),
        (
            names::ENGINE_GENERATIONS,
            "tierscope.engine.generations",
            "{generation}",
        ),
        (
            names::ENGINE_GENERATIONS_ALIVE,
            "tierscope.engine.generations.alive",
            "{generation}",
        ),
        (
            names::REMOTE_REQUESTS,
            "tierscope.remote.requests",
            "{request}",
        ),
        (
            names::REMOTE_TRANSFERRED_BYTES,
            "tierscope.remote.transferred.size",
            "By",
        ),
        (names::SIZING_HIT_RATIO, "tierscope.sizing.hit.ratio", "1"),
        (
            names::SIZING_BYTE_HIT_RATIO,
            "tierscope.sizing.byte.hit.ratio",
            "1",
        ),
        (names::SIZING_CAPACITY, "tierscope.sizing.capacity", "By"),
        (
            names::SIZING_WORKING_SET,
            "tierscope.sizing.working.set.size",
            "By",
        ),
        (
            names::SIZING_COMPILES,
            "tierscope.sizing.compilations",
            "{compilation}",
        ),
        (
            names::SIZING_SAMPLING_RATE,
            "tierscope.sizing.sampling.rate",
            "1",
        ),
        (
            names::SIZING_WINDOW_REQUESTS,
            "tierscope.sizing.window.requests",
            "{request}",
        ),
        (
            names::SIZING_DROPPED,
            "tierscope.sizing.dropped",
            "{update}",
        ),
    ];
    match known.iter().find(|(p, _, _)| *p == prometheus) {
        Some((_, otel, unit)) => (Cow::Borrowed(otel), unit),
        None => (Cow::Owned(prometheus.replace('_', ".")), ""),
    }
}

/// The OTel attribute key of a tierscope label.
pub(crate) fn otel_attribute(label: &str) -> Cow<'static, str> {
    match label {
        names::label::CACHE => "cache.name".into(),
        names::label::TIER => "cache.tier".into(),
        names::label::RESULT => "cache.result".into(),
        names::label::OP => "cache.operation".into(),
        names::label::CAUSE => "cache.eviction.cause".into(),
        names::label::KIND => "error.type".into(),
        names::label::FROM => "cache.promotion.from".into(),
        names::label::TO => "cache.promotion.to".into(),
        names::label::STATE => "tierscope.code.state".into(),
        names::label::SCALE => "tierscope.sizing.scale".into(),
        names::label::CHECK => "cache.verification".into(),
        names::label::DIRECTION => "network.io.direction".into(),
        "version" => "tierscope.version".into(),
        "wasmer_version" => "wasmer.version".into(),
        other => other.to_string().into(),
    }
}

#[derive(Default)]
struct Instruments {
    counters: HashMap<String, OtelCounter<u64>>,
    gauges: HashMap<String, OtelGauge<f64>>,
    histograms: HashMap<String, OtelHistogram<f64>>,
    descriptions: HashMap<String, SharedString>,
}

/// A `metrics` recorder writing OpenTelemetry instruments.
pub struct OtelRecorder {
    meter: Meter,
    instruments: Mutex<Instruments>,
    _publisher: Publisher,
}

impl std::fmt::Debug for OtelRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelRecorder").finish_non_exhaustive()
    }
}

impl OtelRecorder {
    /// A recorder creating its instruments on `meter`, and the thread that
    /// publishes pending counts every 250 ms while it lives.
    pub fn new(meter: Meter) -> Self {
        OtelRecorder {
            meter,
            instruments: Mutex::new(Instruments::default()),
            _publisher: Publisher::every(PUBLISH_INTERVAL),
        }
    }

    fn describe(&self, key: KeyName, description: SharedString) {
        self.instruments
            .lock()
            .descriptions
            .insert(key.as_str().to_string(), description);
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(otel_attribute(l.key()), l.value().to_string()))
        .collect()
}

fn description(i: &Instruments, name: &str) -> Cow<'static, str> {
    i.descriptions
        .get(name)
        .map_or(Cow::Borrowed(""), |d| Cow::Owned(d.to_string()))
}

impl Recorder for OtelRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let mut i = self.instruments.lock();
        let name = key.name();
        let desc = description(&i, name);
        let instrument = i
            .counters
            .entry(name.to_string())
            .or_insert_with(|| {
                let (otel, unit) = otel_name(name);
                self.meter
                    .u64_counter(otel)
                    .with_unit(unit)
                    .with_description(desc)
                    .build()
            })
            .clone();
        let attributes = attributes(key);
        // Like a registered Prometheus counter, the series exists from the
        // start, at zero.
        instrument.add(0, &attributes);
        Counter::from_arc(Arc::new(CounterBridge {
            instrument,
            attributes,
            total: AtomicU64::new(0),
        }))
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let mut i = self.instruments.lock();
        let name = key.name();
        let desc = description(&i, name);
        let instrument = i
            .gauges
            .entry(name.to_string())
            .or_insert_with(|| {
                let (otel, unit) = otel_name(name);
                self.meter
                    .f64_gauge(otel)
                    .with_unit(unit)
                    .with_description(desc)
                    .build()
            })
            .clone();
        Gauge::from_arc(Arc::new(GaugeBridge {
            instrument,
            attributes: attributes(key),
            value: Mutex::new(0.0),
        }))
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let mut i = self.instruments.lock();
        let name = key.name();
        let desc = description(&i, name);
        let instrument = i
            .histograms
            .entry(name.to_string())
            .or_insert_with(|| {
                let (otel, unit) = otel_name(name);
                let mut b = self
                    .meter
                    .f64_histogram(otel)
                    .with_unit(unit)
                    .with_description(desc);
                if let Some((_, buckets)) = names::HISTOGRAMS.iter().find(|(n, _)| *n == name) {
                    b = b.with_boundaries(buckets.to_vec());
                }
                b.build()
            })
            .clone();
        Histogram::from_arc(Arc::new(HistogramBridge {
            instrument,
            attributes: attributes(key),
        }))
    }
}

struct CounterBridge {
    instrument: OtelCounter<u64>,
    attributes: Vec<KeyValue>,
    /// The total so far, so that `absolute` (set by a caller that counts
    /// totals itself) becomes an increment of the difference.
    total: AtomicU64,
}

impl CounterFn for CounterBridge {
    fn increment(&self, value: u64) {
        self.total.fetch_add(value, Ordering::Relaxed);
        self.instrument.add(value, &self.attributes);
    }

    fn absolute(&self, value: u64) {
        let before = self.total.fetch_max(value, Ordering::Relaxed);
        if value > before {
            self.instrument.add(value - before, &self.attributes);
        }
    }
}

struct GaugeBridge {
    instrument: OtelGauge<f64>,
    attributes: Vec<KeyValue>,
    value: Mutex<f64>,
}

impl GaugeBridge {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut v = self.value.lock();
        *v = f(*v);
        self.instrument.record(*v, &self.attributes);
    }
}

impl GaugeFn for GaugeBridge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct HistogramBridge {
    instrument: OtelHistogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for HistogramBridge {
    fn record(&self, value: f64) {
        self.instrument.record(value, &self.attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_has_an_otel_name() {
        for (prom, _, unit, _) in names::DESCRIPTIONS {
            let (otel, otel_unit) = otel_name(prom);
            assert!(otel.starts_with("tierscope."), "{prom} -> {otel}");
            assert!(!otel.contains('_') && !otel.ends_with(".total"), "{otel}");
            match unit {
                Unit::Seconds => assert_eq!(otel_unit, "s", "{prom}"),
                Unit::Bytes => assert_eq!(otel_unit, "By", "{prom}"),
                _ => assert!(otel_unit.starts_with('{') || otel_unit == "1", "{prom}"),
            }
        }
        assert_eq!(otel_name(names::LOOKUPS).0, "tierscope.lookups");
        assert_eq!(
            otel_name(names::OPERATION_DURATION).0,
            "tierscope.operation.duration"
        );
        assert_eq!(
            otel_name(names::SIZE_BYTES),
            ("tierscope.size".into(), "By")
        );
        assert_eq!(otel_attribute("cache"), "cache.name");
        assert_eq!(otel_attribute("tier"), "cache.tier");
        assert_eq!(otel_attribute("result"), "cache.result");
    }
}
