//! `tierscope run` end to end, as a child process: output, exit codes,
//! the second run served from disk.

use crate::common;

use std::{
    path::Path,
    process::{Command, Output},
};

use common::WASI_HELLO_WAT as HELLO;

/// Exits with its number of arguments (program name included) plus 4.
const ARGC: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (call $proc_exit (i32.add (i32.load (i32.const 0)) (i32.const 4)))))"#;

const TRAP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))"#;

fn write_wasm(dir: &Path, name: &str, wat: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

fn tierscope(args: &[&str], cache_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(args)
        .env("XDG_CACHE_HOME", cache_home)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_panic(out: &Output) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn runs_a_wasi_program_and_the_second_run_is_a_disk_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = write_wasm(tmp.path(), "hello.wasm", HELLO);
    let home = tmp.path().join("cache-home");
    let hello = hello.to_str().unwrap();

    let first = tierscope(&["run", "--verbose", hello], &home);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(text(&first.stdout), "hello from wasix\n");
    let err = text(&first.stderr);
    assert!(err.contains("not cached; compiling"), "{err}");
    assert!(
        err.contains("compiled in") && err.contains("and saved"),
        "{err}"
    );
    // The usual cache directory: $XDG_CACHE_HOME/tierscope.
    assert!(home.join("tierscope").is_dir());

    let second = tierscope(&["run", "--verbose", hello], &home);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), "hello from wasix\n");
    let err = text(&second.stderr);
    assert!(err.contains("served by the disk tier"), "{err}");
    assert!(!err.contains("compil"), "{err}");

    // --cache-dir overrides the default.
    let elsewhere = tmp.path().join("elsewhere");
    let third = tierscope(
        &[
            "run",
            "-v",
            "--cache-dir",
            elsewhere.to_str().unwrap(),
            hello,
        ],
        &home,
    );
    assert_eq!(third.status.code(), Some(0));
    assert!(text(&third.stderr).contains("not cached"));
    assert!(elsewhere.is_dir());
}

#[test]
fn the_program_gets_its_arguments_and_its_exit_code_is_passed_through() {
    let tmp = tempfile::tempdir().unwrap();
    let argc = write_wasm(tmp.path(), "argc.wasm", ARGC);
    let argc = argc.to_str().unwrap();
    let out = tierscope(&["run", argc, "--", "a", "b"], tmp.path());
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr)); // 3 args + 4
    assert_no_panic(&out);
    // As with `wasmer run` and `wasmtime run`, everything after the file
    // is the program's, flags included.
    let out = tierscope(&["run", argc, "a", "--dir", "-v"], tmp.path());
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let out = tierscope(&["run", argc, "-h"], tmp.path());
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stdout));
    let out = tierscope(&["run", argc], tmp.path());
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
}

#[test]
fn bad_input_is_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.wasm");
    let out = tierscope(&["run", missing.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("missing.wasm"),
        "{err}"
    );
    assert_no_panic(&out);

    let garbage = tmp.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0\xff\xff\xff").unwrap();
    let out = tierscope(&["run", garbage.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
    assert_no_panic(&out);

    let text_file = tmp.path().join("notes.txt");
    std::fs::write(&text_file, "hello, not wasm").unwrap();
    let out = tierscope(&["run", text_file.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not a WebAssembly module"));
    assert_no_panic(&out);
}

#[test]
fn a_trapping_program_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let trap = write_wasm(tmp.path(), "trap.wasm", TRAP);
    let out = tierscope(&["run", trap.to_str().unwrap()], tmp.path());
    // wasix prints the trap; `run` says so and exits as a native program
    // that aborted would (128 + SIGABRT), as `wasmtime run` does.
    assert_eq!(out.status.code(), Some(134), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("trap.wasm trapped: unreachable (exit code 134)"),
        "{err}"
    );
    assert_no_panic(&out);
}

/// Counts to three billion (a second or more) before returning.
const BUSY: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local i64)
    (loop
      (local.set 0 (i64.add (local.get 0) (i64.const 1)))
      (br_if 0 (i64.lt_u (local.get 0) (i64.const 3000000000))))))"#;

fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn metrics_are_served_while_the_program_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = write_wasm(tmp.path(), "busy.wasm", BUSY);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args([
            "run",
            "--metrics-addr",
            &addr.to_string(),
            busy.to_str().unwrap(),
        ])
        .env("XDG_CACHE_HOME", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The program runs for a second or more after its module was looked
    // up (a disk miss, then a compile): /metrics says so meanwhile.
    let miss = r#"tierscope_lookups_total{cache="run",tier="disk",result="miss"} 1"#;
    let mut last = None;
    let mut seen = false;
    while child.try_wait().unwrap().is_none() {
        if let Some(body) = scrape(addr) {
            seen = body.contains(miss);
            last = Some(body);
            if seen {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        seen,
        "no scrape while the program ran showed {miss}: {last:?}"
    );
}

#[test]
fn linger_keeps_metrics_up_after_a_short_program_at_the_printed_address() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let hello = write_wasm(tmp.path(), "hello.wasm", HELLO);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--linger",
            "3s",
            hello.to_str().unwrap(),
        ])
        .env("XDG_CACHE_HOME", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("tierscope: metrics at http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "{line}");
    // The program has ended: run says how long /metrics stays up.
    line.clear();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!("serving http://{addr}/metrics for 3s more")),
        "{line}"
    );
    let body = scrape(addr).expect("/metrics is served after the program ended");
    assert!(
        body.contains(r#"tierscope_lookups_total{cache="run",tier="disk",result="miss"} 1"#),
        "{body}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
