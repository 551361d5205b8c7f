//! Entry files: the names they go by, opening one without following links
//! or blocking, checking its header and length before anything is read,
//! mapping it (this module's one `unsafe`, beside the checks it relies on)
//! or reading it into an aligned buffer, and writing one read-only.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::Path,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use wasmer_types::ModuleHash;

use super::*;

pub(super) const ENTRY_EXT: &str = "bin";

pub(super) const TMP_PREFIX: &str = ".tmp-";

/// Entry files: read-only for their owner, nothing for others.
pub(super) const ENTRY_MODE: u32 = 0o400;

/// Entry files in a shared directory: read-only for the owner and group.
pub(super) const ENTRY_MODE_SHARED: u32 = 0o440;

#[derive(Debug, Clone, Copy)]
pub(super) struct FileTimes {
    pub(super) modified: SystemTime,
    pub(super) created: Option<SystemTime>,
}

pub(super) fn rel_path(key: &ModuleHash, ident: &EngineIdent) -> String {
    format!("{}/{key}.{ENTRY_EXT}", ident.namespace)
}

/// Why an entry file was not read.
pub(super) enum Refused {
    Io(io::Error),
    /// Refused, with the file's length for the eviction report.
    Corrupt(Corruption, u64),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Io(e)
    }
}

/// `O_NOFOLLOW | O_NONBLOCK`: never follow a link, never wait on a FIFO.
#[cfg(unix)]
pub(super) fn no_follow_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// An entry file that passed [`check_entry_file`].
pub(super) struct CheckedFile {
    /// Positioned after the header.
    pub(super) file: File,
    pub(super) header: [u8; entry::HEADER_LEN],
    /// Length of the file (= header + announced artifact), at most the bound.
    pub(super) len: u64,
    pub(super) times: FileTimes,
    /// Only this process' user can change or truncate the file (see
    /// [`may_map`]).
    pub(super) private: bool,
    /// The file's identity, from the same `fstat`.
    pub(super) id: Option<FileId>,
}

/// Open an entry without following links or blocking, and check that it is
/// a regular file no larger than `max`, whose header is valid for `key`
/// and announces exactly the file's length.
pub(super) fn check_entry_file(
    path: &Path,
    key: &ModuleHash,
    ident: &EngineIdent,
    max: u64,
) -> Result<CheckedFile, Refused> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if is_not_a_file_error(&e) => {
            return Err(Refused::Corrupt(Corruption::NotARegularFile, 0));
        }
        Err(e) => return Err(Refused::Io(e)),
    };
    let mut md = file.metadata()?;
    if !md.is_file() {
        return Err(Refused::Corrupt(Corruption::NotARegularFile, 0));
    }
    if make_read_only(&file, &md) {
        md = file.metadata()?;
    }
    let len = md.len();
    if len > max {
        return Err(Refused::Corrupt(
            Corruption::Oversized {
                actual: len,
                limit: max,
            },
            len,
        ));
    }
    let mut header = [0u8; entry::HEADER_LEN];
    if len < entry::HEADER_LEN as u64 {
        return Err(Refused::Corrupt(
            Corruption::Truncated {
                actual: len,
                expected: entry::HEADER_LEN as u64,
            },
            len,
        ));
    }
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // Shrank under us.
            return Err(Refused::Corrupt(
                Corruption::Truncated {
                    actual: 0,
                    expected: entry::HEADER_LEN as u64,
                },
                len,
            ));
        }
        Err(e) => return Err(Refused::Io(e)),
    }
    let announced =
        entry::decode_header(&header, key, ident).map_err(|c| Refused::Corrupt(c, len))?;
    let expected = announced.saturating_add(entry::HEADER_LEN as u64);
    if len < expected {
        return Err(Refused::Corrupt(
            Corruption::Truncated {
                actual: len,
                expected,
            },
            len,
        ));
    }
    if len > expected {
        return Err(Refused::Corrupt(
            Corruption::TrailingBytes {
                actual: len,
                expected,
            },
            len,
        ));
    }
    let times = FileTimes {
        modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        created: md.created().ok(),
    };
    Ok(CheckedFile {
        file,
        header,
        len,
        times,
        private: may_map(&md),
        id: FileId::of(&md),
    })
}

