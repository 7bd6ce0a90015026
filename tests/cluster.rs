//! Several nodes on one Redis acting as one broker: each test starts its
//! own `redis-server` (free loopback port, own directory, AOF with
//! `appendfsync always`) and two or three nodes on it, and talks to them
//! over real WebSockets.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{node, node_behind, node_process, node_with, Cut, Cutter, Redis};
use common::{
    assert_gapless, assert_holds_acked, pipeline_messages, read_until, send_messages, token,
    Client, Enc, TestServer,
};
use serde_json::{json, Value};

const NO_LIMITS: &str = "[rate_limits]\nenabled = false\n";

/// Two nodes (with `extra` configuration); a customer on the first starts
/// an engagement and an agent (`agent`) on the second joins it.
async fn engagement_across(
    redis: &Redis,
    extra: &str,
    agent: &str,
) -> (TestServer, TestServer, Client, Client, String) {
    let a = node(redis, extra).await;
    let b = node(redis, extra).await;
    engagement_between(a, b, agent).await
}

/// A customer on node `a` starts an engagement and an agent (`agent`) on
/// node `b` joins it.
async fn engagement_between(
    a: TestServer,
    b: TestServer,
    agent: &str,
) -> (TestServer, TestServer, Client, Client, String) {
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = b.staff(agent, "agent").await;
    agent.join(&sid).await;
    (a, b, customer, agent, sid)
}

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
    let joined = agent.join(&sid).await;
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
            .call(
                "SendMessage",
                json!({"channelSid": sid, "body": body, "messageAttributes": {"i": i, "s": "é\"q"}}),
            )
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
    for m in seen_by_customer.iter().chain(&seen_by_agent) {
        assert_eq!(
            m["attributes"],
            json!({"i": m["index"], "s": "é\"q"}),
            "{m}"
        );
    }
    // History on either node.
    let page = agent
        .call("GetMessages", json!({"channelSid": sid, "limit": 5}))
        .await
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[0]["index"], 5);
    assert_eq!(messages[0]["attributes"], json!({"i": 5, "s": "é\"q"}));
    assert_eq!(page["hasMore"], true);
    // Each message is counted once, by the node that accepted it (five
    // each), and each node counts the deliveries it made (ten each).
    for node in [&a, &b] {
        let counted = node.broker.metrics.snapshot();
        assert_eq!((counted.messages, counted.deliveries), (5, 10));
    }
}

/// Two writers on two nodes post concurrently: no index is handed out
/// twice, and observers on both nodes see one identical order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_two_nodes_get_one_order() {
    let redis = Redis::start();
    let (a, b, customer, agent, sid) = engagement_across(&redis, NO_LIMITS, "agent-2").await;
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

fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap()
}

async fn readyz(url: &str) -> String {
    let request = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    common::raw_exchange(addr_of(url), request, Duration::from_secs(5)).await
}

/// Sends one message and times its answer.
async fn timed_send(
    client: &mut Client,
    sid: &str,
    body: String,
) -> (Result<Value, Value>, Duration) {
    let began = std::time::Instant::now();
    let result = client
        .call("SendMessage", json!({"channelSid": sid, "body": body}))
        .await;
    (result, began.elapsed())
}

