//! Every integration test, in one binary: behaviour seen from outside the
//! crate (real files, processes, servers), one module per area.
//!
//! One binary rather than one per file: each links wasmer, so twenty-odd
//! binaries cost minutes of linking and gigabytes of disk per test build.
//! Tests that measure the process itself (resident memory) re-run
//! themselves in a process of their own (`common::in_own_process`); tests
//! that need a child process re-run this binary with a test filter.

mod common;
mod support;

#[cfg(all(feature = "cli", feature = "wasix"))]
mod cache_cli;
mod config_extremes;
#[cfg(feature = "cli")]
mod demo_cli;
mod disk;
mod disk_full;
mod disk_hostile;
#[cfg(target_os = "linux")]
mod disk_mmap;
mod disk_neighbours;
mod disk_oversized;
mod disk_records;
mod disk_shared_bound;
mod engine;
mod engine_churn;
mod engine_switch;
mod fallback;
#[cfg(all(feature = "prometheus", feature = "host-interrupt"))]
mod host;
mod killed_writer;
mod loader;
mod memory;
mod metrics;
mod metrics_doc;
mod module_graph;
#[cfg(feature = "objects")]
mod objects;
#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(all(feature = "cli", feature = "redis", feature = "objects"))]
mod prometheus;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_oversized;
#[cfg(all(feature = "cli", feature = "wasix"))]
mod run_bounded;
#[cfg(all(feature = "cli", feature = "wasix"))]
mod run_cli;
#[cfg(all(feature = "cli", feature = "wasix"))]
mod run_io;
mod sizing;
mod sizing_accuracy;
#[cfg(feature = "cli")]
mod sizing_cli;
mod sizing_live;
mod sizing_size_rule;
mod sizing_trace;
mod sizing_traces;
mod sizing_window;
#[cfg(feature = "wasix")]
mod wasix;
