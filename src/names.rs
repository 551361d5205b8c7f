//! The metric contract: every metric name and label key tierscope emits,
//! in one place (`docs/metrics.md` in the repository is the reference).
//! Names and labels are public API: dashboards and alert rules use them.

use metrics::Unit;

/// `load` calls on one tier, by `result` = `hit`/`miss`/`error`.
pub const LOOKUPS: &str = "tierscope_lookups_total";
/// Lookups an engine switch made on one tier to reload what the memory
/// tier held into the new engine, by `result` = `hit`/`miss`/`error`:
/// never callers' lookups (see [`crate::Lookup::reload`]).
pub const RELOADS: &str = "tierscope_reloads_total";
/// Hits of tiers that verify artifacts before wasmer sees them (disk,
/// Redis), by `check` = `full` (every byte checked on this hit),
/// `remembered` (a mapping this process checked on an earlier hit, its file
/// unchanged) or `recorded` (a disk entry another hit, of any process,
/// checked in full and recorded, its file unchanged).
pub const VERIFIED_HITS: &str = "tierscope_verified_hits_total";
/// `save` calls on one tier (promotions included), by `result` = `ok`/`error`.
pub const SAVES: &str = "tierscope_saves_total";
/// Latency of one tier operation, by `op` and `result`.
pub const OPERATION_DURATION: &str = "tierscope_operation_duration_seconds";
/// A hit in tier `from` copied up into tier `to`, by `result`.
pub const PROMOTIONS: &str = "tierscope_promotions_total";
/// Every error a tier returned, by `op` and `kind`.
pub const ERRORS: &str = "tierscope_errors_total";
/// Entries a tier dropped, by `cause`.
pub const EVICTIONS: &str = "tierscope_evictions_total";
/// Bytes of the entries a tier dropped, by `cause`.
pub const EVICTED_BYTES: &str = "tierscope_evicted_bytes_total";
/// Time from insert to eviction.
pub const EVICTION_AGE: &str = "tierscope_eviction_age_seconds";
/// Entries resident now.
pub const ENTRIES: &str = "tierscope_entries";
/// Bytes resident now.
pub const SIZE_BYTES: &str = "tierscope_size_bytes";
/// Configured bound in bytes.
pub const CAPACITY_BYTES: &str = "tierscope_capacity_bytes";
/// Artifact bytes served by hits.
pub const READ_BYTES: &str = "tierscope_read_bytes_total";
/// Artifact bytes stored.
pub const WRITTEN_BYTES: &str = "tierscope_written_bytes_total";
/// Compilations done because every tier missed, by `result`.
pub const COMPILATIONS: &str = "tierscope_compilations_total";
/// Time to compile one module.
pub const COMPILE_DURATION: &str = "tierscope_compile_duration_seconds";
/// Callers that waited for another caller's compile.
pub const COALESCED: &str = "tierscope_coalesced_total";
/// 0 while a tier's circuit breaker is open.
pub const TIER_AVAILABLE: &str = "tierscope_tier_available";
/// Which build is running (value 1).
pub const BUILD_INFO: &str = "tierscope_build_info";
/// Machine code an engine generation keeps, by `state` = `cached` (held by
/// an in-process tier), `evicted` (no tier holds it; the engine keeps it
/// until it is retired) or `retired` (generations retired but still in use).
pub const ENGINE_CODE_BYTES: &str = "tierscope_engine_code_bytes";
/// Evicted code a generation may keep before a fresh engine replaces it.
pub const ENGINE_CODE_BUDGET: &str = "tierscope_engine_code_budget_bytes";
/// Engine generations started (the first included).
pub const ENGINE_GENERATIONS: &str = "tierscope_engine_generations_total";
/// Engine generations alive now: the current one plus retired ones callers
/// still use.
pub const ENGINE_GENERATIONS_ALIVE: &str = "tierscope_engine_generations_alive";
/// Requests a remote tier sent to its store, by `op` and `result` (the
/// object-store tier).
pub const REMOTE_REQUESTS: &str = "tierscope_remote_requests_total";
/// Payload bytes a remote tier moved, by `direction` = `sent`/`received`.
pub const REMOTE_TRANSFERRED_BYTES: &str = "tierscope_remote_transferred_bytes_total";
/// Live sizing: hit ratio a tier would have had over the recent window at
/// `scale` times its current capacity.
pub const SIZING_HIT_RATIO: &str = "tierscope_sizing_hit_ratio";
/// Live sizing: byte hit ratio likewise.
pub const SIZING_BYTE_HIT_RATIO: &str = "tierscope_sizing_byte_hit_ratio";
/// Live sizing: the capacity modelled at `scale`.
pub const SIZING_CAPACITY: &str = "tierscope_sizing_capacity_bytes";
/// Live sizing: bytes of the distinct modules a tier was asked for over the
/// window.
pub const SIZING_WORKING_SET: &str = "tierscope_sizing_working_set_bytes";
/// Live sizing: projected compiles: requests that would miss the memory
/// tier at `scale` and the first bounded tier below it, times the measured
/// miss ratio of an unbounded tier sized below them (1 without one).
pub const SIZING_COMPILES: &str = "tierscope_sizing_compiles_total";
/// Live sizing: share of keys a tier's model samples (1 = exact).
pub const SIZING_SAMPLING_RATE: &str = "tierscope_sizing_sampling_rate";
/// Live sizing: requests in a tier's window now.
pub const SIZING_WINDOW_REQUESTS: &str = "tierscope_sizing_window_requests";
/// Live sizing: lookups the hit path could not hand to the models (buffer
/// full).
pub const SIZING_DROPPED: &str = "tierscope_sizing_dropped_total";

