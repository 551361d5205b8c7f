//! A whole stack: the memory tier in front of a byte-bounded LRU tier
//! (disk), on a grid of memory × disk capacities.
//!
//! Each memory shadow ([`memory`](super::memory)) sees every request; its
//! misses, and only those, reach a disk model ([`lru`](super::lru)) of its
//! own, which answers every disk capacity in one pass. A miss of both is a
//! compile: [`StackModel::grid`] gives, per (memory, disk) pair, the
//! requests that reach disk, the compiles, and the compile seconds when
//! the trace has compile times.
//!
//! (A stack also promotes disk hits into memory and saves compiles into
//! both; the disk model sees exactly the memory misses, which is what the
//! disk tier of a `memory.with_fallback(disk)` stack is asked.)

use super::{
    CompileCosts, Curve, Request, Totals,
    lru::LruCore,
    memory::{Shadow, ShadowOptions},
    normalize_grid, point,
    sampling::{Sampler, Sampling, key_hash},
};

/// One (memory, disk) pair of a [`StackModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct StackPoint {
    /// Memory tier capacity, bytes.
    pub memory: u64,
    /// Disk tier capacity, bytes.
    pub disk: u64,
    /// Share of requests served by memory.
    pub memory_hit_ratio: f64,
    /// Share of all requests served by memory or disk (1 - compile ratio).
    pub hit_ratio: f64,
    /// Requests that missed both tiers: compiles (estimated when sampled).
    pub compiles: u64,
    /// Seconds spent compiling them, when the trace has compile times.
    pub compile_seconds: Option<f64>,
    /// Compile seconds per hour of trace, when known.
    pub compile_seconds_per_hour: Option<f64>,
}

/// Memory shadows feeding disk models: compile rate on a memory × disk grid.
///
/// ```
/// use tierscope::sizing::{Request, stack::StackModel, memory::ShadowOptions, sampling::Sampling};
/// let mut m = StackModel::new(&[2 << 20], &[1 << 20, 16 << 20], ShadowOptions::default(), Sampling::Off);
/// for i in 0..200u64 {
///     m.access(&Request::new(i, i % 8, 1 << 20)); // eight 1 MiB modules in a loop
/// }
/// let grid = m.grid();
/// assert_eq!(grid.len(), 2);
/// assert_eq!(grid[1].compiles, 8); // 16 MiB of disk keeps all eight
/// ```
#[derive(Debug)]
pub struct StackModel {
    memory: Vec<(Shadow, LruCore, super::Counts)>,
    sampler: Sampler,
    keys: super::KeyMap<()>,
    totals: Totals,
    costs: CompileCosts,
    sampled: super::SampledTotals,
    compile_all: f64,
}

impl StackModel {
    /// A model of a memory tier at each of `memory_grid` in front of a disk
    /// tier at each of `disk_grid` (bytes).
    pub fn new(
        memory_grid: &[u64],
        disk_grid: &[u64],
        options: ShadowOptions,
        sampling: Sampling,
    ) -> Self {
        let sampler = Sampler::new(sampling);
        let rate = sampler.rate();
        StackModel {
            memory: normalize_grid(memory_grid)
                .into_iter()
                .map(|c| {
                    let mut disk = LruCore::new(disk_grid);
                    disk.set_scale(1.0 / rate);
                    (
                        Shadow::new(c, &options, rate),
                        disk,
                        super::Counts::default(),
                    )
                })
                .collect(),
            sampler,
            keys: Default::default(),
            totals: Totals::default(),
            costs: Default::default(),
            sampled: Default::default(),
            compile_all: 0.0,
        }
    }

