//! Real servers for tests: free loopback ports, required binaries, and a
//! guard that stops a server when the test ends.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
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

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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
