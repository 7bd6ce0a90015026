//! One WebSocket connection, as the rest of the node sees it.

use std::collections::HashSet;
use std::fmt;
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
    pub id: SessionId,
    pub encoding: Encoding,
    pub outbox: Arc<Outbox>,
    /// The identity, once `Connect` has succeeded.
    identity: Mutex<Option<Arc<str>>>,
    /// What the session receives beyond its identity's pushes: channels as
    /// a member's session, channels and queues it observes (allocated with
    /// the first: most sessions of a busy broker are idle customers). Only the
    /// delivery changes it, under the topic's lock; a session that ends
    /// is taken out of each.
    topics: Mutex<Option<Box<Topics>>>,
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

/// A `sessionId`: `SE` and 32 hex digits, kept inline (a session is
/// small, and a `String` would be one more allocation per connection).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 34]);

impl SessionId {
    fn random() -> SessionId {
        let mut id = [0u8; 34];
        id[..2].copy_from_slice(b"SE");
        let hex = format!("{:032x}", rand::random::<u128>());
        id[2..].copy_from_slice(hex.as_bytes());
        SessionId(id)
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or("SE")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl SessionHandle {
    pub fn new(key: SessionKey, encoding: Encoding, outbox: Arc<Outbox>) -> Self {
        SessionHandle {
            key,
            id: SessionId::random(),
            encoding,
            outbox,
            identity: Mutex::new(None),
            topics: Mutex::new(None),
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
        self.topics
            .lock()
            .get_or_insert_with(Box::default)
            .subscribed
            .insert(topic)
    }

    pub(crate) fn remove_subscription(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .as_mut()
            .is_some_and(|t| t.subscribed.remove(topic))
    }

    pub(crate) fn add_membership(&self, channel: Arc<str>) {
        self.topics
            .lock()
            .get_or_insert_with(Box::default)
            .member_of
            .insert(channel);
    }

    pub(crate) fn remove_membership(&self, channel: &str) {
        if let Some(topics) = self.topics.lock().as_mut() {
            topics.member_of.remove(channel);
        }
    }

    /// Everything the session receives, emptied (it is ending).
    pub(crate) fn take_topics(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        match self.topics.lock().take() {
            Some(topics) => (
                topics.subscribed.into_iter().collect(),
                topics.member_of.into_iter().collect(),
            ),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// The channels and queues it observes.
    pub(crate) fn subscriptions(&self) -> Vec<Arc<str>> {
        self.topics
            .lock()
            .as_ref()
            .map(|t| t.subscribed.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .as_ref()
            .is_some_and(|t| t.subscribed.contains(topic))
    }

    pub fn subscription_count(&self) -> usize {
        self.topics
            .lock()
            .as_ref()
            .map_or(0, |t| t.subscribed.len())
    }
}
#[cfg(test)]
mod tests {
    /// Every connected session holds one of these for its whole life, idle
    /// or not: what is rarely used is boxed on first use.
    #[test]
    fn a_session_handle_stays_small() {
        assert!(std::mem::size_of::<super::SessionHandle>() <= 160);
        assert_eq!(std::mem::size_of::<crate::rate_limit::SessionLimiter>(), 8);
    }
}
