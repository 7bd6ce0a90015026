//! What sessions are told: one [`Event`] per push, addressed to a
//! [`Topic`]. Engines say what happened as events; the node's delivery
//! hands each to the topic's local sessions, encoding its push at most once
//! per encoding however many sessions receive it.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::auth::Role;
use crate::codec::Push;
use crate::store::StoredMessage;

/// A session's key in this node's maps (process-unique).
pub(crate) type SessionKey = u64;

/// Prefix of queue names: `queue:<name>`.
pub(crate) const QUEUE_PREFIX: &str = "queue:";

/// An open engagement as a queue lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueuedEngagement {
    pub channel_sid: Arc<str>,
    pub identity: Arc<str>,
    pub form_data: Value,
    pub started_at: Arc<str>,
    pub members: Vec<Member>,
}

/// Where an event goes: each topic has one order of events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// An engagement channel: its members' and observers' sessions.
    Channel(Arc<str>),
    /// Every session of one identity.
    Identity(Arc<str>),
    /// A queue (`queue:<name>`): the consoles watching it.
    Queue(Arc<str>),
}

/// A channel member as listed to clients: `{identity, role}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Member {
    pub identity: Arc<str>,
    pub role: Role,
}

/// Why a member left a channel, as pushed in `memberLeft.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaveReason {
    /// `LeaveChannel`.
    Left,
    /// `RestartEngagement`.
    Restart,
    /// The engagement was ended for everyone (`EndEngagement`).
    Ended,
    /// Removed by the server API (`DELETE /api/v1/channels/{sid}/members/{identity}`).
    Removed,
}

impl LeaveReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Restart => "restart",
            LeaveReason::Ended => "ended",
            LeaveReason::Removed => "removed",
        }
    }
}

/// `engagementStarted`'s data (to the queue and the customer's sessions).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EngagementStarted {
    pub channel_sid: Arc<str>,
    pub identity: Arc<str>,
    pub form_data: Value,
    pub started_at: Arc<str>,
    pub queue: Arc<str>,
}

