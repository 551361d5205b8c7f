//! The filesystem tier: layout, verification before deserialize, bounds,
//! restarts and sharing.

use crate::common;
use common::walk;

use std::{fs, path::Path, time::Duration};

use common::{Recording, sized, tiny};
use tierscope::{
    CacheError, Corruption, EvictionCause, FileSystemCache, ModuleCache, ModuleHash, ModuleLoader,
    entry,
};
use wasmer::Engine;

use common::open_disk as open;

#[tokio::test]
async fn round_trip_and_directory_created_on_first_save() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("cache");
    let cache = open(&dir, 1 << 30);
    assert!(!dir.exists(), "opening must not create the directory");

    cache.save(key, &engine, &module).await.unwrap();

    assert!(dir.is_dir());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ns = cache.entry_path(key, &engine);
        let ns_mode = fs::metadata(ns.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(ns_mode, 0o700);
    }
    let loaded = cache.load(key, &engine).await.unwrap();
    assert_eq!(
        loaded
            .exports()
            .map(|e| e.name().to_string())
            .collect::<Vec<_>>(),
        ["add"]
    );
    assert!(cache.contains(key, &engine).await.unwrap());
    let r = cache.residency();
    assert_eq!(r.entries, 1);
    assert_eq!(
        r.bytes,
        fs::metadata(cache.entry_path(key, &engine)).unwrap().len()
    );
}

#[tokio::test]
async fn missing_entry_is_not_found() {
    let engine = Engine::default();
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    let key = ModuleHash::from_bytes([3; 32]);

    assert!(matches!(
        cache.load(key, &engine).await.unwrap_err(),
        CacheError::NotFound
    ));
    assert!(!cache.contains(key, &engine).await.unwrap());
}

#[tokio::test]
async fn the_layout_binds_engine_wasmer_version_and_format() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 21);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);

    cache.save(key, &engine, &module).await.unwrap();

    let path = cache.entry_path(key, &engine);
    let ns = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        ns.contains(&format!("wasmer{}", tierscope::engine::WASMER_VERSION)),
        "{ns}"
    );
    assert!(
        ns.ends_with(&format!("-ts{}", tierscope::engine::FORMAT_VERSION)),
        "{ns}"
    );
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("{key}.bin")
    );
}

