//! The demo's command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, value_parser};

use crate::bytes;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the workload runs (e.g. 20s, 5m; a bare number is seconds).
    #[arg(long, default_value = "20s", value_parser = parse_run_length)]
    pub(super) duration: Duration,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub(super) metrics_addr: SocketAddr,
    /// Directory of the disk tier (default: a temporary directory, removed
    /// at exit).
    #[arg(long)]
    pub(super) cache_dir: Option<PathBuf>,
    /// Use the `.wasm` files of this directory instead of generated modules.
    #[arg(long)]
    pub(super) modules: Option<PathBuf>,
    /// Bound of the memory tier (e.g. 16MiB).
    #[arg(long, default_value = "8MiB", value_parser = bytes::parse)]
    pub(super) memory_bytes: u64,
    /// Bound of the disk tier (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = bytes::parse)]
    pub(super) disk_bytes: u64,
    /// Evicted machine code one engine may keep before a fresh engine
    /// replaces it (see "Engines and memory" in the README).
    #[arg(long, default_value = "64MiB", value_parser = bytes::parse)]
    pub(super) code_budget: u64,
    /// Concurrent tasks asking for modules.
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u64).range(1..=1024))]
    pub(super) concurrency: u64,
    /// Add a shared Redis tier below the disk tier. The MAC key is read
    /// from the environment variable TIERSCOPE_REDIS_KEY (64 hex
    /// characters), never from the command line.
    #[arg(long, value_name = "URL")]
    pub(super) redis: Option<String>,
    /// Add a shared object-store tier at the bottom of the stack, e.g.
    /// s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix or file:///dir. Credentials come from the
    /// environment as the object_store crate reads them (AWS_ACCESS_KEY_ID,
    /// AWS_ENDPOINT, ...); the MAC key from TIERSCOPE_OBJECTS_KEY.
    #[arg(long, value_name = "URL")]
    pub(super) objects: Option<String>,
    /// Number of generated modules (ignored with --modules).
    #[arg(long, default_value_t = 40, value_parser = value_parser!(u64).range(1..=10_000))]
    pub(super) corpus: u64,
    /// Largest generated module, in bytes of wasm (sizes spread
    /// log-uniformly from 4 KB up to this; ignored with --modules).
    #[arg(long, default_value = "400KB", value_parser = parse_max_wasm)]
    pub(super) max_wasm_bytes: u64,
    /// Zipf exponent of module popularity (higher: a few modules dominate).
    #[arg(long, default_value_t = 1.0, value_parser = parse_exponent)]
    pub(super) zipf: f64,
    /// Seed for the corpus and the workload.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Keep serving /metrics this long after the workload ends (e.g. 30s,
    /// 5m; a bare number is seconds).
    #[arg(long, default_value = "0s", value_parser = parse_linger)]
    pub(super) linger: Duration,
    /// No live progress line (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub(super) no_progress: bool,
    /// Write the request stream as a tierscope trace, for `tierscope size`.
    #[arg(long, value_name = "FILE")]
    pub(super) record: Option<PathBuf>,
    /// Turn live sizing off (on by default: every tier's what-if hit ratios
    /// at 0.25x to 4x its capacity, exported as tierscope_sizing_*).
    #[arg(long)]
    pub(super) no_sizing: bool,
    /// Live sizing's window: the last this many lookups of each tier (and
    /// at most the last 5 minutes).
    #[arg(long, default_value_t = 100_000, value_parser = value_parser!(u64).range(10..=100_000_000))]
    pub(super) sizing_window: u64,
}

const DAY: Duration = Duration::from_secs(86_400);

fn parse_run_length(s: &str) -> Result<Duration, String> {
    crate::duration::parse_within(s, Duration::from_secs(1)..=DAY)
}

fn parse_linger(s: &str) -> Result<Duration, String> {
    crate::duration::parse_within(s, Duration::ZERO..=DAY)
}

/// Largest generated module the demo accepts: each is built in memory
/// (and compiled), so an absurd size is refused up front.
const MAX_WASM: u64 = 64 << 20;

fn parse_max_wasm(s: &str) -> Result<u64, String> {
    let v = bytes::parse(s)?;
    if (4_000..=MAX_WASM).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "generated modules are between 4KB and 64MiB of wasm; `{s}` is outside that range"
        ))
    }
}

pub(super) fn parse_exponent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 10.0 {
        Ok(v)
    } else {
        Err("the Zipf exponent must be in (0, 10]".into())
    }
}
