//! Access to the store: the tier's shared state, admission through the
//! circuit breaker and the operation slots, one guard per request (which
//! reports it to the observers however it ends), and what an
//! `object_store` error means for the caller and for the breaker.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use object_store::{ObjectStore, path::Path};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmer_types::ModuleHash;

use crate::{
    cache::{CacheError, TierName, Unavailability},
    engine::EngineIdent,
    tier::breaker::{Breaker, Verdict},
    tier_events::{Observers, RemoteRequest, RequestOp, RequestResult},
};

use super::{Signing, config::transfer_bound};

pub(super) struct Shared {
    pub(super) tier: TierName,
    pub(super) prefix: Path,
    /// Where the store is, for messages (never a secret).
    pub(super) endpoint: String,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) signing: Signing,
    pub(super) timeout: Duration,
    pub(super) min_throughput: u64,
    pub(super) max_entry_bytes: u64,
    pub(super) multipart_threshold: u64,
    pub(super) part_bytes: u64,
    pub(super) upload_concurrency: usize,
    pub(super) blocking_threshold: u64,
    /// Operations in flight at once.
    pub(super) slots: Semaphore,
    pub(super) breaker: Breaker,
    pub(super) observers: Observers,
    /// The availability last reported; its lock serializes reports.
    pub(super) reported: Mutex<bool>,
}

/// An operation's failure, and whether it says the store is unwell (a
/// verdict for the breaker).
pub(super) struct Failed {
    pub(super) error: CacheError,
    pub(super) store_failed: bool,
}

impl Failed {
    /// A failure that is not the store's (a refused object, a local error).
    pub(super) fn answered(error: CacheError) -> Self {
        Failed {
            error,
            store_failed: false,
        }
    }
}

impl Failed {
    /// The breaker's verdict on this failure.
    pub(super) fn verdict(&self) -> Verdict {
        if self.store_failed {
            Verdict::Failed(self.error.to_string())
        } else {
            Verdict::Answered
        }
    }
}

/// The breaker's verdict on an operation's outcome.
pub(super) fn verdict<T>(result: &Result<T, Failed>) -> Verdict {
    result
        .as_ref()
        .err()
        .map_or(Verdict::Answered, Failed::verdict)
}

/// One operation admitted by the breaker. Dropped without a verdict (a
/// cancelled caller) it counts as neutral, so an abandoned probe never
/// leaves the breaker stuck.
pub(super) struct Call<'a> {
    shared: &'a Shared,
    probe: bool,
    settled: bool,
    _slot: Option<SemaphorePermit<'a>>,
}

impl Call<'_> {
    pub(super) fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        self.shared.settle(self.probe, verdict);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(self.probe, Verdict::Neutral);
        }
    }
}

/// One request to the store, reported to the observers when it ends; if it
/// is dropped unfinished (its deadline passed, or the caller went away) it
/// is reported as a timeout.
pub(super) struct Request<'a> {
    shared: &'a Shared,
    op: RequestOp,
    pub(super) sent: u64,
    pub(super) received: u64,
    done: bool,
}

impl Request<'_> {
    pub(super) fn finish(mut self, result: RequestResult) {
        self.done = true;
        self.report(result);
    }

    /// Finish with the result an `object_store` outcome stands for.
    pub(super) fn finish_with<T>(self, outcome: &object_store::Result<T>) {
        self.finish(match outcome {
            Ok(_) => RequestResult::Ok,
            Err(e) => result_of(e),
        });
    }

    fn report(&self, result: RequestResult) {
        self.shared.observers.request(RemoteRequest {
            op: self.op,
            result,
            sent: self.sent,
            received: self.received,
        });
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.report(RequestResult::Timeout);
        }
    }
}

/// The request result an `object_store` error stands for.
pub(super) fn result_of(e: &object_store::Error) -> RequestResult {
    match e {
        object_store::Error::NotFound { .. } => RequestResult::NotFound,
        object_store::Error::AlreadyExists { .. }
        | object_store::Error::Precondition { .. }
        | object_store::Error::NotModified { .. } => RequestResult::Conflict,
        e if timed_out(e) => RequestResult::Timeout,
        _ => RequestResult::Error,
    }
}

/// True when `e` is the client's own timeout.
fn timed_out(e: &object_store::Error) -> bool {
    transport_error(e).is_some_and(|k| matches!(k, object_store::client::HttpErrorKind::Timeout))
}

/// The kind of the transport failure inside `e`, if it is one (no HTTP
/// response was had).
fn transport_error(e: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    let mut current: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(http) = current.downcast_ref::<object_store::client::HttpError>() {
            return Some(http.kind());
        }
        current = current.source()?;
    }
}

