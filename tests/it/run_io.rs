//! `tierscope run` as users of `wasmer run` / `wasmtime run` use it, with
//! small WASI programs (`tests/it/wat/`): stdin from a pipe, host
//! directories read and written, environment variables, `--invoke`,
//! modules that cannot run refused before anything is compiled, and
//! messages that say what happened.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// The WASI programs, as WebAssembly text.
pub const CAT: &str = include_str!("wat/cat.wat");
pub const FILES: &str = include_str!("wat/files.wat");
pub const ENV: &str = include_str!("wat/env.wat");
pub const REACTOR: &str = include_str!("wat/reactor.wat");
pub const HOST_REACTOR: &str = include_str!("wat/host_reactor.wat");
pub const EXIT45: &str = include_str!("wat/exit45.wat");
pub const YES: &str = include_str!("wat/yes.wat");

/// `wat` compiled to `dir/name` (a `.wasm` binary, as users have).
pub fn wasm(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

/// `tierscope ARGS` with its cache in `cache`, run in `cwd`, fed `stdin`.
pub fn tierscope_in(args: &[&str], cache: &Path, cwd: &Path, stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(args)
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Fed from a thread of its own: the program may write before it has
    // read everything (a pipe holds only so much).
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Entry files in the cache `tierscope run` uses under `cache_home`.
pub fn cache_entries(cache_home: &Path) -> Vec<PathBuf> {
    crate::common::walk(&cache_home.join("tierscope"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect()
}

fn assert_clean(out: &Output) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn stdin_reaches_the_program_through_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = wasm(tmp.path(), "cat.wasm", CAT);
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = tierscope_in(
        &["run", cat.to_str().unwrap()],
        tmp.path(),
        tmp.path(),
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdout differs from stdin");
    // An empty stdin is end of file at once.
    let out = tierscope_in(&["run", cat.to_str().unwrap()], tmp.path(), tmp.path(), b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_clean(&out);
}

#[test]
fn a_mapped_host_directory_is_read_and_written() {
    let tmp = tempfile::tempdir().unwrap();
    let files = wasm(tmp.path(), "files.wasm", FILES);
    let files = files.to_str().unwrap();
    let work = tmp.path().join("work");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    std::fs::write(data.join("other.txt"), "x").unwrap();
    let listed = |out: &Output| {
        let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
        lines.sort();
        lines
    };

    // wasmtime's spelling, at a guest path of our choosing.
    let out = tierscope_in(
        &["run", "--dir", "data::/in", files, "/", "in"],
        tmp.path(),
        &work,
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        listed(&out),
        [".", "..", "from the host", "in.txt", "other.txt"]
    );
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "written by wasm\n"
    );
    std::fs::remove_file(data.join("out.txt")).unwrap();

    // wasmer's spelling.
    let out = tierscope_in(
        &["run", "--mapdir", "/in:data", files, "/", "in"],
        tmp.path(),
        &work,
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(data.join("out.txt").exists());
    std::fs::remove_file(data.join("out.txt")).unwrap();

    // `--dir .`: the current directory is the program's, relative paths
    // (through the "." preopen) mean what they mean on the host.
    let out = tierscope_in(
        &["run", "--dir", ".", files, ".", "data"],
        tmp.path(),
        &work,
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from the host"));
    assert!(data.join("out.txt").exists());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    assert_clean(&out);
}

#[test]
fn what_the_program_writes_outside_host_directories_is_not_lost_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let files = wasm(tmp.path(), "files.wasm", FILES);
    // No directory given: the program writes /tmp/out.txt in memory.
    let out = tierscope_in(
        &["run", files.to_str().unwrap(), "/", "tmp"],
        tmp.path(),
        tmp.path(),
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("wrote 1 file") && err.contains("/tmp/out.txt") && err.contains("--dir"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn environment_variables_are_set_and_forwarded_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let env = wasm(tmp.path(), "env.wasm", ENV);
    let env = env.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierscope"));
        cmd.arg("run")
            .args(args)
            .env("XDG_CACHE_HOME", tmp.path())
            .env("TIERSCOPE_TEST_HOST_VAR", "from the host");
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        run(&["--env", "A=1", "--env", "B=x=y", env]),
        ["A=1", "B=x=y"]
    );
    let forwarded = run(&["--forward-host-env", "--env", "A=2", env]);
    assert!(forwarded.contains(&"A=2".to_string()), "{forwarded:?}");
    assert!(
        forwarded.contains(&"TIERSCOPE_TEST_HOST_VAR=from the host".to_string()),
        "{forwarded:?}"
    );
    // A malformed variable is bad input.
    let out = tierscope_in(
        &["run", "--env", "NOEQUALS", env],
        tmp.path(),
        tmp.path(),
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected NAME=VALUE"));
}

#[test]
fn invoke_calls_a_reactor_function_after_initialize() {
    let tmp = tempfile::tempdir().unwrap();
    let reactor = wasm(tmp.path(), "reactor.wasm", REACTOR);
    let reactor = reactor.to_str().unwrap();
    let run = |args: &[&str]| tierscope_in(args, tmp.path(), tmp.path(), b"");

    let out = run(&["run", "--invoke", "add", reactor, "2", "40"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "initialized\n42\n");

    // Its exit code, its trap, its arguments.
    let out = run(&["run", "--invoke", "quit", reactor]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = run(&["run", "--invoke", "fail", reactor]);
    assert_eq!(out.status.code(), Some(134), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("trapped in `fail`: unreachable"));
    for (args, says) in [
        (&["2"][..], "`add` takes 2 arguments (i32, i32), 1 given"),
        (&["2", "two"][..], "argument 2 `two` is not an i32"),
    ] {
        let mut all = vec!["run", "--invoke", "add", reactor];
        all.extend_from_slice(args);
        let out = run(&all);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    let out = run(&["run", "--invoke", "mul", reactor]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("exports no function `mul` (it exports add, fail, quit)"));
    assert_clean(&out);
}

#[test]
fn modules_that_cannot_run_are_refused_before_compiling() {
    let tmp = tempfile::tempdir().unwrap();
    let reactor = wasm(tmp.path(), "reactor.wasm", REACTOR);
    let host = wasm(tmp.path(), "host.wasm", HOST_REACTOR);
    let no_start = wasm(
        tmp.path(),
        "nostart.wasm",
        r#"(module (func (export "helper")))"#,
    );
    for (file, says) in [
        (
            &reactor,
            "it is a reactor (a library: `_initialize`, no `_start`), not a command; call one of its functions with --invoke NAME (it exports add, fail, quit)",
        ),
        (
            &host,
            "it imports 2 functions that WASI does not provide (2 from `rb-js-abi-host`; e.g. `rb-js-abi-host.eval-js`)",
        ),
        (&no_start, "it has no `_start` (not a WASI command)"),
    ] {
        let out = tierscope_in(
            &["run", "-v", file.to_str().unwrap()],
            tmp.path(),
            tmp.path(),
            b"",
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(says), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains("compil"), "{err}");
    }
    // Nothing was compiled, so nothing was cached.
    assert!(cache_entries(tmp.path()).is_empty());
}

#[test]
fn proc_exit_45_is_the_programs_exit_code_not_a_trap() {
    let tmp = tempfile::tempdir().unwrap();
    let exit45 = wasm(tmp.path(), "exit45.wasm", EXIT45);
    let out = tierscope_in(
        &["run", exit45.to_str().unwrap()],
        tmp.path(),
        tmp.path(),
        b"",
    );
    assert_eq!(out.status.code(), Some(45));
    // proc_exit(45) is the program's own decision: nothing to say.
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn a_save_that_fails_is_said_and_not_called_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = wasm(tmp.path(), "cat.wasm", CAT);
    // A disk tier too small for the entry: compiled, runs, not saved.
    let out = tierscope_in(
        &["run", "-v", "--disk-bytes", "1KiB", cat.to_str().unwrap()],
        tmp.path(),
        tmp.path(),
        b"hi",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi");
    let err = text(&out.stderr);
    assert!(!err.contains("and saved"), "{err}");
    assert!(
        err.contains("was compiled but not saved")
            && err.contains("the next run compiles it again"),
        "{err}"
    );
    assert!(cache_entries(tmp.path()).is_empty());
    // Without --verbose the warning still comes.
    let out = tierscope_in(
        &["run", "--disk-bytes", "1KiB", cat.to_str().unwrap()],
        tmp.path(),
        tmp.path(),
        b"",
    );
    assert!(text(&out.stderr).contains("was compiled but not saved"));
}

#[test]
fn an_unusable_cache_directory_is_refused_with_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = wasm(tmp.path(), "cat.wasm", CAT);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for (dir, says) in [
        (file.to_str().unwrap(), "exists and is not a directory"),
        ("/proc/tierscope-run-test", "cannot create it"),
    ] {
        let out = tierscope_in(
            &["run", "--cache-dir", dir, cat.to_str().unwrap()],
            tmp.path(),
            tmp.path(),
            b"",
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(dir) && err.contains(says), "{err}");
        assert!(!err.contains("plant"), "{err}");
    }
}

#[test]
fn bad_directories_are_refused_before_running() {
    let tmp = tempfile::tempdir().unwrap();
    let files = wasm(tmp.path(), "files.wasm", FILES);
    for (flag, value, says) in [
        ("--dir", "missing", "missing: No such file or directory"),
        ("--dir", "files.wasm", "files.wasm is not a directory"),
        ("--mapdir", "nocolon", "expected GUEST:HOST"),
        ("--dir", ".::../up", "outside the program's root"),
    ] {
        let out = tierscope_in(
            &["run", flag, value, files.to_str().unwrap(), "/", "."],
            tmp.path(),
            tmp.path(),
            b"",
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {value}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
}
