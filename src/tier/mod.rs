//! The tiers: one file each.

pub mod disk;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
