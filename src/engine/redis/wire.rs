//! Events as the Redis scripts write them (in the topics' event streams and
//! their pub/sub messages) and as nodes read them back.
//!
//! A pub/sub message is `<seq>|<json>`: the topic's sequence number (`-`
//! for transient events, typing) and the event. Stream entries carry the
//! JSON alone under field `e`, their id being `0-<seq>`. The scripts build
//! the JSON by concatenation (so a message's body and attributes go in
//! exactly as the broker encoded them); this module only parses it.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::auth::Role;
use crate::event::{EngagementStarted, Event, LeaveReason, Member, SessionKey, Topic};
use crate::store::{Attributes, StoredMessage};

/// One event as written by a script.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Wire {
    Msg(WireMessage),
    Joined {
        sid: String,
        id: String,
        r: Role,
    },
    Left {
        sid: String,
        id: String,
        why: String,
    },
    Opened {
        id: String,
    },
    Closed {},
    Started {
        sid: String,
        id: String,
        form: Value,
        at: String,
        q: String,
    },
    Ended {
        sid: String,
        why: String,
    },
    Restarted {
        sid: String,
    },
    Updated {
        sid: String,
        #[serde(deserialize_with = "list")]
        mem: Vec<WireMember>,
    },
    Widget {
        x: bool,
        #[serde(default)]
        o: String,
    },
    Draft {
        sid: String,
        b: String,
        #[serde(default)]
        o: String,
    },
    TypingOn {
        sid: String,
        id: String,
    },
    TypingOff {
        sid: String,
        id: String,
    },
    /// To an identity's topic: close its sessions here (4003).
    Disconnect {},
    /// To an identity's topic: it became a member of `sid` (its sessions
    /// on every node start receiving the channel). No push.
    MemberOf {
        sid: String,
        /// The channel's seq of the `memberJoined`.
        seq: u64,
    },
}

/// A message. As `post` writes it, it carries `o`, the channel's other
/// events before it, and its index is its seq - 1 - `o` (so that `post`
/// needs no counter of its own); with its index `i` as the history and
/// webhook outbox hand it out (and as earlier versions stored it).
/// [`Wire::parse`] gives every message read its `i`.
#[derive(Debug, Deserialize)]
pub(super) struct WireMessage {
    #[serde(default)]
    pub i: Option<u64>,
    #[serde(default)]
    pub o: Option<u64>,
    pub sid: String,
    pub a: String,
    pub r: Role,
    pub b: String,
    pub at: Attributes,
    pub d: String,
    pub ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct WireMember {
    pub identity: String,
    pub role: Role,
}

/// Lua's cjson writes an empty table as `{}`: a list that may come as an
/// empty object.
pub(super) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrEmpty<T> {
        List(Vec<T>),
        Empty(serde::de::IgnoredAny),
    }
    Ok(match ListOrEmpty::deserialize(d)? {
        ListOrEmpty::List(v) => v,
        ListOrEmpty::Empty(_) => Vec::new(),
    })
}

impl WireMessage {
    /// After [`Wire::parse`], which gave it its index.
    pub(super) fn stored(self) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            channel_sid: Arc::from(self.sid),
            index: self.i.unwrap_or_default(),
            author: Arc::from(self.a),
            author_role: self.r,
            body: self.b,
            attributes: self.at,
            date_created: self.d,
            created_ms: self.ms,
        })
    }
}

impl Wire {
    /// An event as written, at `seq` in its topic's log (`None`: not known,
    /// or not sequenced); a message must then carry its index.
    pub(super) fn parse(json: &str, seq: Option<u64>) -> serde_json::Result<Wire> {
        let mut wire: Wire = serde_json::from_str(json)?;
        if let Wire::Msg(m) = &mut wire {
            if m.i.is_none() {
                m.i = seq
                    .zip(m.o)
                    .and_then(|(seq, o)| seq.checked_sub(1)?.checked_sub(o));
            }
            if m.i.is_none() {
                return Err(serde::de::Error::custom("a message without its index"));
            }
        }
        Ok(wire)
    }
}

