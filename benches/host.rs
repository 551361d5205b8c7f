//! Load test of the reference host (`examples/host.rs`, compiled into this
//! bench as a module): requests per second and latency through its HTTP
//! stack, for three ways of getting a compiled module, side by side in one
//! run, on real third-party modules (`scripts/fetch-real-modules`):
//!
//! - `tierscope`: the host as shipped, a `ModuleLoader` over instrumented
//!   memory -> disk tiers;
//! - `compile`: `Module::new` on every request (into a fresh engine each
//!   time, so that the code memory is freed with it);
//! - `wasix`: a wasmer-wasix runtime's `load_hashed_module` over
//!   `in_memory().with_fallback(FileSystemCache)` (what the wasmer CLI
//!   uses), as a wasix embedding loads modules.
//!
//! Everything else is the same code: routes, execution slots, a fresh
//! store per request, stub imports. What a request does per module:
//! tree-sitter grammars: instantiate and call `tree_sitter_<lang>()` (it
//! returns the address of the grammar's tables); sql-wasm and esbuild:
//! instantiate (their entry points need their JavaScript glue).
//!
//! One host per stack, all three up at once (an idle host costs nothing),
//! each over its own cache directory. Per module:
//! 1. **cold**: on the empty cache, `CLIENTS` clients ask for the module
//!    at the same moment (the herd after a deploy): the latencies of those
//!    first requests; meanwhile (from the second module on) requests for
//!    the first module, loaded by then, arrive at a fixed rate (500 a
//!    second; latency counted from when each was due, so a stall weighs
//!    once per request it delayed): what a deploy does to the other
//!    tenants' latency;
//! 2. **steady**: after a 0.5 s warm-up, `CLIENTS` clients in a closed
//!    loop, `TIERSCOPE_HOST_BENCH_SECS` (default 3) seconds per stack in
//!    `TIERSCOPE_ROUNDS` (default 3) alternating rounds, the order rotated,
//!    so that the machine's noise falls on every stack alike: requests per
//!    second, p50, p99, p999 of every request;
//! 3. **restart** (after all modules): fresh hosts (new engines, empty
//!    memory tiers) over the directories phase 1 filled: the same herd.
//!
//! Server and clients run in this process, on runtimes of their own (the
//! server's with a worker per core, the clients' with one), on the same
//! cores. esbuild is left out unless `TIERSCOPE_REAL_MODULES_SKIP`
//! is set (to anything, even empty): compiling it takes minutes, and the
//! compile stack compiles it per request.
//!
//! `scripts/fetch-real-modules && cargo bench --all-features --bench host`

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tierscope::ModuleHash;
use wasmer::{Engine, Module};
use wasmer_wasix::{
    PluggableRuntime,
    runtime::{
        Runtime,
        module_cache::{
            FileSystemCache as WasixFileSystemCache, HashedModuleData, ModuleCache as _, in_memory,
        },
        task_manager::tokio::TokioTaskManager,
    },
};

#[allow(dead_code)]
#[path = "../examples/host.rs"]
mod host;
#[path = "support/real_modules.rs"]
mod real_modules;
#[path = "support/rounds.rs"]
mod rounds;

use host::{ModuleSource, Ready, SourceError, Wasm};

/// Concurrent clients (keep-alive connections).
const CLIENTS: usize = 4;
/// Connections that keep asking for a loaded module while another one's
/// herd arrives, each one request every `BACKGROUND_EVERY` (500 requests
/// per second in all).
const BACKGROUND: usize = 2;
const BACKGROUND_EVERY: Duration = Duration::from_millis(4);
/// Execution slots of the host (`--max-concurrency`): this machine's cores.
const SLOTS: &str = "2";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stack {
    Tierscope,
    Compile,
    Wasix,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Tierscope => "tierscope",
            Stack::Compile => "compile",
            Stack::Wasix => "wasix",
        }
    }
}

/// `Module::new` on every request, into a fresh engine.
struct CompileEach;

impl ModuleSource for CompileEach {
    fn ready<'a>(&'a self, wasm: &'a Wasm) -> BoxFuture<'a, Result<Ready, SourceError>> {
        let bytes = wasm.bytes.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let engine = Engine::default();
                let module = Module::new(&engine, &bytes)
                    .map_err(|e| SourceError::Invalid(e.to_string()))?;
                Ok(Ready {
                    module,
                    engine,
                    served: "compiled",
                    keep: None,
                })
            })
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?
        })
    }
}

/// A wasix runtime over `in_memory().with_fallback(FileSystemCache)`,
/// loading as `Runtime::load_hashed_module` does (load; on a miss compile
/// on the calling task, then save).
struct WasixStack {
    runtime: PluggableRuntime,
    /// Hashed once, as the host does for its own stack.
    modules: HashMap<ModuleHash, HashedModuleData>,
}

