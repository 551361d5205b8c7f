//! `tierscope run` writes a program's output through a bounded pipe: a
//! program writing without end to a reader that stalls blocks, as a native
//! program would, and tierscope's resident memory stays flat (it once grew
//! past 2 GiB in 8 s); when the reader closes the pipe, the program ends as
//! SIGPIPE ends a native one (exit code 141).

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    common::process_memory::rss_bytes_of,
    run_io::{YES, text, wasm},
};

/// How long the reader stalls.
const STALL: Duration = Duration::from_secs(4);

/// How much tierscope may grow while the reader stalls: a few buffers, far
/// below what an unbounded pipe takes (the program writes gigabytes a
/// second).
const MAX_GROWTH: u64 = 32 << 20;

#[test]
fn a_stalled_reader_keeps_memory_flat_and_a_closed_one_ends_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let yes = wasm(tmp.path(), "yes.wasm", YES);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(["run", yes.to_str().unwrap()])
        .env("XDG_CACHE_HOME", tmp.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();

    // The program runs and its output flows (the module compiled, loaded).
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\n");

    // The reader stalls: the pipe fills and the program blocks in its write.
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_bytes_of(pid).expect("tierscope runs");
    let mut peak = baseline;
    let until = Instant::now() + STALL;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_bytes_of(pid).expect("tierscope still runs"));
    }
    assert!(
        peak <= baseline + MAX_GROWTH,
        "resident memory grew from {} MiB to {} MiB while the reader stalled",
        baseline >> 20,
        peak >> 20
    );

    // The reader reads a little, then goes away: tierscope ends (a hang
    // would be a failure, hence the deadline).
    let mut some = [0u8; 10];
    stdout.read_exact(&mut some).unwrap();
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tierscope still runs 60 s after its reader closed the pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    assert_eq!(status.code(), Some(141), "{}", text(&err));
    assert!(!text(&err).contains("panicked"), "{}", text(&err));
}
