//! The `switchboard` binary: CLI, config file, environment, and graceful
//! shutdown on SIGTERM/SIGINT (sessions closed with 4000, exit 0).

mod common;

use std::process::Command;

use common::{config_file, token, BrokerProcess, Client, Enc};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn start(args: &[&str], envs: &[(&str, &str)]) -> BrokerProcess {
    BrokerProcess::start(args, envs, &common::fresh_data_dir())
}

#[tokio::test]
async fn config_file_env_secret_and_sigterm() {
    let config = config_file(
        "custom.toml",
        "anonymous_customers = true\n[[actions.custom]]\nname = \"contact-sales\"\naction = \"StartEngagement\"\n",
    );
    let mut broker = start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("SWITCHBOARD_JWT_SECRET", common::SECRET)],
    );
    let url = broker.url.clone();
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

    broker.signal("TERM");
    assert_eq!(agent.close_code().await, 4000);
    assert_eq!(customer.close_code().await, 4000);
    let status = tokio::task::spawn_blocking(move || broker.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // And it no longer accepts.
    assert!(Client::open_url(&url, Enc::Json).await.is_err());
}

#[tokio::test]
async fn sigint_and_listen_from_the_environment() {
    let mut broker = start(&[], &[("SWITCHBOARD_LISTEN", "127.0.0.1:0")]);
    let mut c = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    c.connect(json!({})).await.unwrap();
    broker.signal("INT");
    assert_eq!(c.close_code().await, 4000);
    let status = tokio::task::spawn_blocking(move || broker.wait_exit())
        .await
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_bad_config_is_refused_with_a_clear_message() {
    let config = config_file("bad.toml", "[limits]\nmax_frame_byte = 1\n");
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
