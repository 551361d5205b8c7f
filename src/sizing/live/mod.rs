//! Live sizing: what-if hit ratios of each tier of a running stack, at
//! other sizes, while traffic runs.
//!
//! A `LiveSizing` is one stack's set of models and the background worker
//! that feeds them. Each tier to model is wrapped in a `SizingTier`
//! (`tier.with_sizing(&sizing)`, see `SizingExt`), which sees exactly the
//! lookups that tier sees: the memory tier every lookup, the disk tier the
//! memory tier's misses, and so on. Each tier is modelled under its own
//! policy (`TierPolicy`) at its current capacity times each scale of a
//! grid (default 0.25, 0.5, 1, 2, 4):
//! - a memory tier by shadows of its quick_cache policy
//!   (`memory`); with a bounded tier sized below
//!   it, the shadows' misses also feed an LRU of that tier's capacity
//!   (`stack`), which gives the stack's projected
//!   compiles at each memory scale;
//! - a bounded byte tier (disk) by exact LRU stack distances
//!   (`lru`);
//! - an unbounded tier (Redis) by its working set only.
//!
//! **Off the hit path.** A lookup hands (tier, key id, bytes, hit or miss)
//! to a fixed ring owned by the calling thread (allocated once per thread):
//! three stores, no lock, no read-modify-write, no allocation. A sized spy
//! (`memory.instrumented(..).with_sizing(..)`) records its tier's events
//! itself, in a ring kept beside the per-thread hit counts it already
//! updates, so the hit finds both with one thread-local lookup; other
//! tiers' events go to rings the sizing keeps. A full ring drops the event
//! and counts it (`tierscope_sizing_dropped_total`); the hit never waits.
//! The worker thread drains the rings, updates the models and publishes
//! the metrics (`tierscope_sizing_*`, see docs/metrics.md) every
//! `SizingOptions::publish_every`.
//!
//! **Window.** Models keep their state for the life of the stack (a shadow
//! is warm, as the tier is), but what they count is read over a recent
//! window (`Window`): the last `requests` lookups of each tier, or the
//! last `max_age`, whichever is shorter, so a change in traffic shows
//! within one window. `max_age` holds with or without new lookups: a tier
//! that goes idle has an empty window once `max_age` has passed
//! (`tierscope_sizing_window_requests` 0, no working set), and its
//! what-if ratios are then NaN, in the report and in the gauges, so that
//! neither a dashboard nor an alert reads the last busy window's number
//! as current (a rule comparing NaN is false; guard recorded series with
//! `tierscope_sizing_window_requests > 0` to get no sample instead).
//!
//! **Memory.** Past `SizingOptions::sampling`'s key count (default 16,384
//! keys per tier) the models sample keys spatially (SHARDS), so their
//! memory is bounded whatever the key count; the rate in use is exported.
//! Each thread that records owns a ring of `SizingOptions::buffer`
//! events of 16 bytes per sized spy it calls (plus one for the other sized
//! tiers), made the first time it records there.
//!
//! **Lifetime.** The worker stops, after a last drain and publish, when the
//! last clone of the `LiveSizing` goes: the tiers hold clones, so when
//! the stack (and any handle you kept) is dropped. No thread outlives it.
//!
//! ```
//! use tierscope::{FileSystemCache, InstrumentExt, MemoryCache, ModuleCache};
//! use tierscope::sizing::{LiveSizing, SizingExt, SizingOptions};
//! # let dir = tempfile::tempdir().unwrap();
//! let sizing = LiveSizing::new("modules", SizingOptions::default());
//! let cache = MemoryCache::new(64 << 20)
//!     .instrumented("modules", "memory")
//!     .with_sizing(&sizing)
//!     .with_fallback(
//!         FileSystemCache::open(dir.path(), 1 << 30)
//!             .unwrap()
//!             .instrumented("modules", "disk")
//!             .with_sizing(&sizing),
//!     );
//! // ... serve traffic through `cache` ...
//! let report = sizing.report(); // also exported as tierscope_sizing_* metrics
//! assert_eq!(report.tiers.len(), 2);
//! assert_eq!(report.tier("memory").unwrap().points.len(), 5);
//! drop(cache);
//! drop(sizing); // the worker stops here
//! ```

