//! The connection to Redis (one server, or a cluster with one circuit
//! breaker per master) and the commands the tier sends, each bounded by the
//! tier's timeout.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use redis::{
    Cmd, FromRedisValue, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};
use wasmer_types::ModuleHash;

use crate::{
    aligned::{self, AlignedBuf},
    cache::{CacheError, TierName, Unavailability},
    engine::EngineIdent,
    tier_events::{Eviction, EvictionCause, Observers},
};

use super::*;
pub(super) use crate::tier::breaker::deadline_after;
use crate::tier::breaker::{Breaker, Verdict};

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

pub(super) struct Shared {
    pub(super) tier: TierName,
    pub(super) prefix: String,
    pub(super) target: Target,
    /// Where Redis is, for messages (never a password).
    pub(super) endpoint: String,
    pub(super) conn: Mutex<Option<Conn>>,
    pub(super) signing: Signing,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) max_entry_bytes: u64,
    pub(super) ttl: Option<Duration>,
    pub(super) blocking_threshold: u64,
    /// The breaker of a single server; in a cluster, of calls whose master
    /// is not known yet (and of `ping`).
    pub(super) breaker: Arc<Breaker>,
    /// A cluster's breakers, one per master.
    pub(super) shards: Option<Shards>,
    pub(super) observers: Observers,
    /// The availability last reported; its lock serializes reports so the
    /// last one always carries the current state.
    pub(super) reported: Mutex<bool>,
}

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

pub(super) enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A connection of either kind.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

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

/// One admitted call. Dropping it without a verdict (a cancelled caller)
/// counts as neutral, so an abandoned probe never leaves the breaker stuck.
pub(super) struct Call {
    pub(super) shared: Arc<Shared>,
    pub(super) breaker: Arc<Breaker>,
    /// The cluster master it went to, when known.
    pub(super) master: Option<Arc<str>>,
    pub(super) probe: bool,
    pub(super) settled: bool,
}

impl Call {
    pub(super) fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        self.shared.settle(&self, verdict);
    }

    /// Settle from an operation's result.
    pub(super) fn settle_with<T>(self, result: &Result<T, CacheError>) {
        let verdict = match result {
            Err(CacheError::Timeout { op, after, .. }) => {
                Verdict::Failed(format!("{op} timed out after {after:?}"))
            }
            Err(CacheError::Unavailable { reason, .. }) => Verdict::Failed(reason.to_string()),
            _ => Verdict::Answered,
        };
        self.settle(verdict);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(self, Verdict::Neutral);
        }
    }
}

// ---------------------------------------------------------------------------
// Shared internals

impl Shared {
    pub(super) fn redis_key(&self, key: &ModuleHash, ident: &EngineIdent) -> String {
        format!("{}:{}:{key}", self.prefix, ident.namespace)
    }

    pub(super) fn location(&self, redis_key: &str) -> String {
        format!("tier {} ({}) key {redis_key}", self.tier, self.endpoint)
    }

    /// Admit a call that touches no key (through the tier's own breaker).
    pub(super) fn admit(self: &Arc<Self>) -> Result<Call, CacheError> {
        self.admit_through(Arc::clone(&self.breaker), None)
    }

    /// Admit a call on `redis_key`: in a cluster, through the breaker of
    /// the master serving its slot, once the slot map is known.
    pub(super) fn admit_key(self: &Arc<Self>, redis_key: &str) -> Result<Call, CacheError> {
        let Some(shards) = &self.shards else {
            return self.admit();
        };
        self.refresh_slot_map(false);
        match shards.owner(key_slot(redis_key.as_bytes())) {
            Some((master, breaker)) => self.admit_through(breaker, Some(master)),
            None => self.admit(),
        }
    }

    pub(super) fn admit_through(
        self: &Arc<Self>,
        breaker: Arc<Breaker>,
        master: Option<Arc<str>>,
    ) -> Result<Call, CacheError> {
        match breaker.admit() {
            Ok(probe) => Ok(Call {
                shared: Arc::clone(self),
                breaker,
                master,
                probe,
                settled: false,
            }),
            Err((last_failure, next)) => Err(CacheError::Unavailable {
                tier: self.tier,
                reason: Unavailability::CircuitOpen {
                    server: master.map(|m| m.to_string()),
                    last_failure,
                    next,
                },
            }),
        }
    }

    pub(super) fn settle(self: &Arc<Self>, call: &Call, verdict: Verdict) {
        let failed = match &verdict {
            Verdict::Failed(reason) => Some(reason.clone()),
            _ => None,
        };
        if failed.is_some() {
            // A failure in a cluster may mean its masters changed.
            self.refresh_slot_map(true);
        }
        if call.breaker.settle(call.probe, verdict) {
            let available = call.breaker.available();
            let master = call.master.as_deref().unwrap_or("");
            match failed {
                Some(reason) if !available => tracing::warn!(
                    tier = %self.tier,
                    endpoint = %self.endpoint,
                    master,
                    threshold = call.breaker.threshold,
                    probe_interval = ?call.breaker.interval,
                    %reason,
                    "remote tier unavailable: circuit breaker opened",
                ),
                _ => tracing::info!(
                    tier = %self.tier,
                    endpoint = %self.endpoint,
                    master,
                    "remote tier available again: circuit breaker closed",
                ),
            }
            self.report_availability();
        }
    }

