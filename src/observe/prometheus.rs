//! One call to export tierscope's metrics to Prometheus, configured as the
//! metric contract needs: real histograms (never summaries) with buckets
//! from 100 ns to 30 s, every metric described, upkeep running, and
//! `tierscope_build_info` present from the start.
//!
//! Two modes:
//! - [`serve`]: an HTTP listener serving `/metrics` on an address;
//! - [`install`]: no listener; the returned [`Exporter`] renders the
//!   exposition text for the application's own HTTP server.
//!
//! Both also export the process's own metrics (`process_resident_memory_bytes`,
//! CPU, open files, ...) through the `metrics-process` crate, refreshed every
//! second: resident memory
//! is what an operator paged for an OOM kill looks at first, beside
//! `tierscope_engine_code_bytes`.
//!
//! The periodic work (publishing pending counts with
//! [`crate::observe::flush`], upkeep, process metrics) runs on one thread
//! owned by the returned [`Exporter`]: keep it for as long as metrics are
//! served. [`Exporter::render`] flushes first, so a scrape sees every hit.
//!
//! Install the recorder **before** building caches: the spy registers its
//! metric handles at construction.
//!
//! ```no_run
//! let handle = tierscope::observe::prometheus::install().unwrap();
//! // ... build caches, serve `handle.render()` on your own /metrics route
//! let text = handle.render();
//! assert!(text.contains("tierscope_build_info"));
//! ```

use std::{net::SocketAddr, time::Duration};

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
#[doc(no_inline)]
pub use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

use crate::{
    names,
    observe::{PUBLISH_INTERVAL, Publisher, flush},
};

/// How often buffered histogram samples are folded into buckets. The
/// exporter buffers every sample (about 16.5 bytes) until then, so this
/// bounds the buffer: even a tier timing six million operations a second
/// holds under 5 MiB of samples (see BENCHMARKS.md).
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_millis(50);

/// How often the process metrics are refreshed.
pub(crate) const PROCESS_INTERVAL: Duration = Duration::from_secs(1);

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Refresh the process metrics (`process_resident_memory_bytes` and the
/// other `process_*` gauges of the `metrics-process` crate) on the current
/// recorder now.
#[doc(hidden)] // for the tierscope binary's demo; not part of the API
pub fn collect_process_metrics() {
    process_collector().collect();
}

/// A [`PrometheusBuilder`] with tierscope's buckets set for every
/// histogram of the contract. Add your own settings, then build it.
pub fn builder() -> PrometheusBuilder {
    let set = |b: PrometheusBuilder, name: &str, buckets: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .expect("bucket lists are non-empty constants")
    };
    names::HISTOGRAMS.iter().fold(
        PrometheusBuilder::new().upkeep_timeout(UPKEEP_INTERVAL),
        |b, (name, buckets)| set(b, name, buckets),
    )
}

/// Describe every metric and set `tierscope_build_info`, on the recorder
/// installed now.
fn announce() {
    names::describe_all();
    names::record_build_info();
    process_collector().describe();
    collect_process_metrics();
}

/// The installed Prometheus exporter: renders the exposition text, and
/// owns the thread that publishes pending counts, runs upkeep and
/// refreshes the process metrics. That thread stops when the `Exporter`
/// is dropped (the recorder stays installed, but hit counts then reach it
/// only on [`crate::observe::flush`]).
#[derive(Debug)]
#[must_use = "dropping the Exporter stops publishing hit counts and running upkeep"]
pub struct Exporter {
    handle: PrometheusHandle,
    /// Where `/metrics` is served (by [`serve`]), port resolved.
    addr: Option<SocketAddr>,
    _timer: Publisher,
}

impl Exporter {
    /// The address `/metrics` is served on, with the port the system chose
    /// when asked for port 0 (`None` for an exporter of [`install`], which
    /// serves nothing itself).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The exposition text, after publishing every tier's pending counts.
    pub fn render(&self) -> String {
        flush();
        self.handle.render()
    }

    /// The exporter's handle (rendering through it does not flush).
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}

