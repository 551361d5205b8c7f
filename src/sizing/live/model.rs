//! The worker's side: one model per sized tier, fed the events the hit
//! path recorded, read over a recent window.
//!
//! Models keep their state for the whole life of the stack (a shadow cache
//! is never emptied, so a window starts warm, as the real tier is); only
//! what they *count* is windowed: cumulative counts are snapshotted at the
//! end of each of [`EPOCHS`] epochs, and a report is "now minus the oldest
//! snapshot kept", covering between (EPOCHS - 1) / EPOCHS of a window and a
//! whole one.

use std::{collections::VecDeque, time::Instant};

pub use super::report::{CompilePoint, ScalePoint, SizingReport, TierReport};
use super::{
    TierPolicy, Window,
    window::{WorkingSet, threshold},
};
use super::shadow::Model;
use crate::recording::ring::{Event, Kind};
use crate::sizing::{
    Request,
    lru::LruModel,
    memory::MemoryModel,
    mix64,
    sampling::{Sampling, key_hash},
    stack::StackModel,
    weight,
};

/// Epochs per window.
pub(crate) const EPOCHS: usize = 10;

/// Misses waiting for their size (a first miss of a key no tier has seen
/// in bytes yet: the size comes with the save that follows). Beyond this,
/// the oldest is modelled at the tier's mean size.
const PENDING_MAX: usize = 4096;

/// Requests that miss the memory tier at each scale and the bounded tier
/// below it, since the start, and the share of those an unbounded tier
/// below would miss as well (1 without one).
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach {
    pub(crate) cumulative: Vec<f64>,
    pub(crate) below: f64,
}

/// Cumulative counts of one tier, at one moment.
#[derive(Debug, Clone, Default)]
struct Cum {
    at_us: u64,
    requests: f64,
    bytes: f64,
    measured_hits: f64,
    hits: Vec<f64>,
    hit_bytes: Vec<f64>,
    compiles: Vec<f64>,
}

/// One sized tier.
#[derive(Debug)]
pub(crate) struct TierState {
    pub(crate) name: String,
    pub(crate) policy: TierPolicy,
    /// Capacity at each scale (empty for an unbounded tier).
    pub(crate) capacities: Vec<u64>,
    model: Option<Model>,
    /// Snapshots at epoch ends, oldest first (at most [`EPOCHS`]).
    snapshots: VecDeque<Cum>,
    epoch_requests: u64,
    epoch_started_us: u64,
    started_us: u64,
    /// Requests since the model was built.
    requests: u64,
    measured_hits: u64,
    ws: WorkingSet,
    /// Misses whose size the hit path did not know, waiting for a save.
    pending: VecDeque<u64>,
    size_sum: f64,
    size_count: f64,
    threshold: u64,
}

/// Every sized tier of one stack.
#[derive(Debug)]
pub(crate) struct Models {
    pub(crate) scales: Vec<f64>,
    pub(crate) tiers: Vec<TierState>,
    window: Window,
    sampling: Sampling,
    pub(crate) modelled: u64,
    origin: Instant,
}

impl Models {
    pub(crate) fn new(scales: Vec<f64>, window: Window, sampling: Sampling) -> Self {
        Models {
            scales,
            tiers: Vec::new(),
            window,
            sampling,
            modelled: 0,
            origin: Instant::now(),
        }
    }