/// Damage an entry file in one way, then check that the tier refuses it
/// before deserializing, removes it, reports it, and that the loader
/// recompiles and rewrites a good entry.
async fn corrupt_case(damage: impl FnOnce(&Path), expect: impl Fn(&Corruption) -> bool) {
    let engine = Engine::default();
    let (key, module, wasm) = sized(&engine, 3_000, 22);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    let seen = Recording::attach(&cache);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    let good = fs::read(&path).unwrap();

    damage(&path);
    let err = cache.load(key, &engine).await.unwrap_err();

    match &err {
        CacheError::Corrupt { location, reason } => {
            assert!(expect(reason), "unexpected reason {reason:?}");
            assert!(location.contains(&key.to_string()), "{location}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!path.exists(), "a corrupt entry is removed");
    let ev = seen.evictions();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].cause, EvictionCause::Corrupt);
    assert_eq!(ev[0].bytes, good.len() as u64);
    assert_eq!(cache.residency().entries, 0);
    // Next time it is a plain miss, and the loader recompiles and rewrites it.
    assert!(cache.load(key, &engine).await.unwrap_err().is_not_found());
    let loader = ModuleLoader::new("disk-test", cache.clone());
    loader.load_into(&engine, &wasm).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // the save follows the answer
    let rewritten = fs::read(&path).unwrap();
    let range = entry::decode(&rewritten, &key, &tierscope::engine::ident_of(&engine)).unwrap();
    assert!(!range.is_empty());
    assert!(cache.load(key, &engine).await.is_ok());
}

#[tokio::test]
async fn a_flipped_byte_is_caught() {
    corrupt_case(
        |p| {
            let mut b = fs::read(p).unwrap();
            let i = b.len() / 2;
            b[i] ^= 0x01;
            fs::write(p, b).unwrap();
        },
        |r| *r == Corruption::Checksum,
    )
    .await;
}

#[tokio::test]
async fn a_truncated_file_is_caught() {
    corrupt_case(
        |p| {
            let b = fs::read(p).unwrap();
            fs::write(p, &b[..b.len() - 100]).unwrap();
        },
        |r| matches!(r, Corruption::Truncated { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_file_shorter_than_a_header_is_caught() {
    corrupt_case(
        |p| fs::write(p, b"\0asm").unwrap(),
        |r| matches!(r, Corruption::Truncated { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_wrong_magic_is_caught() {
    corrupt_case(
        |p| {
            // A raw wasmer artifact without our header: what wasmer's own
            // FileSystemCache writes.
            let b = fs::read(p).unwrap();
            fs::write(p, &b[entry::HEADER_LEN..]).unwrap();
        },
        |r| *r == Corruption::BadMagic,
    )
    .await;
}

#[tokio::test]
async fn another_format_version_is_caught() {
    corrupt_case(
        |p| {
            let mut b = fs::read(p).unwrap();
            b[8..10].copy_from_slice(&(tierscope::engine::FORMAT_VERSION + 1).to_le_bytes());
            fs::write(p, b).unwrap();
        },
        |r| matches!(r, Corruption::FormatVersion { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_file_from_another_wasmer_version_is_caught() {
    corrupt_case(
        |p| {
            // The header's engine context binds the wasmer version: one
            // written by another version differs there.
            let mut b = fs::read(p).unwrap();
            b[40] ^= 0xFF;
            fs::write(p, b).unwrap();
        },
        |r| *r == Corruption::ForeignEngine,
    )
    .await;
}

#[tokio::test]
async fn another_wasmer_versions_directory_is_never_read() {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 23);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    let ns = path.parent().unwrap();
    let old_ns = tmp.path().join(
        ns.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(tierscope::engine::WASMER_VERSION, "6.0.0"),
    );
    fs::rename(ns, &old_ns).unwrap();

    assert!(cache.load(key, &engine).await.unwrap_err().is_not_found());
    // It still counts against the bound, and goes first.
    let reopened = open(tmp.path(), 1 << 30);
    assert_eq!(reopened.residency().entries, 1);
}

#[tokio::test]
async fn an_abandoned_temp_file_is_invisible_and_cleaned_up() {
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 3_000, 24);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1 << 30);
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    let full = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    // A writer that died half way through.
    let stray = path.parent().unwrap().join(format!(".tmp-{key}-999999-0"));
    fs::write(&stray, &full[..full.len() / 2]).unwrap();

    assert!(cache.load(key, &engine).await.unwrap_err().is_not_found());
    let reopened = open(tmp.path(), 1 << 30);
    assert!(!stray.exists(), "stray temp file removed at open");
    assert_eq!(reopened.residency().entries, 0);

    // A temp file that a live writer holds locked is left alone.
    let held = path.parent().unwrap().join(format!(".tmp-{key}-1-1"));
    let f = fs::File::create(&held).unwrap();
    f.lock().unwrap();
    open(tmp.path(), 1 << 30);
    assert!(held.exists());
    drop(f);
    open(tmp.path(), 1 << 30);
    assert!(!held.exists());
}

#[tokio::test]
async fn the_byte_bound_holds_across_close_and_reopen() {
    let engine = Engine::default();
    let modules: Vec<_> = (0..8).map(|i| sized(&engine, 3_000, 300 + i)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let one = {
        let probe = open(&tmp.path().join("probe"), 1 << 30);
        probe
            .save(modules[0].0, &engine, &modules[0].1)
            .await
            .unwrap();
        probe.residency().bytes
    };
    let capacity = one * 4 + one / 2;
    {
        let cache = open(tmp.path(), capacity);
        let seen = Recording::attach(&cache);
        for (key, module, _) in &modules {
            cache.save(*key, &engine, module).await.unwrap();
            assert!(cache.residency().bytes <= capacity);
        }
        let ev = seen.evictions();
        assert!(ev.len() >= 3, "{ev:?}");
        assert!(ev.iter().all(|e| e.cause == EvictionCause::Capacity));
        // The oldest went first.
        assert!(!cache.contains(modules[0].0, &engine).await.unwrap());
        assert!(cache.contains(modules[7].0, &engine).await.unwrap());
    }
    // Entry files only: the directory also holds the tier's lock file.
    let files = |dir: &Path| -> u64 {
        walk(dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    let reopened = open(tmp.path(), capacity);
    let r = reopened.residency();
    assert!(r.bytes <= capacity);
    assert_eq!(
        r.bytes,
        files(tmp.path()) - files(&tmp.path().join("probe"))
    );
    // Reopen with half the room: evicts down at once.
    let smaller = open(tmp.path(), capacity / 2);
    assert!(smaller.residency().bytes <= capacity / 2);
    assert!(smaller.contains(modules[7].0, &engine).await.unwrap());
}

#[tokio::test]
async fn recency_survives_a_restart() {
    let engine = Engine::default();
    let modules: Vec<_> = (0..3).map(|i| sized(&engine, 3_000, 400 + i)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileSystemCache::builder(tmp.path())
        .capacity(1 << 30)
        .touch_interval(Duration::ZERO)
        .build()
        .unwrap();
    for (key, module, _) in &modules {
        cache.save(*key, &engine, module).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Use the oldest: it becomes the most recent, on disk too.
    cache.load(modules[0].0, &engine).await.unwrap();
    let size = |i: usize| {
        fs::metadata(cache.entry_path(modules[i].0, &engine))
            .unwrap()
            .len()
    };
    // Room for entries 0 and 2 but not all three.
    let capacity = size(0) + size(2) + size(1) / 2;
    drop(cache);

    let reopened = open(tmp.path(), capacity);

    assert!(reopened.contains(modules[0].0, &engine).await.unwrap());
    assert!(!reopened.contains(modules[1].0, &engine).await.unwrap());
    assert!(reopened.contains(modules[2].0, &engine).await.unwrap());
}

#[tokio::test]
async fn two_caches_share_one_directory() {
    let engine = Engine::default();
    let (k1, m1, _) = tiny(&engine, 25);
    let (k2, m2, _) = tiny(&engine, 26);
    let tmp = tempfile::tempdir().unwrap();
    let a = open(tmp.path(), 1 << 30);
    let b = open(tmp.path(), 1 << 30);

    a.save(k1, &engine, &m1).await.unwrap();
    // B never scanned it but finds it, and learns it.
    assert!(b.load(k1, &engine).await.is_ok());
    assert_eq!(b.residency().entries, 1);
    b.save(k2, &engine, &m2).await.unwrap();
    assert!(a.load(k2, &engine).await.is_ok());
    // B removes an entry A knows: A sees a miss, not an error, and forgets it.
    assert!(b.remove(k1, &engine).unwrap());
    assert!(a.load(k1, &engine).await.unwrap_err().is_not_found());
    assert_eq!(a.residency().entries, 1);
    assert_eq!(a.rescan().unwrap(), 1);

    // Concurrent writers and readers of one key never see a partial entry.
    let (k3, m3, _) = sized(&engine, 200_000, 27);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (engine, m3) = (engine.clone(), m3.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                if i < 4 {
                    cache.save(k3, &engine, &m3).await.unwrap();
                } else {
                    match cache.load(k3, &engine).await {
                        Ok(_) => {}
                        Err(e) => assert!(e.is_not_found(), "{e:?}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(a.load(k3, &engine).await.is_ok());
    let leftovers: Vec<_> = walk(tmp.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn an_entry_larger_than_the_bound_is_refused_clearly() {
    let engine = Engine::default();
    let (key, module, _) = sized(&engine, 20_000, 28);
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path(), 1000);

    let err = cache.save(key, &engine, &module).await.unwrap_err();

    assert!(
        matches!(err, CacheError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("1000-byte limit"), "{err}");
}
