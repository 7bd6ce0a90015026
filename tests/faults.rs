//! Faults and abuse the broker must survive and answer clearly: a stalled
//! reader, replies that could grow past any frame, a store that cannot
//! write, a damaged journal. Real sockets, real files.

mod common;

use std::time::Duration;

use common::{assert_gapless, read_until, send_messages, Client, Enc, TestServer};

/// Broker processes listen on a port of their own.
const LISTEN: [&str; 2] = ["--listen", "127.0.0.1:0"];
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

/// 90 acknowledged messages, kill -9, 64 bytes of the journal overwritten:
/// the broker refuses to start (naming the file) and touches nothing; with
/// --accept-data-loss it starts, hands out no index a client may have seen
/// again, and recovery of the lost range answers `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_refused_not_rewound() {
    let dir = common::fresh_data_dir();
    let mut broker = common::BrokerProcess::start(&LISTEN, &[], &dir);
    let mut customer = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    send_messages(&mut customer, &sid, 90).await;
    broker.signal("KILL");
    broker.wait_exit();
    // The log's segment that holds the messages (the only one a new store
    // has written to).
    let segment = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a log segment to damage");
    let mut bytes = std::fs::read(&segment).unwrap();
    // Three quarters into its records (with `fsync` a segment is prepared
    // with zeros, so the file runs on past them).
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let at = used * 3 / 4;
    bytes[at..at + 64].fill(0x5a);
    std::fs::write(&segment, &bytes).unwrap();
    let before = files_under(&dir);

    let (code, stderr) = common::refused_start(&dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
    assert!(stderr.contains(dir.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("--accept-data-loss"), "{stderr}");
    // The damage is named: the file and the offset of the first bad record.
    assert!(
        stderr.contains(segment.to_str().unwrap()) && stderr.contains("byte offset"),
        "{stderr}"
    );
    assert!(files_under(&dir) == before, "everything is left untouched");

    let broker = common::BrokerProcess::start(
        &["--listen", "127.0.0.1:0", "--accept-data-loss"],
        &[],
        &dir,
    );
    let mut tab = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    // A client that last saw index 0 missed the lost range: it is told to
    // reload, not given a history with a hole in it.
    let r = tab
        .connect(json!({"resumeToken": resume, "recover": {&sid: 0}}))
        .await
        .unwrap();
    assert_eq!(
        r["recovered"][&sid], false,
        "the lost range is not replayed"
    );
    let next = tab
        .call("SendMessage", json!({"channelSid": sid, "body": "after"}))
        .await
        .unwrap();
    assert!(
        next["index"].as_u64().unwrap() > 89,
        "no index a client saw is handed out again: {next}"
    );
    broker.signal("TERM");
    drop(broker);
    // Accepted once: the next start is a normal one.
    let broker = common::BrokerProcess::start(&LISTEN, &[], &dir);
    broker.signal("TERM");
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every file under `dir` with its content.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            let content = std::fs::read(&path).unwrap();
            out.push((path, content));
        }
    }
    out.sort();
    out
}

