//! Who may write: the directories must be private to this user (unless
//! shared on purpose), and only files nobody but root can write are mapped.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use super::*;

/// A cache directory that other users could write to.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing cache directory \"{}\" (mode {mode:04o}, owner uid {owner}; this process runs as uid {euid}): {why}, \
     so other users could plant entries that this process would run as code. Make it private \
     (chmod 0700, owned by uid {euid}), or opt in with FileSystemCacheBuilder::shared_directory(true) \
     and sign entries with a mac_key",
    path.display()
)]
pub struct UnsafeDirectory {
    /// The directory.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner.
    pub owner: u32,
    /// This process' effective uid.
    pub euid: u32,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FileSystemCache {
    /// Check that the root and the namespace directory `ns` (when given
    /// and present) are private, unless shared on purpose: before every
    /// entry this tier verifies, maps or writes, since a directory made
    /// writable by others since the open (a `chmod 777`) lets them plant
    /// entries. Two `stat`s, beside a load's open, `fstat` and checksum. A
    /// directory that does not exist yet is fine: it is checked when it
    /// does.
    pub(super) fn ensure_trusted(&self, ns: Option<&Path>) -> Result<(), CacheError> {
        let shared = &self.shared;
        if shared.shared_directory {
            return Ok(());
        }
        for dir in std::iter::once(shared.root.as_path()).chain(ns) {
            match fs::metadata(dir) {
                Ok(md) => check_private(dir, &md)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error) => {
                    return Err(CacheError::FileRead {
                        path: dir.to_path_buf(),
                        error,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Refuse a directory other users could write to.
pub(super) fn check_private(path: &Path, md: &fs::Metadata) -> Result<(), CacheError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let euid = rustix::process::geteuid().as_raw();
        let mode = md.mode() & 0o7777;
        let why = if !md.is_dir() {
            Some("it is not a directory")
        } else if md.uid() != euid {
            Some("it is owned by another user")
        } else if mode & 0o022 != 0 {
            Some("it is group- or world-writable")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(CacheError::other(UnsafeDirectory {
                path: path.to_path_buf(),
                mode,
                owner: md.uid(),
                euid,
                why,
            }));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, md);
    Ok(())
}

/// Whether nobody but root can write or truncate the file behind `md` (an
/// `fstat` of the open descriptor): owned by the effective user, with no
/// write permission for anyone, the owner included (entries are written
/// read-only: see `write_locked`). Only such a file is mapped: a file that
/// a process can truncate could raise `SIGBUS` on a read of the mapping,
/// and one it can write could change after it was verified. What remains:
/// root, or this user changing the mode first (`chmod u+w`), which moves
/// the file's change time (so a remembered mapping is dropped, see
/// `VerifiedMaps`) but cannot be kept from a mapping already handed to a
/// module. Unix only; elsewhere entries are always read.
pub(super) fn may_map(md: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        md.uid() == rustix::process::geteuid().as_raw() && md.mode() & 0o222 == 0
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        false
    }
}

/// Make an entry this user owns read-only, if some write bit is set (an
/// entry written before entries were read-only, or changed by hand):
/// `fchmod` on the open descriptor, which an owner may do on a read-only
/// one. True if the mode changed. Best effort: a file that stays writable
/// is read, not mapped ([`may_map`]).
pub(super) fn make_read_only(file: &File, md: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = md.mode() & 0o7777;
        if md.uid() != rustix::process::geteuid().as_raw() || mode & 0o222 == 0 {
            return false;
        }
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode & !0o222)).is_ok()
    }
    #[cfg(not(unix))]
    {
        let _ = (file, md);
        false
    }
}