impl WasixStack {
    fn new(handle: tokio::runtime::Handle, dir: &Path, modules: &Path) -> Self {
        let tasks = Arc::new(TokioTaskManager::new(handle));
        let mut runtime = PluggableRuntime::new(tasks.clone());
        runtime
            .set_engine(Engine::default())
            .set_module_cache(in_memory().with_fallback(WasixFileSystemCache::new(dir, tasks)));
        let modules = host::read_modules(modules)
            .unwrap()
            .into_values()
            .map(|w| (w.hash, HashedModuleData::new(w.bytes.to_vec())))
            .collect();
        WasixStack { runtime, modules }
    }
}

impl ModuleSource for WasixStack {
    fn ready<'a>(&'a self, wasm: &'a Wasm) -> BoxFuture<'a, Result<Ready, SourceError>> {
        Box::pin(async move {
            let data = self.modules[&wasm.hash].clone();
            let module = self
                .runtime
                .load_hashed_module(data, None)
                .await
                .map_err(|e| SourceError::Invalid(e.to_string()))?;
            Ok(Ready {
                module,
                engine: self.runtime.engine(),
                served: "wasix",
                keep: None,
            })
        })
    }
}

/// A host serving in the background until dropped.
struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), String>>>,
    server: tokio::runtime::Handle,
}

impl Running {
    fn start(
        server: &tokio::runtime::Runtime,
        stack: Stack,
        cache: &Path,
        exporter: &Arc<tierscope::observe::prometheus::Exporter>,
    ) -> Running {
        let modules = real_modules::dir();
        let name = format!("bench-host-{}", stack.name());
        let config = host::Config::parse_from([
            "host".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--modules".as_ref(),
            modules.as_os_str(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            "--cache-name".as_ref(),
            name.as_ref(),
            "--max-concurrency".as_ref(),
            SLOTS.as_ref(),
            "--queue-timeout".as_ref(),
            "600s".as_ref(),
            "--timeout".as_ref(),
            "60s".as_ref(),
            "--shutdown-timeout".as_ref(),
            "600s".as_ref(),
        ]);
        server.block_on(async {
            let source: Arc<dyn ModuleSource> = match stack {
                Stack::Tierscope => Arc::new(host::Tiers::new(&config).await.unwrap()),
                Stack::Compile => Arc::new(CompileEach),
                Stack::Wasix => Arc::new(WasixStack::new(
                    tokio::runtime::Handle::current(),
                    cache,
                    &modules,
                )),
            };
            let host = host::Host::new(&config, source, Arc::clone(exporter)).unwrap();
            let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let done = tokio::spawn(host::serve(host, listener, async move {
                let _ = stopped.await;
            }));
            Running {
                addr,
                stop: Some(stop),
                done: Some(done),
                server: tokio::runtime::Handle::current(),
            }
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let (Some(stop), Some(done)) = (self.stop.take(), self.done.take()) {
            let _ = stop.send(());
            let _ = self.server.block_on(done);
        }
    }
}

/// One keep-alive connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client { sender }
    }

    /// GET `path`: its latency and whether it answered 200.
    async fn get(&mut self, path: &str) -> (Duration, bool) {
        let request = hyper::Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let start = Instant::now();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let ok = response.status() == 200;
        let _ = response.into_body().collect().await.unwrap();
        (start.elapsed(), ok)
    }
}

/// The route for a module: tree-sitter grammars call their language
/// function, the others are instantiated.
fn path(module: &str) -> String {
    match module.strip_prefix("tree-sitter-") {
        Some(lang) => format!("/run/{module}/tree_sitter_{}", lang.replace('-', "_")),
        None => format!("/run/{module}"),
    }
}

/// `CLIENTS` first requests for `module` at the same moment.
async fn herd(addr: SocketAddr, module: &str) -> (Vec<Duration>, usize) {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(addr).await);
    }
    let path = path(module);
    let results = futures::future::join_all(clients.iter_mut().map(|c| c.get(&path))).await;
    let errors = results.iter().filter(|(_, ok)| !ok).count();
    (results.into_iter().map(|(d, _)| d).collect(), errors)
}

/// `clients` clients in a closed loop until `duration` has passed or
/// `stop` is set: every latency, the time until the last answer, errors.
async fn closed_loop(
    addr: SocketAddr,
    module: &str,
    clients: usize,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, Duration, usize) {
    let path = path(module);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let path = path.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut latencies = Vec::new();
                let mut errors = 0;
                while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                    let (d, ok) = client.get(&path).await;
                    latencies.push(d);
                    errors += usize::from(!ok);
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all, start.elapsed(), errors)
}

