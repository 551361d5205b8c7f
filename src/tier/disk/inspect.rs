//! An operator's view of a cache directory (what `tierscope cache` runs):
//!
//! - [`FileSystemCache::inventory`]: every file under the directory, what
//!   it is (an entry, a write in progress, a leftover temporary file, the
//!   lock, something that is not tierscope's), its size and times, without
//!   changing anything;
//! - `FileSystemCache::verify_entry` / [`FileSystemCache::verify`]: each
//!   entry checked as a load checks it (regular file, header, length,
//!   checksum, and the MAC when the handle has keys), without deserializing
//!   anything; bad entries optionally removed as a load would remove them;
//! - trimming and clearing are in `trim`.
//!
//! Open the handle with [`FileSystemCacheBuilder::build_for_maintenance`]:
//! unlike [`FileSystemCacheBuilder::build`] it neither scans nor cleans the
//! directory, so an inventory sees leftover temporary files as they are.

use std::{
    fs::{self, OpenOptions},
    io::{self, Read},
    path::{Path, PathBuf},
    time::SystemTime,
};

use wasmer::Engine;
use wasmer_types::ModuleHash;

use super::*;

/// What a file found in a cache directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// An entry, by its place and name: `<namespace>/<MODULE HASH>.bin`.
    /// Whether its content is sound is for [`FileSystemCache::verify`]
    /// to say (a load of `key` reads this file, and removes it if it is not).
    Entry {
        /// The module hash its name carries.
        key: ModuleHash,
    },
    /// A save's temporary file: `<namespace>/.tmp-<MODULE HASH>-<pid>-<n>`.
    Temporary {
        /// The module being saved.
        key: ModuleHash,
        /// The writer's process id.
        pid: u32,
        /// A writer holds the file's lock: a save in progress. Otherwise the
        /// writer is gone (killed mid-write, or the save failed) and the file
        /// is a leftover that the next `open`, `trim` or `clear` removes.
        in_progress: bool,
    },
    /// A verification record of an entry: `<namespace>/<MODULE HASH>.vfy`,
    /// left by a hit that checked the entry in full so that other
    /// processes' first hits of the unchanged file need not read it all
    /// again. It goes with its entry.
    Record {
        /// The module hash of the entry it vouches for.
        key: ModuleHash,
    },
    /// The directory's advisory lock file (`.tierscope-lock`).
    Lock,
    /// Not tierscope's: never read, evicted or removed by the tier.
    Foreign {
        /// Why it is not an entry.
        why: &'static str,
    },
}

/// One file (or directory that is not a namespace) in a cache directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheFile {
    /// Where it is.
    pub path: PathBuf,
    /// The namespace directory holding it; `None` at the top level.
    pub namespace: Option<String>,
    /// What it is.
    pub kind: FileKind,
    /// Its length (0 for a directory), links not followed.
    pub bytes: u64,
    /// Its modification time. For an entry this is its **last use**: a hit
    /// refreshes it (at most once per
    /// [`touch_interval`](FileSystemCacheBuilder::touch_interval)).
    pub modified: Option<SystemTime>,
    /// When it was created, where the file system records it.
    pub created: Option<SystemTime>,
}

impl CacheFile {
    /// The module hash of an entry or a temporary file.
    pub fn key(&self) -> Option<ModuleHash> {
        match self.kind {
            FileKind::Entry { key } | FileKind::Temporary { key, .. } => Some(key),
            _ => None,
        }
    }

    /// `<namespace>/<file name>`, the entry's name within the directory.
    fn rel(&self) -> Option<String> {
        let ns = self.namespace.as_deref()?;
        let name = self.path.file_name()?.to_str()?;
        Some(format!("{ns}/{name}"))
    }
}

/// Everything under a cache directory, as [`FileSystemCache::inventory`]
/// found it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inventory {
    /// The cache directory.
    pub root: PathBuf,
    /// Whether it exists (a cache that never saved anything has none).
    pub exists: bool,
    /// Its namespace directories, sorted, including empty ones.
    pub namespaces: Vec<String>,
    /// Every file, sorted by path.
    pub files: Vec<CacheFile>,
}

impl Inventory {
    /// The entries (files named as entries in namespace directories).
    pub fn entries(&self) -> impl Iterator<Item = &CacheFile> {
        self.files
            .iter()
            .filter(|f| matches!(f.kind, FileKind::Entry { .. }))
    }
}

