//! Integration tests in one binary (each test binary links wasmer: one
//! binary builds faster and takes less disk than one per area). Areas are
//! modules; shared helpers come from `tests/common` and `tests/support`.

#[path = "../common/mod.rs"]
mod common;
#[cfg(feature = "objects")]
#[path = "../support/s3_server.rs"]
mod s3_server;

#[cfg(feature = "objects")]
mod objects;