    /// Add a tier; its index in events.
    pub(crate) fn register(&mut self, name: String, policy: TierPolicy) -> usize {
        let capacities = match policy.capacity() {
            Some(c) => self
                .scales
                .iter()
                .map(|s| ((c as f64 * s).round() as u64).max(1))
                .collect(),
            None => Vec::new(),
        };
        self.tiers.push(TierState {
            name,
            policy,
            capacities,
            model: None,
            snapshots: VecDeque::new(),
            epoch_requests: 0,
            epoch_started_us: 0,
            started_us: 0,
            requests: 0,
            measured_hits: 0,
            ws: WorkingSet::new(),
            pending: VecDeque::new(),
            size_sum: 0.0,
            size_count: 0.0,
            threshold: u64::MAX,
        });
        // A memory model built before a bounded tier below it was sized
        // starts again, now with the compile projection.
        if matches!(policy, TierPolicy::Lru { capacity: Some(_) }) {
            for t in &mut self.tiers {
                if matches!(t.model, Some(Model::Memory(_))) {
                    t.model = None;
                }
            }
        }
        self.tiers.len() - 1
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// The capacity of the first bounded LRU tier (the one a memory tier's
    /// misses go to, in a memory -> disk stack).
    fn lower_capacity(&self) -> Option<u64> {
        self.tiers.iter().find_map(|t| match t.policy {
            TierPolicy::Lru { capacity } => capacity,
            TierPolicy::Memory { .. } => None,
        })
    }

    fn build(&mut self, tier: usize, now_us: u64) {
        let lower = self.lower_capacity();
        let sampling = self.sampling;
        let t = &mut self.tiers[tier];
        let model = match t.policy {
            TierPolicy::Memory { options, .. } => match lower {
                Some(disk) => Model::Stack(
                    Box::new(StackModel::new(&t.capacities, &[disk], options, sampling)),
                    disk,
                ),
                None => Model::Memory(Box::new(MemoryModel::new(&t.capacities, options, sampling))),
            },
            TierPolicy::Lru { capacity: Some(_) } => {
                Model::Lru(Box::new(LruModel::new(&t.capacities, sampling)))
            }
            TierPolicy::Lru { capacity: None } => Model::Unbounded,
        };
        t.model = Some(model);
        t.requests = 0;
        t.measured_hits = 0;
        t.epoch_requests = 0;
        t.epoch_started_us = now_us;
        t.started_us = now_us;
        t.ws = WorkingSet::new();
        t.threshold = u64::MAX;
        t.snapshots.clear();
        let zero = t.cum(now_us, &self.scales);
        t.snapshots.push_back(zero);
    }

    /// Tier `tier`'s entries were all inserted again, fresh, in the order
    /// of `keys` (the hit path's unmixed model keys): an engine switch's
    /// copies took the old engine's place. The tier's model does the same,
    /// so that it goes on shadowing what the tier holds.
    pub(crate) fn reinsert(&mut self, tier: usize, keys: &[u64]) {
        let order: Vec<u64> = keys.iter().map(|&k| mix64(k)).collect();
        let Some(t) = self.tiers.get_mut(tier) else {
            return;
        };
        if let (Some(model), Some(capacity)) = (t.model.as_mut(), t.policy.capacity()) {
            model.reinsert(&order, capacity);
        }
    }

    /// Apply one event recorded at about `now`.
    pub(crate) fn apply(&mut self, mut e: Event, now: Instant) {
        // The hit path leaves the key unmixed (hash bytes and engine).
        e.key = mix64(e.key);
        let tier = e.tier();
        if tier >= self.tiers.len() {
            return;
        }
        let now_us = self.now_us(now);
        if self.tiers[tier].model.is_none() {
            self.build(tier, now_us);
        }
        if e.kind() != Kind::Size {
            self.modelled += 1;
        }
        let window = self.window;
        let scales = &self.scales;
        let t = &mut self.tiers[tier];
        match e.kind() {
            Kind::Hit => t.access(e.key, e.bytes(), true, now_us, window, scales),
            Kind::Miss => t.access(e.key, e.bytes(), false, now_us, window, scales),
            Kind::MissUnknown => match t.known_size(e.key) {
                Some(b) => t.access(e.key, b, false, now_us, window, scales),
                None => {
                    if t.pending.len() >= PENDING_MAX
                        && let Some(old) = t.pending.pop_front()
                    {
                        let b = t.mean_size();
                        t.access(old, b, false, now_us, window, scales);
                    }
                    t.pending.push_back(e.key);
                }
            },
            Kind::Size => {
                let bytes = weight(e.bytes());
                let waiting = t.pending.iter().filter(|&&k| k == e.key).count();
                if waiting > 0 {
                    t.pending.retain(|&k| k != e.key);
                    for _ in 0..waiting {
                        t.access(e.key, bytes, false, now_us, window, scales);
                    }
                }
            }
        }
    }

    /// Close epochs that have lasted their share of the window's age.
    pub(crate) fn tick(&mut self, now: Instant) {
        let now_us = self.now_us(now);
        let Some(age) = self.window.max_age else {
            return;
        };
        let epoch_us = (age.as_micros() as u64 / EPOCHS as u64).max(1);
        let scales = &self.scales;
        for t in &mut self.tiers {
            if t.model.is_none() {
                continue;
            }
            // Every epoch that has lasted its share closes, with or without
            // requests: an idle tier's window empties after `max_age`.
            let elapsed = now_us.saturating_sub(t.epoch_started_us) / epoch_us;
            for _ in 0..elapsed.min(EPOCHS as u64) {
                t.close_epoch(now_us, scales);
            }
            if elapsed > 0 {
                t.epoch_started_us = now_us - (now_us - t.epoch_started_us) % epoch_us;
            }
        }
    }

    /// The windowed report (dropped left at 0: the rings know it), and
    /// the cumulative requests reaching below the bounded tiers.
    pub(crate) fn report(&self, now: Instant) -> (SizingReport, Reach) {
        let now_us = self.now_us(now);
        let mut report = SizingReport {
            modelled: self.modelled,
            ..Default::default()
        };
        let mut total_compiles = Vec::new();
        for t in &self.tiers {
            let cur = t.cum(now_us, &self.scales);
            let base = t.snapshots.front().cloned().unwrap_or_default();
            let requests = (cur.requests - base.requests).max(0.0);
            let bytes = (cur.bytes - base.bytes).max(0.0);
            // An empty window has no ratio: NaN, not a stale or a zero
            // one (see `ScalePoint::hit_ratio`).
            let ratio = |num: f64, den: f64| {
                if den > 0.0 {
                    (num / den).clamp(0.0, 1.0)
                } else {
                    f64::NAN
                }
            };
            let points = t
                .capacities
                .iter()
                .enumerate()
                .map(|(i, &capacity)| ScalePoint {
                    scale: self.scales[i],
                    capacity,
                    hit_ratio: ratio(
                        cur.hits.get(i).copied().unwrap_or(0.0)
                            - base.hits.get(i).copied().unwrap_or(0.0),
                        requests,
                    ),
                    byte_hit_ratio: ratio(
                        cur.hit_bytes.get(i).copied().unwrap_or(0.0)
                            - base.hit_bytes.get(i).copied().unwrap_or(0.0),
                        bytes,
                    ),
                })
                .collect();
            let rate = t.rate();
            let window_full = match self.window.max_age {
                _ if t.requests >= self.window.requests => true,
                Some(age) => {
                    t.model.is_some()
                        && now_us.saturating_sub(t.started_us) >= age.as_micros() as u64
                }
                None => false,
            };
            report.tiers.push(TierReport {
                tier: t.name.clone(),
                capacity: t.policy.capacity(),
                points,
                measured_hit_ratio: ratio(cur.measured_hits - base.measured_hits, requests),
                working_set_bytes: (t.ws.bytes() as f64 / rate).round() as u64,
                sampling_rate: rate,
                window_requests: requests.round() as u64,
                window_full,
            });
            if !cur.compiles.is_empty() {
                let seconds = cur.at_us.saturating_sub(base.at_us) as f64 / 1e6;
                report.compiles = cur
                    .compiles
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let compiles = (c - base.compiles.get(i).copied().unwrap_or(0.0)).max(0.0);
                        CompilePoint {
                            scale: self.scales[i],
                            memory_capacity: t.capacities[i],
                            compiles,
                            per_second: (seconds >= 1.0).then(|| compiles / seconds),
                        }
                    })
                    .collect();
                total_compiles = cur.compiles.clone();
            }
        }
        // An unbounded tier below (a remote tier) serves what the bounded
        // tiers miss, except its own misses: scale by its miss ratio.
        let below: f64 = report
            .tiers
            .iter()
            .zip(&self.tiers)
            .filter(|(r, t)| {
                matches!(t.policy, TierPolicy::Lru { capacity: None }) && r.window_requests > 0
            })
            .map(|(r, _)| 1.0 - r.measured_hit_ratio)
            .product();
        for c in &mut report.compiles {
            c.compiles *= below;
            c.per_second = c.per_second.map(|p| p * below);
        }
        (
            report,
            Reach {
                cumulative: total_compiles,
                below,
            },
        )
    }

    /// Approximate bytes of model state per modelled key, summed over tiers
    /// (see BENCHMARKS.md for measured figures).
    pub(crate) fn distinct_keys(&self) -> usize {
        self.tiers
            .iter()
            .map(|t| t.ws.keys.len())
            .max()
            .unwrap_or(0)
    }
}