/// A tick for `Publisher::with_tick`: runs `and_then`, and refreshes the
/// process metrics when [`PROCESS_INTERVAL`] has passed since it last did.
fn periodic_work(mut and_then: impl FnMut() + Send + 'static) -> impl FnMut() + Send + 'static {
    let mut last = std::time::Instant::now();
    move || {
        and_then();
        if last.elapsed() >= PROCESS_INTERVAL {
            last = std::time::Instant::now();
            collect_process_metrics();
        }
    }
}

/// Install the recorder globally without a listener and start a thread
/// that publishes the hit counts and runs upkeep every
/// 50 ms. Render with [`Exporter::render`].
pub fn install() -> Result<Exporter, BuildError> {
    install_with(builder())
}

/// [`install`] with a builder of your own (start from [`builder`]).
pub fn install_with(builder: PrometheusBuilder) -> Result<Exporter, BuildError> {
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    announce();
    let upkeep = handle.clone();
    Ok(Exporter {
        _timer: Publisher::with_tick(UPKEEP_INTERVAL, periodic_work(move || upkeep.run_upkeep())),
        addr: None,
        handle,
    })
}

/// Install the recorder globally and serve `/metrics` on `addr`. Inside a
/// tokio runtime the listener runs as a task of that runtime; otherwise on
/// its own thread. Upkeep runs either way. The listener renders without
/// asking [`crate::observe::flush`], so scrapes see hit counts as of the
/// last 250 ms tick. Port 0 picks a free port
/// ([`Exporter::local_addr`] tells which).
pub fn serve(addr: SocketAddr) -> Result<Exporter, BuildError> {
    serve_with(builder(), addr)
}

/// [`serve`] with a builder of your own (start from [`builder`]).
pub fn serve_with(builder: PrometheusBuilder, addr: SocketAddr) -> Result<Exporter, BuildError> {
    // The exporter binds its own listener and does not say where: ask the
    // system for a free port first. (Another process could take it in
    // between; the exporter's bind then fails with an error, at once.)
    let addr = if addr.port() == 0 {
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|e| BuildError::FailedToCreateHTTPListener(format!("{addr}: {e}")))?
    } else {
        addr
    };
    let builder = builder.with_http_listener(addr);
    let (recorder, handle) = match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let _guard = rt.enter();
            let (recorder, exporter) = builder.build()?;
            rt.spawn(exporter);
            let handle = recorder.handle();
            (recorder, handle)
        }
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BuildError::FailedToCreateRuntime(e.to_string()))?;
            let (recorder, exporter) = {
                let _guard = rt.enter();
                builder.build()?
            };
            std::thread::Builder::new()
                .name("tierscope-prometheus".into())
                .spawn(move || rt.block_on(exporter))
                .map_err(|e| BuildError::FailedToCreateRuntime(e.to_string()))?;
            let handle = recorder.handle();
            (recorder, handle)
        }
    };
    metrics::set_global_recorder(recorder)?;
    announce();
    // The exporter task runs upkeep itself.
    Ok(Exporter {
        _timer: Publisher::with_tick(PUBLISH_INTERVAL, periodic_work(|| {})),
        addr: Some(addr),
        handle,
    })
}

/// A recorder that is not installed globally (for tests and for
/// composing with other recorders), with its handle. The caller runs
/// upkeep (rendering also does it).
#[doc(hidden)] // for the tests and benches; not part of the API
pub fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstrumentExt, MemoryCache, ModuleCache};

    #[test]
    fn histograms_render_as_histograms_with_help_and_build_info() {
        let (recorder, handle) = recorder();
        let cache = metrics::with_local_recorder(&recorder, || {
            announce();
            MemoryCache::new(1 << 20).instrumented("golden", "memory")
        });
        let engine = wasmer::Engine::default();
        let key = wasmer_types::ModuleHash::from_bytes([1; 32]);
        let r = futures::executor::block_on(cache.load(key, &engine));
        assert!(r.unwrap_err().is_not_found());

        let text = handle.render();

        assert!(text.contains("# TYPE tierscope_operation_duration_seconds histogram"));
        assert!(!text.contains("summary"));
        assert!(
            text.contains("le=\"0.0000001\"") || text.contains("le=\"1e-7\""),
            "{text}"
        );
        assert!(text.contains("# HELP tierscope_lookups_total"));
        assert!(text.contains(
            "tierscope_lookups_total{cache=\"golden\",tier=\"memory\",result=\"miss\"} 1"
        ));
        assert!(text.contains("tierscope_build_info{"));
        assert!(
            text.contains("tierscope_capacity_bytes{cache=\"golden\",tier=\"memory\"} 1048576")
        );
    }
}
