//! A real Redis Cluster for tests: `masters` `redis-server` processes in
//! cluster mode on free loopback ports, joined by `redis-cli --cluster
//! create`, every process killed on drop. A master can be killed and
//! restarted on the same ports with its `nodes.conf` (its data is not
//! persisted: it comes back empty, holding the same slots).
//!
//! Needs `crate::redis_server` (tests/support/redis_server.rs) beside it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::redis_server::{free_port, redis_server_binary};

/// `redis-cli`: `$REDIS_CLI`, else beside `redis-server`, else on `$PATH`.
pub fn redis_cli_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_CLI") {
        return PathBuf::from(p);
    }
    let beside = redis_server_binary().with_file_name("redis-cli");
    if beside.is_file() {
        return beside;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("redis-cli");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("redis-cli not found (it comes with redis-server: apt-get install -y redis-server)");
}

/// One master of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    /// The cluster bus port, chosen free too (`port + 10000` may not exist).
    bus_port: u16,
    child: Option<Child>,
}

/// A running cluster; see the module docs.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Start `masters` masters (no replicas), create the cluster and wait
    /// until every node reports `cluster_state:ok`.
    ///
    /// The nodes run with `cluster-require-full-coverage no`, as an
    /// operator who wants the other masters to keep serving while one is
    /// down would configure them, and a 1 s node timeout.
    pub fn start(masters: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let mut ports = Vec::new();
        while ports.len() < masters * 2 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes = ports
            .chunks(2)
            .map(|p| Node {
                port: p[0],
                bus_port: p[1],
                child: None,
            })
            .collect();
        let mut cluster = RedisCluster { nodes, dir };
        for i in 0..masters {
            cluster.spawn(i);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(redis_cli_binary())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        assert!(node.child.is_none(), "node {i} already running");
        let child = Command::new(redis_server_binary())
            .args(["--port", &node.port.to_string()])
            .args(["--cluster-port", &node.bus_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--cluster-enabled", "yes"])
            .args([
                "--cluster-config-file",
                &format!("nodes-{}.conf", node.port),
            ])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server for node {i}: {e}"));
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_query::<String>(i, &redis::cmd("PING")).is_err() {
            if let Some(status) = self.nodes[i].child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server node {i} exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "node {i} never answered PING");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (10 s at most) until every running node says `cluster_state:ok`
    /// and sees every other node connected and not failing.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].child.is_some())
                .all(|i| {
                    let info = self
                        .try_query::<String>(i, redis::cmd("CLUSTER").arg("INFO"))
                        .unwrap_or_default();
                    let nodes = self
                        .try_query::<String>(i, redis::cmd("CLUSTER").arg("NODES"))
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                        && nodes.lines().count() == self.nodes.len()
                        && nodes
                            .lines()
                            .all(|l| l.contains(" connected") && !l.contains("fail"))
                });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Number of masters.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node URLs, for `RedisTarget::cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// A command on node `i` itself (no redirection followed).
    pub fn try_query<T: redis::FromRedisValue>(
        &self,
        i: usize,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.nodes[i].port))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        cmd.query(&mut conn)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn keyslot(&self, key: &str) -> u16 {
        let i = self.any_running();
        self.try_query(i, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap()
    }

    /// The node serving `slot`, by the cluster's own view (`CLUSTER
    /// NODES` on a running node), even if that node is down.
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let i = self.any_running();
        let nodes: String = self
            .try_query(i, redis::cmd("CLUSTER").arg("NODES"))
            .unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(port) = fields
                .get(1)
                .and_then(|a| a.split('@').next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false, // migrating/importing markers
                }
            });
            if serves {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .unwrap_or_else(|| panic!("unknown node port {port} in {nodes}"));
            }
        }
        panic!("no node serves slot {slot}:\n{nodes}");
    }

    /// The node serving `key`.
    pub fn owner_of_key(&self, key: &str) -> usize {
        self.owner_of_slot(self.keyslot(key))
    }

    /// True when node `i` itself holds `key` (asked directly: any other
    /// node would answer with a redirection).
    pub fn holds(&self, i: usize, key: &str) -> bool {
        self.try_query::<bool>(i, redis::cmd("EXISTS").arg(key))
            .unwrap_or(false)
    }

    fn any_running(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some())
            .expect("no node of the cluster is running")
    }

    /// Kill node `i` (SIGKILL) and wait for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `i` again on its ports with its `nodes.conf` (it rejoins
    /// with its slots, empty) and wait until the cluster is healthy.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.spawn(i);
        self.wait_healthy();
    }

    /// The directory holding every node's `nodes-<port>.conf`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