/// A whole entry file, after [`check_entry_file`], in one open and one
/// `fstat`: mapped when `map` is on and [`may_map`] allows it (no copy: the same pages are
/// verified and then handed to wasmer, and stay in the page cache, shared,
/// clean and reclaimable, for as long as the module lives), else read into
/// one allocation of the checked length. Returns the bytes, the file's
/// times and, when the bytes are a mapping, the file's identity.
pub(super) fn read_entry(
    path: &Path,
    key: &ModuleHash,
    ident: &EngineIdent,
    max: u64,
    map: bool,
) -> Result<(Bytes, FileTimes, Option<FileId>), Refused> {
    let checked = check_entry_file(path, key, ident, max)?;
    // `len` is at most `max`, which fits in memory on the platforms wasmer
    // supports; an allocation (or mapping) failure is an error, not an abort.
    let len_usize =
        usize::try_from(checked.len).map_err(|_| io::Error::other("entry too large"))?;
    if map && checked.private {
        match map_entry(&checked.file, len_usize) {
            Ok(map) => return Ok((Bytes::from_owner(map), checked.times, checked.id)),
            // A filesystem that cannot map (some FUSE or network ones):
            // read instead.
            Err(e) => tracing::debug!(
                path = %path.display(),
                error = &e as &dyn std::error::Error,
                "cannot map a cache entry: reading it"
            ),
        }
    }
    let CheckedFile {
        mut file,
        header,
        len,
        times,
        ..
    } = checked;
    // One buffer of the checked length, aligned for wasmer's deserializer
    // (see `crate::aligned`): exactly that many bytes are read, so a file
    // growing under us is not read past its checked length, and one that
    // shrank is refused as truncated.
    let mut buf =
        AlignedBuf::zeroed(len_usize).map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
    let data = buf.as_mut_slice();
    data[..entry::HEADER_LEN].copy_from_slice(&header);
    match file.read_exact(&mut data[entry::HEADER_LEN..]) {
        Ok(()) => Ok((buf.into_bytes(), times, None)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Refused::Corrupt(
            Corruption::Truncated {
                actual: 0,
                expected: len,
            },
            len,
        )),
        Err(e) => Err(Refused::Io(e)),
    }
}

/// Map the first `len` bytes of an entry file, read-only.
#[cfg(unix)]
pub(super) fn map_entry(file: &File, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: a mapping is only sound while nobody changes or truncates
    // the file: a change would alter bytes after they were verified, and
    // reading a page past a truncated end raises SIGBUS. `read_entry` maps
    // only a file that `check_entry_file` found, on this very descriptor
    // (opened with O_NOFOLLOW, then `fstat`), to be a regular file owned by
    // this process' effective user with no write permission for anyone,
    // the owner included (`may_map`), whose length matched the header's
    // claim and the entry bound: only root, or this user after changing
    // the mode back, could open it to change or truncate it. tierscope itself
    // never writes or truncates an entry in place: a save writes a
    // temporary file and renames it over the entry (a new inode: this
    // mapping keeps the old one, unchanged), an eviction or a removal
    // unlinks it (the inode lives on until unmapped), and a hit only
    // updates its modification time. The mapping is read-only and `len` is
    // the checked length.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }?;
    Ok(map)
}

#[cfg(not(unix))]
pub(super) fn map_entry(_file: &File, _len: usize) -> io::Result<memmap2::Mmap> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "entries are mapped on Unix only",
    ))
}

/// Errors of an `O_NOFOLLOW | O_NONBLOCK` open that mean "not a regular
/// file": a symbolic link (`ELOOP`), a socket or a FIFO without a writer
/// (`ENXIO`).
pub(super) fn is_not_a_file_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        let raw = e.raw_os_error();
        raw == Some(Errno::LOOP.raw_os_error()) || raw == Some(Errno::NXIO.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Whether a file starts with tierscope's magic number (opened without
/// following links or blocking).
pub(super) fn has_magic(path: &Path) -> bool {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let Ok(mut file) = options.open(path) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).is_ok() && magic == entry::MAGIC
}

/// Best effort: a failure only loses recency across a restart. Entries are
/// read-only, so the time is set by path (`utimensat`, which their owner
/// may do without write permission), not through a descriptor opened for
/// writing; links are not followed.
pub(super) fn set_mtime(path: &Path, when: SystemTime) {
    #[cfg(unix)]
    {
        use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
        let Ok(since) = when.duration_since(SystemTime::UNIX_EPOCH) else {
            return;
        };
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: since.as_secs() as i64,
                tv_nsec: i64::from(since.subsec_nanos()),
            },
        };
        let _ = utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW);
    }
    #[cfg(not(unix))]
    {
        let mut options = OpenOptions::new();
        options.write(true);
        if let Ok(f) = options.open(path) {
            let _ = f.set_modified(when);
        }
    }
}

