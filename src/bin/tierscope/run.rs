//! `tierscope run FILE.wasm [-- ARGS]`: run a WASI program through a
//! wasmer-wasix runtime whose module cache is an instrumented memory ->
//! disk (-> Redis) stack in the user's cache directory. A second run of the
//! same file is a disk hit, not a compile (`--verbose` says which tier
//! served it).

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use clap::Args;
use tierscope::{
    FileSystemCache, InstrumentExt, MemoryCache, ModuleCache,
    observe::prometheus,
    wasix::{LoadEvent, WasixCache, runtime_with_engine},
};
use wasmer::Engine;
use wasmer_wasix::{
    Pipe, WasiRuntimeError,
    runners::wasi::{RuntimeOrEngine, WasiRunner},
    runtime::{Runtime, module_cache::HashedModuleData},
};

use crate::{demo::Failure, size};

/// The `cache` label of every metric `run` records.
const CACHE: &str = "run";

/// The exit code wasix gives a program that trapped or failed to start
/// (WASI `ENOEXEC`), after printing the error on stderr.
const NOEXEC: i32 = 45;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The WASI program: a `.wasm` binary (or WebAssembly text).
    file: PathBuf,
    /// Arguments for the program, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
    /// Directory of the disk tier (default: $XDG_CACHE_HOME/tierscope, or
    /// ~/.cache/tierscope).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Bound of the memory tier (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = size::parse)]
    memory_bytes: u64,
    /// Bound of the disk tier (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = size::parse)]
    disk_bytes: u64,
    /// Serve Prometheus metrics (`/metrics`) on this address while the
    /// program runs.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Add a shared Redis tier below the disk tier (needs the `redis`
    /// feature; MAC key in TIERSCOPE_REDIS_KEY).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Add a shared object-store tier at the bottom of the stack (needs the
    /// `objects` feature): s3://bucket/prefix, gs://.., az://.., file:///dir;
    /// credentials from the environment, MAC key in TIERSCOPE_OBJECTS_KEY.
    #[arg(long, value_name = "URL")]
    objects: Option<String>,
    /// Say on stderr which tier served the module (or that it was compiled).
    #[arg(short, long)]
    verbose: bool,
}

/// The user's cache directory for tierscope.
fn default_cache_dir() -> Option<PathBuf> {
    let nonempty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(nonempty) {
        return Some(xdg.join("tierscope"));
    }
    std::env::var_os("HOME")
        .and_then(nonempty)
        .map(|home| home.join(".cache").join("tierscope"))
}

fn read_program(path: &Path) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let wasm = if bytes.starts_with(b"\0asm") {
        bytes
    } else {
        wat::parse_bytes(&bytes)
            .map(|w| w.into_owned())
            .map_err(|e| {
                Failure::Usage(format!(
                    "{} is not a WebAssembly module (neither binary nor text): {e}",
                    path.display()
                ))
            })?
    };
    wasmer::Module::validate(&Engine::default(), &wasm).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a valid WebAssembly module: {e}",
            path.display()
        ))
    })?;
    Ok(wasm)
}

