//! `tierscope size` from outside: chart paths, errors, help, and first
//! requests reported apart from capacity misses.
#![cfg(feature = "cli")]

use std::{path::Path, process::Command};

use tierscope::sizing::{Request, ServedBy, trace::TierscopeWriter};

use crate::sizing_traces::Rng;

fn tierscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tierscope"))
        .args(args)
        .output()
        .unwrap()
}

/// A demo-like trace: 40 modules of 25 KB-2 MB over 20 s, Zipf-popular,
/// each compiled once (its first request).
fn demo_trace(path: &Path) {
    let mut w = TierscopeWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    let mut rng = Rng(5);
    let sizes: Vec<u64> = (0..40)
        .map(|_| (25_000.0 * 80f64.powf(rng.unit())) as u64)
        .collect();
    let cdf = crate::sizing_traces::zipf_cdf(40, 1.0);
    let mut seen = [false; 40];
    for i in 0..3_000u64 {
        let u = rng.unit();
        let k = cdf.partition_point(|&c| c < u).min(39);
        let mut r = Request::new(i * 6_667, 1_000 + k as u64, sizes[k]);
        if !seen[k] {
            seen[k] = true;
            r.compile_us = Some(sizes[k] / 10);
            r.served = Some(ServedBy::Compile);
        }
        w.write(&r).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn a_plot_prefix_keeps_its_dots_and_every_chart_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("demo.trace");
    demo_trace(&t);
    let prefix = dir.path().join("run.v2");
    let out = tierscope(&[
        "size",
        t.to_str().unwrap(),
        "--memory",
        "8MiB",
        "--disk",
        "16MiB",
        "--plot",
        prefix.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for tier in ["memory", "disk", "stack"] {
        for ext in ["svg", "png"] {
            let f = dir.path().join(format!("run.v2-{tier}.{ext}"));
            assert!(f.exists(), "no {}", f.display());
        }
    }
    assert!(!dir.path().join("run.svg").exists());
}

#[test]
fn a_chart_that_cannot_be_written_still_prints_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("demo.trace");
    demo_trace(&t);
    let prefix = dir.path().join("no such dir").join("chart");
    let out = tierscope(&[
        "size",
        t.to_str().unwrap(),
        "--disk",
        "16MiB",
        "--plot",
        prefix.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("<- current"), "{stdout}");
    assert!(
        stderr.contains("--plot") && stderr.contains("no such dir"),
        "{stderr}"
    );
}

#[test]
fn first_requests_are_reported_apart_from_capacity_misses() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("demo.trace");
    demo_trace(&t);
    // Text: the disk tier alone, its first requests named.
    let out = tierscope(&[
        "size",
        t.to_str().unwrap(),
        "--disk",
        "16MiB",
        "--no-progress",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("40 of them first requests"), "{stdout}");
    assert!(stdout.contains("capacity misses"), "{stdout}");

    // JSON: at sizes past the working set only first requests miss, and
    // capacity misses cost no compile seconds per hour; below it they do.
    let out = tierscope(&[
        "size",
        t.to_str().unwrap(),
        "--memory",
        "1MiB",
        "--disk",
        "16MiB",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let disk = &v["tiers"][1];
    assert_eq!(disk["tier"], "disk");
    assert_eq!(disk["cold_misses"], 40);
    let cold_seconds = disk["cold_compile_seconds"].as_f64().unwrap();
    assert!(cold_seconds > 0.0);
    let points = disk["points"].as_array().unwrap();
    let last = points.last().unwrap();
    assert_eq!(last["misses"], 40);
    assert_eq!(last["capacity_misses"], 0);
    assert_eq!(last["capacity_compile_seconds_per_hour"], 0.0);
    // All misses per hour extrapolate the first compiles; capacity ones
    // do not.
    assert!(last["compile_seconds_per_hour"].as_f64().unwrap() > 0.0);
    let first = &points[0];
    assert!(first["capacity_misses"].as_u64().unwrap() > 0);
    assert!(first["capacity_compile_seconds_per_hour"].as_f64().unwrap() > 0.0);
    let stack = v["stack"].as_array().unwrap();
    assert!(stack.iter().all(|p| p["cold_compiles"] == 40));
    let biggest = stack.last().unwrap();
    assert_eq!(biggest["capacity_compile_seconds_per_hour"], 0.0);
    assert!(biggest["saved_compile_seconds_per_hour"].as_f64().unwrap() > 0.0);
}

#[test]
fn help_ends_with_examples_and_bad_values_get_plain_errors() {
    let out = tierscope(&["size", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let tail = help.trim_end().rsplit("Examples:").next().unwrap();
    assert!(
        help.contains("Examples:") && tail.contains("tierscope size"),
        "{help}"
    );
    assert!(help.contains("0.125,0.25,0.5,1,2,4,8"), "{help}");
    for jargon in ["SHARDS", "feature", "builder"] {
        assert!(!help.contains(jargon), "`{jargon}` in {help}");
    }

    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("demo.trace");
    demo_trace(&t);
    let t = t.to_str().unwrap();
    for (args, want, not) in [
        (
            vec!["size", t, "--disk", "1MiB", "--scales", "-1"],
            "scale `-1`",
            "-- -1",
        ),
        (
            vec!["size", t, "--memory", "0"],
            "1 byte to 16 EiB",
            "panicked",
        ),
        (
            vec!["size", t, "--memory", "1MiB", "--size-on-hit", "keep"],
            "disk tier alone",
            "panicked",
        ),
    ] {
        let out = tierscope(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want) && !stderr.contains(not),
            "{args:?}: {stderr}"
        );
    }
}
