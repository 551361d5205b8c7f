//! The directory's advisory lock (`flock` on `.tierscope-lock`), shared by
//! every instance and process using the directory, and the generation
//! number in it that tells an instance someone else changed the directory.

use std::{
    fs::{File, OpenOptions},
    io,
    path::Path,
    time::Duration,
};

use super::*;

pub(super) const LOCK_NAME: &str = ".tierscope-lock";

/// This instance's handle on the directory's advisory lock.
#[derive(Default)]
pub(super) struct DirLock {
    pub(super) file: Option<File>,
    /// The generation this instance last saw or wrote: another value means
    /// someone else changed the directory since.
    pub(super) seen: Option<u64>,
}

impl FileSystemCache {
    /// Run `f` holding the directory's advisory lock (when the directory
    /// exists and the lock file can be opened; otherwise unlocked, which only
    /// weakens the bound across instances). `f` learns whether someone else
    /// changed the directory since this instance last did, and returns
    /// whether it changed the directory itself. Waits at most `wait` for a
    /// lock another instance or process holds: past it, `Ok(None)` and `f`
    /// does not run.
    pub(super) fn with_dir_lock<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&Self, bool) -> Result<(T, bool), CacheError>,
    ) -> Result<Option<T>, CacheError> {
        let shared = &self.shared;
        // This instance's own users wait for each other (the lock is held
        // for file operations only, never across a wait).
        let mut lock = shared.dir_lock.lock();
        if lock.file.is_none() {
            lock.file = open_lock_file(&shared.root, shared.shared_directory);
        }
        let Some(file) = lock.file.as_ref() else {
            return f(self, true).map(|(t, _)| Some(t));
        };
        match lock_within(file, wait) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                warn_once(&shared.root.join(LOCK_NAME), &format!("cannot lock: {e}"));
                return f(self, true).map(|(t, _)| Some(t));
            }
        }
        let generation = read_generation(file);
        let others_changed = lock.seen != Some(generation);
        let result = f(self, others_changed);
        let mut seen = generation;
        if matches!(result, Ok((_, true))) {
            seen = generation.wrapping_add(1);
            write_generation(file, seen);
        }
        let _ = file.unlock();
        lock.seen = Some(seen);
        result.map(|(t, _)| Some(t))
    }
}

pub(super) fn open_lock_file(root: &Path, shared: bool) -> Option<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(if shared { 0o660 } else { 0o600 })
            .custom_flags(no_follow_flags());
    }
    #[cfg(not(unix))]
    let _ = shared;
    let path = root.join(LOCK_NAME);
    let opened = match options.open(&path) {
        // Another user's lock file in a shared directory: a read-only
        // descriptor still takes the lock (the generation then cannot be
        // written, so this instance rescans before each change).
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let mut read_only = OpenOptions::new();
            read_only.read(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                read_only.custom_flags(no_follow_flags());
            }
            read_only.open(&path)
        }
        other => other,
    };
    match opened {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Some(f),
        Ok(_) => None,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn_once(&path, &format!("cannot open lock file: {e}"));
            }
            None
        }
    }
}

/// Take `file`'s advisory lock, waiting at most `wait` for another holder
/// (polling: `flock` has no timed wait). `Ok(false)`: still held elsewhere.
pub(super) fn lock_within(file: &File, wait: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = Duration::from_micros(500);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

pub(super) fn read_generation(file: &File) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        if file.read_exact_at(&mut b, 0).is_ok() {
            return u64::from_le_bytes(b);
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    0
}

pub(super) fn write_generation(file: &File, generation: u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let _ = file.write_all_at(&generation.to_le_bytes(), 0);
    }
    #[cfg(not(unix))]
    let _ = (file, generation);
}
