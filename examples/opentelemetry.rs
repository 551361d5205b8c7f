//! Wiring tierscope into OpenTelemetry: metrics through
//! [`tierscope::observe::otel::OtelRecorder`], spans through a
//! `tracing-opentelemetry` layer. Exporters here are the SDK's in-memory
//! ones so the example runs anywhere; swap in OTLP exporters in production.
//!
//! `cargo run --example opentelemetry --features opentelemetry`

use opentelemetry::{metrics::MeterProvider as _, trace::TracerProvider as _};
use opentelemetry_sdk::{
    metrics::{InMemoryMetricExporter, SdkMeterProvider},
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use tierscope::{
    FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleLoader, corpus,
    observe::otel::OtelRecorder,
};
use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans: every tier operation is a `tierscope` span (cache, tier, op,
    // result, bytes) at debug level, exported by tracing-opentelemetry.
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("tierscope")))
        .init();

    // Metrics: install the OTel recorder before building the caches.
    let metric_exporter = InMemoryMetricExporter::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(metric_exporter.clone())
        .build();
    metrics::set_global_recorder(OtelRecorder::new(meter_provider.meter("tierscope")))?;

    let dir = tempfile::tempdir()?;
    let cache = MemoryCache::new(64 << 20)
        .instrumented("modules", "memory")
        .with_fallback(FileSystemCache::open(dir.path(), 1 << 30)?.instrumented("modules", "disk"));
    let loader = ModuleLoader::new("modules", cache);
    let engine = wasmer::Engine::default();
    let wasm = corpus::tiny(1);
    loader.load_into(&engine, &wasm).await?; // miss, compile, save
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    loader.load_into(&engine, &wasm).await?; // memory hit

    tierscope::observe::flush();
    meter_provider.force_flush()?;
    tracer_provider.force_flush()?;
    for span in spans.get_finished_spans()? {
        let attrs: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        println!("span {:<28} {}", span.name, attrs.join(" "));
    }
    if let Some(rm) = metric_exporter.get_finished_metrics()?.last() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                println!("metric {} ({})", m.name(), m.unit());
            }
        }
    }
    Ok(())
}
