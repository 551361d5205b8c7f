//! A writer process killed (SIGKILL) in the middle of saves never leaves a
//! visible partial entry, and its temporary files are cleaned up.
//!
//! The test re-runs this test binary as the child (the test
//! `killed_writer::child_writer`, with `TIERSCOPE_CHILD_DIR` set), which saves
//! a large module under fresh keys forever until killed; without that
//! variable the child test returns at once.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tierscope::{FileSystemCache, ModuleCache, ModuleHash, corpus, engine::ident_of, entry};
use wasmer::{Engine, Module};

const CHILD_ENV: &str = "TIERSCOPE_CHILD_DIR";
const ARTIFACT_ENV: &str = "TIERSCOPE_CHILD_ARTIFACT";

const CHILD_TEST: &str = "killed_writer::child_writer";

/// The child's side: saves forever when run by the parent, returns at once
/// otherwise.
#[test]
fn child_writer() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(PathBuf::from(dir));
    }
}

fn child(dir: PathBuf) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::default();
    let artifact = std::env::var_os(ARTIFACT_ENV).expect("artifact path");
    // SAFETY: the parent serialized this artifact with the same wasmer and
    // engine configuration moments ago.
    #[allow(unsafe_code)]
    let module = unsafe { Module::deserialize_from_file(&engine, artifact) }.unwrap();
    let cache = FileSystemCache::builder(&dir)
        .inline_io(true)
        .build()
        .unwrap();
    println!("ready");
    let mut n: u64 = 0;
    rt.block_on(async {
        loop {
            n += 1;
            let key = ModuleHash::new(n.to_le_bytes());
            cache.save(key, &engine, &module).await.unwrap();
        }
    });
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect()
}

/// Entry and temporary files under `dir` (not the tier's lock file).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut all = crate::common::walk(dir);
    all.retain(|p| p.file_name().is_some_and(|n| n != ".tierscope-lock"));
    all
}

#[test]
fn a_writer_killed_mid_save_leaves_no_visible_partial_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let exe = std::env::current_exe().unwrap();
    let engine = Engine::default();
    // A module whose entry takes milliseconds to write, compiled once.
    let artifact = tmp.path().join("artifact.bin");
    Module::new(&engine, corpus::module(2_000_000, 7))
        .unwrap()
        .serialize_to_file(&artifact)
        .unwrap();
    let ident = ident_of(&engine);
    let mut rounds_with_partial = 0;
    let mut rounds = 0;
    let started = Instant::now();
    let mut seed = 0x1234_5678_u64;
    while rounds_with_partial < 3 || files(&dir).len() == temp_files(&dir).len() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no kill landed mid-write in {rounds} rounds"
        );
        rounds += 1;
        let mut child = Command::new(&exe)
            .args([
                CHILD_TEST,
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(CHILD_ENV, &dir)
            .env(ARTIFACT_ENV, &artifact)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Wait for "ready", then let it write for a pseudo-random while.
        // (libtest prints its own lines first.)
        use std::io::BufRead;
        let ready = std::io::BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|line| line.trim() == "ready");
        assert!(ready, "the child writer never got ready");
        // Odd rounds: kill the moment a write is seen in progress. Even
        // rounds: kill at a pseudo-random moment.
        if rounds % 2 == 1 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while temp_files(&dir).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        } else {
            // Let at least one entry complete, then kill at a random moment.
            let deadline = Instant::now() + Duration::from_secs(30);
            while files(&dir).len() == temp_files(&dir).len() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(5 + seed % 100));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !temp_files(&dir).is_empty() {
            rounds_with_partial += 1;
        }
        // Every visible entry is whole: its header and checksum verify.
        for path in files(&dir) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                continue;
            }
            let hex = name
                .strip_suffix(".bin")
                .expect("only entries and temp files");
            let mut raw = [0u8; 32];
            hex::decode_to_slice(hex, &mut raw).unwrap();
            let data = fs::read(&path).unwrap();
            entry::decode(&data, &ModuleHash::from_bytes(raw), &ident)
                .unwrap_or_else(|e| panic!("{name} is visible but not whole: {e}"));
        }
    }
    // Reopening removes what the killed writers left behind, and every entry loads.
    let cache = FileSystemCache::builder(&dir)
        .temp_grace(Duration::ZERO)
        .build()
        .unwrap();
    assert!(temp_files(&dir).is_empty(), "temp files survived a reopen");
    let entries = files(&dir);
    assert!(!entries.is_empty());
    let rt = tokio::runtime::Runtime::new().unwrap();
    for path in entries.iter().take(5) {
        let hex = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut raw = [0u8; 32];
        hex::decode_to_slice(&hex, &mut raw).unwrap();
        rt.block_on(cache.load(ModuleHash::from_bytes(raw), &engine))
            .expect("a whole entry loads");
    }
    println!(
        "killed_writer: ok ({rounds} kills, {rounds_with_partial} mid-write, {} entries)",
        entries.len()
    );
}
