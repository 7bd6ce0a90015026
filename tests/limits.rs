//! Limits: frame size (4009), idle timeout, slow consumers (4008).

mod common;

use std::time::Duration;

use common::{expect_indexes_in_order, pipeline_messages, Enc, TestServer};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn an_oversized_frame_closes_that_session_only() {
    let server = TestServer::start("").await;
    let mut honest = server.customer().await;
    let sid = honest.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    let mut big = server.customer().await;
    big.send_raw(Message::Text("x".repeat(70 * 1024).into()))
        .await;
    assert_eq!(big.close_code().await, 4009);
    assert_eq!(server.broker.metrics.snapshot().frames_too_large, 1);
    honest
        .call(
            "SendMessage",
            json!({"channelSid": sid, "body": "still here"}),
        )
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_closed_by_the_idle_timeout() {
    let server =
        TestServer::start("[limits]\nping_interval_ms = 100\nidle_timeout_ms = 400\n").await;
    let mut silent = server.customer().await;
    let mut live = server.customer().await;
    // `live` keeps reading, so its client library answers the pings.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    while tokio::time::Instant::now() < deadline {
        let _ = live.read_frame_within(Duration::from_millis(50)).await;
    }
    assert!(live.closed.is_none());
    live.call("GetActions", json!({})).await.unwrap();
    // `silent` never read, never answered a ping.
    assert_eq!(silent.close_code().await, 1001);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_closed_with_4008_and_costs_nobody_anything() {
    const MESSAGES: usize = 3000;
    // Rate limits off: this one customer posts 3000 messages as fast as it
    // can on purpose (the rate limiter is tested in tests/hostile.rs).
    let server = TestServer::start(
        "[limits]\noutbox_frames = 256\noutbox_bytes = 1048576\n[rate_limits]\nenabled = false\n",
    )
    .await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    // A stalled observer: subscribes, then never reads again.
    let mut stalled = server.staff("stalled", "agent").await;
    stalled
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    // A healthy observer reads everything, in its own task.
    let mut healthy = server.staff_enc("healthy", "agent", Enc::MsgPack).await;
    healthy
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        while next < MESSAGES as u64 {
            let m = healthy.push("messageAdded").await;
            assert_eq!(m["index"], next, "healthy observer: order");
            next += 1;
        }
        healthy
    });

    let body = "y".repeat(8 * 1024);
    for i in 0..MESSAGES {
        let r = customer
            .call("SendMessage", json!({"channelSid": sid, "body": body}))
            .await
            .unwrap();
        assert_eq!(r["index"], i as u64);
        customer.pushes.clear();
    }
    let healthy = reader.await.unwrap();
    assert!(healthy.closed.is_none());
    let metrics = server.broker.metrics.snapshot();
    assert_eq!(metrics.slow_consumer_closes, 1, "{metrics:?}");
    // The stalled session is gone from the broker.
    let stalled_gone = async {
        while server.broker.session_count() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), stalled_gone)
        .await
        .expect("stalled session removed");
    // Reading what reached its socket ends in a closed connection.
    let _ = stalled.ws.flush().await;
    while stalled
        .read_frame_within(Duration::from_secs(5))
        .await
        .is_some()
    {}
    assert!(stalled.closed.is_some());
    server.shutdown().await;
}

/// A publisher that pipelines a long burst: the broker may run hundreds of
/// its commands in one go (one cork), but observers that keep reading are
/// never closed as slow consumers for it, however low the outbox bound:
/// what a cork gathers for one session is written a `writev` at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_reaches_observers_that_keep_reading() {
    const MESSAGES: u64 = 2000;
    const OBSERVERS: usize = 8;
    let server = TestServer::start(
        "durability = \"memory\"\n[limits]\noutbox_frames = 200\n[rate_limits]\nenabled = false\n",
    )
    .await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut readers = Vec::new();
    for i in 0..OBSERVERS {
        let mut observer = server.staff(&format!("observer-{i}"), "agent").await;
        observer
            .call("Subscribe", json!({"channel": sid}))
            .await
            .unwrap();
        readers.push(tokio::spawn(async move {
            for next in 0..MESSAGES {
                let m = observer.push("messageAdded").await;
                assert_eq!(m["index"], next, "observer {i}: order");
            }
            observer
        }));
    }
    // The whole burst written before any reply is read.
    let ids = pipeline_messages(&mut customer, &sid, "m", MESSAGES).await;
    expect_indexes_in_order(&mut customer, ids).await;
    for reader in readers {
        let observer = reader.await.unwrap();
        assert!(observer.closed.is_none(), "an observer was closed");
    }
    assert_eq!(server.broker.metrics.snapshot().slow_consumer_closes, 0);
    server.shutdown().await;
}