/// Label keys.
pub mod label {
    /// The user's name for one cache stack.
    pub const CACHE: &str = "cache";
    /// The user's name for one tier.
    pub const TIER: &str = "tier";
    /// `load`, `save`, `contains` or `reload`.
    pub const OP: &str = "op";
    /// Outcome.
    pub const RESULT: &str = "result";
    /// Eviction cause.
    pub const CAUSE: &str = "cause";
    /// How a hit's bytes were verified: `full`, `remembered` or `recorded`.
    pub const CHECK: &str = "check";
    /// Error kind.
    pub const KIND: &str = "kind";
    /// Promotion source tier.
    pub const FROM: &str = "from";
    /// Promotion target tier.
    pub const TO: &str = "to";
    /// State of engine code: `cached`, `evicted`, `retired`.
    pub const STATE: &str = "state";
    /// Direction of remote transfers: `sent`, `received`.
    pub const DIRECTION: &str = "direction";
    /// Live sizing: the multiple of a tier's current capacity modelled
    /// (`0.25`, `0.5`, `1`, `2`, `4` by default).
    pub const SCALE: &str = "scale";
}

/// Buckets (seconds) for operation latencies: resolve a 100 ns memory hit,
/// a 50 us small-disk hit, a 1 ms large-disk hit and a 30 s compile.
pub const LATENCY_BUCKETS: [f64; 22] = [
    100e-9, 250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3,
    2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 1.0, 5.0, 30.0,
];

