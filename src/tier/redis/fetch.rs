//! Reading a value in ranges (a miss or a small value in one round trip, a
//! larger one in two, an oversized one refused after the first), and the
//! scripts that delete a bad value only if it is still the same.

use std::time::Instant;

use bytes::Bytes;

use crate::{
    aligned::{self, AlignedBuf},
    cache::CacheError,
    tier_events::{Eviction, EvictionCause},
};

use super::*;

/// Deletes a value only if it is still the one that failed verification
/// (same length, same last 32 bytes): a good value saved meanwhile by
/// another node survives.
pub(super) const DELETE_IF_UNCHANGED: &str = r"
if redis.call('STRLEN', KEYS[1]) == tonumber(ARGV[2])
    and redis.call('GETRANGE', KEYS[1], -32, -1) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Deletes a value only if it is still larger than the limit in `ARGV[1]`
/// (a good value saved meanwhile by another node is never that large), and
/// answers the size it deleted (0: nothing deleted).
pub(super) const DELETE_IF_OVERSIZED: &str = r"
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return n
end
return 0
";

/// What a bounded read found under a key.
pub(super) enum Fetched {
    /// No value.
    Missing,
    /// A value larger than `max_entry_bytes`, of this many bytes: at most
    /// its first [`FIRST_READ_BYTES`] were transferred.
    TooLarge(u64),
    /// A value within the limit, in an aligned buffer.
    Value(Bytes),
}

/// A read before its bytes are made one aligned buffer.
enum Raw {
    Fetched(Fetched),
    /// The whole value, in one reply.
    Whole(Bytes),
    /// The value in two ranges.
    Split(Bytes, Bytes),
}

impl Shared {
    /// Read the value under `redis_key`, never transferring more than
    /// [`FIRST_READ_BYTES`] (or the limit, if smaller) of a value larger than
    /// `max_entry_bytes`, and never more than the limit in all.
    ///
    /// One round trip pipelines `EXISTS`, `STRLEN` (the server reports the
    /// size before sending anything) and `GETRANGE` of the first
    /// [`FIRST_READ_BYTES`]: a miss, or a value up to that size, costs one
    /// round trip, like a plain `GET`; a larger value within the limit costs
    /// a second `GETRANGE` for the rest; an oversized one costs no more than
    /// that first part. (Checking the size before any transfer costs every
    /// hit a second round trip; a Lua script doing it in one costs the
    /// server a copy of the value into Lua and back, measured at 2.3x the
    /// server time of `GET` for 25 KB and 5-11x for 1 MiB, blocking every
    /// other client meanwhile.)
    pub(super) async fn fetch(
        &self,
        redis_key: &str,
        deadline: Instant,
    ) -> Result<Fetched, CacheError> {
        let limit = self.max_entry_bytes;
        let first = limit.min(FIRST_READ_BYTES);
        let work = async {
            // A writer may replace the value between two commands: then the
            // lengths disagree and the read starts over (once).
            for _ in 0..2 {
                let mut pipeline = redis::pipe();
                pipeline
                    .cmd("EXISTS")
                    .arg(redis_key)
                    .cmd("STRLEN")
                    .arg(redis_key)
                    .cmd("GETRANGE")
                    .arg(redis_key)
                    .arg(0)
                    .arg(first - 1);
                let (exists, size, head): (bool, u64, Bytes) =
                    self.attempt_pipeline(&pipeline).await?;
                if !exists {
                    return Ok(Raw::Fetched(Fetched::Missing));
                }
                if size > limit {
                    return Ok(Raw::Fetched(Fetched::TooLarge(size)));
                }
                if head.len() as u64 == size {
                    return Ok(Raw::Whole(head));
                }
                if (head.len() as u64) < first {
                    continue; // shorter than STRLEN said: replaced in between
                }
                let mut rest = redis::cmd("GETRANGE");
                rest.arg(redis_key).arg(first).arg(size - 1);
                let tail: Bytes = self.attempt(&rest).await?;
                if first + tail.len() as u64 != size {
                    continue;
                }
                return Ok(Raw::Split(head, tail));
            }
            // Replaced twice while being read: a writer is at work; its
            // value will be there for the next load.
            Ok(Raw::Fetched(Fetched::Missing))
        };
        // Every value reaches `Module::deserialize` from an aligned buffer
        // (see `crate::aligned`): a value read in one piece is copied only
        // if the reply left it misaligned; one read in two ranges is
        // assembled into one aligned buffer (one copy, as before).
        let aligned = |raw| -> Result<Fetched, aligned::OutOfMemory> {
            Ok(match raw {
                Raw::Fetched(fetched) => fetched,
                Raw::Whole(value) => Fetched::Value(aligned::aligned(value)?),
                Raw::Split(head, tail) => {
                    let mut value = AlignedBuf::zeroed(head.len() + tail.len())?;
                    let (first, rest) = value.as_mut_slice().split_at_mut(head.len());
                    first.copy_from_slice(&head);
                    rest.copy_from_slice(&tail);
                    Fetched::Value(value.into_bytes())
                }
            })
        };
        let raw = self.bounded("load", deadline, work).await?;
        aligned(raw).map_err(CacheError::other)
    }

    /// Delete a value refused for its size if it is still oversized, and
    /// report it.
    pub(super) async fn discard_oversized(&self, redis_key: &str) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE_IF_OVERSIZED)
            .arg(1)
            .arg(redis_key)
            .arg(self.max_entry_bytes);
        let deadline = deadline_after(self.timeout);
        match self.query::<u64>("load", deadline, &cmd).await {
            Ok(0) => {} // replaced meanwhile (by a good value) or already gone
            Ok(bytes) => self.observers.evicted(Eviction {
                cause: EvictionCause::Corrupt,
                bytes,
                age: None,
            }),
            Err(e) => tracing::warn!(
                tier = %self.tier,
                key = redis_key,
                error = &e as &dyn std::error::Error,
                "unable to delete an oversized value (the next save replaces it)",
            ),
        }
    }

    /// Delete a refused value if it is still there unchanged, and report it.
    pub(super) async fn discard(&self, redis_key: &str, value: &[u8]) {
        let tail = &value[value.len().saturating_sub(MAC_LEN)..];
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE_IF_UNCHANGED)
            .arg(1)
            .arg(redis_key)
            .arg(tail)
            .arg(value.len());
        let deadline = deadline_after(self.timeout);
        match self.query::<u64>("load", deadline, &cmd).await {
            Ok(1) => self.observers.evicted(Eviction {
                cause: EvictionCause::Corrupt,
                bytes: value.len() as u64,
                age: None,
            }),
            // Replaced meanwhile (by a good value) or already gone.
            Ok(_) => {}
            Err(e) => tracing::warn!(
                tier = %self.tier,
                key = redis_key,
                error = &e as &dyn std::error::Error,
                "unable to delete a value that failed verification (the next save replaces it)",
            ),
        }
    }
}
