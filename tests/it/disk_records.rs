//! Verification records: a hit that checked a large entry in full (and
//! found its file settled) records the file's identity beside it, and
//! another process's first hit of the unchanged file trusts that
//! verification instead of reading every byte again. Every change to the
//! file (in place, through a changed mode, with its mtime put back), a
//! replaced file, and a record that is not exactly the one the tier wrote
//! for that very file, send the hit back to a full check.
//!
//! "Another process" is mostly another `FileSystemCache` opened on the
//! directory, which shares nothing with the first but the files; one test
//! checks it with a real second process.

use crate::common::{self, as_unprivileged, flip, settle, sized};

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use tierscope::{
    CacheError, Corruption, FileSystemCache, Lookup, ModuleCache, ModuleHash, Verified,
};
use wasmer::{Engine, Instance, Module, Store, imports};

/// Bytes of wasm that compile to an entry of more than 1 MiB (checked).
const LARGE_WASM: usize = 700_000;

fn open(dir: &Path) -> FileSystemCache {
    FileSystemCache::builder(dir)
        .capacity(1 << 30)
        .inline_io(true)
        .build()
        .unwrap()
}

/// A directory holding one large saved entry: the directory, the key, the
/// entry's path and the module.
async fn large_entry(
    engine: &Engine,
    seed: u64,
) -> (tempfile::TempDir, ModuleHash, PathBuf, Module) {
    let (key, module, _) = sized(engine, LARGE_WASM, seed);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.save(key, engine, &module).await.unwrap();
    let path = cache.entry_path(key, engine);
    assert!(
        fs::metadata(&path).unwrap().len() > 1 << 20,
        "the entry must be larger than 1 MiB to be recorded"
    );
    (tmp, key, path, module)
}

fn record_of(entry: &Path) -> PathBuf {
    entry.with_extension("vfy")
}

/// How a fresh tier on `dir` (as a new process would open it) verified its
/// first hit of `key`, after instantiating the module.
async fn first_hit(dir: &Path, key: ModuleHash) -> Result<Verified, CacheError> {
    let engine = Engine::default();
    let hit = open(dir).lookup(key, &engine, Lookup::request()).await?;
    let verified = hit.verified().expect("the disk tier says how it verified");
    let mut store = Store::new(engine.clone());
    Instance::new(&mut store, &hit.into_module(), &imports! {})
        .expect("instantiate a loaded module");
    Ok(verified)
}

/// A large entry, settled, loaded once in full (so recorded), then once
/// through its record: the directory, the key and the entry's path.
async fn recorded_entry(engine: &Engine, seed: u64) -> (tempfile::TempDir, ModuleHash, PathBuf) {
    let (dir, key, path, _) = large_entry(engine, seed).await;
    settle().await;
    expect_first_hits(
        dir.path(),
        &[(key, Verified::Full), (key, Verified::Recorded)],
    )
    .await;
    (dir, key, path)
}

/// Assert how a fresh tier's first hit of each key verified it, in order.
async fn expect_first_hits(dir: &Path, hits: &[(ModuleHash, Verified)]) {
    for (key, want) in hits {
        assert_eq!(first_hit(dir, *key).await.unwrap(), *want, "{key}");
    }
}

/// Two large entries in one directory, settled, each loaded once in full
/// (so recorded): the directory, a tier on it, and each entry's key and
/// path, with the second's module.
async fn two_recorded(
    engine: &Engine,
    seeds: (u64, u64),
) -> (
    tempfile::TempDir,
    FileSystemCache,
    (ModuleHash, PathBuf, Module),
    (ModuleHash, PathBuf, Module),
) {
    let (dir, key, path, module) = large_entry(engine, seeds.0).await;
    let (other_key, other_module, _) = sized(engine, LARGE_WASM, seeds.1);
    let cache = open(dir.path());
    cache.save(other_key, engine, &other_module).await.unwrap();
    let other_path = cache.entry_path(other_key, engine);
    settle().await;
    expect_first_hits(
        dir.path(),
        &[(key, Verified::Full), (other_key, Verified::Full)],
    )
    .await;
    assert!(record_of(&path).exists() && record_of(&other_path).exists());
    (
        dir,
        cache,
        (key, path, module),
        (other_key, other_path, other_module),
    )
}

