//! The LRU index of the directory's entries: rebuilt by a scan (which also
//! removes abandoned temporary files and leaves foreign files alone), kept
//! within the byte bound by evicting the least recently used, and told of
//! hits.

use std::{
    collections::HashSet,
    fs::{self},
    io,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use lru::LruCache;
use parking_lot::Mutex;

use super::*;

/// At most this many foreign paths are remembered (each reported once).
pub(super) const MAX_REPORTED: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub(super) bytes: u64,
    /// Last mtime we wrote (or found) for the file.
    pub(super) touched: SystemTime,
    /// When the entry was created, when known.
    pub(super) created: Option<SystemTime>,
}

pub(super) struct Index {
    /// Relative path (`namespace/HASH.bin`) to metadata, least recent first.
    pub(super) lru: LruCache<String, Meta>,
    pub(super) bytes: u64,
}

impl Index {
    pub(super) fn empty() -> Self {
        Index {
            lru: LruCache::unbounded(),
            bytes: 0,
        }
    }

    pub(super) fn insert(&mut self, rel: String, meta: Meta) -> Option<Meta> {
        self.bytes += meta.bytes;
        let old = self.lru.push(rel.clone(), meta);
        match old {
            Some((k, m)) if k == rel => {
                self.bytes -= m.bytes;
                Some(m)
            }
            // `push` on an unbounded cache never evicts another key.
            _ => None,
        }
    }

    pub(super) fn remove(&mut self, rel: &str) -> Option<Meta> {
        let m = self.lru.pop(rel)?;
        self.bytes -= m.bytes;
        Some(m)
    }
}

impl FileSystemCache {
    /// Rebuild the index from the directory: forget entries that are gone,
    /// learn entries other processes wrote, remove abandoned temporary
    /// files, then evict down to the bound. Returns the number of entries.
    pub fn rescan(&self) -> Result<usize, CacheError> {
        let locked = self.with_dir_lock(self.shared.lock_timeout, |this, _| {
            let count = this.scan_into_index()?;
            let evicted = this.enforce_bound(None);
            Ok((count, evicted > 0))
        })?;
        let count = match locked {
            Some(count) => count,
            None => {
                // Held elsewhere for longer than the bound: read the
                // directory anyway, evict nothing (the holder's own changes
                // keep the bound; the next save here rescans under the lock).
                tracing::warn!(
                    dir = %self.shared.root.display(),
                    waited = ?self.shared.lock_timeout,
                    "the cache directory's lock is held elsewhere: scanned without it",
                );
                self.scan_into_index()?
            }
        };
        self.shared.observers.resident(self.residency());
        Ok(count)
    }

    /// Scan the directory and replace the index with what it holds, keeping
    /// the recency this instance knows better than the files' mtimes.
    pub(super) fn scan_into_index(&self) -> Result<usize, CacheError> {
        let shared = &self.shared;
        let known: std::collections::HashMap<String, Meta> = shared
            .index
            .lock()
            .lru
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut found = self.scan(&known)?;
        // Least recently touched first, so the LRU order matches the files'.
        found.sort_by_key(|(_, m)| m.touched);
        let count = found.len();
        let mut index = shared.index.lock();
        *index = Index::empty();
        for (rel, meta) in found {
            index.insert(rel, meta);
        }
        Ok(count)
    }

