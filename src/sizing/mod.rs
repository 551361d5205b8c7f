//! Tier sizing: what-if models of each tier, fed a request stream, answering
//! hit ratio and byte hit ratio at many capacities in one pass.
//!
//! - [`lru::LruModel`]: any byte-bounded LRU (the disk tier, or what a
//!   bound on the Redis tier would cost). Mattson's stack distances over a
//!   Fenwick tree, byte-weighted, O(log n) per request, exact at every grid
//!   size (see its docs for the semantics it is exact for), plus the
//!   working-set size.
//! - `MemoryModel`: shadows of the memory tier's own policy
//!   (quick_cache with values replaced by their weights, options derived by
//!   the same code as [`MemoryCache`](crate::MemoryCache)), one per grid
//!   point, since that policy has no inclusion property.
//! - `StackModel`: memory in front of disk: each memory shadow's
//!   misses feed a disk model, giving the misses of the last tier (the
//!   compile rate) on a memory × disk grid.
//! - sampling: past a configurable number of distinct keys, spatial
//!   (hash) sampling as in SHARDS (FAST'15) and mini-simulations (ATC'17),
//!   with bounded memory; the rate in use is reported in every [`Curve`].
//! - traces ([`TraceReader`]): streaming readers and writers for libCacheSim's
//!   `oracleGeneral` binary, CSV with column options, and the tierscope
//!   trace (which adds compile times and the serving tier).
//!
//! Every model takes [`Request`]s and returns a [`Curve`]. No model panics on
//! any input: sizes of 0 weigh 1 byte (as in the memory tier), sizes
//! above [`MAX_OBJECT_BYTES`] count as that, an object
//! larger than a capacity is never admitted at that capacity (as in the real
//! tiers), and timestamps need not be ordered.
//!
//! ```
//! use tierscope::sizing::{Request, lru::LruModel, sampling::Sampling};
//!
//! // Three 1 KB objects in a loop: a 2 KB LRU always misses, 3 KB always
//! // hits after the first pass.
//! let mut model = LruModel::new(&[2_000, 3_000], Sampling::Off);
//! for i in 0..30u64 {
//!     model.access(&Request::new(i, i % 3, 1_000));
//! }
//! let curve = model.curve();
//! assert_eq!(curve.points[0].hit_ratio, 0.0);
//! assert_eq!(curve.points[1].hit_ratio, 0.9); // 27 of 30
//! assert_eq!(curve.working_set_bytes, 3_000);
//! ```

mod estimate;
internal_mod!(
    /// Live sizing: models fed by a running stack.
    live
);
internal_mod!(
    /// The byte-weighted LRU model.
    lru
);
internal_mod!(
    /// Shadows of the memory tier's policy.
    memory
);
internal_mod!(
    /// Spatial sampling and the most-requested keys.
    sampling
);
internal_mod!(
    /// Memory in front of disk.
    stack
);
internal_mod!(
    /// Trace readers and writers.
    trace
);

pub use self::{
    live::{
        CompilePoint, LiveSizing, ScalePoint, SizingExt, SizingOptions, SizingReport, SizingTier,
        TierReport, Window,
    },
    lru::{LruModel, SizeOnHit},
    sampling::Sampling,
    trace::{CsvOptions, Format, TraceError, TraceReader},
};

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
};

use wasmer::Engine;
use wasmer_types::ModuleHash;

/// Which tier served a recorded request (the tierscope trace records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServedBy {
    /// The memory tier.
    Memory,
    /// The disk tier.
    Disk,
    /// The remote (Redis) tier.
    Remote,
    /// No tier: the module was compiled.
    Compile,
}

impl ServedBy {
    /// The name used in traces and reports: `memory`, `disk`, `remote`,
    /// `compile`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedBy::Memory => "memory",
            ServedBy::Disk => "disk",
            ServedBy::Remote => "remote",
            ServedBy::Compile => "compile",
        }
    }

    /// Parse a name written by [`ServedBy::as_str`].
    pub(crate) fn parse(text: &str) -> Option<ServedBy> {
        Some(match text {
            "memory" => ServedBy::Memory,
            "disk" => ServedBy::Disk,
            "remote" | "redis" => ServedBy::Remote,
            "compile" => ServedBy::Compile,
            _ => return None,
        })
    }
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// When, in microseconds from any origin (used for rates per hour).
    pub time_us: u64,
    /// The object id (for modules: [`object_id`]).
    pub key: u64,
    /// The object's size in bytes (for modules: the serialized artifact).
    pub bytes: u64,
    /// The compile time this request cost, when it was a miss of every tier
    /// and the trace knows it.
    pub compile_us: Option<u64>,
    /// Which tier served it, when the trace knows.
    pub served: Option<ServedBy>,
}

impl Request {
    /// A request with no compile time or serving tier.
    pub fn new(time_us: u64, key: u64, bytes: u64) -> Self {
        Request {
            time_us,
            key,
            bytes,
            compile_us: None,
            served: None,
        }
    }
}

/// The object id of a module under an engine: the module hash with the
/// engine configuration folded in (its deterministic id, artifact format,
/// wasmer version and entry format, the same binding as the disk tier's
/// namespace), so one module compiled by two configurations is two objects.
/// Stable across processes and machines.
#[doc(hidden)] // for the tierscope binary and the tests; not part of the API
pub fn object_id(hash: &ModuleHash, engine: &Engine) -> u64 {
    let ident = crate::engine::ident_of(engine);
    object_id_in(hash, &ident.context)
}

