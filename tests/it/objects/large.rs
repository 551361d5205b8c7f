//! Processes of their own: a 136 MB artifact saved and served (each in a
//! child process, whose resident memory is read from `/proc/self/status`:
//! `VmRSS` before, `VmHWM`, the peak, after, reset through
//! `/proc/self/clear_refs`), and two processes sharing one bucket.
//!
//! Each test re-runs this test binary on itself (`--exact NAME`) with
//! `TIERSCOPE_OBJECTS_CHILD` set to the child's role; the parent runs the
//! server and checks what the children print.

use std::{collections::HashMap, process::Command};

use super::*;

const CHILD: &str = "TIERSCOPE_OBJECTS_CHILD";
const ENDPOINT: &str = "TIERSCOPE_OBJECTS_ENDPOINT";
const MODULE_KEY: &str = "TIERSCOPE_OBJECTS_MODULE_KEY";
const DELAY: &str = "TIERSCOPE_OBJECTS_DELAY_MS";
/// Bytes of data in the large module: a 136 MB artifact, as yosys'.
const LARGE_DATA: usize = 136_000_000;

/// (`VmRSS`, `VmHWM`) in bytes.
fn memory() -> (u64, u64) {
    use crate::common::process_memory::{peak_rss_bytes, rss_bytes};
    (rss_bytes(), peak_rss_bytes())
}

/// Make `VmHWM` start again from the current resident size.
fn reset_peak() {
    crate::common::process_memory::reset_peak_rss_bytes();
}

/// The tier a child uses: the parent's server.
fn child_tier() -> ObjectsCache {
    let endpoint = std::env::var(ENDPOINT).unwrap();
    let options = vec![
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true".into()),
        (
            "aws_access_key_id",
            crate::support::s3_server::ACCESS_KEY.into(),
        ),
        (
            "aws_secret_access_key",
            crate::support::s3_server::SECRET_KEY.into(),
        ),
        ("aws_region", crate::support::s3_server::REGION.into()),
    ];
    builder_with("s3://modules/cache", options)
        // Debug builds hash and copy slowly: generous bounds.
        .timeout(Duration::from_secs(30))
        .multipart_threshold(6 << 20)
        .part_bytes(5 << 20)
        .build()
        .unwrap()
}

/// Run this binary's test `name` as a child with `role`; its `key=value`
/// lines.
fn spawn(name: &str, role: &str, server: &S3Server, env: &[(&str, String)]) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env(ENDPOINT, server.endpoint())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn report(child: std::process::Child) -> HashMap<String, String> {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "child failed:\n{text}");
    lines(&text)
}

/// A child whose output was read already: wait for it, and its lines.
fn finish(mut child: std::process::Child, text: &str) -> HashMap<String, String> {
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed:\n{text}");
    lines(text)
}

