//! What live sizing answers: per sized tier, the what-if hit ratios over
//! the window at each scale of its capacity, and the stack's projected
//! compiles at each scale of the memory tier.

/// One point of a tier's what-if curve over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePoint {
    /// The scale of the tier's current capacity (1 = as configured).
    pub scale: f64,
    /// The capacity modelled: scale × current capacity, in bytes.
    pub capacity: u64,
    /// Hit ratio the tier would have had over the window at this capacity;
    /// NaN when the window holds no request (an idle tier, once `max_age`
    /// has passed): there is nothing to project, and the published gauge
    /// says so rather than showing the last busy window's number.
    pub hit_ratio: f64,
    /// Byte hit ratio likewise (NaN for an empty window).
    pub byte_hit_ratio: f64,
}

/// What one sized tier would have hit over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct TierReport {
    /// The tier's name (`tier` label).
    pub tier: String,
    /// Its current capacity; `None` for an unbounded tier (no curve then).
    pub capacity: Option<u64>,
    /// One point per scale of the grid, in increasing scale.
    pub points: Vec<ScalePoint>,
    /// The hit ratio the tier really had over the same requests (the
    /// model's error is `point at scale 1 - this`); NaN for an empty
    /// window.
    pub measured_hit_ratio: f64,
    /// Bytes of the distinct keys requested from this tier over the window
    /// (estimated when sampled).
    pub working_set_bytes: u64,
    /// Share of keys modelled (1: exact).
    pub sampling_rate: f64,
    /// Requests in the window.
    pub window_requests: u64,
    /// Whether the window has filled (a whole window of requests, or its
    /// age, has passed since the model started).
    pub window_full: bool,
}

impl TierReport {
    /// The point at `scale`, if the grid has it.
    pub fn at(&self, scale: f64) -> Option<&ScalePoint> {
        self.points.iter().find(|p| p.scale == scale)
    }
}

/// The stack's compiles at one scale of the memory tier (the other tiers
/// at their current capacity).
#[derive(Debug, Clone, PartialEq)]
pub struct CompilePoint {
    /// Scale of the memory tier.
    pub scale: f64,
    /// Memory capacity modelled, bytes.
    pub memory_capacity: u64,
    /// Requests that would have missed the memory tier and the first
    /// bounded tier below it over the window, times the measured miss ratio
    /// of the unbounded tiers sized below (a remote tier): the compiles
    /// (estimated when sampled).
    pub compiles: f64,
    /// The same per second of the window, once it spans some time.
    pub per_second: Option<f64>,
}

/// Everything the live models answer now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SizingReport {
    /// One report per sized tier, in the order they were sized.
    pub tiers: Vec<TierReport>,
    /// The stack's projected compiles at each memory scale (empty without
    /// a sized memory tier).
    pub compiles: Vec<CompilePoint>,
    /// Events the hit path dropped because its buffer was full.
    pub dropped: u64,
    /// Lookups modelled since the start (a miss waiting for its size
    /// included).
    pub modelled: u64,
}

impl SizingReport {
    /// The report of the tier named `tier`.
    pub fn tier(&self, tier: &str) -> Option<&TierReport> {
        self.tiers.iter().find(|t| t.tier == tier)
    }
}
