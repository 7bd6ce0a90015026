//! The `switchboard` binary: CLI, config file, environment, and graceful
//! shutdown on SIGTERM/SIGINT (sessions closed with 4000, exit 0).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{token, Client, Enc};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Starts the binary; returns it and the `ws://` URL it printed.
fn start(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("SWITCHBOARD_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn switchboard");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("switchboard listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, format!("ws://{addr}/ws"))
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("switchboard did not exit");
}

#[tokio::test]
async fn config_file_env_secret_and_sigterm() {
    let config = temp_file(
        "custom.toml",
        "anonymous_customers = true\n[[actions.custom]]\nname = \"contact-sales\"\naction = \"StartEngagement\"\n",
    );
    let (mut child, url) = start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("SWITCHBOARD_JWT_SECRET", common::SECRET)],
    );
    let mut agent = Client::open_url(&url, Enc::MsgPack).await.unwrap();
    agent
        .connect(json!({"token": token("bob", "agent", 60)}))
        .await
        .expect("the env secret verifies tokens");
    let mut customer = Client::open_url(&url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    customer
        .call("contact-sales", json!({}))
        .await
        .expect("config file read");

    signal(&child, "TERM");
    assert_eq!(agent.close_code().await, 4000);
    assert_eq!(customer.close_code().await, 4000);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // And it no longer accepts.
    assert!(Client::open_url(&url, Enc::Json).await.is_err());
}

#[tokio::test]
async fn sigint_and_listen_from_the_environment() {
    let (mut child, url) = start(&[], &[("SWITCHBOARD_LISTEN", "127.0.0.1:0")]);
    let mut c = Client::open_url(&url, Enc::Json).await.unwrap();
    c.connect(json!({})).await.unwrap();
    signal(&child, "INT");
    assert_eq!(c.close_code().await, 4000);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_bad_config_is_refused_with_a_clear_message() {
    let config = temp_file("bad.toml", "[limits]\nmax_frame_byte = 1\n");
    let out = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_frame_byte"), "{stderr}");
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}
