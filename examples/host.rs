//! A multi-tenant HTTP host for WebAssembly with tierscope as its module
//! cache: the reference embedding. Copy it, then change the routes and the
//! host API (`stub_imports`) to your platform's.
//!
//! ```sh
//! scripts/fetch-real-modules      # real modules in target/real-modules (optional)
//! cargo run --release --features host-interrupt --example host -- \
//!     --modules target/real-modules --cache-dir /tmp/wasm-host
//! curl -s localhost:8080/run/tree-sitter-json/tree_sitter_json
//! curl -s localhost:8080/metrics
//! ```
//!
//! ## Routes
//!
//! - `GET|POST /run/{module}`: load the module `{module}` (the file
//!   `{module}.wasm` in `--modules`), instantiate it in a fresh store of its
//!   own engine (its start function runs), answer `instantiated`.
//! - `GET|POST /run/{module}/{function}?args=1,2`: the same, then call the
//!   exported `{function}` with the arguments (integers or floats, as its
//!   parameters say) and answer its results, one per line.
//! - `GET /metrics`: Prometheus text: tierscope's metrics (the shipped
//!   Grafana dashboard works unchanged, its "Sizing" row included; pick
//!   this host's `--cache-name`)
//!   and the host's own (`host_requests_total{outcome}`,
//!   `host_request_duration_seconds{outcome}`, `host_executions_in_flight`,
//!   `host_executions_runaway`).
//! - `GET /healthz`: `ok`. `GET /modules`: the module names, one a line.
//!
//! Every response to `/run` carries `x-module-served`: how the module was
//! loaded (`memory`, `disk`, `redis`, `objects`, `compiled`, `coalesced`).
//!
//! ## Answers
//!
//! | status | outcome | when |
//! |---|---|---|
//! | 200 | `ok` | instantiated (and called) |
//! | 400 | `bad_request` | arguments that do not fit the function's parameters |
//! | 404 | `not_found` | no such module, or no such exported function |
//! | 502 | `invalid` | the module is not valid wasm (remembered: never compiled again) |
//! | 502 | `trap` | instantiation or the call trapped (`unreachable`, out of bounds, an import this host does not provide, ...) |
//! | 503 | `overloaded` | every execution slot stayed busy for `--queue-timeout` (with `Retry-After`) |
//! | 504 | `timeout` | the execution ran past `--timeout` |
//! | 500 | `panic`, `error` | a bug in the host (a panic is caught, the host stays up) or a failed load |
//!
//! ## Limits
//!
//! - At most `--max-concurrency` executions at once, each on a thread of
//!   tokio's blocking pool; a request waits at most `--queue-timeout` for a
//!   slot. A slot is given back when its thread is done, not when the
//!   client got its answer, so runaway code can never pile up threads.
//! - Loading comes first and takes no execution slot: a memory hit is
//!   answered at once, a disk or remote hit or a compile runs on tokio's
//!   blocking pool, and all the requests for one module share one load.
//!   So a compile never holds up the requests of modules already loaded.
//!   Compiles of different modules run side by side (the loader has no
//!   bound of its own on them; tokio's pool has 512 threads).
//! - An execution (instantiation and call) gets `--timeout`. Past it the
//!   client gets a 504 at once, and, with feature `host-interrupt`
//!   (wasmer's `experimental-host-interrupt`), the store is interrupted:
//!   the running wasm traps with `HostInterrupt` (a signal, retried every
//!   10 ms until it lands) and the thread comes back. Without that feature
//!   the thread runs on until the code ends by itself (an endless loop
//!   never does: it keeps its slot and a core), counted in
//!   `host_executions_runaway`; restart the host when it is not 0.
//! - Loading is not under `--timeout`: the first request of a module after
//!   a start with an empty cache pays its compile (tierscope compiles it
//!   once, however many requests ask).
//!
//! ## Shutdown
//!
//! SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (for
//! at most `--shutdown-timeout`), exit 0.
//!
//! ## Configuration
//!
//! Flags, or the environment variables in brackets (`--help` lists them):
//! `--listen` (`HOST_LISTEN`, 127.0.0.1:8080; port 0 picks a free port,
//! the address is printed on stdout as `listening on http://ADDR`),
//! `--modules` (`HOST_MODULES`, a directory of `*.wasm`, read at start),
//! `--cache-dir` (`HOST_CACHE_DIR`), `--memory-bytes`, `--disk-bytes`,
//! `--code-budget` (`HOST_MEMORY_BYTES`, ...; sizes like `64MiB`),
//! `--cache-name` (`HOST_CACHE_NAME`, the metrics' `cache` label),
//! `--max-concurrency`, `--queue-timeout`, `--timeout`,
//! `--shutdown-timeout` (durations like `250ms`, `2s`), and with features
//! `redis` / `objects`: `--redis URL` (`HOST_REDIS`, MAC key in
//! `TIERSCOPE_REDIS_KEY`), `--objects URL` (`HOST_OBJECTS`, key in
//! `TIERSCOPE_OBJECTS_KEY`), each a shared tier below the disk tier.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path as UrlPath, RawQuery, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use clap::Parser;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tierscope::{
    EngineRecycling, FileSystemCache, InstrumentExt, LoadError, LoadedModule, MemoryCache,
    ModuleCache, ModuleHash, ModuleLoader, Served,
    observe::prometheus,
    sizing::{LiveSizing, SizingExt, SizingOptions},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmer::{
    Engine, Extern, ExternType, Function, Global, Imports, Instance, Memory, Module, RuntimeError,
    Store, Table, Type, Value,
};

