//! A whole stack: the memory tier in front of a byte-bounded LRU tier
//! (disk), on a grid of memory × disk capacities.
//!
//! Each memory shadow (`memory`) sees every request; its
//! misses, and only those, reach a disk model (`lru`) of its
//! own, which answers every disk capacity in one pass. A miss of both is a
//! compile: `StackModel::grid` gives, per (memory, disk) pair, the
//! requests that reach disk, the compiles, and the compile seconds when
//! the trace has compile times.
//!
//! (A stack also promotes disk hits into memory and saves compiles into
//! both; the disk model sees exactly the memory misses, which is what the
//! disk tier of a `memory.with_fallback(disk)` stack is asked.)

use super::{
    Curve, Request,
    estimate::{Counts, SampledTotals, point},
    lru::LruCore,
    memory::{Shadow, ShadowOptions},
    normalize_grid,
    sampling::{Front, Modelled, Sampling},
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
    /// Of `compiles`, the first requests of each key: the same at every
    /// size (estimated when sampled).
    pub cold_compiles: u64,
    /// Compile seconds per hour of trace from the compiles capacity could
    /// avoid (all but the first requests'), when known.
    pub capacity_compile_seconds_per_hour: Option<f64>,
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
    front: Front,
    inner: Inner,
}

/// One memory shadow, the disk model behind it, and the shadow's hits.
#[derive(Debug)]
struct Scale {
    shadow: Shadow,
    disk: LruCore,
    hits: Counts,
}

#[derive(Debug)]
struct Inner {
    memory: Vec<Scale>,
    /// Modelled keys and their last size.
    keys: super::KeyMap<u64>,
    sampled: SampledTotals,
    compile_all: f64,
    /// Compile cost of the first requests of each key.
    cold_compile: f64,
}

impl Modelled for Inner {
    fn forget(&mut self, key: u64) {
        self.keys.remove(&key);
        for m in &mut self.memory {
            m.shadow.forget(key);
            m.disk.forget(key);
        }
    }
    fn rescale(&mut self, factor: f64, rate: f64) {
        for m in &mut self.memory {
            m.shadow.set_rate(rate);
            m.disk.rescale(factor);
            m.hits.scale(factor);
        }
        self.sampled.scale(factor);
        self.compile_all *= factor;
        self.cold_compile *= factor;
    }
}

impl StackModel {
    /// The memory tier's entries were inserted again, fresh, in `order`
    /// (model keys; an engine switch): every memory shadow does the same
    /// (the disk models are untouched).
    pub(crate) fn reinsert(&mut self, order: &[u64], capacity: u64) {
        let order: Vec<(u64, u64)> = order
            .iter()
            .filter_map(|k| self.inner.keys.get(k).map(|w| (*k, *w)))
            .collect();
        for m in &mut self.inner.memory {
            let exact = m.shadow.capacity() == capacity;
            m.shadow.reinsert(&order, exact);
        }
    }

    /// A model of a memory tier at each of `memory_grid` in front of a disk
    /// tier at each of `disk_grid` (bytes).
    pub fn new(
        memory_grid: &[u64],
        disk_grid: &[u64],
        options: ShadowOptions,
        sampling: Sampling,
    ) -> Self {
        let front = Front::new(sampling);
        let rate = front.rate();
        StackModel {
            inner: Inner {
                memory: normalize_grid(memory_grid)
                    .into_iter()
                    .map(|c| {
                        let mut disk = LruCore::new(disk_grid);
                        disk.set_scale(1.0 / rate);
                        Scale {
                            shadow: Shadow::new(c, &options, rate),
                            disk,
                            hits: Counts::default(),
                        }
                    })
                    .collect(),
                keys: Default::default(),
                sampled: Default::default(),
                compile_all: 0.0,
                cold_compile: 0.0,
            },
            front,
        }
    }