/// Something that happened, as its push (plus the few events that only
/// change who receives what).
#[derive(Debug, Clone)]
pub(crate) enum Event {
    MessageAdded(Arc<StoredMessage>),
    MemberJoined {
        channel_sid: Arc<str>,
        member: Member,
    },
    MemberLeft {
        channel_sid: Arc<str>,
        identity: Arc<str>,
        reason: LeaveReason,
    },
    /// A new engagement channel with its customer as member: the
    /// customer's sessions start receiving it (no push).
    ChannelOpened {
        customer: Member,
    },
    /// The channel takes nothing more (no push). `forget`: its topic goes
    /// (its transcript is read from storage from now on).
    ChannelClosed {
        forget: bool,
    },
    EngagementStarted(Arc<EngagementStarted>),
    EngagementEnded {
        channel_sid: Arc<str>,
        reason: Arc<str>,
    },
    EngagementRestarted {
        channel_sid: Arc<str>,
    },
    EngagementUpdated {
        channel_sid: Arc<str>,
        members: Arc<[Member]>,
    },
    /// To the identity's sessions but `origin`.
    WidgetStateChanged {
        expanded: bool,
        origin: Option<SessionKey>,
    },
    /// To the identity's sessions but `origin`.
    InputTextSet {
        channel_sid: Arc<str>,
        body: Arc<str>,
        origin: Option<SessionKey>,
    },
    /// Droppable, and never to the typer's own sessions.
    TypingStarted {
        channel_sid: Arc<str>,
        identity: Arc<str>,
    },
    TypingEnded {
        channel_sid: Arc<str>,
        identity: Arc<str>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MemberData<'a> {
    channel_sid: &'a str,
    identity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChannelData<'a> {
    channel_sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<&'a [Member]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
}

impl ChannelData<'_> {
    fn of(channel_sid: &str) -> ChannelData<'_> {
        ChannelData {
            channel_sid,
            reason: None,
            members: None,
            body: None,
            identity: None,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Widget {
    expanded: bool,
}

/// An event's push, encoded lazily once per encoding.
pub(crate) enum EventPush<'a> {
    Message(Push<'a, StoredMessage>),
    Member(Push<'a, MemberData<'a>>),
    Channel(Push<'a, ChannelData<'a>>),
    Started(Push<'a, EngagementStarted>),
    Widget(Push<'a, Widget>),
}

impl EventPush<'_> {
    /// The push as a post-event webhook's body (see `codec::Push`).
    pub(crate) fn webhook_body(&self, event_id: &str, timestamp: &str) -> String {
        match self {
            EventPush::Message(p) => p.webhook_body(event_id, timestamp),
            EventPush::Member(p) => p.webhook_body(event_id, timestamp),
            EventPush::Channel(p) => p.webhook_body(event_id, timestamp),
            EventPush::Started(p) => p.webhook_body(event_id, timestamp),
            EventPush::Widget(p) => p.webhook_body(event_id, timestamp),
        }
    }

    pub(crate) fn frame(&self, encoding: crate::codec::Encoding) -> bytes::Bytes {
        match self {
            EventPush::Message(p) => p.message_frame(encoding),
            EventPush::Member(p) => p.frame(encoding),
            EventPush::Channel(p) => p.frame(encoding),
            EventPush::Started(p) => p.frame(encoding),
            EventPush::Widget(p) => p.frame(encoding),
        }
    }
}

impl Event {
    /// Typing may be dropped for a session under pressure.
    pub(crate) fn droppable(&self) -> bool {
        matches!(
            self,
            Event::TypingStarted { .. } | Event::TypingEnded { .. }
        )
    }

    /// The push clients receive; `None` for the events that only change
    /// who receives what.
    pub(crate) fn push(&self) -> Option<EventPush<'_>> {
        let channel = |name, data| Some(EventPush::Channel(Push::owned(name, data)));
        match self {
            Event::MessageAdded(m) => Some(EventPush::Message(Push::new("messageAdded", m))),
            Event::MemberJoined {
                channel_sid,
                member,
            } => Some(EventPush::Member(Push::owned(
                "memberJoined",
                MemberData {
                    channel_sid,
                    identity: &member.identity,
                    role: Some(member.role),
                    reason: None,
                },
            ))),
            Event::MemberLeft {
                channel_sid,
                identity,
                reason,
            } => Some(EventPush::Member(Push::owned(
                "memberLeft",
                MemberData {
                    channel_sid,
                    identity,
                    role: None,
                    reason: Some(reason.as_str()),
                },
            ))),
            Event::ChannelOpened { .. } | Event::ChannelClosed { .. } => None,
            Event::EngagementStarted(started) => {
                Some(EventPush::Started(Push::new("engagementStarted", started)))
            }
            Event::EngagementEnded {
                channel_sid,
                reason,
            } => channel(
                "engagementEnded",
                ChannelData {
                    reason: Some(reason),
                    ..ChannelData::of(channel_sid)
                },
            ),
            Event::EngagementRestarted { channel_sid } => {
                channel("engagementRestarted", ChannelData::of(channel_sid))
            }
            Event::EngagementUpdated {
                channel_sid,
                members,
            } => channel(
                "engagementUpdated",
                ChannelData {
                    members: Some(members),
                    ..ChannelData::of(channel_sid)
                },
            ),
            Event::WidgetStateChanged { expanded, .. } => Some(EventPush::Widget(Push::owned(
                "widgetStateChanged",
                Widget {
                    expanded: *expanded,
                },
            ))),
            Event::InputTextSet {
                channel_sid, body, ..
            } => channel(
                "inputTextSet",
                ChannelData {
                    body: Some(body),
                    ..ChannelData::of(channel_sid)
                },
            ),
            Event::TypingStarted {
                channel_sid,
                identity,
            } => channel(
                "typingStarted",
                ChannelData {
                    identity: Some(identity),
                    ..ChannelData::of(channel_sid)
                },
            ),
            Event::TypingEnded {
                channel_sid,
                identity,
            } => channel(
                "typingEnded",
                ChannelData {
                    identity: Some(identity),
                    ..ChannelData::of(channel_sid)
                },
            ),
        }
    }
}

/// A channel's members as listed to clients, sorted by identity.
pub(crate) fn member_list<'a>(
    members: impl IntoIterator<Item = (&'a Arc<str>, &'a Role)>,
) -> Vec<Member> {
    let mut list: Vec<Member> = members
        .into_iter()
        .map(|(identity, role)| Member {
            identity: identity.clone(),
            role: *role,
        })
        .collect();
    list.sort();
    list
}
