//! The tiers: one file each.

pub(crate) mod blocking;
#[cfg(feature = "redis")]
pub(crate) mod breaker;
pub mod disk;
pub mod memory;
pub(crate) mod memory_policy;
#[cfg(feature = "redis")]
pub mod redis;
