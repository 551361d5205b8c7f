//! `tierscope cache`: an operator's view of a cache directory, in the
//! spirit of `ccache --show-stats` and `wasmer cache`.
//!
//! - [`stats`]: what the directory holds, per namespace, and what is not
//!   tierscope's;
//! - [`verify`]: every entry checked as a load checks it;
//! - [`trim`]: `trim` and `clear`, under the lock every process using the
//!   directory takes;
//! - [`warm`]: compile modules into the cache before a deploy.
//!
//! All of them go through the disk tier's public maintenance API
//! (`tierscope::tier::disk`: `build_for_maintenance`, `inventory`, `verify`,
//! `trim`, `clear`), never around it.

mod stats;
mod trim;
mod verify;
mod warm;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use tierscope::{
    CacheError, FileSystemCache, FileSystemCacheBuilder, MacKey, disk::UnsafeDirectory,
};

use crate::common::Failure;

/// The environment variable holding the disk tier's MAC keys (64 hex digits
/// each, comma-separated, the signing key first).
pub const DISK_KEY_ENV: &str = "TIERSCOPE_DISK_KEY";

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries, bytes, age and last use per namespace (engine, wasmer
    /// version, format), and what is not tierscope's.
    #[command(after_help = stats::EXAMPLES)]
    Stats(stats::StatsArgs),
    /// Check every entry's header and checksum (and MAC); report bad ones
    /// or remove them. Exit code 1 if any was bad.
    #[command(after_help = verify::EXAMPLES)]
    Verify(verify::VerifyArgs),
    /// Remove entries not used for a while, or the least recently used
    /// down to a size; safe while programs use the cache.
    #[command(after_help = trim::TRIM_EXAMPLES)]
    Trim(trim::TrimArgs),
    /// Remove every entry; safe while programs use the cache.
    #[command(after_help = trim::CLEAR_EXAMPLES)]
    Clear(trim::ClearArgs),
    /// Compile every wasm module found into the cache (and a shared tier),
    /// so that no node compiles on its first request.
    #[command(after_help = warm::EXAMPLES)]
    Warm(warm::WarmArgs),
}

/// The cache directory, as every `cache` subcommand takes it.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// The cache directory (default: the one `tierscope run` uses,
    /// $XDG_CACHE_HOME/tierscope or ~/.cache/tierscope).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The directory is shared by a group on purpose (group-writable): go
    /// on rather than refuse it.
    #[arg(long)]
    shared: bool,
}

impl DirArgs {
    /// The directory to work on.
    pub fn dir(&self) -> Result<PathBuf, Failure> {
        cache_dir(self.cache_dir.as_deref())
    }

    /// A builder for the disk tier in that directory.
    pub fn builder(&self, dir: &Path) -> FileSystemCacheBuilder {
        FileSystemCache::builder(dir)
            .shared_directory(self.shared)
            .lock_timeout(std::time::Duration::from_secs(10))
    }
}

/// The user's cache directory for tierscope.
pub fn default_cache_dir() -> Option<PathBuf> {
    let nonempty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(nonempty) {
        return Some(xdg.join("tierscope"));
    }
    std::env::var_os("HOME")
        .and_then(nonempty)
        .map(|home| home.join(".cache").join("tierscope"))
}

/// The cache directory to use: the one given, or the user's.
pub fn cache_dir(given: Option<&Path>) -> Result<PathBuf, Failure> {
    given
        .map(Path::to_path_buf)
        .or_else(default_cache_dir)
        .ok_or_else(|| {
            Failure::Usage(
                "no cache directory: set --cache-dir (neither XDG_CACHE_HOME nor HOME is set)"
                    .into(),
            )
        })
}

/// The disk MAC keys from [`DISK_KEY_ENV`].
pub fn disk_keys() -> Result<Vec<MacKey>, Failure> {
    MacKey::list_from_env(DISK_KEY_ENV).map_err(|e| Failure::Usage(format!("--mac: {e}")))
}

/// An error of the disk tier, said for an operator: a directory others can
/// write to is named with what to do about it.
pub fn explain(dir: &Path, e: CacheError) -> Failure {
    if let CacheError::Other(inner) = &e
        && let Some(unsafe_dir) = inner.downcast_ref::<UnsafeDirectory>()
    {
        return Failure::Usage(format!(
            "{} ({}, mode {:04o}, owner uid {}): refused, as every tierscope process refuses it; pass --shared if the directory is shared on purpose",
            unsafe_dir.path.display(),
            unsafe_dir.why,
            unsafe_dir.mode,
            unsafe_dir.owner,
        ));
    }
    if let CacheError::Timeout { after, .. } = &e {
        return Failure::Runtime(format!(
            "{}: another process held the directory's lock for more than {} s; try again",
            dir.display(),
            after.as_secs()
        ));
    }
    Failure::Runtime(format!("{}: {e}", dir.display()))
}

/// Run a `cache` subcommand; the result is the exit code.
pub fn run(command: CacheCommand) -> Result<u8, Failure> {
    match command {
        CacheCommand::Stats(args) => stats::run(args),
        CacheCommand::Verify(args) => verify::run(args),
        CacheCommand::Trim(args) => trim::run_trim(args),
        CacheCommand::Clear(args) => trim::run_clear(args),
        CacheCommand::Warm(args) => warm::run(args),
    }
}

/// "1 entry", "2 entries".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A line above the progress bar, or on stdout when the bar is hidden
/// (indicatif drops lines printed through a hidden bar).
pub fn say(pb: &indicatif::ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}