/// An empty or schema-less database file, or a database that is gone while
/// its acknowledged-writes record says it held data, is an error, not a
/// fresh start; and nothing is written over it.
#[test]
fn empty_schemaless_or_missing_stores_are_refused() {
    let dir = common::fresh_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("switchboard.db");
    std::fs::write(&db, b"").unwrap();
    let (code, stderr) = common::refused_start(&dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);

    std::fs::remove_file(&db).unwrap();
    let other = foreign_sqlite_file();
    std::fs::write(&db, &other).unwrap();
    let (code, stderr) = common::refused_start(&dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no Switchboard schema"), "{stderr}");
    assert!(std::fs::read(&db).unwrap() == other, "left untouched");
    let _ = std::fs::remove_dir_all(&dir);

    // A store that held acknowledged writes, then lost its database file.
    let dir = common::fresh_data_dir();
    let broker = common::BrokerProcess::start(&LISTEN, &[], &dir);
    let url = broker.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::open_url(&url, Enc::Json).await.unwrap();
        c.connect(json!({})).await.unwrap();
        c.start_engagement().await;
    });
    broker.signal("TERM");
    drop(broker);
    std::fs::remove_dir_all(dir.join("log")).unwrap();
    let (code, stderr) = common::refused_start(&dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A valid SQLite file that is not a Switchboard store.
fn foreign_sqlite_file() -> Vec<u8> {
    let dir = common::fresh_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("other.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE notes (x)").unwrap();
    drop(conn);
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    bytes
}

/// A store that cannot be written at start (its file system read-only, or
/// its file read-only) stops the broker with a message naming the path,
/// instead of starting "healthy" and hanging every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_stops_the_start() {
    let mount = common::Tmpfs::mount("16m");
    let dir = match &mount {
        Some(m) => m.path.join("data"),
        None => common::fresh_data_dir(),
    };
    let broker = common::BrokerProcess::start(&LISTEN, &[], &dir);
    let mut c = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    c.connect(json!({})).await.unwrap();
    c.start_engagement().await;
    broker.signal("TERM");
    drop(broker);
    let log = dir.join("log");
    match &mount {
        Some(m) => m.set_read_only(true),
        None => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
    }
    let (code, stderr) = common::refused_start(&dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(dir.to_str().unwrap()),
        "names the path: {stderr}"
    );
    assert!(
        stderr.contains("cannot write") || stderr.contains("Read-only"),
        "{stderr}"
    );
    match &mount {
        Some(m) => m.set_read_only(false),
        None => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A `SendMessage`'s answer and how long it took.
async fn timed_send(
    customer: &mut Client,
    sid: &str,
    body: String,
) -> (Result<Value, Value>, Duration) {
    let started = std::time::Instant::now();
    let reply = customer
        .call("SendMessage", json!({"channelSid": sid, "body": body}))
        .await;
    (reply, started.elapsed())
}

/// Fills a file system until nothing more fits; returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = file.sync_all();
    path
}

/// A full disk (a real, small tmpfs): every write is answered within 2 s
/// with `unavailable`, nothing that was not durable is shown to anyone, the
/// failure is counted in `/metrics`; once there is room again the broker
/// resumes by itself; SIGTERM exits in time whatever the store is doing; and
/// what was acknowledged is all there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_fast_resumes_and_loses_nothing() {
    let Some(mount) = common::Tmpfs::mount("8m") else {
        return;
    };
    let dir = mount.path.join("data");
    let config = common::config_file("full-disk.toml", "[rate_limits]\nenabled = false\n");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ];
    let mut broker =
        common::BrokerProcess::start(&args, &[("SWITCHBOARD_JWT_SECRET", common::SECRET)], &dir);
    let mut customer = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    let mut observer = Client::staff_at(&broker.url, "watcher", "agent", Enc::Json).await;
    observer
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();
    let mut acked: Vec<u64> = Vec::new();
    for i in 0..5 {
        let (reply, _) = timed_send(&mut customer, &sid, format!("before {i}")).await;
        acked.push(reply.unwrap()["index"].as_u64().unwrap());
    }

    let filler = fill(&mount.path);
    let mut unavailable = 0;
    for i in 0..20 {
        let (reply, took) = timed_send(
            &mut customer,
            &sid,
            format!("while full {i} {}", "x".repeat(4000)),
        )
        .await;
        assert!(took < Duration::from_secs(2), "answered in {took:?}");
        match reply {
            Ok(result) => acked.push(result["index"].as_u64().unwrap()),
            Err(e) => {
                assert_eq!(e["code"], "unavailable", "{e}");
                unavailable += 1;
            }
        }
    }
    assert!(unavailable > 0, "a full disk refuses writes");
    // Pipelined while full: every command is answered, in command order,
    // each acknowledged or `unavailable` (replies that waited for a write
    // that failed are answered by the commit that failed it).
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = format!("pipelined while full {i} {}", "x".repeat(4000));
        ids.push(
            customer
                .send("SendMessage", json!({"channelSid": sid, "body": body}))
                .await,
        );
    }
    for id in ids {
        let reply = loop {
            let frame = customer.read_frame().await.expect("a reply");
            if frame.get("event").is_none() {
                break frame;
            }
        };
        assert_eq!(reply["id"], id, "replies in command order: {reply}");
        match reply.get("result") {
            Some(result) => acked.push(result["index"].as_u64().unwrap()),
            None => assert_eq!(reply["error"]["code"], "unavailable", "{reply}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let addr: std::net::SocketAddr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let ready = common::raw_exchange(addr, &get("/readyz"), Duration::from_secs(5)).await;
    assert!(
        ready.starts_with("HTTP/1.1 503"),
        "not ready while full: {ready}"
    );
    let metrics = common::raw_exchange(addr, &get("/metrics"), Duration::from_secs(5)).await;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_store_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a store failure counter");
    assert!(failures >= 1.0, "{metrics}");

    // Room again: the broker resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match timed_send(&mut customer, &sid, "after".into()).await.0 {
                Ok(result) => return result["index"].as_u64().unwrap(),
                Err(e) => assert_eq!(e["code"], "unavailable", "{e}"),
            }
        }
    })
    .await
    .expect("resumes once there is room");
    acked.push(resumed);
    let ready = common::raw_exchange(addr, &get("/readyz"), Duration::from_secs(5)).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "ready again: {ready}");

    // The observer saw exactly the acknowledged messages, in order.
    let seen: Vec<u64> = read_until(&mut observer, resumed)
        .await
        .iter()
        .map(|m| m["index"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, acked, "nothing that failed was shown");

    // Full again, then SIGTERM: it exits in time.
    let filler = fill(&mount.path);
    let _ = timed_send(&mut customer, &sid, "x".repeat(8000)).await;
    broker.signal("TERM");
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || broker.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    std::fs::remove_file(&filler).unwrap();

    // Everything acknowledged is there after a restart.
    let broker =
        common::BrokerProcess::start(&args, &[("SWITCHBOARD_JWT_SECRET", common::SECRET)], &dir);
    let mut tab = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    tab.connect(json!({ "resumeToken": resume })).await.unwrap();
    let page = tab
        .call("GetMessages", json!({"channelSid": sid, "limit": 100}))
        .await
        .unwrap();
    let stored: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["index"].as_u64().unwrap())
        .collect();
    for index in &acked {
        assert!(
            stored.contains(index),
            "acknowledged {index} survived: {stored:?}"
        );
    }
    broker.signal("TERM");
    drop(broker);
    drop(mount);
}