/// The host's configuration: flags or environment variables.
#[derive(Debug, Clone, Parser)]
#[command(about = "A multi-tenant HTTP host for WebAssembly, with tierscope as its module cache")]
pub struct Config {
    /// Address to listen on (port 0: any free port; the address bound is
    /// printed on stdout).
    #[arg(long, env = "HOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of modules: `NAME.wasm` is served at `/run/NAME`.
    #[arg(long, env = "HOST_MODULES")]
    pub modules: PathBuf,
    /// Directory of the disk tier (created if missing; mode 0700).
    #[arg(long, env = "HOST_CACHE_DIR", default_value = "/var/cache/wasm-host")]
    pub cache_dir: PathBuf,
    /// Capacity of the memory tier (serialized artifact bytes).
    #[arg(long, env = "HOST_MEMORY_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub memory_bytes: u64,
    /// Capacity of the disk tier.
    #[arg(long, env = "HOST_DISK_BYTES", default_value = "4GiB", value_parser = parse_size)]
    pub disk_bytes: u64,
    /// Code an engine may keep for modules no longer cached before a fresh
    /// engine replaces it (see README, "Engines and memory").
    #[arg(long, env = "HOST_CODE_BUDGET", default_value = "512MiB", value_parser = parse_size)]
    pub code_budget: u64,
    /// The `cache` label of the metrics (the dashboard's `cache` variable).
    #[arg(long, env = "HOST_CACHE_NAME", default_value = "host")]
    pub cache_name: String,
    /// Executions at once (default: the number of CPUs).
    #[arg(long, env = "HOST_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,
    /// How long a request waits for an execution slot before a 503.
    #[arg(long, env = "HOST_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub queue_timeout: Duration,
    /// How long an execution (instantiation and call) may run before a 504.
    #[arg(long, env = "HOST_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, env = "HOST_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A shared Redis tier below the disk tier (feature `redis`; MAC key
    /// in TIERSCOPE_REDIS_KEY).
    #[arg(long, env = "HOST_REDIS")]
    pub redis: Option<String>,
    /// A shared object-store tier at the bottom (feature `objects`; MAC key
    /// in TIERSCOPE_OBJECTS_KEY): s3://bucket/prefix, gs://.., file:///dir.
    #[arg(long, env = "HOST_OBJECTS")]
    pub objects: Option<String>,
}

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One runtime: its worker threads serve HTTP; its blocking pool runs
    // compiles, disk hits and the wasm itself.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("host: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Metrics first: tiers register their handles when built. Keep the
        // exporter: it owns the thread that publishes hit counts.
        let exporter = Arc::new(install_metrics()?);
        let source = Tiers::new(&config).await?;
        let host = Host::new(&config, Arc::new(source), exporter)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // Tests and scripts read this line to find a port the system chose.
        println!("listening on http://{addr}");
        serve(host, listener, shutdown_signal()).await
    });
    // Do not wait for executions that ignored their deadline (only
    // possible without `host-interrupt`): the process is ending.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("no SIGTERM handler ({e}); Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

