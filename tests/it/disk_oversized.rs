//! A huge file at an entry path is refused from its length and header,
//! before anything is allocated for it: peak memory stays flat.
//!
//! One test, cases in sequence, in a process of its own: the peak resident
//! set size (`VmHWM`) is per process, so concurrent tests would blur it.

use crate::common;

use std::{fs, io::Write, path::Path, time::Duration};

use common::{in_own_process, process_memory, tiny};
use tierscope::{
    CacheError, Corruption, FileSystemCache, ModuleCache, ModuleHash, engine::ident_of, entry,
};
use wasmer::Engine;

/// Put a 1 GiB sparse file at `path`, starting with `header`.
fn sparse_entry(path: &Path, header: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(header).unwrap();
    f.set_len(1 << 30).unwrap();
}

async fn oversized_case(
    capacity: u64,
    header: impl Fn(ModuleHash, &Engine) -> Vec<u8>,
) -> Corruption {
    let engine = Engine::default();
    let (key, module, _) = tiny(&engine, 903);
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileSystemCache::builder(tmp.path())
        .capacity(capacity)
        .temp_grace(Duration::ZERO)
        .build()
        .unwrap();
    cache.save(key, &engine, &module).await.unwrap();
    let path = cache.entry_path(key, &engine);
    sparse_entry(&path, &header(key, &engine));
    let before = process_memory::reset_peak_rss_bytes();

    let err = cache.load(key, &engine).await.unwrap_err();

    let grew = process_memory::peak_rss_bytes().saturating_sub(before);
    eprintln!("capacity {capacity}: peak RSS grew by {} KiB", grew >> 10);
    assert!(grew < 200 << 20, "peak RSS grew by {} KiB", grew >> 10);
    assert!(!path.exists(), "an oversized entry is removed");
    match err {
        CacheError::Corrupt { reason, .. } => reason,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A header that claims exactly the file's 1 GiB.
fn claims_one_gib(key: ModuleHash, engine: &Engine) -> Vec<u8> {
    let ident = ident_of(engine);
    let mut h = entry::encode_header(&key, &ident, b"").to_vec();
    h[16..24].copy_from_slice(&((1u64 << 30) - entry::HEADER_LEN as u64).to_le_bytes());
    h
}

#[tokio::test]
async fn a_huge_file_at_an_entry_path_is_refused_before_it_is_read() {
    if !in_own_process("disk_oversized::a_huge_file_at_an_entry_path_is_refused_before_it_is_read")
    {
        return;
    }
    // Above the tier's bound (64 MiB), though its header claims its length.
    let reason = oversized_case(64 << 20, claims_one_gib).await;
    assert!(
        matches!(
            reason,
            Corruption::Oversized {
                actual: 1073741824,
                limit: 67108864
            }
        ),
        "{reason:?}"
    );
    // Within the bound (4 GiB, entries up to 1 GiB), but the header
    // announces 100 bytes.
    let reason = oversized_case(4 << 30, |key, engine| {
        entry::encode_header(&key, &ident_of(engine), &[0u8; 100]).to_vec()
    })
    .await;
    assert!(
        matches!(
            reason,
            Corruption::TrailingBytes {
                actual: 1073741824,
                expected: 228
            }
        ),
        "{reason:?}"
    );
    // Zeros: no magic, found from the first 128 bytes.
    let reason = oversized_case(4 << 30, |_, _| vec![0u8; 8]).await;
    assert_eq!(reason, Corruption::BadMagic);
}
