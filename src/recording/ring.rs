//! The hit path's buffer: fixed rings, one per recording thread, lossy
//! when full.
//!
//! Each thread that records a request gets its own single-producer,
//! single-consumer ring of `capacity` events (allocated once, the first
//! time that thread records). A sized spy keeps one such ring per thread
//! beside its per-thread hit counts, for its tier's events (see
//! [`crate::observe::hot`]); the sizing keeps one per thread for the tiers
//! it wraps that are not spies. Recording is two relaxed stores and a
//! release store of the head: no lock, no read-modify-write, no
//! allocation. A full ring drops the event and counts it in the ring (a
//! plain load and store: only the owning thread writes it).
//!
//! The consumer (the sizing worker, or a caller of `LiveSizing::flush`,
//! serialised by the model's lock) reads every ring in turn. When a thread
//! exits, `thread_local` hands its ring to the next new thread, which
//! continues where it stopped; nothing is lost or moved.

use std::sync::atomic::{AtomicU64, Ordering};

use wasmer::Engine;
use wasmer_types::ModuleHash;

use crate::{engine::engine_key, weights};

/// The model's key of a module under an engine, before mixing (the worker
/// mixes it): the module hash's first 8 bytes with the engine
/// configuration folded in (one module under two configurations is two
/// keys). Every tier's model keys by configuration, the memory tier's
/// too (which keys by engine instance): the memory model's misses feed
/// the models below it, which must see the keys those tiers see. A load,
/// a thread-local read and an xor on the hit path.
#[inline(always)]
pub(crate) fn key_id(key: &ModuleHash, engine: &Engine) -> u64 {
    let head = key
        .as_bytes()
        .first_chunk::<8>()
        .map_or(0, |b| u64::from_le_bytes(*b));
    head ^ u64::from(engine_key(engine).index()).rotate_right(8)
}

/// What a tier's miss of `key` under `engine` tells its model: the
/// module's size when it was weighed before (a [`Kind::Miss`]), else that
/// the size must wait for the save that follows ([`Kind::MissUnknown`]).
pub(crate) fn miss_event(key: ModuleHash, engine: &Engine) -> (Kind, u64) {
    match weights::lookup(key, engine_key(engine)) {
        Some(b) => (Kind::Miss, b),
        None => (Kind::MissUnknown, 0),
    }
}

/// One event: a model key and a packed (tier, kind, bytes) word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) key: u64,
    pub(crate) meta: u64,
}

/// What an event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A lookup the tier answered with a hit (size known).
    Hit,
    /// A lookup the tier missed, size known.
    Miss,
    /// A lookup the tier missed, size not known yet: wait for its save.
    MissUnknown,
    /// A save into the tier: the key's size.
    Size,
}

const BYTES_BITS: u32 = 48;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;

impl Event {
    /// Pack an event; bytes above 2^48 - 1 count as that.
    #[inline(always)]
    pub(crate) fn new(tier: u8, kind: Kind, key: u64, bytes: u64) -> Self {
        let k = match kind {
            Kind::Hit => 0u64,
            Kind::Miss => 1,
            Kind::MissUnknown => 2,
            Kind::Size => 3,
        };
        Event {
            key,
            meta: bytes.min(BYTES_MASK) | (u64::from(tier) << BYTES_BITS) | (k << 56),
        }
    }

    pub(crate) fn tier(self) -> usize {
        ((self.meta >> BYTES_BITS) & 0xff) as usize
    }

    pub(crate) fn kind(self) -> Kind {
        match self.meta >> 56 {
            0 => Kind::Hit,
            1 => Kind::Miss,
            2 => Kind::MissUnknown,
            _ => Kind::Size,
        }
    }

    pub(crate) fn bytes(self) -> u64 {
        self.meta & BYTES_MASK
    }
}

/// One thread's ring. The fields only the owning thread writes come first,
/// the consumer's `tail` 128 bytes after them (padding rather than
/// `#[repr(align(128))]`, which would make every caller that builds a ring
/// on its stack realign that stack): the two sides never write one cache
/// line, nor two adjacent ones.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Ring {
    /// Events written.
    head: AtomicU64,
    /// The head at which the ring is full as far as the producer knows:
    /// the consumer's `tail` as last read plus the capacity. The producer
    /// reads the real `tail` (a cache line the consumer writes) only when
    /// the head reaches this.
    limit: AtomicU64,
    /// Key and meta of each slot; a power of two of them.
    slots: Box<[[AtomicU64; 2]]>,
    /// The tier bits of the events [`Ring::push_kind`] records (a ring of
    /// one tier's events, kept by its spy).
    tier_bits: u64,
    /// Events dropped because the ring was full.
    dropped: AtomicU64,
    _producer_side: [u64; 10],
    /// Events read (written by the consumer only).
    tail: AtomicU64,
    _consumer_side: [u64; 15],
}

