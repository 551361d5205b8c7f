//! A circuit breaker for a remote tier: after a number of consecutive
//! failures it opens, and calls fail fast until a probe (one call let
//! through after the probe interval) succeeds. It knows nothing of Redis;
//! any remote tier can use it.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Ten years: the longest a deadline reaches.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `now + d`, saturated instead of overflowing (settings are at most ten
/// years anyway).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(TEN_YEARS))
        .unwrap_or(now)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Open, with one probe in flight.
    Probing,
}

pub(crate) struct Breaker {
    pub(crate) threshold: u32,
    pub(crate) interval: Duration,
    pub(crate) state: Mutex<(BreakerState, String)>,
}

/// What a finished call tells the breaker.
pub(crate) enum Verdict {
    /// Redis answered (a hit, a miss, a refused value, a command error).
    Answered,
    /// Redis did not answer (timeout, connection or authentication error).
    Failed(String),
    /// Redis was not involved after all (e.g. a module too large to save).
    Neutral,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, interval: Duration) -> Self {
        Breaker {
            threshold,
            interval,
            state: Mutex::new((BreakerState::Closed { failures: 0 }, String::new())),
        }
    }

    pub(crate) fn available(&self) -> bool {
        matches!(self.state.lock().0, BreakerState::Closed { .. })
    }

    /// Let a call through (`Ok(probe)`) or say why not: the last failure,
    /// and when the next probe goes.
    pub(crate) fn admit(&self) -> Result<bool, (String, String)> {
        let mut guard = self.state.lock();
        let (state, last) = &mut *guard;
        match *state {
            BreakerState::Closed { .. } => Ok(false),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::Probing;
                    Ok(true)
                } else {
                    Err((
                        last.clone(),
                        format!("next probe in {} ms", (until - now).as_millis() + 1),
                    ))
                }
            }
            BreakerState::Probing => Err((last.clone(), "a probe is in flight".to_string())),
        }
    }

    /// Record a call's verdict; true when availability changed.
    pub(crate) fn settle(&self, probe: bool, verdict: Verdict) -> bool {
        let mut guard = self.state.lock();
        let (state, last) = &mut *guard;
        match (verdict, *state) {
            (Verdict::Answered, BreakerState::Closed { .. }) => {
                *state = BreakerState::Closed { failures: 0 };
                false
            }
            (Verdict::Answered, BreakerState::Probing) if probe => {
                *state = BreakerState::Closed { failures: 0 };
                last.clear();
                true
            }
            (Verdict::Failed(reason), BreakerState::Closed { failures }) => {
                let failures = failures + 1;
                *last = reason;
                if failures >= self.threshold {
                    *state = BreakerState::Open {
                        until: deadline_after(self.interval),
                    };
                    true
                } else {
                    *state = BreakerState::Closed { failures };
                    false
                }
            }
            (Verdict::Failed(reason), BreakerState::Probing) if probe => {
                *last = reason;
                *state = BreakerState::Open {
                    until: deadline_after(self.interval),
                };
                false
            }
            (Verdict::Neutral, BreakerState::Probing) if probe => {
                // No evidence either way: let the next call probe at once.
                *state = BreakerState::Open {
                    until: Instant::now(),
                };
                false
            }
            // Calls admitted before the breaker opened: only the probe decides.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert_eq!(b.admit(), Ok(false));
        assert!(!b.settle(false, Verdict::Failed("x".into())));
        assert!(!b.settle(false, Verdict::Answered)); // resets the count
        assert!(!b.settle(false, Verdict::Failed("x".into())));
        assert!(b.settle(false, Verdict::Failed("y".into()))); // opens
        assert!(!b.available());
        assert!(b.admit().unwrap_err().0 == "y");
        // a late failure of a call admitted before: ignored
        assert!(!b.settle(false, Verdict::Failed("z".into())));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Ok(true)); // the probe
        assert!(b.admit().unwrap_err().1.contains("probe is in flight"));
        assert!(!b.settle(true, Verdict::Failed("still down".into())));
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Ok(true));
        assert!(!b.settle(true, Verdict::Neutral)); // abandoned: next call probes
        assert_eq!(b.admit(), Ok(true));
        assert!(b.settle(true, Verdict::Answered)); // closes
        assert!(b.available());
    }
}