/// Buckets (seconds) for compile durations: 1 ms to 60 s.
pub const COMPILE_BUCKETS: [f64; 14] = [
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Buckets (seconds) for eviction ages: 1 s to a week.
pub const AGE_BUCKETS: [f64; 12] = [
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
    2.0 * 86400.0,
    4.0 * 86400.0,
    7.0 * 86400.0,
];

/// Histograms, whose buckets the exporters configure.
pub const HISTOGRAMS: [(&str, &[f64]); 3] = [
    (OPERATION_DURATION, &LATENCY_BUCKETS),
    (EVICTION_AGE, &AGE_BUCKETS),
    (COMPILE_DURATION, &COMPILE_BUCKETS),
];

/// Every metric with its kind, unit and help text.
pub const DESCRIPTIONS: [(&str, Kind, Unit, &str); 34] = [
    (
        LOOKUPS,
        Kind::Counter,
        Unit::Count,
        "callers' lookups on one cache tier, by result (hit, miss, error); an engine switch's reloads are in tierscope_reloads_total",
    ),
    (
        RELOADS,
        Kind::Counter,
        Unit::Count,
        "lookups an engine switch made on one tier to reload the memory tier's contents into the new engine, by result (hit, miss, error)",
    ),
    (
        VERIFIED_HITS,
        Kind::Counter,
        Unit::Count,
        "hits of a tier that verifies artifacts, by check (full: every byte checked on this hit; remembered: a mapping checked earlier, its file unchanged; recorded: checked in full by an earlier hit of any process, its file unchanged)",
    ),
    (
        SAVES,
        Kind::Counter,
        Unit::Count,
        "save calls on one cache tier, promotions included, by result (ok, error)",
    ),
    (
        OPERATION_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "latency of one tier operation by op (load, save, contains, reload) and result; memory-tier hits may be sampled (see the tier's latency_sample_every)",
    ),
    (
        PROMOTIONS,
        Kind::Counter,
        Unit::Count,
        "modules found in tier `from` and copied up into tier `to`, by result",
    ),
    (
        ERRORS,
        Kind::Counter,
        Unit::Count,
        "errors returned by a tier, by op and kind, including errors a combinator recovered from",
    ),
    (
        EVICTIONS,
        Kind::Counter,
        Unit::Count,
        "entries a tier dropped, by cause (capacity, expired, explicit, replaced, corrupt, retired)",
    ),
    (
        EVICTED_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "bytes of the entries a tier dropped, by cause",
    ),
    (
        EVICTION_AGE,
        Kind::Histogram,
        Unit::Seconds,
        "time from insert to eviction, for tiers that know it",
    ),
    (
        ENTRIES,
        Kind::Gauge,
        Unit::Count,
        "entries resident in a tier now",
    ),
    (
        SIZE_BYTES,
        Kind::Gauge,
        Unit::Bytes,
        "bytes resident in a tier now (serialized artifact bytes)",
    ),
    (
        CAPACITY_BYTES,
        Kind::Gauge,
        Unit::Bytes,
        "configured byte bound of a tier; absent for unbounded tiers",
    ),
    (
        READ_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "artifact bytes served by hits",
    ),
    (
        WRITTEN_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "artifact bytes stored",
    ),
    (
        COMPILATIONS,
        Kind::Counter,
        Unit::Count,
        "compilations done because every tier missed, by result (ok, error)",
    ),
    (
        COMPILE_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "time to compile one module (the miss penalty)",
    ),
    (
        COALESCED,
        Kind::Counter,
        Unit::Count,
        "callers that waited for another caller's in-flight compile instead of compiling",
    ),
    (
        TIER_AVAILABLE,
        Kind::Gauge,
        Unit::Count,
        "1 while a tier is usable, 0 while its circuit breaker is open",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        Unit::Count,
        "which tierscope and wasmer build is running (value 1)",
    ),
    (
        ENGINE_CODE_BYTES,
        Kind::Gauge,
        Unit::Bytes,
        "machine code kept by engine generations (artifact bytes), by state (cached, evicted, retired)",
    ),
    (
        ENGINE_CODE_BUDGET,
        Kind::Gauge,
        Unit::Bytes,
        "evicted code one engine generation may keep before a fresh engine replaces it",
    ),
    (
        ENGINE_GENERATIONS,
        Kind::Counter,
        Unit::Count,
        "engine generations started, the first included",
    ),
    (
        ENGINE_GENERATIONS_ALIVE,
        Kind::Gauge,
        Unit::Count,
        "engine generations alive: the current one plus retired ones still in use",
    ),
    (
        REMOTE_REQUESTS,
        Kind::Counter,
        Unit::Count,
        "requests a remote tier sent to its store, by op (get, head, put, create_multipart, put_part, complete_multipart, abort_multipart, delete) and result (ok, not_found, conflict, error, timeout)",
    ),
    (
        REMOTE_TRANSFERRED_BYTES,
        Kind::Counter,
        Unit::Bytes,
        "payload bytes a remote tier moved to or from its store, by direction (sent, received)",
    ),
    (
        SIZING_HIT_RATIO,
        Kind::Gauge,
        Unit::Count,
        "live sizing: hit ratio a tier would have had over the recent window at scale times its current capacity",
    ),
    (
        SIZING_BYTE_HIT_RATIO,
        Kind::Gauge,
        Unit::Count,
        "live sizing: byte hit ratio a tier would have had over the recent window at scale times its current capacity",
    ),
    (
        SIZING_CAPACITY,
        Kind::Gauge,
        Unit::Bytes,
        "live sizing: the capacity modelled at each scale",
    ),
    (
        SIZING_WORKING_SET,
        Kind::Gauge,
        Unit::Bytes,
        "live sizing: bytes of the distinct modules a tier was asked for over the recent window",
    ),
    (
        SIZING_COMPILES,
        Kind::Counter,
        Unit::Count,
        "live sizing: projected compiles with the memory tier at scale times its capacity, the tier below at its own",
    ),
    (
        SIZING_SAMPLING_RATE,
        Kind::Gauge,
        Unit::Count,
        "live sizing: share of keys a tier's model samples (1 = exact)",
    ),
    (
        SIZING_WINDOW_REQUESTS,
        Kind::Gauge,
        Unit::Count,
        "live sizing: requests in a tier's recent window",
    ),
    (
        SIZING_DROPPED,
        Kind::Counter,
        Unit::Count,
        "live sizing: lookups not modelled because the hit path's buffer was full",
    ),
];

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram.
    Histogram,
}

/// Describe every metric to the current recorder (HELP text and unit), so
/// that exporters can emit them. Idempotent; cheap.
pub fn describe_all() {
    for (name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// Set `tierscope_build_info{version, wasmer_version}` to 1.
pub fn record_build_info() {
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "wasmer_version" => crate::engine::WASMER_VERSION,
    )
    .set(1.0);
}
