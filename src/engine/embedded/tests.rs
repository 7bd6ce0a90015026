//! The embedded engine's operations, without sockets: sessions are outboxes
//! read directly.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::Embedded;
use crate::auth::{Principal, Role};
use crate::codec::Encoding;
use crate::config::Config;
use crate::delivery::session::SessionHandle;
use crate::delivery::Delivery;
use crate::engine::{Actor, Engine, NewMessage, Pending};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxLimits};
use crate::store::Durability;

struct World {
    engine: Arc<Embedded>,
    dir: Option<std::path::PathBuf>,
    next: std::sync::atomic::AtomicU64,
}

impl Drop for World {
    fn drop(&mut self) {
        self.engine.close();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn world(durability: Durability) -> World {
    let mut config = Config {
        durability,
        ..Config::default()
    };
    let dir = (durability != Durability::Memory).then(|| {
        std::env::temp_dir().join(format!(
            "switchboard-engine-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ))
    });
    if let Some(dir) = &dir {
        config.data_dir = dir.clone();
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let delivery = Arc::new(Delivery::new(&config, metrics.clone()));
    let (engine, _) = Embedded::open(config, delivery, metrics).expect("engine");
    World {
        engine,
        dir,
        next: std::sync::atomic::AtomicU64::new(1),
    }
}

impl World {
    fn actor(&self, id: &str, role: Role) -> Actor {
        resolve(self.engine.identify(&Principal {
            identity: id.into(),
            role,
            anonymous: false,
        }))
    }

    /// A session of `actor`, attached; its outbox holds what it was sent.
    fn session(&self, actor: &Actor) -> (Arc<SessionHandle>, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(
            OutboxLimits {
                frames: 1 << 20,
                bytes: 1 << 30,
                typing_frames: 1 << 10,
            },
            Arc::new(Metrics::default()),
        ));
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Arc::new(SessionHandle::new(key, Encoding::Json, outbox.clone()));
        resolve(self.engine.attach(&session, actor, &HashMap::new()));
        (session, outbox)
    }

    fn post(&self, actor: &Actor, sid: &str, body: &str) -> Pending<crate::engine::Posted> {
        self.engine.post(
            actor,
            sid,
            NewMessage {
                body: body.into(),
                attributes: crate::store::Attributes::empty(),
                by_broker: false,
            },
        )
    }
}

/// The result of an operation, waiting for durability when it must.
fn resolve<T: Unpin>(pending: Pending<T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(pending).expect("the operation succeeds")
}

/// Every push in an outbox, decoded, in order.
fn pushes(outbox: &Outbox) -> Vec<Value> {
    outbox
        .take_frames()
        .into_iter()
        .map(|frame| {
            assert!(
                crate::ws::is_text(&frame),
                "a JSON session got a binary frame"
            );
            serde_json::from_slice(&crate::codec::payload_of(&frame)).unwrap()
        })
        .collect()
}

fn indexes(pushes: &[Value]) -> Vec<u64> {
    pushes
        .iter()
        .filter(|p| p["event"] == "messageAdded")
        .map(|p| p["data"]["index"].as_u64().unwrap())
        .collect()
}

/// Posts from several threads at once get one gapless index sequence, and
/// every member's session receives it in index order.
#[test]
fn concurrent_posts_share_one_gapless_order() {
    for durability in [Durability::Memory, Durability::Os] {
        let w = world(durability);
        let customer = w.actor("customer", Role::Customer);
        let sid = resolve(
            w.engine
                .start_engagement(&customer, json!({}), "queue:default".into()),
        )
        .channel_sid;
        let agents: Vec<Actor> = (0..4)
            .map(|i| w.actor(&format!("agent-{i}"), Role::Agent))
            .collect();
        for agent in &agents {
            resolve(w.engine.join(agent, &sid));
        }
        let (_, watching) = w.session(&customer);
        std::thread::scope(|scope| {
            for agent in &agents {
                let (w, sid) = (&w, &sid);
                scope.spawn(move || {
                    for i in 0..200 {
                        resolve(w.post(agent, sid, &format!("{} {i}", agent.id)));
                    }
                });
            }
        });
        let got = indexes(&pushes(&watching));
        assert_eq!(got, (0..800).collect::<Vec<u64>>(), "{durability:?}");
    }
}

/// A restart racing posts from the customer's other tabs: every accepted
/// post is delivered before the customer's `memberLeft`, none after it,
/// and `memberLeft` comes exactly once.
#[test]
fn restart_is_atomic_against_concurrent_posts() {
    for durability in [Durability::Memory, Durability::Os] {
        let w = world(durability);
        let customer = w.actor("customer", Role::Customer);
        let agent = w.actor("agent", Role::Agent);
        let sid = resolve(
            w.engine
                .start_engagement(&customer, json!({}), "queue:default".into()),
        )
        .channel_sid;
        resolve(w.engine.join(&agent, &sid));
        let (_, agent_sees) = w.session(&agent);
        let accepted = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for tab in 0..2 {
                let (w, sid, customer, accepted) = (&w, &sid, &customer, &accepted);
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    for i in 0..500 {
                        match rt.block_on(w.post(customer, sid, &format!("{tab}-{i}"))) {
                            Ok(posted) => accepted.lock().unwrap().push(posted.index),
                            Err(_) => return,
                        }
                    }
                });
            }
            let (w, customer) = (&w, &customer);
            scope.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(2));
                resolve(w.engine.restart_engagement(customer));
            });
        });
        let seen = pushes(&agent_sees);
        let left: Vec<usize> = seen
            .iter()
            .enumerate()
            .filter(|(_, p)| p["event"] == "memberLeft")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(left.len(), 1, "{durability:?}: exactly one memberLeft");
        assert!(
            seen[left[0] + 1..]
                .iter()
                .all(|p| p["event"] != "messageAdded"),
            "{durability:?}: nothing of the customer after its memberLeft"
        );
        let mut accepted = accepted.into_inner().unwrap();
        accepted.sort();
        assert_eq!(
            indexes(&seen[..left[0]]),
            accepted,
            "{durability:?}: every accepted post, in order, before the memberLeft"
        );
    }
}

/// With a store, a post's result stands only once its write is durable,
/// and its `messageAdded` is delivered once, in index order (from the
/// store's writer, after the commit; the kill -9 tests check from outside
/// that nothing is shown before).
#[test]
fn results_wait_for_durability() {
    let w = world(Durability::Os);
    let customer = w.actor("customer", Role::Customer);
    let sid = resolve(
        w.engine
            .start_engagement(&customer, json!({}), "queue:default".into()),
    )
    .channel_sid;
    let (_, sees) = w.session(&customer);
    let store = w.engine.store.as_ref().unwrap();
    let pending: Vec<_> = (0..50)
        .map(|i| w.post(&customer, &sid, &format!("m{i}")))
        .collect();
    for p in pending {
        let ticket = p.ticket().expect("a stored post waits for its ticket");
        resolve(p);
        assert!(store.durable_upto() >= ticket);
    }
    assert_eq!(indexes(&pushes(&sees)), (0..50).collect::<Vec<u64>>());
}