impl Shared {
    /// The object path of `key` under `ident`'s namespace.
    pub(super) fn path(&self, key: &ModuleHash, ident: &EngineIdent) -> Path {
        self.prefix
            .clone()
            .join(ident.namespace.as_str())
            .join(key.to_string())
    }

    pub(super) fn location(&self, path: &Path) -> String {
        format!("tier {} ({}) object {path}", self.tier, self.endpoint)
    }

    /// The bound of an operation moving `bytes`.
    pub(super) fn bound(&self, bytes: u64) -> Duration {
        transfer_bound(self.timeout, self.min_throughput, bytes)
    }

    /// Admit an operation through the breaker, then wait (until
    /// `deadline`) for one of the operation slots.
    pub(super) async fn admit(
        &self,
        op: &'static str,
        deadline: Instant,
    ) -> Result<Call<'_>, CacheError> {
        let probe = match self.breaker.admit() {
            Ok(probe) => probe,
            Err((last_failure, next)) => {
                return Err(CacheError::Unavailable {
                    tier: self.tier,
                    reason: Unavailability::CircuitOpen {
                        server: None,
                        last_failure,
                        next,
                    },
                });
            }
        };
        let mut call = Call {
            shared: self,
            probe,
            settled: false,
            _slot: None,
        };
        // Waiting in vain for a slot says nothing of the store: the call
        // is dropped unsettled (neutral).
        match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
            Ok(Ok(slot)) => call._slot = Some(slot),
            _ => return Err(self.timed_out(op)),
        }
        Ok(call)
    }

    fn settle(&self, probe: bool, verdict: Verdict) {
        let failed = match &verdict {
            Verdict::Failed(reason) => Some(reason.clone()),
            _ => None,
        };
        if self.breaker.settle(probe, verdict) {
            let available = self.breaker.available();
            match failed {
                Some(reason) if !available => tracing::warn!(
                    tier = %self.tier,
                    endpoint = %self.endpoint,
                    threshold = self.breaker.threshold,
                    probe_interval = ?self.breaker.interval,
                    %reason,
                    "remote tier unavailable: circuit breaker opened",
                ),
                _ => tracing::info!(
                    tier = %self.tier,
                    endpoint = %self.endpoint,
                    "remote tier available again: circuit breaker closed",
                ),
            }
            let mut reported = self.reported.lock();
            let available = self.breaker.available();
            if *reported != available {
                *reported = available;
                self.observers.available(available);
            }
        }
    }

    /// A request of kind `op`, reported when it ends.
    pub(super) fn request(&self, op: RequestOp) -> Request<'_> {
        Request {
            shared: self,
            op,
            sent: 0,
            received: 0,
            done: false,
        }
    }

    pub(super) fn timed_out(&self, op: &'static str) -> CacheError {
        CacheError::Timeout {
            op,
            tier: self.tier,
            after: self.timeout,
        }
    }

    /// A deadline that passed during `op`: the store's failure.
    pub(super) fn deadline_passed(&self, op: &'static str, after: Duration) -> Failed {
        Failed {
            error: CacheError::Timeout {
                op,
                tier: self.tier,
                after,
            },
            store_failed: true,
        }
    }

    /// What an `object_store` error means (a miss is handled by callers).
    pub(super) fn failure(&self, op: &'static str, e: object_store::Error) -> Failed {
        use object_store::client::HttpErrorKind as K;
        let endpoint = self.endpoint.clone();
        let unavailable = |reason| Failed {
            error: CacheError::Unavailable {
                tier: self.tier,
                reason,
            },
            store_failed: true,
        };
        let detail = e.to_string();
        match &e {
            object_store::Error::PermissionDenied { .. } => {
                return unavailable(Unavailability::NotPermitted { endpoint, detail });
            }
            object_store::Error::Unauthenticated { .. } => {
                return unavailable(Unavailability::AuthenticationFailed { endpoint, detail });
            }
            _ => {}
        }
        match transport_error(&e) {
            Some(K::Timeout) => self.deadline_passed(op, self.timeout),
            Some(K::Connect) => unavailable(Unavailability::ConnectionRefused { endpoint, detail }),
            Some(_) => unavailable(Unavailability::ConnectionFailed { endpoint, detail }),
            // The store answered with an error status (a 5xx, throttling,
            // a bad request): unwell as far as this tier can tell.
            None => Failed {
                error: CacheError::other(StoreError {
                    tier: self.tier,
                    endpoint,
                    op,
                    source: e,
                }),
                store_failed: true,
            },
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

/// The store answered an operation with an error.
#[derive(Debug, thiserror::Error)]
#[error("{op} on tier {tier} ({endpoint}) failed: {source}")]
pub(super) struct StoreError {
    pub(super) tier: TierName,
    pub(super) endpoint: String,
    pub(super) op: &'static str,
    #[source]
    pub(super) source: object_store::Error,
}