/// Run the program; the result is the process exit code.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    #[cfg(not(feature = "redis"))]
    if args.redis.is_some() {
        return Err(Failure::Usage(
            "--redis needs a build with the `redis` feature: cargo run --features cli,wasix,redis -- run --redis URL FILE".into(),
        ));
    }
    #[cfg(not(feature = "objects"))]
    if args.objects.is_some() {
        return Err(Failure::Usage(
            "--objects needs a build with the `objects` feature: cargo run --features cli,wasix,objects -- run --objects URL FILE".into(),
        ));
    }
    let wasm = read_program(&args.file)?;
    let dir = match args.cache_dir.clone().or_else(default_cache_dir) {
        Some(dir) => dir,
        None => {
            return Err(Failure::Usage(
                "no cache directory: set --cache-dir (neither XDG_CACHE_HOME nor HOME is set)"
                    .into(),
            ));
        }
    };
    // Export first: tiers register their metric handles when built.
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let exporter = prometheus::serve(addr)
                .map_err(|e| Failure::Runtime(format!("cannot serve metrics on {addr}: {e}")))?;
            eprintln!(
                "tierscope: metrics at http://{}/metrics",
                exporter.local_addr().unwrap_or(addr)
            );
            Some(exporter)
        }
        None => None,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    let _context = tokio.enter();

    let memory = MemoryCache::new(args.memory_bytes).instrumented(CACHE, "memory");
    let disk = FileSystemCache::open(&dir, args.disk_bytes)
        .map_err(|e| Failure::Runtime(format!("cannot open the disk tier: {e}")))?
        .instrumented(CACHE, "disk");
    let lower: Arc<dyn ModuleCache + Send + Sync> = match &args.redis {
        None => Arc::new(disk),
        #[cfg(feature = "redis")]
        Some(url) => {
            Arc::new(disk.with_fallback(tokio.block_on(crate::demo::redis_tier(url, CACHE))?))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => return Err(Failure::Usage("--redis needs the `redis` feature".into())),
    };
    let lower: Arc<dyn ModuleCache + Send + Sync> = match &args.objects {
        None => lower,
        #[cfg(feature = "objects")]
        Some(url) => Arc::new(lower.with_fallback(crate::demo::objects_tier(url, CACHE)?)),
        #[cfg(not(feature = "objects"))]
        Some(_) => {
            return Err(Failure::Usage(
                "--objects needs the `objects` feature".into(),
            ));
        }
    };
    let mut cache = WasixCache::new(CACHE, memory.with_fallback(lower));
    if args.verbose {
        cache = cache.on_load(|key, event| match event {
            LoadEvent::Hit { tier } => eprintln!(
                "tierscope: module {key} served by the {} tier",
                tier.map_or("unnamed", |t| t.as_str())
            ),
            LoadEvent::Miss => eprintln!("tierscope: module {key} not cached; compiling"),
            LoadEvent::Error { kind, message } => {
                eprintln!("tierscope: module {key}: tier error ({kind}): {message}; compiling")
            }
            LoadEvent::Compiled => eprintln!("tierscope: module {key} compiled and saved"),
            _ => {}
        });
    }
    let runtime = Arc::new(runtime_with_engine(
        tokio.handle().clone(),
        Engine::default(),
        cache,
    ));

    let data = HashedModuleData::new(wasm);
    let hash = *data.hash();
    let module = runtime
        .load_hashed_module_sync(data, None)
        .map_err(|e| Failure::Usage(format!("cannot compile {}: {e}", args.file.display())))?;

    let name = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    let (stdout, stdout_rx) = Pipe::channel();
    let (stderr, stderr_rx) = Pipe::channel();
    let done = Arc::new(AtomicBool::new(false));
    let pumps = [
        pump(stdout_rx, done.clone(), || Box::new(std::io::stdout())),
        pump(stderr_rx, done.clone(), || Box::new(std::io::stderr())),
    ];
    let mut runner = WasiRunner::new();
    runner
        .with_args(args.args.iter().cloned())
        .with_stdout(Box::new(stdout))
        .with_stderr(Box::new(stderr));
    let result = runner.run_wasm(RuntimeOrEngine::Runtime(runtime), &name, module, hash);
    drop(runner);
    done.store(true, Ordering::Release);
    for p in pumps {
        let _ = p.join();
    }
    tierscope::observe::flush();

    match result {
        Ok(()) => Ok(0),
        Err(error) => {
            let code = error
                .chain()
                .find_map(|e| e.downcast_ref::<WasiRuntimeError>())
                .and_then(WasiRuntimeError::as_exit_code);
            match code {
                // The program's own exit code, passed through.
                Some(code) => {
                    if code.raw() == NOEXEC {
                        // wasix turns a trap (printed above) into ENOEXEC.
                        eprintln!(
                            "error: {} stopped with exit code {NOEXEC}: it trapped or could not start (see above)",
                            args.file.display()
                        );
                    }
                    Ok(u8::try_from(code.raw())
                        .ok()
                        .filter(|c| *c != 0)
                        .unwrap_or(1))
                }
                None => Err(Failure::Runtime(format!(
                    "{} failed: {error:#}",
                    args.file.display()
                ))),
            }
        }
    }
}

/// Copy what the program writes to `rx` into our own stream, until the
/// program is done and everything it wrote is out.
fn pump(
    mut rx: Pipe,
    done: Arc<AtomicBool>,
    out: fn() -> Box<dyn Write + Send>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut out = out();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let finished = done.load(Ordering::Acquire);
            match rx.try_read(&mut buf) {
                Some(0) => break,
                Some(n) => {
                    if out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    continue;
                }
                None if finished => break,
                None => {
                    let _ = out.flush();
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        let _ = out.flush();
    })
}
