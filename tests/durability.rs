//! No message lost: durable storage across kill -9, recovery on reconnect
//! (`recover`, `after`), history paging, retention, and a corrupt data
//! directory refused.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    assert_gapless, config_file, expect_indexes_in_order, fresh_data_dir, pipeline_messages,
    read_until, send_messages, token, BrokerProcess, Client, Enc, TestServer,
};
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::ActionRegistry;

/// A broker started again on `dir`, and a customer reconnected there with
/// its resume token (and its `Connect` result).
async fn restart_and_resume(
    dir: &std::path::Path,
    resume: &Value,
    enc: Enc,
) -> (TestServer, Client, Value) {
    let server = TestServer::start_in(dir, "", ActionRegistry::new()).await;
    let mut customer = Client::open(&server, enc).await;
    let r = customer
        .connect(json!({"resumeToken": resume}))
        .await
        .unwrap();
    (server, customer, r)
}

/// Every message of a channel, paging back with `GetMessages`.
async fn whole_history(client: &mut Client, sid: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before = Value::Null;
    loop {
        let page = client
            .call(
                "GetMessages",
                json!({"channelSid": sid, "before": before, "limit": 100}),
            )
            .await
            .unwrap();
        let messages = page["messages"].as_array().unwrap().clone();
        if let Some(first) = messages.first() {
            before = first["index"].clone();
        }
        let more = page["hasMore"].as_bool().unwrap();
        all.splice(0..0, messages);
        if !more {
            return all;
        }
    }
}

