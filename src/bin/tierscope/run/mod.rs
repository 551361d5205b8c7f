//! `tierscope run FILE.wasm [ARGS]`: run a WASI program as `wasmer run` or
//! `wasmtime run` would, through a wasmer-wasix runtime whose module cache
//! is an instrumented memory -> disk (-> Redis -> object store) stack in
//! the user's cache directory. The second run of the same file is a disk
//! hit, not a compile (`--verbose` says which tier served it).
//!
//! - [`check`]: imports and exports, read before anything is compiled;
//! - [`dirs`]: `--dir` / `--mapdir`, and what the program left in memory;
//! - [`stdio`]: the process's own stdin, stdout and stderr, bounded, and
//!   the broken pipe;
//! - [`invoke`]: `--invoke FUNCTION`.

mod check;
mod dirs;
mod invoke;
mod stdio;
mod taint;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use parking_lot::Mutex;
use tierscope::{
    FileSystemCache, InstrumentExt, MemoryCache, ModuleCache,
    observe::prometheus,
    wasix::{LoadEvent, WasixCache, runtime_with_engine},
};
use wasmer::{Engine, Store};
use wasmer_wasix::{
    Runtime, WasiRuntimeError,
    bin_factory::spawn_exec_module,
    runners::wasi::{PackageOrHash, RuntimeOrEngine, WasiRunner},
    runtime::{module_cache::HashedModuleData, task_manager::VirtualTaskManagerExt},
};

use crate::{bytes, common::Failure};

/// The `cache` label of every metric `run` records.
const CACHE: &str = "run";

/// The exit code of a program that trapped: 128 + SIGABRT, what a shell
/// reports for a native program that aborted (and what `wasmtime run`
/// exits with on a trap).
const TRAPPED: u8 = 134;

pub const EXAMPLES: &str = "\
Examples:
  echo hello | tierscope run cat.wasm
  tierscope run --dir . yosys.wasm -p 'read_verilog counter.v; synth_ice40 -json out.json'
  tierscope run --env LANG=C --invoke add lib.wasm 2 3";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    /// The WASI program (a `.wasm` binary, or WebAssembly text), then its
    /// arguments. tierscope's options go before FILE; everything after it
    /// is the program's, `-h` included (a `--` before it is optional).
    #[arg(
        value_names = ["FILE", "ARGS"],
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    program: Vec<String>,
    /// Give the program a host directory. Its root (/) stands for the
    /// current directory: `--dir .` makes the current directory its root
    /// (files it writes land there), `--dir data` puts ./data at /data,
    /// `--dir data::/in` at /in. Repeatable. Without any, the program has
    /// only an in-memory file system, and `run` lists what it left there.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Give the program a host directory at GUEST (wasmer's spelling of
    /// `--dir HOST::GUEST`). Repeatable.
    #[arg(long = "mapdir", value_name = "GUEST:HOST")]
    mapdirs: Vec<String>,
    /// Set an environment variable for the program. Repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    envs: Vec<String>,
    /// Pass tierscope's own environment variables to the program (`--env`
    /// overrides them).
    #[arg(long)]
    forward_host_env: bool,
    /// Call this exported function instead of `_start` (after
    /// `_initialize`, if exported): the arguments after FILE are its
    /// parameters (numbers), and its results are printed, one per line.
    #[arg(long, value_name = "FUNCTION")]
    invoke: Option<String>,
    /// Directory of the disk tier (default: $XDG_CACHE_HOME/tierscope, or
    /// ~/.cache/tierscope).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Bound of the memory tier.
    #[arg(long, default_value = "64MiB", value_parser = bytes::parse)]
    memory_bytes: u64,
    /// Bound of the disk tier (a module whose compiled form is larger is
    /// not saved, and `run` says so).
    #[arg(long, default_value = "1GiB", value_parser = bytes::parse)]
    disk_bytes: u64,
    /// Serve Prometheus metrics (`/metrics`) on this address while the
    /// program runs (port 0: any free port; the address is printed).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// With --metrics-addr: keep serving /metrics this long after the
    /// program ends, e.g. 30s or 5m (Ctrl-C stops early).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, requires = "metrics_addr")]
    linger: Option<Duration>,
    /// Add a shared Redis tier below the disk tier (MAC key in
    /// TIERSCOPE_REDIS_KEY, 64 hex digits).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Add a shared object-store tier at the bottom of the stack:
    /// s3://bucket/prefix, gs://.., az://.., file:///dir; credentials from
    /// the environment, MAC key in TIERSCOPE_OBJECTS_KEY.
    #[arg(long, value_name = "URL")]
    objects: Option<String>,
    /// Say on stderr which tier served the module, or how long its compile
    /// took and whether it was saved.
    #[arg(short, long)]
    verbose: bool,
}

