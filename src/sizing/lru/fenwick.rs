//! Point updates and "sum above a slot" queries over per-slot weights: the
//! distance structure of the exact LRU model while sizes never shrink.

/// Point updates and "sum above a slot" queries: each slot's weight in a
/// flat array, and a Fenwick tree over blocks of 64 slots. The block tree
/// is small enough to stay in cache (4 KiB per 32 K slots), so a request
/// costs about two cache misses (its slot's weight and its block's 512
/// bytes, read in order) instead of one per tree level.
#[derive(Debug, Clone)]
pub(super) struct Fenwick {
    weights: Vec<u64>,
    /// Fenwick tree over block sums, 1-based.
    blocks: Vec<u64>,
    total: u64,
}

const BLOCK: usize = 64;

impl Fenwick {
    pub(super) fn new(len: usize) -> Self {
        Self::from_weights(&vec![0; len])
    }

    /// Build from per-slot weights in O(n).
    pub(super) fn from_weights(weights: &[u64]) -> Self {
        let nblocks = weights.len().div_ceil(BLOCK);
        let mut blocks = vec![0u64; nblocks + 1];
        let mut total = 0u64;
        for (b, chunk) in weights.chunks(BLOCK).enumerate() {
            let sum = chunk.iter().fold(0u64, |a, &w| a.wrapping_add(w));
            total = total.wrapping_add(sum);
            blocks[b + 1] = blocks[b + 1].wrapping_add(sum);
        }
        for i in 1..blocks.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent < blocks.len() {
                blocks[parent] = blocks[parent].wrapping_add(blocks[i]);
            }
        }
        Fenwick {
            weights: weights.to_vec(),
            blocks,
            total,
        }
    }

    #[inline]
    pub(super) fn add(&mut self, slot: usize, delta: u64) {
        let Some(w) = self.weights.get_mut(slot) else {
            return;
        };
        *w = w.wrapping_add(delta);
        self.total = self.total.wrapping_add(delta);
        let mut i = slot / BLOCK + 1;
        while i < self.blocks.len() {
            self.blocks[i] = self.blocks[i].wrapping_add(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Sum of whole blocks `0..=block`.
    #[inline]
    fn block_prefix(&self, block: usize) -> u64 {
        let mut i = (block + 1).min(self.blocks.len() - 1);
        let mut s = 0u64;
        while i > 0 {
            s = s.wrapping_add(self.blocks[i]);
            i &= i - 1;
        }
        s
    }

    /// Sum of slots `0..=slot`.
    #[cfg(test)]
    fn prefix(&self, slot: usize) -> u64 {
        self.total.wrapping_sub(self.above(slot))
    }

    /// Sum of slots after `slot`.
    #[inline]
    pub(super) fn above(&self, slot: usize) -> u64 {
        let block = slot / BLOCK;
        let end = ((block + 1) * BLOCK).min(self.weights.len());
        let within = self
            .weights
            .get(slot + 1..end)
            .map_or(0, |ws| ws.iter().fold(0u64, |a, &w| a.wrapping_add(w)));
        self.total
            .wrapping_sub(self.block_prefix(block))
            .wrapping_add(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenwick_sums_above_a_slot() {
        let mut f = Fenwick::from_weights(&[5, 0, 7, 1]);
        assert_eq!(f.above(0), 8);
        assert_eq!(f.above(3), 0);
        f.add(1, 10);
        f.add(2, (-7i64) as u64);
        assert_eq!(f.above(0), 11);
        assert_eq!(f.prefix(2), 15);
    }
}
