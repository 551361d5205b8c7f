//! Observability: the spy decorator, the metric names, exporters.

pub mod instrumented;
pub mod names;
