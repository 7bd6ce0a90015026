//! In-process benchmarks of the broker's hot paths (no sockets): encoding a
//! push once per encoding and sharing it, fanning a message out to N
//! sessions' outboxes, and membership churn (join, leave, restart) under
//! contention while a channel fans out.
//!
//! `cargo bench --bench broker` (figures and how to read them:
//! docs/benchmarks.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use switchboard::auth::Role;
use switchboard::codec::{Encoding, Push};
use switchboard::config::Durability;
use switchboard::outbox::Outbox;
use switchboard::store::StoredMessage;
use switchboard::{ActionContext, ActionRegistry, Broker, Config};

fn broker() -> Arc<Broker> {
    let mut config = Config {
        durability: Durability::Memory,
        ..Config::default()
    };
    // The benchmark drains outboxes itself; keep the bounds out of the way.
    config.limits.outbox_frames = 1 << 20;
    config.limits.outbox_bytes = 1 << 30;
    Arc::new(Broker::new(config, ActionRegistry::new()).unwrap())
}

/// A connected session of `identity` with `role`, and its outbox.
type Session = (ActionContext, Arc<Outbox>);

fn connect(broker: &Arc<Broker>, identity: &str, role: Role, encoding: Encoding) -> Session {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(broker.session_without_socket(identity, role, encoding))
        .unwrap()
}

fn run(rt: &tokio::runtime::Runtime, session: &Session, action: &str, payload: Value) -> Value {
    rt.block_on(session.0.invoke(action, payload)).unwrap()
}

fn drain(sessions: &[Session]) {
    for (_, outbox) in sessions {
        outbox.drain();
    }
}

fn encode(c: &mut Criterion) {
    let message = StoredMessage {
        channel_sid: Arc::from(format!("CH{:032x}", 7u128)),
        index: 12345,
        author: Arc::from("anon-0123456789abcdef0123456789abcdef"),
        author_role: Role::Customer,
        body: "x".repeat(200),
        attributes: switchboard::store::Attributes::of(&json!({"t": 1_700_000_000_000_000_000u64})),
        date_created: "2026-11-21T10:00:00.000Z".into(),
        created_ms: 0,
    };
    let mut group = c.benchmark_group("encode_push");
    for encoding in Encoding::ALL {
        group.bench_function(format!("{encoding:?}"), |b| {
            b.iter(|| Push::new("messageAdded", &message).frame(encoding))
        });
    }
    // Encoded once, shared by 1,000 recipients: the sharing is a refcount.
    group.throughput(Throughput::Elements(1000));
    group.bench_function("json_once_shared_by_1000", |b| {
        b.iter(|| {
            let push = Push::new("messageAdded", &message);
            for _ in 0..1000 {
                std::hint::black_box(push.frame(Encoding::Json));
            }
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for n in [10usize, 100, 1000] {
        let broker = broker();
        let customer = connect(&broker, "customer", Role::Customer, Encoding::Json);
        let sid = run(&rt, &customer, "StartEngagement", json!({}))["channelSid"].clone();
        let mut sessions: Vec<Session> = (0..n)
            .map(|i| {
                let encoding = if i % 2 == 0 {
                    Encoding::Json
                } else {
                    Encoding::MsgPack
                };
                let observer = connect(&broker, &format!("agent-{i}"), Role::Agent, encoding);
                run(&rt, &observer, "Subscribe", json!({"channel": sid}));
                observer
            })
            .collect();
        sessions.push(customer.clone());
        drain(&sessions);
        let payload = json!({"channelSid": sid, "body": "y".repeat(200)});
        group.throughput(Throughput::Elements(n as u64 + 1));
        group.bench_with_input(BenchmarkId::new("send_message_to", n), &n, |b, _| {
            b.iter(|| {
                run(&rt, &customer, "SendMessage", payload.clone());
                drain(&sessions);
            })
        });
    }
    group.finish();
}

/// Join/leave and start/restart from other threads while one channel with
/// 100 observers takes messages: how much the membership work costs when it
/// contends with fan-out. Reports the publisher's time per message.
fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("send_message_100_observers_under_churn", |b| {
        b.iter_custom(|iters| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let broker = broker();
            let customer = connect(&broker, "busy-customer", Role::Customer, Encoding::Json);
            let sid = run(&rt, &customer, "StartEngagement", json!({}))["channelSid"].clone();
            let observers: Vec<Session> = (0..100)
                .map(|i| {
                    let o = connect(&broker, &format!("obs-{i}"), Role::Agent, Encoding::Json);
                    run(&rt, &o, "Subscribe", json!({"channel": sid}));
                    o
                })
                .collect();
            let stop = Arc::new(AtomicBool::new(false));
            let churners: Vec<_> = (0..2)
                .map(|t| {
                    let broker = broker.clone();
                    let stop = stop.clone();
                    let sid = sid.clone();
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        let agent = connect(
                            &broker,
                            &format!("churn-agent-{t}"),
                            Role::Agent,
                            Encoding::Json,
                        );
                        let cust = connect(
                            &broker,
                            &format!("churn-customer-{t}"),
                            Role::Customer,
                            Encoding::Json,
                        );
                        let mut ops = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            run(&rt, &agent, "JoinChannel", json!({"channelSid": sid}));
                            run(&rt, &agent, "LeaveChannel", json!({"channelSid": sid}));
                            run(&rt, &cust, "StartEngagement", json!({}));
                            run(&rt, &cust, "RestartEngagement", json!({}));
                            agent.1.drain();
                            cust.1.drain();
                            ops += 4;
                        }
                        ops
                    })
                })
                .collect();
            let payload = json!({"channelSid": sid, "body": "y".repeat(200)});
            let start = Instant::now();
            for _ in 0..iters {
                run(&rt, &customer, "SendMessage", payload.clone());
                drain(&observers);
                customer.1.drain();
            }
            let elapsed = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            for c in churners {
                c.join().unwrap();
            }
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, encode, fanout, churn);
criterion_main!(benches);
