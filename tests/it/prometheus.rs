//! Against a real Prometheus: a running demo is scraped, and every PromQL
//! expression of every dashboard panel and every recording rule returns a
//! non-empty result; `promtool check metrics` accepts the exporter's
//! output; the alerting and recording rules load without error.
//!
//! The demo runs the whole stack, memory -> disk -> Redis, so that the
//! remote-tier panels have data too. Needs the `prometheus`, `promtool` and
//! `redis-server` binaries (Debian packages `prometheus` and
//! `redis-server`, installed by scripts/test). A missing binary fails the
//! test; it is never skipped.

use crate::support::redis_server;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis_server::{RedisServer, free_port};
use serde_json::Value;

const CACHE: &str = "modules";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A plain HTTP/1.0 GET on loopback; returns (status, body).
fn http_get(port: u16, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Run an instant query; Err carries Prometheus' error text.
fn query(port: u16, promql: &str) -> Result<Vec<Value>, String> {
    let (status, body) = http_get(port, &format!("/api/v1/query?query={}", urlencode(promql)))
        .map_err(|e| format!("HTTP: {e}"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {}", v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every `expr` of every panel target, rows' nested panels included.
fn panel_exprs(dashboard: &Value, out: &mut Vec<(String, String)>) {
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_string()));
            }
        }
        panel_exprs(panel, out);
    }
}

/// Replace Grafana's variables with concrete values, as Grafana would.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m");
    // Longest names first so `$tier` does not clobber `$tier_x`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in &vars {
        for pat in [
            format!("${{{k}:regex}}"),
            format!("${{{k}:pipe}}"),
            format!("${{{k}}}"),
            format!("${k}"),
        ] {
            e = e.replace(&pat, v);
        }
    }
    e
}

/// Values for the dashboard's template variables: the first option of a
/// custom/constant variable, or what the demo provides.
fn variable_values(dashboard: &Value, tiers: &[&str]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let value = match name.as_str() {
            "cache" => CACHE.to_string(),
            "tier" => tiers.join("|"),
            "remote_tier" => "redis".to_string(),
            "first_tier" => "memory".to_string(),
            "datasource" => "prometheus".to_string(),
            _ => v["current"]["value"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    v["query"]
                        .as_str()
                        .map(|q| q.split(',').next().unwrap_or(q).trim().to_string())
                })
                .unwrap_or_default(),
        };
        vars.push((name, value));
    }
    vars
}