    /// Feed one request.
    pub fn access(&mut self, req: &Request) {
        self.totals.add(req);
        let h = key_hash(req.key);
        if !self.sampler.sampled(h) {
            return;
        }
        if !self.keys.contains_key(&req.key)
            && let Some(lowered) = self.sampler.admit(req.key, h)
        {
            let rate = self.sampler.rate();
            for k in &lowered.evicted {
                self.keys.remove(k);
                self.costs.forget(*k);
                for (shadow, disk, _) in &mut self.memory {
                    shadow.forget(*k);
                    disk.forget(*k);
                }
            }
            for (shadow, disk, counts) in &mut self.memory {
                shadow.set_rate(rate);
                disk.rescale(lowered.factor);
                counts.scale(lowered.factor);
            }
            self.sampled.scale(lowered.factor);
            self.compile_all *= lowered.factor;
            if !self.sampler.sampled(h) {
                return;
            }
        }
        self.keys.insert(req.key, ());
        let size = super::weight(req.bytes);
        let cost = self.costs.cost(req);
        self.sampled.requests += 1.0;
        self.sampled.bytes += size as f64;
        self.compile_all += cost.unwrap_or(0.0);
        for (shadow, disk, counts) in &mut self.memory {
            if shadow.access(req.key, size) {
                counts.hits += 1.0;
                counts.hit_bytes += size as f64;
            } else {
                disk.access(req.key, size, cost);
            }
        }
    }

    /// Every (memory, disk) pair, memory-major, in increasing capacities.
    pub fn grid(&self) -> Vec<StackPoint> {
        let rate = self.sampler.rate();
        let duration = self.totals.duration_seconds();
        let mut out = Vec::new();
        for (shadow, disk, mem) in &self.memory {
            let memory_hit_ratio = if self.sampled.requests > 0.0 {
                (mem.hits / self.sampled.requests).clamp(0.0, 1.0)
            } else {
                0.0
            };
            for (&cap, c) in disk.grid().iter().zip(disk.counts()) {
                // Disk counts are relative to the requests disk saw; the
                // compile cost of a stack miss is that of a disk miss.
                let mut both = c;
                both.hits += mem.hits;
                both.hit_bytes += mem.hit_bytes;
                let p = point(
                    cap,
                    &both,
                    &self.sampled,
                    self.totals.requests,
                    rate,
                    self.costs.known(),
                );
                out.push(StackPoint {
                    memory: shadow.capacity(),
                    disk: cap,
                    memory_hit_ratio,
                    hit_ratio: p.hit_ratio,
                    compiles: p.misses,
                    compile_seconds: p.compile_seconds,
                    compile_seconds_per_hour: match (p.compile_seconds, duration) {
                        (Some(c), Some(d)) => Some(c * 3600.0 / d),
                        _ => None,
                    },
                });
            }
        }
        out
    }

    /// The disk tier's curve behind a memory tier of `memory` bytes (one of
    /// the memory grid): hit ratios among the requests that reached disk
    /// (`requests` counts those), misses are compiles.
    pub fn disk_curve(&self, memory: u64) -> Option<Curve> {
        let rate = self.sampler.rate();
        let (_, disk, _) = self
            .memory
            .iter()
            .find(|(s, _, _)| s.capacity() == memory)?;
        let lookups = (disk.sampled.requests / rate).round() as u64;
        Some(Curve {
            points: disk
                .grid()
                .iter()
                .zip(disk.counts())
                .map(|(&cap, c)| point(cap, &c, &disk.sampled, lookups, rate, self.costs.known()))
                .collect(),
            requests: lookups,
            bytes: (disk.sampled.bytes / rate).round() as u64,
            distinct_keys: (disk.distinct() as f64 / rate).round() as u64,
            working_set_bytes: (disk.live_bytes() as f64 / rate).round() as u64,
            sampling_rate: rate,
            duration_seconds: self.totals.duration_seconds(),
        })
    }

    /// The memory tier's own curve (its shadows' hits).
    pub fn memory_curve(&self) -> Curve {
        let rate = self.sampler.rate();
        Curve {
            points: self
                .memory
                .iter()
                .map(|(shadow, _, c)| {
                    let mut c = *c;
                    c.miss_compile = 0.0;
                    let mut p = point(
                        shadow.capacity(),
                        &c,
                        &self.sampled,
                        self.totals.requests,
                        rate,
                        false,
                    );
                    p.compile_seconds = None;
                    p
                })
                .collect(),
            requests: self.totals.requests,
            bytes: self.totals.bytes,
            distinct_keys: (self.keys.len() as f64 / rate).round() as u64,
            working_set_bytes: self
                .memory
                .first()
                .map_or(0, |(_, d, _)| (d.live_bytes() as f64 / rate).round() as u64),
            sampling_rate: rate,
            duration_seconds: self.totals.duration_seconds(),
        }
    }
}
