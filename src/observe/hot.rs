//! Per-thread counters for the memory-hit path.
//!
//! A memory hit costs about 20-30 ns (BENCHMARKS.md); one atomic read-modify-write (what a
//! `metrics` counter handle does, twice with the Prometheus exporter's
//! generational storage) costs 5-10 ns, and more when two threads fight
//! over its cache line. So the hit path counts into a block of counters
//! owned by the current thread, with a plain load and store (no `lock`
//! prefix, no cache-line sharing); only the owner thread writes its block.
//!
//! The totals reach the `metrics` recorder by [`publish`], which sums every
//! thread's block and adds what was not published yet to the counter
//! handles with `increment` (never `absolute`, which is `fetch_max` in
//! `metrics` 0.24: two spies with the same labels, or a spy rebuilt under
//! the same names, would report the larger count instead of the sum). It runs on a background thread every
//! [`PUBLISH_INTERVAL`], and whenever asked: [`crate::observe::flush`] is
//! called by tierscope's Prometheus render path and by tests that read exact
//! values.
//!
//! Each instrumented tier owns one slot (an index into every block). There
//! are [`SLOTS`] of them; tiers beyond that count straight into their handles.

use std::{
    cell::Cell,
    sync::{
        OnceLock,
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

/// One thread's counters. Blocks live for the whole process: when a thread
/// exits its block goes back to a pool and the next new thread continues
/// counting in it, so the sum over all blocks is always the total and no
/// count is ever moved or lost. Only the owning thread writes a block.
struct Block {
    /// Per slot: hits, read bytes.
    values: [[AtomicU64; PER_SLOT]; SLOTS],
}

impl Block {
    fn new() -> Self {
        Block {
            values: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

struct SlotState {
    /// The handles totals are published to, while a tier owns the slot.
    handles: Option<[Counter; PER_SLOT]>,
    /// The slot's totals (over every block) already published, or counted
    /// by earlier owners of the slot: only the difference is added.
    published: [u64; PER_SLOT],
}

struct Registry {
    blocks: Vec<&'static Block>,
    free_blocks: Vec<&'static Block>,
    slots: Vec<SlotState>,
}

impl Registry {
    fn total(&self, slot: usize, which: usize) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.values[slot][which].load(Relaxed))
            .fold(0, u64::wrapping_add)
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
            blocks: Vec::new(),
            free_blocks: Vec::new(),
            slots: Vec::new(),
        })
    })
}

/// Returns this thread's block to the pool when the thread exits.
struct Release(&'static Block);

impl Drop for Release {
    fn drop(&mut self) {
        BLOCK.with(|b| b.set(None));
        registry().lock().free_blocks.push(self.0);
    }
}

thread_local! {
    /// Const-initialized and without a destructor: reading it is one
    /// thread-local load, no lazy-initialization check.
    static BLOCK: Cell<Option<&'static Block>> = const { Cell::new(None) };
    static RELEASE: Cell<Option<Release>> = const { Cell::new(None) };
}

#[cold]
fn adopt_block() -> Option<&'static Block> {
    let block = {
        let mut reg = registry().lock();
        match reg.free_blocks.pop() {
            Some(b) => b,
            None => {
                // Leaked on purpose: at most one block per thread alive at
                // once (pooled after exit), 2 KiB each.
                let b: &'static Block = Box::leak(Box::new(Block::new()));
                reg.blocks.push(b);
                b
            }
        }
    };
    // If the thread is already tearing down its locals, give it back.
    if RELEASE.try_with(|r| r.set(Some(Release(block)))).is_err() {
        registry().lock().free_blocks.push(block);
        return None;
    }
    BLOCK.with(|b| b.set(Some(block)));
    Some(block)
}

#[inline]
fn block() -> Option<&'static Block> {
    BLOCK.with(Cell::get).or_else(adopt_block)
}

/// One operation on a tier's per-thread counters: started before the
/// lookup (it decides whether to time it), finished by [`Probe::hit`].
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    cells: Option<&'static [AtomicU64; PER_SLOT]>,
    hits: u64,
    sampled: bool,
    owner: &'a HotCounters,
}

impl Probe<'_> {
    /// Whether this operation should be timed.
    #[inline]
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Count one hit of `bytes` (0 when unknown).
    #[inline]
    pub fn hit(self, bytes: u64) {
        match self.cells {
            Some([hits, read]) => {
                // Owner-only writes: plain loads and stores, no
                // read-modify-write. `hits` was read by `probe`, on this
                // thread, and nothing else writes it.
                hits.store(self.hits.wrapping_add(1), Relaxed);
                read.store(read.load(Relaxed).wrapping_add(bytes), Relaxed);
            }
            None => {
                self.owner.handles[0].increment(1);
                self.owner.handles[1].increment(bytes);
            }
        }
    }
}

