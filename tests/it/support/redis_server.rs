//! A real `redis-server` for tests and benches, on a free loopback port,
//! killed on drop. Missing `redis-server` is a failure, never a skip.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// The `redis-server` binary: `$REDIS_SERVER`, else `/usr/bin/redis-server`,
/// else the first on `$PATH`.
pub fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let default = Path::new("/usr/bin/redis-server");
    if default.is_file() {
        return default.to_path_buf();
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("redis-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "redis-server not found (looked at $REDIS_SERVER, /usr/bin/redis-server and $PATH): \
         these tests need a real Redis; install it with `apt-get install -y redis-server`"
    );
}

/// Options for one server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--requirepass`.
    pub password: Option<String>,
    /// `--cluster-enabled yes`, with every slot assigned to this one node.
    pub cluster: bool,
}

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// The cluster bus port (cluster mode): chosen free, since the default
    /// `port + 10000` does not exist for ports above 55535.
    bus_port: u16,
    options: Options,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start a server on a free port.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Start a server with `options` on a free port.
    pub fn start_with(options: Options) -> Self {
        let port = free_port();
        let bus_port = std::iter::repeat_with(free_port)
            .find(|&p| p != port)
            .unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            bus_port,
            options,
            dir: tempfile::tempdir().expect("temp dir for redis-server"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut cmd = Command::new(redis_server_binary());
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(pw) = &self.options.password {
            cmd.args(["--requirepass", pw]);
        }
        if self.options.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-port", &self.bus_port.to_string()]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; these tests need a real Redis (apt-get install -y redis-server, or point $REDIS_SERVER at the binary)",
                redis_server_binary().display()
            )
        });
        self.child = Some(child);
        self.wait_ready();
        if self.options.cluster {
            self.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self
                .command(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(
                    Instant::now() < deadline,
                    "single-node cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
            }
            if let Ok(reply) = self.try_command(&["PING"])
                && reply.starts_with("+PONG")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A URL with the configured password, if any.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// A URL with another password.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/", self.port)
    }

    /// A plain synchronous client (for arranging and inspecting values).
    #[cfg(feature = "redis")]
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// A plain synchronous connection.
    #[cfg(feature = "redis")]
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// Run a command of text arguments over a fresh socket; the raw RESP
    /// reply (authenticating first when a password is set).
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("{args:?} on port {}: {e}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::new();
        let mut push = |args: &[&str]| {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        };
        let authed = self.options.password.is_some();
        if let Some(pw) = &self.options.password {
            push(&["AUTH", pw]);
        }
        push(args);
        s.write_all(&out)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until every expected reply is complete enough for our checks
        // (simple, error, integer or bulk replies).
        let expected = if authed { 2 } else { 1 };
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if complete_replies(&reply) >= expected {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        Ok(if authed {
            // Drop the AUTH reply.
            text.split_once("\r\n")
                .map(|(_, r)| r.to_string())
                .unwrap_or(text)
        } else {
            text
        })
    }

    /// Kill the server (SIGKILL) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port (empty: nothing is saved).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

/// Count complete top-level RESP replies in `buf` (simple, error, integer
/// and bulk strings only: enough for PING, AUTH, CLUSTER INFO and friends).
fn complete_replies(buf: &[u8]) -> usize {
    let mut i = 0;
    let mut count = 0;
    while i < buf.len() {
        let Some(end) = buf[i..].windows(2).position(|w| w == b"\r\n") else {
            return count;
        };
        let line = &buf[i..i + end];
        i += end + 2;
        if line.first() == Some(&b'$') {
            let len: i64 = std::str::from_utf8(&line[1..])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            if len >= 0 {
                let need = len as usize + 2;
                if buf.len() < i + need {
                    return count;
                }
                i += need;
            }
        }
        count += 1;
    }
    count
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP server that accepts connections and never answers: a stalled or
/// black-holed Redis. Stops accepting when dropped.
pub struct SilentServer {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    /// Listen on a free loopback port.
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