#[test]
fn every_dashboard_query_and_rule_has_data_in_a_real_prometheus() {
    let prometheus = require("prometheus");
    let promtool = require("promtool");
    let tmp = tempfile::tempdir().unwrap();

    let redis = RedisServer::start();

    // 1. The demo, small modules and a small memory tier so that hits,
    //    misses, promotions and evictions all happen quickly.
    let redis_url = redis.url();
    let metrics_port = free_port();
    let demo = Server::start(
        Command::new(env!("CARGO_BIN_EXE_tierscope"))
            .args([
                "demo",
                "--duration",
                "240",
                "--no-progress",
                "--corpus",
                "16",
                "--max-wasm-bytes",
                "24KB",
                "--memory-bytes",
                "300KB",
                // The disk tier holds a part of the corpus too, so the
                // Redis tier keeps serving hits after the warm-up.
                "--disk-bytes",
                "600KB",
                // A small code budget: engine switches, and their reloads,
                // happen every few seconds.
                "--code-budget",
                "256KB",
                "--concurrency",
                "4",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--cache-dir",
                tmp.path().join("cache").to_str().unwrap(),
                "--redis",
                &redis_url,
                // An object store below Redis (in the demo's memory: the
                // panels need its request series, not a bucket).
                "--objects",
                "memory:///",
            ])
            .env("TIERSCOPE_REDIS_KEY", "5".repeat(64))
            .env("TIERSCOPE_OBJECTS_KEY", "6".repeat(64)),
        "the demo",
    );
    wait_until("the demo's /metrics", Duration::from_secs(120), || {
        http_get(metrics_port, "/metrics")
            .is_ok_and(|(s, b)| s == 200 && b.contains("tierscope_build_info"))
    });

    // 3. A real Prometheus scraping it every second, with our rules loaded.
    let rules_dir = repo().join("dashboards/prometheus/rules");
    let rule_files: Vec<PathBuf> = std::fs::read_dir(&rules_dir)
        .expect("dashboards/prometheus/rules")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    assert!(!rule_files.is_empty());
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: tierscope-demo\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            rule_files
                .iter()
                .map(|p| format!("  - '{}'\n", p.display()))
                .collect::<String>()
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let data = tmp.path().join("tsdb");
    let _prom = Server::start(
        Command::new(&prometheus).args([
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--log.level=warn",
        ]),
        "prometheus",
    );
    wait_until(
        "Prometheus to scrape the demo",
        Duration::from_secs(60),
        || query(prom_port, "tierscope_build_info").is_ok_and(|r| !r.is_empty()),
    );
    // Let the workload produce every kind of event, and rates fill a window.
    for needed in [
        "tierscope_promotions_total{result=\"ok\"} > 0",
        "tierscope_evictions_total{cause=\"capacity\"} > 0",
        "tierscope_coalesced_total > 0",
        "tierscope_lookups_total{tier=\"disk\",result=\"hit\"} > 0",
        "tierscope_saves_total{tier=\"redis\",result=\"ok\"} > 0",
        "rate(tierscope_lookups_total{tier=\"redis\",result=\"hit\"}[1m]) > 0",
        "tierscope_tier_available{tier=\"redis\"} == 1",
    ] {
        wait_until(needed, Duration::from_secs(120), || {
            query(prom_port, needed).is_ok_and(|r| !r.is_empty())
        });
    }
    // The object store below Redis is asked only when Redis misses, and
    // Redis holds the whole corpus after the warm-up (often before
    // Prometheus's first scrape): empty Redis now and then until
    // Prometheus has seen the object store serve hits, so the lowest
    // tier's series have data.
    wait_until("object-store hits", Duration::from_secs(120), || {
        redis.command(&["FLUSHALL"]);
        std::thread::sleep(Duration::from_secs(1));
        let hits = "rate(tierscope_lookups_total{tier=\"objects\",result=\"hit\"}[1m]) > 0";
        query(prom_port, hits).is_ok_and(|r| !r.is_empty())
    });
    std::thread::sleep(Duration::from_secs(8));

    // The check can fail: a series nobody exports is empty, bad PromQL errs.
    assert!(
        query(prom_port, "tierscope_no_such_metric_total")
            .unwrap()
            .is_empty()
    );
    assert!(query(prom_port, "rate(tierscope_lookups_total[").is_err());

    // 5. promtool accepts the exporter's output as it is.
    let (_, exposition) = http_get(metrics_port, "/metrics").unwrap();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    for h in [
        "tierscope_operation_duration_seconds",
        "tierscope_compile_duration_seconds",
    ] {
        assert!(
            exposition.contains(&format!("# TYPE {h} histogram")),
            "{h} is not a histogram"
        );
    }

    // 4. Every panel expression of every dashboard.
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let vars = variable_values(&dashboard, &["memory", "disk", "redis", "objects"]);
        let mut exprs = Vec::new();
        panel_exprs(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", path.display());
        for (title, expr) in exprs {
            let q = substitute(&expr, &vars);
            checked += 1;
            match query(prom_port, &q) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => failures.push(format!("{}: panel {title:?}: empty: {q}", file(&path))),
                Err(e) => failures.push(format!("{}: panel {title:?}: {e}: {q}", file(&path))),
            }
        }
    }

    // 6. Every rule loaded healthy, and every recording rule has data.
    let (_, rules) = http_get(prom_port, "/api/v1/rules").unwrap();
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let mut recording = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap();
            if rule["health"] != "ok" {
                failures.push(format!(
                    "rule {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            if rule["type"] == "recording" {
                recording += 1;
                match query(prom_port, name) {
                    Ok(r) if !r.is_empty() => {}
                    Ok(_) => failures.push(format!("recording rule {name}: empty")),
                    Err(e) => failures.push(format!("recording rule {name}: {e}")),
                }
            }
        }
    }
    assert!(recording > 0, "no recording rules loaded");
    eprintln!("checked {checked} panel queries and {recording} recording rules");
    assert!(
        failures.is_empty(),
        "{} of {checked} panel queries (and {recording} recording rules) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(demo);
}

fn file(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The path of a binary the test needs. Fails (never skips) when missing,
/// saying how to get it.
pub fn require(binary: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed; scripts/test installs it (Debian: apt-get install {})",
            match binary {
                "promtool" => "prometheus",
                "redis-cli" => "redis-server",
                other => other,
            }
        )
    })
}

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    name: String,
}

impl Server {
    /// Start `command` with its output discarded (stderr kept).
    pub fn start(command: &mut Command, name: &str) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Server {
            child,
            name: name.to_string(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.kill().is_err() {
            eprintln!("{} had already exited", self.name);
        }
        let _ = self.child.wait();
    }
}
