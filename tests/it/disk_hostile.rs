//! The filesystem tier against a hostile neighbour or a careless operator:
//! special files and links at entry paths, oversized files, foreign files in
//! the cache directory, shared and badly owned directories, forged entries,
//! clocks in the future.

use crate::common;

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use common::{Recording, sized, tiny};
use tierscope::{
    CacheError, Corruption, EvictionCause, FileSystemCache, MacKey, ModuleCache, ModuleHash,
    ModuleLoader, engine::ident_of, entry,
};
use wasmer::{Engine, Module};

use common::open_disk as open;

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Load with a deadline. On a hang, unblock the stuck reader by opening the
/// FIFO's write end (so the runtime can shut down), then fail.
async fn load_within(
    cache: &FileSystemCache,
    key: ModuleHash,
    engine: &Engine,
    fifo: &Path,
) -> Result<Module, CacheError> {
    match tokio::time::timeout(Duration::from_secs(5), cache.load(key, engine)).await {
        Ok(r) => r,
        Err(_) => {
            let _ = fs::OpenOptions::new().write(true).open(fifo);
            panic!("load of a FIFO at an entry path hung");
        }
    }
}

#[tokio::test]
async fn a_fifo_at_an_entry_path_is_corrupt_removed_and_recompiled() {
    let engine = Engine::default();
    let (key, module, wasm) = tiny(&engine, 901);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let seen = Recording::attach(&cache);

    let contains = tokio::time::timeout(Duration::from_secs(5), cache.contains(key, &engine))
        .await
        .expect("contains on a FIFO hung");
    assert!(!contains.unwrap(), "a FIFO is not an entry");
    mkfifo_again(&path);
    let err = load_within(&cache, key, &engine, &path).await.unwrap_err();

    assert!(
        matches!(
            &err,
            CacheError::Corrupt {
                reason: Corruption::NotARegularFile,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(fs::symlink_metadata(&path).is_err(), "the FIFO is removed");
    assert_eq!(seen.evictions()[0].cause, EvictionCause::Corrupt);
    // The loader recompiles and writes a good entry in its place.
    let loader = ModuleLoader::new("fifo", cache.clone());
    loader.load_into(&engine, &wasm).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(fs::metadata(&path).unwrap().is_file());
    assert!(cache.load(key, &engine).await.is_ok());
}

/// `contains` may have removed the FIFO (it is corrupt): put one back.
fn mkfifo_again(path: &Path) {
    if fs::symlink_metadata(path).is_err() {
        mkfifo(path);
    }
}

#[tokio::test]
async fn a_symlink_at_an_entry_path_is_never_followed() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 902);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(&tmp.path().join("c"), 1 << 30);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    // A valid entry, but reached through a link pointing out of the cache.
    let outside = tmp.path().join("outside.bin");
    fs::rename(&path, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &path).unwrap();

    let err = cache.load(key, &engine).await.unwrap_err();

    assert!(
        matches!(
            &err,
            CacheError::Corrupt {
                reason: Corruption::NotARegularFile,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(fs::symlink_metadata(&path).is_err(), "the link is removed");
    assert!(outside.exists(), "its target is not touched");
}

#[tokio::test]
async fn files_that_are_not_entries_survive_open() {
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 3_000, 904);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A real entry, so a namespace directory exists.
    let probe = open(root, 1 << 30);
    probe.save(key, &engine, &module).await.unwrap();
    let entry_path = probe.entry_path(key, &engine);
    let ns = entry_path.parent().unwrap().to_path_buf();
    drop(probe);

    let firmware = root.join("firmware").join("image.bin");
    fs::create_dir(root.join("firmware")).unwrap();
    fs::write(&firmware, vec![0xA5; 2 << 20]).unwrap();
    let loose = root.join("README.bin");
    fs::write(&loose, vec![1; 4096]).unwrap();
    let notes = ns.join("notes.txt");
    fs::write(&notes, vec![2; 1 << 20]).unwrap();
    // Shaped like an entry, but not ours: no magic.
    let imposter = ns.join(format!("{}.bin", ModuleHash::from_bytes([9; 32])));
    fs::write(&imposter, vec![3; 1 << 20]).unwrap();
    let dotted = ns.join(".tmp-not-ours");
    fs::write(&dotted, vec![4; 10]).unwrap();

    let logs = capture_warnings(|| {
        // 1 MiB: far less than the foreign bytes, more than the entry.
        let cache = open(root, 1 << 20);
        assert_eq!(cache.residency().entries, 1);
        assert_eq!(
            cache.residency().bytes,
            fs::metadata(&entry_path).unwrap().len()
        );
        open(root, 1 << 20);
    });

    for p in [&firmware, &loose, &notes, &imposter, &dotted] {
        assert!(p.exists(), "{} was deleted", p.display());
    }
    assert_eq!(fs::read(&firmware).unwrap().len(), 2 << 20);
    assert!(entry_path.exists());
    // Reported, once each however often the directory is scanned.
    for p in [&notes, &imposter] {
        let name = p.file_name().unwrap().to_str().unwrap();
        let n = logs.iter().filter(|l| l.contains(name)).count();
        assert_eq!(n, 1, "{name} reported {n} times: {logs:#?}");
    }
    let n = logs.iter().filter(|l| l.contains("firmware")).count();
    assert_eq!(n, 1, "firmware reported {n} times: {logs:#?}");
}

/// Run `f` with a subscriber that records every WARN event, and return them.
fn capture_warnings(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    text.lines().map(str::to_string).collect()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn a_world_or_group_writable_directory_is_refused() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 905);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    fs::create_dir(&root).unwrap();

    chmod(&root, 0o777);
    let err = FileSystemCache::open(&root, 1 << 30).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&root.display().to_string()), "{msg}");
    assert!(msg.contains("0777"), "{msg}");
    assert!(msg.contains("uid"), "{msg}");
    assert!(msg.contains("shared_directory"), "{msg}");

    chmod(&root, 0o770);
    assert!(
        FileSystemCache::open(&root, 1 << 30).is_err(),
        "group-writable"
    );

    // A namespace directory made writable by others, under a private root.
    chmod(&root, 0o700);
    let cache = open(&root, 1 << 30);
    cache.save(key, &engine, &module).await.unwrap();
    let ns = cache
        .entry_path(key, &engine)
        .parent()
        .unwrap()
        .to_path_buf();
    chmod(&ns, 0o757);
    let err = FileSystemCache::open(&root, 1 << 30).unwrap_err();
    assert!(err.to_string().contains(&ns.display().to_string()), "{err}");
    chmod(&ns, 0o700);

    // The explicit opt-in accepts it.
    chmod(&root, 0o777);
    FileSystemCache::builder(&root)
        .capacity(1 << 30)
        .shared_directory(true)
        .build()
        .unwrap();
}

