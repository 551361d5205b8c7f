//! The hit path's buffer: one fixed ring per thread, lossy when full.
//!
//! Each thread that records a request gets its own single-producer,
//! single-consumer ring of `capacity` events (allocated once, the first
//! time that thread records). Recording is two relaxed stores and a
//! release store of the head: no lock, no read-modify-write, no
//! allocation. A full ring drops the event and counts it in the ring (a
//! plain load and store: only the owning thread writes it).
//!
//! The consumer (the sizing worker, or a caller of `LiveSizing::flush`,
//! serialised by the model's lock) reads every ring in turn. When a thread
//! exits, `thread_local` hands its ring to the next new thread, which
//! continues where it stopped; nothing is lost or moved.

use std::sync::atomic::{AtomicU64, Ordering};

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
    #[inline]
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

/// What only the owning thread writes, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Producer {
    /// Events written.
    head: AtomicU64,
    /// The consumer's `tail` as last read: the producer reads the real one
    /// (a cache line the consumer writes) only when this says full.
    cached_tail: AtomicU64,
    /// Events dropped because the ring was full.
    dropped: AtomicU64,
}

/// What only the consumer writes, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Consumer {
    /// Events read.
    tail: AtomicU64,
}

/// One thread's ring.
#[derive(Debug)]
pub(crate) struct Ring {
    /// Key and meta of each slot.
    slots: Box<[[AtomicU64; 2]]>,
    mask: u64,
    producer: Producer,
    consumer: Consumer,
}

impl Ring {
    /// A ring of `capacity` events (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = capacity.clamp(2, 1 << 24).next_power_of_two();
        Ring {
            slots: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            mask: n as u64 - 1,
            producer: Producer::default(),
            consumer: Consumer::default(),
        }
    }

    /// Record `e`, or drop and count it if the ring is full. Only the
    /// thread that owns the ring calls this. Returns true when this event
    /// filled the ring to half (as far as the producer knows): time to wake
    /// the consumer.
    #[inline]
    pub(crate) fn push(&self, e: Event) -> bool {
        let p = &self.producer;
        let head = p.head.load(Ordering::Relaxed);
        let mut tail = p.cached_tail.load(Ordering::Relaxed);
        if head.wrapping_sub(tail) > self.mask {
            // Full as far as we know. While the consumer lags, look at its
            // cache line only once every 32 drops: dropping stays cheap.
            let d = p.dropped.load(Ordering::Relaxed);
            if !d.is_multiple_of(32) {
                p.dropped.store(d + 1, Ordering::Relaxed);
                return false;
            }
            tail = self.consumer.tail.load(Ordering::Acquire);
            p.cached_tail.store(tail, Ordering::Relaxed);
            if head.wrapping_sub(tail) > self.mask {
                p.dropped.store(d + 1, Ordering::Relaxed);
                return false;
            }
        }
        let slot = &self.slots[(head & self.mask) as usize];
        slot[0].store(e.key, Ordering::Relaxed);
        slot[1].store(e.meta, Ordering::Relaxed);
        p.head.store(head.wrapping_add(1), Ordering::Release);
        head.wrapping_sub(tail) == self.mask / 2
    }

    /// Hand every event recorded so far to `f`, oldest first, and free
    /// their slots. One consumer at a time (the caller holds the model's
    /// lock).
    pub(crate) fn drain(&self, mut f: impl FnMut(Event)) -> u64 {
        let head = self.producer.head.load(Ordering::Acquire);
        let mut tail = self.consumer.tail.load(Ordering::Relaxed);
        let n = head.wrapping_sub(tail);
        while tail != head {
            let slot = &self.slots[(tail & self.mask) as usize];
            f(Event {
                key: slot[0].load(Ordering::Relaxed),
                meta: slot[1].load(Ordering::Relaxed),
            });
            tail = tail.wrapping_add(1);
        }
        self.consumer.tail.store(tail, Ordering::Release);
        n
    }

    /// Events dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.producer.dropped.load(Ordering::Relaxed)
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