impl TierState {
    fn rate(&self) -> f64 {
        match &self.model {
            Some(m) => m.curve().map_or(1.0, |c| c.sampling_rate),
            None => 1.0,
        }
    }

    fn mean_size(&self) -> u64 {
        if self.size_count > 0.0 {
            (self.size_sum / self.size_count).round() as u64
        } else {
            1
        }
    }

    /// The size of a key requested within the window (sampled keys).
    fn known_size(&self, key: u64) -> Option<u64> {
        self.ws.keys.get(&key).map(|&(_, b)| b)
    }

    fn access(
        &mut self,
        key: u64,
        bytes: u64,
        hit: bool,
        now_us: u64,
        window: Window,
        scales: &[f64],
    ) {
        let bytes = if bytes == 0 {
            self.known_size(key).unwrap_or_else(|| self.mean_size())
        } else {
            bytes
        };
        let bytes = weight(bytes);
        self.size_sum += bytes as f64;
        self.size_count += 1.0;
        if let Some(m) = &mut self.model {
            m.access(&Request::new(now_us, key, bytes));
        }
        if key_hash(key) <= self.threshold {
            self.ws.touch(key, bytes);
        }
        self.requests += 1;
        self.measured_hits += u64::from(hit);
        self.epoch_requests += 1;
        if self.epoch_requests >= (window.requests / EPOCHS as u64).max(1) {
            self.close_epoch(now_us, scales);
        }
    }