/// [`object_id`] with the engine binding given as the 16 bytes of
/// [`EngineIdent::context`](crate::engine::EngineIdent::context).
#[doc(hidden)] // for the tierscope binary and the tests; not part of the API
pub fn object_id_in(hash: &ModuleHash, context: &[u8; 16]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(hash.as_bytes());
    h.update(context);
    h.digest()
}

/// One capacity of a curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The capacity in bytes.
    pub capacity: u64,
    /// Hits / requests (0 with no requests).
    pub hit_ratio: f64,
    /// Bytes of hits / bytes requested (0 with no requests).
    pub byte_hit_ratio: f64,
    /// Requests that missed (estimated when sampled).
    pub misses: u64,
    /// Seconds of compiling the misses cost, when the trace has compile
    /// times (misses on keys with no known compile time are estimated from
    /// the trace's mean compile time per byte).
    pub compile_seconds: Option<f64>,
}

/// What a model answers: one [`Point`] per capacity of its grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// One point per grid capacity, in increasing capacity.
    pub points: Vec<Point>,
    /// Requests seen.
    pub requests: u64,
    /// Bytes requested.
    pub bytes: u64,
    /// Distinct keys seen (estimated when sampled).
    pub distinct_keys: u64,
    /// Bytes of all distinct keys at their last size: the capacity past
    /// which nothing but first requests miss (estimated when sampled).
    pub working_set_bytes: u64,
    /// The share of keys modelled: 1 when exact, below 1 when sampling.
    pub sampling_rate: f64,
    /// Time from the first to the last request, in seconds (`None` with
    /// fewer than two distinct times).
    pub duration_seconds: Option<f64>,
    /// Seconds of compiling the first requests of each key cost (the cold
    /// misses, `distinct_keys` of them: no capacity avoids them), when the
    /// trace has compile times (estimated when sampled).
    pub cold_compile_seconds: Option<f64>,
}

impl Curve {
    /// The smallest capacity of the grid whose hit ratio is within
    /// `tolerance` (e.g. 0.01 for one percentage point) of the best the
    /// grid reaches: the knee. `None` for an empty grid.
    pub fn knee(&self, tolerance: f64) -> Option<&Point> {
        let best = self
            .points
            .iter()
            .map(|p| p.hit_ratio)
            .fold(f64::NEG_INFINITY, f64::max);
        self.points
            .iter()
            .find(|p| p.hit_ratio >= best - tolerance.max(0.0))
    }

    /// The point of the grid at exactly `capacity`, if there is one.
    pub fn at(&self, capacity: u64) -> Option<&Point> {
        self.points.iter().find(|p| p.capacity == capacity)
    }

    /// Compile seconds per hour of trace at `point`, when the trace has
    /// compile times and a duration.
    pub fn compile_seconds_per_hour(&self, point: &Point) -> Option<f64> {
        let d = self.duration_seconds?;
        point.compile_seconds.map(|c| c * 3600.0 / d)
    }

    /// The misses at `point` that capacity could avoid: all its misses but
    /// the first request of each key (the cold misses, at every size).
    pub fn capacity_misses(&self, point: &Point) -> u64 {
        point.misses.saturating_sub(self.distinct_keys)
    }

    /// Compile seconds per hour of trace at `point` from its capacity
    /// misses only (the first requests' compiles are left out: they do not
    /// recur, so an hourly rate would extrapolate a one-off), when the trace
    /// has compile times and a duration.
    pub fn capacity_compile_seconds_per_hour(&self, point: &Point) -> Option<f64> {
        let d = self.duration_seconds?;
        let all = point.compile_seconds?;
        let cold = self.cold_compile_seconds.unwrap_or(0.0);
        Some((all - cold).max(0.0) * 3600.0 / d)
    }
}

/// The largest object size a model counts: larger sizes count as this
/// (1 TiB), so byte sums stay exact in 64 bits up to 16 M such objects.
#[doc(hidden)] // for the tierscope binary and the tests; not part of the API
pub const MAX_OBJECT_BYTES: u64 = 1 << 40;

/// The weight a model gives a request of `bytes`: at least 1 (as the memory
/// tier), at most [`MAX_OBJECT_BYTES`].
#[doc(hidden)] // for the tierscope binary and the tests; not part of the API
#[inline]
pub fn weight(bytes: u64) -> u64 {
    bytes.clamp(1, MAX_OBJECT_BYTES)
}

/// A grid of capacities: sorted, without duplicates or zeros.
#[doc(hidden)] // for the tierscope binary and the tests; not part of the API
pub fn normalize_grid(grid: &[u64]) -> Vec<u64> {
    let mut g: Vec<u64> = grid.iter().copied().filter(|&c| c > 0).collect();
    g.sort_unstable();
    g.dedup();
    g
}

/// A fast, well-mixed 64-bit hash (splitmix64's finalizer).
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash maps keyed by object id: one multiply-xor mix, no seed needed
/// (ids are only compared, never exposed).
#[derive(Clone, Copy, Default)]
pub(crate) struct MixState;

impl BuildHasher for MixState {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

/// The state of [`MixState`].
#[derive(Clone, Copy, Default)]
pub(crate) struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = mix64(self.0 ^ u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = mix64(self.0 ^ v);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type KeyMap<V> = HashMap<u64, V, MixState>;
