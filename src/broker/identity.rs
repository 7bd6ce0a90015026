//! Identities: a user with zero or more sessions and the state they share.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::Role;
use crate::codec::Push;

use super::session::{SessionHandle, SessionKey};

pub struct Identity {
    pub id: Arc<str>,
    pub role: Role,
    pub anonymous: bool,
    /// Why one lock per identity: every per-identity change (engagement,
    /// widget, drafts, memberships, its set of sessions) must be seen in the
    /// same order by all of the identity's tabs, and lock order is always
    /// identity, then channel, then queue, so it can never deadlock.
    state: Mutex<IdentityState>,
}

pub struct IdentityState {
    /// Set when the reaper forgot this identity; a `Connect` that finds it
    /// set looks the identity up again.
    pub removed: bool,
    pub sessions: Vec<Arc<SessionHandle>>,
    pub engagement: Option<Engagement>,
    pub expanded: bool,
    /// Draft per channel sid (`SetInputText`).
    pub drafts: HashMap<Arc<str>, String>,
    /// Channels the identity is a member of.
    pub channels: HashSet<Arc<str>>,
    /// When the last session went away (for the reaper).
    pub idle_since: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Engagement {
    pub channel_sid: Arc<str>,
    pub started_at: String,
}

impl Identity {
    pub fn new(id: Arc<str>, role: Role, anonymous: bool) -> Self {
        Identity {
            id,
            role,
            anonymous,
            state: Mutex::new(IdentityState {
                removed: false,
                sessions: Vec::new(),
                engagement: None,
                expanded: false,
                drafts: HashMap::new(),
                channels: HashSet::new(),
                idle_since: Some(Instant::now()),
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, IdentityState> {
        self.state.lock()
    }

    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, IdentityState>> {
        self.state.try_lock()
    }
}

impl IdentityState {
    /// Pushes to every session of the identity but `except`.
    pub fn push<T: Serialize>(&self, push: &Push<'_, T>, except: Option<SessionKey>) {
        for session in &self.sessions {
            if Some(session.key) != except {
                session.push(push);
            }
        }
    }

    /// The per-identity part of the `Connect` result. Drafts are included
    /// up to `codec::PAGE_BYTES` (an agent in many chats with long drafts
    /// must still get a `Connect` reply that fits in a frame); the rest
    /// stay stored and arrive with `inputTextSet` when edited again.
    pub fn snapshot(&self) -> Value {
        let mut drafts = serde_json::Map::new();
        let mut bytes = 0;
        for (sid, body) in &self.drafts {
            bytes += sid.len() + crate::codec::encoded_len(body.as_str()) + 4;
            if bytes > crate::codec::PAGE_BYTES {
                break;
            }
            drafts.insert(sid.to_string(), body.clone().into());
        }
        json!({
            "engagement": self.engagement,
            "widget": {"expanded": self.expanded},
            "inputText": drafts,
        })
    }

    pub fn is_member(&self, channel_sid: &str) -> bool {
        self.channels.contains(channel_sid)
    }
}
