//! Redis Cluster routing: which master holds a key (its hash slot), the
//! slot map read from `CLUSTER SLOTS` and refreshed in the background, and
//! one circuit breaker per master.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use redis::{
    RedisError, Value,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};

use super::*;
use crate::tier::breaker::Breaker;

/// A cluster's circuit breakers, one per master, found through the
/// cluster's slot map (`CLUSTER SLOTS`, fetched in the background on first
/// use, after failures at most once a second, and once a minute anyway):
/// a dead master opens only its own breaker, and keys on the other masters
/// go on being served.
#[derive(Default)]
pub(super) struct Shards {
    /// (first slot, last slot, master address, its breaker), by first slot;
    /// empty until the slot map is first fetched.
    pub(super) map: Mutex<Vec<SlotRange>>,
    /// Every master's breaker by address, kept across slot map changes.
    pub(super) known: Mutex<HashMap<Arc<str>, Arc<Breaker>>>,
    pub(super) refresh: Mutex<Refresh>,
}

/// First slot, last slot, the master serving them, its breaker.
pub(super) type SlotRange = (u16, u16, Arc<str>, Arc<Breaker>);

#[derive(Default)]
pub(super) struct Refresh {
    pub(super) in_flight: bool,
    /// When the last fetch started.
    pub(super) started: Option<Instant>,
    /// When a slot map was last installed.
    pub(super) fetched: Option<Instant>,
}

/// Least time between two fetches of the slot map after failures.
pub(super) const SLOT_MAP_RETRY: Duration = Duration::from_secs(1);

/// A slot map older than this is fetched again (masters may have changed).
pub(super) const SLOT_MAP_MAX_AGE: Duration = Duration::from_secs(60);

/// Slots of a Redis Cluster.
pub(super) const CLUSTER_SLOTS: u16 = 16384;

impl Shards {
    /// The master serving `slot` and its breaker, if the slot map is known.
    pub(super) fn owner(&self, slot: u16) -> Option<(Arc<str>, Arc<Breaker>)> {
        let map = self.map.lock();
        let i = map.partition_point(|r| r.0 <= slot).checked_sub(1)?;
        let (_, last, addr, breaker) = &map[i];
        (slot <= *last).then(|| (Arc::clone(addr), Arc::clone(breaker)))
    }

    /// All masters' breakers closed; `None` while the slot map is unknown.
    pub(super) fn available(&self) -> Option<bool> {
        let map = self.map.lock();
        (!map.is_empty()).then(|| map.iter().all(|r| r.3.available()))
    }
}

/// The cluster slot of `key` (CRC16/XMODEM modulo 16384 over the key, or
/// over its hash tag: the bytes between the first `{` and the next `}`,
/// when not empty), as Redis computes it.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &byte in tag.unwrap_or(key) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % CLUSTER_SLOTS
}

/// The masters' slot ranges in a `CLUSTER SLOTS` reply.
pub(super) fn parse_slot_map(reply: &Value) -> Option<Vec<(u16, u16, String)>> {
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (first, last) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let (host, port) = (text(master.first()?)?, int(master.get(1)?)?);
        map.push((first, last, format!("{host}:{port}")));
    }
    map.sort_by_key(|r| r.0);
    Some(map)
}

impl Shared {
    /// Fetch a cluster's slot map in the background, if none is known or
    /// it is old, or (`after_failure`) if the last fetch is a second old.
    pub(super) fn refresh_slot_map(self: &Arc<Self>, after_failure: bool) {
        let Some(shards) = &self.shards else {
            return;
        };
        let now = Instant::now();
        {
            let mut refresh = shards.refresh.lock();
            let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
            let due = match (since(refresh.fetched), since(refresh.started)) {
                _ if refresh.in_flight => false,
                (_, None) => true,
                (None, Some(tried)) => tried >= SLOT_MAP_RETRY,
                (Some(age), Some(tried)) => {
                    age >= SLOT_MAP_MAX_AGE || (after_failure && tried >= SLOT_MAP_RETRY)
                }
            };
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if !due {
                return;
            }
            refresh.in_flight = true;
            refresh.started = Some(now);
            let shared = Arc::clone(self);
            runtime.spawn(async move { shared.fetch_slot_map().await });
        }
    }

    /// Ask a master for the slot map (bounded by the timeout) and install it.
    pub(super) async fn fetch_slot_map(&self) {
        let Some(shards) = &self.shards else {
            return;
        };
        let work = async {
            let mut failure = None;
            // A random master may be the dead one: try a few.
            for _ in 0..3 {
                let Conn::Cluster(mut conn) = self.connection()? else {
                    return Ok(None);
                };
                let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                match conn.route_command(cmd, routing).await {
                    Ok(reply) => return Ok(parse_slot_map(&reply)),
                    Err(e) => failure = Some(e),
                }
            }
            Err(failure
                .unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no master answered"))))
        };
        let fetched = self
            .bounded("slot map", deadline_after(self.timeout), work)
            .await;
        let installed = match fetched {
            Ok(Some(map)) if !map.is_empty() => {
                let mut known = shards.known.lock();
                let threshold = self.breaker.threshold;
                let interval = self.breaker.interval;
                let map = map
                    .into_iter()
                    .map(|(first, last, addr)| {
                        let addr: Arc<str> = addr.into();
                        let breaker = known
                            .entry(Arc::clone(&addr))
                            .or_insert_with(|| Arc::new(Breaker::new(threshold, interval)));
                        (first, last, addr, Arc::clone(breaker))
                    })
                    .collect();
                *shards.map.lock() = map;
                true
            }
            Ok(_) => {
                tracing::debug!(tier = %self.tier, "unexpected CLUSTER SLOTS reply");
                false
            }
            Err(e) => {
                tracing::debug!(
                    tier = %self.tier,
                    error = &e as &dyn std::error::Error,
                    "unable to fetch the cluster's slot map",
                );
                false
            }
        };
        {
            let mut refresh = shards.refresh.lock();
            refresh.in_flight = false;
            if installed {
                refresh.fetched = Some(Instant::now());
            }
        }
        if installed {
            self.report_availability();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // reference values from `CLUSTER KEYSLOT` on redis-server 7.0
        for (key, slot) in [
            ("foo", 12182),
            ("bar", 5061),
            ("", 0),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("a{b", 13340),
            (
                "tierscope:abc:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
                5081,
            ),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key:?}");
        }
    }

    #[test]
    fn slot_maps_are_parsed_and_looked_up() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
        ]);
        let map = parse_slot_map(&reply).unwrap();
        assert_eq!(
            map,
            [
                (0, 5460, "10.0.0.1:7000".to_string()),
                (5461, 16383, "10.0.0.2:7001".to_string())
            ]
        );
        assert!(parse_slot_map(&Value::Int(1)).is_none());
        let shards = Shards::default();
        assert!(shards.owner(0).is_none());
        assert_eq!(shards.available(), None);
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        *shards.map.lock() = vec![(0, 5460, "a".into(), Arc::clone(&breaker))];
        assert_eq!(&*shards.owner(5460).unwrap().0, "a");
        assert!(shards.owner(5461).is_none());
        assert_eq!(shards.available(), Some(true));
        breaker.settle(false, Verdict::Failed("down".into()));
        assert_eq!(shards.available(), Some(false));
    }
}
