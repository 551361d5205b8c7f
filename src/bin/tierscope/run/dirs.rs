//! The program's file system. Its root (`/`) stands for the current
//! directory, so that paths mean what the user typed:
//!
//! - `--dir .`: the current directory *is* the program's root (and working
//!   directory): `counter.v` and `/counter.v` are `./counter.v`, and what
//!   the program writes lands there. `/dev` (null, zero, urandom, stdio)
//!   and an in-memory `/tmp` are added over it.
//! - `--dir data`: `./data` at `/data`; `--dir /srv/x`: at `/srv/x`;
//!   `--dir data::/in` or `--mapdir /in:data`: at `/in`.
//! - Without a directory at the root, the root is wasix's in-memory one
//!   (`/tmp`, `/dev`, ...).
//!
//! What the program writes outside the host directories lives in memory
//! and is gone when it ends: [`Layout::leftovers`] lists it so that `run`
//! can say so.

use std::{
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use wasmer_wasix::{
    fs::WasiFsRoot,
    virtual_fs::{
        self, DeviceFile, FileSystem, NullFile, OverlayFileSystem, RootFileSystemBuilder,
        TmpFileSystem, ZeroFile, random_file::RandomFile,
    },
};

/// One host directory and where the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The directory on the host, as given.
    pub host: PathBuf,
    /// Where the program sees it: an absolute, normalised guest path.
    pub guest: PathBuf,
    /// The option as the user wrote it, for messages.
    pub spelled: String,
}

/// `--dir HOST[::GUEST]` (wasmtime's spelling). Without GUEST the program
/// sees the directory at HOST as written, a relative path being relative
/// to the program's root: `--dir .` is the root itself.
pub fn parse_dir(value: &str) -> Result<Mapping, String> {
    let (host, guest) = match value.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (value, value),
    };
    mapping(&format!("--dir {value}"), host, guest)
}

/// `--mapdir GUEST:HOST` (wasmer's spelling; `GUEST::HOST` too).
pub fn parse_mapdir(value: &str) -> Result<Mapping, String> {
    let (guest, host) = value
        .split_once("::")
        .or_else(|| value.split_once(':'))
        .ok_or_else(|| {
            format!("--mapdir {value}: expected GUEST:HOST, e.g. --mapdir /data:./data")
        })?;
    mapping(&format!("--mapdir {value}"), host, guest)
}

fn mapping(spelled: &str, host: &str, guest: &str) -> Result<Mapping, String> {
    if host.is_empty() || guest.is_empty() {
        return Err(format!("{spelled}: a directory is missing"));
    }
    let host = PathBuf::from(host);
    match std::fs::metadata(&host) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(format!("{spelled}: {} is not a directory", host.display())),
        Err(e) => return Err(format!("{spelled}: {}: {e}", host.display())),
    }
    let guest = guest_path(Path::new(guest)).ok_or_else(|| {
        format!(
            "{spelled}: {guest} is outside the program's root, which is the current directory; \
             give it a place inside, e.g. --dir {}::/{}",
            host.display(),
            host.file_name()
                .map_or("host".into(), |n| n.to_string_lossy().into_owned())
        )
    })?;
    Ok(Mapping {
        host,
        guest,
        spelled: spelled.to_string(),
    })
}

/// `path` as an absolute guest path, `.` and `..` resolved; `None` if it
/// climbs above the root.
pub fn guest_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
        }
    }
    Some(out)
}

/// The program's file system: the root, the directories mounted in it,
/// and the in-memory parts to look at when it ends.
pub struct Layout {
    /// The root file system.
    pub root: WasiFsRoot,
    /// Guest path and file system of every other mount.
    pub mounts: Vec<(String, Arc<dyn FileSystem + Send + Sync>)>,
    /// In-memory file systems, with the guest path they are seen at.
    memory: Vec<(PathBuf, TmpFileSystem)>,
}

