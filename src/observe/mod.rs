//! Observability: the spy decorator, the metric names, exporters.

pub mod hot;
pub mod instrumented;
pub mod names;
#[cfg(feature = "prometheus")]
pub mod prometheus;

/// Publish the per-thread hit counters of every instrumented tier to the
/// installed recorder now (they are otherwise published every
/// [`hot::PUBLISH_INTERVAL`]). Call it before reading exact values.
pub fn flush() {
    hot::publish();
}
#[cfg(feature = "opentelemetry")]
pub mod otel;
