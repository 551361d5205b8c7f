//! Per-thread hit counters: how an instrumented tier counts its hits and
//! read bytes without an atomic read-modify-write.
//!
//! A memory hit costs tens of nanoseconds (BENCHMARKS.md), and one atomic
//! read-modify-write (what a `metrics` counter handle does, twice with the
//! Prometheus exporter's generational storage) would be a large share of
//! it, more when two threads fight over its cache line. So each instrumented tier owns a
//! [`HitCounters`]: one pair of counters (hits, read bytes) per thread, in
//! a [`thread_local::ThreadLocal`], padded off the other threads' cache
//! lines. Only the thread that owns a pair writes it, with a plain load
//! and store.
//!
//! **Publishing.** [`HitCounters::publish`] sums every thread's pair and
//! adds what was not published yet to the tier's counter handles with
//! `increment` (never `absolute`, which is `fetch_max` in `metrics` 0.24:
//! two spies with the same labels, or a spy rebuilt under the same names,
//! would report the larger count instead of the sum). It runs:
//! - for every live tier on [`crate::observe::flush`], which exporters
//!   call on scrape and on the timer of the [`crate::observe::Publisher`]
//!   they own (tests call it before reading exact values);
//! - when the tier is dropped, for what is still pending.
//!
//! **Threads that exit.** `ThreadLocal` keeps an exited thread's pair, and
//! its thread id (so the pair) goes to a later new thread, which goes on
//! counting in it; the id is released under a lock the new thread takes,
//! so its plain loads see the last stores. The sum over the pairs is
//! therefore always the tier's total: no count is lost or moved. A tier
//! holds one pair (280 bytes with the padding of the ring slot below) per
//! thread id, that is at most as many as the most threads ever alive at
//! once.
//!
//! **Live sizing.** A sized tier (`spy.with_sizing(..)`) keeps each
//! thread's ring of sizing events in that thread's slot here, beside the
//! pair: the hit has already found the slot, so recording the event costs
//! no second thread-local lookup. A thread whose slot was made before the
//! tier was sized records in a ring of its own instead.
//!
//! **Reaching every tier.** [`crate::observe::flush`] takes no argument,
//! so the tiers' counters must be found from somewhere process-wide: a
//! list of *weak* references to each live tier's [`HitCounters`]. An entry
//! is added when a tier is built and removed when it is dropped (or, if the
//! list is busy then, at the next build or flush), so the list holds live
//! tiers only; it has no size limit and keeps no tier alive. Nothing else
//! here is process-wide.

use std::{
    marker::PhantomData,
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use metrics::Counter;
use parking_lot::Mutex;
use thread_local::ThreadLocal;

use super::ring::{Kind, Ring};

/// One thread's counts for one tier, and (once the tier is sized, see
/// [`HitCounters::attach_sizing`]) its ring of sizing events, beside the
/// counts the hit already writes: one thread-local lookup serves both.
///
/// The entries of a `ThreadLocal` are contiguous: the ring slot's padding
/// (there, sized or not: `Option<Ring>` is the ring's size) keeps two
/// threads' counts more than two cache lines apart, so that two threads
/// counting never write the same line. (Padding rather than
/// `#[repr(align(64))]`, which makes every caller realign its stack for
/// the value `ThreadLocal::get_or` builds.)
#[repr(C)]
struct ThreadCounts {
    hits: AtomicU64,
    read_bytes: AtomicU64,
    /// Made with the counts when the tier is sized by then (threads that
    /// counted before use [`HitCounters::late`]).
    ring: Option<Ring>,
}

impl ThreadCounts {
    fn new(sizing: Option<&SpySizing>) -> Self {
        ThreadCounts {
            hits: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            ring: sizing.map(|s| Ring::for_tier(s.buffer, s.tier)),
        }
    }
}

/// A sized tier's place in its live sizing: the tier's index in the models,
/// the events each thread's ring holds, and where to count, when the tier
/// goes, the events its rings dropped or still held.
#[derive(Debug, Clone)]
pub(crate) struct SpySizing {
    pub(crate) tier: u8,
    pub(crate) buffer: usize,
    pub(crate) lost_with_spies: Arc<AtomicU64>,
}

/// One instrumented tier's hits and read bytes, counted per thread and
/// published to two `metrics` counters (see the [module docs](self)).
pub struct HitCounters {
    per_thread: ThreadLocal<ThreadCounts>,
    /// Set once when live sizing takes this tier's events from here.
    sizing: OnceLock<SpySizing>,
    /// The rings of threads whose counts predate the sizing.
    late: ThreadLocal<Ring>,
    /// The totals (hits, read bytes) already added to the handles. The
    /// lock also keeps two publishers from adding the same delta twice.
    published: Mutex<[u64; 2]>,
    hits: Counter,
    read_bytes: Counter,
}

impl std::fmt::Debug for HitCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [hits, read_bytes] = *self.published.lock();
        f.debug_struct("HitCounters")
            .field("published_hits", &hits)
            .field("published_read_bytes", &read_bytes)
            .finish_non_exhaustive()
    }
}