/// A message from a stream entry's JSON, at `seq` in the channel's log.
pub(super) fn message(json: &str, seq: Option<u64>) -> Option<Arc<StoredMessage>> {
    match Wire::parse(json, seq) {
        Ok(Wire::Msg(m)) => Some(m.stored()),
        _ => None,
    }
}

/// The origin of an identity push as written: `<node>:<session key>`;
/// a session key only means something on its own node.
pub(super) fn origin(node: &str, key: Option<SessionKey>) -> String {
    key.map_or_else(String::new, |key| format!("{node}:{key}"))
}

fn local_origin(node: &str, origin: &str) -> Option<SessionKey> {
    let (from, key) = origin.rsplit_once(':')?;
    (from == node).then(|| key.parse().ok()).flatten()
}

fn leave_reason(why: &str) -> LeaveReason {
    match why {
        "restart" => LeaveReason::Restart,
        "ended" => LeaveReason::Ended,
        "removed" => LeaveReason::Removed,
        _ => LeaveReason::Left,
    }
}

impl Wire {
    /// The event delivery hands out, on `topic`, as seen by `node`.
    pub(super) fn event(self, topic: &Topic, node: &str) -> Option<Event> {
        let sid = |s: String| -> Arc<str> { Arc::from(s) };
        Some(match self {
            Wire::Msg(m) => Event::MessageAdded(m.stored()),
            Wire::Joined { sid: s, id, r } => Event::MemberJoined {
                channel_sid: sid(s),
                member: Member {
                    identity: Arc::from(id),
                    role: r,
                },
            },
            Wire::Left { sid: s, id, why } => Event::MemberLeft {
                channel_sid: sid(s),
                identity: Arc::from(id),
                reason: leave_reason(&why),
            },
            Wire::Opened { id } => Event::ChannelOpened {
                customer: Member {
                    identity: Arc::from(id),
                    role: Role::Customer,
                },
            },
            Wire::Closed {} => Event::ChannelClosed { forget: true },
            Wire::Started {
                sid: s,
                id,
                form,
                at,
                q,
            } => Event::EngagementStarted(Arc::new(EngagementStarted {
                channel_sid: sid(s),
                identity: Arc::from(id),
                form_data: form,
                started_at: Arc::from(at),
                queue: Arc::from(q),
            })),
            Wire::Ended { sid: s, why } => Event::EngagementEnded {
                channel_sid: sid(s),
                reason: Arc::from(why),
            },
            Wire::Restarted { sid: s } => Event::EngagementRestarted {
                channel_sid: sid(s),
            },
            Wire::Updated { sid: s, mem } => Event::EngagementUpdated {
                channel_sid: sid(s),
                members: mem
                    .into_iter()
                    .map(|m| Member {
                        identity: Arc::from(m.identity),
                        role: m.role,
                    })
                    .collect(),
            },
            Wire::Widget { x, o } => Event::WidgetStateChanged {
                expanded: x,
                origin: local_origin(node, &o),
            },
            Wire::Draft { sid: s, b, o } => Event::InputTextSet {
                channel_sid: sid(s),
                body: Arc::from(b),
                origin: local_origin(node, &o),
            },
            Wire::TypingOn { sid: s, id } => Event::TypingStarted {
                channel_sid: sid(s),
                identity: Arc::from(id),
            },
            Wire::TypingOff { sid: s, id } => Event::TypingEnded {
                channel_sid: sid(s),
                identity: Arc::from(id),
            },
            Wire::MemberOf { .. } | Wire::Disconnect {} => {
                let _ = topic;
                return None;
            }
        })
    }
}

/// A topic's name in keys and pub/sub channels: `c:<sid>`, `i:<identity>`,
/// `q:<queue>`.
pub(super) fn topic_key(topic: &Topic) -> String {
    match topic {
        Topic::Channel(sid) => format!("c:{sid}"),
        Topic::Identity(id) => format!("i:{id}"),
        Topic::Queue(q) => format!("q:{q}"),
    }
}

/// A pub/sub payload: its sequence number (`None` for a transient event)
/// and JSON.
pub(super) fn split_payload(payload: &[u8]) -> Option<(Option<u64>, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (seq, json) = text.split_once('|')?;
    if seq == "-" {
        return Some((None, json));
    }
    Some((Some(seq.parse().ok()?), json))
}
