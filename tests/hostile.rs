//! Hostile clients over real sockets: malformed and oversized frames,
//! allocation bombs, floods, slowloris, forged tokens, channel probing.
//! In every test an honest customer and agent keep chatting beside the
//! attacker and must notice nothing. (The all-at-once run against the real
//! binary, with its memory measured, is `tests/hostile_binary.rs`.)

mod common;

use std::time::Duration;

use common::{eventually, raw_exchange, token, upgrade_status, Client, Enc, TestServer, WAIT};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A customer and an agent in one engagement, checking that every message
/// arrives, in order, both ways.
struct Honest {
    customer: Client,
    agent: Client,
    sid: String,
    next: u64,
}

impl Honest {
    async fn new(server: &TestServer) -> Honest {
        let mut customer = server.customer().await;
        let sid = customer.start_engagement().await;
        let mut agent = server.staff("honest-agent", "agent").await;
        agent
            .call("JoinChannel", json!({"channelSid": sid}))
            .await
            .unwrap();
        customer.push("memberJoined").await;
        Honest {
            customer,
            agent,
            sid,
            next: 0,
        }
    }

    /// One message each way; both sides see both, in index order.
    async fn chat(&mut self) {
        for from_customer in [true, false] {
            let body = format!("honest {}", self.next);
            let (sender, receiver) = if from_customer {
                (&mut self.customer, &mut self.agent)
            } else {
                (&mut self.agent, &mut self.customer)
            };
            let r = sender
                .call("SendMessage", json!({"channelSid": self.sid, "body": body}))
                .await
                .unwrap_or_else(|e| panic!("honest SendMessage failed: {e}"));
            assert_eq!(r["index"], self.next);
            for side in [receiver, sender] {
                let m = side.push("messageAdded").await;
                assert_eq!(
                    (m["index"].clone(), m["body"].clone()),
                    (json!(self.next), json!(body))
                );
            }
            self.next += 1;
        }
        assert!(self.customer.closed.is_none() && self.agent.closed.is_none());
    }
}