/// The parts of a namespace directory's name,
/// `<engine>-wasmer<version>-ts<entry format>`: entries of one engine
/// configuration, wasmer version and entry format. A build reads only its
/// own engine's namespace ([`Namespace::of`]); the others' entries count
/// against the bound and are the first to be evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Namespace {
    /// The directory's name.
    pub name: String,
    /// The engine configuration (its deterministic id and artifact format,
    /// as the name spells them).
    pub engine: String,
    /// The wasmer version that wrote the entries.
    pub wasmer_version: String,
    /// tierscope's entry format version.
    pub entry_format: u16,
}

impl Namespace {
    /// The namespace of a directory name, if it has a namespace's shape.
    pub fn parse(name: &str) -> Option<Namespace> {
        if !is_namespace_name(name) {
            return None;
        }
        let (rest, format) = name.rsplit_once("-ts")?;
        let (engine, version) = rest.rsplit_once("-wasmer")?;
        Some(Namespace {
            name: name.to_string(),
            engine: engine.to_string(),
            wasmer_version: version.to_string(),
            entry_format: format.parse().ok()?,
        })
    }

    /// The namespace this build writes `engine`'s entries to.
    pub fn of(engine: &Engine) -> Namespace {
        let name = ident_of(engine).namespace.clone();
        Namespace::parse(&name).unwrap_or(Namespace {
            engine: name.clone(),
            name,
            wasmer_version: crate::engine::WASMER_VERSION.to_string(),
            entry_format: crate::engine::FORMAT_VERSION,
        })
    }
}

/// The verdict on one entry ([`FileSystemCache::verify`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum EntryVerdict {
    /// Every check a load makes before deserializing passed: a regular
    /// file, its header (magic, format version, key, length), and its
    /// checksum, or its MAC when the handle has keys. `engine_checked`: the
    /// entry's engine binding was checked too (entries of the engine asked
    /// about; another namespace's binding cannot be recomputed here).
    Good {
        /// Whether the engine binding was checked.
        engine_checked: bool,
    },
    /// A check failed ([`CacheError::Corrupt`] or
    /// [`CacheError::Integrity`]): a load would refuse it and remove it.
    Bad(CacheError),
    /// Gone before it could be read (evicted or replaced meanwhile).
    Gone,
    /// It could not be read (permissions, I/O): not judged.
    Unreadable(CacheError),
}

impl EntryVerdict {
    /// A check failed.
    pub fn is_bad(&self) -> bool {
        matches!(self, EntryVerdict::Bad(_))
    }
}

/// What [`FileSystemCache::verify`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifySummary {
    /// Entries looked at.
    pub checked: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries that passed.
    pub good: u64,
    /// Entries that failed a check.
    pub bad: u64,
    /// Bad entries removed.
    pub removed: u64,
    /// Entries gone before they could be read.
    pub gone: u64,
    /// Entries that could not be read.
    pub unreadable: u64,
}

impl FileSystemCacheBuilder {
    /// Open the directory for an operator's maintenance: nothing is
    /// scanned, cleaned, evicted or checked until asked ([`inventory`],
    /// [`verify`], [`trim`], [`clear`]), so leftovers are seen as they are.
    ///
    /// No trust check either: these operations read and remove files but
    /// deserialize nothing. The handle still refuses, as every tier does,
    /// to load from or save to a directory other users can write to,
    /// unless [`shared_directory`](Self::shared_directory) is set; and
    /// `trim` and `clear` refuse such namespace directories the same way.
    /// With [`mac_key`](Self::mac_key), `verify` checks every entry's MAC.
    ///
    /// [`inventory`]: FileSystemCache::inventory
    /// [`verify`]: FileSystemCache::verify
    /// [`trim`]: FileSystemCache::trim
    /// [`clear`]: FileSystemCache::clear
    pub fn build_for_maintenance(self) -> FileSystemCache {
        self.build_unscanned()
    }
}

