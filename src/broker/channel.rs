//! Channels: members, observers, message indexes and typing state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use serde_json::Value;

use crate::auth::Role;
use crate::codec::Push;

use super::session::{SessionHandle, SessionKey};

/// Prefix of engagement channel sids: `CH` + 32 lowercase hex digits.
pub const CHANNEL_PREFIX: &str = "CH";

pub fn new_channel_sid() -> String {
    format!("{CHANNEL_PREFIX}{:032x}", rand::random::<u128>())
}

/// Whether `sid` has the shape of a channel sid.
pub fn is_channel_sid(sid: &str) -> bool {
    sid.len() == 34
        && sid.starts_with(CHANNEL_PREFIX)
        && sid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub struct Channel {
    pub sid: Arc<str>,
    /// The queue (`queue:<name>`) an engagement was announced on.
    pub queue: Arc<str>,
    /// Why one lock per channel: index assignment and the fan-out of a push
    /// happen under it, so every session sees the channel's pushes in one
    /// order, and membership changes (restart, leave) are atomic with respect
    /// to messages. Nothing awaits while holding it: pushing to an outbox
    /// never blocks.
    state: Mutex<ChannelState>,
}

pub struct ChannelState {
    /// Set once the channel is removed from the registry; late lookups that
    /// still hold the `Arc` treat it as gone.
    pub closed: bool,
    pub members: HashMap<Arc<str>, Role>,
    /// Every session that receives this channel's pushes, once each.
    pub recipients: HashMap<SessionKey, Recipient>,
    pub next_index: u64,
    pub typing: HashMap<Arc<str>, Typing>,
    pub typing_generation: u64,
    pub customer: Option<Arc<str>>,
    pub form_data: Value,
    pub started_at: String,
}

pub struct Recipient {
    pub session: Arc<SessionHandle>,
    pub identity: Arc<str>,
    /// Receives because its identity is a member.
    pub member: bool,
    /// Receives because the session subscribed.
    pub subscribed: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Typing {
    pub until: Instant,
    pub generation: u64,
}

impl Channel {
    pub fn new(
        sid: Arc<str>,
        queue: Arc<str>,
        customer: Option<Arc<str>>,
        form_data: Value,
        started_at: String,
    ) -> Self {
        Channel {
            sid,
            queue,
            state: Mutex::new(ChannelState {
                closed: false,
                members: HashMap::new(),
                recipients: HashMap::new(),
                next_index: 0,
                typing: HashMap::new(),
                typing_generation: 0,
                customer,
                form_data,
                started_at,
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TypingEvent<'a> {
    channel_sid: &'a str,
    identity: &'a str,
}

impl ChannelState {
    /// Pushes to every recipient, or every recipient not of `except`'s
    /// identity. Returns how many sessions it was queued for.
    pub fn broadcast<T: Serialize>(&self, push: &Push<'_, T>, except: Option<&str>) -> usize {
        let mut sent = 0;
        for r in self.recipients.values() {
            if except != Some(&*r.identity) && r.session.push(push) {
                sent += 1;
            }
        }
        sent
    }

    fn broadcast_droppable<T: Serialize>(&self, push: &Push<'_, T>, except: &str) {
        for r in self.recipients.values() {
            if *r.identity != *except {
                r.session.push_droppable(push);
            }
        }
    }

    /// Adds `session` as a recipient because its identity is a member.
    pub fn add_member_session(&mut self, session: &Arc<SessionHandle>, identity: &Arc<str>) {
        self.recipients
            .entry(session.key)
            .and_modify(|r| r.member = true)
            .or_insert_with(|| Recipient {
                session: session.clone(),
                identity: identity.clone(),
                member: true,
                subscribed: false,
            });
    }

    /// Removes `session` as a member's recipient (keeps it if subscribed).
    pub fn remove_member_session(&mut self, key: SessionKey) {
        if let Some(r) = self.recipients.get_mut(&key) {
            if r.subscribed {
                r.member = false;
            } else {
                self.recipients.remove(&key);
            }
        }
    }

    pub fn add_subscriber(&mut self, session: &Arc<SessionHandle>, identity: &Arc<str>) {
        self.recipients
            .entry(session.key)
            .and_modify(|r| r.subscribed = true)
            .or_insert_with(|| Recipient {
                session: session.clone(),
                identity: identity.clone(),
                member: false,
                subscribed: true,
            });
    }

    pub fn remove_subscriber(&mut self, key: SessionKey) {
        if let Some(r) = self.recipients.get_mut(&key) {
            if r.member {
                r.subscribed = false;
            } else {
                self.recipients.remove(&key);
            }
        }
    }

    /// No member and no observer left: the channel can go.
    pub fn is_abandoned(&self) -> bool {
        self.members.is_empty() && self.recipients.is_empty()
    }

    /// Index of the newest message, `-1` when there is none.
    pub fn last_index(&self) -> i64 {
        self.next_index as i64 - 1
    }

    /// Records a `SendTyping`. Returns the generation to time out when this
    /// starts a new typing period (and pushes `typingStarted`), `None` when it
    /// only extends one.
    pub fn start_typing(
        &mut self,
        sid: &str,
        identity: &Arc<str>,
        window: Duration,
    ) -> Option<u64> {
        let until = Instant::now() + window;
        if let Some(typing) = self.typing.get_mut(identity) {
            typing.until = until;
            return None;
        }
        self.typing_generation += 1;
        let generation = self.typing_generation;
        self.typing
            .insert(identity.clone(), Typing { until, generation });
        let event = TypingEvent {
            channel_sid: sid,
            identity,
        };
        self.broadcast_droppable(&Push::new("typingStarted", &event), identity);
        Some(generation)
    }

    /// Ends `identity`'s typing, if any, pushing `typingEnded`.
    pub fn end_typing(&mut self, sid: &str, identity: &str) {
        if self.typing.remove(identity).is_some() {
            let event = TypingEvent {
                channel_sid: sid,
                identity,
            };
            self.broadcast_droppable(&Push::new("typingEnded", &event), identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids() {
        let sid = new_channel_sid();
        assert!(is_channel_sid(&sid), "{sid}");
        assert!(!is_channel_sid("CH123"));
        assert!(!is_channel_sid(&sid.to_uppercase()));
        assert!(!is_channel_sid(&format!("XX{}", &sid[2..])));
    }
}
