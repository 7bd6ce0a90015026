//! Faults and abuse the broker must survive and answer clearly: a stalled
//! reader, replies that could grow past any frame, a store that cannot
//! write, a damaged journal. Real sockets, real files.

mod common;

use std::time::Duration;

use common::{assert_gapless, read_until, Client, Enc, TestServer};
use serde_json::{json, Value};

/// A reader that stops reading under a flood of 8 KB messages and reads
/// again 20 s later (inside the idle timeout) finds complete frames with
/// contiguous indexes, then its 4008, and recovers the rest with `after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_finds_complete_frames_then_its_4008() {
    let server =
        TestServer::start("[limits]\noutbox_frames = 64\n[rate_limits]\nenabled = false\n").await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut stalled = server.staff("slow", "agent").await;
    stalled
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    // Flood until the stalled session overflows, and a little beyond.
    let body = "z".repeat(8 * 1024);
    let mut sent = 0u64;
    let mut beyond = 0;
    while beyond < 20 {
        customer
            .call("SendMessage", json!({"channelSid": sid, "body": body}))
            .await
            .unwrap();
        customer.pushes.clear();
        sent += 1;
        if server.broker.metrics.snapshot().slow_consumer_closes > 0 {
            beyond += 1;
        }
    }
    // The scenario: the reader comes back 20 s later.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut got: Vec<Value> = Vec::new();
    while let Some(frame) = stalled.read_frame().await {
        if frame["event"] == "messageAdded" {
            got.push(frame["data"].clone());
        }
    }
    assert_eq!(
        stalled.closed.as_ref().map(|c| c.0),
        Some(4008),
        "the close frame arrives after the last complete frame"
    );
    assert_gapless(&got, 0, "before the 4008");
    assert!((got.len() as u64) < sent, "the reader did miss messages");
    let seen = got.len() as i64 - 1;
    let mut again = server.staff("slow", "agent").await;
    let r = again
        .call("Subscribe", json!({"channel": sid, "after": seen}))
        .await
        .unwrap();
    assert_eq!(r["recovered"], true);
    got.extend(read_until(&mut again, sent - 1).await);
    assert_gapless(&got, 0, "after recovery");
    assert_eq!(got.len() as u64, sent);
    server.shutdown().await;
}

/// Every page of a history of 9,000-byte messages arrives, whatever the
/// `limit`: pages are cut by bytes too (`hasMore` says there is more), in
/// both encodings, from the in-memory window and from the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_large_messages_pages_within_a_frame() {
    const MESSAGES: u64 = 300;
    let server = TestServer::start("[rate_limits]\nenabled = false\n").await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    for i in 0..MESSAGES {
        let body = format!("{i:04}{}", "m".repeat(8996));
        customer
            .call("SendMessage", json!({"channelSid": sid, "body": body}))
            .await
            .unwrap();
        customer.pushes.clear();
    }
    for enc in [Enc::Json, Enc::MsgPack] {
        let mut reader = server.staff_enc("reader", "agent", enc).await;
        reader
            .call("Subscribe", json!({"channel": sid}))
            .await
            .unwrap();
        let mut all: Vec<Value> = Vec::new();
        let mut before = Value::Null;
        let mut pages = 0;
        loop {
            let page = reader
                .call(
                    "GetMessages",
                    json!({"channelSid": sid, "limit": 100, "before": before}),
                )
                .await
                .expect("every page is answered");
            pages += 1;
            let messages = page["messages"].as_array().unwrap().clone();
            assert!(!messages.is_empty(), "{enc:?}: a page is never empty");
            assert!(
                messages.len() < 100,
                "{enc:?}: 100 messages of 9 KB do not fit one page"
            );
            before = messages[0]["index"].clone();
            let more = page["hasMore"].as_bool().unwrap();
            all.splice(0..0, messages);
            if !more {
                break;
            }
        }
        assert_gapless(&all, 0, "paged history");
        assert_eq!(all.len() as u64, MESSAGES, "{enc:?}");
        assert!(pages > 3, "{enc:?}: {pages} pages");
        assert!(reader.closed.is_none(), "{enc:?}: the session carried on");
    }
    server.shutdown().await;
}

/// An agent subscribing to a queue that holds hundreds of open engagements
/// with large `formData` gets the first page and reads the rest with
/// `GetEngagements`, in both encodings; the session carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_large_engagements_is_read_in_pages() {
    const ENGAGEMENTS: usize = 300;
    let server = TestServer::start(
        "[rate_limits]\nenabled = false\n[admission]\nmax_connections_per_ip = 1000\n",
    )
    .await;
    let mut customers = Vec::new();
    let mut sids = std::collections::BTreeSet::new();
    for i in 0..ENGAGEMENTS {
        let mut c = server.customer().await;
        let form = json!({"formData": {"n": i, "notes": "f".repeat(12_000)}});
        let r = c.call("StartEngagement", form).await.unwrap();
        sids.insert(r["channelSid"].as_str().unwrap().to_owned());
        customers.push(c);
    }
    for enc in [Enc::Json, Enc::MsgPack] {
        let mut agent = server.staff_enc("console", "agent", enc).await;
        let first = agent
            .call("Subscribe", json!({"channel": "queue:default"}))
            .await
            .expect("the queue's first page is answered");
        assert_eq!(first["hasMore"], true, "{enc:?}");
        let mut seen: Vec<String> = Vec::new();
        let mut page = first["engagements"].as_array().unwrap().clone();
        loop {
            assert!(!page.is_empty());
            seen.extend(
                page.iter()
                    .map(|e| e["channelSid"].as_str().unwrap().to_owned()),
            );
            let last = seen.last().unwrap().clone();
            let next = agent
                .call("GetEngagements", json!({"queue": "default", "after": last}))
                .await
                .unwrap();
            page = next["engagements"].as_array().unwrap().clone();
            if page.is_empty() {
                assert_eq!(next["hasMore"], false);
                break;
            }
        }
        let unique: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{enc:?}: no engagement twice");
        assert_eq!(unique, sids, "{enc:?}: every engagement once");
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "{enc:?}: oldest first");
        assert!(agent.closed.is_none());
    }
    server.shutdown().await;
}

/// A reply that would outgrow the outbound frame limit (here a custom
/// action's) is the broker's error: the client gets `internal`, not a cut
/// connection.
#[tokio::test]
async fn an_oversized_reply_is_answered_with_an_error() {
    let mut actions = switchboard::ActionRegistry::new();
    actions
        .register(switchboard::CustomAction::new("huge"), |_, _| async {
            Ok(json!({"blob": "x".repeat(3 << 20)}))
        })
        .unwrap();
    let server = TestServer::start_with("", actions).await;
    let mut c = server.customer().await;
    assert_eq!(c.fails("huge", json!({})).await, "internal");
    c.call("GetActions", json!({})).await.expect("still served");
    server.shutdown().await;
}

/// A token the parser cannot read is refused as "invalid token", without
/// the parser's own words.
#[tokio::test]
async fn token_errors_do_not_echo_the_parser() {
    let server = TestServer::start("").await;
    for bad in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.AAAA"] {
        let mut c = Client::open(&server, Enc::Json).await;
        let e = c.connect(json!({ "token": bad })).await.unwrap_err();
        assert_eq!(e["code"], "unauthorized");
        assert_eq!(e["message"], "invalid token", "{bad}");
    }
    let mut c = Client::open(&server, Enc::Json).await;
    let e = c
        .connect(json!({ "token": common::token("a", "agent", -3600) }))
        .await
        .unwrap_err();
    assert_eq!(e["message"], "token expired");
    server.shutdown().await;
}
