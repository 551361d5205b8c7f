//! Per-thread counters for the memory-hit path.
//!
//! A memory hit costs about 35 ns; one atomic read-modify-write (what a
//! `metrics` counter handle does, twice with the Prometheus exporter's
//! generational storage) costs 5-10 ns, and more when two threads fight
//! over its cache line. So the hit path counts into a block of counters
//! owned by the current thread, with a plain load and store (no `lock`
//! prefix, no cache-line sharing); only the owner thread writes its block.
//!
//! The totals reach the `metrics` recorder by [`publish`], which sums every
//! thread's block (plus what exited threads left) and sets the counter
//! handles with `absolute`. It runs on a background thread every
//! [`PUBLISH_INTERVAL`], and whenever asked: [`crate::observe::flush`] is
//! called by tierscope's Prometheus render path and by tests that read exact
//! values.
//!
//! Each instrumented tier owns one slot (an index into every block). There
//! are [`SLOTS`] of them; tiers beyond that count straight into their handles.

use std::{
    cell::Cell,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use metrics::Counter;
use parking_lot::Mutex;

/// Instrumented tiers that can have a per-thread slot at once.
pub const SLOTS: usize = 128;

/// How often the background publisher folds per-thread counts into the
/// recorder.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Counters per slot: hits and read bytes.
const PER_SLOT: usize = 2;

struct Block {
    values: [AtomicU64; SLOTS * PER_SLOT],
}

impl Block {
    fn new() -> Self {
        Block {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

struct SlotState {
    /// The handles totals are published to, while a tier owns the slot.
    handles: Option<[Counter; PER_SLOT]>,
    /// Counts that belonged to earlier owners of the slot.
    base: [u64; PER_SLOT],
}

struct Registry {
    live: Vec<Arc<Block>>,
    retired: Vec<u64>,
    slots: Vec<SlotState>,
}

impl Registry {
    fn total(&self, slot: usize, which: usize) -> u64 {
        let i = slot * PER_SLOT + which;
        self.live
            .iter()
            .map(|b| b.values[i].load(Relaxed))
            .fold(self.retired[i], u64::wrapping_add)
    }
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        std::thread::Builder::new()
            .name("tierscope-publish".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(PUBLISH_INTERVAL);
                    publish();
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no background metric publisher"))
            .ok();
        Mutex::new(Registry {
            live: Vec::new(),
            retired: vec![0; SLOTS * PER_SLOT],
            slots: Vec::new(),
        })
    })
}

/// This thread's block; folded into `retired` when the thread exits.
struct Local {
    block: Arc<Block>,
    tick: Cell<u32>,
}

impl Local {
    fn register() -> Local {
        let block = Arc::new(Block::new());
        registry().lock().live.push(Arc::clone(&block));
        Local {
            block,
            tick: Cell::new(0),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut reg = registry().lock();
        for (r, v) in reg.retired.iter_mut().zip(self.block.values.iter()) {
            *r = r.wrapping_add(v.load(Relaxed));
        }
        reg.live.retain(|b| !Arc::ptr_eq(b, &self.block));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// One tier's slot: hits and read bytes counted per thread.
pub struct HotCounters {
    slot: Option<usize>,
    /// Used directly when no slot was free.
    handles: [Counter; PER_SLOT],
}

impl std::fmt::Debug for HotCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCounters").field("slot", &self.slot).finish()
    }
}

impl HotCounters {
    /// Take a slot publishing to `hits` and `read_bytes`.
    pub fn new(hits: Counter, read_bytes: Counter) -> Self {
        let handles = [hits, read_bytes];
        let mut reg = registry().lock();
        let free = reg.slots.iter().position(|s| s.handles.is_none());
        let slot = match free {
            Some(i) => Some(i),
            None if reg.slots.len() < SLOTS => {
                reg.slots.push(SlotState {
                    handles: None,
                    base: [0; PER_SLOT],
                });
                Some(reg.slots.len() - 1)
            }
            None => None,
        };
        if let Some(i) = slot {
            let base = [reg.total(i, 0), reg.total(i, 1)];
            reg.slots[i] = SlotState {
                handles: Some(handles.clone()),
                base,
            };
        }
        HotCounters { slot, handles }
    }

    /// Count one hit of `bytes` (0 when unknown). Returns a per-thread
    /// tick, for sampling.
    #[inline]
    pub fn hit(&self, bytes: u64) -> u32 {
        let Some(slot) = self.slot else {
            self.handles[0].increment(1);
            self.handles[1].increment(bytes);
            return 0;
        };
        LOCAL
            .try_with(|local| {
                let hits = &local.block.values[slot * PER_SLOT];
                hits.store(hits.load(Relaxed).wrapping_add(1), Relaxed);
                if bytes != 0 {
                    let b = &local.block.values[slot * PER_SLOT + 1];
                    b.store(b.load(Relaxed).wrapping_add(bytes), Relaxed);
                }
                let t = local.tick.get().wrapping_add(1);
                local.tick.set(t);
                t
            })
            .unwrap_or_else(|_| {
                // The thread is exiting: count directly.
                self.handles[0].increment(1);
                self.handles[1].increment(bytes);
                0
            })
    }
}

impl Drop for HotCounters {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut reg = registry().lock();
            publish_slot(&reg, i);
            reg.slots[i].handles = None;
        }
    }
}

fn publish_slot(reg: &Registry, i: usize) {
    let state = &reg.slots[i];
    if let Some(handles) = &state.handles {
        for (which, h) in handles.iter().enumerate() {
            h.absolute(reg.total(i, which).wrapping_sub(state.base[which]));
        }
    }
}

/// Publish every tier's per-thread counts to its counter handles now.
pub fn publish() {
    let reg = registry().lock();
    for i in 0..reg.slots.len() {
        publish_slot(&reg, i);
    }
}

/// A per-thread tick for sampling, without counting anything.
#[inline]
pub fn tick() -> u32 {
    LOCAL
        .try_with(|local| {
            let t = local.tick.get().wrapping_add(1);
            local.tick.set(t);
            t
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn counts_from_many_threads_including_exited_ones_add_up() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let hot = metrics::with_local_recorder(&recorder, || {
            HotCounters::new(
                metrics::counter!("hot_test_hits"),
                metrics::counter!("hot_test_bytes"),
            )
        });
        let hot = Arc::new(hot);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hot = Arc::clone(&hot);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        hot.hit(10);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..5 {
            hot.hit(1);
        }

        publish();

        let values: std::collections::HashMap<_, _> = snap
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(k, _, _, v)| match v {
                DebugValue::Counter(c) => Some((k.key().name().to_string(), c)),
                _ => None,
            })
            .collect();
        assert_eq!(values["hot_test_hits"], 4005);
        assert_eq!(values["hot_test_bytes"], 40005);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let first = metrics::with_local_recorder(&recorder, || {
            HotCounters::new(metrics::counter!("reuse_a"), metrics::counter!("reuse_ab"))
        });
        first.hit(3);
        drop(first);
        let second = metrics::with_local_recorder(&recorder, || {
            HotCounters::new(metrics::counter!("reuse_b"), metrics::counter!("reuse_bb"))
        });
        second.hit(7);
        publish();
        let values: std::collections::HashMap<_, _> = snap
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(k, _, _, v)| match v {
                DebugValue::Counter(c) => Some((k.key().name().to_string(), c)),
                _ => None,
            })
            .collect();
        assert_eq!(values["reuse_a"], 1);
        assert_eq!(values["reuse_b"], 1);
        assert_eq!(values["reuse_bb"], 7);
    }
}
