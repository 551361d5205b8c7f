//! What a neighbour can do to a disk tier in use, and what it must not be
//! able to do: hold the directory's lock for as long as it likes, or, as
//! the same user without root, write over an entry that live modules map.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

use crate::common::{self, as_unprivileged, sized};
use tierscope::{CacheError, FileSystemCache, ModuleCache};
use wasmer::{Engine, Instance, Store, imports};

/// The directory's lock, held through a descriptor of its own (as another
/// process would: `flock` locks belong to open file descriptions).
fn hold_lock(dir: &Path) -> fs::File {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(".tierscope-lock"))
        .expect("the tier made its lock file");
    file.lock().unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_never_waits_for_the_directory_lock_and_a_save_waits_a_bounded_time() {
    // Arrange: A opens the directory; B, another instance, saves K, which
    // A has not seen; then someone holds the directory's lock.
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 20_000, 41);
    let (other, other_module, _) = sized(&engine, 20_000, 42);
    let tmp = tempfile::tempdir().unwrap();
    let a = FileSystemCache::builder(tmp.path())
        .capacity(1 << 30)
        .lock_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let b = common::open_disk(tmp.path(), 1 << 30);
    b.save(key, &engine, &module).await.unwrap();
    let held = hold_lock(tmp.path());

    // Act & assert: A's hit returns while the lock is held (the hang it
    // used to be would never end; 10 s is only the test's own limit).
    let hit = tokio::time::timeout(Duration::from_secs(10), a.load(key, &engine))
        .await
        .expect("a hit does not wait for the directory's lock");
    hit.unwrap();
    // A save waits its bound, then says so, and leaves no file behind.
    let saved = tokio::time::timeout(
        Duration::from_secs(10),
        a.save(other, &engine, &other_module),
    )
    .await
    .expect("a save waits a bounded time for the lock");
    assert!(
        matches!(saved, Err(CacheError::Timeout { op: "save", .. })),
        "{saved:?}"
    );
    assert!(!a.entry_path(other, &engine).exists());
    let leftovers = common::walk(tmp.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);

    // Once the lock is free, saves go through and the hit was learned.
    drop(held);
    a.save(other, &engine, &other_module).await.unwrap();
    assert_eq!(a.residency().entries, 2);
}

/// Run `cmd` through `sh -c`; whether it succeeded, and what it said.
fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_same_user_an_entry_a_live_module_maps_cannot_be_written() {
    if !as_unprivileged(
        "disk_neighbours::as_the_same_user_an_entry_a_live_module_maps_cannot_be_written",
    ) {
        return;
    }
    // Arrange (as an unprivileged user): an entry saved, then loaded (its
    // mapping remembered: written two seconds ago, settled) and a module
    // from it alive.
    assert!(!common::is_root(), "this part runs without root");
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 20_000, 43);
    let (_, other_module, _) = sized(&engine, 20_000, 44);
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileSystemCache::builder(tmp.path())
        .capacity(1 << 30)
        .inline_io(true)
        .build()
        .unwrap();
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
    assert_eq!(
        fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let loaded = cache.load(key, &engine).await.unwrap();
    let again = cache.load(key, &engine).await.unwrap();
    let other = tmp.path().join("other.bin");
    fs::write(&other, other_module.serialize().unwrap()).unwrap();

    // Act: what a careless tool (or a neighbour) does in place.
    let p = path.display();
    let attempts = [
        format!("cp {} {p}", other.display()),
        format!(": > {p}"),
        format!("truncate -s 0 {p}"),
        format!("dd if=/dev/zero of={p} bs=1 count=1 conv=notrunc"),
    ];
    let results: Vec<(bool, String)> = attempts.iter().map(|a| sh(a)).collect();
    // A writable shared mapping (which could change a remembered mapping's
    // bytes without moving its times) needs a descriptor open to write.
    let writable = fs::OpenOptions::new().read(true).write(true).open(&path);

    // Assert: every attempt refused, the file whole, the modules alive.
    for (attempt, (ok, stderr)) in attempts.iter().zip(&results) {
        assert!(!ok, "`{attempt}` succeeded");
        assert!(stderr.contains("ermission denied"), "`{attempt}`: {stderr}");
    }
    assert_eq!(
        writable.unwrap_err().kind(),
        std::io::ErrorKind::PermissionDenied
    );
    for m in [&loaded, &again] {
        let mut store = Store::new(engine.clone());
        let instance = Instance::new(&mut store, m, &imports! {}).unwrap();
        assert!(instance.exports.iter().count() > 0);
    }
    assert!(cache.load(key, &engine).await.is_ok());
    // Removing or renaming the entry stays possible (the directory is the
    // user's) and harmless: the inode lives on while mapped.
    fs::rename(&path, tmp.path().join("moved.bin")).unwrap();
    fs::set_permissions(
        tmp.path().join("moved.bin"),
        fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let mut store = Store::new(engine.clone());
    Instance::new(&mut store, &loaded, &imports! {}).unwrap();
}