mod model;
mod shadow;
mod publish;
mod report;
mod tier;
mod window;

use std::{
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use thread_local::ThreadLocal;

pub use model::{CompilePoint, ScalePoint, SizingReport, TierReport};
pub use tier::{Sizable, SizingExt, SizingTier};

use self::{
    model::{Models, Reach},
    publish::{Published, TierHandles},
};
use crate::{
    names::{self, label},
    recording::{
        counters::{HitCounters, SpySizing},
        ring::{self, Event, Ring},
    },
    sizing::{memory::ShadowOptions, sampling::Sampling},
};

/// The policy a tier is modelled under, with its current capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TierPolicy {
    /// A [`MemoryCache`](crate::MemoryCache) (quick_cache), modelled by
    /// shadows of its own policy with the tier's options.
    Memory {
        /// The tier's bound, bytes.
        capacity: u64,
        /// The tier's shard and hot-queue options.
        options: ShadowOptions,
    },
    /// A byte-bounded LRU tier ([`FileSystemCache`](crate::FileSystemCache)),
    /// or an unbounded one (`capacity: None`, the Redis tier): working set
    /// only.
    Lru {
        /// The tier's bound, bytes; `None` when unbounded.
        capacity: Option<u64>,
    },
}

impl TierPolicy {
    /// The tier's current capacity, if bounded.
    pub fn capacity(&self) -> Option<u64> {
        match *self {
            TierPolicy::Memory { capacity, .. } => Some(capacity),
            TierPolicy::Lru { capacity } => capacity,
        }
    }
}

/// The recent window results are read over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The last this many lookups of each tier.
    pub requests: u64,
    /// And no older than this (`None`: by requests only).
    pub max_age: Option<Duration>,
}

impl Window {
    /// The last `requests` lookups of each tier, whatever their age.
    pub fn requests(requests: u64) -> Self {
        Window {
            requests: requests.max(1),
            max_age: None,
        }
    }

    /// Also no older than `age`.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age.max(Duration::from_millis(10)));
        self
    }
}

impl Default for Window {
    /// The last 100,000 lookups of each tier, at most the last 5 minutes.
    fn default() -> Self {
        Window::requests(100_000).max_age(Duration::from_secs(300))
    }
}

/// Settings of a [`LiveSizing`].
#[derive(Debug, Clone, PartialEq)]
pub struct SizingOptions {
    scales: Vec<f64>,
    window: Window,
    sampling: Sampling,
    buffer: usize,
    publish_every: Duration,
    background: bool,
}

impl Default for SizingOptions {
    fn default() -> Self {
        SizingOptions {
            scales: vec![0.25, 0.5, 1.0, 2.0, 4.0],
            window: Window::default(),
            sampling: Sampling::Bounded { max_keys: 16_384 },
            buffer: 8192,
            publish_every: Duration::from_secs(1),
            background: true,
        }
    }
}

impl SizingOptions {
    /// Scales of each tier's current capacity to model (positive and
    /// finite; sorted and deduplicated; 1 is always added, it is what
    /// checks the model against the tier). Default 0.25, 0.5, 1, 2, 4.
    pub fn scales(mut self, scales: &[f64]) -> Self {
        let mut s: Vec<f64> = scales
            .iter()
            .copied()
            .filter(|s| s.is_finite() && *s > 0.0)
            .chain([1.0])
            .collect();
        s.sort_by(f64::total_cmp);
        s.dedup();
        self.scales = s;
        self
    }

