//! Queues (`queue:<name>`): where agent consoles watch engagements start and end.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use serde_json::Value;

use crate::auth::Role;
use crate::codec::Push;

use super::session::{SessionHandle, SessionKey};

pub const QUEUE_PREFIX: &str = "queue:";
pub const DEFAULT_QUEUE: &str = "queue:default";
const MAX_QUEUE_NAME: usize = 64;

/// `queue:<name>` for a valid name: 1 to 64 of `A-Z a-z 0-9 _ - .`
pub fn queue_channel(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    valid.then(|| format!("{QUEUE_PREFIX}{name}"))
}

pub struct Queue {
    pub name: Arc<str>,
    /// Why a lock: announcing an engagement and adding a subscriber must not
    /// interleave, or a console could miss an engagement that started while
    /// it subscribed.
    state: Mutex<QueueState>,
}

#[derive(Default)]
pub struct QueueState {
    pub closed: bool,
    pub subscribers: HashMap<SessionKey, Arc<SessionHandle>>,
    /// Open engagements announced here, by channel sid.
    pub open: HashMap<Arc<str>, OpenEngagement>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenEngagement {
    pub channel_sid: Arc<str>,
    pub identity: Arc<str>,
    pub form_data: Value,
    pub started_at: String,
    /// Who is in it now: an engagement with only its customer is waiting.
    pub members: Vec<Member>,
}

/// A channel member as listed to clients: `{identity, role}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Member {
    pub identity: Arc<str>,
    pub role: Role,
}

/// A channel's members, sorted by identity.
pub fn member_list(members: &HashMap<Arc<str>, Role>) -> Vec<Member> {
    let mut list: Vec<Member> = members
        .iter()
        .map(|(identity, role)| Member {
            identity: identity.clone(),
            role: *role,
        })
        .collect();
    list.sort();
    list
}

impl Queue {
    pub fn new(name: Arc<str>) -> Self {
        Queue {
            name,
            state: Mutex::new(QueueState::default()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock()
    }
}

impl QueueState {
    pub fn broadcast<T: Serialize>(&self, push: &Push<'_, T>) {
        for session in self.subscribers.values() {
            session.push(push);
        }
    }

    pub fn is_abandoned(&self) -> bool {
        self.subscribers.is_empty() && self.open.is_empty()
    }

    /// One page of the open engagements, oldest first (by channel sid,
    /// which starts with the engagement's start time), after the one whose
    /// sid is `after`: as many as fit in `codec::PAGE_BYTES` encoded (at
    /// least one), and whether more remain. A queue holds as many
    /// engagements as customers start, each with up to `max_body_bytes` of
    /// `formData`, so its list is always read in pages.
    pub fn page(&self, after: Option<&str>) -> (Vec<OpenEngagement>, bool) {
        let mut open: Vec<&OpenEngagement> = self
            .open
            .values()
            .filter(|e| after.is_none_or(|after| &*e.channel_sid > after))
            .collect();
        open.sort_by(|a, b| a.channel_sid.cmp(&b.channel_sid));
        let mut bytes = 0;
        let mut page = Vec::new();
        for engagement in &open {
            let size = crate::codec::encoded_len(engagement);
            if !page.is_empty() && bytes + size > crate::codec::PAGE_BYTES {
                break;
            }
            bytes += size;
            page.push((*engagement).clone());
        }
        let more = page.len() < open.len();
        (page, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert_eq!(queue_channel("default").as_deref(), Some(DEFAULT_QUEUE));
        assert_eq!(
            queue_channel("sales-eu.1").as_deref(),
            Some("queue:sales-eu.1")
        );
        assert!(queue_channel("").is_none());
        assert!(queue_channel("a b").is_none());
        assert!(queue_channel(&"x".repeat(65)).is_none());
    }
}
