//! The disk tier serves hits from a mapping of the entry file: what it
//! verified (header, checksum, MAC) is the very bytes wasmer loads. A
//! flipped byte in a mapped entry is never loaded; an entry that others
//! could change under the mapping is read instead of mapped.
//!
//! A hit remembers the mapping it verified: later hits on the unchanged
//! file reuse it, and a change is still caught.
//!
//! The mapping is observed in `/proc/self/maps` (Linux only).

use crate::common;

use std::{fs, path::Path, time::Duration};

use common::{Recording, flip, settle, sized};
use tierscope::{
    CacheError, Corruption, EvictionCause, FileSystemCache, MacKey, ModuleCache, ModuleLoader,
    entry,
};
use wasmer::{Engine, Instance, Module, Store, imports};

/// A tier that maps and verifies on every hit: these tests count the
/// mappings modules hold, and a remembered mapping (of an entry whose file
/// happens to be a second old when loaded, on a slow run) would add one.
fn open(dir: &Path) -> FileSystemCache {
    FileSystemCache::builder(dir)
        .capacity(1 << 30)
        .inline_io(true)
        .remember_verified(false)
        .build()
        .unwrap()
}

/// A tier that remembers verified mappings (the default), holding one
/// saved entry of about 20 KB of wasm (`seed`): the cache, its directory,
/// the key, the entry's path and the module saved.
async fn remembering(
    engine: &Engine,
    seed: u64,
) -> (
    FileSystemCache,
    tempfile::TempDir,
    tierscope::ModuleHash,
    std::path::PathBuf,
    Module,
) {
    let (key, module, _) = sized(engine, 20_000, seed);
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileSystemCache::builder(tmp.path())
        .capacity(1 << 30)
        .inline_io(true)
        .build()
        .unwrap();
    cache.save(key, engine, &module).await.unwrap();
    let path = cache.entry_path(key, engine);
    (cache, tmp, key, path, module)
}

/// Mappings of `path` in this process, as the lines of `/proc/self/maps`.
fn mappings_of(path: &Path) -> Vec<String> {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let wanted = path.to_str().unwrap();
    maps.lines()
        .filter(|l| l.contains(wanted))
        .map(str::to_string)
        .collect()
}

/// Instantiate the module: the code loaded from the entry is usable.
fn exercise(engine: &Engine, module: &Module) {
    let mut store = Store::new(engine.clone());
    Instance::new(&mut store, module, &imports! {}).expect("instantiate a loaded module");
}

#[tokio::test]
async fn a_hit_is_served_from_a_mapping_of_the_entry() {
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 20_000, 1);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    assert!(mappings_of(&path).is_empty());

    let loaded = cache.load(key, &engine).await.unwrap();
    let maps = mappings_of(&path);
    assert!(
        !maps.is_empty(),
        "the loaded module should hold a mapping of {}",
        path.display()
    );
    exercise(&engine, &loaded);

    // Replacing or evicting the entry never changes the mapped pages: a
    // save renames a new file over the path, an eviction unlinks it; the
    // module keeps the old inode.
    cache.save(key, &engine, &module).await.unwrap();
    assert!(cache.remove(key, &engine).unwrap());
    assert!(!path.exists());
    assert!(
        mappings_of(&path).iter().any(|l| l.ends_with("(deleted)")),
        "{:?}",
        mappings_of(&path)
    );
    exercise(&engine, &loaded);

    // The engine keeps what it loaded until it is dropped itself (wasmer
    // #4377): the artifact's bytes, here the mapping, included.
    drop(loaded);
    drop(engine);
    assert!(
        mappings_of(&path).is_empty(),
        "dropping the module and its engine releases the mapping: {:?}",
        mappings_of(&path)
    );
}

/// Save, load once (so the entry has been mapped and its pages are in the
/// page cache), flip one byte of the file in place, load again.
async fn flipped_case(offset: impl Fn(u64) -> u64, mac: Option<MacKey>) {
    let engine = Engine::default();
    let (key, module, wasm) = sized(&engine, 20_000, 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut builder = FileSystemCache::builder(tmp.path())
        .capacity(1 << 30)
        .inline_io(true)
        .remember_verified(false);
    if let Some(mac) = mac.clone() {
        builder = builder.mac_key(mac);
    }
    let cache = builder.build().unwrap();
    let seen = Recording::attach(&cache);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    let len = fs::metadata(&path).unwrap().len();

    // On an engine of its own, so that dropping it releases the mapping.
    let probe = Engine::default();
    let first = cache.load(key, &probe).await.unwrap();
    assert!(!mappings_of(&path).is_empty(), "the entry should be mapped");
    drop(first);
    drop(probe);
    assert!(mappings_of(&path).is_empty());

    let at = offset(len);
    flip(&path, at);

    let err = cache.load(key, &engine).await.unwrap_err();
    match (&err, &mac) {
        (CacheError::Integrity { location, .. }, Some(_)) => {
            assert!(location.contains(&key.to_string()), "{location}")
        }
        (CacheError::Corrupt { location, reason }, None) => {
            assert!(location.contains(&key.to_string()), "{location}");
            assert!(
                at < entry::HEADER_LEN as u64 || *reason == Corruption::Checksum,
                "byte {at}: {reason:?}"
            );
        }
        (other, _) => panic!("byte {at} of {len}: expected a refusal, got {other:?}"),
    }
    assert!(!path.exists(), "the flipped entry is removed (byte {at})");
    assert!(
        mappings_of(&path).is_empty(),
        "a refused entry leaves no mapping behind"
    );
    let ev = seen.evictions();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].cause, EvictionCause::Corrupt);

    // The loader recompiles and rewrites it; the new entry loads, mapped.
    let loader = ModuleLoader::new("disk-mmap-test", cache.clone());
    loader.load_into(&engine, &wasm).await.unwrap();
    for _ in 0..100 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = cache.load(key, &engine).await.unwrap();
    assert!(!mappings_of(&path).is_empty());
    exercise(&engine, &again);
}

