//! Admission: every call passes the circuit breaker of the master it goes
//! to (or the server's), and reports how it ended; availability changes
//! are reported to the tier's observers.

use std::sync::Arc;

use crate::cache::{CacheError, Unavailability};

use super::*;
use crate::tier::breaker::{Breaker, Verdict};

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

impl Shared {
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
}
