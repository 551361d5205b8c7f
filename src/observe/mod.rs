//! Observability: the spy decorator, the metric names, exporters.
//!
//! Instrumented tiers count memory hits per thread (in a leaf module both
//! the spy and live sizing use); those counts
//! reach the installed recorder when [`flush`] runs. Exporters call it on
//! scrape and on the timer of a [`Publisher`] they own; a program with a
//! recorder of its own keeps a [`Publisher`] alive beside it.

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::Duration,
};

pub(crate) mod instrumented;
#[cfg(feature = "opentelemetry")]
pub mod otel;
#[cfg(feature = "prometheus")]
pub mod prometheus;

/// How often a [`Publisher`] started by tierscope's exporters publishes,
/// when it has no reason of its own to run more often.
#[cfg(any(feature = "prometheus", feature = "opentelemetry"))]
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Publish the per-thread hit counts of every live instrumented tier to
/// the recorder each registered its handles with, now and synchronously.
/// Call it before reading exact values.
pub fn flush() {
    crate::recording::counters::publish_all();
}

/// A background thread that runs [`flush`] (and the owner's own upkeep)
/// on a fixed interval, until dropped: the timer belongs to whatever
/// started it, normally the exporter.
///
/// ```
/// // A recorder installed by hand (not through `observe::prometheus`):
/// let publisher = tierscope::observe::Publisher::every(std::time::Duration::from_millis(250));
/// // ... keep `publisher` as long as the recorder is in use
/// # drop(publisher);
/// ```
#[derive(Debug)]
#[must_use = "publishing stops when the Publisher is dropped"]
pub struct Publisher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Run [`flush`] every `interval`.
    pub fn every(interval: Duration) -> Self {
        Self::with_tick(interval, || {})
    }

    /// Run [`flush`], then `tick`, every `interval`. If no thread can be
    /// started, a warning is logged and only explicit [`flush`] calls (and
    /// tier drops) publish.
    pub(crate) fn with_tick(interval: Duration, mut tick: impl FnMut() + Send + 'static) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("tierscope-publish".into())
            .spawn(move || {
                // Nothing is ever sent: the owner's drop disconnects.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    flush();
                    tick();
                }
            });
        match spawned {
            Ok(thread) => Publisher {
                stop: Some(stop),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(error = %e, "could not start the metric publisher thread");
                Publisher {
                    stop: None,
                    thread: None,
                }
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the metric publisher thread panicked");
        }
    }
}