/// On a disk without room for a segment's zeros and its records both, no
/// segment is prepared (the zeros would hold the last free bytes that the
/// commits need): the start's new segment holds its checkpoint only, and
/// writes still go through (a real, small tmpfs).
#[tokio::test]
async fn a_segment_is_not_prepared_where_it_would_leave_no_room() {
    use switchboard::metrics::Metrics;
    use switchboard::store::{Durability, Store, StoreEngine};
    let Some(mount) = common::Tmpfs::mount("8m") else {
        return;
    };
    let dir = mount.path.join("data");
    // 6 MiB of zeros would fit in 8 MiB, but would leave less than 6 MiB.
    let (store, _) = Store::<()>::open_with(
        &dir,
        Durability::Fsync,
        Duration::from_millis(3),
        100,
        std::sync::Arc::new(Metrics::default()),
        false,
        StoreEngine::Log,
        6 << 20,
    )
    .unwrap();
    let mut sizes: Vec<(String, u64)> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    sizes.sort();
    let (name, len) = sizes.last().cloned().unwrap();
    assert!(name.ends_with(".log"), "{sizes:?}");
    assert!(len < 1 << 20, "the new segment was prepared: {sizes:?}");
    let ticket = store.submit(Vec::new(), ()).unwrap();
    assert_eq!(store.wait_durable(ticket).await, Ok(()));
}
