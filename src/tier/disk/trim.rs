//! Trimming a cache directory (what `tierscope cache trim` and `clear`
//! run): entries removed by last use or down to a size, under the
//! directory's advisory lock that every process using the directory takes
//! for its own changes, so it is safe while runtimes use the directory (a
//! module loaded from a removed entry keeps its mapping; the others rescan
//! before their next save).

use std::{
    fs, io,
    time::{Duration, SystemTime},
};

use super::*;

/// What [`FileSystemCache::trim`] or [`FileSystemCache::clear`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TrimReport {
    /// Entries removed.
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Entries left.
    pub kept: u64,
    /// Their bytes.
    pub kept_bytes: u64,
    /// Entries that could not be removed, with the reason.
    pub failures: Vec<CacheError>,
}

impl FileSystemCache {
    /// Remove the entries not used for `unused_for` (by last use: the
    /// modification time a hit refreshes), then the least recently used
    /// until the entries of every namespace fit in `max_bytes`; leftover
    /// temporary files of writers that are gone go too. All under the
    /// directory's lock (waiting at most
    /// [`lock_timeout`](FileSystemCacheBuilder::lock_timeout), then
    /// [`CacheError::Timeout`]), so it is safe while other processes use
    /// the directory: they rescan before their next change, and modules
    /// already loaded from a removed entry keep working.
    pub fn trim(
        &self,
        max_bytes: Option<u64>,
        unused_for: Option<Duration>,
    ) -> Result<TrimReport, CacheError> {
        let cutoff = unused_for.and_then(|d| SystemTime::now().checked_sub(d));
        let done = self.with_dir_lock(self.shared.lock_timeout, |this, _| {
            this.scan_into_index()?;
            let mut report = TrimReport::default();
            if let Some(cutoff) = cutoff {
                let old: Vec<String> = {
                    let index = this.shared.index.lock();
                    index
                        .lru
                        .iter()
                        .filter(|(_, m)| m.touched < cutoff)
                        .map(|(rel, _)| rel.clone())
                        .collect()
                };
                for rel in old {
                    let meta = this.shared.index.lock().remove(&rel);
                    if let Some(meta) = meta {
                        this.remove_trimmed(&rel, meta, &mut report);
                    }
                }
            }
            if let Some(max) = max_bytes {
                loop {
                    let victim = {
                        let mut index = this.shared.index.lock();
                        if index.bytes <= max {
                            break;
                        }
                        match index.lru.pop_lru() {
                            Some((rel, meta)) => {
                                index.bytes -= meta.bytes;
                                (rel, meta)
                            }
                            None => break,
                        }
                    };
                    this.remove_trimmed(&victim.0, victim.1, &mut report);
                }
            }
            {
                let index = this.shared.index.lock();
                report.kept = index.lru.len() as u64;
                report.kept_bytes = index.bytes;
            }
            Ok((report, true))
        })?;
        self.shared.observers.resident(self.residency());
        done.ok_or_else(|| CacheError::Timeout {
            op: "trim",
            tier: disk_tier_name(),
            after: self.shared.lock_timeout,
        })
    }

    /// Remove every entry of every namespace (and leftover temporary
    /// files), as [`trim`](Self::trim) to zero bytes does. Saves in
    /// progress, the lock file and files that are not tierscope's stay.
    pub fn clear(&self) -> Result<TrimReport, CacheError> {
        self.trim(Some(0), None)
    }

    /// Remove `rel`, already taken out of the index (trim holds the lock).
    fn remove_trimmed(&self, rel: &str, meta: Meta, report: &mut TrimReport) {
        let path = self.shared.root.join(rel);
        self.forget_verified(rel);
        match fs::remove_file(&path) {
            Ok(()) => {
                report.removed += 1;
                report.removed_bytes += meta.bytes;
                self.report(EvictionCause::Explicit, meta);
            }
            // Another process got there first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                report.failures.push(CacheError::FileWrite { path, error });
                // Still there: keep counting it.
                self.shared.index.lock().insert(rel.to_string(), meta);
            }
        }
    }
}