#[tokio::test]
async fn a_directory_created_after_open_is_checked_before_use() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 906);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("later");
    let cache = open(&root, 1 << 30);
    // Someone else creates the directory, world-writable, after our open.
    fs::create_dir(&root).unwrap();
    chmod(&root, 0o777);

    let err = cache.save(key, &engine, &module).await.unwrap_err();
    assert!(err.to_string().contains("0777"), "{err}");
    let err = cache.load(key, &engine).await.unwrap_err();
    assert!(err.to_string().contains("0777"), "{err}");
}

#[tokio::test]
async fn a_directory_owned_by_another_user_is_refused() {
    assert!(
        common::is_root(),
        "this test gives a directory another owner: run it as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("theirs");
    fs::create_dir(&root).unwrap();
    chmod(&root, 0o700);
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();

    let err = FileSystemCache::open(&root, 1 << 30).unwrap_err();

    let msg = err.to_string();
    assert!(msg.contains("65534"), "{msg}");
    assert!(msg.contains(&root.display().to_string()), "{msg}");
}

const WAT_A: &str = r#"(module (func (export "module_a") (result i32) i32.const 1))"#;
const WAT_B: &str = r#"(module (func (export "module_b") (result i32) i32.const 2))"#;

fn exports(m: &Module) -> Vec<String> {
    m.exports().map(|e| e.name().to_string()).collect()
}

/// Module A's header followed by module B's artifact, with a valid checksum:
/// what another user with write access to a shared directory can write.
fn forge(engine: &Engine, path: &Path) {
    let wasm_a = wat::parse_str(WAT_A).unwrap();
    let key_a = ModuleHash::new(&wasm_a);
    let b = Module::new(engine, wat::parse_str(WAT_B).unwrap()).unwrap();
    let artifact_b = b.serialize().unwrap();
    fs::write(path, entry::encode(&key_a, &ident_of(engine), &artifact_b)).unwrap();
}

fn shared_cache(root: &Path, key: Option<MacKey>) -> FileSystemCache {
    let mut b = FileSystemCache::builder(root)
        .capacity(1 << 30)
        .shared_directory(true);
    if let Some(key) = key {
        b = b.mac_key(key);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn with_a_mac_key_a_forged_entry_in_a_shared_directory_is_refused() {
    let engine = Engine::default();
    let wasm_a = wat::parse_str(WAT_A).unwrap();
    let key_a = ModuleHash::new(&wasm_a);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    fs::create_dir(&root).unwrap();
    chmod(&root, 0o777);
    let mac = MacKey::new([0x5A; 32]);
    let cache = shared_cache(&root, Some(mac.clone()));
    let seen = Recording::attach(&cache);
    let path = cache.entry_path(key_a, &engine);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    forge(&engine, &path);

    let err = cache.load(key_a, &engine).await.unwrap_err();

    assert!(matches!(err, CacheError::Integrity { .. }), "{err:?}");
    assert!(err.to_string().contains("MAC"), "{err}");
    assert!(!path.exists(), "a forged entry is removed");
    assert_eq!(seen.evictions()[0].cause, EvictionCause::Corrupt);
    // The loader compiles A, signs it, and the next process reads it back.
    let loader = ModuleLoader::new("forged", cache.clone());
    let a = loader.load_into(&engine, &wasm_a).await.unwrap();
    assert_eq!(exports(&a), ["module_a"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = shared_cache(&root, Some(mac.clone()));
    assert_eq!(
        exports(&again.load(key_a, &engine).await.unwrap()),
        ["module_a"]
    );
    // Rotation: a new signing key first, the old one still accepted.
    let rotated = FileSystemCache::builder(&root)
        .capacity(1 << 30)
        .shared_directory(true)
        .mac_keys([MacKey::new([0x77; 32]), mac])
        .build()
        .unwrap();
    assert_eq!(
        exports(&rotated.load(key_a, &engine).await.unwrap()),
        ["module_a"]
    );
    // A node with another key does not accept it.
    let other = shared_cache(&root, Some(MacKey::new([0x11; 32])));
    let err = other.load(key_a, &engine).await.unwrap_err();
    assert!(matches!(err, CacheError::Integrity { .. }), "{err:?}");
}

#[tokio::test]
async fn contains_verifies_the_header_and_length() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 907);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    assert!(cache.contains(key, &engine).await.unwrap());

    let good = fs::read(&path).unwrap();
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(!cache.contains(key, &engine).await.unwrap(), "truncated");
    fs::write(&path, b"garbage").unwrap();
    assert!(!cache.contains(key, &engine).await.unwrap(), "garbage");
    let other = ModuleHash::from_bytes([0xEE; 32]);
    fs::write(cache.entry_path(other, &engine), &good).unwrap();
    assert!(!cache.contains(other, &engine).await.unwrap(), "wrong key");
}

#[tokio::test]
async fn an_entry_with_a_future_mtime_is_still_evicted() {
    let engine = Engine::default();
    let modules: Vec<_> = (0..3).map(|i| sized(&engine, 3_000, 910 + i)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    let (k0, m0, _) = &modules[0];
    cache.save(*k0, &engine, m0).await.unwrap();
    let p0 = cache.entry_path(*k0, &engine);
    let year = Duration::from_secs(365 * 24 * 3600);
    fs::File::options()
        .write(true)
        .open(&p0)
        .unwrap()
        .set_modified(SystemTime::now() + year)
        .unwrap();
    drop(cache);

    // A restart finds it in the future; newer entries follow.
    let cache = open(tmp.path(), 1 << 30);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (key, module, _) in &modules[1..] {
        cache.save(*key, &engine, module).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sizes: Vec<u64> = modules
        .iter()
        .map(|(k, _, _)| fs::metadata(cache.entry_path(*k, &engine)).unwrap().len())
        .collect();
    drop(cache);

    // Room for two: the least recently used, entry 0, goes.
    let reopened = open(tmp.path(), sizes[1] + sizes[2] + sizes[0] / 2);
    assert!(!p0.exists(), "the entry with a future mtime was kept");
    for (key, _, _) in &modules[1..] {
        assert!(reopened.contains(*key, &engine).await.unwrap());
    }
}