impl RunArgs {
    /// The program's file.
    fn file(&self) -> PathBuf {
        PathBuf::from(&self.program[0])
    }
}

fn read_program(path: &Path) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    wat::parse_bytes(&bytes)
        .map(|w| w.into_owned())
        .map_err(|e| {
            Failure::Usage(format!(
                "{} is not a WebAssembly module (neither binary nor text): {e}",
                path.display()
            ))
        })
}

/// What the cache told about the program's module, kept for one summary.
#[derive(Default)]
struct Told {
    served_by: Option<String>,
    tier_errors: Vec<String>,
    compiled: bool,
    save_failures: Vec<String>,
}

/// Run the program; the result is the process exit code.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    // Everything that can be checked is checked before anything slow.
    #[cfg(not(feature = "redis"))]
    if args.redis.is_some() {
        return Err(Failure::Usage(
            "--redis: this tierscope was built without Redis support".into(),
        ));
    }
    #[cfg(not(feature = "objects"))]
    if args.objects.is_some() {
        return Err(Failure::Usage(
            "--objects: this tierscope was built without object-store support".into(),
        ));
    }
    let wasm = read_program(&args.file())?;
    let shape = check::Shape::read(&wasm).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a valid WebAssembly module: {e}",
            args.file().display()
        ))
    })?;
    let rest = &args.program[1..];
    let program_args: Vec<String> = match rest.first() {
        Some(first) if first == "--" => rest[1..].to_vec(),
        _ => rest.to_vec(),
    };
    if let Some(why) = shape.refusal(args.invoke.as_deref(), program_args.len()) {
        return Err(Failure::Usage(format!(
            "{} cannot run: {why}",
            args.file().display()
        )));
    }
    let invoke_args = match &args.invoke {
        Some(name) => {
            let sig = shape
                .signature(name)
                .ok_or_else(|| Failure::Usage(format!("--invoke {name}: no such function")))?;
            Some(invoke::parse_args(name, sig, &program_args).map_err(Failure::Usage)?)
        }
        None => None,
    };
    let mut mappings = Vec::new();
    for d in &args.dirs {
        mappings.push(dirs::parse_dir(d).map_err(Failure::Usage)?);
    }
    for d in &args.mapdirs {
        mappings.push(dirs::parse_mapdir(d).map_err(Failure::Usage)?);
    }
    let mut envs = Vec::new();
    for e in &args.envs {
        match e.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                envs.push((name.to_string(), value.to_string()))
            }
            _ => {
                return Err(Failure::Usage(format!(
                    "--env {e}: expected NAME=VALUE, e.g. --env LANG=C"
                )));
            }
        }
    }
    let dir = crate::cache::cache_dir(args.cache_dir.as_deref())?;
    crate::common::usable_cache_dir(&dir)?;

    // Export first: tiers register their metric handles when built.
    let exporter = match args.metrics_addr {
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
    let code = {
        let _context = tokio.enter();
        let result = run_in(
            &args,
            &tokio,
            wasm,
            invoke_args,
            program_args,
            mappings,
            envs,
            &dir,
        );
        tierscope::observe::flush();
        result
    };
    if let (Some(linger), Some(exporter)) = (args.linger, &exporter) {
        if let Some(addr) = exporter.local_addr() {
            eprintln!(
                "tierscope: serving http://{addr}/metrics for {} more (Ctrl-C to stop)",
                humantime::format_duration(linger)
            );
        }
        tokio.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
    }
    // A read of the terminal the program left pending cannot be cancelled:
    // do not wait for it.
    tokio.shutdown_background();
    code
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    args: &RunArgs,
    tokio: &tokio::runtime::Runtime,
    wasm: Vec<u8>,
    invoke_args: Option<Vec<wasmer::Value>>,
    program_args: Vec<String>,
    mappings: Vec<dirs::Mapping>,
    envs: Vec<(String, String)>,
    dir: &Path,
) -> Result<u8, Failure> {
    let layout = dirs::layout(&mappings).map_err(Failure::Usage)?;
    let memory = MemoryCache::new(args.memory_bytes).instrumented(CACHE, "memory");
    let disk = FileSystemCache::open(dir, args.disk_bytes)
        .map_err(|e| Failure::Usage(format!("--cache-dir {}: {e}", dir.display())))?
        .instrumented(CACHE, "disk");
    let lower: Arc<dyn ModuleCache + Send + Sync> = match &args.redis {
        None => Arc::new(disk),
        #[cfg(feature = "redis")]
        Some(url) => {
            Arc::new(disk.with_fallback(tokio.block_on(crate::common::redis_tier(url, CACHE))?))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => unreachable!("refused above"),
    };
    let lower: Arc<dyn ModuleCache + Send + Sync> = match &args.objects {
        None => lower,
        #[cfg(feature = "objects")]
        Some(url) => Arc::new(lower.with_fallback(crate::common::objects_tier(url, CACHE)?)),
        #[cfg(not(feature = "objects"))]
        Some(_) => unreachable!("refused above"),
    };

    let told = Arc::new(Mutex::new(Told::default()));
    let spinner = Arc::new(Mutex::new(None::<indicatif::ProgressBar>));
    let file_name = args.file().display().to_string();
    let wasm_len = wasm.len();
    let cache = {
        let told = told.clone();
        let spinner = spinner.clone();
        let verbose = args.verbose;
        WasixCache::new(CACHE, memory.with_fallback(lower)).on_load(move |_key, event| {
            let mut t = told.lock();
            match event {
                LoadEvent::Hit { tier } => {
                    t.served_by = Some(tier.map_or("unnamed", |t| t.as_str()).to_string());
                }
                LoadEvent::Miss | LoadEvent::Error { .. } => {
                    if let LoadEvent::Error { kind, message } = event {
                        t.tier_errors.push(format!("{message} ({kind})"));
                        if verbose {
                            eprintln!(
                                "tierscope: {file_name}: the cache could not serve it ({kind}); compiling"
                            );
                        }
                    } else if verbose {
                        eprintln!("tierscope: {file_name} not cached; compiling");
                    }
                    *spinner.lock() = compiling_spinner(&file_name, wasm_len);
                }
                LoadEvent::Compiled => t.compiled = true,
                LoadEvent::SaveFailed { message, .. } => t.save_failures.push(message.clone()),
                _ => {}
            }
        })
    };
    let engine = Engine::default();
    let watched = Arc::new(taint::Watched::new(Arc::new(runtime_with_engine(
        tokio.handle().clone(),
        engine.clone(),
        cache,
    ))));
    let runtime: Arc<dyn Runtime + Send + Sync> = watched.clone();

    let data = HashedModuleData::new(wasm);
    let hash = *data.hash();
    let started = Instant::now();
    let loaded = runtime.load_hashed_module_sync(data, None);
    if let Some(pb) = spinner.lock().take() {
        pb.finish_and_clear();
    }
    let module = loaded.map_err(|e| {
        Failure::Usage(format!(
            "{} is not a valid WebAssembly module: {e}",
            args.file().display()
        ))
    })?;
    report_load(args, &told.lock(), started.elapsed(), &hash);

    // The program's world: arguments, environment, directories, stdio.
    let name = args
        .file()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    let broken = Arc::new(stdio::BrokenPipe::default());
    let mut runner = WasiRunner::new();
    runner
        .with_args(if invoke_args.is_some() {
            Vec::new()
        } else {
            program_args
        })
        .with_envs(envs)
        .with_forward_host_env(args.forward_host_env)
        .with_stdin(stdio::stdin())
        .with_stdout(stdio::stdout(&broken))
        .with_stderr(stdio::stderr(&broken));
    for (guest, fs) in &layout.mounts {
        runner.with_mount(guest.clone(), fs.clone());
    }
    let annotation = webc::metadata::annotations::Wasi::new(&name);
    let builder = runner
        .prepare_webc_env(
            &name,
            &annotation,
            PackageOrHash::Hash(hash),
            RuntimeOrEngine::Runtime(runtime.clone()),
            Some(layout.root.clone()),
        )
        .map_err(|e| {
            Failure::Runtime(format!("cannot prepare the program's environment: {e:#}"))
        })?;

    let code = match (&args.invoke, invoke_args) {
        (Some(function), Some(values)) => {
            let mut store = Store::new(engine);
            match invoke::call(builder, module, hash, &mut store, function, &values) {
                invoke::Outcome::Returned(results) => {
                    for v in &results {
                        println!("{}", invoke::show(v));
                    }
                    0
                }
                invoke::Outcome::Exited(code) => exit_code(code),
                invoke::Outcome::Failed(message) => {
                    eprintln!(
                        "error: {} trapped in `{function}`: {message}",
                        args.file().display()
                    );
                    TRAPPED
                }
            }
        }
        _ => {
            let env = builder.build().map_err(|e| {
                Failure::Runtime(format!("cannot start {}: {e}", args.file().display()))
            })?;
            broken.attach(env.process.clone());
            let mut handle = spawn_exec_module(module, env, &runtime).map_err(|e| {
                Failure::Runtime(format!("cannot start {}: {e}", args.file().display()))
            })?;
            let finished = runtime
                .task_manager()
                .spawn_and_block_on(async move { handle.wait_finished().await })
                .map_err(|e| Failure::Runtime(format!("{} failed: {e}", args.file().display())))?;
            match (finished, watched.trap()) {
                // wasix printed the trap with its backtrace already, and
                // made it exit code 45 (ENOEXEC).
                (_, Some(trap)) => {
                    eprintln!(
                        "error: {} trapped: {trap} (exit code {TRAPPED})",
                        args.file().display()
                    );
                    TRAPPED
                }
                (Ok(code), None) => exit_code(code.raw()),
                (Err(error), None) => match error.as_exit_code() {
                    Some(code) => exit_code(code.raw()),
                    None => failed(&args.file(), &error),
                },
            }
        }
    };
    let code = if broken.seen() {
        stdio::BROKEN_PIPE_EXIT
    } else {
        code
    };
    report_leftovers(&layout, !mappings.is_empty());
    Ok(code)
}

/// A program's exit code as this process's (a code that does not fit in
/// 0..=255 is reported as 1, never as success).
fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// Say why a program stopped without an exit code of its own.
fn failed(file: &Path, error: &WasiRuntimeError) -> u8 {
    match error {
        WasiRuntimeError::Runtime(trap) => {
            // wasix printed the trap with its backtrace already.
            eprintln!(
                "error: {} trapped: {} (exit code {TRAPPED})",
                file.display(),
                trap.message()
            );
            TRAPPED
        }
        other => {
            eprintln!("error: {} could not start: {other}", file.display());
            1
        }
    }
}

fn compiling_spinner(file: &str, wasm_len: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .expect("valid template"),
    );
    pb.set_message(format!(
        "compiling {file} ({} of wasm; the next run will load it from the cache)",
        bytes::human(wasm_len as f64)
    ));
    pb.enable_steady_tick(Duration::from_millis(120));
    Some(pb)
}