    /// Available: the breaker closed (in a cluster, every master's, once
    /// the slot map is known).
    pub(super) fn available(&self) -> bool {
        self.shards
            .as_ref()
            .and_then(Shards::available)
            .unwrap_or_else(|| self.breaker.available())
    }

    pub(super) fn report_availability(&self) {
        let mut reported = self.reported.lock();
        let available = self.available();
        if *reported != available {
            *reported = available;
            self.observers.available(available);
        }
    }

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

    /// The connection, made on first use (no I/O here: both kinds connect
    /// lazily, inside the caller's time bound).
    pub(super) fn connection(&self) -> Result<Conn, RedisError> {
        let mut slot = self.conn.lock();
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.timeout))
                    // One attempt per reconnect: the breaker paces retries.
                    .set_number_of_retries(0);
                Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?)
            }
            Target::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forget the connection: the next call makes a new one. Needed after
    /// an authentication failure, which the connection manager never
    /// retries by itself.
    pub(super) fn reset_connection(&self) {
        *self.conn.lock() = None;
    }

    /// Run one command, unbounded (callers bound it).
    pub(super) async fn attempt<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        match cmd.query_async::<T>(&mut conn).await {
            // The multiplexer may answer from a connection that broke
            // (or failed to reconnect) before this call; it has started
            // a fresh attempt by now: try once more, within the bound.
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                let mut conn = self.connection()?;
                cmd.query_async::<T>(&mut conn).await
            }
            other => other,
        }
    }

    /// Run `work` (Redis commands), bounded by `deadline`.
    pub(super) async fn bounded<T>(
        &self,
        op: &'static str,
        deadline: Instant,
        work: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(op, e)),
            Err(_elapsed) => Err(self.timed_out(op)),
        }
    }

    /// Run one command, bounded by `deadline`.
    pub(super) async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        deadline: Instant,
        cmd: &Cmd,
    ) -> Result<T, CacheError> {
        self.bounded(op, deadline, self.attempt(cmd)).await
    }

    /// Run one pipeline, unbounded (callers bound it); as [`Self::attempt`].
    pub(super) async fn attempt_pipeline<T: FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        match pipeline.query_async::<T>(&mut conn).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                let mut conn = self.connection()?;
                pipeline.query_async::<T>(&mut conn).await
            }
            other => other,
        }
    }

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

    pub(super) fn timed_out(&self, op: &'static str) -> CacheError {
        CacheError::Timeout {
            op,
            tier: self.tier,
            after: self.timeout,
        }
    }

    pub(super) fn classify(&self, op: &'static str, e: RedisError) -> CacheError {
        use redis::{ErrorKind as K, ServerErrorKind as S};
        let unavailable = |what: fn(String, String) -> Unavailability| CacheError::Unavailable {
            tier: self.tier,
            reason: what(self.endpoint.clone(), e.to_string()),
        };
        if e.is_timeout() {
            return self.timed_out(op);
        }
        let code = e.code();
        if e.kind() == K::AuthenticationFailed || matches!(code, Some("NOAUTH" | "WRONGPASS")) {
            self.reset_connection();
            return unavailable(|endpoint, detail| Unavailability::AuthenticationFailed {
                endpoint,
                detail,
            });
        }
        if code == Some("NOPERM") {
            return unavailable(|endpoint, detail| Unavailability::NotPermitted {
                endpoint,
                detail,
            });
        }
        if e.is_connection_refusal() {
            return unavailable(|endpoint, detail| Unavailability::ConnectionRefused {
                endpoint,
                detail,
            });
        }
        match e.kind() {
            K::Io => unavailable(|endpoint, detail| Unavailability::ConnectionFailed {
                endpoint,
                detail,
            }),
            K::ClusterConnectionNotFound
            | K::Server(S::ClusterDown | S::MasterDown | S::TryAgain | S::BusyLoading) => {
                unavailable(|endpoint, detail| Unavailability::NotReady { endpoint, detail })
            }
            K::InvalidClientConfig => unavailable(|endpoint, detail| {
                Unavailability::InvalidConfiguration { endpoint, detail }
            }),
            _ => CacheError::other(CommandError {
                tier: self.tier,
                endpoint: self.endpoint.clone(),
                op,
                source: e,
            }),
        }
    }

    /// Run CPU work on the blocking pool when `big`, else inline.
    pub(super) async fn cpu<T, F>(&self, big: bool, f: F) -> Result<T, CacheError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        crate::tier::blocking::run(self.tier, big, f).await
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

/// A command Redis answered with an error other than unavailability.
#[derive(Debug, thiserror::Error)]
#[error("{op} on tier {tier} ({endpoint}) failed: {source}")]
pub(super) struct CommandError {
    pub(super) tier: TierName,
    pub(super) endpoint: String,
    pub(super) op: &'static str,
    #[source]
    pub(super) source: RedisError,
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
