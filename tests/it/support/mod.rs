//! Servers the tests start themselves, on free loopback ports.

#[cfg(feature = "redis")]
pub mod redis_cluster;
pub mod redis_server;
#[cfg(feature = "objects")]
pub mod s3_server;
