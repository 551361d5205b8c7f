//! The reference host (`examples/host.rs`) end to end, as a child process
//! on a free loopback port: modules that answer, trap, are invalid, import
//! what the host does not provide, or run forever; `/metrics`; a restart
//! served from disk; SIGTERM with a request in flight.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header::HeaderMap};
use hyper_util::rt::TokioIo;

use crate::common::ADD_WAT;

const TRAP: &str = r#"(module (func (export "boom") unreachable))"#;

/// `spin` never returns; `slow(n)` counts down from `n`.
const LOOPS: &str = r#"(module
  (func (export "spin") (loop $l (br $l)))
  (func (export "slow") (param $n i64) (result i64)
    (loop $l
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $l (i64.gt_s (local.get $n) (i64.const 0))))
    (local.get $n)))"#;

/// Imports what this host does not provide (it gets stubs): `answer` works,
/// `ask` calls the missing import.
const LIBRARY: &str = r#"(module
  (import "env" "host_fn" (func $host_fn (result i32)))
  (import "env" "memory" (memory 1))
  (import "env" "__memory_base" (global i32))
  (func (export "answer") (result i32) (i32.const 42))
  (func (export "ask") (result i32) (call $host_fn)))"#;

/// Builds the example with this test binary's features and profile (a
/// no-op when `cargo test` built it already) and returns the path cargo
/// reports. The target directory may be shared with other checkouts, whose
/// builds link their own `examples/host` there: cargo links this
/// checkout's again as it finishes, and the test copies it at once (see
/// `private_copy`).
fn host_binary() -> PathBuf {
    let features: Vec<&str> = [
        ("prometheus", cfg!(feature = "prometheus")),
        ("redis", cfg!(feature = "redis")),
        ("objects", cfg!(feature = "objects")),
        ("opentelemetry", cfg!(feature = "opentelemetry")),
        ("cli", cfg!(feature = "cli")),
        ("test-util", cfg!(feature = "test-util")),
        ("wasix", cfg!(feature = "wasix")),
        ("host-interrupt", cfg!(feature = "host-interrupt")),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
    .collect();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", "host", "--message-format=json"])
        .args(["--no-default-features", "--features", &features.join(",")]);
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let out = cargo.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "cargo build --example host failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "host")
        .find_map(|m| m["filenames"][0].as_str().map(PathBuf::from))
        .expect("cargo reported the example's binary")
}

/// A copy of `binary` in `dir`, which no other build can replace while
/// the test runs it.
fn private_copy(binary: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("host");
    std::fs::copy(binary, &copy).unwrap();
    copy
}

struct Host {
    child: Child,
    addr: SocketAddr,
    /// The host's stdout, kept open so that it never writes to a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Host {
    fn start(binary: &Path, modules: &Path, cache: &Path) -> Host {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--cache-name", "host-test"])
            .arg("--modules")
            .arg(modules)
            .arg("--cache-dir")
            .arg(cache)
            .args([
                "--max-concurrency",
                "2",
                "--timeout",
                "3s",
                "--queue-timeout",
                "5s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Host {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// SIGTERM, then the exit status (within 10 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "host did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn served(&self) -> &str {
        self.headers
            .get("x-module-served")
            .map_or("", |v| v.to_str().unwrap())
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_serves_traps_times_out_restarts_from_disk_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let built = tokio::task::spawn_blocking(host_binary).await.unwrap();
    let binary = private_copy(&built, tmp.path());
    let modules = tmp.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    let write = |name: &str, wat: &[u8]| {
        std::fs::write(modules.join(name), wat::parse_bytes(wat).unwrap()).unwrap()
    };
    write("add.wasm", ADD_WAT);
    write("trap.wasm", TRAP.as_bytes());
    write("loops.wasm", LOOPS.as_bytes());
    write("library.wasm", LIBRARY.as_bytes());
    std::fs::write(modules.join("invalid.wasm"), b"\0asm but not really").unwrap();
    let cache = tmp.path().join("cache");
    let mut host = Host::start(&binary, &modules, &cache);
    let addr = host.addr;

    // Answers, the first compiled, the next from memory.
    let a = get(addr, "/healthz").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    let a = get(addr, "/run/add/add?args=2,40").await;
    assert_eq!(
        (a.status, a.body.as_str(), a.served()),
        (200, "42\n", "compiled"),
        "{}",
        a.body
    );
    // The loader answers before it saves: until the save is done, a
    // request joins that load ("coalesced"); then it is a memory hit.
    let waited = Instant::now();
    loop {
        let a = get(addr, "/run/add/add?args=-1,1").await;
        assert_eq!((a.status, a.body.as_str()), (200, "0\n"), "{}", a.body);
        match a.served() {
            "memory" => break,
            "coalesced" if waited.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("second request served by {other}"),
        }
    }
    let a = get(addr, "/run/add").await;
    assert_eq!((a.status, a.body.as_str()), (200, "instantiated\n"));
    let a = get(addr, "/modules").await;
    assert_eq!(a.body, "add\ninvalid\nlibrary\nloops\ntrap\n");

    // Clients' mistakes.
    let a = get(addr, "/run/nothing").await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = get(addr, "/run/add/sub?args=1,2").await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = get(addr, "/run/add/add?args=1,x").await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = get(addr, "/run/add/add?args=1").await;
    assert_eq!(a.status, 400, "{}", a.body);

    // Modules' failures: clean answers, the host stays up.
    let a = get(addr, "/run/trap/boom").await;
    assert_eq!(a.status, 502);
    assert!(
        a.body.contains("trapped") && a.body.contains("unreachable"),
        "{}",
        a.body
    );
    for _ in 0..2 {
        let a = get(addr, "/run/invalid").await;
        assert_eq!(a.status, 502);
        assert!(
            a.body.contains("module `invalid` is not valid wasm"),
            "{}",
            a.body
        );
    }
    let a = get(addr, "/run/library/answer").await;
    assert_eq!((a.status, a.body.as_str()), (200, "42\n"), "{}", a.body);
    let a = get(addr, "/run/library/ask").await;
    assert_eq!(a.status, 502);
    assert!(
        a.body
            .contains("import env.host_fn is not provided by this host"),
        "{}",
        a.body
    );

    // Two endless loops fill both execution slots: each is answered 504 at
    // its deadline and interrupted, so the slots come back.
    let started = Instant::now();
    let (a, b) = tokio::join!(get(addr, "/run/loops/spin"), get(addr, "/run/loops/spin"));
    assert_eq!((a.status, b.status), (504, 504), "{} {}", a.body, b.body);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let metrics = loop {
        let m = get(addr, "/metrics").await.body;
        // Live sizing publishes every second.
        if sample(&m, "host_executions_runaway") == Some(0.0)
            && sample(&m, "host_executions_in_flight") == Some(0.0)
            && m.contains(r#"tierscope_sizing_hit_ratio{cache="host-test""#)
        {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "runaway executions not interrupted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let a = get(addr, "/run/add/add?args=1,1").await;
    assert_eq!((a.status, a.body.as_str()), (200, "2\n"), "{}", a.body);

    // /metrics: tierscope's series under the host's cache name, and the host's.
    for series in [
        r#"tierscope_lookups_total{cache="host-test",tier="memory",result="hit"}"#,
        r#"tierscope_lookups_total{cache="host-test",tier="disk",result="miss"}"#,
        r#"tierscope_compilations_total{cache="host-test",result="ok"}"#,
        r#"host_requests_total{outcome="ok"}"#,
        r#"host_requests_total{outcome="trap"}"#,
        r#"host_requests_total{outcome="timeout"}"#,
        r#"host_requests_total{outcome="not_found"}"#,
        r#"host_requests_total{outcome="bad_request"}"#,
    ] {
        assert!(
            sample(&metrics, series).is_some_and(|v| v >= 1.0),
            "{series} in\n{metrics}"
        );
    }
    // The invalid module was compiled once, then remembered.
    assert_eq!(
        sample(
            &metrics,
            r#"tierscope_compilations_total{cache="host-test",result="error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"host_requests_total{outcome="invalid"}"#),
        Some(2.0)
    );
    assert!(
        metrics.contains("# TYPE host_request_duration_seconds histogram"),
        "{metrics}"
    );
    assert!(metrics.contains("process_resident_memory_bytes"));
    // Prometheus's own linter accepts the exposition (help text, units, names).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/test installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM with a request in flight: it is answered, then the host exits 0.
    let slow = tokio::spawn(get(addr, "/run/loops/slow?args=600000000"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = host.terminate();
        drop(host);
        status
    })
    .await
    .unwrap();
    let a = slow.await.unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "0\n"), "{}", a.body);
    assert!(status.success(), "{status}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );

    // A restart: the module comes from the disk tier, not a compile.
    let host = Host::start(&binary, &modules, &cache);
    let a = get(host.addr, "/run/add/add?args=20,22").await;
    assert_eq!(
        (a.status, a.body.as_str(), a.served()),
        (200, "42\n", "disk"),
        "{}",
        a.body
    );
}