/// Flip one byte of `path` in place at `at`, as its owner can after making
/// it writable, then make it read-only again and put its mtime back.
fn change_in_place(path: &Path, at: u64) {
    let before = fs::metadata(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    flip(path, at);
    fs::File::open(path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o400)).unwrap();
    let after = fs::metadata(path).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.ino(), after.len()),
        (
            before.mtime(),
            before.mtime_nsec(),
            before.ino(),
            before.len()
        ),
        "only the change time tells"
    );
}

#[tokio::test]
async fn another_process_first_hit_of_a_large_entry_trusts_the_recorded_verification() {
    let engine = Engine::default();
    let (dir, key, path, _) = large_entry(&engine, 61).await;

    // Unsettled: the first hit checks every byte and records nothing (a
    // write in the same clock tick would not move the file's times).
    assert_eq!(first_hit(dir.path(), key).await.unwrap(), Verified::Full);
    assert!(!record_of(&path).exists());

    settle().await;
    assert_eq!(first_hit(dir.path(), key).await.unwrap(), Verified::Full);
    let record = fs::metadata(record_of(&path)).expect("a record beside the entry");
    assert_eq!(record.mode() & 0o777, 0o400);
    assert_eq!(record.len(), 88);

    // Fresh tiers (new processes) trust it, and say so.
    for _ in 0..2 {
        assert_eq!(
            first_hit(dir.path(), key).await.unwrap(),
            Verified::Recorded
        );
    }
    // Within one process, later hits use the remembered mapping.
    let cache = open(dir.path());
    let engine = Engine::default();
    let first = cache.lookup(key, &engine, Lookup::request()).await.unwrap();
    let second = cache.lookup(key, &engine, Lookup::request()).await.unwrap();
    assert_eq!(
        (first.verified(), second.verified()),
        (Some(Verified::Recorded), Some(Verified::Remembered))
    );

    // A tier that verifies every hit ignores records.
    let strict = FileSystemCache::builder(dir.path())
        .capacity(1 << 30)
        .inline_io(true)
        .remember_verified(false)
        .build()
        .unwrap();
    let hit = strict
        .lookup(key, &engine, Lookup::request())
        .await
        .unwrap();
    assert_eq!(hit.verified(), Some(Verified::Full));

    // A small entry is never recorded: its checksum is as cheap as a record.
    let (small, module, _) = sized(&engine, 20_000, 62);
    cache.save(small, &engine, &module).await.unwrap();
    settle().await;
    assert_eq!(first_hit(dir.path(), small).await.unwrap(), Verified::Full);
    assert!(!record_of(&cache.entry_path(small, &engine)).exists());
}

#[tokio::test]
async fn a_changed_entry_is_checked_in_full_whatever_its_record_says() {
    if !as_unprivileged("disk_records::a_changed_entry_is_checked_in_full_whatever_its_record_says")
    {
        return;
    }
    // As a same-user neighbour without root: a byte changed in place after
    // the entry was recorded, through a mode change, with the mtime put
    // back.
    assert!(!common::is_root(), "this part runs without root");
    let engine = Engine::default();
    let (dir, key, path) = recorded_entry(&engine, 63).await;
    let record_before = fs::read(record_of(&path)).unwrap();

    let len = fs::metadata(&path).unwrap().len();
    change_in_place(&path, len - len / 3);
    // However long after.
    settle().await;
    match first_hit(dir.path(), key).await {
        Err(CacheError::Corrupt { reason, .. }) => assert_eq!(reason, Corruption::Checksum),
        other => panic!("expected a checksum refusal, got {other:?}"),
    }
    assert!(!path.exists(), "the changed entry is removed");
    assert!(
        !record_of(&path).exists(),
        "and its record with it (it was {} bytes)",
        record_before.len()
    );
}

