//! Support for the cluster tests: a `redis-server` of the test's own (a
//! free loopback port, its own directory, AOF with `appendfsync always`)
//! that a test can stop and start again on the same data, and a relay
//! that cuts a node's connection to it at a chosen moment.
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

/// An in-process broker node reaching Redis through `cutter`.
pub async fn node_behind(cutter: &Cutter, extra: &str) -> TestServer {
    TestServer::start(&format!("{extra}\n{}", cutter.cluster_toml())).await
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

type Armed = std::sync::Arc<std::sync::Mutex<Option<(Cut, Vec<u8>)>>>;

/// Where [`Cutter`] cuts a connection carrying a call of the function it
/// was armed for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Before the call reaches Redis: it never runs.
    BeforeTheCall,
    /// When Redis's answer comes back: the call ran, its node never hears.
    AtTheAnswer,
}

/// A TCP relay between nodes and a Redis, passing every byte through
/// until armed: then it cuts the next connection that carries a call of
/// the function it was armed for (`post`: a `SendMessage`), where [`Cut`]
/// says (both ways closed, as a network failure or a Redis killed right
/// after its write would).
pub struct Cutter {
    pub port: u16,
    armed: Armed,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Cutter {
    pub fn start(redis: &Redis) -> Cutter {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = redis.port;
        let armed: Armed = Default::default();
        let cuts: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (armed_, cuts_) = (armed.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let cut_answer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let close = {
                    let both = std::sync::Arc::new((
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                    ));
                    move || {
                        let _ = both.0.shutdown(std::net::Shutdown::Both);
                        let _ = both.1.shutdown(std::net::Shutdown::Both);
                    }
                };
                // Calls: node → Redis.
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed, cuts, cut, close_) = (
                    armed_.clone(),
                    cuts_.clone(),
                    cut_answer.clone(),
                    close.clone(),
                );
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => return close_(),
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let mut armed = armed.lock().unwrap();
                        let called = armed.as_ref().is_some_and(|(_, function)| {
                            chunk.windows(function.len()).any(|w| w == function)
                        });
                        match armed.take_if(|_| called).map(|(cut, _)| cut) {
                            Some(Cut::BeforeTheCall) => {
                                cuts.fetch_add(1, Ordering::SeqCst);
                                return close_();
                            }
                            Some(Cut::AtTheAnswer) => cut.store(true, Ordering::SeqCst),
                            None => {}
                        }
                        drop(armed);
                        if to.write_all(chunk).is_err() {
                            return close_();
                        }
                    }
                });
                // Answers: Redis → node.
                let (mut from, mut to) = (server, client);
                let cuts = cuts_.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => return close(),
                            Ok(n) => n,
                        };
                        if cut_answer.load(Ordering::SeqCst) {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return close();
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            return close();
                        }
                    }
                });
            }
        });
        Cutter { port, armed, cuts }
    }

    /// `[cluster]` for a broker reaching Redis through this relay.
    pub fn cluster_toml(&self) -> String {
        format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:{}/0\"\n",
            self.port
        )
    }

    /// Cuts the next connection that carries a call of `function` (the
    /// library's name for it ends `_<function>`).
    pub fn arm(&self, cut: Cut, function: &str) {
        let name = format!("_{function}\r\n").into_bytes();
        *self.armed.lock().unwrap() = Some((cut, name));
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}
