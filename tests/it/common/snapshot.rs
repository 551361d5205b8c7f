//! Reading exact metric values from metrics-util's `DebuggingRecorder`.

use metrics_util::debugging::{DebugValue, Snapshotter};

/// One snapshot of a `DebuggingRecorder`.
pub type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Publish the per-thread hit counters, then take a snapshot. Taking one
/// resets the recorder's counters: take one per phase and query it often.
pub fn take(snapshotter: &Snapshotter) -> Snapshot {
    tierscope::observe::flush();
    snapshotter.snapshot().into_vec()
}

/// The value of the one series named `name` whose labels include `labels`.
pub fn value<'a>(snap: &'a Snapshot, name: &str, labels: &[(&str, &str)]) -> &'a DebugValue {
    let found: Vec<_> = snap
        .iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == name
                && labels
                    .iter()
                    .all(|(lk, lv)| k.key().labels().any(|l| l.key() == *lk && l.value() == *lv))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name} {labels:?} matched {} series",
        found.len()
    );
    &found[0].3
}

pub fn counter(snap: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snap, name, labels) {
        DebugValue::Counter(c) => *c,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

pub fn gauge(snap: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(snap, name, labels) {
        DebugValue::Gauge(g) => g.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

pub fn histogram_len(snap: &Snapshot, name: &str, labels: &[(&str, &str)]) -> usize {
    match value(snap, name, labels) {
        DebugValue::Histogram(h) => h.len(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}
