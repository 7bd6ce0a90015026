//! Authentication: JWTs, anonymous customers, the Connect deadline.

mod common;

use std::time::Duration;

use common::{token, token_with, Client, Enc, TestServer};
use serde_json::json;

async fn refused(server: &TestServer, payload: serde_json::Value) -> String {
    let mut c = Client::open(server, Enc::Json).await;
    let code = c.fails("Connect", payload).await;
    assert_eq!(c.close_code().await, 4001, "closed with 4001");
    code
}

#[tokio::test]
async fn bad_tokens_are_unauthorized_and_closed_with_4001() {
    let server = TestServer::start("").await;
    let forged = token_with("not-the-secret", "alice", "agent", 3600);
    assert_eq!(
        refused(&server, json!({"token": forged})).await,
        "unauthorized"
    );
    let expired = token("alice", "agent", -3600);
    assert_eq!(
        refused(&server, json!({"token": expired})).await,
        "unauthorized"
    );
    assert_eq!(
        refused(&server, json!({"token": "garbage"})).await,
        "unauthorized"
    );
    let admin = token("alice", "admin", 3600);
    assert_eq!(
        refused(&server, json!({"token": admin})).await,
        "unauthorized"
    );
    // An identity keeps its role.
    let _agent = server.staff("alice", "agent").await;
    let customer_alice = token("alice", "customer", 3600);
    assert_eq!(
        refused(&server, json!({"token": customer_alice})).await,
        "unauthorized"
    );
    // A customer with a token is a customer, with no resume token.
    let mut c = Client::open(&server, Enc::Json).await;
    let r = c
        .connect(json!({"token": token("cust-1", "customer", 3600)}))
        .await
        .unwrap();
    assert_eq!(
        (r["identity"].clone(), r["role"].clone()),
        (json!("cust-1"), json!("customer"))
    );
    assert!(r.get("resumeToken").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn anonymous_customers_can_be_turned_off() {
    let server = TestServer::start("anonymous_customers = false").await;
    assert_eq!(refused(&server, json!({})).await, "unauthorized");
    let _ok = server.staff("bob", "agent").await;
    server.shutdown().await;
}

#[tokio::test]
async fn no_connect_in_time_closes_with_4001() {
    let server = TestServer::start("[limits]\nconnect_timeout_ms = 300\n").await;
    let mut silent = Client::open(&server, Enc::Json).await;
    let started = std::time::Instant::now();
    assert_eq!(silent.close_code().await, 4001);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A session that connected in time is not affected by the deadline.
    let mut c = server.customer().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.call("GetActions", json!({})).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn anonymous_identities_are_capped_but_known_ones_still_connect() {
    let server = TestServer::start("[identities]\nmax_anonymous = 3\n").await;
    let mut first = server.customer().await;
    let resume = first.connect_result["resumeToken"].clone();
    let _second = server.customer().await;
    let _third = server.customer().await;
    // A fourth new anonymous identity is refused; the session stays open
    // and may try again later.
    let mut fourth = Client::open(&server, Enc::Json).await;
    let err = fourth.call("Connect", json!({})).await.unwrap_err();
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert!(fourth.closed.is_none());
    assert_eq!(fourth.fails("GetActions", json!({})).await, "not_connected");
    // A known anonymous identity (resume token) and a token identity are
    // not new anonymous identities.
    first.call("StartEngagement", json!({})).await.unwrap();
    let mut tab = Client::open(&server, Enc::MsgPack).await;
    tab.connect(json!({"resumeToken": resume})).await.unwrap();
    let _agent = server.staff("bob", "agent").await;
    server.shutdown().await;
}
