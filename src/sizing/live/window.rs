//! The window's working set: bytes of the distinct keys requested in each
//! of its epochs, so that keys not requested within the window drop out.

use std::collections::VecDeque;

use super::model::EPOCHS;
use crate::sizing::{KeyMap, sampling::key_hash};

/// Bytes of the distinct keys requested in each epoch of the window.
#[derive(Debug, Default)]
pub(super) struct WorkingSet {
    /// Key -> (epoch of its last request, its bytes).
    pub(super) keys: KeyMap<(u64, u64)>,
    /// Bytes per epoch, oldest first; the last is the current epoch.
    buckets: VecDeque<u64>,
    /// Epoch number of `buckets[0]`.
    first: u64,
}

impl WorkingSet {
    pub(super) fn new() -> Self {
        WorkingSet {
            buckets: VecDeque::from([0]),
            ..Default::default()
        }
    }

    pub(super) fn touch(&mut self, key: u64, bytes: u64) {
        let current = self.first + self.buckets.len() as u64 - 1;
        let last = self.buckets.len() - 1;
        match self.keys.get_mut(&key) {
            Some((epoch, old)) => {
                if *epoch >= self.first {
                    let b = &mut self.buckets[(*epoch - self.first) as usize];
                    *b = b.saturating_sub(*old);
                }
                *epoch = current;
                *old = bytes;
            }
            None => {
                self.keys.insert(key, (current, bytes));
            }
        }
        self.buckets[last] += bytes;
    }

    /// A new epoch; keys not requested within the window, or no longer
    /// sampled (`threshold`), are forgotten.
    pub(super) fn close_epoch(&mut self, threshold: u64) {
        self.buckets.push_back(0);
        if self.buckets.len() > EPOCHS {
            self.buckets.pop_front();
            self.first += 1;
        }
        let first = self.first;
        self.keys
            .retain(|k, (e, _)| *e >= first && key_hash(*k) <= threshold);
        for b in &mut self.buckets {
            *b = 0;
        }
        for (e, bytes) in self.keys.values() {
            self.buckets[(*e - first) as usize] += bytes;
        }
    }

    pub(super) fn bytes(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The hash threshold of a sampling rate (keys whose [`key_hash`] is at
/// most this are modelled).
pub(super) fn threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        (rate * 18_446_744_073_709_551_616.0) as u64
    }
}
