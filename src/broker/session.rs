//! One WebSocket connection, as the rest of the broker sees it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::codec::{encode, Encoding, Push};
use crate::outbox::Outbox;

/// Process-unique key of a session in the registries' maps.
pub type SessionKey = u64;

pub struct SessionHandle {
    pub key: SessionKey,
    /// The `sessionId` given to the client.
    pub id: String,
    pub encoding: Encoding,
    pub outbox: Arc<Outbox>,
    pub peer: SocketAddr,
    /// The identity, once `Connect` has succeeded.
    identity: Mutex<Option<Arc<str>>>,
    /// Channels and queues this session observes (`Subscribe`). Only the
    /// session's own task changes it; the lock just makes that `Sync`.
    subscriptions: Mutex<HashSet<Arc<str>>>,
    /// Per-session rate limits (see `rate_limit`).
    pub rate: crate::rate_limit::SessionLimiter,
}

impl SessionHandle {
    pub fn new(key: SessionKey, encoding: Encoding, outbox: Arc<Outbox>, peer: SocketAddr) -> Self {
        SessionHandle {
            key,
            id: format!("SE{:032x}", rand::random::<u128>()),
            encoding,
            outbox,
            peer,
            identity: Mutex::new(None),
            subscriptions: Mutex::new(HashSet::new()),
            rate: crate::rate_limit::SessionLimiter::unlimited(),
        }
    }

    pub fn with_rate_limiter(mut self, rate: crate::rate_limit::SessionLimiter) -> Self {
        self.rate = rate;
        self
    }

    pub fn identity(&self) -> Option<Arc<str>> {
        self.identity.lock().clone()
    }

    pub(crate) fn set_identity(&self, identity: Arc<str>) {
        *self.identity.lock() = Some(identity);
    }

    /// Queues a push that must be delivered.
    pub fn push<T: Serialize>(&self, push: &Push<'_, T>) -> bool {
        self.outbox.push(push.frame(self.encoding))
    }

    /// Queues a recovered message (see `Outbox::push_replay`).
    pub fn push_replay<T: Serialize>(&self, push: &Push<'_, T>) -> bool {
        self.outbox.push_replay(push.frame(self.encoding))
    }

    /// Queues a push the broker may drop under pressure (typing).
    pub fn push_droppable<T: Serialize>(&self, push: &Push<'_, T>) -> bool {
        self.outbox.push_droppable(push.frame(self.encoding))
    }

    /// Queues a one-off frame for this session only (a reply).
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> bool {
        self.outbox.push(encode(self.encoding, value))
    }

    pub(crate) fn add_subscription(&self, channel: Arc<str>) -> bool {
        self.subscriptions.lock().insert(channel)
    }

    pub(crate) fn remove_subscription(&self, channel: &str) -> bool {
        self.subscriptions.lock().remove(channel)
    }

    pub(crate) fn take_subscriptions(&self) -> Vec<Arc<str>> {
        self.subscriptions.lock().drain().collect()
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subscriptions.lock().contains(channel)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().len()
    }
}
