//! Channels: members, observers, message indexes and typing state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use serde_json::Value;

use crate::auth::Role;
use crate::codec::Push;
use crate::metrics::Metrics;
use crate::store::StoredMessage;

use super::session::{SessionHandle, SessionKey};

/// Prefix of engagement channel sids: `CH` + 32 lowercase hex digits.
pub const CHANNEL_PREFIX: &str = "CH";

pub fn new_channel_sid() -> String {
    format!("{CHANNEL_PREFIX}{}", crate::ids::new_id())
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
    /// Set once the channel has ended (no member left): it takes no more
    /// members, observers or messages; late lookups that still hold the
    /// `Arc` treat it as gone.
    pub closed: bool,
    /// When it ended (kept in memory for transcripts only without a store).
    pub ended_at: Option<Instant>,
    /// Who is a member now. Checked by every action, changed at once.
    pub members: HashMap<Arc<str>, Role>,
    /// Every session that receives this channel's pushes, once each. Member
    /// sessions join and leave it when their `memberJoined`/`memberLeft` is
    /// delivered, so that it follows the order of the channel's events.
    pub recipients: HashMap<SessionKey, Recipient>,
    /// The next index to assign.
    pub next_index: u64,
    /// Messages below this index have been delivered (and are durable).
    pub delivered_next: u64,
    /// The newest delivered messages, ascending (recovery and history
    /// without a disk read; the whole history without a store).
    pub history: VecDeque<Arc<StoredMessage>>,
    history_cap: usize,
    /// Events waiting for their write to be durable, in channel order. An
    /// event is delivered only once every event before it has been.
    pending: VecDeque<(u64, Event)>,
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

/// Something that happened in a channel that its recipients must see in
/// order with its messages.
pub enum Event {
    Message(Arc<StoredMessage>),
    MemberJoined {
        identity: Arc<str>,
        role: Role,
        sessions: Vec<Arc<SessionHandle>>,
    },
    MemberLeft {
        identity: Arc<str>,
        reason: &'static str,
    },
}

impl Channel {
    pub fn new(
        sid: Arc<str>,
        queue: Arc<str>,
        customer: Option<Arc<str>>,
        form_data: Value,
        started_at: String,
        history_cap: usize,
    ) -> Self {
        Channel {
            sid,
            queue,
            state: Mutex::new(ChannelState {
                closed: false,
                ended_at: None,
                members: HashMap::new(),
                recipients: HashMap::new(),
                next_index: 0,
                delivered_next: 0,
                history: VecDeque::new(),
                history_cap,
                pending: VecDeque::new(),
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
struct MemberEvent<'a> {
    channel_sid: &'a str,
    identity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
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

    /// No member and no observer left: the channel has ended.
    pub fn is_abandoned(&self) -> bool {
        self.members.is_empty() && !self.recipients.values().any(|r| r.subscribed)
    }

    /// Index of the newest message, `-1` when there is none.
    pub fn last_index(&self) -> i64 {
        self.next_index as i64 - 1
    }

    /// Makes `event` visible: at once when `ticket` is `None` (nothing to
    /// wait for) and nothing is waiting before it, otherwise once the
    /// store has made `ticket` durable and every earlier event is out.
    pub fn publish(&mut self, sid: &str, ticket: Option<u64>, event: Event, metrics: &Metrics) {
        match ticket {
            None if self.pending.is_empty() => self.deliver(sid, event, metrics),
            ticket => self.pending.push_back((ticket.unwrap_or(0), event)),
        }
    }

    /// Delivers waiting events whose write is durable (`ticket <= upto`).
    pub fn deliver_ready(&mut self, sid: &str, upto: u64, metrics: &Metrics) {
        while self
            .pending
            .front()
            .is_some_and(|(ticket, _)| *ticket <= upto)
        {
            let (_, event) = self.pending.pop_front().expect("checked");
            self.deliver(sid, event, metrics);
        }
    }

    fn deliver(&mut self, sid: &str, event: Event, metrics: &Metrics) {
        match event {
            Event::Message(message) => {
                let sent = self.broadcast(&Push::new("messageAdded", &*message), None);
                metrics.message_added(sent);
                self.delivered_next = message.index + 1;
                self.history.push_back(message);
                while self.history.len() > self.history_cap {
                    self.history.pop_front();
                }
            }
            Event::MemberJoined {
                identity,
                role,
                sessions,
            } => {
                for session in sessions {
                    if !session.outbox.is_closing() {
                        self.add_member_session(&session, &identity);
                    }
                }
                let joined = MemberEvent {
                    channel_sid: sid,
                    identity: &identity,
                    role: Some(role),
                    reason: None,
                };
                self.broadcast(&Push::new("memberJoined", &joined), None);
            }
            Event::MemberLeft { identity, reason } => {
                let leaving: Vec<SessionKey> = self
                    .recipients
                    .iter()
                    .filter(|(_, r)| r.member && r.identity == identity)
                    .map(|(key, _)| *key)
                    .collect();
                for key in leaving {
                    self.remove_member_session(key);
                }
                let left = MemberEvent {
                    channel_sid: sid,
                    identity: &identity,
                    role: None,
                    reason: Some(reason),
                };
                self.broadcast(&Push::new("memberLeft", &left), None);
            }
        }
    }

    /// The oldest index in the in-memory window (`delivered_next` if empty).
    pub fn history_start(&self) -> u64 {
        self.history
            .front()
            .map_or(self.delivered_next, |m| m.index)
    }

    /// The window's messages with `index >= from`.
    pub fn window_from(&self, from: u64) -> impl Iterator<Item = &Arc<StoredMessage>> {
        self.history.iter().filter(move |m| m.index >= from)
    }

    /// Drops window messages created before `cutoff_ms` (unix ms).
    pub fn trim_history(&mut self, cutoff_ms: i64) {
        while self
            .history
            .front()
            .is_some_and(|m| m.created_ms < cutoff_ms)
        {
            self.history.pop_front();
        }
    }

    /// Restores a channel's state from the store.
    pub fn restore(&mut self, next_index: u64, recent: Vec<Arc<StoredMessage>>) {
        self.next_index = next_index;
        self.delivered_next = next_index;
        self.history = recent.into();
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
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
