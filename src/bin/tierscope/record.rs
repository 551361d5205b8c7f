//! `tierscope demo --record FILE`: the demo's request stream as a
//! tierscope trace, for `tierscope size`.

use std::{collections::HashMap, fs::File, io::BufWriter, path::Path, sync::Arc, time::Instant};

use parking_lot::Mutex;
use tierscope::{
    LoadError, LoadedModule, ModuleCache, ModuleHash, ModuleLoader,
    sizing::{Request, ServedBy, object_id, trace::TierscopeWriter},
};
use wasmer::{Engine, Module};

/// Writes one line per request: which tier served it, the artifact size,
/// and on a compile the time the load took (the compile, mostly).
pub struct Recorder {
    out: Mutex<Option<TierscopeWriter<BufWriter<File>>>>,
    sizes: Mutex<HashMap<ModuleHash, u64>>,
    started: Instant,
    count: std::sync::atomic::AtomicU64,
}

impl Recorder {
    pub fn create(path: &Path) -> Result<Self, String> {
        let file = File::create(path).map_err(|e| format!("--record {}: {e}", path.display()))?;
        let w = TierscopeWriter::new(BufWriter::new(file))
            .map_err(|e| format!("--record {}: {e}", path.display()))?;
        Ok(Recorder {
            out: Mutex::new(Some(w)),
            sizes: Mutex::new(HashMap::new()),
            started: Instant::now(),
            count: Default::default(),
        })
    }

    /// Load through `loader` as the demo does, and record the request.
    pub async fn load<C: ModuleCache + Send + Sync + 'static>(
        &self,
        loader: &ModuleLoader<C>,
        lower: &Arc<dyn ModuleCache + Send + Sync>,
        key: ModuleHash,
        wasm: &[u8],
    ) -> Result<LoadedModule, LoadError> {
        let time_us = self.started.elapsed().as_micros() as u64;
        if let Some(module) = loader.load_now(key) {
            self.write(
                module.engine(),
                key,
                &module,
                time_us,
                ServedBy::Memory,
                None,
            );
            return Ok(module);
        }
        let engine = &loader.engine();
        // Racy under concurrency (another task may save meanwhile), which
        // only moves a request between `disk` and `compile`.
        let below = matches!(lower.contains(key, engine).await, Ok(true));
        let t = Instant::now();
        let module = loader.load_with_hash(key, wasm).await?;
        let (served, compile) = if below {
            (ServedBy::Disk, None)
        } else {
            (ServedBy::Compile, Some(t.elapsed().as_micros() as u64))
        };
        self.write(module.engine(), key, &module, time_us, served, compile);
        Ok(module)
    }

    fn write(
        &self,
        engine: &Engine,
        key: ModuleHash,
        module: &Module,
        time_us: u64,
        served: ServedBy,
        compile_us: Option<u64>,
    ) {
        let bytes = {
            let known = self.sizes.lock().get(&key).copied();
            match known
                .or_else(|| tierscope::weights::lookup(key, tierscope::engine::engine_key(engine)))
            {
                Some(b) => b,
                // Once per module at most, and only when recording.
                None => module.serialize().map_or(0, |b| b.len() as u64),
            }
        };
        self.sizes.lock().insert(key, bytes);
        let req = Request {
            time_us,
            key: object_id(&key, engine),
            bytes,
            compile_us,
            served: Some(served),
        };
        let mut out = self.out.lock();
        if let Some(w) = out.as_mut()
            && let Err(e) = w.write(&req)
        {
            eprintln!("--record: {e}; recording stopped");
            *out = None;
        }
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Flush; the number of requests recorded.
    pub fn finish(&self) -> Result<u64, String> {
        if let Some(w) = self.out.lock().take() {
            w.finish().map_err(|e| format!("--record: {e}"))?;
        }
        Ok(self.count.load(std::sync::atomic::Ordering::Relaxed))
    }
}
