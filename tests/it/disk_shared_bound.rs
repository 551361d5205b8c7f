//! Several instances, in one process or in several, writing to one cache
//! directory: the byte bound holds for the directory, within one entry.

use crate::common;
use common::walk;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use common::sized;
use tierscope::ModuleCache;
use wasmer::Engine;

const CHILD_ENV: &str = "TIERSCOPE_SHARED_BOUND_CHILD_DIR";
const CAPACITY_ENV: &str = "TIERSCOPE_SHARED_BOUND_CAPACITY";

use common::open_disk as open;

/// Bytes of entry files (`*.bin`) under `dir`, and the largest one.
fn entry_bytes(dir: &Path) -> (u64, u64) {
    let mut total = 0;
    let mut largest = 0;
    for p in walk(dir) {
        if p.extension().is_some_and(|e| e == "bin")
            && let Ok(md) = fs::metadata(&p)
        {
            total += md.len();
            largest = largest.max(md.len());
        }
    }
    (total, largest)
}

/// The size of one entry file of a ~3 KB module, and a bound of 4.5 of them.
async fn bound(engine: &Engine) -> (u64, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let probe = open(tmp.path(), 1 << 30);
    let (key, module, _) = sized(engine, 3_000, 1);
    probe.save(key, engine, &module).await.unwrap();
    let one = probe.residency().bytes;
    (one, one * 4 + one / 2)
}

#[tokio::test]
async fn two_instances_on_one_directory_hold_its_bound() {
    let engine = Engine::default();
    let (one, capacity) = bound(&engine).await;
    let tmp = tempfile::tempdir().unwrap();
    let a = open(tmp.path(), capacity);
    let b = open(tmp.path(), capacity);

    for i in 0..10 {
        for (n, cache) in [&a, &b].into_iter().enumerate() {
            let (key, module, _) = sized(&engine, 3_000, 1000 + 2 * i + n as u64);
            cache.save(key, &engine, &module).await.unwrap();
            let (total, largest) = entry_bytes(tmp.path());
            assert!(
                total <= capacity + largest,
                "after save {i}/{n}: {total} bytes on disk, bound {capacity} (one entry ~{one})"
            );
        }
    }
    let (total, _) = entry_bytes(tmp.path());
    assert!(total <= capacity, "{total} bytes on disk, bound {capacity}");
    // Each instance's view matches the directory after a rescan.
    a.rescan().unwrap();
    assert_eq!(a.residency().bytes, total);
}

/// As a parent, writes modules while a child process (this test, re-run
/// with `CHILD_ENV` set) writes others to the same directory; as the child,
/// writes its modules and exits.
#[tokio::test]
async fn a_child_process_and_this_one_hold_the_directory_bound() {
    let engine = Engine::default();
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let capacity: u64 = std::env::var(CAPACITY_ENV).unwrap().parse().unwrap();
        let cache = open(Path::new(&dir), capacity);
        for i in 0..12 {
            let (key, module, _) = sized(&engine, 3_000, 5000 + i);
            cache.save(key, &engine, &module).await.unwrap();
        }
        return;
    }
    let (_, capacity) = bound(&engine).await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), capacity);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "disk_shared_bound::a_child_process_and_this_one_hold_the_directory_bound",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .env(CAPACITY_ENV, capacity.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut worst = 0;
    for i in 0..12 {
        let (key, module, _) = sized(&engine, 3_000, 6000 + i);
        cache.save(key, &engine, &module).await.unwrap();
        let (total, largest) = entry_bytes(tmp.path());
        worst = worst.max(total.saturating_sub(largest));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    let (total, largest) = entry_bytes(tmp.path());
    assert!(
        total <= capacity + largest,
        "{total} bytes on disk, bound {capacity}"
    );
    assert!(
        worst <= capacity,
        "during the run: {worst} bytes beyond one entry, bound {capacity}"
    );
}
