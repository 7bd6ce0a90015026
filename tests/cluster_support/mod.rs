//! Support for the cluster tests: a `redis-server` of the test's own (a
//! free loopback port, its own directory, AOF with `appendfsync always`)
//! that a test can stop and start again on the same data.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{config_file, fresh_data_dir, BrokerProcess, TestServer, SECRET};

pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        let dir = fresh_data_dir().with_extension("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port: free_port(),
            dir,
            child: None,
        };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `[cluster]` for a broker on this Redis.
    pub fn cluster_toml(&self) -> String {
        self.cluster_toml_with("")
    }

    /// `[cluster]` for a broker on this Redis, with more of its `keys`.
    pub fn cluster_toml_with(&self, keys: &str) -> String {
        format!("[cluster]\nredis_url = \"{}\"\n{keys}", self.url())
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&mut self) {
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: what it acknowledged is in its AOF already).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command (inline protocol), its raw answer.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        tcp.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn ping(&self) -> Option<()> {
        self.command("PING")
            .filter(|answer| answer.starts_with("+PONG"))
            .map(|_| ())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An in-process broker node on `redis` (plus `extra` TOML).
pub async fn node(redis: &Redis, extra: &str) -> TestServer {
    node_with(redis, extra, "").await
}

/// An in-process broker node on `redis` (plus `extra` TOML, and
/// `cluster` keys in its `[cluster]` table).
pub async fn node_with(redis: &Redis, extra: &str, cluster: &str) -> TestServer {
    TestServer::start(&format!("{extra}\n{}", redis.cluster_toml_with(cluster))).await
}

/// A node as a process of its own (the `switchboard` binary), so that a
/// test can kill it with SIGKILL: `extra` configuration on this Redis,
/// its configuration file named after `name`.
pub fn node_process(redis: &Redis, name: &str, extra: &str) -> BrokerProcess {
    let config = config_file(
        &format!("{name}-{}.toml", redis.port),
        &format!("{extra}{}", redis.cluster_toml()),
    );
    BrokerProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("SWITCHBOARD_JWT_SECRET", SECRET)],
        &fresh_data_dir(),
    )
}