impl FileSystemCache {
    /// Every file under the cache directory and what it is, without taking
    /// the lock or changing anything. Files that vanish meanwhile (another
    /// process evicting) are left out. A directory that does not exist is
    /// an empty inventory with `exists: false`.
    pub fn inventory(&self) -> Result<Inventory, CacheError> {
        let root = &self.shared.root;
        let mut inventory = Inventory {
            root: root.clone(),
            exists: true,
            namespaces: Vec::new(),
            files: Vec::new(),
        };
        let top = match fs::read_dir(root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                inventory.exists = false;
                return Ok(inventory);
            }
            Err(error) => {
                return Err(CacheError::FileRead {
                    path: root.clone(),
                    error,
                });
            }
        };
        for item in top.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            let Ok(md) = fs::symlink_metadata(&path) else {
                continue;
            };
            if name == LOCK_NAME && md.is_file() {
                inventory
                    .files
                    .push(described(path, None, FileKind::Lock, &md));
                continue;
            }
            if md.is_dir() && is_namespace_name(&name) {
                let files = match fs::read_dir(&path) {
                    Ok(files) => files,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(CacheError::FileRead { path, error }),
                };
                for file in files.flatten() {
                    let file_name = file.file_name().to_string_lossy().into_owned();
                    let file_path = file.path();
                    let Ok(md) = fs::symlink_metadata(&file_path) else {
                        continue;
                    };
                    let kind = classify(&file_name, &file_path, &md);
                    inventory
                        .files
                        .push(described(file_path, Some(name.clone()), kind, &md));
                }
                inventory.namespaces.push(name);
                continue;
            }
            let why = if md.is_dir() {
                "a directory that is not a cache namespace"
            } else {
                "a file outside the namespace directories"
            };
            inventory
                .files
                .push(described(path, None, FileKind::Foreign { why }, &md));
        }
        inventory.namespaces.sort();
        inventory.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(inventory)
    }

    /// Check one entry of an [`inventory`](Self::inventory) as a load
    /// would before deserializing it (the file opened without following
    /// links, a regular file within the entry bound, header, length,
    /// checksum, or the MAC when this handle has keys), without loading
    /// anything. An entry of `engine`'s namespace has its engine binding
    /// checked as well; another namespace's binding is taken from its own
    /// header. Files that are not entries are [`EntryVerdict::Gone`].
    pub(crate) fn verify_entry(&self, file: &CacheFile, engine: &Engine) -> EntryVerdict {
        let (FileKind::Entry { key }, Some(rel)) = (&file.kind, file.rel()) else {
            return EntryVerdict::Gone;
        };
        let own = ident_of(engine);
        let engine_checked = file.namespace.as_deref() == Some(own.namespace.as_str());
        let ident = if engine_checked {
            own
        } else {
            // Take the binding from the file itself: everything else is
            // still checked.
            std::sync::Arc::new(EngineIdent {
                deterministic_id: String::new(),
                artifact_format: String::new(),
                namespace: file.namespace.clone().unwrap_or_default(),
                context: header_context(&file.path).unwrap_or_default(),
            })
        };
        let path = &file.path;
        let data = match read_entry(
            path,
            key,
            &ident,
            self.shared.max_entry,
            self.shared.map_entries,
        ) {
            Ok((data, _, _)) => data,
            Err(Refused::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return EntryVerdict::Gone;
            }
            Err(Refused::Io(error)) => {
                return EntryVerdict::Unreadable(CacheError::FileRead {
                    path: path.clone(),
                    error,
                });
            }
            Err(Refused::Corrupt(reason, _)) => {
                return EntryVerdict::Bad(CacheError::Corrupt {
                    location: path.display().to_string(),
                    reason,
                });
            }
        };
        let checked = match &self.shared.mac {
            Some(ring) => {
                if !ring.verify_disk_entry(&rel, &data) {
                    return EntryVerdict::Bad(CacheError::Integrity {
                        location: path.display().to_string(),
                        reason: IntegrityFailure::MacMismatch {
                            bytes: data.len() as u64,
                        },
                    });
                }
                entry::decode_authenticated(&data, key, &ident)
            }
            None => entry::decode(&data, key, &ident),
        };
        match checked {
            Ok(_) => EntryVerdict::Good { engine_checked },
            Err(reason) => EntryVerdict::Bad(CacheError::Corrupt {
                location: path.display().to_string(),
                reason,
            }),
        }
    }

    /// Remove an entry that [`verify_entry`](Self::verify_entry) found bad,
    /// as a load that found it so would (reported as an eviction with
    /// cause `corrupt`). Other files are left alone.
    pub(crate) fn remove_bad_entry(&self, file: &CacheFile) {
        if let (FileKind::Entry { .. }, Some(rel)) = (&file.kind, file.rel()) {
            self.discard_corrupt(&rel, &file.path, file.bytes);
        }
    }

    /// Check every entry of the directory as a load checks it, calling `each` with every entry and its verdict (for
    /// progress and reports), and removing the bad ones when
    /// `remove_bad`. Errors only when the directory cannot be listed.
    pub fn verify(
        &self,
        engine: &Engine,
        remove_bad: bool,
        mut each: impl FnMut(&CacheFile, &EntryVerdict),
    ) -> Result<VerifySummary, CacheError> {
        let inventory = self.inventory()?;
        let mut summary = VerifySummary::default();
        for file in inventory.entries() {
            let verdict = self.verify_entry(file, engine);
            summary.checked += 1;
            summary.bytes += file.bytes;
            match &verdict {
                EntryVerdict::Good { .. } => summary.good += 1,
                EntryVerdict::Bad(_) => {
                    summary.bad += 1;
                    if remove_bad {
                        self.remove_bad_entry(file);
                        summary.removed += 1;
                    }
                }
                EntryVerdict::Gone => summary.gone += 1,
                EntryVerdict::Unreadable(_) => summary.unreadable += 1,
            }
            each(file, &verdict);
        }
        Ok(summary)
    }
}