    /// The window results are read over (default: [`Window::default`]).
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// How keys are sampled (default: exact up to 16,384 keys per tier,
    /// then sampled to stay at that many).
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Events each recording thread can buffer per ring before it drops
    /// (rounded up to a power of two, at least 2). Default 8192: 128 KiB
    /// per ring, and a thread has one per sized spy it calls, plus one for
    /// the other sized tiers.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// How often the worker publishes the metrics (default 1 s).
    pub fn publish_every(mut self, every: Duration) -> Self {
        self.publish_every = every.max(Duration::from_millis(10));
        self
    }

    /// Whether a background worker thread drains and models (default).
    /// `false`: no thread; nothing is modelled or published until
    /// [`LiveSizing::flush`] is called (drive it from your own task, or
    /// in tests and benches).
    pub fn background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// The scales modelled.
    pub fn grid(&self) -> &[f64] {
        &self.scales
    }
}

/// The label value of a scale: `0.25`, `0.5`, `1`, `2`, `4`.
pub fn scale_label(scale: f64) -> String {
    format!("{scale}")
}

/// What the worker and the tiers share.
struct State {
    cache: String,
    options: SizingOptions,
    rings: ThreadLocal<Ring>,
    /// Spies that record their tier's events in rings of their own, beside
    /// their per-thread hit counts (see [`SizingExt::with_sizing`]): weak,
    /// so that a dropped tier's rings go with it.
    spies: Mutex<Vec<Weak<HitCounters>>>,
    /// Events the spies that went had dropped or not yet handed over.
    lost_with_spies: Arc<AtomicU64>,
    models: Mutex<Models>,
    /// Handles, registered on the caller's thread (with its recorder).
    handles: Mutex<Vec<TierHandles>>,
    compiles: Vec<Counter>,
    dropped: Counter,
    /// What was published so far (counters take deltas).
    published: Mutex<Published>,
    stop: AtomicBool,
}

impl State {
    /// Every ring: this sizing's own, then each live spy's.
    fn for_each_ring(&self, mut f: impl FnMut(&Ring)) {
        for ring in self.rings.iter() {
            f(ring);
        }
        let mut spies = self.spies.lock();
        spies.retain(|w| w.strong_count() > 0);
        for spy in spies.iter().filter_map(Weak::upgrade) {
            spy.for_each_ring(&mut f);
        }
    }

    /// Drain every ring into the models; events drained. (The models' lock
    /// makes this the rings' only consumer.)
    fn drain(&self) -> u64 {
        let mut models = self.models.lock();
        let now = Instant::now();
        let mut n = 0;
        self.for_each_ring(|ring| n += ring.drain(|e| models.apply(e, now)));
        models.tick(now);
        n
    }

    /// Tier `tier`'s entries were inserted again in `keys`' order (see
    /// `Models::reinsert`): what was recorded before is modelled first.
    fn reinsert(&self, tier: u8, keys: &[u64]) {
        self.drain();
        self.models.lock().reinsert(usize::from(tier), keys);
    }

    fn dropped(&self) -> u64 {
        let mut n = self.lost_with_spies.load(Ordering::Relaxed);
        self.for_each_ring(|ring| n += ring.dropped());
        n
    }

    fn report(&self) -> (SizingReport, Reach) {
        let (mut r, reach) = self.models.lock().report(Instant::now());
        r.dropped = self.dropped();
        (r, reach)
    }

    /// Record `e` in this thread's ring (made the first time the thread
    /// records).
    #[inline]
    fn record(&self, e: Event) {
        self.rings.get_or(|| Ring::new(self.options.buffer)).push(e);
    }
}

/// Stops and joins the worker when the last [`LiveSizing`] clone goes.
struct Inner {
    state: Arc<State>,
    worker: Mutex<Option<JoinHandle<()>>>,
    running: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(h) = self.worker.lock().take() {
            h.thread().unpark();
            if h.join().is_err() {
                tracing::warn!(cache = %self.state.cache, "the sizing worker panicked");
            }
        }
    }
}

/// One stack's live what-if models and their worker thread (the README's
/// *Size it / Live* section describes the design). Cheap to clone; the worker stops when the last
/// clone (each [`SizingTier`] holds one) is dropped.
#[derive(Clone)]
pub struct LiveSizing {
    inner: Arc<Inner>,
}

