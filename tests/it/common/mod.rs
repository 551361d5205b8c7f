//! Shared test helpers.
#![allow(dead_code)]

pub mod process_memory;
pub mod rng;
pub mod script;
pub mod snapshot;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use parking_lot::Mutex;
use tierscope::{CacheError, Eviction, ModuleCache, ModuleHash, Residency, TierObserver, corpus};
use wasmer::{Engine, Module};

pub const ADD_WAT: &[u8] = br#"(
    module
        (func
            (export "add")
            (param $x i64)
            (param $y i64)
            (result i64)
            (i64.add (local.get $x) (local.get $y)))
    )"#;

/// A WASI program: `_start` prints "hello from wasix" with `fd_write` and
/// calls `proc_exit(0)`.
pub const WASI_HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasix\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 17))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 0))))"#;

/// A compiled tiny module distinct per seed, with its hash.
pub fn tiny(engine: &Engine, seed: u64) -> (ModuleHash, Module, Vec<u8>) {
    let wasm = corpus::tiny(seed);
    let module = Module::new(engine, &wasm).unwrap();
    (ModuleHash::new(&wasm), module, wasm)
}

/// A compiled module of about `size` bytes of wasm.
pub fn sized(engine: &Engine, size: usize, seed: u64) -> (ModuleHash, Module, Vec<u8>) {
    let wasm = corpus::module(size, seed);
    let module = Module::new(engine, &wasm).unwrap();
    (ModuleHash::new(&wasm), module, wasm)
}

/// Counts successes and failures of loads and saves (the seed's spy).
#[derive(Debug)]
pub struct Spy<I> {
    pub inner: I,
    success: AtomicUsize,
    failures: AtomicUsize,
}

impl<I> Spy<I> {
    pub fn new(inner: I) -> Self {
        Spy {
            inner,
            success: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        }
    }
    pub fn success(&self) -> usize {
        self.success.load(Ordering::SeqCst)
    }
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<I: ModuleCache + Send + Sync> ModuleCache for Spy<I> {
    async fn load(&self, key: ModuleHash, engine: &Engine) -> Result<Module, CacheError> {
        match self.inner.load(key, engine).await {
            Ok(m) => {
                self.success.fetch_add(1, Ordering::SeqCst);
                Ok(m)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    async fn contains(&self, key: ModuleHash, engine: &Engine) -> Result<bool, CacheError> {
        self.inner.contains(key, engine).await
    }

    async fn save(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        match self.inner.save(key, engine, module).await {
            Ok(_) => {
                self.success.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// Records every event a tier reports.
#[derive(Debug, Default)]
pub struct Recording {
    pub evictions: Mutex<Vec<Eviction>>,
    pub residency: Mutex<Vec<Residency>>,
    pub available: Mutex<Vec<bool>>,
}

impl Recording {
    pub fn attach(cache: &impl ModuleCache) -> Arc<Self> {
        let r = Arc::new(Recording::default());
        cache.control(&mut tierscope::Control::AttachObserver(r.clone()));
        r
    }
    pub fn evictions(&self) -> Vec<Eviction> {
        self.evictions.lock().clone()
    }
    pub fn availability(&self) -> Vec<bool> {
        self.available.lock().clone()
    }
    pub fn last_residency(&self) -> Residency {
        *self.residency.lock().last().expect("residency reported")
    }
}

impl TierObserver for Recording {
    fn evicted(&self, eviction: Eviction) {
        self.evictions.lock().push(eviction);
    }
    fn resident(&self, residency: Residency) {
        self.residency.lock().push(residency);
    }
    fn available(&self, available: bool) {
        self.available.lock().push(available);
    }
}

/// Panics so far on any thread of this test binary (a hook installed on
/// first call counts them; the default hook still prints them).
pub fn panics() -> usize {
    static COUNT: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicUsize::new(0));
            let seen = count.clone();
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                seen.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }));
            count
        })
        .load(Ordering::SeqCst)
}

/// Set in a process that [`in_own_process`] started, to the test it runs.
const OWN_PROCESS_ENV: &str = "TIERSCOPE_TEST_OWN_PROCESS";

/// Run the test named `test` (its full path in this binary, e.g.
/// `engine_churn::resident_memory_levels_off`) again in a process of its own,
/// for a test that measures the process itself (resident memory): the other
/// tests of this binary run in threads beside it. Returns true in that
/// process, where the caller does its work; in the caller's process it waits
/// for the child, fails if the child failed, and returns false.
pub fn in_own_process(test: &str) -> bool {
    if std::env::var(OWN_PROCESS_ENV).as_deref() == Ok(test) {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS_ENV, test)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{test} failed in its own process: {status}"
    );
    false
}

/// A disk tier in `dir` bounded to `capacity`, whose cleaner removes
/// abandoned temporary files at once (no grace period).
pub fn open_disk(dir: &std::path::Path, capacity: u64) -> tierscope::FileSystemCache {
    tierscope::FileSystemCache::builder(dir)
        .capacity(capacity)
        .temp_grace(std::time::Duration::ZERO)
        .build()
        .unwrap()
}

/// Every file under `dir`, recursively (the directory's lock file
/// included).
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether this process runs as root (its files are owned by uid 0).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::metadata(tmp.path()).unwrap().uid() == 0
}

/// The unprivileged user permission tests run as when the suite runs as
/// root (as CI does): created by [`as_unprivileged`] if missing.
pub const TEST_USER: &str = "tierscope-test";

/// Run the test named `test` (its full path in this binary) as an
/// unprivileged user, for tests of what a same-user process without root
/// can do: as root, again in a child process of this binary whose uid and
/// gid are [`TEST_USER`]'s (the user is created with `useradd` if missing);
/// as any other user, here. Returns true where the caller does its work;
/// in a root caller it waits for the child, fails if the child failed, and
/// returns false.
pub fn as_unprivileged(test: &str) -> bool {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        return true;
    }
    assert!(
        std::env::var(OWN_PROCESS_ENV).as_deref() != Ok(test),
        "{test}: still root after dropping to {TEST_USER}"
    );
    let (uid, gid) = test_user();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS_ENV, test)
        .env("HOME", std::env::temp_dir())
        .uid(uid)
        .gid(gid)
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed as {TEST_USER}: {status}");
    false
}

/// [`TEST_USER`]'s uid and gid, creating the user (no home, no login
/// shell) if it does not exist yet.
fn test_user() -> (u32, u32) {
    let lookup = || {
        let out = std::process::Command::new("getent")
            .args(["passwd", TEST_USER])
            .output()
            .expect("getent runs");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<&str> = line.trim().split(':').collect();
        (fields.len() > 3).then(|| (fields[2].parse().unwrap(), fields[3].parse().unwrap()))
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .output()
        .expect("useradd runs");
    // Another test may have created it meanwhile.
    lookup().unwrap_or_else(|| {
        panic!(
            "cannot create the user {TEST_USER}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Flip one byte of `path` in place, at `at` (the file must be writable by
/// this process: root, or a mode that allows it).
pub fn flip(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
}

/// Wait until a disk entry written (or changed) now is settled: old enough
/// for the disk tier to remember its verified mapping or record it.
pub async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
}
