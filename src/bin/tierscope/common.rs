//! What every command shares: the error type, the cache directory check,
//! and the shared tiers built from `--redis` and `--objects`.

#[cfg(any(feature = "redis", feature = "objects"))]
use tierscope::InstrumentExt;

/// How a command failed: bad input (exit code 2) or at run time (1).
pub enum Failure {
    Usage(String),
    Runtime(String),
}

/// Check `dir` can hold the disk tier now, rather than finding out from
/// every save failing later: it is (or can be made) a directory, private
/// to this user, that this process can write in.
pub fn usable_cache_dir(dir: &std::path::Path) -> Result<(), Failure> {
    let bad = |why: String| Failure::Usage(format!("--cache-dir {}: {why}", dir.display()));
    if dir.exists() && !dir.is_dir() {
        return Err(bad("exists and is not a directory".into()));
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| bad(format!("cannot create it: {e}")))?;
    tempfile::Builder::new()
        .prefix(".tierscope-probe-")
        .tempfile_in(dir)
        .map_err(|e| bad(format!("cannot write in it: {e}")))?;
    Ok(())
}

/// The Redis tier of the CLI's stacks, instrumented under the cache name `name`, its key
/// read from the environment and the server checked before use.
#[cfg(feature = "redis")]
pub async fn redis_tier(
    url: &str,
    name: &str,
) -> Result<tierscope::Instrumented<tierscope::RedisCache>, Failure> {
    // The key comes from the environment, never the command line (which
    // other users of the machine can read).
    let cache = tierscope::RedisCache::builder(url)
        .mac_keys_from_env()
        .map_err(|e| {
            Failure::Usage(format!(
                "--redis: {e}; generate one with `openssl rand -hex 32`"
            ))
        })?
        .build()
        .map_err(|e| Failure::Usage(format!("--redis {url}: {e}")))?;
    // Instrument first, so availability is reported, then check the server
    // answers: a wrong address or password is a clear error now, not later.
    let cache = cache.instrumented(name, "redis");
    cache
        .get_ref()
        .ping()
        .await
        .map_err(|e| Failure::Runtime(format!("--redis {url}: {e}")))?;
    Ok(cache)
}

/// The object-store tier of the CLI's stacks, instrumented under the cache
/// name `name`: credentials from the environment as the `object_store`
/// crate reads them, the MAC key from TIERSCOPE_OBJECTS_KEY (never the
/// command line).
#[cfg(feature = "objects")]
pub fn objects_tier(
    url: &str,
    name: &str,
) -> Result<tierscope::Instrumented<tierscope::ObjectsCache>, Failure> {
    let cache = tierscope::ObjectsCache::builder(url)
        .mac_keys_from_env()
        .map_err(|e| {
            Failure::Usage(format!(
                "--objects: {e}; generate one with `openssl rand -hex 32`"
            ))
        })?
        .build()
        .map_err(|e| Failure::Usage(format!("--objects: {e}")))?;
    Ok(cache.instrumented(name, "objects"))
}