// ---------------------------------------------------------------- serving

/// Serve `host` on `listener` until `shutdown` resolves, then let in-flight
/// requests finish for at most the configured shutdown timeout.
pub async fn serve(
    host: Host,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let grace = host.shutdown_timeout;
    let app = router(Arc::new(host));
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stopping_tx.send(true);
    });
    let deadline = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("server: {e}"))?,
        _ = deadline => tracing::warn!("shutdown timeout: dropping requests still in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The routes, with a panic in any handler answered as a 500.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/run/{module}", get(run_module).post(run_module))
        .route(
            "/run/{module}/{function}",
            get(run_function).post(run_function),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/modules", get(list_modules))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            metrics::counter!(names::REQUESTS, "outcome" => "panic").increment(1);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "error: the host failed on this request\n",
            )
                .into_response()
        }))
        .with_state(host)
}

async fn metrics(State(host): State<Arc<Host>>) -> Response {
    let text = host.exporter.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn list_modules(State(host): State<Arc<Host>>) -> String {
    let mut names: Vec<&str> = host.modules.keys().map(String::as_str).collect();
    names.sort_unstable();
    names.iter().map(|n| format!("{n}\n")).collect()
}

async fn run_module(State(host): State<Arc<Host>>, UrlPath(module): UrlPath<String>) -> Response {
    host.handle(&module, None, None).await
}

async fn run_function(
    State(host): State<Arc<Host>>,
    UrlPath((module, function)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    host.handle(&module, Some(function), query).await
}

// ------------------------------------------------------------------ the host

/// A module the host serves: its bytes, read at start, and their hash,
/// computed once (hashing costs more than a disk hit; see README).
#[derive(Debug)]
pub struct Wasm {
    /// SHA-256 of the bytes.
    pub hash: ModuleHash,
    /// The module's bytes.
    pub bytes: Bytes,
}

/// A module ready to instantiate: the module, the engine that holds its
/// code (every store that instantiates it must be of this engine), and
/// how it was served.
pub struct Ready {
    /// The module.
    pub module: Module,
    /// The module's own engine.
    pub engine: Engine,
    /// How it was loaded (the `x-module-served` header).
    pub served: &'static str,
    /// Whatever must outlive the execution (tierscope's `LoadedModule`
    /// keeps its engine generation alive).
    pub keep: Option<LoadedModule>,
}

/// Why a module could not be made ready.
#[derive(Debug)]
pub enum SourceError {
    /// The bytes are not valid wasm; the host remembers it.
    Invalid(String),
    /// Anything else (the next request tries again).
    Failed(String),
}

/// Where the host's modules come from. This host uses [`Tiers`]; the load
/// test (`benches/host.rs`) plugs in other sources to compare with.
pub trait ModuleSource: Send + Sync + 'static {
    /// The module `wasm`, ready to instantiate.
    fn ready<'a>(&'a self, wasm: &'a Wasm) -> BoxFuture<'a, Result<Ready, SourceError>>;
}

/// The tierscope stack: instrumented memory -> disk (-> Redis) (-> object
/// store) tiers, memory and disk with live sizing, under a
/// [`ModuleLoader`] that owns its engines.
pub struct Tiers {
    loader: ModuleLoader<Arc<dyn ModuleCache + Send + Sync>>,
}

impl Tiers {
    /// The stack `config` describes. Needs the metrics recorder installed.
    pub async fn new(config: &Config) -> Result<Self, String> {
        let name = config.cache_name.as_str();
        // What each in-process tier would hit at other sizes, live (the
        // dashboard's "Sizing" row; about 2.5 ns on a memory hit).
        let sizing = LiveSizing::new(name, SizingOptions::default());
        let disk = FileSystemCache::open(&config.cache_dir, config.disk_bytes)
            .map_err(|e| format!("--cache-dir {}: {e}", config.cache_dir.display()))?
            .instrumented(name, "disk")
            .with_sizing(&sizing);
        let lower: Arc<dyn ModuleCache + Send + Sync> = match &config.redis {
            None => Arc::new(disk),
            #[cfg(feature = "redis")]
            Some(url) => {
                let redis = tierscope::RedisCache::builder(url)
                    .mac_keys_from_env()
                    .map_err(|e| {
                        format!("--redis: {e} (generate a key with `openssl rand -hex 32`)")
                    })?
                    .build()
                    .map_err(|e| format!("--redis {url}: {e}"))?
                    .instrumented(name, "redis");
                redis
                    .get_ref()
                    .ping()
                    .await
                    .map_err(|e| format!("--redis {url}: {e}"))?;
                Arc::new(disk.with_fallback(redis))
            }
            #[cfg(not(feature = "redis"))]
            Some(_) => return Err("--redis needs the `redis` feature".into()),
        };
        let lower: Arc<dyn ModuleCache + Send + Sync> = match &config.objects {
            None => lower,
            #[cfg(feature = "objects")]
            Some(url) => {
                let objects = tierscope::ObjectsCache::builder(url)
                    .mac_keys_from_env()
                    .map_err(|e| {
                        format!("--objects: {e} (generate a key with `openssl rand -hex 32`)")
                    })?
                    .build()
                    .map_err(|e| format!("--objects {url}: {e}"))?
                    .instrumented(name, "objects");
                Arc::new(lower.with_fallback(objects))
            }
            #[cfg(not(feature = "objects"))]
            Some(_) => return Err("--objects needs the `objects` feature".into()),
        };
        let stack: Arc<dyn ModuleCache + Send + Sync> = Arc::new(
            MemoryCache::new(config.memory_bytes)
                .instrumented(name, "memory")
                .with_sizing(&sizing)
                .with_fallback(lower),
        );
        let engines = EngineRecycling::new(wasmer::Engine::default).code_budget(config.code_budget);
        Ok(Tiers {
            loader: ModuleLoader::with_engines(name, stack, engines),
        })
    }
}

impl ModuleSource for Tiers {
    fn ready<'a>(&'a self, wasm: &'a Wasm) -> BoxFuture<'a, Result<Ready, SourceError>> {
        Box::pin(async move {
            let bytes = wasm.bytes.clone();
            // The hash is known: no re-hashing; the bytes are only touched
            // on a compile.
            let loaded = self
                .loader
                .load_lazy(wasm.hash, move || bytes)
                .await
                .map_err(|e| match e {
                    LoadError::Compile { source, .. } => SourceError::Invalid(source.to_string()),
                    other => SourceError::Failed(other.to_string()),
                })?;
            Ok(ready(loaded))
        })
    }
}

/// A loaded module as the host runs it.
fn ready(loaded: LoadedModule) -> Ready {
    let served = match loaded.served() {
        Served::Memory => "memory",
        Served::Tier(Some(tier)) => tier.as_str(),
        Served::Tier(None) => "tier",
        Served::Coalesced => "coalesced",
        Served::Compiled => "compiled",
        _ => "other",
    };
    Ready {
        module: loaded.module().clone(),
        // Every store that instantiates the module is of this engine.
        engine: loaded.engine().clone(),
        served,
        keep: Some(loaded),
    }
}

/// The number of CPUs (2 when unknown).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Metric names of the host itself, in one place.
mod names {
    pub const REQUESTS: &str = "host_requests_total";
    pub const DURATION: &str = "host_request_duration_seconds";
    pub const IN_FLIGHT: &str = "host_executions_in_flight";
    pub const RUNAWAY: &str = "host_executions_runaway";
}

/// Install the Prometheus recorder: tierscope's buckets, and buckets for
/// the host's own latency histogram (from 50 µs to 30 s).
pub fn install_metrics() -> Result<prometheus::Exporter, String> {
    let buckets = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let builder = prometheus::builder()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::DURATION.into()),
            &buckets,
        )
        .map_err(|e| e.to_string())?;
    let exporter = prometheus::install_with(builder).map_err(|e| format!("metrics: {e}"))?;
    metrics::describe_counter!(
        names::REQUESTS,
        "Requests to /run, by outcome (ok, not_found, bad_request, invalid, trap, overloaded, timeout, panic, error)."
    );
    metrics::describe_histogram!(
        names::DURATION,
        metrics::Unit::Seconds,
        "Time from a /run request's arrival to its answer, by outcome."
    );
    metrics::describe_gauge!(
        names::IN_FLIGHT,
        "Executions (instantiation and call) running now."
    );
    metrics::describe_gauge!(
        names::RUNAWAY,
        "Executions past their deadline whose thread has not come back."
    );
    // Present from the start, so that an alert on it has a series to watch.
    metrics::gauge!(names::IN_FLIGHT).set(0.0);
    metrics::gauge!(names::RUNAWAY).set(0.0);
    Ok(exporter)
}