/// `<deterministic id>-<artifact format>-wasmer<version>-ts<format>`, in
/// the characters [`EngineIdent::namespace`] uses.
pub(super) fn is_namespace_name(name: &str) -> bool {
    let safe = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let Some((rest, format)) = name.rsplit_once("-ts") else {
        return false;
    };
    safe && rest.contains("-wasmer")
        && !format.is_empty()
        && format.len() <= 5
        && format.bytes().all(|b| b.is_ascii_digit())
}

/// `<64 upper-case hex digits>.bin`.
pub(super) fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".bin")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
}

/// A new temporary file's path in `dir` for `key`:
/// `.tmp-<HASH>-<pid>-<n>`, unique within the process (several caches may
/// share a directory) and, with the pid, across processes.
pub(super) fn temp_path(dir: &Path, key: &ModuleHash) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}{key}-{}-{n}", std::process::id()))
}

/// `.tmp-<64 upper-case hex digits>-<pid>-<n>`.
pub(super) fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
        return false;
    };
    let mut parts = rest.split('-');
    let (Some(hash), Some(pid), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    is_entry_name(&format!("{hash}.bin")) && digits(pid) && digits(n)
}

/// The writer's pid in a temporary file's name.
pub(super) fn temp_pid(name: &str) -> Option<u32> {
    name.strip_prefix(TMP_PREFIX)?
        .split('-')
        .nth(1)?
        .parse()
        .ok()
}

/// Create `tmp` (which must not exist), lock it, write `parts`, and return
/// the still-locked file.
///
/// The file is created read-only (0400, or 0440 in a shared directory):
/// the descriptor that creates it may write, nobody else can open it for
/// writing afterwards, not even this user without root (a `cp` over the
/// entry, a shell `>` redirect or a `truncate` fail with "permission
/// denied" instead of changing pages that live modules map).
pub(super) fn write_locked(
    tmp: &Path,
    parts: &[&[u8]],
    sync: bool,
    shared: bool,
) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if shared {
            ENTRY_MODE_SHARED
        } else {
            ENTRY_MODE
        });
    }
    #[cfg(not(unix))]
    let _ = shared;
    let mut file = options.open(tmp)?;
    file.lock()?;
    for part in parts {
        file.write_all(part)?;
    }
    if sync {
        file.sync_data()?;
    }
    Ok(file)
}

/// Remove a temporary file if its writer is gone (no lock held) and it is
/// older than the grace period. (Opened to read: a read-only descriptor
/// takes the lock, and temporary files are read-only.)
pub(super) fn remove_if_abandoned(path: &Path, grace: Duration) {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let Ok(file) = options.open(path) else {
        return;
    };
    let Ok(md) = file.metadata() else { return };
    let old_enough = md
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace);
    if md.is_file() && old_enough && file.try_lock().is_ok() {
        let _ = fs::remove_file(path);
    }
}

/// Create `dir` and its missing parents: 0700, or 0770 for a shared
/// directory (less the umask).
pub(super) fn create_dir(dir: &Path, shared: bool) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(if shared { 0o770 } else { 0o700 });
    }
    #[cfg(not(unix))]
    let _ = shared;
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn names_are_recognized() {
        let ident = ident_of(&Engine::default());
        assert!(is_namespace_name(&ident.namespace), "{}", ident.namespace);
        assert!(is_namespace_name("abc-universal-wasmer6.0.0-ts1"));
        assert!(!is_namespace_name("firmware"));
        assert!(!is_namespace_name("abc-wasmer1-ts"));
        assert!(!is_namespace_name("a b-wasmer1-ts1"));
        let key = ModuleHash::from_bytes([0xAB; 32]);
        assert!(is_entry_name(&format!("{key}.bin")));
        assert!(!is_entry_name(&format!(
            "{}.bin",
            key.to_string().to_lowercase()
        )));
        assert!(!is_entry_name("image.bin"));
        assert!(is_temp_name(&format!(".tmp-{key}-12-0")));
        assert_eq!(temp_pid(&format!(".tmp-{key}-12-0")), Some(12));
        assert!(!is_temp_name(&format!(".tmp-{key}-12")));
        assert!(!is_temp_name(".tmp-not-ours"));
    }
}
