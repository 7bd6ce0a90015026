//! Several nodes on one Redis acting as one broker: each test starts its
//! own `redis-server` (free loopback port, own directory, AOF with
//! `appendfsync always`) and two or three nodes on it, and talks to them
//! over real WebSockets.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{node, Redis};
use common::{assert_gapless, read_until, token, Client, Enc};
use serde_json::{json, Value};

const NO_LIMITS: &str = "[rate_limits]\nenabled = false\n";

/// A customer on node A and an agent on node B chat: every message
/// reaches both, with contiguous indexes, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_and_an_agent_on_two_nodes_chat() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = b.staff("agent-1", "agent").await;
    let joined = agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(joined["members"].as_array().unwrap().len(), 2, "{joined}");
    let joined = customer.push("memberJoined").await;
    assert_eq!(joined["identity"], "agent-1");
    for i in 0..10 {
        let (who, body) = if i % 2 == 0 {
            (&mut customer, format!("c{i}"))
        } else {
            (&mut agent, format!("a{i}"))
        };
        let posted = who
            .call("SendMessage", json!({"channelSid": sid, "body": body}))
            .await
            .unwrap();
        assert_eq!(posted["index"], i);
    }
    let seen_by_customer = read_until(&mut customer, 9).await;
    let seen_by_agent = read_until(&mut agent, 9).await;
    assert_gapless(&seen_by_customer, 0, "customer on A");
    assert_gapless(&seen_by_agent, 0, "agent on B");
    let bodies = |m: &[Value]| m.iter().map(|m| m["body"].clone()).collect::<Vec<_>>();
    assert_eq!(bodies(&seen_by_customer), bodies(&seen_by_agent));
    // History on either node.
    let page = agent
        .call("GetMessages", json!({"channelSid": sid, "limit": 5}))
        .await
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[0]["index"], 5);
    assert_eq!(page["hasMore"], true);
}

/// Two writers on two nodes post concurrently: no index is handed out
/// twice, and observers on both nodes see one identical order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_two_nodes_get_one_order() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = b.staff("agent-2", "agent").await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    let mut watch_a = a.staff("watch-a", "agent").await;
    let mut watch_b = b.staff("watch-b", "agent").await;
    for w in [&mut watch_a, &mut watch_b] {
        w.call("Subscribe", json!({"channel": sid})).await.unwrap();
    }
    const EACH: u64 = 100;
    let post = |mut client: Client, tag: &'static str, sid: String| async move {
        let mut indexes = Vec::new();
        for i in 0..EACH {
            let id = client
                .send(
                    "SendMessage",
                    json!({"channelSid": sid, "body": format!("{tag}{i}")}),
                )
                .await;
            let reply = client.reply(id).await;
            indexes.push(reply["result"]["index"].as_u64().expect("acknowledged"));
        }
        indexes
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(post(customer, "a", sid.clone())),
        tokio::spawn(post(agent, "b", sid.clone()))
    );
    let mut all: Vec<u64> = from_a.unwrap().into_iter().chain(from_b.unwrap()).collect();
    all.sort();
    assert_eq!(all, (0..2 * EACH).collect::<Vec<_>>(), "every index once");
    let seen_a = read_until(&mut watch_a, 2 * EACH - 1).await;
    let seen_b = read_until(&mut watch_b, 2 * EACH - 1).await;
    assert_gapless(&seen_a, 0, "observer on A");
    assert_gapless(&seen_b, 0, "observer on B");
    assert_eq!(seen_a, seen_b, "one order on both nodes");
}

/// Tabs of one identity on two nodes share widget state, drafts and the
/// engagement (its start and restart pushed to both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_of_one_identity_on_two_nodes_share_state() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let jwt = token("cust-1", "customer", 3600);
    let mut tab_a = a.staff_token(&jwt).await;
    let mut tab_b = b.staff_token(&jwt).await;
    let sid = tab_a.start_engagement().await;
    let started = tab_b.push("engagementStarted").await;
    assert_eq!(started["channelSid"], sid.as_str());
    // Widget: toggled on A, pushed to B (not to A itself).
    let toggled = tab_a.call("ToggleChatVisibility", json!({})).await.unwrap();
    let pushed = tab_b.push("widgetStateChanged").await;
    assert_eq!(pushed["expanded"], toggled["expanded"]);
    tab_a
        .no_push("widgetStateChanged", Duration::from_millis(300))
        .await;
    // Draft on B, pushed to A.
    tab_b
        .call(
            "SetInputText",
            json!({"channelSid": sid, "body": "half a sen"}),
        )
        .await
        .unwrap();
    let draft = tab_a.push("inputTextSet").await;
    assert_eq!(draft["body"], "half a sen");
    // Messages from B reach A's tab (the channel was followed on A from
    // the engagement's start).
    tab_b
        .call("SendMessage", json!({"channelSid": sid, "body": "from b"}))
        .await
        .unwrap();
    let m = tab_a.push("messageAdded").await;
    assert_eq!(m["body"], "from b");
    // A third tab, on B, sees all of it in its Connect.
    let mut tab_c = Client::open_url(&b.url(), Enc::Json).await.unwrap();
    let connected = tab_c.connect(json!({"token": jwt})).await.unwrap();
    assert_eq!(connected["engagement"]["channelSid"], sid.as_str());
    assert_eq!(connected["engagement"]["lastIndex"], 0);
    assert_eq!(connected["widget"]["expanded"], toggled["expanded"]);
    assert_eq!(connected["inputText"][&sid], "half a sen");
    // Restart on A: B's tabs are told.
    tab_a.call("RestartEngagement", json!({})).await.unwrap();
    let restarted = tab_b.push("engagementRestarted").await;
    assert_eq!(restarted["channelSid"], sid.as_str());
    tab_c.push("engagementRestarted").await;
}

/// Redis unreachable at start: the node refuses to start and names the
/// URL.
#[test]
fn a_node_that_cannot_reach_redis_at_start_says_so() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let (code, stderr) =
        common::refused_start(&common::fresh_data_dir(), &["--redis-url", url.as_str()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&url), "names the URL: {stderr}");
}