#[tokio::test]
async fn a_record_that_is_not_the_tiers_own_for_that_file_is_ignored() {
    let engine = Engine::default();
    let (dir, cache, (key, path, module), (_, other_path, _)) =
        two_recorded(&engine, (64, 65)).await;
    let good = fs::read(record_of(&path)).unwrap();
    let full_again = async |why: &str| {
        assert_eq!(
            first_hit(dir.path(), key).await.unwrap(),
            Verified::Full,
            "{why}"
        );
        // The full check put a good record back.
        assert_eq!(fs::read(record_of(&path)).unwrap(), good, "{why}");
        assert_eq!(
            first_hit(dir.path(), key).await.unwrap(),
            Verified::Recorded
        );
    };
    let replace_record = |bytes: &[u8], mode: u32| {
        let at = record_of(&path);
        let _ = fs::remove_file(&at);
        fs::write(&at, bytes).unwrap();
        fs::set_permissions(&at, fs::Permissions::from_mode(mode)).unwrap();
    };

    // Another entry's record, copied over.
    replace_record(&fs::read(record_of(&other_path)).unwrap(), 0o400);
    full_again("another entry's record").await;
    // One byte changed anywhere (here: the inode it names).
    for at in [0, 20, 60, 87] {
        let mut torn = good.clone();
        torn[at] ^= 1;
        replace_record(&torn, 0o400);
        full_again(&format!("byte {at} changed")).await;
    }
    // Truncated, or padded.
    replace_record(&good[..50], 0o400);
    full_again("truncated").await;
    replace_record(&[good.as_slice(), b"x"].concat(), 0o400);
    full_again("padded").await;
    // The right bytes, writable by the group (anyone in it could have
    // written them).
    replace_record(&good, 0o420);
    full_again("group-writable").await;
    // A link to a good record.
    let elsewhere = dir.path().join("elsewhere.vfy");
    fs::write(&elsewhere, &good).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o400)).unwrap();
    let _ = fs::remove_file(record_of(&path));
    std::os::unix::fs::symlink(&elsewhere, record_of(&path)).unwrap();
    full_again("a symbolic link").await;

    // The entry replaced by a save (another inode, same bytes): its old
    // record no longer applies; once settled, the new file is recorded.
    cache.save(key, &engine, &module).await.unwrap();
    expect_first_hits(dir.path(), &[(key, Verified::Full)]).await;
    settle().await;
    expect_first_hits(
        dir.path(),
        &[(key, Verified::Full), (key, Verified::Recorded)],
    )
    .await;
}

#[tokio::test]
async fn records_go_with_their_entries() {
    let engine = Engine::default();
    let (_dir, cache, (key, path, _), (other_key, other_path, other_module)) =
        two_recorded(&engine, (66, 67)).await;
    let kinds: Vec<_> = cache
        .inventory()
        .unwrap()
        .files
        .iter()
        .map(|f| {
            format!("{:?}", f.kind)
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "Record").count(),
        2,
        "{kinds:?}"
    );

    // Removed with its entry.
    assert!(cache.remove(key, &engine).unwrap());
    assert!(!record_of(&path).exists());
    // An entry removed by hand: the next scan removes its record.
    fs::remove_file(&other_path).unwrap();
    cache.rescan().unwrap();
    assert!(!record_of(&other_path).exists());
    // Evicted: a bound too small for both entries.
    let (dir, key, path, _) = large_entry(&engine, 68).await;
    settle().await;
    assert_eq!(first_hit(dir.path(), key).await.unwrap(), Verified::Full);
    assert!(record_of(&path).exists());
    let len = fs::metadata(&path).unwrap().len();
    let bounded = FileSystemCache::builder(dir.path())
        .capacity(len + len / 2)
        .inline_io(true)
        .build()
        .unwrap();
    bounded
        .save(other_key, &engine, &other_module)
        .await
        .unwrap();
    assert!(!path.exists(), "evicted");
    assert!(!record_of(&path).exists(), "with its record");
}

/// Set in the child process of the test below, to the directory it loads
/// from.
const CHILD_DIR_ENV: &str = "TIERSCOPE_TEST_RECORDED_DIR";

