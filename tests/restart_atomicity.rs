//! RestartEngagement is atomic: while a customer's other tabs flood
//! SendMessage, a restart produces exactly one `memberLeft`, no message by
//! that identity is delivered after it, every acknowledged message is
//! delivered exactly once in index order, and every racing send either
//! landed before the `memberLeft` or failed with `not_a_member`.

mod common;

use std::collections::HashSet;

use common::{Client, Enc, TestServer};
use serde_json::{json, Value};

const ROUNDS: usize = 12;
const TABS: usize = 3;
const PER_TAB: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_races_sending_tabs() {
    // Rate limits off: each tab floods on purpose (tested in tests/hostile.rs).
    let server = TestServer::start("[rate_limits]\nenabled = false\n").await;
    for round in 0..ROUNDS {
        hammer_once(&server, round).await;
    }
    server.shutdown().await;
}

async fn hammer_once(server: &TestServer, round: usize) {
    let mut first = server.customer().await;
    let resume = first.connect_result["resumeToken"].clone();
    let customer = first.identity();
    let sid = first.start_engagement().await;

    let mut agent = server.staff(&format!("agent-{round}"), "agent").await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    let mut observer = server
        .staff_enc(&format!("obs-{round}"), "service", Enc::MsgPack)
        .await;
    observer
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();

    let mut tabs = Vec::new();
    for t in 0..TABS {
        let enc = if t % 2 == 0 { Enc::Json } else { Enc::MsgPack };
        let mut tab = Client::open(server, enc).await;
        tab.connect(json!({"resumeToken": resume})).await.unwrap();
        tabs.push(tab);
    }

    // Every tab floods SendMessage (pipelined), then collects its replies.
    let senders: Vec<_> = tabs
        .into_iter()
        .enumerate()
        .map(|(t, mut tab)| {
            let sid = sid.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(PER_TAB);
                for i in 0..PER_TAB {
                    let body = format!("tab{t}-{i}");
                    ids.push(
                        tab.send("SendMessage", json!({"channelSid": sid, "body": body}))
                            .await,
                    );
                }
                let mut acked = Vec::new();
                let mut refused = 0;
                for id in ids {
                    let reply = tab.reply(id).await;
                    if let Some(result) = reply.get("result") {
                        acked.push(result["index"].as_u64().unwrap());
                    } else {
                        assert_eq!(reply["error"]["code"], "not_a_member", "{reply}");
                        refused += 1;
                    }
                }
                (acked, refused)
            })
        })
        .collect();

    // Restart mid-flood: once the observer has seen a few messages (or at
    // once on some rounds, to race the very first sends).
    let wait_for = [0, 1, 5, 20, 60][round % 5];
    let mut seen = Vec::new();
    while seen.len() < wait_for {
        seen.push(observer.push("messageAdded").await);
    }
    let restarted = first.call("RestartEngagement", json!({})).await.unwrap();
    assert_eq!(restarted["channelSid"], sid.as_str());

    let mut acked = HashSet::new();
    let mut refused = 0;
    for sender in senders {
        let (a, r) = sender.await.unwrap();
        refused += r;
        for index in a {
            assert!(acked.insert(index), "index {index} acknowledged twice");
        }
    }
    assert_eq!(acked.len() + refused, TABS * PER_TAB);

    // A marker after everything: the observer reads up to it.
    agent
        .call("SendMessage", json!({"channelSid": sid, "body": "marker"}))
        .await
        .unwrap();

    for (who, client) in [("observer", &mut observer), ("agent", &mut agent)] {
        // Everything this client received, in arrival order: what it set
        // aside while waiting for replies, then the rest up to the marker.
        let mut pushes: Vec<(String, Value)> = Vec::new();
        if who == "observer" {
            pushes.extend(seen.iter().map(|d| ("messageAdded".to_owned(), d.clone())));
        }
        let mut buffered: std::collections::VecDeque<Value> = client.pushes.drain(..).collect();
        loop {
            let frame = match buffered.pop_front() {
                Some(frame) => frame,
                None => client
                    .read_frame()
                    .await
                    .unwrap_or_else(|| panic!("{who}: stream ended")),
            };
            let Some(event) = frame.get("event").and_then(Value::as_str) else {
                continue;
            };
            pushes.push((event.to_owned(), frame["data"].clone()));
            if event == "messageAdded" && frame["data"]["body"] == "marker" {
                break;
            }
        }
        let stream: Vec<Value> = pushes
            .iter()
            .filter(|(e, _)| e == "messageAdded")
            .map(|(_, d)| d.clone())
            .collect();

        // Gapless, in order, exactly once.
        for (expected, message) in stream.iter().enumerate() {
            assert_eq!(
                message["index"], expected as u64,
                "{who} round {round}: order/gap"
            );
        }
        // Exactly one memberLeft for the customer, with reason restart.
        let left: Vec<usize> = pushes
            .iter()
            .enumerate()
            .filter(|(_, (e, d))| e == "memberLeft" && d["identity"] == customer.as_str())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(left.len(), 1, "{who} round {round}: memberLeft count");
        assert_eq!(pushes[left[0]].1["reason"], "restart");
        // Nothing by the customer after it.
        let late = pushes[left[0]..]
            .iter()
            .filter(|(e, d)| e == "messageAdded" && d["author"] == customer.as_str())
            .count();
        assert_eq!(late, 0, "{who} round {round}: message after memberLeft");
        // Every acknowledged message was delivered (before memberLeft).
        let delivered: HashSet<u64> = pushes[..left[0]]
            .iter()
            .filter(|(e, d)| e == "messageAdded" && d["author"] == customer.as_str())
            .map(|(_, d)| d["index"].as_u64().unwrap())
            .collect();
        assert_eq!(delivered, acked, "{who} round {round}: acked vs delivered");
    }
}