    /// Feed one request.
    pub fn access(&mut self, req: &Request) {
        let Some(offer) = self.front.offer(req) else {
            return;
        };
        let m = &mut self.inner;
        let new = m.keys.insert(req.key, super::weight(req.bytes)).is_none();
        let size = super::weight(req.bytes);
        let cost = self.front.costs.cost(req);
        m.sampled.requests += 1.0;
        m.sampled.bytes += size as f64;
        m.compile_all += cost.unwrap_or(0.0);
        if new {
            m.cold_compile += cost.unwrap_or(0.0);
        }
        for s in &mut m.memory {
            if s.shadow.access(req.key, size) {
                s.hits.hits += 1.0;
                s.hits.hit_bytes += size as f64;
            } else {
                s.disk.access(req.key, size, cost, false);
            }
        }
        if new && self.front.tracks_keys() {
            self.front.admitted(req.key, offer.hash, &mut self.inner);
        }
    }

    /// Every (memory, disk) pair, memory-major, in increasing capacities.
    pub fn grid(&self) -> Vec<StackPoint> {
        let rate = self.front.rate();
        let totals = &self.front.totals;
        let duration = totals.duration_seconds();
        let known = self.front.costs.known();
        let cold_compiles = self.cold_compiles();
        let cold_seconds = self.cold_compile_seconds().unwrap_or(0.0);
        let mut out = Vec::new();
        for Scale {
            shadow,
            disk,
            hits: mem,
        } in &self.inner.memory
        {
            let memory_hit_ratio = point(
                shadow.capacity(),
                mem,
                &self.inner.sampled,
                totals.both(),
                rate,
                false,
            )
            .hit_ratio;
            for (&cap, c) in disk.grid().iter().zip(disk.counts()) {
                // Disk counts are relative to the requests disk saw; the
                // compile cost of a stack miss is that of a disk miss.
                let mut both = c;
                both.hits += mem.hits;
                both.hit_bytes += mem.hit_bytes;
                let p = point(cap, &both, &self.inner.sampled, totals.both(), rate, known);
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
                    cold_compiles,
                    capacity_compile_seconds_per_hour: match (p.compile_seconds, duration) {
                        (Some(c), Some(d)) => Some((c - cold_seconds).max(0.0) * 3600.0 / d),
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
        let rate = self.front.rate();
        let Scale { disk, .. } = self
            .inner
            .memory
            .iter()
            .find(|s| s.shadow.capacity() == memory)?;
        // The requests that reach disk are the memory tier's misses, an
        // estimate when sampled: the disk's misses are read against it.
        let lookups = disk.sampled.requests / rate;
        let bytes = disk.sampled.bytes / rate;
        Some(Curve {
            points: disk
                .grid()
                .iter()
                .zip(disk.counts())
                .map(|(&cap, c)| {
                    point(
                        cap,
                        &c,
                        &disk.sampled,
                        (lookups, bytes),
                        rate,
                        self.front.costs.known(),
                    )
                })
                .collect(),
            requests: lookups.round() as u64,
            bytes: bytes.round() as u64,
            distinct_keys: disk.distinct(),
            working_set_bytes: disk.live_bytes(),
            sampling_rate: rate,
            duration_seconds: self.front.totals.duration_seconds(),
            cold_compile_seconds: self.cold_compile_seconds(),
        })
    }

    /// The memory tier's own curve (its shadows' hits).
    pub fn memory_curve(&self) -> Curve {
        let rate = self.front.rate();
        let totals = &self.front.totals;
        Curve {
            points: self
                .inner
                .memory
                .iter()
                .map(|s| {
                    point(
                        s.shadow.capacity(),
                        &s.hits,
                        &self.inner.sampled,
                        totals.both(),
                        rate,
                        false,
                    )
                })
                .collect(),
            requests: totals.requests,
            bytes: totals.bytes,
            distinct_keys: self.front.scaled(self.inner.keys.len() as f64),
            working_set_bytes: self.inner.memory.first().map_or(0, |s| s.disk.live_bytes()),
            sampling_rate: rate,
            duration_seconds: totals.duration_seconds(),
            cold_compile_seconds: None,
        }
    }

    /// Compile seconds of the first requests of each key (estimated when
    /// sampled), when the trace has compile times.
    fn cold_compile_seconds(&self) -> Option<f64> {
        self.front
            .costs
            .known()
            .then(|| self.inner.cold_compile / self.front.rate())
    }

    /// First requests of each key: the compiles no size avoids (estimated
    /// when sampled).
    fn cold_compiles(&self) -> u64 {
        self.front.scaled(self.inner.keys.len() as f64)
    }
}