    pub(super) fn scan(
        &self,
        known: &std::collections::HashMap<String, Meta>,
    ) -> Result<Vec<(String, Meta)>, CacheError> {
        let shared = &self.shared;
        let mut found: Vec<(String, Meta)> = Vec::new();
        let namespaces = match fs::read_dir(&shared.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(error) => {
                return Err(CacheError::FileRead {
                    path: shared.root.clone(),
                    error,
                });
            }
        };
        let now = SystemTime::now();
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            if ns_name == LOCK_NAME {
                continue;
            }
            let is_dir = ns.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !is_namespace_name(&ns_name) {
                warn_once(&ns.path(), "not a cache namespace directory: left alone");
                continue;
            }
            if !shared.shared_directory {
                // Files may vanish under us (another process evicting).
                let Ok(md) = fs::symlink_metadata(ns.path()) else {
                    continue;
                };
                check_private(&ns.path(), &md)?;
            }
            let Ok(files) = fs::read_dir(ns.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let path = file.path();
                if is_temp_name(&name) {
                    // This process's own temporary files are writes in
                    // progress by some instance here (one may not have
                    // locked its file yet): never abandoned.
                    if temp_pid(&name) != Some(std::process::id()) {
                        remove_if_abandoned(&path, shared.temp_grace);
                    }
                    continue;
                }
                if let Some(entry) = record_entry_name(&name) {
                    // A verification record whose entry is gone (removed by
                    // hand, or by a process that left the record): removed.
                    let gone = fs::symlink_metadata(ns.path().join(entry))
                        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
                    if gone {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                if !is_entry_name(&name) {
                    warn_once(&path, "not a cache entry: left alone");
                    continue;
                }
                // `DirEntry::metadata` does not follow links.
                let Ok(md) = file.metadata() else { continue };
                if !md.is_file() {
                    warn_once(&path, "not a regular file: left alone until read");
                    continue;
                }
                let rel = format!("{ns_name}/{name}");
                let known = known.get(&rel).filter(|m| m.bytes == md.len());
                if known.is_none() && !has_magic(&path) {
                    warn_once(&path, "no tierscope magic number: left alone until read");
                    continue;
                }
                let mut touched = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if touched > now {
                    // A clock set back, or a `touch`: age it from now on.
                    touched = now;
                    set_mtime(&path, now);
                }
                if let Some(k) = known {
                    touched = touched.max(k.touched);
                }
                found.push((
                    rel,
                    Meta {
                        bytes: md.len(),
                        touched,
                        created: known.and_then(|k| k.created).or(md.created().ok()),
                    },
                ));
            }
        }
        Ok(found)
    }

    /// Evict least recently used entries until the bound holds. `keep` is
    /// never evicted (the entry just written). Returns how many files went.
    /// Callers hold the directory lock.
    pub(super) fn enforce_bound(&self, keep: Option<&str>) -> usize {
        let Some(capacity) = self.shared.capacity else {
            return 0;
        };
        let mut evicted = 0;
        loop {
            let victim = {
                let mut index = self.shared.index.lock();
                if index.bytes <= capacity {
                    return evicted;
                }
                let Some((rel, meta)) = index.lru.pop_lru() else {
                    return evicted;
                };
                index.bytes -= meta.bytes;
                if keep == Some(rel.as_str()) {
                    // Only the newest entry is left and it alone exceeds the
                    // bound: put it back (saves refuse such entries first).
                    index.insert(rel, meta);
                    return evicted;
                }
                (rel, meta)
            };
            let path = self.shared.root.join(&victim.0);
            self.forget_verified(&victim.0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    evicted += 1;
                    self.report(EvictionCause::Capacity, victim.1);
                }
                // Another process got there first: nothing of ours to report.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = &e as &dyn std::error::Error,
                    "unable to evict a cache file"
                ),
            }
        }
    }

    /// Record a hit in the index and, now and then, in the file's mtime.
    pub(super) fn note_hit(&self, rel: String, path: &Path, bytes: u64, times: FileTimes) {
        let now = SystemTime::now();
        let mut index = self.shared.index.lock();
        let meta = match index.lru.get_mut(&rel) {
            Some(meta) => meta,
            None => {
                drop(index);
                // Written by another process since we scanned: learn it,
                // and what else changed, under the directory's lock if it is
                // free now. A hit never waits for it: when another process
                // holds it, the entry is only added to this index (the next
                // save here rescans under the lock and evicts).
                let meta = Meta {
                    bytes,
                    touched: times.modified.min(now),
                    created: times.created,
                };
                let learned = self.with_dir_lock(Duration::ZERO, |this, others_changed| {
                    if others_changed {
                        this.scan_into_index()?;
                    }
                    this.shared.index.lock().insert(rel.clone(), meta);
                    Ok(((), this.enforce_bound(Some(&rel)) > 0))
                });
                match learned {
                    Ok(Some(())) => {}
                    Ok(None) => {
                        self.shared.index.lock().insert(rel, meta);
                    }
                    Err(e) => tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "unable to rescan the cache directory"
                    ),
                }
                self.shared.observers.resident(self.residency());
                return;
            }
        };
        // A touch time in the future (a clock set back) is stale too.
        let stale = now
            .duration_since(meta.touched)
            .map_or(true, |d| d >= self.shared.touch_interval);
        if stale {
            meta.touched = now;
        }
        drop(index);
        if stale {
            // Best effort: a failure only loses recency across a restart.
            set_mtime(path, now);
        }
    }

    pub(super) fn discard_corrupt(&self, rel: &str, path: &Path, bytes: u64) {
        self.forget_verified(rel);
        let known = self.shared.index.lock().remove(rel);
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = &e as &dyn std::error::Error,
                "unable to remove a corrupt cache file"
            ),
        }
        let meta = known.unwrap_or(Meta {
            bytes,
            touched: SystemTime::now(),
            created: None,
        });
        self.report(EvictionCause::Corrupt, meta);
    }
}

/// Report a path that is not ours, once per process.
pub(super) fn warn_once(path: &Path, what: &str) {
    static REPORTED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let mut reported = REPORTED.get_or_init(Default::default).lock();
    if reported.contains(path) || reported.len() >= MAX_REPORTED {
        return;
    }
    reported.insert(path.to_path_buf());
    drop(reported);
    tracing::warn!(path = %path.display(), "{what}");
}