/// Redis stopped under writes: every command that needs it fails with
/// `unavailable` within 2 s, `/readyz` says 503 on both nodes, nothing
/// hangs; Redis started again on the same AOF: both nodes resume by
/// themselves and every acknowledged message is there, delivered once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_under_writes() {
    let mut redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut observer = b.staff("observer", "agent").await;
    observer
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let (result, _) = timed_send(&mut customer, &sid, format!("before {i}")).await;
        acked.push(result.unwrap()["index"].as_u64().unwrap());
    }
    redis.stop();
    let mut refused = 0;
    for i in 0..10 {
        let (result, took) = timed_send(&mut customer, &sid, format!("during {i}")).await;
        assert!(took < Duration::from_secs(2), "answered in {took:?}");
        match result {
            Ok(r) => acked.push(r["index"].as_u64().unwrap()),
            Err(e) => {
                assert_eq!(e["code"], "unavailable", "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "writes are refused while Redis is down");
    // Other commands too, on the other node.
    let began = std::time::Instant::now();
    let e = observer
        .call("GetMessages", json!({"channelSid": sid}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "unavailable", "{e}");
    assert!(began.elapsed() < Duration::from_secs(2));
    for url in [a.url(), b.url()] {
        let mut ready = readyz(&url).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ready.starts_with("HTTP/1.1 503") && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ready = readyz(&url).await;
        }
        assert!(ready.starts_with("HTTP/1.1 503"), "not ready: {ready}");
    }

    redis.resume();
    let resumed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (result, took) = timed_send(&mut customer, &sid, "after".into()).await;
            assert!(took < Duration::from_secs(2), "answered in {took:?}");
            match result {
                Ok(r) => return r["index"].as_u64().unwrap(),
                Err(e) => {
                    assert_eq!(e["code"], "unavailable", "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await
    .expect("resumes once Redis is back");
    acked.push(resumed);
    for url in [a.url(), b.url()] {
        let mut ready = readyz(&url).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ready.starts_with("HTTP/1.1 200") && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ready = readyz(&url).await;
        }
        assert!(ready.starts_with("HTTP/1.1 200"), "ready again: {ready}");
    }
    let seen = read_until(&mut observer, resumed).await;
    assert_gapless(&seen, 0, "observer on B");
    assert_holds_acked(&seen, &acked, "delivered");
    // And in history, read on the other node after the restart.
    let page = observer
        .call("GetMessages", json!({"channelSid": sid, "limit": 100}))
        .await
        .unwrap();
    assert_holds_acked(page["messages"].as_array().unwrap(), &acked, "stored");
}

/// The pub/sub connections dropped (`CLIENT KILL TYPE pubsub`) while a
/// writer posts: observers on both nodes still get every message once,
/// in order (gaps filled from the event log, the rest caught up after the
/// reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_loss_fills_gaps_without_duplicates_or_reordering() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut watch_a = a.staff("watch-a", "agent").await;
    let mut watch_b = b.staff("watch-b", "agent").await;
    for w in [&mut watch_a, &mut watch_b] {
        w.call("Subscribe", json!({"channel": sid})).await.unwrap();
    }
    const TOTAL: u64 = 300;
    let mut killed_total = 0;
    for i in 0..TOTAL {
        customer
            .call(
                "SendMessage",
                json!({"channelSid": sid, "body": format!("m{i}")}),
            )
            .await
            .unwrap();
        customer.pushes.clear();
        if i % 60 == 30 {
            let killed = redis.command("CLIENT KILL TYPE pubsub").unwrap();
            killed_total += killed
                .trim()
                .trim_start_matches(':')
                .parse::<u32>()
                .expect("a count");
        }
    }
    assert!(killed_total >= 2, "pub/sub connections were dropped");
    for (name, w) in [("A", &mut watch_a), ("B", &mut watch_b)] {
        let seen = read_until(w, TOTAL - 1).await;
        assert_eq!(seen.len() as u64, TOTAL, "node {name}: each once");
        assert_gapless(&seen, 0, name);
        w.no_push("messageAdded", Duration::from_millis(300)).await;
    }
}

/// `RestartEngagement` on node B while the same customer's tab on node A
/// floods `SendMessage`: none of its messages is delivered after its
/// `memberLeft`, and every acknowledged one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_one_node_while_another_floods() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let jwt = token("cust-r", "customer", 3600);
    let mut flooder = a.staff_token(&jwt).await;
    let mut restarter = b.staff_token(&jwt).await;
    let sid = flooder.start_engagement().await;
    restarter.push("engagementStarted").await;
    let mut agent = b.staff("agent-r", "agent").await;
    agent.join(&sid).await;
    let sid2 = sid.clone();
    let flood = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..200 {
            let id = flooder
                .send(
                    "SendMessage",
                    json!({"channelSid": sid2, "body": format!("f{i}")}),
                )
                .await;
            let reply = flooder.reply(id).await;
            match reply.get("result") {
                Some(r) => acked.push(r["index"].as_u64().unwrap()),
                None => {
                    assert_eq!(reply["error"]["code"], "not_a_member", "{reply}");
                    break;
                }
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    restarter
        .call("RestartEngagement", json!({}))
        .await
        .unwrap();
    let acked = flood.await.unwrap();
    // The agent's view: messages, then the memberLeft, then nothing from
    // the customer.
    let mut delivered = Vec::new();
    loop {
        let frame = agent.read_frame().await.expect("pushes");
        match frame["event"].as_str() {
            Some("messageAdded") => delivered.push(frame["data"]["index"].as_u64().unwrap()),
            Some("memberLeft") => {
                assert_eq!(frame["data"]["identity"], "cust-r");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        delivered, acked,
        "every acknowledged message, before memberLeft"
    );
    agent
        .no_push("messageAdded", Duration::from_millis(500))
        .await;
}

/// History, `after` and `recover` on the other node; a resume token made
/// on one node works on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_and_resume_on_the_other_node() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let mut customer = a.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let identity = customer.identity();
    let sid = customer.start_engagement().await;
    send_messages(&mut customer, &sid, 5).await;
    drop(customer);
    let mut again = Client::open_url(&b.url(), Enc::Json).await.unwrap();
    let connected = again
        .connect(json!({"resumeToken": resume, "recover": {&sid: 1}}))
        .await
        .unwrap();
    assert_eq!(connected["identity"], identity.as_str());
    assert_eq!(connected["recovered"][&sid], true, "{connected}");
    let missed = read_until(&mut again, 4).await;
    assert_gapless(&missed, 2, "recovered on B");
    // An observer on B subscribes with `after`.
    let mut observer = b.staff("obs", "agent").await;
    let sub = observer
        .call("Subscribe", json!({"channel": sid, "after": 2}))
        .await
        .unwrap();
    assert_eq!(sub["recovered"], true, "{sub}");
    let missed = read_until(&mut observer, 4).await;
    assert_gapless(&missed, 3, "after on B");
    // Live after the recovery, from node A.
    let mut agent = a.staff("agent-x", "agent").await;
    agent.join(&sid).await;
    agent
        .call("SendMessage", json!({"channelSid": sid, "body": "live"}))
        .await
        .unwrap();
    assert_eq!(again.push("messageAdded").await["index"], 5);
    assert_eq!(observer.push("messageAdded").await["index"], 5);
}

/// `kill -9` of a node under writes: its client reconnects to the other
/// node (once the dead node's session count has expired with its
/// heartbeat) and recovers; no acknowledged message is lost and no index
/// is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_writes_loses_nothing_acknowledged() {
    let redis = Redis::start();
    let toml = "[rate_limits]\nenabled = false\n[admission]\nmax_sessions_per_identity = 1\n";
    let dying = node_process(&redis, "cluster-kill", toml);
    let survivor = node(&redis, toml).await;
    let mut customer = Client::open_url(&dying.url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    let mut agent = survivor.staff("agent-k", "agent").await;
    agent.join(&sid).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let posted = customer
            .call(
                "SendMessage",
                json!({"channelSid": sid, "body": format!("m{i}")}),
            )
            .await
            .unwrap();
        acked.push(posted["index"].as_u64().unwrap());
    }
    // Writes in flight when the node dies.
    pipeline_messages(&mut customer, &sid, "f", 20).await;
    dying.signal("KILL");
    let mut seen_by_customer = -1i64;
    while let Some(frame) = customer.read_frame().await {
        if frame["event"] == "messageAdded" {
            seen_by_customer = frame["data"]["index"].as_i64().unwrap();
        } else if let Some(index) = frame["result"]["index"].as_u64() {
            acked.push(index);
        }
    }
    // To the other node; the dead node's session stops counting once its
    // heartbeat key expires.
    let reconnected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let mut c = Client::open_url(&survivor.url(), Enc::Json).await.unwrap();
            match c
                .connect(json!({"resumeToken": resume, "recover": {&sid: seen_by_customer}}))
                .await
            {
                Ok(_) => return c,
                Err(e) => {
                    assert_eq!(e["code"], "rate_limited", "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
    .await
    .expect("the dead node's session count expires");
    let mut customer = reconnected;
    assert_eq!(customer.connect_result["recovered"][&sid], true);
    let posted = customer
        .call("SendMessage", json!({"channelSid": sid, "body": "after"}))
        .await
        .unwrap();
    let last = posted["index"].as_u64().unwrap();
    acked.push(last);
    let recovered = read_until(&mut customer, last).await;
    assert_gapless(&recovered, (seen_by_customer + 1) as u64, "recovered");
    let seen = read_until(&mut agent, last).await;
    assert_gapless(&seen, 0, "the agent on the surviving node");
    assert_holds_acked(&seen, &acked, "delivered");
}

/// Queue consoles on one node hear engagements started, picked up and
/// ended on the others; an agent on node B ends a chat for a customer on
/// node A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_pushes_and_end_engagement_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let mut console = b.staff("watcher", "agent").await;
    console
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    let mut customer = a.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    let started = console.push("engagementStarted").await;
    assert_eq!(started["channelSid"], sid.as_str());
    let mut agent = a.staff("alice", "agent").await;
    agent.join(&sid).await;
    let updated = console.push("engagementUpdated").await;
    assert_eq!(
        updated["members"],
        json!([
            {"identity": "alice", "role": "agent"},
            {"identity": customer.identity(), "role": "customer"},
        ])
    );
    // A console that subscribes on a third node lists it with its members.
    let c = node(&redis, NO_LIMITS).await;
    let mut late = c.staff("late", "agent").await;
    let queued = late
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    assert_eq!(queued["engagements"][0]["channelSid"], sid.as_str());
    assert_eq!(queued["engagements"][0]["members"], updated["members"]);
    let mut tab = Client::open_url(&b.url(), Enc::Json).await.unwrap();
    let r = tab.connect(json!({ "resumeToken": resume })).await.unwrap();
    assert_eq!(r["engagement"]["channelSid"], sid.as_str());
    assert_eq!(r["engagement"]["members"], updated["members"]);
    let mut other = b.staff("bob", "agent").await;
    assert_eq!(
        other
            .fails("EndEngagement", json!({"channelSid": sid}))
            .await,
        "not_a_member"
    );
    agent
        .call(
            "EndEngagement",
            json!({"channelSid": sid, "reason": "resolved"}),
        )
        .await
        .unwrap();
    for c in [&mut customer, &mut tab] {
        let ended = c.push("engagementEnded").await;
        assert_eq!(ended, json!({"channelSid": sid, "reason": "resolved"}));
    }
    assert_eq!(console.push("engagementEnded").await["reason"], "resolved");
    assert_eq!(late.push("engagementEnded").await["reason"], "resolved");
    assert_eq!(
        customer
            .fails("SendMessage", json!({"channelSid": sid, "body": "x"}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        agent
            .fails("SendMessage", json!({"channelSid": sid, "body": "x"}))
            .await,
        "not_found"
    );
}

/// Typing on one node shows on the other, and ends by itself after the
/// window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_nodes_and_ends_by_itself() {
    let redis = Redis::start();
    let extra = format!("{NO_LIMITS}[typing]\nwindow_ms = 300\n");
    let (_a, _b, mut customer, mut agent, sid) = engagement_across(&redis, &extra, "agent-t").await;
    // Typing is transient (never logged): node B hears it once it has
    // subscribed to the channel, which a first message shows.
    customer
        .call("SendMessage", json!({"channelSid": sid, "body": "hello"}))
        .await
        .unwrap();
    agent.push("messageAdded").await;
    customer
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    let typing = agent.push("typingStarted").await;
    assert_eq!(typing["identity"], customer.identity());
    let ended = agent.push("typingEnded").await;
    assert_eq!(ended["identity"], customer.identity());
    // A message ends typing at once.
    customer
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    agent.push("typingStarted").await;
    customer
        .call("SendMessage", json!({"channelSid": sid, "body": "hi"}))
        .await
        .unwrap();
    agent.push("typingEnded").await;
    agent.push("messageAdded").await;
    // Once: the period's timer does not end it again.
    agent
        .no_push("typingEnded", Duration::from_millis(700))
        .await;
    customer
        .no_push("typingStarted", Duration::from_millis(10))
        .await;
}

/// A message's index counts messages only, however many members came and
/// went between them (a message's index is derived from its seq in the
/// channel's log and the channel's count of other events), the same in
/// every ack, push and history page on either node; and once nobody types,
/// the channel's state says so again (a message then skips the typing
/// lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_indexes_count_only_messages_as_members_come_and_go() {
    let redis = Redis::start();
    let extra = format!("{NO_LIMITS}[typing]\nwindow_ms = 300\n");
    let a = node(&redis, &extra).await;
    let b = node(&redis, &extra).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = b.staff("agent-i", "agent").await;
    let joined = agent.join(&sid).await;
    assert_eq!(joined["lastIndex"], -1);
    let send = |body: String| json!({"channelSid": sid, "body": body});
    let mut next = 0u64;
    for round in 0..3 {
        let sent = customer
            .call("SendMessage", send(format!("c{round}")))
            .await
            .unwrap();
        assert_eq!(sent["index"], next);
        let sent = agent
            .call("SendMessage", send(format!("a{round}")))
            .await
            .unwrap();
        assert_eq!(sent["index"], next + 1);
        next += 2;
        // A visitor comes, types and goes: three events that are not
        // messages, and a typing period its leaving ends.
        let mut visitor = a.staff(&format!("agent-v{round}"), "agent").await;
        let joined = visitor.join(&sid).await;
        assert_eq!(joined["lastIndex"], next - 1);
        visitor
            .call("SendTyping", json!({"channelSid": sid}))
            .await
            .unwrap();
        visitor
            .call("LeaveChannel", json!({"channelSid": sid}))
            .await
            .unwrap();
    }
    for session in [&mut customer, &mut agent] {
        for i in 0..next {
            let added = session.push("messageAdded").await;
            assert_eq!(added["index"], i, "{added}");
        }
    }
    for reader in [&mut customer, &mut agent] {
        let page = reader
            .call("GetMessages", json!({"channelSid": sid, "limit": 100}))
            .await
            .unwrap();
        let got: Vec<(u64, String)> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["index"].as_u64().unwrap(),
                    m["body"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(u64, String)> = (0..next)
            .map(|i| (i, format!("{}{}", ["c", "a"][i as usize % 2], i / 2)))
            .collect();
        assert_eq!(got, want);
    }
    // The author's typing ends with its message, and the channel's state
    // is a plain count of its other events again.
    customer
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    let sent = customer
        .call("SendMessage", send("typed".into()))
        .await
        .unwrap();
    assert_eq!(sent["index"], next);
    // (The visitors' typing ended as they left.)
    while agent.push("typingEnded").await["identity"] != customer.identity() {}
    let state = redis
        .command(&format!("HGET switchboard:ch:{sid} s"))
        .unwrap();
    let value = state.lines().nth(1).unwrap_or_default();
    assert!(
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
        "{state:?}"
    );
}

/// A channel written by a build that counted its messages in `next` and
/// kept its members in `chm:<sid>` only (its state rewritten here to that
/// form, with a message appended as that build stored it) goes on where it
/// was: the next message gets the next index, the nodes fill the message
/// they were not told of from the log, and history reads both forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_from_before_the_state_field_goes_on() {
    let redis = Redis::start();
    let (_a, b, mut customer, mut agent, sid) =
        engagement_across(&redis, NO_LIMITS, "agent-l").await;
    let send = |body: &str| json!({"channelSid": sid, "body": body});
    for body in ["m0", "m1"] {
        customer.call("SendMessage", send(body)).await.unwrap();
    }
    for session in [&mut customer, &mut agent] {
        for i in 0..2 {
            assert_eq!(session.push("messageAdded").await["index"], i);
        }
    }
    let ok = |answer: Option<String>| {
        let answer = answer.unwrap();
        assert!(!answer.starts_with('-'), "{answer}");
    };
    let ch = format!("switchboard:ch:{sid}");
    ok(redis.command(&format!(
        "HDEL {ch} s m:{} m:{}",
        customer.identity(),
        agent.identity()
    )));
    let old = format!(
        r#"{{"t":"msg","i":2,"sid":"{sid}","a":"{}","r":"customer","b":"m2","at":{{}},"d":"2026-11-26T00:00:00.000Z","ms":1764115200000}}"#,
        customer.identity()
    );
    ok(redis.command(&format!("XADD switchboard:ev:c:{sid} 0-* e '{old}'")));
    ok(redis.command(&format!("HSET {ch} next 3")));
    let sent = agent.call("SendMessage", send("m3")).await.unwrap();
    assert_eq!(sent["index"], 3);
    for session in [&mut customer, &mut agent] {
        for (i, body) in [(2, "m2"), (3, "m3")] {
            let added = session.push("messageAdded").await;
            assert_eq!(
                (added["index"].as_u64(), added["body"].as_str()),
                (Some(i), Some(body))
            );
        }
    }
    assert_eq!(
        indexed_bodies(&mut customer, &sid).await,
        ["0 m0", "1 m1", "2 m2", "3 m3"]
    );
    let joined = b
        .staff("agent-l2", "agent")
        .await
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(joined["lastIndex"], 3);
}

/// A session that ends while Redis is away stops counting once Redis is
/// back (its count could not be lowered then): the identity's next session
/// is not refused for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_during_an_outage_stops_counting() {
    let mut redis = Redis::start();
    let a = node(
        &redis,
        "[rate_limits]\nenabled = false\n[admission]\nmax_sessions_per_identity = 1\n",
    )
    .await;
    let jwt = token("cust-s", "customer", 3600);
    let tab = a.staff_token(&jwt).await;
    redis.stop();
    drop(tab);
    // The node notices the closed socket and fails to lower the count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    let again = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let mut c = Client::open_url(&a.url(), Enc::Json).await.unwrap();
            match c.connect(json!({"token": jwt})).await {
                Ok(_) => return c,
                Err(e) => {
                    assert!(
                        e["code"] == "rate_limited" || e["code"] == "unavailable",
                        "{e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
    .await;
    assert!(again.is_ok(), "the ended session stopped counting");
}

/// `[identities] max_anonymous` counts the anonymous identities of every
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_cap_holds_across_nodes() {
    let redis = Redis::start();
    let extra = "[identities]\nmax_anonymous = 2\n";
    let a = node(&redis, extra).await;
    let b = node(&redis, extra).await;
    let first = a.customer().await;
    let resume = first.connect_result["resumeToken"].clone();
    let _second = b.customer().await;
    let mut third = Client::open_url(&a.url(), Enc::Json).await.unwrap();
    let err = third.call("Connect", json!({})).await.unwrap_err();
    assert_eq!(err["code"], "rate_limited", "{err}");
    // A known one still connects, on the other node.
    let mut again = Client::open_url(&b.url(), Enc::Json).await.unwrap();
    again.connect(json!({"resumeToken": resume})).await.unwrap();
}

/// A channel's history is its event log, trimmed to `[history]
/// max_messages` entries: pages below `before` skip the membership events
/// between messages, nothing trimmed comes back, and a recovery reaching
/// below delivery's window reads the rest from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_recovery_read_the_trimmed_channel_log() {
    let redis = Redis::start();
    let toml = format!("{NO_LIMITS}[history]\nmax_messages = 8\nmemory_messages = 2\n");
    let a = node(&redis, &toml).await;
    let b = node(&redis, &toml).await;
    let mut customer = a.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    let mut agent = b.staff("agent-h", "agent").await;
    agent.join(&sid).await;
    let send = |i: u64| json!({"channelSid": sid, "body": format!("m{i}")});
    for i in 0..6 {
        customer.call("SendMessage", send(i)).await.unwrap();
    }
    // Two membership events between m5 and m6.
    let mut visitor = b.staff("agent-v", "agent").await;
    visitor.join(&sid).await;
    visitor
        .call("LeaveChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    for i in 6..12 {
        customer.call("SendMessage", send(i)).await.unwrap();
    }
    let indexes = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["index"].as_u64().unwrap())
            .collect()
    };
    // The log keeps 8 entries: m6..m11 and the two membership events.
    let all = agent
        .call("GetMessages", json!({"channelSid": sid, "limit": 100}))
        .await
        .unwrap();
    assert_eq!(indexes(&all), (6..12).collect::<Vec<_>>(), "{all}");
    assert_eq!(all["hasMore"], false);
    let newest = agent
        .call("GetMessages", json!({"channelSid": sid, "limit": 3}))
        .await
        .unwrap();
    assert_eq!(indexes(&newest), [9, 10, 11]);
    assert_eq!(newest["hasMore"], true);
    let older = agent
        .call(
            "GetMessages",
            json!({"channelSid": sid, "limit": 3, "before": 9}),
        )
        .await
        .unwrap();
    assert_eq!(indexes(&older), [6, 7, 8]);
    assert_eq!(older["hasMore"], false);
    let bodies: Vec<&str> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m6", "m7", "m8"]);
    drop(customer);
    // Recovery on B from index 6: delivery's window holds 2 messages, the
    // rest is read from the log.
    let mut again = Client::open_url(&b.url(), Enc::Json).await.unwrap();
    let connected = again
        .connect(json!({"resumeToken": resume, "recover": {&sid: 6}}))
        .await
        .unwrap();
    assert_eq!(connected["recovered"][&sid], true, "{connected}");
    let missed = read_until(&mut again, 11).await;
    assert_gapless(&missed, 7, "recovered below the window");
    assert_eq!(missed[0]["body"], "m7");
    // From before what the log keeps: not recovered.
    let mut late = b.staff("agent-late", "agent").await;
    let sub = late
        .call("Subscribe", json!({"channel": sid, "after": 2}))
        .await
        .unwrap();
    assert_eq!(sub["recovered"], false, "{sub}");
}

/// Redis lost the broker's function library (`FUNCTION FLUSH`, or a new
/// instance): the next call loads it again and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_function_library_is_loaded_again() {
    let redis = Redis::start();
    let a = node(&redis, NO_LIMITS).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    assert!(redis.command("FUNCTION FLUSH").unwrap().starts_with("+OK"));
    let posted = customer
        .call("SendMessage", json!({"channelSid": sid, "body": "hi"}))
        .await
        .unwrap();
    assert_eq!(posted["index"], 0);
    assert!(redis
        .command("FUNCTION LIST")
        .unwrap()
        .contains("switchboard_"));
}

/// `kill -9` of a node: once its heartbeat key expires, another node
/// recounts what it held for its sessions. Its typing indicators end
/// (`typingEnded` pushed), its anonymous identity without an engagement
/// starts to expire (the anonymous cap frees up), and a channel only its
/// session observed, with no member left, is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_typing_identities_and_observers_are_recounted() {
    let redis = Redis::start();
    let toml = format!(
        "{NO_LIMITS}[typing]\nwindow_ms = 300\n[identities]\nidle_ttl_secs = 1\nmax_anonymous = 1\n\
         [api]\nkeys = [\"test-api-key-0123456789\"]\n"
    );
    let dying = node_process(&redis, "cluster-reap", &toml);
    let dir = dying.data_dir.clone();
    let survivor = node(&redis, &toml).await;
    // Typing on the dying node, seen on the survivor.
    let mut typist = Client::staff_at(&dying.url, "cust-t", "customer", Enc::Json).await;
    let sid = typist.start_engagement().await;
    let mut agent = survivor.staff("agent-r", "agent").await;
    agent.join(&sid).await;
    typist
        .call("SendMessage", json!({"channelSid": sid, "body": "hello"}))
        .await
        .unwrap();
    agent.push("messageAdded").await;
    // The cap's one anonymous identity, on the dying node, no engagement.
    let mut anonymous = Client::open_url(&dying.url, Enc::Json).await.unwrap();
    anonymous.connect(json!({})).await.unwrap();
    // A channel only a session of the dying node observes: its customer
    // (on the survivor) leaves it.
    let mut leaver = Client::staff_at(&survivor.url(), "cust-o", "customer", Enc::Json).await;
    let abandoned = leaver.start_engagement().await;
    let mut observer = Client::staff_at(&dying.url, "obs-r", "agent", Enc::Json).await;
    observer
        .call("Subscribe", json!({"channel": abandoned}))
        .await
        .unwrap();
    leaver.call("RestartEngagement", json!({})).await.unwrap();
    typist
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    agent.push("typingStarted").await;

    dying.signal("KILL");
    let ended = agent
        .push_within("typingEnded", Duration::from_secs(15))
        .await
        .expect("the dead node's typing ends");
    assert_eq!(ended["identity"], "cust-t");
    // A new anonymous customer fits under the cap once the dead node's
    // one has expired.
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let mut c = Client::open_url(&survivor.url(), Enc::Json).await.unwrap();
            if c.connect(json!({})).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the dead node's anonymous identity stops counting");
    // The channel nobody is in any more, nor observes, is retired.
    let report = || async {
        let answer = reqwest::Client::new()
            .get(format!(
                "http://{}/api/v1/channels/{abandoned}",
                survivor.addr
            ))
            .bearer_auth("test-api-key-0123456789")
            .send()
            .await
            .unwrap();
        serde_json::from_str::<Value>(&answer.text().await.unwrap()).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while report().await["status"] != "ended" {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned channel is retired: {}",
            report().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(dying);
    let _ = std::fs::remove_dir_all(dir);
}

/// Redis holds a `SendMessage`'s function call past the node's command
/// timeout (`CLIENT PAUSE … WRITE`), so that it runs only after the node
/// answered `unavailable` ("nothing was done; retry"). Run that late, it
/// does nothing: the message is not stored, nobody is pushed it, and the
/// next message gets the index right after the last acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_redis_runs_after_the_node_gave_up_does_nothing() {
    const TIMEOUT_MS: u64 = 400;
    let redis = Redis::start();
    let cluster = format!("command_timeout_ms = {TIMEOUT_MS}\n");
    let a = node_with(&redis, NO_LIMITS, &cluster).await;
    let b = node_with(&redis, NO_LIMITS, &cluster).await;
    let (_a, _b, mut customer, mut agent, sid) = engagement_between(a, b, "agent-late").await;
    let send = |body: &str| json!({"channelSid": sid, "body": body});
    for (i, body) in ["m0", "m1", "m2"].into_iter().enumerate() {
        let posted = customer.call("SendMessage", send(body)).await.unwrap();
        assert_eq!(posted["index"], i);
    }
    for session in [&mut customer, &mut agent] {
        assert_gapless(&read_until(session, 2).await, 0, "before the pause");
    }

    // Redis holds every write for longer than the node waits.
    let paused = redis.command("CLIENT PAUSE 1500 WRITE").unwrap();
    assert!(paused.starts_with("+OK"), "{paused}");
    let (result, took) = timed_send(&mut customer, &sid, "late".into()).await;
    let e = result.expect_err("the node gives up on the held call");
    assert_eq!(e["code"], "unavailable", "{e}");
    // The node looks for the call in the channel's log until shortly
    // before the contract's 2 s are up (it may have run before Redis
    // held it), then answers what it knows.
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
    // A write on a connection of its own is answered once the pause ends,
    // and Redis has run the held call by then.
    let after_pause = tokio::task::block_in_place(|| redis.command("SET late-probe 1"));
    assert!(after_pause.unwrap().starts_with("+OK"));

    // The next message comes right after the last acknowledged one (and
    // after the held call on the node's connection to Redis).
    let posted = customer.call("SendMessage", send("after")).await.unwrap();
    assert_eq!(posted["index"], 3, "{posted}");
    for session in [&mut customer, &mut agent] {
        let added = session.push("messageAdded").await;
        assert_eq!(
            (added["index"].as_u64(), added["body"].as_str()),
            (Some(3), Some("after")),
            "the late message was pushed: {added}"
        );
    }
    for session in [&mut customer, &mut agent] {
        assert_eq!(
            indexed_bodies(session, &sid).await,
            ["0 m0", "1 m1", "2 m2", "3 after"]
        );
    }
}

/// A channel's newest messages (`GetMessages`), each as "index body".
async fn indexed_bodies(client: &mut Client, sid: &str) -> Vec<String> {
    let page = client
        .call("GetMessages", json!({"channelSid": sid}))
        .await
        .unwrap();
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m["index"], m["body"].as_str().unwrap()))
        .collect()
}

/// `[history] max_age_secs` on Redis: a pass (one node's per period)
/// empties a live channel's log of its old messages; the channel's
/// numbering carries on for every node, one that follows the channel
/// only afterwards included; a recovery from before the purge is told
/// history no longer reaches back. The pass stays within its own key
/// prefix, even one with glob characters in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_retention_empties_a_channel_and_its_numbering_carries_on() {
    let redis = Redis::start();
    let aged = format!("{NO_LIMITS}[history]\nmax_age_secs = 1\npurge_interval_secs = 1\n");
    let prefix = "key_prefix = \"sb[1]*\"\n";
    // A broker on a prefix the glob `sb[1]*` would match, unescaped: its
    // messages are not the pass's to purge.
    let neighbour = node_with(&redis, NO_LIMITS, "key_prefix = \"sb1\"\n").await;
    let mut other = neighbour.customer().await;
    let other_sid = other.start_engagement().await;
    other
        .call(
            "SendMessage",
            json!({"channelSid": other_sid, "body": "kept"}),
        )
        .await
        .unwrap();

    let a = node_with(&redis, &aged, prefix).await;
    let b = node_with(&redis, &aged, prefix).await;
    let (a, b, mut customer, mut agent, sid) = engagement_between(a, b, "agent-age").await;
    let resume = customer.connect_result["resumeToken"].clone();
    send_messages(&mut customer, &sid, 5).await;
    read_until(&mut agent, 4).await;
    // Retention has no event to wait for: ask until the history is empty.
    tokio::time::timeout(Duration::from_secs(15), async {
        while !indexed_bodies(&mut agent, &sid).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("age retention emptied the channel");

    // A third node follows the channel only now, from its emptied log.
    let c = node_with(&redis, &aged, prefix).await;
    let mut again = Client::open_url(&c.url(), Enc::Json).await.unwrap();
    let connected = again
        .connect(json!({"resumeToken": resume, "recover": {&sid: 1}}))
        .await
        .unwrap();
    assert_eq!(
        connected["engagement"]["channelSid"],
        sid.as_str(),
        "{connected}"
    );
    assert_eq!(connected["engagement"]["lastIndex"], 4, "{connected}");
    assert_eq!(connected["recovered"][&sid], false, "{connected}");
    let sent = customer
        .call("SendMessage", json!({"channelSid": sid, "body": "after"}))
        .await
        .unwrap();
    assert_eq!(sent["index"], 5, "numbering carries on");
    for session in [&mut again, &mut agent] {
        let pushed = read_until(session, 5).await;
        assert_eq!(pushed.last().unwrap()["body"], "after");
    }
    assert_eq!(indexed_bodies(&mut again, &sid).await, ["5 after"]);
    assert_eq!(indexed_bodies(&mut other, &other_sid).await, ["0 kept"]);
    drop((a, b, c, neighbour));
}

/// A `SendMessage` whose answer from Redis never reaches its node is
/// answered with the truth: its index when it was stored (the connection
/// cut as Redis answered), `unavailable` when it was not (cut before the
/// call reached Redis), so that a client that retries after
/// `unavailable` never stores a message twice. Both within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_message_whose_answer_is_lost_is_answered_with_the_truth() {
    let redis = Redis::start();
    let cutter = Cutter::start(&redis);
    let a = node_behind(&cutter, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let (_a, _b, mut customer, mut agent, sid) = engagement_between(a, b, "agent-doubt").await;
    let send = |body: &str| json!({"channelSid": sid, "body": body});
    customer.call("SendMessage", send("m0")).await.unwrap();

    cutter.arm(Cut::AtTheAnswer, "post");
    let (stored, took) = timed_send(&mut customer, &sid, "answer lost".into()).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(cutter.cuts(), 1, "the answer was cut");
    assert_eq!(stored.expect("it was stored")["index"], 1);

    cutter.arm(Cut::BeforeTheCall, "post");
    let (refused, took) = timed_send(&mut customer, &sid, "never sent".into()).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(cutter.cuts(), 2, "the call was cut");
    assert_eq!(
        refused.expect_err("it was not stored")["code"],
        "unavailable"
    );
    let retried = customer.call("SendMessage", send("retried")).await.unwrap();
    assert_eq!(retried["index"], 2);

    let pushed = read_until(&mut agent, 2).await;
    assert_gapless(&pushed, 0, "the agent on the other node");
    assert_eq!(
        indexed_bodies(&mut agent, &sid).await,
        ["0 m0", "1 answer lost", "2 retried"]
    );
}

/// The state changes a client cannot safely repeat record their answer,
/// and a node whose answer was lost asks for it again: a widget toggled
/// once is answered as toggled (a retry after `unavailable` would have
/// toggled it back), a restart with the channel it left (a retry would
/// have been refused, `no_engagement`); one
/// whose call never reached Redis is answered `unavailable` and changed
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_whose_answer_is_lost_is_answered_with_the_truth() {
    let redis = Redis::start();
    let cutter = Cutter::start(&redis);
    let a = node_behind(&cutter, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let jwt = token("cust-doubt", "customer", 3600);
    let mut tab_a = a.staff_token(&jwt).await;
    let mut tab_b = b.staff_token(&jwt).await;
    let first = tab_a.start_engagement().await;

    cutter.arm(Cut::AtTheAnswer, "widget");
    let toggled = tab_a.call("ToggleChatVisibility", json!({})).await;
    assert_eq!(cutter.cuts(), 1, "the answer was cut");
    assert_eq!(toggled.expect("it was toggled")["expanded"], true);
    assert_eq!(tab_b.push("widgetStateChanged").await["expanded"], true);

    cutter.arm(Cut::BeforeTheCall, "widget");
    let code = tab_a.fails("ToggleChatVisibility", json!({})).await;
    assert_eq!((cutter.cuts(), code.as_str()), (2, "unavailable"));
    tab_b
        .no_push("widgetStateChanged", Duration::from_millis(300))
        .await;

    cutter.arm(Cut::AtTheAnswer, "restart");
    let restarted = tab_a.call("RestartEngagement", json!({})).await;
    assert_eq!(cutter.cuts(), 3, "the answer was cut");
    assert_eq!(
        restarted.expect("it was restarted")["channelSid"],
        first.as_str()
    );
    assert_eq!(
        tab_b.push("engagementRestarted").await["channelSid"],
        first.as_str()
    );
    let mut tab_c = Client::open_url(&b.url(), Enc::Json).await.unwrap();
    let connected = tab_c.connect(json!({"token": jwt})).await.unwrap();
    assert_eq!(connected["engagement"], Value::Null);
    assert_eq!(connected["widget"]["expanded"], true, "toggled once");
}

/// A session's pipelined `SendMessage`s go to Redis before their replies
/// are due (several in flight at once), and still take indexes in
/// command order: the replies, and an agent on the other node, see
/// `m0`, `m1`, … at indexes 0, 1, ….
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_keep_command_order_across_nodes() {
    const N: u64 = 200;
    let redis = Redis::start();
    let (_a, _b, mut customer, mut agent, sid) =
        engagement_across(&redis, NO_LIMITS, "agent-pipe").await;
    let mut ids = Vec::new();
    for i in 0..N {
        let body = json!({"channelSid": sid, "body": format!("m{i}")});
        ids.push(customer.send("SendMessage", body).await);
    }
    for (i, id) in ids.into_iter().enumerate() {
        let reply = customer.reply(id).await;
        assert_eq!(reply["result"]["index"], i, "{reply}");
    }
    let seen = read_until(&mut agent, N - 1).await;
    assert_gapless(&seen, 0, "the agent on the other node");
    for (i, m) in seen.iter().enumerate() {
        assert_eq!(m["body"], format!("m{i}"));
    }
}

/// Several pipelined `SendMessage`s in flight when their connection to
/// Redis is cut as Redis answers the first: each is answered with the
/// truth, in command order, within 2 s of being sent: the ones Redis
/// stored with their indexes, any that never reached it `unavailable`,
/// and the channel holds exactly the acknowledged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_whose_answers_are_lost_are_each_answered_with_the_truth() {
    const N: usize = 8;
    let redis = Redis::start();
    let cutter = Cutter::start(&redis);
    let a = node_behind(&cutter, NO_LIMITS).await;
    let b = node(&redis, NO_LIMITS).await;
    let (_a, _b, mut customer, mut agent, sid) = engagement_between(a, b, "agent-cut").await;
    cutter.arm(Cut::AtTheAnswer, "post");
    let asked = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..N {
        let body = json!({"channelSid": sid, "body": format!("m{i}")});
        ids.push(customer.send("SendMessage", body).await);
    }
    let mut acked = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let reply = customer.reply(id).await;
        match reply.get("result") {
            Some(result) => {
                assert_eq!(result["index"], acked.len(), "{reply}");
                acked.push(format!("{} m{i}", acked.len()));
            }
            None => assert_eq!(reply["error"]["code"], "unavailable", "{reply}"),
        }
    }
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(cutter.cuts(), 1, "the answers were cut");
    assert!(
        !acked.is_empty(),
        "Redis had stored the first before the cut"
    );
    assert_eq!(indexed_bodies(&mut agent, &sid).await, acked);
}
