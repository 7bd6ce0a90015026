//! Everything hostile at once against the real binary, in its own process so
//! that its memory can be measured: while garbage, bombs, huge frames,
//! floods, a connection flood, slowloris and forged tokens hit it, an honest
//! customer and agent keep chatting, every message arrives in order, and the
//! broker's resident memory stays bounded.

mod common;

use std::time::Duration;

use common::{
    config_file, fresh_data_dir, token, token_with, BrokerProcess, Client, Enc, SECRET, WAIT,
};
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Memory growth allowed over the whole attack (generous: the point is
/// "bounded", not a performance figure).
const MAX_GROWTH_KIB: u64 = 200 * 1024;

struct Broker {
    process: BrokerProcess,
    /// `host:port`
    addr: String,
}

fn start(config: &str) -> Broker {
    let path = config_file("hostile.toml", config);
    let process = BrokerProcess::start(
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("SWITCHBOARD_JWT_SECRET", SECRET)],
        &fresh_data_dir(),
    );
    let addr = process
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    Broker { process, addr }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn open(url: &str, enc: Enc) -> Option<Client> {
    Client::open_url(url, enc).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_honest_clients_with_bounded_memory_under_attack() {
    let broker = start("[limits]\nhandshake_timeout_ms = 1000\nconnect_timeout_ms = 2000\n");
    let url = format!("ws://{}/ws", broker.addr);
    let pid = broker.process.child.id();

    // The honest pair.
    let mut customer = Client::open_url(&url, Enc::Json).await.unwrap();
    customer.connect(json!({})).await.unwrap();
    let sid = customer.start_engagement().await;
    let mut agent = Client::staff_at(&url, "agent-smith", "agent", Enc::MsgPack).await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    let (rss_before, _) = memory_kib(pid);

    let attack_done = tokio_util::sync::CancellationToken::new();
    let honest = {
        let (sid, done) = (sid.clone(), attack_done.clone());
        tokio::spawn(async move {
            let mut index = 0u64;
            // Paced under the default message rate (10/s per session).
            while !done.is_cancelled() || index < 20 {
                for from_customer in [true, false] {
                    let (sender, receiver) = if from_customer {
                        (&mut customer, &mut agent)
                    } else {
                        (&mut agent, &mut customer)
                    };
                    let body = format!("honest {index}");
                    let r = sender
                        .call("SendMessage", json!({"channelSid": sid, "body": body}))
                        .await
                        .unwrap_or_else(|e| panic!("honest send failed: {e}"));
                    assert_eq!(r["index"], index);
                    for side in [receiver, sender] {
                        let m = side.push("messageAdded").await;
                        assert_eq!(m["index"], index, "in order, none lost");
                        assert_eq!(m["body"], body);
                    }
                    index += 1;
                }
                customer.pushes.clear();
                agent.pushes.clear();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(customer.closed.is_none() && agent.closed.is_none());
            index
        })
    };

    let mut attacks = Vec::new();
    // Garbage and bombs, read back as bad_request.
    for enc in [Enc::Json, Enc::MsgPack, Enc::Json, Enc::MsgPack] {
        let url = url.clone();
        attacks.push(tokio::spawn(async move {
            let Some(mut c) = open(&url, enc).await else {
                return;
            };
            let frames: Vec<Message> = match enc {
                Enc::MsgPack => vec![
                    Message::Binary(vec![0xdb, 0xff, 0xff, 0xff, 0xff].into()),
                    Message::Binary(vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0].into()),
                    Message::Binary(vec![0x91; 60_000].into()),
                    Message::Binary(vec![0xc1, 0x00].into()),
                ],
                _ => vec![
                    Message::Text("[".repeat(60_000).into()),
                    Message::Text("{\"id\":1,".into()),
                    Message::Text("\u{feff}garbage".into()),
                    Message::Text(
                        format!("{{\"id\":2,\"action\":\"{}\"}}", "x".repeat(50_000)).into(),
                    ),
                ],
            };
            for _ in 0..25 {
                for f in &frames {
                    if c.ws.send(f.clone()).await.is_err() {
                        return;
                    }
                    match c.read_frame().await {
                        Some(reply) => assert_eq!(reply["error"]["code"], "bad_request"),
                        None => return, // rate limited away (4029): also fine
                    }
                }
            }
        }));
    }
    // Oversized frames: 4009.
    for _ in 0..10 {
        let url = url.clone();
        attacks.push(tokio::spawn(async move {
            let Some(mut c) = open(&url, Enc::Json).await else {
                return;
            };
            let _ =
                c.ws.send(Message::Text("x".repeat(200 * 1024).into()))
                    .await;
            assert_eq!(c.close_code().await, 4009);
        }));
    }
    // Flooders that never read: 10,000 commands each.
    for i in 0..5 {
        let url = url.clone();
        attacks.push(tokio::spawn(async move {
            let enc = if i % 2 == 0 { Enc::Json } else { Enc::MsgPack };
            let Some(mut c) = open(&url, enc).await else {
                return;
            };
            let _ = c.connect(json!({})).await;
            let frame = c.encode(&json!({"id": 1, "action": "GetActions"}));
            let flood = async {
                for _ in 0..10_000 {
                    if c.ws.feed(frame.clone()).await.is_err() {
                        return;
                    }
                }
                let _ = c.ws.flush().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
            while c.closed.is_none() {
                if c.read_frame_within(WAIT).await.is_none() && c.closed.is_none() {
                    panic!("a flooder is still connected");
                }
            }
        }));
    }
    // A connection flood from another loopback address, half of them
    // slowloris: partial request heads, never finished.
    for i in 0..300 {
        let addr = broker.addr.clone();
        attacks.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
            let Ok(mut tcp) = socket.connect(addr.parse().unwrap()).await else {
                return;
            };
            if i % 2 == 0 {
                let _ = tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
            }
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut sink)).await;
            let answer = String::from_utf8_lossy(&sink);
            assert!(
                answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 429"),
                "{answer:?}"
            );
        }));
    }
    // Forged tokens.
    for i in 0..30 {
        let url = url.clone();
        attacks.push(tokio::spawn(async move {
            let Some(mut c) = open(&url, Enc::Json).await else {
                return;
            };
            let t = if i % 2 == 0 {
                token_with("wrong", "mallory", "agent", 600)
            } else {
                token("mallory", "agent", -600)
            };
            assert_eq!(
                c.fails("Connect", json!({ "token": t })).await,
                "unauthorized"
            );
            assert_eq!(c.close_code().await, 4001);
        }));
    }
    // A customer probing channel sids.
    {
        let (url, sid) = (url.clone(), sid.clone());
        attacks.push(tokio::spawn(async move {
            let mut c = open(&url, Enc::Json).await.unwrap();
            c.connect(json!({})).await.unwrap();
            let mut sids = vec![sid];
            sids.extend((0..90u128).map(|i| format!("CH{:032x}", i * 7919)));
            for s in sids {
                let e = c
                    .call("SendMessage", json!({"channelSid": s, "body": "x"}))
                    .await
                    .unwrap_err();
                assert!(
                    e["code"] == "not_a_member" || e["code"] == "rate_limited",
                    "{e}"
                );
            }
        }));
    }
    for attack in attacks {
        tokio::time::timeout(Duration::from_secs(30), attack)
            .await
            .expect("every attack ends")
            .expect("attack task");
    }
    attack_done.cancel();
    let exchanged = tokio::time::timeout(Duration::from_secs(30), honest)
        .await
        .expect("honest chat ends")
        .expect("honest clients were never disturbed");
    assert!(exchanged >= 20);

    // The attackers' sessions are gone; memory stayed bounded throughout.
    let metrics = async {
        loop {
            let m = common::raw_exchange(
                broker.addr.parse().unwrap(),
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                WAIT,
            )
            .await;
            if m.contains("switchboard_sessions_open 0\n") {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let m = tokio::time::timeout(WAIT, metrics)
        .await
        .expect("sessions drained");
    assert!(!m.contains("switchboard_frames_too_large_total 0\n"), "{m}");
    assert!(!m.contains("switchboard_bad_requests_total 0\n"), "{m}");
    let (rss_after, hwm) = memory_kib(pid);
    eprintln!("broker memory: before {rss_before} KiB, after {rss_after} KiB, peak {hwm} KiB");
    assert!(
        hwm.saturating_sub(rss_before) < MAX_GROWTH_KIB,
        "peak {hwm} KiB vs {rss_before} KiB before the attack"
    );
    assert!(rss_after.saturating_sub(rss_before) < MAX_GROWTH_KIB);
}
