//! The tiers: one file each.

pub mod disk;
pub mod memory;
pub(crate) mod memory_policy;
#[cfg(feature = "redis")]
pub mod redis;