impl Ring {
    /// A ring of `capacity` events (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = capacity.clamp(2, 1 << 24).next_power_of_two();
        Ring {
            head: AtomicU64::new(0),
            limit: AtomicU64::new(n as u64),
            slots: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            dropped: AtomicU64::new(0),
            tier_bits: 0,
            _producer_side: [0; 10],
            tail: AtomicU64::new(0),
            _consumer_side: [0; 15],
        }
    }

    /// A ring of `capacity` events of the `tier`-th sized tier only.
    pub(crate) fn for_tier(capacity: usize, tier: u8) -> Self {
        Ring {
            tier_bits: Event::new(tier, Kind::Hit, 0, 0).meta,
            ..Ring::new(capacity)
        }
    }

    /// Record an event of this ring's tier ([`Ring::for_tier`]).
    #[inline(always)]
    pub(crate) fn push_kind(&self, kind: Kind, key: u64, bytes: u64) {
        self.push(Event {
            key,
            meta: Event::new(0, kind, 0, bytes).meta | self.tier_bits,
        });
    }

    /// Record `e`, or drop and count it if the ring is full. Only the
    /// thread that owns the ring calls this. Always inlined: it is on the
    /// memory-hit path (its rare branch is out of line).
    #[inline(always)]
    pub(crate) fn push(&self, e: Event) {
        let head = self.head.load(Ordering::Relaxed);
        if head >= self.limit.load(Ordering::Relaxed) && !self.room(head) {
            return;
        }
        // The length is a power of two: `len - 1` masks the index (and a
        // slot is always there; `get` only spares the bounds check's panic).
        if let Some(slot) = self.slots.get(head as usize & (self.slots.len() - 1)) {
            slot[0].store(e.key, Ordering::Relaxed);
            slot[1].store(e.meta, Ordering::Relaxed);
            self.head.store(head.wrapping_add(1), Ordering::Release);
        }
    }

    /// The ring looked full at `head`: read the consumer's tail and say
    /// whether there is room now; if not, count a drop. While the consumer
    /// lags, its cache line is read only once every 32 drops: dropping
    /// stays cheap.
    #[cold]
    #[inline(never)]
    fn room(&self, head: u64) -> bool {
        let d = self.dropped.load(Ordering::Relaxed);
        if d.is_multiple_of(32) {
            let tail = self.tail.load(Ordering::Acquire);
            let limit = tail.wrapping_add(self.slots.len() as u64);
            self.limit.store(limit, Ordering::Relaxed);
            if head < limit {
                return true;
            }
        }
        self.dropped.store(d + 1, Ordering::Relaxed);
        false
    }

    /// Hand every event recorded so far to `f`, oldest first, and free
    /// their slots. One consumer at a time (the caller holds the model's
    /// lock).
    pub(crate) fn drain(&self, mut f: impl FnMut(Event)) -> u64 {
        let head = self.head.load(Ordering::Acquire);
        let mut tail = self.tail.load(Ordering::Relaxed);
        let n = head.wrapping_sub(tail);
        while tail != head {
            let slot = &self.slots[tail as usize & (self.slots.len() - 1)];
            f(Event {
                key: slot[0].load(Ordering::Relaxed),
                meta: slot[1].load(Ordering::Relaxed),
            });
            tail = tail.wrapping_add(1);
        }
        self.tail.store(tail, Ordering::Release);
        n
    }

    /// Events dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events that will never be modelled once this ring is gone: those
    /// dropped and those still waiting for the consumer.
    pub(crate) fn lost_if_gone(&self) -> u64 {
        let waiting = self
            .head
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail.load(Ordering::Acquire));
        self.dropped() + waiting
    }

    /// Bytes this ring holds.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.slots.len() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let e = Event::new(7, Kind::MissUnknown, 42, 123_456);
        assert_eq!(
            (e.tier(), e.kind(), e.key, e.bytes()),
            (7, Kind::MissUnknown, 42, 123_456)
        );
        let e = Event::new(255, Kind::Size, 1, u64::MAX);
        assert_eq!(
            (e.tier(), e.kind(), e.bytes()),
            (255, Kind::Size, BYTES_MASK)
        );
        assert_eq!(Event::new(0, Kind::Hit, 0, 5).kind(), Kind::Hit);
        assert_eq!(Event::new(0, Kind::Miss, 0, 5).kind(), Kind::Miss);
    }

    #[test]
    fn the_consumer_writes_128_bytes_away_from_the_producer() {
        assert_eq!(std::mem::offset_of!(Ring, tail), 128);
        assert_eq!(std::mem::size_of::<Ring>(), 256);
        assert_eq!(std::mem::size_of::<Option<Ring>>(), 256);
    }

    #[test]
    fn a_tier_ring_tags_its_events() {
        let r = Ring::for_tier(8, 3);
        r.push_kind(Kind::Miss, 9, 1_000);
        r.push_kind(Kind::Hit, 10, u64::MAX);
        let mut seen = Vec::new();
        r.drain(|e| seen.push((e.tier(), e.kind(), e.key, e.bytes())));
        assert_eq!(
            seen,
            [(3, Kind::Miss, 9, 1_000), (3, Kind::Hit, 10, BYTES_MASK)]
        );
    }

    #[test]
    fn a_full_ring_drops_and_counts() {
        let r = Ring::new(3); // rounded up to 4
        for i in 0..10 {
            r.push(Event::new(0, Kind::Hit, i, 1));
        }
        assert_eq!(r.dropped(), 6);
        let mut seen = Vec::new();
        assert_eq!(r.drain(|e| seen.push(e.key)), 4);
        assert_eq!(seen, [0, 1, 2, 3]);
        // Drained, but a producer that saw it full looks at the consumer
        // again only every 32 drops: 26 more drops, then room.
        for i in 0..27 {
            r.push(Event::new(0, Kind::Hit, 100 + i, 1));
        }
        assert_eq!(r.dropped(), 32);
        seen.clear();
        r.drain(|e| seen.push(e.key));
        assert_eq!(seen, [126]);
    }
}
