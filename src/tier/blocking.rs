//! Work that must not run on an async worker thread (file I/O, hashing and
//! deserializing large artifacts), shared by the disk and Redis tiers.

use crate::{CacheError, TierName};

/// Run `f` on tokio's blocking pool when `off_thread` and a tokio runtime
/// is current; otherwise inline (no runtime to hand it to, or work too small
/// to be worth a thread hop). A worker that panicked or was cancelled is an
/// error naming `tier`, never a panic here.
pub(crate) async fn run<T, F>(tier: TierName, off_thread: bool, f: F) -> Result<T, CacheError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if !off_thread || tokio::runtime::Handle::try_current().is_err() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CacheError::Other(format!("{tier} tier worker failed: {e}").into()))
}
