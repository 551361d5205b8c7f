//! The tiers: one file each.

pub(crate) mod blocking;
#[cfg(any(feature = "redis", feature = "objects"))]
pub(crate) mod breaker;
pub mod disk;
pub mod memory;
pub(crate) mod memory_policy;
#[cfg(feature = "objects")]
pub mod objects;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "redis", feature = "objects"))]
pub(crate) mod remote_value;