/// `CLIENTS` clients for `duration`.
async fn steady(
    addr: SocketAddr,
    module: &str,
    duration: Duration,
) -> (Vec<Duration>, Duration, usize) {
    closed_loop(
        addr,
        module,
        CLIENTS,
        duration,
        Arc::new(AtomicBool::new(false)),
    )
    .await
}

/// Requests for `module` at a fixed rate (`BACKGROUND` connections, one
/// request every `BACKGROUND_EVERY` each), every request due before the
/// moment `stop` holds. Each latency runs from the moment its request was
/// due, not from when it was sent: a connection stuck behind a stalled
/// server still owes (and then sends) the requests due meanwhile, so a
/// stall counts once per request it delayed (no coordinated omission).
async fn open_loop(
    addr: SocketAddr,
    module: &str,
    stop: Arc<Mutex<Option<tokio::time::Instant>>>,
) -> Vec<Duration> {
    let path = path(module);
    let tasks: Vec<_> = (0..BACKGROUND)
        .map(|i| {
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let start =
                    tokio::time::Instant::now() + BACKGROUND_EVERY * i as u32 / BACKGROUND as u32;
                let mut latencies = Vec::new();
                for k in 0u32.. {
                    let due = start + BACKGROUND_EVERY * k;
                    tokio::time::sleep_until(due).await;
                    if stop.lock().is_some_and(|stop| due > stop) {
                        break;
                    }
                    let _ = client.get(&path).await;
                    latencies.push(due.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// A herd on `module` while requests for `warm` arrive at a fixed rate:
/// the herd's latencies and errors, and the warm requests' latencies.
async fn herd_beside_traffic(
    addr: SocketAddr,
    module: &str,
    warm: &str,
) -> (Vec<Duration>, usize, Vec<Duration>) {
    let stop = Arc::new(Mutex::new(None));
    let background = tokio::spawn({
        let (warm, stop) = (warm.to_owned(), Arc::clone(&stop));
        async move { open_loop(addr, &warm, stop).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (latencies, errors) = herd(addr, module).await;
    *stop.lock() = Some(tokio::time::Instant::now());
    let warm_latencies = background.await.unwrap();
    (latencies, errors, warm_latencies)
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[Duration], q: f64) -> Duration {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

/// Requests per second, with a decimal or two below 10.
fn rate(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else if r >= 1.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

#[derive(Default)]
struct Row {
    cold: Vec<Duration>,
    restart: Vec<Duration>,
    steady: Vec<Duration>,
    steady_time: Duration,
    errors: usize,
}

impl Row {
    fn rps(&self) -> f64 {
        self.steady.len() as f64 / self.steady_time.as_secs_f64()
    }
}

const STACKS: [Stack; 3] = [Stack::Tierscope, Stack::Compile, Stack::Wasix];

/// The stacks, the order rotated by `n`: no stack always goes first.
fn rotated(n: usize) -> impl Iterator<Item = (usize, Stack)> {
    (0..STACKS.len()).map(move |i| {
        let j = (i + n) % STACKS.len();
        (j, STACKS[j])
    })
}

fn main() {
    // `cargo bench` passes `--bench`; this bench takes no filters.
    let secs: u64 = std::env::var("TIERSCOPE_HOST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rounds = rounds::count(3).max(1);
    let slice = Duration::from_secs(secs) / rounds as u32;
    let skip_esbuild = std::env::var_os("TIERSCOPE_REAL_MODULES_SKIP").is_none();
    let modules: Vec<&str> = real_modules::load()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !(skip_esbuild && *name == "esbuild"))
        .collect();
    assert!(
        !modules.is_empty(),
        "no real modules: run scripts/fetch-real-modules first"
    );
    let exporter = Arc::new(host::install_metrics().unwrap());
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let caches: Vec<_> = STACKS.iter().map(|s| tmp.path().join(s.name())).collect();
    let start_all = || -> Vec<Running> {
        STACKS
            .iter()
            .zip(&caches)
            .map(|(&stack, cache)| Running::start(&server, stack, cache, &exporter))
            .collect()
    };
    // rows[module][stack]
    let mut rows: Vec<Vec<Row>> = modules
        .iter()
        .map(|_| STACKS.iter().map(|_| Row::default()).collect())
        .collect();

    // Cold, then steady, with all three hosts up (an idle host costs
    // nothing); the stacks take turns, so that the machine's noise falls
    // on all of them alike.
    // Warm requests (for the first module, loaded by then) while the later
    // modules' herds arrive, per stack.
    let mut beside: Vec<Vec<Duration>> = STACKS.iter().map(|_| Vec::new()).collect();
    let hosts = start_all();
    for (m, &module) in modules.iter().enumerate() {
        for (s, _) in rotated(m) {
            let (cold, errors) = if m == 0 {
                clients.block_on(herd(hosts[s].addr, module))
            } else {
                let (cold, errors, warm) =
                    clients.block_on(herd_beside_traffic(hosts[s].addr, module, modules[0]));
                beside[s].extend(warm);
                (cold, errors)
            };
            rows[m][s].cold = cold;
            rows[m][s].errors += errors;
        }
        for (s, _) in rotated(m) {
            clients.block_on(steady(hosts[s].addr, module, Duration::from_millis(500)));
        }
        for round in 0..rounds {
            for (s, _) in rotated(round + m) {
                let (latencies, took, errors) =
                    clients.block_on(steady(hosts[s].addr, module, slice));
                let row = &mut rows[m][s];
                row.steady.extend(latencies);
                row.steady_time += took;
                row.errors += errors;
            }
        }
        for (s, stack) in rotated(0) {
            let row = &mut rows[m][s];
            row.steady.sort();
            eprintln!(
                "{:<10} {:<17} cold max {} ms, steady {:.0}/s p99 {} ms",
                stack.name(),
                module,
                ms(*row.cold.iter().max().unwrap()),
                row.rps(),
                ms(pct(&row.steady, 0.99))
            );
        }
    }
    drop(hosts);

    // Restart: fresh hosts over the directories the cold phase filled.
    let hosts = start_all();
    for (m, &module) in modules.iter().enumerate() {
        for (s, _) in rotated(m) {
            let (restart, errors) = clients.block_on(herd(hosts[s].addr, module));
            rows[m][s].restart = restart;
            rows[m][s].errors += errors;
        }
    }
    drop(hosts);

    println!();
    println!("## Host load test: `cargo bench --all-features --bench host`");
    println!();
    println!(
        "{CLIENTS} clients, {SLOTS} execution slots, steady state {secs} s per module and stack in {rounds} alternating rounds after 0.5 s of warm-up, {} CPUs; latencies in ms.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "cold: {CLIENTS} first requests at once on an empty cache (median / max); restart: the same on a fresh host over the filled cache directory."
    );
    println!();
    println!(
        "| module | stack | cold p50 / max | restart p50 / max | steady req/s | p50 | p99 | p999 | requests | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (m, module) in modules.iter().enumerate() {
        for (s, stack) in rotated(0) {
            let row = &mut rows[m][s];
            row.cold.sort();
            row.restart.sort();
            println!(
                "| {module} | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                stack.name(),
                ms(pct(&row.cold, 0.5)),
                ms(*row.cold.last().unwrap()),
                ms(pct(&row.restart, 0.5)),
                ms(*row.restart.last().unwrap()),
                rate(row.rps()),
                ms(pct(&row.steady, 0.5)),
                ms(pct(&row.steady, 0.99)),
                ms(pct(&row.steady, 0.999)),
                row.steady.len(),
                row.errors,
            );
        }
    }
    if modules.len() > 1 {
        println!();
        println!(
            "{} requests per second for {} (loaded; {BACKGROUND} connections, latency from when each request was due) while the other modules' cold herds arrived:",
            BACKGROUND as u128 * 1000 / BACKGROUND_EVERY.as_millis(),
            modules[0]
        );
        println!();
        println!("| stack | p50 | p99 | max | requests |");
        println!("|---|---|---|---|---|");
        for (s, stack) in rotated(0) {
            let v = &mut beside[s];
            v.sort();
            if v.is_empty() {
                continue;
            }
            println!(
                "| {} | {} | {} | {} | {} |",
                stack.name(),
                ms(pct(v, 0.5)),
                ms(pct(v, 0.99)),
                ms(*v.last().unwrap()),
                v.len()
            );
        }
    }
    println!();
    println!("ratios tierscope : compile : wasix (steady p99, restart max)");
    for (m, module) in modules.iter().enumerate() {
        let [t, c, w] = [&rows[m][0], &rows[m][1], &rows[m][2]];
        let p99 = |r: &Row| pct(&r.steady, 0.99).as_secs_f64();
        let rmax = |r: &Row| r.restart.last().unwrap().as_secs_f64();
        println!(
            "  {module:<17} steady p99: compile/tierscope {:.0}x, wasix/tierscope {:.2}x; req/s tierscope/wasix {:.2}x; restart max: compile/tierscope {:.0}x, wasix/tierscope {:.2}x",
            p99(c) / p99(t),
            p99(w) / p99(t),
            t.rps() / w.rps(),
            rmax(c) / rmax(t),
            rmax(w) / rmax(t),
        );
    }
}
