//! The scripted sequence whose exact metric values the metrics and
//! OpenTelemetry tests check: miss, compile, save, hit, explicit removal,
//! promotion, capacity eviction, corrupt entry, recompile.

use std::{fs, time::Duration};

use tierscope::{
    FallbackCache, FileSystemCache, InstrumentExt, Instrumented, MemoryCache, ModuleCache,
    ModuleHash, ModuleLoader, corpus,
};
use wasmer::{Engine, Module};

/// The stack under test: memory (room for one module) over disk.
pub type Stack = FallbackCache<Instrumented<MemoryCache>, Instrumented<FileSystemCache>>;

pub struct Script {
    pub engine: Engine,
    pub wasm_a: Vec<u8>,
    pub wasm_b: Vec<u8>,
    pub a: ModuleHash,
    pub b: ModuleHash,
    /// Serialized artifact sizes of A and B.
    pub w_a: u64,
    pub w_b: u64,
    pub memory: MemoryCache,
    pub disk: FileSystemCache,
    _dir: tempfile::TempDir,
}

impl Script {
    pub fn new() -> Script {
        let engine = Engine::default();
        let wasm_a = corpus::module(6_000, 901);
        let wasm_b = corpus::module(6_000, 902);
        let w = |wasm: &[u8]| {
            Module::new(&engine, wasm)
                .unwrap()
                .serialize()
                .unwrap()
                .len() as u64
        };
        let (w_a, w_b) = (w(&wasm_a), w(&wasm_b));
        let dir = tempfile::tempdir().unwrap();
        Script {
            a: ModuleHash::new(&wasm_a),
            b: ModuleHash::new(&wasm_b),
            memory: MemoryCache::builder(w_a + w_b - 1).shards(1).build(),
            disk: FileSystemCache::open(dir.path(), 1 << 30).unwrap(),
            _dir: dir,
            engine,
            wasm_a,
            wasm_b,
            w_a,
            w_b,
        }
    }

    /// The instrumented stack and its loader, named `cache`. Build it with
    /// the recorder under test installed (handles bind at construction).
    pub fn loader(&self, cache: &str) -> ModuleLoader<Stack> {
        let stack = self
            .memory
            .clone()
            .instrumented(cache, "memory")
            .with_fallback(self.disk.clone().instrumented(cache, "disk"));
        ModuleLoader::new(cache, stack)
    }

    async fn until_in_memory(&self, key: ModuleHash) {
        for _ in 0..400 {
            if self.memory.contains(key, &self.engine).await.unwrap() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the save after a compile never landed");
    }

    /// Play the sequence. Expected totals afterwards:
    /// memory: lookups hit 1, miss 4; saves ok 4; evictions explicit 2
    /// (bytes w_a + w_b), capacity 1 (bytes w_a); read w_a; written
    /// 2 w_a + 2 w_b; 1 entry of w_b bytes.
    /// disk: lookups hit 1, miss 2, error 1 (kind corrupt); saves ok 3;
    /// evictions corrupt 1 (w_b + header); read w_a; written w_a + 2 w_b.
    /// promotions disk -> memory ok 1; compilations ok 3.
    pub async fn play(&self, loader: &ModuleLoader<Stack>) {
        let (engine, memory) = (&self.engine, &self.memory);
        // 1. miss in both tiers, compile, save in both
        loader.load_into(engine, &self.wasm_a).await.unwrap();
        self.until_in_memory(self.a).await;
        // 2. memory hit
        loader.load_into(engine, &self.wasm_a).await.unwrap();
        // 3. explicit removal from memory, then a disk hit promoted to memory
        assert!(memory.remove(self.a, engine));
        loader.load_into(engine, &self.wasm_a).await.unwrap();
        assert!(memory.contains(self.a, engine).await.unwrap());
        // 4. B: miss, compile, save; memory has room for one: A is evicted
        loader.load_into(engine, &self.wasm_b).await.unwrap();
        self.until_in_memory(self.b).await;
        assert!(!memory.contains(self.a, engine).await.unwrap());
        // 5. B corrupt on disk and gone from memory: detected, removed, recompiled
        let path = self.disk.entry_path(self.b, engine);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        fs::write(&path, bytes).unwrap();
        assert!(memory.remove(self.b, engine));
        loader.load_into(engine, &self.wasm_b).await.unwrap();
        self.until_in_memory(self.b).await;
        tierscope::observe::flush();
    }
}