impl fmt::Debug for LiveSizing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveSizing")
            .field("cache", &self.inner.state.cache)
            .field("options", &self.inner.state.options)
            .finish()
    }
}

/// Whether a [`LiveSizing`]'s worker thread is still running; see
/// [`LiveSizing::worker_probe`].
#[derive(Debug, Clone)]
pub struct WorkerProbe(Arc<AtomicBool>);

impl WorkerProbe {
    /// True until the worker thread has returned.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

const MIN_IDLE: Duration = Duration::from_millis(1);
const MAX_IDLE: Duration = Duration::from_millis(10);

impl LiveSizing {
    /// Models for the stack named `cache` (the `cache` label), and their
    /// worker thread. Metric handles are registered now, with the recorder
    /// installed now (install it first), and as tiers are sized.
    pub fn new(cache: impl Into<String>, options: SizingOptions) -> Self {
        let cache = cache.into();
        names::describe_all();
        let options = if options.scales.contains(&1.0) {
            options
        } else {
            let s = options.scales.clone();
            options.scales(&s)
        };
        let compiles = options
            .scales
            .iter()
            .map(|&s| {
                metrics::counter!(names::SIZING_COMPILES, label::CACHE => cache.clone(), label::SCALE => scale_label(s))
            })
            .collect();
        let state = Arc::new(State {
            dropped: metrics::counter!(names::SIZING_DROPPED, label::CACHE => cache.clone()),
            compiles,
            models: Mutex::new(Models::new(
                options.scales.clone(),
                options.window,
                options.sampling,
            )),
            handles: Mutex::new(Vec::new()),
            rings: ThreadLocal::new(),
            spies: Mutex::new(Vec::new()),
            lost_with_spies: Arc::new(AtomicU64::new(0)),
            published: Mutex::new(Published::default()),
            stop: AtomicBool::new(false),
            options,
            cache,
        });
        let running = Arc::new(AtomicBool::new(state.options.background));
        let worker = if state.options.background {
            let (state, running) = (Arc::clone(&state), Arc::clone(&running));
            std::thread::Builder::new()
                .name("tierscope-sizing".into())
                .spawn(move || work(&state, &running))
                .map(Some)
        } else {
            Ok(None)
        };
        let worker = match worker {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the sizing worker; call LiveSizing::flush to model");
                running.store(false, Ordering::Release);
                None
            }
        };
        LiveSizing {
            inner: Arc::new(Inner {
                state,
                worker: Mutex::new(worker),
                running,
            }),
        }
    }

    /// The stack's name.
    #[doc(hidden)] // for the tests and benches; not part of the API
    pub fn cache_name(&self) -> &str {
        &self.inner.state.cache
    }

    /// The options in use.
    #[doc(hidden)] // for the tests and benches; not part of the API
    pub fn options(&self) -> &SizingOptions {
        &self.inner.state.options
    }

    /// Have a spy record the `tier`-th sized tier's events in rings beside
    /// its own per-thread counts, and drain them with this sizing's. False
    /// if the spy already records for a sizing (the caller records itself).
    fn attach_spy(&self, hits: &Arc<HitCounters>, tier: u8) -> bool {
        let state = &*self.inner.state;
        let attached = hits.attach_sizing(SpySizing {
            tier,
            buffer: state.options.buffer,
            lost_with_spies: Arc::clone(&state.lost_with_spies),
        });
        if attached {
            let mut spies = state.spies.lock();
            spies.retain(|w| w.strong_count() > 0);
            spies.push(Arc::downgrade(hits));
        }
        attached
    }