/// The host's state, shared by every request.
pub struct Host {
    modules: HashMap<String, Arc<Wasm>>,
    source: Arc<dyn ModuleSource>,
    /// Modules that failed to compile, by hash: answered at once, never
    /// compiled again (invalid wasm would otherwise cost a compile per
    /// request).
    invalid: Mutex<HashMap<ModuleHash, Arc<str>>>,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    timeout: Duration,
    shutdown_timeout: Duration,
    exporter: Arc<prometheus::Exporter>,
}

impl Host {
    /// A host serving the modules of `config.modules` from `source`.
    pub fn new(
        config: &Config,
        source: Arc<dyn ModuleSource>,
        exporter: Arc<prometheus::Exporter>,
    ) -> Result<Self, String> {
        let modules = read_modules(&config.modules)?;
        tracing::info!(
            "{} modules from {}",
            modules.len(),
            config.modules.display()
        );
        let slots = config.max_concurrency.unwrap_or_else(cpus).max(1);
        Ok(Host {
            modules,
            source,
            invalid: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(slots)),
            queue_timeout: config.queue_timeout,
            timeout: config.timeout,
            shutdown_timeout: config.shutdown_timeout,
            exporter,
        })
    }

    async fn handle(
        &self,
        module: &str,
        function: Option<String>,
        query: Option<String>,
    ) -> Response {
        let start = Instant::now();
        let (outcome, served, response) = match self.execute(module, function, query).await {
            Ok((served, body)) => ("ok", Some(served), (StatusCode::OK, body).into_response()),
            Err(f) => {
                let mut r = (f.status, format!("error: {}\n", f.message)).into_response();
                if f.status == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                (f.outcome, f.served, r)
            }
        };
        metrics::counter!(names::REQUESTS, "outcome" => outcome).increment(1);
        metrics::histogram!(names::DURATION, "outcome" => outcome).record(start.elapsed());
        let mut response = response;
        if let Some(served) = served {
            response
                .headers_mut()
                .insert("x-module-served", HeaderValue::from_static(served));
        }
        response
    }

    async fn execute(
        &self,
        module: &str,
        function: Option<String>,
        query: Option<String>,
    ) -> Result<(&'static str, String), Failure> {
        let Some(wasm) = self.modules.get(module) else {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no module `{module}`"),
            ));
        };
        if let Some(reason) = self.invalid.lock().get(&wasm.hash) {
            return Err(Failure::invalid(module, reason));
        }
        let args = parse_args(query.as_deref());
        // Load first, without an execution slot: a compile (seconds, on
        // the blocking pool, once per module however many ask) never holds
        // up the requests of modules already loaded.
        let ready = match self.source.ready(wasm).await {
            Ok(r) => r,
            Err(SourceError::Invalid(reason)) => {
                let reason: Arc<str> = reason.into();
                self.invalid.lock().insert(wasm.hash, Arc::clone(&reason));
                return Err(Failure::invalid(module, &reason));
            }
            Err(SourceError::Failed(e)) => {
                return Err(Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "error",
                    format!("loading `{module}`: {e}"),
                ));
            }
        };
        let served = ready.served;
        let permit =
            tokio::time::timeout(self.queue_timeout, Arc::clone(&self.slots).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "every execution slot is busy; retry".into(),
                    )
                    .served(served)
                })?;
        self.run_bounded(permit, ready, function, args)
            .await
            .map(|body| (served, body))
            .map_err(|f| f.served(served))
    }

    /// Run on a blocking thread under the deadline; the permit goes back
    /// when the thread is done.
    async fn run_bounded(
        &self,
        permit: OwnedSemaphorePermit,
        ready: Ready,
        function: Option<String>,
        args: Vec<String>,
    ) -> Result<String, Failure> {
        let Ready {
            module,
            engine,
            keep,
            ..
        } = ready;
        let running = Running::start(permit, keep);
        // A store is not `Send`: it is made on the thread that runs it,
        // which hands back its interrupter.
        let interrupter = Arc::new(std::sync::OnceLock::new());
        let interrupter_cell = Arc::clone(&interrupter);
        let mut task = tokio::task::spawn_blocking(move || {
            let store = Store::new(engine);
            #[cfg(feature = "host-interrupt")]
            let _ = interrupter_cell.set(store.interrupter());
            #[cfg(not(feature = "host-interrupt"))]
            let _ = interrupter_cell.set(());
            let result = instantiate_and_call(store, &module, function.as_deref(), &args);
            // The slot goes back here, or when a panic unwinds past it.
            drop(running);
            result
        });
        let joined = match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                metrics::gauge!(names::RUNAWAY).increment(1.0);
                #[cfg(feature = "host-interrupt")]
                tokio::spawn(async move {
                    // The signal may arrive while the thread is outside wasm
                    // (in the host's own code): retry until it lands.
                    while tokio::time::timeout(Duration::from_millis(10), &mut task)
                        .await
                        .is_err()
                    {
                        if let Some(interrupter) = interrupter.get() {
                            interrupter.interrupt();
                        }
                    }
                    metrics::gauge!(names::RUNAWAY).decrement(1.0);
                });
                #[cfg(not(feature = "host-interrupt"))]
                tokio::spawn(async move {
                    let _ = interrupter;
                    let _ = task.await;
                    metrics::gauge!(names::RUNAWAY).decrement(1.0);
                });
                return Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("the module ran longer than {:?}", self.timeout),
                ));
            }
        };
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "panic",
                "the host failed on this request".into(),
            )),
            Err(e) => Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                e.to_string(),
            )),
        }
    }
}

