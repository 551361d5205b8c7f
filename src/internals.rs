//! Not API: what the crate's own CLI, tests and benches reach into beyond
//! the public surface (feature `test-util`, which `cli` turns on). Hidden
//! from the docs; anything here may change in any release.
//!
//! The internal modules themselves ([`crate::engine`], [`crate::entry`],
//! [`crate::names`], [`crate::weights`], and `sizing`'s submodules) are
//! public under the same feature; this module gathers the items of private
//! modules.

pub use crate::tier::memory::KeyHasher;

/// The Redis tier's limits and defaults.
#[cfg(feature = "redis")]
pub mod redis {
    pub use crate::tier::redis::{
        DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TIMEOUT, FIRST_READ_BYTES, MAC_KEY_ENV, MAC_LEN,
        REDIS_MAX_VALUE_BYTES,
    };
}

/// The object-store tier's limits and defaults.
#[cfg(feature = "objects")]
pub mod objects {
    pub use crate::tier::objects::*;
}
