//! How the memory tier turns a byte bound into quick_cache options.
//!
//! One function, [`derive`], used both by [`MemoryCacheBuilder::build`] and
//! by the sizing shadows ([`crate::sizing::memory`]), so a shadow's policy
//! can never drift from the tier's: the same shard count, ghost list size
//! (`estimated_items_capacity`), hot allocation and weight capacity.
//!
//! Rules the derivation implies (quick_cache 0.7):
//! - each shard holds `capacity / shards` bytes (rounded up), and quick_cache
//!   halves the shard count until each shard expects at least 32 items
//!   ([`MemoryPolicy::shard_layout`] mirrors that);
//! - an entry heavier than `hot_allocation` (default 0.9) of its shard's
//!   capacity is refused (never admitted, nothing evicted for it);
//! - entries weigh at least 1 byte (a zero-weight entry would never be
//!   evicted).
//!
//! [`MemoryCacheBuilder::build`]: crate::MemoryCacheBuilder::build

use quick_cache::{Options, OptionsBuilder};

/// The quick_cache options of one memory tier of a given bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemoryPolicy {
    /// The bound in bytes (at least 1).
    pub(crate) capacity: u64,
    /// Shards asked of quick_cache (a power of two, 1 to 1024).
    pub(crate) shards: usize,
    /// quick_cache's `estimated_items_capacity` (sizes the ghost list).
    pub(crate) estimated_items: usize,
    /// Share of each shard for entries hit since admission.
    pub(crate) hot_allocation: f64,
}

/// Derive the options of a memory tier of `capacity` bytes: `shards` and
/// `hot_allocation` as given to the builder (`None`: the default shard
/// count), `parallelism` the number of cores the default is computed for.
pub(crate) fn derive(
    capacity: u64,
    shards: Option<usize>,
    hot_allocation: f64,
    parallelism: usize,
) -> MemoryPolicy {
    let shards = shards
        .unwrap_or_else(|| (parallelism.saturating_mul(4)).min((capacity / (32 << 20)) as usize))
        .clamp(1, 1024)
        .next_power_of_two();
    let capacity = capacity.max(1);
    MemoryPolicy {
        capacity,
        shards,
        estimated_items: ((capacity / (64 << 10)) as usize).clamp(16, 1 << 20),
        hot_allocation: if hot_allocation.is_finite() {
            hot_allocation.clamp(0.5, 0.99)
        } else {
            0.9
        },
    }
}

/// The number of cores the default shard count is computed for.
pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl MemoryPolicy {
    /// The quick_cache options.
    pub(crate) fn options(&self) -> Option<Options> {
        OptionsBuilder::new()
            .weight_capacity(self.capacity)
            .estimated_items_capacity(self.estimated_items)
            .shards(self.shards)
            .hot_allocation(self.hot_allocation)
            .build()
            .ok()
    }

    /// What quick_cache's `sync::Cache::with_options` makes of these
    /// options: (shards, items per shard, bytes per shard). Mirrors its
    /// code; a test checks it against a real tier.
    pub(crate) fn shard_layout(&self) -> (u64, u64, u64) {
        let mut shards = (self.shards as u64).next_power_of_two().max(1);
        let items = self.estimated_items as u64;
        let per_items = |n: u64| items.saturating_add(n - 1) / n;
        let per_weight = |n: u64| self.capacity.saturating_add(n - 1) / n;
        while per_items(shards) < 32 && shards > 1 {
            shards /= 2;
        }
        (shards, per_items(shards), per_weight(shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_a_real_tier() {
        for capacity in [1u64, 1000, 1 << 20, 8 << 20, 100 << 20, 3 << 30] {
            for shards in [None, Some(1), Some(3), Some(64)] {
                let mut b = crate::MemoryCache::builder(capacity);
                if let Some(s) = shards {
                    b = b.shards(s);
                }
                let real = b.build();
                let policy = derive(capacity, shards.map(|s| s.max(1)), 0.9, parallelism());
                assert_eq!(
                    policy.shard_layout().2,
                    real.shard_capacity_bytes(),
                    "capacity {capacity}, shards {shards:?}"
                );
            }
        }
    }
}

/// How the shadows derive their options (as a [`MemoryCacheBuilder`]
/// would be given them).
///
/// [`MemoryCacheBuilder`]: crate::MemoryCacheBuilder
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowOptions {
    /// `MemoryCacheBuilder::shards` (`None`: the tier's default, which
    /// depends on `parallelism`).
    pub shards: Option<usize>,
    /// `MemoryCacheBuilder::hot_allocation` (default 0.9).
    pub hot_allocation: f64,
    /// Cores of the machine the tier runs on (the default shard count is
    /// four per core, at most one per 32 MiB of capacity, rounded up to a
    /// power of two).
    pub parallelism: usize,
}

impl Default for ShadowOptions {
    /// The tier's defaults on this machine.
    fn default() -> Self {
        ShadowOptions {
            shards: None,
            hot_allocation: 0.9,
            parallelism: parallelism(),
        }
    }
}