#[tokio::test]
async fn a_record_one_process_left_spares_another_process_the_checksum() {
    let seed = 69;
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        // The child: a process that never saw the entry.
        let key = ModuleHash::new(tierscope::corpus::module(LARGE_WASM, seed));
        assert_eq!(
            first_hit(Path::new(&dir), key).await.unwrap(),
            Verified::Recorded
        );
        return;
    }
    let engine = Engine::default();
    let (dir, key, path, _) = large_entry(&engine, seed).await;
    settle().await;
    assert_eq!(first_hit(dir.path(), key).await.unwrap(), Verified::Full);
    assert!(record_of(&path).exists());
    let test = "disk_records::a_record_one_process_left_spares_another_process_the_checksum";
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the second process: {status}");
}

#[tokio::test]
async fn a_recency_touch_makes_the_record_stale_until_a_later_full_check_rewrites_it() {
    let engine = Engine::default();
    let (dir, key, path) = recorded_entry(&engine, 70).await;
    // A hit that refreshes the entry's recency (its mtime) moves its change
    // time: the record no longer names the file.
    let touching = FileSystemCache::builder(dir.path())
        .capacity(1 << 30)
        .inline_io(true)
        .touch_interval(Duration::ZERO)
        .build()
        .unwrap();
    let ctime = |p: &Path| {
        let md = fs::metadata(p).unwrap();
        (md.ctime(), md.ctime_nsec())
    };
    let before = ctime(&path);
    drop(touching.load(key, &engine).await.unwrap());
    assert_ne!(ctime(&path), before);
    // Unsettled: checked in full, not recorded; a second later, checked in
    // full and recorded again.
    expect_first_hits(dir.path(), &[(key, Verified::Full)]).await;
    settle().await;
    expect_first_hits(
        dir.path(),
        &[(key, Verified::Full), (key, Verified::Recorded)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verified_hits_counter_says_how_each_hit_was_checked_as_the_test_counts() {
    use crate::common::snapshot::{counter, take};
    use metrics_util::debugging::DebuggingRecorder;
    use tierscope::InstrumentExt;

    // A large entry, settled, recorded by a first full check.
    let engine = Engine::default();
    let (dir, key, _path) = recorded_entry(&engine, 71).await;

    // What the defaults create: several tiers on the directory (as several
    // processes open it), each on its own task, each loading the entry
    // into two engines (an engine switch); and one tier that verifies every
    // hit. The test counts what each hit must have been.
    const TIERS: usize = 4;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (tiers, strict) = metrics::with_local_recorder(&recorder, || {
        let tiers: Vec<_> = (0..TIERS)
            .map(|_| open(dir.path()).instrumented("records", "disk"))
            .collect();
        let strict = FileSystemCache::builder(dir.path())
            .capacity(1 << 30)
            .remember_verified(false)
            .build()
            .unwrap()
            .instrumented("records", "strict");
        (tiers, strict)
    });
    let (mut recorded, mut remembered, mut full) = (0u64, 0u64, 0u64);
    let tasks: Vec<_> = tiers
        .into_iter()
        .map(|tier| {
            tokio::spawn(async move {
                for _ in 0..2 {
                    let engine = Engine::default();
                    drop(tier.load(key, &engine).await.unwrap());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
        // Its first hit through the record, its second from the mapping
        // that hit remembered.
        recorded += 1;
        remembered += 1;
    }
    for _ in 0..3 {
        drop(strict.load(key, &engine).await.unwrap());
        full += 1;
    }

    let s = take(&snapshotter);
    let check = |tier, check| {
        counter(
            &s,
            "tierscope_verified_hits_total",
            &[("cache", "records"), ("tier", tier), ("check", check)],
        )
    };
    assert_eq!(
        (
            check("disk", "recorded"),
            check("disk", "remembered"),
            check("disk", "full")
        ),
        (recorded, remembered, 0)
    );
    assert_eq!(
        (
            check("strict", "recorded"),
            check("strict", "remembered"),
            check("strict", "full")
        ),
        (0, 0, full)
    );
    let hits = |tier| {
        counter(
            &s,
            "tierscope_lookups_total",
            &[("cache", "records"), ("tier", tier), ("result", "hit")],
        )
    };
    assert_eq!(
        (hits("disk"), hits("strict")),
        (recorded + remembered, full)
    );
}