/// Lay out `mappings` (at most one at the root, no two at one path).
pub fn layout(mappings: &[Mapping]) -> Result<Layout, String> {
    for (i, a) in mappings.iter().enumerate() {
        if let Some(b) = mappings[..i].iter().find(|b| b.guest == a.guest) {
            return Err(format!(
                "{} and {} both map a directory at {}",
                b.spelled,
                a.spelled,
                a.guest.display()
            ));
        }
    }
    let handle = tokio::runtime::Handle::current();
    let host_fs = |m: &Mapping| -> Result<Arc<dyn FileSystem + Send + Sync>, String> {
        virtual_fs::host_fs::FileSystem::new(handle.clone(), &m.host)
            .map(|fs| Arc::new(fs) as Arc<dyn FileSystem + Send + Sync>)
            .map_err(|e| format!("{}: {e}", m.spelled))
    };
    let mut mounts = Vec::new();
    for m in mappings.iter().filter(|m| m.guest != Path::new("/")) {
        mounts.push((m.guest.display().to_string(), host_fs(m)?));
    }
    match mappings.iter().find(|m| m.guest == Path::new("/")) {
        None => {
            // wasix's own in-memory root, less the default directories a
            // mapping replaces.
            let guests: Vec<String> = mounts.iter().map(|(g, _)| g.clone()).collect();
            let guests: Vec<&str> = guests.iter().map(String::as_str).collect();
            let memory = RootFileSystemBuilder::default().build_tmp_ext(&guests);
            Ok(Layout {
                root: WasiFsRoot::from_filesystem(Arc::new(memory.clone())),
                mounts,
                memory: vec![(PathBuf::from("/"), memory)],
            })
        }
        Some(root) => {
            // The host directory first (writes land there), then /dev
            // beneath it; /tmp in memory unless a mapping provides it.
            let host = virtual_fs::host_fs::FileSystem::new(handle.clone(), &root.host)
                .map_err(|e| format!("{}: {e}", root.spelled))?;
            let devices = devices();
            let overlay = OverlayFileSystem::new(
                host,
                vec![Arc::new(devices) as Arc<dyn FileSystem + Send + Sync>],
            );
            let mut memory = Vec::new();
            if !mounts.iter().any(|(g, _)| g == "/tmp") {
                let tmp = TmpFileSystem::new();
                mounts.push((
                    "/tmp".into(),
                    Arc::new(tmp.clone()) as Arc<dyn FileSystem + Send + Sync>,
                ));
                memory.push((PathBuf::from("/tmp"), tmp));
            }
            Ok(Layout {
                root: WasiFsRoot::from_filesystem(Arc::new(overlay)),
                mounts,
                memory,
            })
        }
    }
}

/// `/dev` as wasix's in-memory root has it.
fn devices() -> TmpFileSystem {
    let tmp = TmpFileSystem::new();
    let _ = tmp.create_dir(Path::new("/dev"));
    let fs = tmp.new_open_options_ext();
    let files: [(&str, Box<dyn virtual_fs::VirtualFile + Send + Sync>); 7] = [
        ("/dev/null", Box::<NullFile>::default()),
        ("/dev/zero", Box::<ZeroFile>::default()),
        ("/dev/urandom", Box::<RandomFile>::default()),
        ("/dev/stdin", Box::new(DeviceFile::new(DeviceFile::STDIN))),
        ("/dev/stdout", Box::new(DeviceFile::new(DeviceFile::STDOUT))),
        ("/dev/stderr", Box::new(DeviceFile::new(DeviceFile::STDERR))),
        ("/dev/tty", Box::<NullFile>::default()),
    ];
    for (path, file) in files {
        let _ = fs.insert_device_file(PathBuf::from(path), file);
    }
    tmp
}

impl Layout {
    /// Files the program left in memory (outside every host directory),
    /// with their sizes: gone when `run` ends. wasix's own device files are
    /// not listed.
    pub fn leftovers(&self) -> Vec<(PathBuf, u64)> {
        let mut found = Vec::new();
        for (at, fs) in &self.memory {
            let mut pending = vec![PathBuf::from("/")];
            while let Some(dir) = pending.pop() {
                let Ok(entries) = fs.read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.starts_with("/dev") || path == Path::new("/bin/wasmer") {
                        continue;
                    }
                    let Ok(md) = entry.metadata() else { continue };
                    if md.is_dir() {
                        pending.push(path);
                    } else if md.is_file() {
                        let inside = path.strip_prefix("/").unwrap_or(&path);
                        found.push((at.join(inside), md.len()));
                    }
                }
            }
        }
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_absolute_and_stay_inside_the_root() {
        assert_eq!(guest_path(Path::new(".")), Some(PathBuf::from("/")));
        assert_eq!(
            guest_path(Path::new("data/./x/../y")),
            Some(PathBuf::from("/data/y"))
        );
        assert_eq!(guest_path(Path::new("/abs")), Some(PathBuf::from("/abs")));
        assert_eq!(guest_path(Path::new("../x")), None);
    }

    #[test]
    fn spellings_map_host_to_guest() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().to_str().unwrap();
        let m = parse_dir(host).unwrap();
        assert_eq!(m.guest, tmp.path());
        let m = parse_dir(&format!("{host}::/data")).unwrap();
        assert_eq!(m.guest, Path::new("/data"));
        let m = parse_dir(&format!("{host}::out")).unwrap();
        assert_eq!(m.guest, Path::new("/out"));
        let m = parse_dir(&format!("{host}::.")).unwrap();
        assert_eq!(m.guest, Path::new("/"));
        let m = parse_mapdir(&format!("/data:{host}")).unwrap();
        assert_eq!(
            (m.guest.as_path(), m.host.as_path()),
            (Path::new("/data"), tmp.path())
        );
        let m = parse_mapdir(&format!("/data::{host}")).unwrap();
        assert_eq!(m.host, tmp.path());
        assert!(
            parse_dir("/surely/not/here")
                .unwrap_err()
                .contains("/surely/not/here")
        );
        assert!(
            parse_dir(&format!("{host}::../up"))
                .unwrap_err()
                .contains("outside the program's root")
        );
        assert!(parse_mapdir("nocolon").unwrap_err().contains("GUEST:HOST"));
    }
}
