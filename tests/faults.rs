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