/// What the cache did, in one line with `--verbose`; a save that failed
/// is said in any case (the next run would compile again).
fn report_load(args: &RunArgs, told: &Told, took: Duration, hash: &wasmer_types::ModuleHash) {
    let file = args.file();
    let file = file.display();
    if args.verbose {
        let took = crate::duration::short(took);
        if let Some(tier) = &told.served_by {
            eprintln!(
                "tierscope: {file} (module {}) served by the {tier} tier in {took}",
                hash.short_hash()
            );
        } else if told.compiled && told.save_failures.is_empty() {
            eprintln!(
                "tierscope: {file} (module {}) compiled in {took} and saved",
                hash.short_hash()
            );
        } else if told.compiled {
            eprintln!(
                "tierscope: {file} (module {}) compiled in {took}",
                hash.short_hash()
            );
        }
    }
    for error in &told.tier_errors {
        eprintln!(
            "tierscope: warning: the cache could not serve {file}: {error}; compiled it again"
        );
    }
    for failure in &told.save_failures {
        eprintln!(
            "tierscope: warning: {file} was compiled but not saved: {failure}; the next run compiles it again"
        );
    }
}

/// Say what the program wrote outside the mapped directories: it was in
/// memory only, and is gone now.
fn report_leftovers(layout: &dirs::Layout, mapped: bool) {
    let left = layout.leftovers();
    if left.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let total: u64 = left.iter().map(|(_, n)| n).sum();
    let mut names: Vec<String> = left
        .iter()
        .take(SHOWN)
        .map(|(p, n)| format!("{} ({})", p.display(), bytes::human(*n as f64)))
        .collect();
    if left.len() > SHOWN {
        names.push(format!("and {} more", left.len() - SHOWN));
    }
    eprintln!(
        "tierscope: the program wrote {} file{} ({}) outside {}, in memory only, now gone: {}. Give it a host directory with --dir (e.g. --dir .) to keep its files.",
        left.len(),
        if left.len() == 1 { "" } else { "s" },
        bytes::human(total as f64),
        if mapped {
            "the directories given with --dir"
        } else {
            "any host directory (none was given)"
        },
        names.join(", "),
    );
}
