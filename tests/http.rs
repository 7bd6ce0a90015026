//! The HTTP side of the listener over raw TCP sockets: keep-alive, request
//! bodies (Content-Length and chunked) and their limit, head limits (431
//! that reaches the client), HEAD, slow readers, `/readyz`, `/metrics`
//! parsed by a real Prometheus parser, and who gets a demo token.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, TestServer, WAIT};
use serde_json::json;
use switchboard::{ActionRegistry, Broker, Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP response read off a socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (its head, then `Content-Length` bytes of body unless
/// `head_only`). `None` when the connection ends first.
async fn read_answer(tcp: &mut TcpStream, head_only: bool) -> Option<Answer> {
    let read = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            if tcp.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let mut answer = Answer {
            status,
            head,
            body: Vec::new(),
        };
        let length: usize = answer
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        if !head_only {
            answer.body = vec![0; length];
            tcp.read_exact(&mut answer.body).await.ok()?;
        }
        Some(answer)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer in time")
}

async fn exchange(tcp: &mut TcpStream, request: &str) -> Answer {
    tcp.write_all(request.as_bytes()).await.unwrap();
    read_answer(tcp, request.starts_with("HEAD "))
        .await
        .expect("an answer")
}

/// Whether the server has closed the connection (EOF, not a reset).
async fn closed_cleanly(tcp: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn keep_alive_bodies_head_and_the_body_limit() {
    let server = TestServer::start("").await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // Several requests on one connection.
    let ok = exchange(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok\n"));
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    let head = exchange(&mut tcp, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3"));
    // A body with Content-Length, then a chunked one: both read whole, and
    // the connection carries on with the next request.
    let posted = exchange(
        &mut tcp,
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert_eq!(posted.status, 405);
    assert_eq!(posted.header("allow"), Some("GET, HEAD"));
    let chunked = exchange(
        &mut tcp,
        "POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(chunked.status, 405);
    let page = exchange(&mut tcp, "GET /console HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html"), "{}", page.text());

    // Over 1 MiB: declared, refused before the body is sent.
    let too_big = exchange(
        &mut tcp,
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
    )
    .await;
    assert_eq!(too_big.status, 413);
    assert!(closed_cleanly(&mut tcp).await);
    // Chunked, refused once the body passes 1 MiB.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    let writer = async {
        for _ in 0..17 {
            if tcp.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, writer).await.unwrap();
    let refused = read_answer(&mut tcp, false).await.expect("a 413");
    assert_eq!(refused.status, 413, "{refused:?}");
    // Exactly 1 MiB is fine.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let body = "b".repeat(1024 * 1024);
    let fits = exchange(
        &mut tcp,
        &format!(
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(fits.status, 405);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_get_a_431_that_reaches_the_client() {
    let server = TestServer::start("").await;
    // 65 header fields, in a head well under 8 KiB: "too many", not "too large".
    let many: String = (0..65).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let answer = exchange(&mut tcp, &format!("GET /healthz HTTP/1.1\r\n{many}\r\n")).await;
    assert_eq!(answer.status, 431);
    assert!(
        answer.text().contains("too many header fields"),
        "{answer:?}"
    );
    assert!(!answer.text().contains("8192"), "{answer:?}");
    assert!(closed_cleanly(&mut tcp).await);
    // 64 are fine.
    let fine: String = (0..63).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let answer = exchange(
        &mut tcp,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{fine}\r\n"),
    )
    .await;
    assert_eq!(answer.status, 200);

    // A head over 8 KiB sent in one go, read by a client that is a little
    // slow to look at the answer: the server must not close with bytes of
    // it unread, or the reset destroys the 431 before the client reads it.
    for size in [9 * 1024, 40 * 1024] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        request.resize(request.len() + size, b'a');
        tcp.write_all(&request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
            .await
            .expect("the server closes");
        let text = String::from_utf8_lossy(&out);
        assert!(
            read.is_ok(),
            "{size}: the connection was reset: {read:?} {text:?}"
        );
        assert!(text.starts_with("HTTP/1.1 431"), "{size}: {text:?}");
    }
    assert!(server.broker.metrics.snapshot().upgrades_refused >= 3);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let server = TestServer::start("[limits]\nhandshake_timeout_ms = 500\n").await;
    let baseline = server.admission.open();
    // A small receive buffer, then 300 pipelined requests for a 32 KB page
    // (about 10 MB of answers) and never a read: the server's writes stall,
    // and the connection is closed instead of holding its slot forever.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(server.addr).await.unwrap();
    let request = "GET /sdk/client.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Served: the first answer starts arriving.
    let mut status = [0u8; 12];
    tcp.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    assert_eq!(server.admission.open(), baseline + 1);
    eventually("the stalled connection is closed", || {
        server.admission.open() == baseline
    })
    .await;
    drop(tcp);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_kept_alive_connections() {
    let server = TestServer::start("").await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let ok = exchange(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(ok.status, 200);
    let started = tokio::time::Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(closed_cleanly(&mut tcp).await);
}

#[tokio::test]
async fn readyz_and_metrics() {
    for durability in ["memory", "os"] {
        let server = TestServer::start(&format!("durability = \"{durability}\"")).await;
        let mut customer = server.customer().await;
        let sid = customer.start_engagement().await;
        customer
            .call("SendMessage", json!({"channelSid": sid, "body": "hi"}))
            .await
            .unwrap();
        customer.fails("Nope", json!({})).await;
        // The message is counted where it is delivered: at once here, but
        // on the Redis engine (the suites' opt-in run) when its event comes
        // back from Redis, which may be after the reply.
        let metrics = server.broker.metrics.clone();
        eventually("the message counted", || metrics.snapshot().messages == 1).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let ready = exchange(&mut tcp, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));

        let metrics = exchange(&mut tcp, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(metrics.status, 200);
        assert_eq!(
            metrics.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = metrics.text();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        // Every family has HELP and TYPE, and is ours. (Families with a
        // label and no series yet, such as webhook deliveries by URL, are
        // left out until their first sample, as Prometheus clients do.)
        let mut families = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(name.starts_with("switchboard_"), "{line}");
            assert!(scrape.docs.contains_key(name), "no HELP for {name}");
            families.insert(name.to_owned());
        }
        for required in [
            "switchboard_sessions_open",
            "switchboard_sessions_opened_total",
            "switchboard_messages_total",
            "switchboard_deliveries_total",
            "switchboard_commands_total",
            "switchboard_command_duration_seconds",
            "switchboard_slow_consumer_closes_total",
            "switchboard_store_commit_duration_seconds",
            "switchboard_engine_errors_total",
        ] {
            assert!(
                families.contains(required),
                "{required} missing: {families:?}"
            );
        }
        for sample in &scrape.samples {
            let family = sample
                .metric
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                families.contains(&sample.metric) || families.contains(family),
                "{} has no TYPE",
                sample.metric
            );
        }
        let value = |metric: &str, labels: &[(&str, &str)]| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value("switchboard_messages_total", &[]),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        assert_eq!(
            value(
                "switchboard_commands_total",
                &[("action", "SendMessage"), ("code", "ok")]
            ),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        assert_eq!(
            value(
                "switchboard_commands_total",
                &[("action", "other"), ("code", "unknown_action")]
            ),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        // The command latency histogram has its buckets, sub-millisecond
        // to seconds, and counted the message.
        match value(
            "switchboard_command_duration_seconds",
            &[("action", "SendMessage")],
        ) {
            Some(prometheus_parse::Value::Histogram(buckets)) => {
                assert!(buckets.len() >= 10, "{buckets:?}");
                assert!(buckets.iter().any(|b| b.less_than < 0.001));
                assert!(buckets.iter().any(|b| b.less_than >= 5.0));
                assert_eq!(buckets.last().unwrap().count, 1.0, "{buckets:?}");
            }
            other => panic!("no command histogram: {other:?}"),
        }
        match value("switchboard_store_commit_duration_seconds", &[]) {
            Some(prometheus_parse::Value::Histogram(buckets)) => {
                let commits = buckets.last().unwrap().count;
                // On the Redis engine (the suites' opt-in run) the store
                // takes no writes: Redis does.
                let on_redis = std::env::var_os("SWITCHBOARD_TEST_REDIS_URL").is_some();
                if durability == "memory" || on_redis {
                    assert_eq!(commits, 0.0);
                } else {
                    assert!(commits >= 1.0, "{buckets:?}");
                }
            }
            other => panic!("no store histogram: {other:?}"),
        }
        server.shutdown().await;
    }
}

/// A broker with exactly this configuration (the test helper would add a
/// JWT secret).
async fn start_plain(toml: &str) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = Config::from_toml(toml).unwrap();
    config.durability = switchboard::config::Durability::Memory;
    let broker = Arc::new(Broker::new(config, ActionRegistry::new()).unwrap());
    let server = Server::bind(broker, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn demo_token_status(addr: std::net::SocketAddr, headers: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(
        &mut tcp,
        &format!("GET /demo/token?sub=ada&role=service HTTP/1.1\r\n{headers}\r\n"),
    )
    .await;
    (answer.status, answer.text())
}

#[tokio::test]
async fn demo_tokens_are_off_with_a_key_and_refused_through_proxies() {
    // No secret, no public key: on, with a key of the broker's own.
    let (addr, stop) = start_plain("").await;
    let (status, body) = demo_token_status(addr, "Host: localhost:8080\r\n").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("token"));
    for host in ["127.0.0.1", "127.0.0.2:9", "[::1]:8080", "LOCALHOST"] {
        let (status, body) = demo_token_status(addr, &format!("Host: {host}\r\n")).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // Anything that came through a proxy, or names another host: 403.
    for headers in [
        "Host: localhost\r\nForwarded: for=203.0.113.9\r\n",
        "Host: localhost\r\nX-Forwarded-For: 203.0.113.9\r\n",
        "Host: localhost\r\nX-Real-IP: 203.0.113.9\r\n",
        "Host: chat.example.com\r\n",
        "Host: 127.0.0.1.nip.io\r\n",
        "Host: 10.0.0.5:8080\r\n",
        "",
        "Host: localhost\r\nHost: evil.example\r\n",
    ] {
        let (status, body) = demo_token_status(addr, headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(!body.contains("token\""), "{body}");
    }
    let _ = stop.send(());

    // A JWT secret, or a public key, turns them off unless asked for.
    let public = format!(
        "[jwt]\nalgorithm = \"ES256\"\npublic_key_file = \"{}/tests/fixtures/jwt-es256.pub.pem\"\n",
        env!("CARGO_MANIFEST_DIR")
    );
    for config in ["jwt_secret = \"production-secret\"\n", public.as_str()] {
        let (addr, stop) = start_plain(config).await;
        let (status, _) = demo_token_status(addr, "Host: localhost\r\n").await;
        assert_eq!(status, 404, "{config}");
        let _ = stop.send(());
    }
    // Asked for explicitly, with a secret: on, with the same refusals.
    let (addr, stop) = start_plain("jwt_secret = \"s\"\ndemo_tokens = true\n").await;
    assert_eq!(demo_token_status(addr, "Host: 127.0.0.1\r\n").await.0, 200);
    assert_eq!(
        demo_token_status(addr, "Host: 127.0.0.1\r\nX-Forwarded-For: 1.2.3.4\r\n")
            .await
            .0,
        403
    );
    let _ = stop.send(());
}

#[tokio::test]
async fn kept_alive_connections_time_out_idle_and_mid_head() {
    let server = TestServer::start("[limits]\nhandshake_timeout_ms = 300\n").await;
    // Idle after an answer: closed (no answer owed) once the time is up.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let ok = exchange(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(ok.status, 200);
    let idle_since = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed while idle")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(idle_since.elapsed() >= Duration::from_millis(250));
    // Requests that keep coming keep the connection, past the first
    // head's deadline.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..6 {
        let ok = exchange(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(ok.status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A second head started and never finished: 408.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let ok = exchange(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(ok.status, 200);
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let late = read_answer(&mut tcp, false).await.expect("an answer");
    assert_eq!(late.status, 408);
    assert!(closed_cleanly(&mut tcp).await);
    server.shutdown().await;
}
