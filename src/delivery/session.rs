//! One WebSocket connection, as the rest of the node sees it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;

use crate::codec::{encode, Encoding};
use crate::event::SessionKey;
use crate::outbox::Outbox;

pub struct SessionHandle {
    pub key: SessionKey,
    /// The `sessionId` given to the client.
    pub id: String,
    pub encoding: Encoding,
    pub outbox: Arc<Outbox>,
    pub peer: SocketAddr,
    /// The identity, once `Connect` has succeeded.
    identity: Mutex<Option<Arc<str>>>,
    /// What the session receives beyond its identity's pushes: channels as
    /// a member's session, channels and queues it observes. Only the
    /// delivery changes it, under the topic's lock; a session that ends
    /// is taken out of each.
    topics: Mutex<Topics>,
    /// Per-session rate limits (see `rate_limit`).
    pub rate: crate::rate_limit::SessionLimiter,
}

#[derive(Default)]
struct Topics {
    /// Channels and queues this session observes (`Subscribe`).
    subscribed: HashSet<Arc<str>>,
    /// Channels it receives because its identity is a member.
    member_of: HashSet<Arc<str>>,
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
            topics: Mutex::new(Topics::default()),
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

    /// Queues an already encoded frame that must be delivered.
    pub(crate) fn push_frame(&self, frame: Bytes) -> bool {
        self.outbox.push(frame)
    }

    /// Queues a frame the broker may drop under pressure (typing).
    pub(crate) fn push_droppable(&self, frame: Bytes) -> bool {
        self.outbox.push_droppable(frame)
    }

    /// Queues a one-off frame for this session only (a reply).
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> bool {
        self.outbox.push(encode(self.encoding, value))
    }

    pub(crate) fn add_subscription(&self, topic: Arc<str>) -> bool {
        self.topics.lock().subscribed.insert(topic)
    }

    pub(crate) fn remove_subscription(&self, topic: &str) -> bool {
        self.topics.lock().subscribed.remove(topic)
    }

    pub(crate) fn add_membership(&self, channel: Arc<str>) {
        self.topics.lock().member_of.insert(channel);
    }

    pub(crate) fn remove_membership(&self, channel: &str) {
        self.topics.lock().member_of.remove(channel);
    }

    /// Everything the session receives, emptied (it is ending).
    pub(crate) fn take_topics(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let mut topics = self.topics.lock();
        (
            topics.subscribed.drain().collect(),
            topics.member_of.drain().collect(),
        )
    }

    /// The channels and queues it observes.
    pub(crate) fn subscriptions(&self) -> Vec<Arc<str>> {
        self.topics.lock().subscribed.iter().cloned().collect()
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.topics.lock().subscribed.contains(topic)
    }

    pub fn subscription_count(&self) -> usize {
        self.topics.lock().subscribed.len()
    }
}