    fn close_epoch(&mut self, now_us: u64, scales: &[f64]) {
        let cum = self.cum(now_us, scales);
        if self.snapshots.len() >= EPOCHS {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back(cum);
        self.epoch_requests = 0;
        self.epoch_started_us = now_us;
        self.threshold = threshold(self.rate());
        let threshold = self.threshold;
        self.ws.close_epoch(threshold);
    }

    /// Cumulative counts now.
    fn cum(&self, now_us: u64, scales: &[f64]) -> Cum {
        let mut cum = Cum {
            at_us: now_us,
            requests: self.requests as f64,
            measured_hits: self.measured_hits as f64,
            ..Default::default()
        };
        let Some(model) = &self.model else {
            return cum;
        };
        let Some(curve) = model.curve() else {
            return cum;
        };
        cum.requests = curve.requests as f64;
        cum.bytes = curve.bytes as f64;
        for &cap in &self.capacities {
            let (h, hb) = curve.at(cap).map_or((0.0, 0.0), |p| {
                (p.hit_ratio * cum.requests, p.byte_hit_ratio * cum.bytes)
            });
            cum.hits.push(h);
            cum.hit_bytes.push(hb);
        }
        match model {
            Model::Stack(m, disk) => {
                let grid = m.grid();
                cum.compiles = self
                    .capacities
                    .iter()
                    .map(|&cap| {
                        grid.iter()
                            .find(|p| p.memory == cap && p.disk == *disk)
                            .map_or(0.0, |p| (1.0 - p.hit_ratio) * cum.requests)
                    })
                    .collect();
            }
            Model::Memory(_) => {
                cum.compiles = cum
                    .hits
                    .iter()
                    .map(|h| (cum.requests - h).max(0.0))
                    .collect();
            }
            _ => {}
        }
        let _ = scales;
        cum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::memory::ShadowOptions;

    fn one_shard() -> ShadowOptions {
        ShadowOptions {
            shards: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn a_miss_of_unknown_size_waits_for_its_save() {
        let mut m = Models::new(vec![1.0], Window::requests(1000), Sampling::Off);
        let t = m.register(
            "memory".into(),
            TierPolicy::Memory {
                capacity: 10_000,
                options: one_shard(),
            },
        ) as u8;
        let now = Instant::now();
        m.apply(Event::new(t, Kind::MissUnknown, 1, 0), now);
        assert_eq!(m.report(now).0.tiers[0].window_requests, 0);
        m.apply(Event::new(t, Kind::Size, 1, 500), now);
        m.apply(Event::new(t, Kind::Hit, 1, 500), now);
        let r = m.report(now).0;
        assert_eq!(r.tiers[0].window_requests, 2);
        assert_eq!(r.tiers[0].points[0].hit_ratio, 0.5);
        assert_eq!(r.tiers[0].measured_hit_ratio, 0.5);
        assert_eq!(r.tiers[0].working_set_bytes, 500);
        // Memory alone: its misses are the compiles.
        assert_eq!(r.compiles[0].compiles, 1.0);
    }

    #[test]
    fn the_window_forgets_old_requests() {
        let mut m = Models::new(vec![1.0], Window::requests(100), Sampling::Off);
        let t = m.register(
            "disk".into(),
            TierPolicy::Lru {
                capacity: Some(1000),
            },
        ) as u8;
        let now = Instant::now();
        // Ten 100-byte keys in a loop: all fit, all hit after the first pass.
        for i in 0..1000u64 {
            m.apply(Event::new(t, Kind::Hit, i % 10, 100), now);
        }
        let r = m.report(now).0;
        assert_eq!(r.tiers[0].points[0].hit_ratio, 1.0);
        assert!(r.tiers[0].window_full);
        assert!((90..=100).contains(&r.tiers[0].window_requests));
        assert_eq!(r.tiers[0].working_set_bytes, 1000);
        // Twenty new keys in a loop: an LRU of 1000 bytes always misses.
        for i in 0..200u64 {
            m.apply(Event::new(t, Kind::Miss, 100 + i % 20, 100), now);
        }
        let r = m.report(now).0;
        assert_eq!(r.tiers[0].points[0].hit_ratio, 0.0);
        assert_eq!(r.tiers[0].measured_hit_ratio, 0.0);
        assert_eq!(r.tiers[0].working_set_bytes, 2000);
    }

    #[test]
    fn an_unbounded_tier_below_scales_the_compiles_by_its_misses() {
        let mut m = Models::new(vec![1.0], Window::requests(1000), Sampling::Off);
        let mem = m.register(
            "memory".into(),
            TierPolicy::Memory {
                capacity: 100,
                options: one_shard(),
            },
        ) as u8;
        let redis = m.register("redis".into(), TierPolicy::Lru { capacity: None }) as u8;
        let now = Instant::now();
        // Ten 100-byte keys in a loop through a 100-byte memory tier: each
        // misses memory (no disk sized); the remote tier hits 3 in 4.
        for i in 0..40u64 {
            m.apply(Event::new(mem, Kind::Miss, i % 10, 100), now);
            let kind = if i % 4 == 0 { Kind::Miss } else { Kind::Hit };
            m.apply(Event::new(redis, kind, i % 10, 100), now);
        }
        let (r, reach) = m.report(now);
        assert_eq!(reach.cumulative, [40.0]);
        assert_eq!(reach.below, 0.25);
        assert_eq!(r.compiles[0].compiles, 10.0);
    }

    #[test]
    fn an_unbounded_tier_reports_its_working_set_only() {
        let mut m = Models::new(vec![0.5, 1.0], Window::requests(100), Sampling::Off);
        let t = m.register("redis".into(), TierPolicy::Lru { capacity: None }) as u8;
        let now = Instant::now();
        for i in 0..50u64 {
            m.apply(Event::new(t, Kind::Hit, i % 5, 10), now);
        }
        let r = m.report(now).0;
        assert!(r.tiers[0].points.is_empty());
        assert_eq!(r.tiers[0].working_set_bytes, 50);
        assert!(r.compiles.is_empty());
    }
}