#[tokio::test]
async fn a_flipped_byte_in_a_mapped_entry_is_never_loaded() {
    let header = entry::HEADER_LEN as u64;
    // The checksum field, the first artifact byte (wasmer's own magic),
    // one in the middle, the last.
    flipped_case(|_| 30, None).await;
    flipped_case(|_| header, None).await;
    flipped_case(|len| header + (len - header) / 2, None).await;
    flipped_case(|len| len - 1, None).await;
}

#[tokio::test]
async fn with_a_mac_key_a_flipped_byte_in_a_mapped_entry_is_never_loaded() {
    let header = entry::HEADER_LEN as u64;
    let key = || Some(MacKey::new([0x5A; 32]));
    flipped_case(|_| 100, key()).await; // in the MAC itself
    flipped_case(|len| header + (len - header) / 3, key()).await;
    flipped_case(|len| len - 1, key()).await;
}

#[tokio::test]
async fn an_entry_of_another_user_is_read_and_one_made_writable_is_made_read_only_again() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 20_000, 3);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&path), 0o400, "entries are written read-only");
    let euid = fs::metadata(tmp.path()).unwrap().uid();

    // Another user's entry (a shared directory): its mode is not ours to
    // change, and its owner could truncate it under a mapping (SIGBUS) or
    // change it after verification: read, not mapped. Giving a file
    // another owner needs root (CI runs as root).
    assert!(
        crate::common::is_root(),
        "this test gives an entry another owner: run it as root"
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let loaded = cache.load(key, &engine).await.unwrap();
    assert!(mappings_of(&path).is_empty(), "{:?}", mappings_of(&path));
    assert_eq!(mode(&path), 0o644);
    exercise(&engine, &loaded);
    drop(loaded);

    // Ours again, but writable (by hand, or written by an older
    // tierscope): the tier takes the write bits away, then maps it.
    std::os::unix::fs::chown(&path, Some(euid), None).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
    let loaded = cache.load(key, &engine).await.unwrap();
    assert_eq!(mode(&path), 0o400);
    assert!(!mappings_of(&path).is_empty());
    exercise(&engine, &loaded);
}

#[tokio::test]
async fn later_hits_reuse_a_remembered_mapping_and_a_change_in_place_is_still_caught() {
    let engine = Engine::default();
    let (cache, _dir, key, path, _) = remembering(&engine, 5).await;
    let seen = Recording::attach(&cache);
    settle().await;

    // Two hits on two engines: the second is served from the mapping the
    // first verified, so the two modules share one mapping.
    let (one, two) = (Engine::default(), Engine::default());
    let a = cache.load(key, &one).await.unwrap();
    let b = cache.load(key, &two).await.unwrap();
    assert_eq!(mappings_of(&path).len(), 1, "{:?}", mappings_of(&path));
    exercise(&one, &a);
    exercise(&two, &b);
    drop((a, b, one, two));
    assert_eq!(
        mappings_of(&path).len(),
        1,
        "the tier keeps the mapping it remembers"
    );

    // A byte flipped in place (what tierscope never does) moves the file's
    // change time: the next hit verifies again and refuses the entry.
    let len = fs::metadata(&path).unwrap().len();
    flip(
        &path,
        entry::HEADER_LEN as u64 + (len - entry::HEADER_LEN as u64) / 2,
    );
    match cache.load(key, &engine).await {
        Err(CacheError::Corrupt { reason, .. }) => assert_eq!(reason, Corruption::Checksum),
        other => panic!("expected a checksum refusal, got {other:?}"),
    }
    assert!(!path.exists());
    assert!(
        mappings_of(&path).is_empty(),
        "the refused entry is forgotten: {:?}",
        mappings_of(&path)
    );
    assert_eq!(seen.evictions().len(), 1);
}

#[tokio::test]
async fn a_remembered_entry_is_forgotten_when_removed_or_replaced() {
    let engine = Engine::default();
    let (cache, _dir, key, path, module) = remembering(&engine, 6).await;
    settle().await;
    let probe = Engine::default();
    drop(cache.load(key, &probe).await.unwrap());
    drop(probe);
    assert_eq!(mappings_of(&path).len(), 1);

    // Replaced by a save (a new inode): the next hit maps the new file,
    // and the old mapping is let go.
    cache.save(key, &engine, &module).await.unwrap();
    let probe = Engine::default();
    let loaded = cache.load(key, &probe).await.unwrap();
    exercise(&probe, &loaded);
    drop((loaded, probe));
    assert!(
        mappings_of(&path).iter().all(|l| !l.ends_with("(deleted)")),
        "{:?}",
        mappings_of(&path)
    );

    // Removed: nothing of it stays mapped.
    assert!(cache.remove(key, &engine).unwrap());
    assert!(mappings_of(&path).is_empty(), "{:?}", mappings_of(&path));
}

#[tokio::test]
async fn with_map_entries_off_every_hit_is_read_and_survives_a_truncation() {
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 20_000, 7);
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileSystemCache::builder(tmp.path())
        .capacity(1 << 30)
        .inline_io(true)
        .map_entries(false)
        .build()
        .unwrap();
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);

    let loaded = cache.load(key, &engine).await.unwrap();

    assert!(mappings_of(&path).is_empty(), "{:?}", mappings_of(&path));
    // What even root can do to the file no longer reaches the module.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    exercise(&engine, &loaded);
}