/// The `key=value` lines a child printed.
fn lines(text: &str) -> HashMap<String, String> {
    text.lines()
        // (libtest may print "test NAME ... " on the same line first)
        .filter_map(|l| l.split_once("child: ").map(|(_, kv)| kv))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(report: &HashMap<String, String>, key: &str) -> u64 {
    report
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
        .parse()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const LARGE: &str = "objects::large::a_136_mb_artifact_is_saved_and_served_without_doubling_memory";

#[test]
fn a_136_mb_artifact_is_saved_and_served_without_doubling_memory() {
    match std::env::var(CHILD).as_deref() {
        Ok("save") => return large_save(),
        Ok("load") => return large_load(),
        _ => {}
    }
    let server = S3Server::start();
    let saved = report(spawn(LARGE, "save", &server, &[]));
    let key = saved["key"].clone();
    let loaded = report(spawn(LARGE, "load", &server, &[(MODULE_KEY, key)]));

    let artifact = number(&saved, "artifact");
    assert!(artifact > 136_000_000, "artifact of {artifact} bytes");
    let grew = |r: &HashMap<String, String>, what: &str| {
        let (before, peak) = (
            number(r, &format!("{what}_before")),
            number(r, &format!("{what}_peak")),
        );
        let x = (peak - before) as f64 / artifact as f64;
        eprintln!(
            "{what}: resident {:.1} MB before, peak {:.1} MB: +{x:.2} x the artifact",
            before as f64 / 1e6,
            peak as f64 / 1e6,
        );
        x
    };
    // wasmer's own `Module::serialize` peaks at about twice the artifact
    // (rkyv's buffer grows by doubling, then becomes a `Vec`): a save may
    // add a quarter of the artifact to that, never a copy.
    let serialize = grew(&saved, "serialize");
    let save = grew(&saved, "save");
    assert!(
        save < serialize + 0.25,
        "save +{save:.2} x, serialize alone +{serialize:.2} x"
    );
    // Served: one buffer, which the module keeps.
    let load = grew(&loaded, "load");
    assert!(load < 1.25, "load +{load:.2} x the artifact");
    assert_eq!(number(&loaded, "artifact"), artifact);
}

fn large_save() {
    let engine = Engine::default();
    let wasm = data_module(LARGE_DATA, 136);
    let key = ModuleHash::new(&wasm);
    let module = Module::new(&engine, &wasm).unwrap();
    drop(wasm);
    let objects = child_tier();
    let rt = runtime();
    let (before, _) = memory();
    reset_peak();
    drop(module.serialize().unwrap());
    let (_, peak) = memory();
    println!("child: serialize_before={before}");
    println!("child: serialize_peak={peak}");
    let (before, _) = memory();
    reset_peak();
    rt.block_on(objects.save(key, &engine, &module)).unwrap();
    let (_, peak) = memory();
    let artifact = rt
        .block_on(object_store::ObjectStoreExt::head(
            &*objects.store(),
            &objects.object_path(key, &engine).as_str().into(),
        ))
        .unwrap()
        .size
        - entry::HEADER_LEN as u64
        - 32;
    println!("child: key={}", hex::encode(key.as_bytes()));
    println!("child: artifact={artifact}");
    println!("child: save_before={before}");
    println!("child: save_peak={peak}");
}

fn large_load() {
    let engine = Engine::default();
    let key: [u8; 32] = hex::decode(std::env::var(MODULE_KEY).unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let objects = child_tier();
    let rt = runtime();
    let (before, _) = memory();
    reset_peak();
    let hit = rt
        .block_on(objects.lookup(
            ModuleHash::from_bytes(key),
            &engine,
            tierscope::Lookup::request(),
        ))
        .unwrap();
    let (_, peak) = memory();
    println!("child: artifact={}", hit.bytes().unwrap());
    println!("child: load_before={before}");
    println!("child: load_peak={peak}");
    drop(hit);
}

const SHARED: &str = "objects::large::two_processes_share_one_bucket_and_upload_once";

#[test]
fn two_processes_share_one_bucket_and_upload_once() {
    if std::env::var(CHILD).as_deref() == Ok("fleet") {
        return fleet_node();
    }
    // Both compile the same module and save it at about the same time
    // (the second 100 ms later, so the two lease requests do not race
    // inside s3s-fs, whose conditional put checks before it writes); each
    // then loads it from the bucket into a fresh engine.
    let server = S3Server::start();
    let mut nodes = [0, 100].map(|delay| {
        let mut child = spawn(SHARED, "fleet", &server, &[(DELAY, delay.to_string())]);
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        loop {
            use std::io::BufRead;
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "a node ended early:\n{seen}"
            );
            seen.push_str(&line);
            if line.contains("child: ready=1") {
                break;
            }
        }
        (child, out, seen)
    });
    for (child, ..) in &mut nodes {
        use std::io::Write;
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let [a, b] = nodes.map(|(child, mut out, mut seen)| {
        use std::io::Read;
        out.read_to_string(&mut seen).unwrap();
        finish(child, &seen)
    });

    assert_eq!(
        number(&a, "uploaded") + number(&b, "uploaded"),
        1,
        "{a:?} {b:?}"
    );
    assert_eq!(number(&a, "hit"), number(&b, "hit"));
    assert!(number(&a, "hit") > 12 << 20);
}

fn fleet_node() {
    let engine = Engine::default();
    let wasm = data_module(12 << 20, 12);
    let key = ModuleHash::new(&wasm);
    let module = Module::new(&engine, &wasm).unwrap();
    let objects = child_tier();
    let events = Events::attach(&objects);
    let delay: u64 = std::env::var(DELAY).unwrap().parse().unwrap();
    let rt = runtime();
    // Compiled: wait for the parent's word, so that both nodes save at the
    // moments it chooses (compile times differ by seconds on a busy
    // machine).
    println!("child: ready=1");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        objects.save(key, &engine, &module).await.unwrap();
        let uploaded = events.count(RequestOp::CompleteMultipart, RequestResult::Ok);
        // The other node may still be uploading.
        let mut hit = None;
        for _ in 0..600 {
            if let Ok(h) = objects
                .lookup(key, &Engine::default(), tierscope::Lookup::request())
                .await
            {
                hit = h.bytes();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("child: uploaded={uploaded}");
        println!("child: hit={}", hit.expect("the module reached the bucket"));
    });
}