    /// Start modelling a tier named `tier` under `policy`; the index its
    /// events carry. Registers the tier's metric handles.
    fn register(&self, tier: &str, policy: TierPolicy) -> Option<u8> {
        let state = &*self.inner.state;
        let mut models = state.models.lock();
        if models.tiers.len() > usize::from(u8::MAX) - 1 {
            tracing::warn!(
                tier,
                "more than 255 sized tiers in one stack; not sizing this one"
            );
            return None;
        }
        let index = models.register(tier.to_string(), policy);
        let scaled = |name: &'static str| -> Vec<Gauge> {
            if policy.capacity().is_none() {
                return Vec::new();
            }
            state
                .options
                .scales
                .iter()
                .map(|&s| {
                    metrics::gauge!(name, label::CACHE => state.cache.clone(), label::TIER => tier.to_string(), label::SCALE => scale_label(s))
                })
                .collect()
        };
        let plain = |name: &'static str| metrics::gauge!(name, label::CACHE => state.cache.clone(), label::TIER => tier.to_string());
        state.handles.lock().push(TierHandles {
            hit_ratio: scaled(names::SIZING_HIT_RATIO),
            byte_hit_ratio: scaled(names::SIZING_BYTE_HIT_RATIO),
            capacity: scaled(names::SIZING_CAPACITY),
            working_set: plain(names::SIZING_WORKING_SET),
            sampling_rate: plain(names::SIZING_SAMPLING_RATE),
            window_requests: plain(names::SIZING_WINDOW_REQUESTS),
        });
        u8::try_from(index).ok()
    }

    #[inline]
    fn record(&self, e: Event) {
        self.inner.state.record(e);
    }

    /// Record a lookup of the `tier`-th sized tier (in the order tiers
    /// were sized) on model key `key`, as a [`SizingTier`] does: for
    /// benches and tests that drive the models without modules.
    #[doc(hidden)]
    pub fn record_lookup(&self, tier: u8, key: u64, bytes: u64, hit: bool) {
        let kind = if hit {
            ring::Kind::Hit
        } else {
            ring::Kind::Miss
        };
        self.record(Event::new(tier, kind, key, bytes));
    }

    /// Model every event recorded so far (on this thread, now) and publish
    /// the metrics. The worker does this on its own; call it before reading
    /// a [`report`](Self::report) that must include the latest lookups.
    pub fn flush(&self) {
        self.inner.state.drain();
        self.inner.state.publish();
    }

    /// What the models answer now, over the window (events still buffered
    /// are not included: [`flush`](Self::flush) first for those).
    pub fn report(&self) -> SizingReport {
        self.inner.state.report().0
    }

    /// Distinct keys requested within the window, for the tier with the
    /// most (sampled keys only: at most the sampling bound).
    #[doc(hidden)] // for the tests and benches; not part of the API
    pub fn modelled_keys(&self) -> usize {
        self.inner.state.models.lock().distinct_keys()
    }

    /// Bytes of the hit path's buffers (the rings of every thread that
    /// recorded, in this sizing and in its spies).
    #[doc(hidden)] // for the tests and benches; not part of the API
    pub fn buffer_bytes(&self) -> usize {
        let mut n = 0;
        self.inner.state.for_each_ring(|ring| n += ring.bytes());
        n
    }

    /// A probe that tells whether the worker thread is still running (it
    /// stops when the last clone of this handle is dropped).
    #[doc(hidden)] // for the tests and benches; not part of the API
    pub fn worker_probe(&self) -> WorkerProbe {
        WorkerProbe(Arc::clone(&self.inner.running))
    }
}

/// The worker: drain, model, publish; sleep 1 to 10 ms when idle.
fn work(state: &State, running: &AtomicBool) {
    let mut idle = MIN_IDLE;
    let mut published = Instant::now();
    while !state.stop.load(Ordering::Acquire) {
        let n = state.drain();
        if published.elapsed() >= state.options.publish_every {
            state.publish();
            published = Instant::now();
        }
        if n < 64 {
            std::thread::park_timeout(idle);
            idle = (idle * 2).min(MAX_IDLE);
        } else {
            idle = MIN_IDLE;
        }
    }
    state.drain();
    state.publish();
    running.store(false, Ordering::Release);
}