/// The live tiers' counters, weakly: what [`publish_all`] walks.
static LIVE: Mutex<Vec<Weak<HitCounters>>> = Mutex::new(Vec::new());

impl HitCounters {
    /// Counters publishing to `hits` and `read_bytes`, reachable by
    /// [`crate::observe::flush`] for as long as they live.
    pub fn new(hits: Counter, read_bytes: Counter) -> Arc<Self> {
        let counters = Arc::new(HitCounters {
            per_thread: ThreadLocal::new(),
            sizing: OnceLock::new(),
            late: ThreadLocal::new(),
            published: Mutex::new([0; 2]),
            hits,
            read_bytes,
        });
        let mut live = LIVE.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&counters));
        counters
    }

    /// The current thread's counters for this tier.
    #[inline]
    pub fn local(&self) -> LocalHits<'_> {
        LocalHits {
            counts: self
                .per_thread
                .get_or(|| ThreadCounts::new(self.sizing.get())),
            owner: self,
            _this_thread_only: PhantomData,
        }
    }

    /// From now on, record this tier's sizing events (its hits, misses and
    /// saves) in a ring per thread kept beside the thread's counts, for
    /// live sizing to drain ([`Self::for_each_ring`]). The hit path then
    /// finds the ring with the lookup it already does for its counts.
    /// False, and nothing changes, if this tier already records for a
    /// sizing.
    pub(crate) fn attach_sizing(&self, sizing: SpySizing) -> bool {
        self.sizing.set(sizing).is_ok()
    }

    /// Whether sizing events are recorded here.
    pub(crate) fn sized(&self) -> bool {
        self.sizing.get().is_some()
    }

    /// Every thread's ring of sizing events (the threads that recorded one).
    pub(crate) fn for_each_ring(&self, mut f: impl FnMut(&Ring)) {
        for counts in self.per_thread.iter() {
            if let Some(ring) = &counts.ring {
                f(ring);
            }
        }
        for ring in self.late.iter() {
            f(ring);
        }
    }

    /// Add the hits and read bytes counted since the last publish to the
    /// counter handles.
    pub fn publish(&self) {
        let mut published = self.published.lock();
        let (mut hits, mut read_bytes) = (0u64, 0u64);
        for counts in self.per_thread.iter() {
            hits = hits.wrapping_add(counts.hits.load(Relaxed));
            read_bytes = read_bytes.wrapping_add(counts.read_bytes.load(Relaxed));
        }
        // Each thread's counts only grow, so each sum does too.
        let [hits_before, bytes_before] = *published;
        if hits != hits_before {
            self.hits.increment(hits.wrapping_sub(hits_before));
        }
        if read_bytes != bytes_before {
            self.read_bytes
                .increment(read_bytes.wrapping_sub(bytes_before));
        }
        *published = [hits, read_bytes];
    }
}

impl Drop for HitCounters {
    fn drop(&mut self) {
        self.publish();
        // The sizing counts drops by reading the rings; these go now.
        if let Some(s) = self.sizing.get() {
            let mut lost = 0;
            self.for_each_ring(|ring| lost += ring.lost_if_gone());
            s.lost_with_spies.fetch_add(lost, Relaxed);
        }
        // This tier's entry no longer upgrades: remove it (and any other
        // that went the same way). When `publish_all` holds the list (it
        // may be running this very drop), the next `new` or `publish_all`
        // removes it instead.
        if let Some(mut live) = LIVE.try_lock() {
            live.retain(|w| w.strong_count() > 0);
        }
    }
}

/// Publish every live tier's pending counts now.
///
/// The list stays locked throughout, so that a concurrent call returns
/// only once this one is done, including the publish of a tier whose last
/// reference this call held (and dropped).
pub fn publish_all() {
    let mut live = LIVE.lock();
    live.retain(|w| w.strong_count() > 0);
    for counters in live.iter().filter_map(Weak::upgrade) {
        counters.publish();
    }
}

/// The current thread's counters of one tier, from [`HitCounters::local`].
/// Not `Send`: it must be used on the thread that took it, where nothing
/// else writes these counters.
pub struct LocalHits<'a> {
    counts: &'a ThreadCounts,
    owner: &'a HitCounters,
    _this_thread_only: PhantomData<*const ()>,
}