/// An execution's slot, counted in `host_executions_in_flight` while held.
struct Running {
    _permit: OwnedSemaphorePermit,
    _keep: Option<LoadedModule>,
}

impl Running {
    fn start(permit: OwnedSemaphorePermit, keep: Option<LoadedModule>) -> Self {
        metrics::gauge!(names::IN_FLIGHT).increment(1.0);
        Running {
            _permit: permit,
            _keep: keep,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!(names::IN_FLIGHT).decrement(1.0);
    }
}

/// A request that did not succeed: its status, its outcome label, and what
/// the client is told.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    outcome: &'static str,
    message: String,
    served: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, outcome: &'static str, message: String) -> Self {
        Failure {
            status,
            outcome,
            message,
            served: None,
        }
    }
    fn invalid(module: &str, reason: &str) -> Self {
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "invalid",
            format!("module `{module}` is not valid wasm: {reason}"),
        )
    }
    fn served(mut self, served: &'static str) -> Self {
        self.served = Some(served);
        self
    }
}

/// `args=1,2,-3.5` as its comma-separated parts.
fn parse_args(query: Option<&str>) -> Vec<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("args="))
        .flat_map(|v| v.split(','))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------ the execution

/// Instantiate `module` in `store` and call `function` (if any) with
/// `args`. Runs on a blocking thread; everything it allocates dies with
/// the store.
fn instantiate_and_call(
    mut store: Store,
    module: &Module,
    function: Option<&str>,
    args: &[String],
) -> Result<String, Failure> {
    let imports = stub_imports(&mut store, module)?;
    let instance = Instance::new(&mut store, module, &imports).map_err(|e| match e {
        wasmer::InstantiationError::Start(trap) => trapped(trap),
        other => Failure::new(
            StatusCode::BAD_GATEWAY,
            "trap",
            format!("cannot instantiate: {other}"),
        ),
    })?;
    let Some(function) = function else {
        return Ok("instantiated\n".into());
    };
    let f = instance.exports.get_function(function).map_err(|_| {
        Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no exported function `{function}`"),
        )
    })?;
    let params = f.ty(&store).params().to_vec();
    if params.len() != args.len() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "`{function}` takes {} arguments, got {}",
                params.len(),
                args.len()
            ),
        ));
    }
    let values = params
        .iter()
        .zip(args)
        .map(|(ty, arg)| parse_value(*ty, arg))
        .collect::<Result<Vec<_>, _>>()?;
    let results = f.call(&mut store, &values).map_err(trapped)?;
    Ok(results
        .iter()
        .map(|v| format!("{}\n", show_value(v)))
        .collect())
}

