//! The connection to Redis (one server through the crate's reconnecting
//! connection manager, or a cluster through its cluster client) and each
//! command bounded by the tier's timeout, with its errors classified.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use redis::{
    Cmd, FromRedisValue, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, TierName, Unavailability},
    engine::EngineIdent,
    tier_events::Observers,
};

use super::*;
use crate::tier::breaker::Breaker;
pub(super) use crate::tier::breaker::deadline_after;

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

impl Shared {
    pub(super) fn redis_key(&self, key: &ModuleHash, ident: &EngineIdent) -> String {
        format!("{}:{}:{key}", self.prefix, ident.namespace)
    }

    pub(super) fn location(&self, redis_key: &str) -> String {
        format!("tier {} ({}) key {redis_key}", self.tier, self.endpoint)
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
