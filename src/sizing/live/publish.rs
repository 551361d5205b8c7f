//! Publishing the report as metrics: per sized tier its gauges (hit
//! ratios at each scale, NaN for an empty window; the working set, the
//! sampling rate, the window's requests), and the counters that take
//! increments (dropped events, projected compiles).

use metrics::Gauge;

use super::State;

/// Metric handles of one sized tier.
pub(super) struct TierHandles {
    pub(super) hit_ratio: Vec<Gauge>,
    pub(super) byte_hit_ratio: Vec<Gauge>,
    pub(super) capacity: Vec<Gauge>,
    pub(super) working_set: Gauge,
    pub(super) sampling_rate: Gauge,
    pub(super) window_requests: Gauge,
}

#[derive(Default)]
pub(super) struct Published {
    dropped: u64,
    /// Per memory scale: requests reaching below the bounded tiers, as
    /// last read; projected compiles so far; and what the counter has.
    reach: Vec<f64>,
    compiles: Vec<f64>,
    counted: Vec<u64>,
}

impl State {
    pub(super) fn publish(&self) {
        let (report, reach) = self.report();
        let handles = self.handles.lock();
        for (t, h) in report.tiers.iter().zip(handles.iter()) {
            for (i, p) in t.points.iter().enumerate() {
                if let (Some(a), Some(b), Some(c)) = (
                    h.hit_ratio.get(i),
                    h.byte_hit_ratio.get(i),
                    h.capacity.get(i),
                ) {
                    a.set(p.hit_ratio);
                    b.set(p.byte_hit_ratio);
                    c.set(p.capacity as f64);
                }
            }
            h.working_set.set(t.working_set_bytes as f64);
            h.sampling_rate.set(t.sampling_rate);
            h.window_requests.set(t.window_requests as f64);
        }
        drop(handles);
        let mut published = self.published.lock();
        if report.dropped > published.dropped {
            self.dropped.increment(report.dropped - published.dropped);
            published.dropped = report.dropped;
        }
        // Counters take increments: what reached below the bounded tiers
        // since the last publish, times the share an unbounded tier below
        // misses now.
        let n = reach.cumulative.len();
        published.reach.resize(n, 0.0);
        published.compiles.resize(n, 0.0);
        published.counted.resize(n, 0);
        for (i, &c) in reach.cumulative.iter().enumerate() {
            let delta = (c - published.reach[i]).max(0.0);
            published.reach[i] = published.reach[i].max(c);
            published.compiles[i] += delta * reach.below;
            let whole = published.compiles[i].round() as u64;
            if whole > published.counted[i]
                && let Some(counter) = self.compiles.get(i)
            {
                counter.increment(whole - published.counted[i]);
                published.counted[i] = whole;
            }
        }
    }
}