fn trapped(error: RuntimeError) -> Failure {
    #[cfg(feature = "host-interrupt")]
    if error.clone().to_trap() == Some(wasmer_types::TrapCode::HostInterrupt) {
        return Failure::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "interrupted at its deadline".into(),
        );
    }
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "trap",
        format!("the module trapped: {}", error.message()),
    )
}

/// This host's API: none. Every import a module declares is satisfied with
/// a stub so that library modules (tree-sitter grammars, emscripten
/// builds) instantiate: a function that traps when called, a fresh memory
/// or table of the declared size, a global holding zero. Replace it with
/// your platform's host functions.
fn stub_imports(store: &mut Store, module: &Module) -> Result<Imports, Failure> {
    let mut imports = Imports::new();
    for import in module.imports() {
        let what = format!("{}.{}", import.module(), import.name());
        let bad = |e: String| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "trap",
                format!("import {what}: {e}"),
            )
        };
        let stub: Extern = match import.ty() {
            ExternType::Function(ty) => {
                let message = format!("import {what} is not provided by this host");
                Function::new(store, ty, move |_| Err(RuntimeError::new(message.clone()))).into()
            }
            ExternType::Memory(ty) => Memory::new(store, *ty)
                .map_err(|e| bad(e.to_string()))?
                .into(),
            ExternType::Table(ty) => Table::new(store, *ty, zero(ty.ty))
                .map_err(|e| bad(e.to_string()))?
                .into(),
            ExternType::Global(ty) if ty.mutability.is_mutable() => {
                Global::new_mut(store, zero(ty.ty)).into()
            }
            ExternType::Global(ty) => Global::new(store, zero(ty.ty)).into(),
            ExternType::Tag(_) => return Err(bad("tags are not supported".into())),
        };
        imports.define(import.module(), import.name(), stub);
    }
    Ok(imports)
}

