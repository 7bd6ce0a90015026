//! Pre- and post-event webhooks against real HTTP receivers (small hyper
//! servers on free loopback ports inside the test).

mod cluster_support;
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET_A: &str = "webhook-secret-a";

/// A request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    event_id: Option<String>,
    content_type: String,
    raw: Bytes,
    body: Value,
}

/// What a receiver answers: status, body, and how long it waits first.
type Handler = dyn Fn(&Received, usize) -> (u16, String, Duration) + Send + Sync;

/// A small HTTP server that records every request and answers as told.
struct Receiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(
        handler: impl Fn(&Received, usize) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, handler)
    }

    fn on(
        listener: TcpListener,
        handler: impl Fn(&Received, usize) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let handler: Arc<Handler> = Arc::new(handler);
        let count = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tx, handler, count) = (tx.clone(), handler.clone(), count.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (tx, handler, count) = (tx.clone(), handler.clone(), count.clone());
                            async move {
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned)
                                };
                                let signature =
                                    header("x-switchboard-signature").unwrap_or_default();
                                let event_id = header("x-switchboard-event-id");
                                let content_type = header("content-type").unwrap_or_default();
                                let raw = request.into_body().collect().await.unwrap().to_bytes();
                                let received = Received {
                                    signature,
                                    event_id,
                                    content_type,
                                    body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                                    raw,
                                };
                                let n = count.fetch_add(1, Ordering::SeqCst);
                                let (status, body, delay) = handler(&received, n);
                                let _ = tx.send(received);
                                tokio::time::sleep(delay).await;
                                let mut response =
                                    hyper::Response::new(Full::new(Bytes::from(body)));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            requests,
            task,
        }
    }

    /// A receiver that answers 503 until the flag it comes with is set.
    async fn closed() -> (Receiver, Arc<std::sync::atomic::AtomicBool>) {
        let accepting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = accepting.clone();
        let receiver = Receiver::start(move |_, _| {
            if open.load(Ordering::SeqCst) {
                ok()
            } else {
                (503, String::new(), Duration::ZERO)
            }
        })
        .await;
        (receiver, accepting)
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.requests.recv())
            .await
            .expect("a webhook request in time")
            .expect("receiver running")
    }

    /// The next request whose event is `name`.
    async fn next_event(&mut self, name: &str) -> Received {
        loop {
            let received = self.next().await;
            if received.body["event"] == name {
                return received;
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok() -> (u16, String, Duration) {
    (200, String::new(), Duration::ZERO)
}

/// Checks the signature header against the raw body.
fn assert_signed(received: &Received, secret: &str) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&received.raw);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(received.signature, format!("sha256={expected}"));
    assert_eq!(received.content_type, "application/json");
}

fn post_config(urls: &[(&str, &str, Option<&str>)]) -> String {
    let mut config = String::new();
    for (url, secret, events) in urls {
        config.push_str(&format!(
            "[[webhooks.post]]\nurl = \"{url}\"\nsecret = \"{secret}\"\n"
        ));
        if let Some(events) = events {
            config.push_str(&format!("events = {events}\n"));
        }
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_events_are_signed_complete_and_in_channel_order() {
    let mut receiver = Receiver::start(|_, _| ok()).await;
    let server = TestServer::start(&post_config(&[(&receiver.url(), SECRET_A, None)])).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = server.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    for i in 0..20 {
        let author = if i % 2 == 0 {
            &mut customer
        } else {
            &mut agent
        };
        author
            .call(
                "SendMessage",
                json!({ "channelSid": sid, "body": format!("m{i}") }),
            )
            .await
            .unwrap();
    }
    // Typing is never sent.
    customer
        .call("SendTyping", json!({ "channelSid": sid }))
        .await
        .unwrap();
    agent
        .call(
            "EndEngagement",
            json!({ "channelSid": sid, "reason": "resolved" }),
        )
        .await
        .unwrap();

    let mut names = Vec::new();
    let mut indexes = Vec::new();
    let mut ids = std::collections::HashSet::new();
    loop {
        let received = receiver.next().await;
        assert_signed(&received, SECRET_A);
        let body = &received.body;
        assert_eq!(received.event_id.as_deref(), body["eventId"].as_str());
        assert!(
            ids.insert(body["eventId"].as_str().unwrap().to_owned()),
            "ids are unique"
        );
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(body["data"]["channelSid"], sid, "{body}");
        let name = body["event"].as_str().unwrap().to_owned();
        if name == "messageAdded" {
            indexes.push(body["data"]["index"].as_u64().unwrap());
            assert_eq!(body["data"]["body"], format!("m{}", body["data"]["index"]));
            assert!(body["data"]["authorRole"].is_string());
        }
        let done = name == "engagementEnded";
        names.push(name);
        if done {
            break;
        }
    }
    assert_eq!(indexes, (0..20).collect::<Vec<u64>>());
    assert_eq!(names[0], "engagementStarted");
    assert_eq!(names[1], "memberJoined");
    assert!(names.iter().all(|n| !n.starts_with("typing")));
    let left = names.iter().filter(|n| *n == "memberLeft").count();
    assert_eq!(left, 2, "{names:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_three_times_then_accepts_gets_the_event() {
    let mut receiver = Receiver::start(|received, _| {
        // The first three attempts of the first message fail.
        static FAILED: AtomicUsize = AtomicUsize::new(0);
        if received.body["event"] == "messageAdded"
            && received.body["data"]["index"] == 0
            && FAILED.fetch_add(1, Ordering::SeqCst) < 3
        {
            return (500, String::new(), Duration::ZERO);
        }
        ok()
    })
    .await;
    let config = post_config(&[(&receiver.url(), SECRET_A, Some("[\"messageAdded\"]"))]);
    let server = TestServer::start(&config).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    for body in ["first", "second"] {
        customer
            .call("SendMessage", json!({ "channelSid": sid, "body": body }))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut attempts = Vec::new();
    loop {
        let received = receiver.next().await;
        // Only the events asked for.
        assert_eq!(received.body["event"], "messageAdded");
        attempts.push(received.clone());
        if received.body["data"]["index"] == 1 {
            break;
        }
    }
    // Four attempts of the first (one id), then the second: never out of order.
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    let first_id = attempts[0].event_id.clone().unwrap();
    for attempt in &attempts[..4] {
        assert_eq!(attempt.body["data"]["index"], 0);
        assert_eq!(attempt.event_id.as_deref(), Some(first_id.as_str()));
    }
    // Backoff 1 s, 2 s, 4 s.
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let url = receiver.url();
    assert!(
        metrics.contains(&format!(
            "switchboard_webhook_failures_total{{url=\"{url}\"}} 3"
        )),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_url_holds_up_only_its_own_deliveries() {
    // Nothing listens on the dead URL's port.
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dead = format!("http://127.0.0.1:{dead_port}/hook");
    let mut failing = Receiver::start(|_, _| (503, String::new(), Duration::ZERO)).await;
    let mut alive = Receiver::start(|_, _| ok()).await;
    let config = post_config(&[
        (&dead, SECRET_A, None),
        (&failing.url(), SECRET_A, None),
        (&alive.url(), "another-secret", None),
    ]);
    let server = TestServer::start(&config).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    for i in 0..5 {
        let sent = Instant::now();
        customer
            .call(
                "SendMessage",
                json!({ "channelSid": sid, "body": format!("m{i}") }),
            )
            .await
            .unwrap();
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the broker is not held up"
        );
    }
    let mut indexes = Vec::new();
    while indexes.len() < 5 {
        let received = alive.next_event("messageAdded").await;
        assert_signed(&received, "another-secret");
        indexes.push(received.body["data"]["index"].as_u64().unwrap());
    }
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    // The failing one is still retrying its first event.
    let first = failing.next().await;
    assert_eq!(first.body["event"], "engagementStarted");
    let again = failing.next().await;
    assert_eq!(again.event_id, first.event_id);
    server.shutdown().await;
}

/// A port nothing listens on now, for a receiver that starts later.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_acknowledged_messages_survive_kill_9_while_the_receiver_is_down() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let config = config_file(
        "webhooks-kill.toml",
        &format!(
            "[rate_limits]\nenabled = false\n{}",
            post_config(&[(&url, SECRET_A, Some("[\"messageAdded\"]"))])
        ),
    );
    let dir = fresh_data_dir();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let env = [("SWITCHBOARD_JWT_SECRET", common::SECRET)];
    let broker = BrokerProcess::start(&args, &env, &dir);
    let mut customer = Client::open_url(&broker.url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    let sid = customer.start_engagement().await;
    // Acknowledged, then the broker dies while their events wait.
    const SENT: u64 = 50;
    send_messages(&mut customer, &sid, SENT as usize).await;
    broker.signal("KILL");
    drop(broker);
    drop(customer);

    let broker = BrokerProcess::start(&args, &env, &dir);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut receiver = Receiver::on(listener, |_, _| ok());
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < SENT as usize {
        let received = receiver.next_event("messageAdded").await;
        assert_signed(&received, SECRET_A);
        assert_eq!(received.body["data"]["channelSid"], sid);
        seen.insert(received.body["data"]["index"].as_u64().unwrap());
    }
    assert_eq!(seen, (0..SENT).collect());
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- pre-event webhooks ----

fn pre_config(url: &str, extra: &str) -> String {
    format!(
        "[[webhooks.pre]]\nurl = \"{url}\"\nsecret = \"{SECRET_A}\"\nactions = [\"SendMessage\"]\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_event_webhook_rewrites_the_payload() {
    let mut receiver = Receiver::start(|received, _| {
        let mut payload = received.body["payload"].clone();
        let body = payload["body"].as_str().unwrap_or_default().to_owned();
        payload["body"] = json!(body.replace("4111 1111 1111 1111", "[card]"));
        (
            200,
            json!({ "payload": payload }).to_string(),
            Duration::ZERO,
        )
    })
    .await;
    let server = TestServer::start(&pre_config(&receiver.url(), "")).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = server.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    customer
        .call(
            "SendMessage",
            json!({ "channelSid": sid, "body": "my card is 4111 1111 1111 1111" }),
        )
        .await
        .unwrap();
    let asked = receiver.next().await;
    assert_signed(&asked, SECRET_A);
    assert_eq!(asked.body["action"], "SendMessage");
    assert_eq!(asked.body["identity"], customer.identity());
    assert_eq!(asked.body["role"], "customer");
    assert_eq!(asked.body["payload"]["channelSid"], sid);
    let message = agent.push("messageAdded").await;
    assert_eq!(message["body"], "my card is [card]");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_event_webhook_that_rejects_stops_the_message() {
    let receiver = Receiver::start(|received, _| {
        if received.body["payload"]["body"] == "bad" {
            (
                403,
                json!({ "reject": "no card numbers" }).to_string(),
                Duration::ZERO,
            )
        } else if received.body["payload"]["body"] == "plain 4xx" {
            (400, String::new(), Duration::ZERO)
        } else if received.body["payload"]["body"] == "empty" {
            (200, String::new(), Duration::ZERO)
        } else {
            (200, "{}".into(), Duration::ZERO)
        }
    })
    .await;
    let config = format!(
        "{}[api]\nkeys = [\"test-api-key-0123456789\"]\n",
        pre_config(&receiver.url(), "")
    );
    let server = TestServer::start(&config).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = server.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    // The server API's actions pass the pre-event webhook too: 422.
    let api = reqwest::Client::new();
    let url = |action: &str| format!("http://{}/api/v1/actions/{action}", server.addr);
    let joined = api
        .post(url("JoinChannel"))
        .bearer_auth("test-api-key-0123456789")
        .body(json!({ "identity": "bot", "payload": { "channelSid": sid } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status().as_u16(), 200);
    let refused = api
        .post(url("SendMessage"))
        .bearer_auth("test-api-key-0123456789")
        .body(
            json!({ "identity": "bot", "payload": { "channelSid": sid, "body": "bad" } })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let refused: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(refused["error"]["code"], "rejected");
    assert_eq!(refused["error"]["message"], "no card numbers");
    let error = customer
        .call("SendMessage", json!({ "channelSid": sid, "body": "bad" }))
        .await
        .unwrap_err();
    assert_eq!(error["code"], "rejected");
    assert_eq!(error["message"], "no card numbers");
    let error = customer
        .call(
            "SendMessage",
            json!({ "channelSid": sid, "body": "plain 4xx" }),
        )
        .await
        .unwrap_err();
    assert_eq!(error["code"], "rejected");
    for body in ["fine", "empty"] {
        customer
            .call("SendMessage", json!({ "channelSid": sid, "body": body }))
            .await
            .unwrap();
    }
    // The rejected ones never happened: the first message delivered is
    // "fine", with index 0.
    let message = agent.push("messageAdded").await;
    assert_eq!(message["body"], "fine");
    assert_eq!(message["index"], 0);
    assert_eq!(agent.push("messageAdded").await["body"], "empty");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_event_webhook_too_slow_gets_its_failure_policy_within_the_timeout() {
    let slow = |_: &Received, _| (200, "{}".into(), Duration::from_secs(5));
    for (policy, allowed) in [("reject", false), ("allow", true)] {
        let receiver = Receiver::start(slow).await;
        let extra = format!("timeout_ms = 300\non_failure = \"{policy}\"\n");
        let server = TestServer::start(&pre_config(&receiver.url(), &extra)).await;
        let mut customer = server.customer().await;
        let sid = customer.start_engagement().await;
        let started = Instant::now();
        let outcome = customer
            .call("SendMessage", json!({ "channelSid": sid, "body": "hello" }))
            .await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{policy}: {took:?}");
        assert!(took < Duration::from_millis(1500), "{policy}: {took:?}");
        match outcome {
            Ok(result) => {
                assert!(allowed, "{policy}: {result}");
                assert_eq!(customer.push("messageAdded").await["body"], "hello");
            }
            Err(error) => {
                assert!(!allowed, "{policy}: {error}");
                assert_eq!(error["code"], "rejected");
            }
        }
        server.shutdown().await;
    }
    // A server error and a refused connection get the policy too.
    let failing = Receiver::start(|_, _| (500, String::new(), Duration::ZERO)).await;
    let server = TestServer::start(&pre_config(&failing.url(), "")).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let error = customer
        .call("SendMessage", json!({ "channelSid": sid, "body": "x" }))
        .await
        .unwrap_err();
    assert_eq!(error["code"], "rejected");
    server.shutdown().await;
    let refused = format!("http://127.0.0.1:{}/hook", free_port());
    let server = TestServer::start(&pre_config(&refused, "on_failure = \"allow\"\n")).await;
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    customer
        .call("SendMessage", json!({ "channelSid": sid, "body": "x" }))
        .await
        .unwrap();
    server.shutdown().await;
}

// ---- post-event webhooks on a cluster (events in Redis) ----

/// Scrapes a node's `/metrics` for its deliveries to `url`.
async fn deliveries_counted(addr: SocketAddr, url: &str) -> u64 {
    url_counter(addr, "switchboard_webhook_deliveries_total", url).await
}

/// A per-URL counter's value on a node's `/metrics` (0 while absent).
async fn url_counter(addr: SocketAddr, family: &str, url: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("{family}{{url=\"{url}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Checks that a channel's `messageAdded` events never go backwards nor
/// skip ahead (a resend after a failover repeats, it does not reorder),
/// and answers the indexes seen.
fn assert_channel_order(received: &[Received]) -> std::collections::BTreeSet<u64> {
    let mut next = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    for r in received {
        if r.body["event"] != "messageAdded" {
            continue;
        }
        let index = r.body["data"]["index"].as_u64().unwrap();
        assert!(
            index <= next,
            "index {index} before {next} was accepted: {:?}",
            received
                .iter()
                .map(|r| r.body["data"]["index"].clone())
                .collect::<Vec<_>>()
        );
        next = next.max(index + 1);
        seen.insert(index);
    }
    seen
}

/// Two nodes, one URL: messages posted on both arrive, signed, once each
/// and in index order; exactly one node at a time delivers, and the two
/// nodes' `/metrics` add up to what the receiver got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_each_event_of_every_node_in_channel_order() {
    let redis = cluster_support::Redis::start();
    let mut receiver = Receiver::start(|_, _| ok()).await;
    let url = receiver.url();
    let config = format!(
        "[rate_limits]\nenabled = false\n{}",
        post_config(&[(&url, SECRET_A, None)])
    );
    let a = cluster_support::node(&redis, &config).await;
    let b = cluster_support::node(&redis, &config).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = b.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    const SENT: u64 = 40;
    for i in 0..SENT {
        let author = if i % 2 == 0 {
            &mut customer
        } else {
            &mut agent
        };
        let posted = author
            .call(
                "SendMessage",
                json!({ "channelSid": sid, "body": format!("m{i}") }),
            )
            .await
            .unwrap();
        assert_eq!(posted["index"], i);
    }
    agent
        .call(
            "EndEngagement",
            json!({ "channelSid": sid, "reason": "resolved" }),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut ids = std::collections::HashSet::new();
    loop {
        let r = receiver.next().await;
        assert_signed(&r, SECRET_A);
        assert_eq!(r.event_id.as_deref(), r.body["eventId"].as_str());
        assert!(
            ids.insert(r.event_id.clone().unwrap()),
            "no event twice without a failure: {:?}",
            r.body
        );
        assert!(r.body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r.body["data"]["channelSid"], sid, "{}", r.body);
        let done = r.body["event"] == "engagementEnded";
        received.push(r);
        if done {
            break;
        }
    }
    let names: Vec<&str> = received
        .iter()
        .map(|r| r.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "engagementStarted", "{names:?}");
    assert_eq!(names[1], "memberJoined", "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "memberLeft").count(), 2);
    let message = received
        .iter()
        .find(|r| r.body["event"] == "messageAdded")
        .unwrap();
    assert_eq!(message.body["data"]["body"], "m0");
    assert_eq!(message.body["data"]["authorRole"], "customer");
    assert_eq!(
        assert_channel_order(&received),
        (0..SENT).collect(),
        "every message once"
    );
    // Nothing more is sent: the receiver's count is what the nodes counted.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), receiver.requests.recv())
            .await
            .is_err()
    );
    let counted = deliveries_counted(a.addr, &url).await + deliveries_counted(b.addr, &url).await;
    assert_eq!(counted, received.len() as u64);
    a.shutdown().await;
    b.shutdown().await;
}

/// `kill -9` of the node holding the URL's lease while the receiver
/// fails: once the receiver accepts, every acknowledged message's event
/// arrives through the surviving node, in order, the one in flight
/// possibly twice (with the same event id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_kill_9_of_the_delivering_node() {
    let redis = cluster_support::Redis::start();
    let (mut receiver, accepting) = Receiver::closed().await;
    let url = receiver.url();
    let toml = format!(
        "[rate_limits]\nenabled = false\n{}",
        post_config(&[(&url, SECRET_A, Some("[\"messageAdded\"]"))])
    );
    let dying = cluster_support::node_process(&redis, "cluster-webhooks-kill", &toml);
    let dir = dying.data_dir.clone();
    // The node started first takes the lease (the other finds it held).
    let lease = format!("GET switchboard:wh:lease:{url}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = |answer: Option<String>| {
        answer.is_some_and(|a| a.starts_with('$') && !a.starts_with("$-1"))
    };
    while !held(redis.command(&lease)) {
        assert!(Instant::now() < deadline, "the first node takes the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let holder = redis.command(&lease).unwrap();
    let survivor = cluster_support::node(&redis, &toml).await;
    let mut customer = Client::open_url(&dying.url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    let sid = customer.start_engagement().await;
    let mut agent = survivor.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    const SENT: u64 = 30;
    for i in 0..SENT {
        let author = if i % 2 == 0 {
            &mut customer
        } else {
            &mut agent
        };
        author
            .call(
                "SendMessage",
                json!({ "channelSid": sid, "body": format!("m{i}") }),
            )
            .await
            .unwrap();
    }
    // The dying node is stuck on the first event: the receiver fails it.
    let first = receiver.next().await;
    assert_eq!(first.body["data"]["index"], 0);
    assert_eq!(redis.command(&lease).unwrap(), holder, "still its lease");
    dying.signal("KILL");
    drop(dying);
    drop(customer);
    accepting.store(true, Ordering::SeqCst);
    let mut received = vec![first];
    while assert_channel_order(&received).len() < SENT as usize {
        let r = receiver.next().await;
        assert_signed(&r, SECRET_A);
        assert_eq!(r.body["event"], "messageAdded");
        assert_eq!(r.body["data"]["channelSid"], sid);
        if r.body["data"]["index"] == 0 {
            // The event in flight again: the same id.
            assert_eq!(r.event_id, received[0].event_id);
        }
        received.push(r);
    }
    assert_eq!(assert_channel_order(&received), (0..SENT).collect());
    assert_ne!(
        redis.command(&lease).unwrap(),
        holder,
        "the survivor's lease"
    );
    // Counted once the survivor has the receiver's answer to the last.
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries_counted(survivor.addr, &url).await < SENT {
        assert!(
            Instant::now() < deadline,
            "the survivor counts its deliveries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    survivor.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Redis stops for longer than a lease lasts: the node's sender neither
/// crashes nor gives up; once Redis is back it takes the lease again and
/// delivers what was acknowledged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_sender_resumes_after_a_redis_outage() {
    let mut redis = cluster_support::Redis::start();
    let mut receiver = Receiver::start(|_, _| ok()).await;
    let config = format!(
        "[rate_limits]\nenabled = false\n{}",
        post_config(&[(&receiver.url(), SECRET_A, Some("[\"messageAdded\"]"))])
    );
    let node = cluster_support::node(&redis, &config).await;
    let mut customer = node.customer().await;
    let sid = customer.start_engagement().await;
    let send = |body: &'static str| json!({ "channelSid": sid, "body": body });
    customer.call("SendMessage", send("before")).await.unwrap();
    let before = receiver.next().await;
    assert_eq!(before.body["data"]["body"], "before");
    redis.stop();
    let error = customer
        .call("SendMessage", send("during"))
        .await
        .unwrap_err();
    assert_eq!(error["code"], "unavailable");
    // Longer than the lease's 3 heartbeats: it lapses while Redis is away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = customer.call("SendMessage", send("after")).await {
        assert_eq!(e["code"], "unavailable", "{e}");
        assert!(Instant::now() < deadline, "the node resumes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut after = receiver.next().await;
    while after.body["data"]["body"] == "before" {
        // Sent again if Redis went before its cursor was saved: at least
        // once, the same event id.
        assert_eq!(after.event_id, before.event_id);
        after = receiver.next().await;
    }
    assert_signed(&after, SECRET_A);
    assert_eq!(after.body["data"]["body"], "after");
    assert_eq!(after.body["data"]["index"], 1);
    node.shutdown().await;
}

/// With a cluster the stored events are bounded (`[cluster]
/// webhook_events_max`, here its least, 1,000): while a URL fails, the
/// oldest beyond the bound go, and the URL's sender counts what it lost in
/// `switchboard_webhook_events_lost_total` once it moves on. Every message
/// is then either delivered or counted lost, and the newest arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_counts_the_events_a_failing_url_lost_at_the_bound() {
    let redis = cluster_support::Redis::start();
    let (mut receiver, accepting) = Receiver::closed().await;
    let url = receiver.url();
    let config = format!(
        "[rate_limits]\nenabled = false\n{}\n{}webhook_events_max = 1000\n",
        post_config(&[(&url, SECRET_A, Some("[\"messageAdded\"]"))]),
        redis.cluster_toml()
    );
    let node = TestServer::start(&config).await;
    let mut customer = node.customer().await;
    let sid = customer.start_engagement().await;
    // More than the bound (1,000, its least) plus a batch the sender may
    // hold in memory (256).
    const SENT: u64 = 1_500;
    for chunk in 0..SENT / 100 {
        let mut ids = Vec::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            let payload = json!({ "channelSid": sid, "body": format!("m{i}") });
            ids.push(customer.send("SendMessage", payload).await);
        }
        for id in ids {
            assert!(customer.reply(id).await.get("error").is_none());
        }
    }
    // The first attempt failed (the sender now backs off); from here the
    // URL accepts.
    receiver.next().await;
    accepting.store(true, Ordering::SeqCst);
    let mut delivered = std::collections::BTreeSet::new();
    loop {
        let r = receiver.next_event("messageAdded").await;
        assert_signed(&r, SECRET_A);
        let index = r.body["data"]["index"].as_u64().unwrap();
        delivered.insert(index);
        if index == SENT - 1 {
            break;
        }
    }
    let lost = url_counter(node.addr, "switchboard_webhook_events_lost_total", &url).await;
    assert!(lost > 0, "the bound dropped events");
    assert!(
        delivered.len() as u64 + lost >= SENT,
        "every message delivered or counted lost: {delivered:?}, {lost} lost"
    );
    node.shutdown().await;
}