/// One tier's slot: hits and read bytes counted per thread.
pub struct HotCounters {
    slot: Option<usize>,
    /// Used directly when no slot was free.
    handles: [Counter; PER_SLOT],
}

impl std::fmt::Debug for HotCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCounters")
            .field("slot", &self.slot)
            .finish()
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
                    published: [0; PER_SLOT],
                });
                Some(reg.slots.len() - 1)
            }
            None => None,
        };
        if let Some(i) = slot {
            let published = [reg.total(i, 0), reg.total(i, 1)];
            reg.slots[i] = SlotState {
                handles: Some(handles.clone()),
                published,
            };
        }
        HotCounters { slot, handles }
    }

    /// Start one operation. It is sampled (to be timed) when this thread's
    /// hit count for the tier is a multiple of `mask + 1`; `mask` is a power
    /// of two minus one.
    #[inline]
    pub fn probe(&self, mask: u64) -> Probe<'_> {
        if let (Some(slot), Some(block)) = (self.slot, block()) {
            let cells = &block.values[slot];
            let hits = cells[0].load(Relaxed);
            return Probe {
                cells: Some(cells),
                hits,
                sampled: hits & mask == 0,
                owner: self,
            };
        }
        Probe {
            cells: None,
            hits: 0,
            sampled: false,
            owner: self,
        }
    }
}

impl Drop for HotCounters {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut reg = registry().lock();
            publish_slot(&mut reg, i);
            reg.slots[i].handles = None;
        }
    }
}

fn publish_slot(reg: &mut Registry, i: usize) {
    let totals = [reg.total(i, 0), reg.total(i, 1)];
    let state = &mut reg.slots[i];
    if let Some(handles) = &state.handles {
        for (which, h) in handles.iter().enumerate() {
            let delta = totals[which].wrapping_sub(state.published[which]);
            if delta > 0 {
                h.increment(delta);
            }
            state.published[which] = totals[which];
        }
    }
}

/// Publish every tier's per-thread counts to its counter handles now.
pub fn publish() {
    let mut reg = registry().lock();
    for i in 0..reg.slots.len() {
        publish_slot(&mut reg, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use std::collections::HashMap;

    fn counters(snap: &Snapshotter) -> HashMap<String, u64> {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(k, _, _, v)| match v {
                DebugValue::Counter(c) => Some((k.key().name().to_string(), c)),
                _ => None,
            })
            .collect()
    }

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
        let hot = std::sync::Arc::new(hot);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hot = std::sync::Arc::clone(&hot);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        hot.probe(0).hit(10);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..5 {
            hot.probe(0).hit(1);
        }

        publish();

        let values = counters(&snap);
        assert_eq!(values["hot_test_hits"], 4005);
        assert_eq!(values["hot_test_bytes"], 40005);
    }

    #[test]
    fn two_tiers_with_the_same_names_and_a_rebuild_add_up() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let make = || {
            metrics::with_local_recorder(&recorder, || {
                HotCounters::new(
                    metrics::counter!("same_hits"),
                    metrics::counter!("same_bytes"),
                )
            })
        };
        let (a, b) = (make(), make());
        for _ in 0..10 {
            a.probe(0).hit(1);
        }
        for _ in 0..5 {
            b.probe(0).hit(1);
        }
        publish();
        publish(); // publishing twice adds nothing
        assert_eq!(counters(&snap)["same_hits"], 15);
        // A rebuild under the same names (a configuration reload).
        drop(a);
        let c = make();
        for _ in 0..7 {
            c.probe(0).hit(1);
        }
        publish();
        // The debugging recorder's snapshot drains counters: 15 were read.
        assert_eq!(counters(&snap)["same_hits"], 7);
        drop((b, c));
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let first = metrics::with_local_recorder(&recorder, || {
            HotCounters::new(metrics::counter!("reuse_a"), metrics::counter!("reuse_ab"))
        });
        first.probe(0).hit(3);
        drop(first);
        let second = metrics::with_local_recorder(&recorder, || {
            HotCounters::new(metrics::counter!("reuse_b"), metrics::counter!("reuse_bb"))
        });
        second.probe(0).hit(7);
        publish();
        let values = counters(&snap);
        assert_eq!(values["reuse_a"], 1);
        assert_eq!(values["reuse_b"], 1);
        assert_eq!(values["reuse_bb"], 7);
    }
}