fn nested_json(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Reads the next reply-like frame, skipping pushes.
async fn next_reply(c: &mut Client) -> Value {
    loop {
        let frame = c
            .read_frame()
            .await
            .unwrap_or_else(|| panic!("no reply; closed: {:?}", c.closed));
        if frame.get("event").is_none() {
            return frame;
        }
    }
}

async fn expect_bad_request(c: &mut Client, frame: Message, says: &str) {
    c.send_raw(frame).await;
    let reply = next_reply(c).await;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

#[tokio::test]
async fn garbage_truncated_nested_and_bomb_frames_are_bad_requests_and_the_session_carries_on() {
    let server = TestServer::start("").await;
    let mut honest = Honest::new(&server).await;

    let mut json = server.customer().await;
    let text = |s: String| Message::Text(s.into());
    let cases = [
        (text("garbage".into()), "invalid JSON"),
        (
            text(r#"{"id": 1, "action": "GetAct"#.into()),
            "invalid JSON",
        ),
        (text("\u{0}\u{1}\u{2}".into()), "invalid JSON"),
        (text(nested_json(10_000)), "recursion limit"),
        (
            text(format!(
                r#"{{"id":1,"action":"GetActions","payload":{{"x":{}}}}}"#,
                nested_json(40)
            )),
            "nesting deeper than 32",
        ),
        (
            Message::Binary(vec![0x81, 0xa1, b'x'].into()),
            "text frames",
        ),
        (text("{}".into()), "`id`"),
        (text(r#"{"id":5}"#.into()), "`action`"),
        (text(r#"{"id":5,"action":7}"#.into()), "`action`"),
        (
            text(format!(r#"{{"id":5,"action":"{}"}}"#, "A".repeat(5000))),
            "`action`",
        ),
        (
            text(r#"{"id":6,"action":"GetActions","payload":7}"#.into()),
            "`payload`",
        ),
        (text(r#""just a string""#.into()), "must be a map"),
        (
            text(r#"{"id":1e999,"action":"GetActions"}"#.into()),
            "invalid JSON",
        ),
    ];
    for (frame, says) in cases {
        expect_bad_request(&mut json, frame, says).await;
    }
    json.call("GetActions", json!({})).await.unwrap();

    let mut packed = server.customer_enc(Enc::MsgPack).await;
    let command = rmp_serde::to_vec_named(&json!({"id": 9, "action": "GetActions"})).unwrap();
    let bin = |b: Vec<u8>| Message::Binary(b.into());
    let mut deep = vec![0x91u8; 60_000];
    deep.push(0x01);
    let cases = [
        (bin(vec![0xc1]), "0xc1"),
        (bin(command[..command.len() - 3].to_vec()), "remain"),
        (
            bin(vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            "claims 4294967295 bytes",
        ),
        (
            bin([
                &[0x82, 0xa2, b'i', b'd', 0x01, 0xa6][..],
                b"action",
                &[0xdd, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat()),
            "claims 4294967295 items",
        ),
        (bin(vec![0xdf, 0x7f, 0xff, 0xff, 0xff, 0x00]), "items"),
        (
            bin(vec![0xc6, 0xff, 0xff, 0xff, 0xff]),
            "claims 4294967295 bytes",
        ),
        (bin(deep), "nesting deeper than 32"),
        (bin(vec![0xd4, 0x00, 0x00]), "extension"),
        (bin([command.clone(), vec![0xc0]].concat()), "after the end"),
        (text("{}".into()), "binary frames"),
        (bin(vec![0x93, 0x01, 0x02, 0x03]), "must be a map"),
    ];
    for (frame, says) in cases {
        expect_bad_request(&mut packed, frame, says).await;
    }
    packed.call("GetActions", json!({})).await.unwrap();
    assert!(server.broker.metrics.snapshot().bad_requests >= 24);
    honest.chat().await;
    server.shutdown().await;
}

#[tokio::test]
async fn payloads_are_validated_and_the_error_says_what_was_wrong() {
    let server = TestServer::start("").await;
    let mut honest = Honest::new(&server).await;
    let sid = honest.sid.clone();
    let c = &mut honest.customer;
    let mut deep = json!("leaf");
    for _ in 0..9 {
        deep = json!({ "k": deep });
    }
    let cases = [
        (
            "SendMessage",
            json!({"channelSid": sid, "body": 5}),
            "bad_request",
            "`body` must be a string",
        ),
        (
            "SendMessage",
            json!({"channelSid": sid, "body": ""}),
            "bad_request",
            "empty",
        ),
        (
            "SendMessage",
            json!({"channelSid": sid}),
            "bad_request",
            "`body` is required",
        ),
        (
            "SendMessage",
            json!({"channelSid": sid, "body": "x".repeat(17_000)}),
            "too_large",
            "limit is 16384",
        ),
        (
            "SendMessage",
            json!({"channelSid": sid, "body": "x", "messageAttributes": deep}),
            "too_large",
            "nested more than 8",
        ),
        (
            "SendMessage",
            json!({"channelSid": sid, "body": "x", "messageAttributes": [1]}),
            "bad_request",
            "must be a map",
        ),
        (
            "SendMessage",
            json!({"channelSid": sid, "body": "x", "messageAttributes": {"a": "y".repeat(17_000)}}),
            "too_large",
            "messageAttributes",
        ),
        (
            "SendMessage",
            json!({"channelSid": "CHXYZ", "body": "x"}),
            "bad_request",
            "not a channel sid",
        ),
        (
            "SendMessage",
            json!({"channelSid": 12, "body": "x"}),
            "bad_request",
            "`channelSid` must be a string",
        ),
        (
            "SetInputText",
            json!({"channelSid": sid, "body": "x".repeat(17_000)}),
            "too_large",
            "limit is 16384",
        ),
        (
            "SetInputText",
            json!({"channelSid": sid, "body": []}),
            "bad_request",
            "`body` must be a string",
        ),
        (
            "SendTyping",
            json!({"channelSid": format!("CH{}", "G".repeat(32))}),
            "bad_request",
            "not a channel sid",
        ),
        (
            "TriggerAction",
            json!({"name": 5}),
            "bad_request",
            "`name` must be a string",
        ),
        (
            "TriggerAction",
            json!({"name": "x".repeat(100)}),
            "too_large",
            "`name`",
        ),
        (
            "TriggerAction",
            json!({"name": "nope", "payload": 3}),
            "bad_request",
            "`payload` must be a map",
        ),
        ("Nope", json!({}), "unknown_action", "Nope"),
    ];
    for (action, payload, code, says) in cases {
        let e = c.call(action, payload.clone()).await.unwrap_err();
        assert_eq!(e["code"], code, "{action} {payload}: {e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{action}: {message:?} should say {says:?}"
        );
    }
    // formData on a fresh customer.
    let mut other = server.customer().await;
    let e = other
        .call("StartEngagement", json!({"formData": {"deep": deep}}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "too_large");
    assert!(e["message"].as_str().unwrap().contains("formData"));
    assert_eq!(
        other
            .fails("StartEngagement", json!({"formData": "x"}))
            .await,
        "bad_request"
    );
    assert_eq!(
        other
            .fails("StartEngagement", json!({"queue": "a b"}))
            .await,
        "bad_request"
    );
    // Staff-only fields.
    let mut agent = server.staff("validator", "agent").await;
    for channel in [
        json!("foo"),
        json!("x".repeat(1000)),
        json!(7),
        json!("queue:a b"),
    ] {
        let e = agent
            .call("Subscribe", json!({ "channel": channel }))
            .await
            .unwrap_err();
        assert_eq!(e["code"], "bad_request");
        assert!(
            e["message"].as_str().unwrap().len() < 300,
            "no echo of the input"
        );
        assert_eq!(
            agent
                .fails("Unsubscribe", json!({ "channel": channel }))
                .await,
            "bad_request"
        );
    }
    // An oversized token is measured before it is verified.
    let mut fresh = Client::open(&server, Enc::Json).await;
    let e = fresh
        .connect(json!({"token": "x".repeat(9000)}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "too_large");
    assert_eq!(
        fresh.fails("Connect", json!({"token": 5})).await,
        "bad_request"
    );
    honest.chat().await;
    server.shutdown().await;
}

/// The raw bytes of a client's upgrade request.
const RAW_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Upgrades a raw TCP socket by hand, returning it after the 101.
async fn raw_websocket(server: &TestServer) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(RAW_UPGRADE).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

/// Reads server frames until a close frame; returns its code.
async fn raw_close_code(tcp: &mut TcpStream) -> u16 {
    let read = async {
        loop {
            let mut hdr = [0u8; 2];
            tcp.read_exact(&mut hdr).await.unwrap();
            let len = match hdr[1] & 0x7f {
                126 => tcp.read_u16().await.unwrap() as usize,
                127 => tcp.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.unwrap();
            if hdr[0] & 0x0f == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a close frame")
}

#[tokio::test]
async fn a_frame_header_claiming_a_gigabyte_is_refused_before_its_payload_arrives() {
    let server = TestServer::start("").await;
    let mut honest = Honest::new(&server).await;
    for opcode in [0x81u8, 0x82, 0x01] {
        let mut tcp = raw_websocket(&server).await;
        // FIN + opcode, masked, 64-bit length 1 GiB, mask key; no payload.
        let mut frame = vec![opcode, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        tcp.write_all(&frame).await.unwrap();
        assert_eq!(raw_close_code(&mut tcp).await, 4009);
    }
    // A fragmented message whose pieces add up past the limit, too.
    let mut tcp = raw_websocket(&server).await;
    let piece = vec![b'a'; 40 * 1024];
    for (i, opcode) in [0x01u8, 0x00].into_iter().enumerate() {
        let mut frame = vec![opcode, 0x80 | 126];
        frame.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&piece);
        if tcp.write_all(&frame).await.is_err() {
            assert_eq!(i, 1);
        }
    }
    assert_eq!(raw_close_code(&mut tcp).await, 4009);
    assert!(server.broker.metrics.snapshot().frames_too_large >= 4);
    honest.chat().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_command_flood_is_rate_limited_then_closed_with_4029() {
    let server = TestServer::start(
        "[rate_limits]\ncommands_per_sec = 5.0\ncommands_burst = 20\nclose_after_rejections = 50\n",
    )
    .await;
    let mut honest = Honest::new(&server).await;
    let mut flooder = server.customer().await;
    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for _ in 0..200 {
            ids.push(flooder.send("GetActions", json!({})).await);
        }
        ids
    };
    let (mut ok, mut limited) = (0, 0);
    while let Some(frame) = flooder.read_frame().await {
        match frame["error"]["code"].as_str() {
            None => ok += 1,
            Some("rate_limited") => {
                limited += 1;
                let message = frame["error"]["message"].as_str().unwrap();
                assert!(message.contains("commands_per_sec"), "{message}");
                assert!(
                    ids.contains(&frame["id"].as_u64().unwrap()),
                    "the reply keeps the id"
                );
            }
            Some(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(flooder.closed.as_ref().unwrap().0, 4029);
    // The burst less the Connect (plus a little refill) was served, then 50
    // refusals closed it.
    assert!((19..=30).contains(&ok), "{ok} served");
    assert_eq!(limited, 50);
    assert!(server.broker.metrics.snapshot().rate_limited >= 50);
    honest.chat().await;
    server.shutdown().await;
}

#[tokio::test]
async fn chatty_actions_have_their_own_buckets_however_they_are_reached() {
    let server = TestServer::start(
        r#"
[rate_limits]
messages_per_sec = 0.01
messages_burst = 3
typing_per_sec = 0.01
typing_burst = 2
input_text_per_sec = 0.01
input_text_burst = 2

[[actions.custom]]
name = "say-hi"
action = "SendMessage"
payload = { body = "hi" }
"#,
    )
    .await;
    let mut honest = Honest::new(&server).await;
    let mut c = server.customer().await;
    let sid = c.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    let send = json!({"channelSid": sid, "body": "x"});
    c.call("SendMessage", send.clone()).await.unwrap();
    c.call("say-hi", json!({"channelSid": sid})).await.unwrap();
    c.call(
        "TriggerAction",
        json!({"name": "say-hi", "payload": {"channelSid": sid}}),
    )
    .await
    .unwrap();
    for (action, payload) in [
        ("SendMessage", send.clone()),
        ("say-hi", json!({"channelSid": sid})),
        (
            "TriggerAction",
            json!({"name": "say-hi", "payload": {"channelSid": sid}}),
        ),
    ] {
        let e = c.call(action, payload).await.unwrap_err();
        assert_eq!(e["code"], "rate_limited", "{action}");
        assert!(e["message"].as_str().unwrap().contains("messages_per_sec"));
    }
    let typing = json!({"channelSid": sid});
    c.call("SendTyping", typing.clone()).await.unwrap();
    c.call("SendTyping", typing.clone()).await.unwrap();
    assert_eq!(c.fails("SendTyping", typing).await, "rate_limited");
    let draft = json!({"channelSid": sid, "body": "d"});
    c.call("SetInputText", draft.clone()).await.unwrap();
    c.call("SetInputText", draft.clone()).await.unwrap();
    assert_eq!(c.fails("SetInputText", draft).await, "rate_limited");
    // Other actions are untouched, and so is everyone else.
    c.call("GetActions", json!({})).await.unwrap();
    assert!(c.closed.is_none());
    // Services are exempt by default (bots relay many conversations).
    let mut bot = server.staff("bot", "service").await;
    bot.call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    for _ in 0..10 {
        bot.call("SendMessage", send.clone()).await.unwrap();
    }
    honest.chat().await;
    server.shutdown().await;
}

/// Sends `n` commands without reading a single reply; returns the close
/// code once the broker has had enough (the socket must end, and soon).
async fn flood_without_reading(c: &mut Client, n: usize) -> u16 {
    let frame = c.encode(&json!({"id": 1, "action": "GetActions"}));
    let send_all = async {
        for _ in 0..n {
            if c.ws.feed(frame.clone()).await.is_err() {
                return;
            }
        }
        let _ = c.ws.flush().await;
    };
    // The broker stops reading once it closes the session, so sending may
    // stall on a full socket: that is fine, the close is what we wait for.
    let _ = tokio::time::timeout(Duration::from_secs(10), send_all).await;
    while c.closed.is_none() {
        if c.read_frame_within(Duration::from_secs(10)).await.is_none() && c.closed.is_none() {
            panic!("the flooder's socket is still open");
        }
    }
    c.closed.as_ref().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_commands_without_reading_replies_end_the_flooder_only() {
    // Default limits: the rate limiter closes it (4029), or its outbox
    // overflows first (4008); either is bounded.
    let server = TestServer::start("").await;
    let mut honest = Honest::new(&server).await;
    let mut flooder = server.customer_enc(Enc::MsgPack).await;
    let code = flood_without_reading(&mut flooder, 10_000).await;
    // 1006: the close frame could not be written to a socket nobody reads
    // (a slow consumer's writer is abandoned at once); the metrics say why.
    assert!([4029, 4008, 1006].contains(&code), "closed with {code}");
    let m = server.broker.metrics.snapshot();
    assert!(
        m.rate_limited >= 100 || m.slow_consumer_closes == 1,
        "{m:?}"
    );
    honest.chat().await;

    // With rate limits off only the outbox bound is left: 4008.
    let server2 = TestServer::start(
        "[rate_limits]\nenabled = false\n[limits]\noutbox_frames = 256\noutbox_bytes = 1048576\n",
    )
    .await;
    let mut honest2 = Honest::new(&server2).await;
    let mut flooder = server2.customer().await;
    let code = flood_without_reading(&mut flooder, 10_000).await;
    assert!([4008, 1006].contains(&code), "closed with {code}");
    assert_eq!(server2.broker.metrics.snapshot().slow_consumer_closes, 1);
    honest2.chat().await;
    eventually("flooders' sessions are gone", || {
        server.broker.session_count() == 2 && server2.broker.session_count() == 2
    })
    .await;
    honest.chat().await;
    server.shutdown().await;
    server2.shutdown().await;
}

/// A WebSocket client whose TCP connection comes from `source` (any
/// 127.0.0.0/8 address is loopback on Linux).
async fn open_from(server: &TestServer, source: &str) -> Result<Client, u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    match tokio_tungstenite::client_async(
        server.url(),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    {
        Ok((ws, _)) => Ok(Client::from_ws(ws, Enc::None)),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn connection_floods_are_refused_with_429_per_ip_and_503_in_total() {
    let server =
        TestServer::start("[admission]\nmax_connections = 8\nmax_connections_per_ip = 4\n").await;
    // The honest pair: two connections from 127.0.0.1.
    let mut honest = Honest::new(&server).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            open_from(&server, "127.0.0.1")
                .await
                .expect("under the per-IP limit"),
        );
    }
    assert_eq!(open_from(&server, "127.0.0.1").await.err(), Some(429));
    for _ in 0..4 {
        held.push(
            open_from(&server, "127.0.0.2")
                .await
                .expect("another address"),
        );
    }
    assert_eq!(open_from(&server, "127.0.0.3").await.err(), Some(503));
    assert_eq!(server.admission.open(), 8);
    assert!(server.broker.metrics.snapshot().connections_refused >= 2);
    honest.chat().await;
    // Slots come back when connections close.
    held.truncate(3);
    eventually("slots given back", || server.admission.open() == 5).await;
    let mut c = open_from(&server, "127.0.0.3").await.expect("room again");
    c.connect(json!({})).await.unwrap();
    honest.chat().await;
    drop(held);
    server.shutdown().await;
}

#[tokio::test]
async fn slowloris_upgrades_are_cut_off_at_the_handshake_deadline() {
    let server = TestServer::start("[limits]\nhandshake_timeout_ms = 400\n").await;
    let mut honest = Honest::new(&server).await;
    let baseline = server.admission.open();
    let mut slow = Vec::new();
    for i in 0..30 {
        let addr = server.addr;
        slow.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = tcp.split();
            let mut answer = Vec::new();
            // Half stall after a partial head; half trickle a byte every
            // 100 ms (which would take 15 s): the deadline is absolute.
            let trickle = async {
                for (n, byte) in RAW_UPGRADE.iter().enumerate() {
                    if i % 2 == 0 && n == 20 {
                        std::future::pending::<()>().await;
                    }
                    if wr.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = trickle => unreachable!(),
                _ = rd.read_to_end(&mut answer) => {}
                _ = tokio::time::sleep(WAIT) => panic!("slowloris connection still open"),
            }
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    // A connection that sends nothing at all.
    let idle = raw_exchange(server.addr, b"", WAIT).await;
    assert!(idle.starts_with("HTTP/1.1 408"), "{idle:?}");
    for task in slow {
        let answer = task.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
    eventually("slots given back", || server.admission.open() == baseline).await;
    honest.chat().await;
    server.shutdown().await;
}

#[tokio::test]
async fn forged_expired_and_alg_none_tokens_are_refused_with_4001() {
    let server = TestServer::start("").await;
    let mut honest = Honest::new(&server).await;
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims =
        json!({"sub": "mallory", "role": "agent", "exp": chrono::Utc::now().timestamp() + 600});
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let alg_none_upper = format!("{}.{}.", b64(&json!({"alg": "NONE"})), b64(&claims));
    let stolen_header = token("mallory", "agent", 600);
    let parts: Vec<&str> = stolen_header.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": "mallory", "role": "service", "exp": 9_999_999_999u64})),
        parts[2]
    );
    let nbf_future = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "m", "role": "agent", "exp": chrono::Utc::now().timestamp() + 7200,
                "nbf": chrono::Utc::now().timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "m", "role": "agent"}),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap();
    let forged = [
        alg_none,
        alg_none_upper,
        tampered,
        nbf_future,
        no_exp,
        common::token_with("guessed-secret", "mallory", "agent", 600),
        token("mallory", "agent", -120),
        token("mallory", "admin", 600),
        token("", "agent", 600),
        token(&"m".repeat(300), "agent", 600),
        "a.b.c".into(),
        "".into(),
    ];
    for t in forged {
        let mut c = Client::open(&server, Enc::Json).await;
        let e = c.connect(json!({ "token": t })).await.unwrap_err();
        assert_eq!(e["code"], "unauthorized", "{t}: {e}");
        assert_eq!(c.close_code().await, 4001, "{t}");
    }
    // Resume tokens are not client tokens and vice versa.
    let resume = honest.customer.connect_result["resumeToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = Client::open(&server, Enc::Json).await;
    assert_eq!(
        c.fails("Connect", json!({"token": resume})).await,
        "unauthorized"
    );
    // A token whose `exp` is absurdly far away neither crashes nor overflows.
    let far = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "far", "role": "agent", "exp": u64::MAX}),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = Client::open(&server, Enc::Json).await;
    c.connect(json!({ "token": far })).await.unwrap();
    c.call("GetActions", json!({})).await.unwrap();
    honest.chat().await;
    server.shutdown().await;
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn signed(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    sub: &str,
    ttl: i64,
) -> String {
    let exp = chrono::Utc::now().timestamp() + ttl;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &json!({"sub": sub, "role": "agent", "exp": exp}),
        key,
    )
    .unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_and_algorithm_confusion_does_not() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let rs_key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("jwt-rs256.key.pem")).unwrap()).unwrap();
    let es_key =
        EncodingKey::from_ec_pem(&std::fs::read(fixture("jwt-es256.key.pem")).unwrap()).unwrap();
    for (alg, key, public) in [
        (Algorithm::RS256, &rs_key, "jwt-rs256.pub.pem"),
        (Algorithm::ES256, &es_key, "jwt-es256.pub.pem"),
    ] {
        let server = TestServer::start(&format!(
            "[jwt]\nalgorithm = \"{alg:?}\"\npublic_key_file = \"{}\"\n",
            fixture(public)
        ))
        .await;
        let mut ok = Client::open(&server, Enc::MsgPack).await;
        let r = ok
            .connect(json!({"token": signed(alg, key, "ada", 600)}))
            .await
            .unwrap();
        assert_eq!(r["identity"], "ada");
        assert!(r["tokenExpiresAt"].is_string());
        // HS256 tokens (the shared secret, or the public key used as an
        // HMAC secret) are refused: the configured algorithm is the only one.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        for t in [
            token("ada", "agent", 600),
            signed(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public_pem),
                "ada",
                600,
            ),
            signed(alg, key, "ada", -600),
        ] {
            let mut c = Client::open(&server, Enc::Json).await;
            assert_eq!(
                c.fails("Connect", json!({ "token": t })).await,
                "unauthorized"
            );
            assert_eq!(c.close_code().await, 4001);
        }
        // The broker holds no private key, so it mints no demo tokens.
        let answer = raw_exchange(
            server.addr,
            b"GET /demo/token?sub=x HTTP/1.1\r\nHost: x\r\n\r\n",
            WAIT,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        ok.call("GetActions", json!({})).await.unwrap();
        server.shutdown().await;
    }
}

#[tokio::test]
async fn an_expiring_token_closes_its_session_unless_refreshed() {
    let server = TestServer::start("[jwt]\nleeway_secs = 0\n").await;
    let mut honest = Honest::new(&server).await;
    let mut expiring = server.staff_token(&token("eve", "agent", 2)).await;
    let rick_exp = chrono::Utc::now().timestamp() + 2;
    let mut refreshed = server.staff_token(&token("rick", "agent", 2)).await;
    // Refreshing with someone else's token is refused and changes nothing.
    let e = refreshed
        .call("RefreshToken", json!({"token": token("eve", "agent", 600)}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(
        refreshed
            .fails("RefreshToken", json!({"token": "junk"}))
            .await,
        "unauthorized"
    );
    let r = refreshed
        .call(
            "RefreshToken",
            json!({"token": token("rick", "agent", 600)}),
        )
        .await
        .unwrap();
    assert!(r["tokenExpiresAt"].is_string());
    assert_eq!(expiring.close_code().await, 4001);
    assert_eq!(expiring.closed.as_ref().unwrap().1, "token expired");
    // Past its first token's expiry, the refreshed session is alive.
    while chrono::Utc::now().timestamp() <= rick_exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refreshed.call("GetActions", json!({})).await.unwrap();
    // Anonymous customers have no token to refresh.
    assert_eq!(
        honest
            .customer
            .fails("RefreshToken", json!({"token": token("x", "customer", 60)}))
            .await,
        "bad_request"
    );
    honest.chat().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_customer_trying_every_other_channel_sees_and_writes_nothing() {
    let server = TestServer::start("").await;
    let mut honest = Honest::new(&server).await;
    let mut victims = Vec::new();
    let mut sids = vec![honest.sid.clone()];
    for _ in 0..10 {
        let mut v = server.customer().await;
        let sid = v.start_engagement().await;
        sids.push(sid);
        victims.push(v);
    }
    // Plus sids that do not exist: the answer must not tell them apart.
    for i in 0..10u32 {
        sids.push(format!("CH{:032x}", 0xdead_0000u128 + i as u128));
    }
    let mut mallory = server.customer().await;
    for sid in &sids {
        for (action, payload, code) in [
            (
                "SendMessage",
                json!({"channelSid": sid, "body": "psst"}),
                "not_a_member",
            ),
            (
                "SetInputText",
                json!({"channelSid": sid, "body": "psst"}),
                "not_a_member",
            ),
            ("SendTyping", json!({"channelSid": sid}), "not_a_member"),
            ("LeaveChannel", json!({"channelSid": sid}), "not_a_member"),
            ("JoinChannel", json!({"channelSid": sid}), "forbidden"),
            ("Subscribe", json!({"channel": sid}), "forbidden"),
            ("Unsubscribe", json!({"channel": sid}), "forbidden"),
        ] {
            let e = mallory.call(action, payload).await.unwrap_err();
            assert_eq!(e["code"], code, "{action} on {sid}");
        }
    }
    for queue in ["queue:default", "queue:vip"] {
        assert_eq!(
            mallory.fails("Subscribe", json!({"channel": queue})).await,
            "forbidden"
        );
    }
    // Custom actions cannot be used to reach further.
    assert_eq!(
        mallory
            .fails(
                "TriggerAction",
                json!({"name": "SendMessage", "payload": {"channelSid": sids[0], "body": "x"}})
            )
            .await,
        "unknown_action"
    );
    // Nobody heard anything from mallory, and mallory heard nothing.
    honest.chat().await;
    for v in &mut victims {
        v.no_push("messageAdded", Duration::from_millis(50)).await;
        v.no_push("typingStarted", Duration::from_millis(10)).await;
    }
    assert!(honest
        .agent
        .pushes
        .iter()
        .all(|p| p["data"]["author"] != mallory.identity()));
    mallory
        .no_push("messageAdded", Duration::from_millis(100))
        .await;
    assert!(mallory.pushes.is_empty(), "{:?}", mallory.pushes);
    server.shutdown().await;
}

#[tokio::test]
async fn the_origin_allowlist_refuses_other_sites_with_403() {
    let server = TestServer::start("allowed_origins = [\"https://shop.example\"]\n").await;
    let mut honest = Honest::new(&server).await; // no Origin: allowed
    let url = server.url();
    assert_eq!(
        upgrade_status(&url, &[("Origin", "https://shop.example")]).await,
        None
    );
    assert_eq!(
        upgrade_status(&url, &[("Origin", "https://SHOP.example")]).await,
        None
    );
    assert_eq!(
        upgrade_status(&url, &[("Origin", "https://evil.example")]).await,
        Some(403)
    );
    assert_eq!(upgrade_status(&url, &[("Origin", "null")]).await, Some(403));
    assert_eq!(
        upgrade_status(&url, &[("Origin", "http://shop.example")]).await,
        Some(403)
    );
    assert_eq!(upgrade_status(&url, &[]).await, None);
    honest.chat().await;
    server.shutdown().await;

    // No key: any origin.
    let open = TestServer::start("").await;
    assert_eq!(
        upgrade_status(&open.url(), &[("Origin", "https://evil.example")]).await,
        None
    );
    open.shutdown().await;
}

#[tokio::test]
async fn sessions_per_identity_and_subscriptions_per_session_are_capped() {
    let server = TestServer::start(
        "[admission]\nmax_sessions_per_identity = 3\nmax_subscriptions_per_session = 2\n",
    )
    .await;
    let mut honest = Honest::new(&server).await;
    let t = token("tabby", "agent", 600);
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(server.staff_token(&t).await);
    }
    let mut extra = Client::open(&server, Enc::Json).await;
    let e = extra.connect(json!({ "token": t })).await.unwrap_err();
    assert_eq!(e["code"], "rate_limited");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("max_sessions_per_identity"));
    // A tab closing makes room.
    tabs.pop();
    eventually("a tab detached", || server.broker.session_count() == 5).await;
    extra.connect(json!({ "token": t })).await.unwrap();

    let agent = &mut tabs[0];
    agent
        .call("Subscribe", json!({"channel": "queue:a"}))
        .await
        .unwrap();
    agent
        .call("Subscribe", json!({"channel": honest.sid}))
        .await
        .unwrap();
    agent
        .call("Subscribe", json!({"channel": "queue:a"}))
        .await
        .unwrap();
    let e = agent
        .call("Subscribe", json!({"channel": "queue:b"}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "rate_limited");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("max_subscriptions_per_session"));
    agent
        .call("Unsubscribe", json!({"channel": "queue:a"}))
        .await
        .unwrap();
    agent
        .call("Subscribe", json!({"channel": "queue:b"}))
        .await
        .unwrap();
    honest.chat().await;
    server.shutdown().await;
}
