//! The harness binary against real server processes on loopback: the
//! uWebSockets.js comparison peer (its npm packages installed from the
//! lockfile with `npm ci` when missing, as `clients/js/run-tests.sh` does)
//! and the broker binary of this workspace. Each run is a tiny bounded
//! scenario; the checks read the harness's JSON report.
//!
//! The broker binary is `SWITCHBOARD_BIN`, or `switchboard` beside this
//! build's `switchboard-load` (`cargo test --workspace` builds both; alone,
//! `cargo build -p switchboard` first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Once};
use std::time::Duration;

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_switchboard-load");
const SECRET: &str = "load-tests-servers-secret";

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/uws")
}

/// The peer's npm packages, exactly as locked, once per test binary.
fn ensure_peer_installed() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let dir = peer_dir();
        if dir
            .join("node_modules/@trufflesuite/uws-js-unofficial")
            .is_dir()
        {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("run npm ci (node >= 20 and npm are needed for the uws peer)");
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn broker_bin() -> PathBuf {
    let bin = std::env::var_os("SWITCHBOARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(LOAD).with_file_name("switchboard"));
    assert!(
        bin.is_file(),
        "no broker binary at {}: build it with `cargo build -p switchboard` \
         (`cargo test --workspace` does) or set SWITCHBOARD_BIN",
        bin.display()
    );
    bin
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: Option<TempDir>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Start `cmd` and wait (bounded) for its `... listening on ADDR` line.
    fn start(mut cmd: Command, dir: Option<TempDir>) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Keep draining stdout for the process's whole life.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(" listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("{cmd:?} did not say it was listening within 20 s");
            }
        };
        Server {
            child,
            url: format!("ws://{addr}/ws"),
            _dir: dir,
        }
    }

    fn peer() -> Server {
        ensure_peer_installed();
        let mut cmd = Command::new("node");
        cmd.arg(peer_dir().join("server.js")).args(["--port", "0"]);
        Server::start(cmd, None)
    }

    fn broker() -> Server {
        let dir = TempDir::new("broker");
        let config = dir.0.join("config.toml");
        std::fs::write(
            &config,
            "durability = \"memory\"\n[rate_limits]\nenabled = false\n",
        )
        .expect("write broker config");
        let mut cmd = Command::new(broker_bin());
        cmd.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn");
        Server::start(cmd, Some(dir))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "switchboard-load-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the harness with `args` (after the common ones) and return its
/// JSON report; it must exit 0.
fn load(servers: &[&Server], target: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(LOAD);
    cmd.args(["--quiet", "--json", "--duration", "30", "--target", target])
        .env("SWITCHBOARD_JWT_SECRET", SECRET);
    for s in servers {
        cmd.args(["--url", &s.url]);
        cmd.args(["--server-pid", &s.pid().to_string()]);
    }
    let out = cmd.args(args).output().expect("run switchboard-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "switchboard-load {args:?} exited {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// What every clean run shows.
fn assert_clean(r: &Value) {
    assert_eq!(r["completed"], true, "{r:#}");
    assert_eq!(u(&r["errors_total"]), 0, "{r:#}");
    assert_eq!(u(&r["connections"]["failed"]), 0, "{r:#}");
    assert_eq!(
        u(&r["order"]["gaps"]) + u(&r["order"]["duplicates"]),
        0,
        "{r:#}"
    );
}

/// The same three scenarios against either server, with the same checks.
fn scenarios_against(server: &Server, target: &str) {
    let r = load(
        &[server],
        target,
        &["fanout", "--observers", "20", "--messages", "50"],
    );
    assert_clean(&r);
    assert_eq!(r["target"], target);
    assert_eq!(u(&r["deliveries"]["received"]), 50 * 21, "{r:#}");
    assert_eq!(u(&r["deliveries"]["missing"]), 0, "{r:#}");
    let srv = &r["server"];
    assert_eq!(srv["pids"], serde_json::json!([server.pid()]));
    assert!(
        srv["cpu_user_s"].is_number() && srv["cpu_system_s"].is_number(),
        "{srv:#}"
    );
    assert!(srv["cpu_user_us_per_delivery"].is_number(), "{srv:#}");
    // 200-byte bodies plus the push around them.
    assert!(
        r["deliveries"]["mean_frame_bytes"].as_f64().unwrap() > 200.0,
        "{r:#}"
    );

    let r = load(
        &[server],
        target,
        &[
            "chat",
            "--engagements",
            "10",
            "--rate",
            "200",
            "--run",
            "1",
            "--typing-share",
            "0.5",
        ],
    );
    assert_clean(&r);
    let acked = u(&r["messages"]["acked"]);
    assert!(acked > 100, "{r:#}");
    assert_eq!(u(&r["deliveries"]["received"]), 2 * acked, "{r:#}");
    assert_eq!(u(&r["deliveries"]["missing"]), 0, "{r:#}");
    assert!(u(&r["typing_received"]) > 0, "typing pushes: {r:#}");
    assert!(r["latency_us"]["p99"].is_number(), "{r:#}");

    let r = load(
        &[server],
        target,
        &[
            "idle",
            "--connections",
            "200",
            "--hold",
            "1",
            "--settle",
            "0",
        ],
    );
    assert_clean(&r);
    assert_eq!(r["metrics"]["sessions connected"], 200.0, "{r:#}");
    assert!(r["server"]["rss_per_connection_bytes"].is_number(), "{r:#}");
}

#[test]
fn uws_peer_runs_fanout_chat_and_idle() {
    let peer = Server::peer();
    scenarios_against(&peer, "uws");
}

#[test]
fn broker_runs_the_same_scenarios() {
    let broker = Server::broker();
    scenarios_against(&broker, "switchboard");
}

#[test]
fn connections_spread_over_several_urls_and_pids() {
    let a = Server::peer();
    let b = Server::peer();
    // Idle sessions: half on each server, CPU and RSS per process.
    let r = load(
        &[&a, &b],
        "uws",
        &[
            "idle",
            "--connections",
            "100",
            "--hold",
            "1",
            "--settle",
            "0",
        ],
    );
    assert_clean(&r);
    assert_eq!(r["connections"]["ok_per_url"], serde_json::json!([50, 50]));
    let procs = r["server"]["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 2, "{r:#}");
    assert_eq!(procs[0]["pid"], a.pid());
    assert_eq!(procs[1]["pid"], b.pid());
    let sum: f64 = procs.iter().map(|p| p["cpu_s"].as_f64().unwrap()).sum();
    assert!(
        (sum - r["server"]["cpu_s"].as_f64().unwrap()).abs() < 1e-6,
        "{r:#}"
    );

    // Chat over two servers that share nothing: every engagement's agent is
    // on the other server than its customer, so each message reaches only
    // its author's echo (a cluster would deliver it to both).
    let r = load(
        &[&a, &b],
        "uws",
        &[
            "--drain",
            "1",
            "chat",
            "--engagements",
            "6",
            "--rate",
            "120",
            "--run",
            "1",
            "--typing-share",
            "0",
        ],
    );
    assert_eq!(r["connections"]["ok_per_url"], serde_json::json!([6, 6]));
    let acked = u(&r["messages"]["acked"]);
    assert!(acked > 50, "{r:#}");
    assert_eq!(u(&r["deliveries"]["received"]), acked, "{r:#}");
    assert_eq!(u(&r["deliveries"]["missing"]), acked, "{r:#}");
}

#[test]
fn refuses_what_the_peer_cannot_do() {
    for args in [
        &["--target", "uws", "--encoding", "msgpack", "idle"][..],
        &["--target", "uws", "churn"][..],
        &["--url", "ws://127.0.0.1:1/ws,ws://10.0.0.1:2/ws", "idle"][..],
    ] {
        let out = Command::new(LOAD).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