impl LocalHits<'_> {
    /// Whether this thread's hit count is a multiple of `mask + 1` (`mask`
    /// is a power of two minus one): the hit count doubles as the tick
    /// that picks which hits to time.
    #[inline]
    pub fn sampled(&self, mask: u64) -> bool {
        self.counts.hits.load(Relaxed) & mask == 0
    }

    /// Count one hit of `bytes` (0 when unknown).
    #[inline]
    pub fn hit(&self, bytes: u64) {
        // Only this thread writes these counters: a plain load and store,
        // no read-modify-write.
        let c = self.counts;
        c.hits.store(c.hits.load(Relaxed).wrapping_add(1), Relaxed);
        c.read_bytes
            .store(c.read_bytes.load(Relaxed).wrapping_add(bytes), Relaxed);
    }

    /// If the tier is sized, hand one sizing event (`key` is called only
    /// then) to this thread's ring: a full ring drops and counts it.
    // Always inlined (its rare branch is out of line): on the memory-hit
    // path a call here would be paid by every hit, sized or not.
    #[inline(always)]
    pub(crate) fn record(&self, kind: Kind, key: impl FnOnce() -> u64, bytes: u64) {
        if let Some(ring) = &self.counts.ring {
            ring.push_kind(kind, key(), bytes);
        } else if let Some(s) = self.owner.sizing.get() {
            self.owner.record_late(s, kind, key(), bytes);
        }
    }
}

impl HitCounters {
    /// A sizing event of a thread whose counts were made before the tier
    /// was sized: into a ring of its own, made the first time.
    #[cold]
    #[inline(never)]
    fn record_late(&self, s: &SpySizing, kind: Kind, key: u64, bytes: u64) {
        self.late
            .get_or(|| Ring::for_tier(s.buffer, s.tier))
            .push_kind(kind, key, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use std::collections::HashMap;

    /// `publish_all` publishes every tier of the process: one test at a
    /// time, so that none publishes (or holds) another's counters midway.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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

    fn hit_counters(recorder: &DebuggingRecorder, name: &str) -> Arc<HitCounters> {
        metrics::with_local_recorder(recorder, || {
            HitCounters::new(
                metrics::counter!(format!("{name}_hits")),
                metrics::counter!(format!("{name}_bytes")),
            )
        })
    }

    fn hit(counters: &HitCounters, n: u64, bytes: u64) {
        for _ in 0..n {
            counters.local().hit(bytes);
        }
    }

    #[test]
    fn counts_of_threads_that_exited_are_kept_and_reused_ids_go_on() {
        let _serial = ONE_AT_A_TIME.lock();
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let hot = hit_counters(&recorder, "exited");
        // Two rounds of threads: the second reuses the first's ids (and
        // pairs), and keeps counting in them.
        for _round in 0..2 {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let hot = Arc::clone(&hot);
                    std::thread::spawn(move || hit(&hot, 1000, 10))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        hit(&hot, 5, 1);

        publish_all();

        let values = counters(&snap);
        assert_eq!(values["exited_hits"], 8005);
        assert_eq!(values["exited_bytes"], 80005);
    }

    #[test]
    fn two_tiers_with_the_same_names_and_a_rebuild_add_up() {
        let _serial = ONE_AT_A_TIME.lock();
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let (a, b) = (
            hit_counters(&recorder, "same"),
            hit_counters(&recorder, "same"),
        );
        hit(&a, 10, 1);
        hit(&b, 5, 1);
        publish_all();
        publish_all(); // publishing twice adds nothing
        assert_eq!(counters(&snap)["same_hits"], 15);
        // A rebuild under the same names (a configuration reload).
        drop(a);
        let c = hit_counters(&recorder, "same");
        hit(&c, 7, 1);
        publish_all();
        // The debugging recorder's snapshot drains counters: 15 were read.
        assert_eq!(counters(&snap)["same_hits"], 7);
        drop((b, c));
    }

    #[test]
    fn a_dropped_tier_publishes_what_is_pending_and_leaves_the_list() {
        let _serial = ONE_AT_A_TIME.lock();
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let gone = hit_counters(&recorder, "dropped");
        let from_thread = Arc::clone(&gone);
        std::thread::spawn(move || hit(&from_thread, 3, 2))
            .join()
            .unwrap();
        hit(&gone, 4, 2);
        let weak = Arc::downgrade(&gone);
        drop(gone);

        let values = counters(&snap);
        assert_eq!(values["dropped_hits"], 7);
        assert_eq!(values["dropped_bytes"], 14);
        publish_all();
        assert!(!LIVE.lock().iter().any(|w| w.ptr_eq(&weak)));
    }

    #[test]
    fn the_thread_count_is_the_sampling_tick() {
        let _serial = ONE_AT_A_TIME.lock();
        let recorder = DebuggingRecorder::new();
        let hot = hit_counters(&recorder, "tick");
        let mut sampled = 0;
        for _ in 0..64 {
            let local = hot.local();
            sampled += usize::from(local.sampled(15));
            local.hit(0);
        }
        assert_eq!(sampled, 4);
    }
}