/// One flooding sender: pipelines `SendMessage` (a window at a time) until
/// its socket dies; returns what was acknowledged as (index, body).
async fn flood(
    mut client: Client,
    sid: String,
    who: &'static str,
    acked_total: Arc<AtomicUsize>,
) -> (Vec<(u64, String)>, Client) {
    let mut acked = Vec::new();
    let mut i = 0usize;
    'outer: loop {
        let mut sent = Vec::new();
        for _ in 0..16 {
            let body = format!("{who}-{i}");
            i += 1;
            let id = client.next_id();
            let frame = client.encode(&json!({"id": id, "action": "SendMessage", "payload": {"channelSid": sid, "body": body}}));
            if client.ws.send(frame).await.is_err() {
                break 'outer;
            }
            sent.push((id, body));
        }
        for (id, body) in sent {
            loop {
                let Some(frame) = client.read_frame_within(Duration::from_secs(5)).await else {
                    break 'outer;
                };
                if frame.get("event").is_some() {
                    client.pushes.push_back(frame);
                    continue;
                }
                if frame["id"] == id {
                    if let Some(result) = frame.get("result") {
                        acked.push((result["index"].as_u64().unwrap(), body));
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
    }
    (acked, client)
}

fn last_seen(client: &Client) -> i64 {
    let indexes: Vec<u64> = client
        .pushes
        .iter()
        .filter(|p| p["event"] == "messageAdded")
        .map(|p| p["data"]["index"].as_u64().unwrap())
        .collect();
    for (i, index) in indexes.iter().enumerate() {
        assert_eq!(*index, i as u64, "pushes before the crash were in order");
    }
    indexes.last().map_or(-1, |i| *i as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_flooding_loses_no_acknowledged_message() {
    for level in ["fsync", "os"] {
        kill_once(level).await;
    }
}

/// kill -9 again and again on the same data directory while three clients
/// pipeline writes: every start succeeds (a torn tail never refuses it),
/// and after the last one every message ever acknowledged is there, in a
/// history without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loop_on_one_data_dir_keeps_every_acknowledged_message() {
    let config = config_file(
        "kill-loop.toml",
        "durability = \"fsync\"\n[rate_limits]\nenabled = false\n",
    );
    let dir = fresh_data_dir();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let env = [("SWITCHBOARD_JWT_SECRET", common::SECRET)];
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut resume = Value::Null;
    let mut sid = String::new();
    for round in 0..8 {
        let mut broker = BrokerProcess::start(&args, &env, &dir);
        let mut tab = Client::open_url(&broker.url, Enc::Json).await.unwrap();
        if round == 0 {
            tab.connect(json!({})).await.unwrap();
            resume = tab.connect_result["resumeToken"].clone();
            sid = tab.start_engagement().await;
        } else {
            tab.connect(json!({"resumeToken": resume})).await.unwrap();
        }
        let tab2 = {
            let mut c = Client::open_url(&broker.url, Enc::MsgPack).await.unwrap();
            c.connect(json!({"resumeToken": resume})).await.unwrap();
            c
        };
        let mut agent = Client::staff_at(&broker.url, "bob", "agent", Enc::MsgPack).await;
        if round == 0 {
            agent
                .call("JoinChannel", json!({"channelSid": sid}))
                .await
                .unwrap();
        }
        let acked_total = Arc::new(AtomicUsize::new(0));
        let who: [&'static str; 3] = match round % 2 {
            0 => ["a-tab1", "a-tab2", "a-bob"],
            _ => ["b-tab1", "b-tab2", "b-bob"],
        };
        let senders = vec![
            tokio::spawn(flood(tab, sid.clone(), who[0], acked_total.clone())),
            tokio::spawn(flood(tab2, sid.clone(), who[1], acked_total.clone())),
            tokio::spawn(flood(agent, sid.clone(), who[2], acked_total.clone())),
        ];
        // A different moment in the stream each round.
        let target = 200 + round * 97;
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while acked_total.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "round {round}: the flood got going");
        broker.signal("KILL");
        let _ = broker.wait_exit();
        for sender in senders {
            let (mine, _) = sender.await.unwrap();
            for (index, body) in mine {
                assert!(
                    acked.insert(index, body).is_none(),
                    "round {round}: index {index} acknowledged twice"
                );
            }
        }
    }
    let broker = BrokerProcess::start(&args, &env, &dir);
    let mut agent = Client::staff_at(&broker.url, "bob", "agent", Enc::Json).await;
    let history = whole_history(&mut agent, &sid).await;
    assert_gapless(&history, 0, "after the kill loop");
    for (index, body) in &acked {
        let stored = history
            .get(*index as usize)
            .unwrap_or_else(|| panic!("acknowledged {index} lost"));
        assert_eq!(stored["body"], body.as_str(), "message {index}");
    }
    broker.signal("TERM");
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

async fn kill_once(level: &str) {
    let config = config_file(
        &format!("kill-{level}.toml"),
        &format!("durability = \"{level}\"\n[rate_limits]\nenabled = false\n"),
    );
    let dir = fresh_data_dir();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let env = [("SWITCHBOARD_JWT_SECRET", common::SECRET)];
    let mut broker = BrokerProcess::start(&args, &env, &dir);

    let mut tab1 = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    tab1.connect(json!({})).await.unwrap();
    let resume = tab1.connect_result["resumeToken"].clone();
    let sid = tab1.start_engagement().await;
    let mut tab2 = Client::open_url(&broker.url, Enc::MsgPack).await.unwrap();
    tab2.connect(json!({"resumeToken": resume})).await.unwrap();
    // Per-identity state, acknowledged before the crash.
    let widget = tab2.call("ToggleChatVisibility", json!({})).await.unwrap();
    tab2.call(
        "SetInputText",
        json!({"channelSid": sid, "body": "draft before the crash"}),
    )
    .await
    .unwrap();
    let mut agent = Client::staff_at(&broker.url, "bob", "agent", Enc::MsgPack).await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    let mut observer = Client::staff_at(&broker.url, "obs", "service", Enc::Json).await;
    observer
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    let observed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let observed_in = observed.clone();
    let watcher = tokio::spawn(async move {
        while let Some(frame) = observer.read_frame_within(Duration::from_secs(5)).await {
            if frame["event"] == "messageAdded" {
                observed_in
                    .lock()
                    .unwrap()
                    .push(frame["data"]["index"].as_u64().unwrap());
            }
        }
    });

    let acked_total = Arc::new(AtomicUsize::new(0));
    let senders = vec![
        tokio::spawn(flood(tab1, sid.clone(), "tab1", acked_total.clone())),
        tokio::spawn(flood(tab2, sid.clone(), "tab2", acked_total.clone())),
        tokio::spawn(flood(agent, sid.clone(), "bob", acked_total.clone())),
    ];
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while acked_total.load(Ordering::Relaxed) < 600 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{level}: the flood got going");
    broker.signal("KILL");
    let _ = broker.wait_exit();

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut tab1_seen = -1;
    for (n, sender) in senders.into_iter().enumerate() {
        let (mine, client) = sender.await.unwrap();
        if n == 0 {
            tab1_seen = last_seen(&client);
        }
        for (index, body) in mine {
            assert!(
                acked.insert(index, body).is_none(),
                "{level}: index {index} acknowledged twice"
            );
        }
    }
    watcher.await.unwrap();
    let observed = observed.lock().unwrap().clone();
    for (i, index) in observed.iter().enumerate() {
        assert_eq!(*index, i as u64, "{level}: observer order before the crash");
    }
    let observer_seen = observed.last().map_or(-1, |i| *i as i64);

    // Restart on the same data directory.
    let broker2 = BrokerProcess::start(&args, &env, &dir);
    let mut agent = Client::staff_at(&broker2.url, "bob", "agent", Enc::Json).await;
    let history = whole_history(&mut agent, &sid).await;
    assert_gapless(&history, 0, level);
    for (index, body) in &acked {
        let stored = history
            .get(*index as usize)
            .unwrap_or_else(|| panic!("{level}: acknowledged {index} lost"));
        assert_eq!(stored["body"], body.as_str(), "{level}: message {index}");
    }
    let last = history.len() as u64 - 1;
    assert!(observer_seen <= last as i64 && tab1_seen <= last as i64);

    // The observer recovers exactly what it missed.
    let mut observer = Client::staff_at(&broker2.url, "obs", "service", Enc::MsgPack).await;
    let r = observer
        .call("Subscribe", json!({"channel": sid, "after": observer_seen}))
        .await
        .unwrap();
    assert_eq!(r["recovered"], true);
    if observer_seen < last as i64 {
        let missed = read_until(&mut observer, last).await;
        assert_eq!(
            missed,
            history[(observer_seen + 1) as usize..],
            "{level}: observer recovery"
        );
    }
    // The customer comes back as the same identity, still engaged, and
    // recovers from what its tab had seen.
    let mut tab = Client::open_url(&broker2.url, Enc::Json).await.unwrap();
    let r = tab
        .connect(json!({"resumeToken": resume, "recover": {sid.as_str(): tab1_seen}}))
        .await
        .unwrap();
    assert_eq!(r["engagement"]["channelSid"], sid.as_str());
    assert_eq!(
        r["widget"]["expanded"], widget["expanded"],
        "{level}: widget state"
    );
    assert_eq!(
        r["inputText"][sid.as_str()],
        "draft before the crash",
        "{level}: draft"
    );
    assert_eq!(r["recovered"][sid.as_str()], true);
    if tab1_seen < last as i64 {
        let missed = read_until(&mut tab, last).await;
        assert_eq!(
            missed,
            history[(tab1_seen + 1) as usize..],
            "{level}: customer recovery"
        );
    }
    // Numbering carries on after the last stored index.
    let next = tab
        .call(
            "SendMessage",
            json!({"channelSid": sid, "body": "after the crash"}),
        )
        .await
        .unwrap();
    assert_eq!(next["index"], last + 1);
    broker2.signal("TERM");
    drop(broker2);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_closed_with_4008_recovers_the_whole_stream() {
    const MESSAGES: u64 = 3000;
    let server = TestServer::start(
        "[limits]\noutbox_frames = 64\noutbox_bytes = 67108864\n[rate_limits]\nenabled = false\n",
    )
    .await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut stalled = server.staff("slow", "agent").await;
    stalled
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    let body = "z".repeat(8 * 1024);
    for _ in 0..MESSAGES {
        customer
            .call("SendMessage", json!({"channelSid": sid, "body": body}))
            .await
            .unwrap();
        customer.pushes.clear();
    }
    assert_eq!(server.broker.metrics.snapshot().slow_consumer_closes, 1);
    // What reached the stalled socket is a gapless prefix.
    let mut got = Vec::new();
    while let Some(frame) = stalled.read_frame_within(Duration::from_secs(5)).await {
        if frame["event"] == "messageAdded" {
            got.push(frame["data"].clone());
        }
    }
    assert_gapless(&got, 0, "before the 4008");
    assert!(
        (got.len() as u64) < MESSAGES,
        "the stalled reader did miss messages"
    );
    let seen = got.len() as i64 - 1;
    let mut again = server.staff("slow", "agent").await;
    let r = again
        .call("Subscribe", json!({"channel": sid, "after": seen}))
        .await
        .unwrap();
    assert_eq!(r["recovered"], true);
    got.extend(read_until(&mut again, MESSAGES - 1).await);
    assert_gapless(&got, 0, "after recovery");
    assert_eq!(got.len() as u64, MESSAGES);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_recovery_at_the_seam_while_the_channel_keeps_going() {
    for config in [
        "[rate_limits]\nenabled = false\n",
        "durability = \"memory\"\n[history]\nmemory_messages = 2000\n[rate_limits]\nenabled = false\n",
    ] {
        const MESSAGES: u64 = 600;
        let server = TestServer::start(config).await;
        let mut customer = server.customer().await;
        let sid = customer.start_engagement().await;
        let mut member = server.staff("member", "agent").await;
        member
            .call("JoinChannel", json!({"channelSid": sid}))
            .await
            .unwrap();
        // An observer and a member that keep dropping their connection and
        // coming back with recovery, while the writer writes.
        let mut observer = server.staff("watch", "service").await;
        observer
            .call("Subscribe", json!({"channel": sid}))
            .await
            .unwrap();
        let sid_w = sid.clone();
        let writer = tokio::spawn(async move {
            for i in 0..MESSAGES {
                customer
                    .call(
                        "SendMessage",
                        json!({"channelSid": sid_w, "body": format!("m{i}")}),
                    )
                    .await
                    .unwrap();
                customer.pushes.clear();
            }
        });
        let (mut seen_obs, mut seen_mem) = (Vec::<u64>::new(), Vec::<u64>::new());
        let mut round = 0;
        while seen_obs.last() != Some(&(MESSAGES - 1)) || seen_mem.last() != Some(&(MESSAGES - 1)) {
            round += 1;
            for _ in 0..(37 + round * 11) % 90 {
                if seen_obs.last() == Some(&(MESSAGES - 1)) {
                    break;
                }
                seen_obs.push(
                    observer.push("messageAdded").await["index"]
                        .as_u64()
                        .unwrap(),
                );
            }
            for _ in 0..(53 + round * 7) % 80 {
                if seen_mem.last() == Some(&(MESSAGES - 1)) {
                    break;
                }
                seen_mem.push(member.push("messageAdded").await["index"].as_u64().unwrap());
            }
            let obs_last = seen_obs.last().map_or(-1, |i| *i as i64);
            let mem_last = seen_mem.last().map_or(-1, |i| *i as i64);
            drop(observer);
            drop(member);
            observer = Client::open(&server, Enc::MsgPack).await;
            observer
                .connect(json!({"token": token("watch", "service", 60)}))
                .await
                .unwrap();
            let r = observer
                .call("Subscribe", json!({"channel": sid, "after": obs_last}))
                .await
                .unwrap();
            assert_eq!(r["recovered"], true);
            member = Client::open(&server, Enc::Json).await;
            let r = member
                .connect(json!({"token": token("member", "agent", 60), "recover": {sid.as_str(): mem_last}}))
                .await
                .unwrap();
            assert_eq!(r["recovered"][sid.as_str()], true);
        }
        writer.await.unwrap();
        let expected: Vec<u64> = (0..MESSAGES).collect();
        assert_eq!(
            seen_obs, expected,
            "observer: no gap, no duplicate ({config:?})"
        );
        assert_eq!(
            seen_mem, expected,
            "member: no gap, no duplicate ({config:?})"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn paging_and_retention_boundaries() {
    for config in [
        "[history]\nmax_messages = 10\nmemory_messages = 5\npurge_interval_secs = 1\n",
        "durability = \"memory\"\n[history]\nmax_messages = 100\nmemory_messages = 10\npurge_interval_secs = 1\n",
    ] {
        // A cluster keeps history in Redis: `durability` and its memory
        // window are the embedded store's.
        if config.starts_with("durability") && std::env::var_os("SWITCHBOARD_TEST_REDIS_URL").is_some() {
            continue;
        }
        let server = TestServer::start(config).await;
        let mut customer = server.customer().await;
        let sid = customer.start_engagement().await;
        send_messages(&mut customer, &sid, 30).await;
        // Retention keeps the newest 10 (on disk, or in the memory window).
        let kept = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let page = customer.call("GetMessages", json!({"channelSid": sid, "limit": 100})).await.unwrap();
                if page["messages"][0]["index"] == 20 {
                    return page;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("retention ran");
        assert_eq!(kept["messages"].as_array().unwrap().len(), 10);
        assert_eq!(kept["hasMore"], false);
        let page = customer.call("GetMessages", json!({"channelSid": sid, "before": 27, "limit": 3})).await.unwrap();
        let indexes: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["index"].as_u64().unwrap()).collect();
        assert_eq!(indexes, [24, 25, 26]);
        assert_eq!(page["hasMore"], true);
        assert_eq!(page["messages"][0]["body"], "m24");
        assert_eq!(customer.fails("GetMessages", json!({"channelSid": sid, "limit": 0})).await, "bad_request");
        assert_eq!(customer.fails("GetMessages", json!({"channelSid": sid, "limit": 101})).await, "bad_request");

        let mut agent = server.staff("a", "agent").await;
        let r = agent.call("Subscribe", json!({"channel": sid, "after": 2})).await.unwrap();
        assert_eq!(r["recovered"], false, "history no longer reaches back ({config})");
        agent.no_push("messageAdded", Duration::from_millis(100)).await;
        let mut agent2 = server.staff("b", "agent").await;
        let r = agent2.call("Subscribe", json!({"channel": sid, "after": 21})).await.unwrap();
        assert_eq!(r["recovered"], true);
        let replayed: Vec<u64> = read_until(&mut agent2, 29).await.iter().map(|m| m["index"].as_u64().unwrap()).collect();
        assert_eq!(replayed, (22..30).collect::<Vec<_>>());
        let mut other = server.staff("c", "agent").await;
        assert_eq!(other.fails("GetMessages", json!({"channelSid": sid})).await, "not_a_member");
        server.shutdown().await;
    }
}

/// Age retention can delete every message of a live channel; its
/// numbering still carries on from where it was, after a restart too, and
/// a reconnect from before the purge is told history no longer reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_retention_empties_a_channel_without_resetting_its_numbering() {
    let config =
        "[rate_limits]\nenabled = false\n[history]\nmax_age_secs = 1\npurge_interval_secs = 1\n";
    let server = TestServer::start(config).await;
    let mut customer = server.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    send_messages(&mut customer, &sid, 5).await;
    let emptied = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let page = customer
                .call("GetMessages", json!({"channelSid": sid}))
                .await
                .unwrap();
            if page["messages"].as_array().unwrap().is_empty() {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("age retention ran");
    assert_eq!(emptied["hasMore"], false);
    let dir = server.stop_keeping_data().await;

    let (server, mut customer, r) = restart_and_resume(&dir, &resume, Enc::Json).await;
    assert_eq!(r["engagement"]["channelSid"], sid.as_str());
    let sent = customer
        .call("SendMessage", json!({"channelSid": sid, "body": "after"}))
        .await
        .unwrap();
    assert_eq!(sent["index"], 5, "numbering carries on");
    let mut agent = server.staff("a", "agent").await;
    let sub = agent
        .call("Subscribe", json!({"channel": sid, "after": 1}))
        .await
        .unwrap();
    assert_eq!(sub["recovered"], false);
    server.shutdown().await;
}

/// With a store, the newest pages come from the in-memory window and older
/// ones from disk; paging back across the seam gives every message once,
/// in order, with `hasMore` right on both sides of it. (Multi-threaded, as
/// the broker runs: disk reads then leave the worker thread.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_back_across_the_memory_window_and_the_disk() {
    let server =
        TestServer::start("[rate_limits]\nenabled = false\n[history]\nmemory_messages = 8\n").await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let first = customer
        .call("GetMessages", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(first, json!({"messages": [], "hasMore": false}));
    send_messages(&mut customer, &sid, 30).await;
    // Window: 22..30. Limits chosen so that pages start inside the window,
    // exactly at its start, and below it.
    for limit in [1u64, 5, 7, 8, 9, 30, 100] {
        let mut seen = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut payload = json!({"channelSid": sid, "limit": limit});
            if let Some(b) = before {
                payload["before"] = b.into();
            }
            let page = customer.call("GetMessages", payload).await.unwrap();
            let messages = page["messages"].as_array().unwrap();
            let indexes: Vec<u64> = messages
                .iter()
                .map(|m| m["index"].as_u64().unwrap())
                .collect();
            let top = before.unwrap_or(30);
            let expect: Vec<u64> = (top.saturating_sub(limit)..top).collect();
            assert_eq!(indexes, expect, "limit {limit}, before {before:?}");
            for m in messages {
                assert_eq!(m["body"], format!("m{}", m["index"]));
            }
            assert_eq!(
                page["hasMore"],
                expect[0] > 0,
                "limit {limit}, before {before:?}"
            );
            seen.splice(0..0, indexes);
            if page["hasMore"] == false {
                break;
            }
            before = Some(expect[0]);
        }
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn state_survives_a_restart_and_ended_transcripts_stay_readable() {
    let server = TestServer::start("").await;
    let mut customer = server.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer
        .call("StartEngagement", json!({"formData": {"name": "Ada"}}))
        .await
        .unwrap()["channelSid"]
        .as_str()
        .unwrap()
        .to_owned();
    customer
        .call("ToggleChatVisibility", json!({}))
        .await
        .unwrap();
    customer
        .call("SetInputText", json!({"channelSid": sid, "body": "draft"}))
        .await
        .unwrap();
    let mut agent = server.staff("bob", "agent").await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    agent
        .call("SendMessage", json!({"channelSid": sid, "body": "hello"}))
        .await
        .unwrap();
    // A second engagement that ends: both leave.
    let mut gone = server.customer().await;
    let ended = gone.start_engagement().await;
    gone.call("SendMessage", json!({"channelSid": ended, "body": "bye"}))
        .await
        .unwrap();
    gone.call("RestartEngagement", json!({})).await.unwrap();
    let dir = server.stop_keeping_data().await;

    let (server, mut customer, r) = restart_and_resume(&dir, &resume, Enc::MsgPack).await;
    assert_eq!(r["engagement"]["channelSid"], sid.as_str());
    assert_eq!(r["widget"]["expanded"], true);
    assert_eq!(r["inputText"][sid.as_str()], "draft");
    let mut queue = server.staff("q", "agent").await;
    let open = queue
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    assert_eq!(open["engagements"][0]["channelSid"], sid.as_str());
    assert_eq!(open["engagements"][0]["formData"], json!({"name": "Ada"}));
    assert_eq!(open["engagements"].as_array().unwrap().len(), 1);
    // The agent is still a member; numbering continues.
    let mut agent = server.staff("bob", "agent").await;
    let sent = agent
        .call(
            "SendMessage",
            json!({"channelSid": sid, "body": "still here"}),
        )
        .await
        .unwrap();
    assert_eq!(sent["index"], 1);
    assert_eq!(customer.push("messageAdded").await["body"], "still here");
    // The ended engagement's transcript: agents may read it, customers not.
    let transcript = agent
        .call("GetMessages", json!({"channelSid": ended}))
        .await
        .unwrap();
    assert_eq!(transcript["messages"][0]["body"], "bye");
    assert_eq!(
        customer
            .fails("GetMessages", json!({"channelSid": ended}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        agent
            .fails("JoinChannel", json!({"channelSid": ended}))
            .await,
        "not_found"
    );
    server.shutdown().await;
}

/// A client that pipelines its commands is not held to one commit per
/// command: the broker keeps reading while replies wait for durability.
/// Replies still come in command order (read-only ones wait behind the
/// writes before them), each command sees the effects of those before it,
/// and everything acknowledged is there after a restart.
#[tokio::test]
async fn pipelined_commands_are_answered_in_order_once_durable() {
    let server = TestServer::start("[rate_limits]\nenabled = false").await;
    let mut customer = server.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    // More commands than the replies a session may hold, without reading.
    const ROUNDS: u64 = 50;
    let mut sent = Vec::new();
    for i in 0..ROUNDS {
        for (action, payload) in [
            (
                "SendMessage",
                json!({"channelSid": sid, "body": format!("m{i}")}),
            ),
            ("SendTyping", json!({"channelSid": sid})),
            (
                "SetInputText",
                json!({"channelSid": sid, "body": format!("draft {i}")}),
            ),
            ("GetMessages", json!({"channelSid": sid, "limit": 1})),
        ] {
            let id = customer.send(action, payload).await;
            sent.push((id, action, i));
        }
    }
    for (id, action, i) in sent {
        let reply = loop {
            let frame = customer.read_frame().await.expect("a reply");
            if frame.get("event").is_none() {
                break frame;
            }
        };
        assert_eq!(
            reply["id"], id,
            "replies in command order ({action} of round {i})"
        );
        let result = &reply["result"];
        assert!(reply.get("error").is_none(), "{action}: {reply}");
        match action {
            "SendMessage" => assert_eq!(result["index"], i),
            "GetMessages" => {
                assert_eq!(
                    result["messages"][0]["index"], i,
                    "sees the message before it"
                );
                assert_eq!(result["messages"][0]["body"], format!("m{i}"));
            }
            _ => {}
        }
    }
    let dir = server.stop_keeping_data().await;

    let (server, mut customer, r) = restart_and_resume(&dir, &resume, Enc::Json).await;
    assert_eq!(
        r["inputText"][sid.as_str()],
        format!("draft {}", ROUNDS - 1)
    );
    let history = whole_history(&mut customer, &sid).await;
    assert_gapless(&history, 0, "pipelined");
    assert_eq!(history.len() as u64, ROUNDS);
    server.shutdown().await;
}

/// A burst of pipelined messages far past the replies a session may hold
/// (held or parked): the session stops reading at the bound, reads on as
/// the store settles them, and answers every one, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_past_the_reply_bound_is_answered_in_order() {
    const MESSAGES: u64 = 500;
    let server = TestServer::start("[rate_limits]\nenabled = false").await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let ids = pipeline_messages(&mut customer, &sid, "m", MESSAGES).await;
    expect_indexes_in_order(&mut customer, ids).await;
    let history = whole_history(&mut customer, &sid).await;
    assert_gapless(&history, 0, "burst");
    assert_eq!(history.len() as u64, MESSAGES);
    server.shutdown().await;
}

/// A replaced `SendMessage` is not pipelined: it may read anything, so it
/// runs only once the session's earlier writes are durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_send_message_runs_after_earlier_writes_are_durable() {
    let not_durable = Arc::new(AtomicUsize::new(0));
    let mut actions = ActionRegistry::new();
    let seen = not_durable.clone();
    actions
        .replace("SendMessage", move |ctx, payload| {
            let seen = seen.clone();
            async move {
                if !ctx.all_writes_durable() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                let send = ActionRegistry::builtin("SendMessage").expect("built in");
                send.call(&ctx, payload).await
            }
        })
        .unwrap();
    let server = TestServer::start_with("[rate_limits]\nenabled = false", actions).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let payload = json!({"channelSid": sid, "body": format!("m{i}")});
        ids.push(customer.send("SendMessage", payload).await);
    }
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(customer.reply(id).await["result"]["index"], i);
    }
    assert_eq!(
        not_durable.load(Ordering::SeqCst),
        0,
        "ran before earlier writes were durable"
    );
    server.shutdown().await;
}

/// A graceful shutdown answers every command it ran before the close
/// frame, even those whose replies were still waiting for a commit: after
/// the restart the channel holds exactly the acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_command_it_ran() {
    let server = TestServer::start("[rate_limits]\nenabled = false").await;
    let mut customer = server.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    let mut sent = BTreeMap::new();
    for i in 0..300 {
        let body = format!("m{i}");
        let id = customer
            .send("SendMessage", json!({"channelSid": sid, "body": body}))
            .await;
        sent.insert(id, body);
    }
    let stopping = tokio::spawn(server.stop_keeping_data());
    let mut acked = Vec::new();
    while let Some(frame) = customer.read_frame().await {
        if let (Some(id), Some(result)) = (frame["id"].as_u64(), frame.get("result")) {
            acked.push((result["index"].as_u64().unwrap(), sent[&id].clone()));
        }
    }
    assert_eq!(customer.closed.as_ref().map(|c| c.0), Some(4000));
    let dir = stopping.await.unwrap();

    let (server, mut customer, _) = restart_and_resume(&dir, &resume, Enc::Json).await;
    let history = whole_history(&mut customer, &sid).await;
    assert_gapless(&history, 0, "after shutdown");
    assert_eq!(
        history.len(),
        acked.len(),
        "every stored message was answered"
    );
    for (index, body) in &acked {
        assert_eq!(history[*index as usize]["body"], body.as_str());
    }
    server.shutdown().await;
}

#[test]
fn a_corrupt_data_dir_is_refused_and_left_alone() {
    let dir = fresh_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("switchboard.db");
    let garbage = b"this is not a database, and it must not be wiped".repeat(100);
    std::fs::write(&db, &garbage).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a usable Switchboard store"),
        "{stderr}"
    );
    assert!(stderr.contains(dir.to_str().unwrap()), "{stderr}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file is untouched"
    );
    let _ = std::fs::remove_dir_all(dir);
}