/// A file of a namespace directory: an entry, a temporary file, or not
/// tierscope's.
fn classify(name: &str, path: &Path, md: &fs::Metadata) -> FileKind {
    if is_temp_name(name) {
        let key = name
            .strip_prefix(TMP_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(key_of_hex);
        if let (Some(key), Some(pid)) = (key, temp_pid(name)) {
            return FileKind::Temporary {
                key,
                pid,
                in_progress: md.is_file() && is_locked(path),
            };
        }
    }
    if let Some(key) = name.strip_suffix(".bin").and_then(key_of_hex)
        && is_entry_name(name)
    {
        return FileKind::Entry { key };
    }
    if let Some(key) = name
        .strip_suffix(".vfy")
        .and_then(key_of_hex)
        .filter(|_| is_record_name(name))
    {
        return FileKind::Record { key };
    }
    FileKind::Foreign {
        why: if md.is_dir() {
            "a directory inside a namespace directory"
        } else {
            "not named as a cache entry"
        },
    }
}

fn described(
    path: PathBuf,
    namespace: Option<String>,
    kind: FileKind,
    md: &fs::Metadata,
) -> CacheFile {
    CacheFile {
        path,
        namespace,
        kind,
        bytes: if md.is_dir() { 0 } else { md.len() },
        modified: md.modified().ok(),
        created: md.created().ok(),
    }
}

/// 64 upper-case hex digits as a module hash.
fn key_of_hex(hex_digits: &str) -> Option<ModuleHash> {
    if hex_digits.len() != 64
        || !hex_digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    {
        return None;
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
    Some(ModuleHash::from_bytes(bytes))
}

/// Whether another process holds the lock of the (temporary) file at
/// `path`: its writer is still writing it. Opened read-only, without
/// following links or blocking; the lock, when taken, is released at once.
fn is_locked(path: &Path) -> bool {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let Ok(file) = options.open(path) else {
        return false;
    };
    matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
}

/// The engine binding an entry's header carries (bytes 40..56), if the
/// file's header can be read (opened without following links or blocking).
fn header_context(path: &Path) -> Option<[u8; 16]> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(no_follow_flags());
    }
    let mut file = options.open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut header = [0u8; 56];
    file.read_exact(&mut header).ok()?;
    let mut context = [0u8; 16];
    context.copy_from_slice(&header[40..56]);
    Some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_parse_into_their_parts() {
        let own = Namespace::of(&Engine::default());
        assert_eq!(own.wasmer_version, crate::engine::WASMER_VERSION);
        assert_eq!(own.entry_format, crate::engine::FORMAT_VERSION);
        assert!(own.name.starts_with(&own.engine));
        let old = Namespace::parse("abc_def-universal-wasmer6.0.0-ts1").unwrap();
        assert_eq!(old.engine, "abc_def-universal");
        assert_eq!(old.wasmer_version, "6.0.0");
        assert_eq!(old.entry_format, 1);
        assert!(Namespace::parse("firmware").is_none());
    }

    #[test]
    fn keys_come_from_names() {
        let key = ModuleHash::from_bytes([0xAB; 32]);
        assert_eq!(key_of_hex(&key.to_string()), Some(key));
        assert_eq!(key_of_hex(&key.to_string().to_lowercase()), None);
        assert_eq!(key_of_hex("AB"), None);
    }
}
