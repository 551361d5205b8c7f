//! A full disk: saves fail with a counted error and leave no partial file,
//! loads and compiles go on, saves resume once space returns.
//!
//! The test mounts a 2 MiB tmpfs, which needs root (CI runs as root); it
//! fails, saying why, when it cannot mount one.

use crate::common;
use common::walk;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    sized,
    snapshot::{counter, take},
    tiny,
};
use metrics_util::debugging::DebuggingRecorder;
use tierscope::{FileSystemCache, InstrumentExt, MemoryCache, ModuleCache, ModuleLoader};
use wasmer::Engine;

/// A tmpfs mounted at a directory, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Self, String> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Write until the filesystem is full.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0xF1u8; 16 << 10];
    while f.write_all(&chunk).is_ok() {}
    // Whatever is left is smaller than a chunk: take it too.
    while f.write_all(&chunk[..512]).is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_saves_cleanly_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _mount = Mount::tmpfs(&mnt, "2m").unwrap_or_else(|why| {
        panic!("a full disk needs a small tmpfs, mounted as root (CI runs as root): {why}")
    });
    let root = mnt.join("cache");
    let engine = Engine::default();
    let (k1, _, wasm1) = tiny(&engine, 801);
    let (k2, _, wasm2) = sized(&engine, 20_000, 802);
    let (k3, _, wasm3) = sized(&engine, 20_000, 803);

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let disk = FileSystemCache::open(&root, 64 << 20).unwrap();
    let stack = |name: &'static str| {
        metrics::with_local_recorder(&recorder, || {
            ModuleLoader::new(
                name,
                MemoryCache::new(64 << 20)
                    .instrumented(name, "memory")
                    .with_fallback(disk.clone().instrumented(name, "disk")),
            )
        })
    };
    let loader = stack("full");
    let settle = || tokio::time::sleep(Duration::from_millis(500));

    // Room: the first module is saved.
    loader.load_into(&engine, &wasm1).await.unwrap();
    settle().await;
    assert!(disk.entry_path(k1, &engine).exists());

    // Full: a compile still answers, its save fails, counted, no partial file.
    let filler = mnt.join("filler");
    fill(&filler);
    let _ = take(&snapshotter);
    loader.load_into(&engine, &wasm2).await.unwrap();
    settle().await;
    let s = take(&snapshotter);
    let disk_labels = |result| [("cache", "full"), ("tier", "disk"), ("result", result)];
    assert_eq!(
        counter(&s, "tierscope_saves_total", &disk_labels("error")),
        1
    );
    assert_eq!(
        counter(
            &s,
            "tierscope_errors_total",
            &[
                ("cache", "full"),
                ("tier", "disk"),
                ("op", "save"),
                ("kind", "io")
            ]
        ),
        1
    );
    assert!(!disk.entry_path(k2, &engine).exists());
    let leftovers: Vec<_> = walk(&root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    assert_eq!(disk.residency().entries, 1);

    // Loads go on while full: a fresh node's memory tier misses, disk hits.
    let fresh = stack("fresh");
    fresh.load_into(&engine, &wasm1).await.unwrap();
    let s = take(&snapshotter);
    assert_eq!(
        counter(
            &s,
            "tierscope_lookups_total",
            &[("cache", "fresh"), ("tier", "disk"), ("result", "hit")]
        ),
        1
    );

    // Space returns: saves resume.
    fs::remove_file(&filler).unwrap();
    loader.load_into(&engine, &wasm3).await.unwrap();
    settle().await;
    let s = take(&snapshotter);
    assert_eq!(counter(&s, "tierscope_saves_total", &disk_labels("ok")), 1);
    assert_eq!(
        counter(&s, "tierscope_saves_total", &disk_labels("error")),
        0
    );
    assert!(disk.entry_path(k3, &engine).exists());
    assert!(disk.load(k3, &engine).await.is_ok());
    assert_eq!(disk.residency().entries, 2);
}
