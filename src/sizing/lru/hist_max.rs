//! Each slot's bytes-above and its historical maximum, under range adds:
//! the distance structure of the exact LRU model once some object's size
//! has shrunk (bytes above a slot are then no longer monotone).

/// Per slot x: `A[x]` = the bytes above x, and its maximum since x was
/// assigned. Range adds on `[0, p)`, one root-to-leaf path each.
#[derive(Debug, Clone)]
pub(super) struct HistMax {
    /// Leaves (n..2n): (value, historical max). Internal nodes: pending
    /// (sum of adds, max prefix sum of adds).
    add: Vec<i64>,
    max: Vec<i64>,
    n: usize,
}

impl HistMax {
    /// From each slot's current bytes-above (its historical max starts there).
    pub(super) fn from_values(values: &[i64], hist: &[i64]) -> Self {
        let n = values.len().max(1).next_power_of_two();
        let mut add = vec![0i64; 2 * n];
        let mut max = vec![0i64; 2 * n];
        for (i, (&v, &h)) in values.iter().zip(hist).enumerate() {
            add[n + i] = v;
            max[n + i] = h.max(v);
        }
        HistMax { add, max, n }
    }

    #[inline]
    fn apply(&mut self, node: usize, a: i64, m: i64) {
        self.max[node] = self.max[node].max(self.add[node].saturating_add(m));
        self.add[node] = self.add[node].saturating_add(a);
    }

    #[inline]
    fn push(&mut self, node: usize) {
        let (a, m) = (self.add[node], self.max[node]);
        if a != 0 || m != 0 {
            self.apply(2 * node, a, m);
            self.apply(2 * node + 1, a, m);
            self.add[node] = 0;
            self.max[node] = 0;
        }
    }

    /// Push every pending tag down to leaf `slot`; its index.
    fn descend(&mut self, slot: usize, mut on_left: impl FnMut(&mut Self, usize)) -> usize {
        let mut node = 1;
        let mut lo = 0;
        let mut len = self.n;
        while len > 1 {
            self.push(node);
            let half = len / 2;
            if slot >= lo + half {
                on_left(self, 2 * node);
                node = 2 * node + 1;
                lo += half;
            } else {
                node *= 2;
            }
            len = half;
        }
        node
    }

    /// Add `delta` to every slot below `slot`.
    pub(super) fn add_below(&mut self, slot: usize, delta: i64) {
        if slot >= self.n {
            self.apply(1, delta, delta.max(0));
            return;
        }
        self.descend(slot, |t, left| t.apply(left, delta, delta.max(0)));
    }

    /// `(value, historical max)` of a slot.
    pub(super) fn get(&mut self, slot: usize) -> (i64, i64) {
        if slot >= self.n {
            return (0, 0);
        }
        let leaf = self.descend(slot, |_, _| {});
        (self.add[leaf], self.max[leaf])
    }

    /// Start a fresh slot: its history begins now.
    pub(super) fn reset(&mut self, slot: usize) {
        if slot < self.n {
            let leaf = self.descend(slot, |_, _| {});
            self.max[leaf] = self.add[leaf];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_max_keeps_each_slots_maximum() {
        // Slots 0..4 with nothing above.
        let mut h = HistMax::from_values(&[0; 5], &[0; 5]);
        h.add_below(3, 10); // slots 0, 1, 2 gain 10
        h.add_below(2, -4); // slots 0, 1 lose 4
        h.add_below(1, 1); // slot 0 gains 1
        assert_eq!(h.get(0), (7, 10));
        assert_eq!(h.get(1), (6, 10));
        assert_eq!(h.get(2), (10, 10));
        assert_eq!(h.get(3), (0, 0));
        h.reset(1);
        assert_eq!(h.get(1), (6, 6));
        h.add_below(2, 3);
        assert_eq!(h.get(1), (9, 9));
        assert_eq!(h.get(0), (10, 10));
        assert_eq!(h.get(99), (0, 0));
    }
}