fn zero(ty: Type) -> Value {
    match ty {
        Type::I32 => Value::I32(0),
        Type::I64 => Value::I64(0),
        Type::F32 => Value::F32(0.0),
        Type::F64 => Value::F64(0.0),
        Type::V128 => Value::V128(0),
        Type::ExternRef => Value::ExternRef(None),
        Type::FuncRef => Value::FuncRef(None),
        Type::ExceptionRef => Value::ExceptionRef(None),
    }
}

fn parse_value(ty: Type, arg: &str) -> Result<Value, Failure> {
    let bad = || {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`{arg}` is not a valid {ty:?}"),
        )
    };
    Ok(match ty {
        Type::I32 => Value::I32(
            arg.parse::<i32>()
                .or_else(|_| arg.parse::<u32>().map(|u| u as i32))
                .map_err(|_| bad())?,
        ),
        Type::I64 => Value::I64(
            arg.parse::<i64>()
                .or_else(|_| arg.parse::<u64>().map(|u| u as i64))
                .map_err(|_| bad())?,
        ),
        Type::F32 => Value::F32(arg.parse().map_err(|_| bad())?),
        Type::F64 => Value::F64(arg.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

fn show_value(value: &Value) -> String {
    match value {
        Value::I32(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F32(v) => v.to_string(),
        Value::F64(v) => v.to_string(),
        Value::V128(v) => format!("{v:#x}"),
        Value::FuncRef(f) => if f.is_some() { "funcref" } else { "null" }.into(),
        Value::ExternRef(r) => if r.is_some() { "externref" } else { "null" }.into(),
        Value::ExceptionRef(r) => if r.is_some() { "exnref" } else { "null" }.into(),
    }
}

// ----------------------------------------------------------- configuration

/// Every `*.wasm` file of `dir`, hashed once.
pub fn read_modules(dir: &Path) -> Result<HashMap<String, Arc<Wasm>>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--modules {}: {e}", dir.display()))?;
    let mut modules = HashMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("--modules {}: {e}", dir.display()))?
            .path();
        let (Some(name), Some("wasm")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let wasm = Wasm {
            hash: ModuleHash::new(&bytes),
            bytes: bytes.into(),
        };
        modules.insert(name.to_owned(), Arc::new(wasm));
    }
    Ok(modules)
}

/// `4096`, `64KiB`, `256MiB`, `4GiB` (also `KB`, `MB`, `GB`, as powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (like 64MiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        _ => return Err(format!("`{s}`: unknown unit (B, KiB, MiB, GiB)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `250ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (like 250ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("`{s}`: unknown unit (ms, s, m)")),
    }
}
