//! The demo's command line refuses what it cannot do, at once, with exit
//! code 2 and a message that says why.

use std::process::Command;

fn demo(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .arg("demo")
        .args([
            "--no-progress",
            "--duration",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_absurd_module_size_is_refused_with_the_accepted_range() {
    let (code, err) = demo(&["--corpus", "2", "--max-wasm-bytes", "1TB"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("between 4KB and 64MiB"), "{err}");
}

#[test]
fn an_unusable_cache_directory_is_refused_at_start() {
    let (code, err) = demo(&["--cache-dir", "/proc/tierscope-demo-test"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/proc/tierscope-demo-test"), "{err}");
    assert!(err.contains("cannot create it"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, err) = demo(&["--cache-dir", file.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn the_metrics_address_printed_is_the_one_bound() {
    let (code, err) = demo(&["--corpus", "2", "--max-wasm-bytes", "8KB", "--no-sizing"]);
    assert_eq!(code, Some(0), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("metrics: http://"))
        .unwrap_or_else(|| panic!("no metrics line: {err}"));
    assert!(!line.contains(":0/"), "{line}");
    let port: u16 = line
        .trim_start_matches("metrics: http://127.0.0.1:")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(port > 0);
}
