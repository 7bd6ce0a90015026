//! The engine seam: the one place a state change happens.
//!
//! Every change (start, restart and end an engagement; join, leave and
//! remove a member; post a message; set the widget state or a draft; start
//! typing) is one operation of an [`Engine`]. An operation checks its
//! preconditions, makes its change and its [`Event`](crate::event::Event)s
//! atomically, and answers with a [`Pending`] result that resolves once the
//! change is durable. The actions call it; they decide who may do what and
//! shape payloads and results, and never touch state themselves.
//!
//! Events reach this node's sessions through [`Delivery`](crate::delivery),
//! per topic in the order the engine decided them. An engine is:
//!
//! - [`embedded`]: the default. State in this process (sharded maps, one
//!   lock per channel, identity and queue); writes through the embedded
//!   [`Store`](crate::store) (or none, with `durability = "memory"`); each
//!   operation's writes and events travel as one job, delivered once the
//!   job's write is durable, in the order the jobs were submitted.
//! - a shared engine (Redis): every operation one atomic script whose
//!   result the caller awaits, its events published with a sequence number
//!   per topic that a node checks, and fills gaps in, before delivering.
//!   Nothing an operation needs lives only in one node's memory.

pub(crate) mod embedded;
pub(crate) mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::delivery::session::SessionHandle;
use crate::event::{LeaveReason, Member, SessionKey};
use crate::store::{Commits, StoredMessage};

pub(crate) use crate::event::{QueuedEngagement, QUEUE_PREFIX};
/// The queue engagements start on unless they say otherwise.
pub(crate) const DEFAULT_QUEUE: &str = "queue:default";
/// Prefix of engagement channel sids: `CH` + 32 lowercase hex digits.
pub(crate) const CHANNEL_PREFIX: &str = "CH";

/// Who acts: an identity and its (fixed) role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor {
    pub id: Arc<str>,
    pub role: Role,
    pub anonymous: bool,
}

/// Why an operation could not be done. Mapped to the contract's codes in
/// `error.rs` (the one place that does).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("not a member of {0}")]
    NotAMember(String),
    #[error("{0}")]
    NotFound(String),
    #[error("already in engagement {channel_sid}")]
    AlreadyEngaged { channel_sid: String },
    #[error("no active engagement")]
    NoEngagement,
    /// A configured capacity is reached (members per channel, sessions
    /// per identity, anonymous identities).
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The store (or shared engine) cannot do it durably now: nothing was
    /// done, and the client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub(crate) type Outcome<T> = Result<T, EngineError>;

/// An operation's result, once its change is durable.
pub(crate) enum Pending<T> {
    /// Nothing (more) to wait for.
    Ready(Outcome<T>),
    /// Done in memory; the result stands once the store has made `ticket`
    /// durable (and is `unavailable` if that write failed).
    Durable {
        ticket: u64,
        value: Option<T>,
        commits: Arc<Commits>,
        /// The waker left with the store while unsettled.
        registered: Option<Waker>,
    },
    /// Decided elsewhere (a shared engine): the answer arrives later.
    Remote(Pin<Box<dyn Future<Output = Outcome<T>> + Send>>),
}

impl<T> Pending<T> {
    pub(crate) fn ready(value: T) -> Self {
        Pending::Ready(Ok(value))
    }

    pub(crate) fn failed(error: EngineError) -> Self {
        Pending::Ready(Err(error))
    }

    pub(crate) fn after(ticket: Option<u64>, value: T, commits: Option<&Arc<Commits>>) -> Self {
        match (ticket, commits) {
            (Some(ticket), Some(commits)) => Pending::Durable {
                ticket,
                value: Some(value),
                commits: commits.clone(),
                registered: None,
            },
            _ => Pending::ready(value),
        }
    }

    /// The store ticket it waits for, if any (the session's reply queue
    /// waits for many with one wake-up).
    pub(crate) fn ticket(&self) -> Option<u64> {
        match self {
            Pending::Durable { ticket, .. } => Some(*ticket),
            _ => None,
        }
    }

    /// Whether the result stands now (`try_take` would give it).
    pub(crate) fn is_settled(&self) -> bool {
        match self {
            Pending::Ready(_) => true,
            Pending::Durable {
                ticket, commits, ..
            } => commits.outcome(*ticket).is_some(),
            Pending::Remote(_) => false,
        }
    }

    /// A wait for the store to settle `ticket` (a later one than this
    /// result's, to wake once for a whole group commit); `None` unless
    /// this waits for the store.
    pub(crate) fn wait_for(&self, ticket: u64) -> Option<Pending<()>> {
        match self {
            Pending::Durable { commits, .. } => Some(Pending::Durable {
                ticket,
                value: Some(()),
                commits: commits.clone(),
                registered: None,
            }),
            _ => None,
        }
    }

    /// A result that waits for the store alone, taken apart: its ticket,
    /// the value that stands once the ticket is durable, and the store's
    /// commits. Anything else comes back as it was.
    pub(crate) fn into_durable(self) -> Result<(u64, T, Arc<Commits>), Self> {
        match self {
            Pending::Durable {
                ticket,
                value: Some(value),
                commits,
                ..
            } => Ok((ticket, value, commits)),
            other => Err(other),
        }
    }

    /// The result if it is already known, without waiting.
    pub(crate) fn try_take(&mut self) -> Option<Outcome<T>> {
        match self {
            Pending::Ready(_) => {
                let Pending::Ready(outcome) = std::mem::replace(
                    self,
                    Pending::Ready(Err(EngineError::Internal("taken".into()))),
                ) else {
                    unreachable!()
                };
                Some(outcome)
            }
            Pending::Durable {
                ticket,
                value,
                commits,
                ..
            } => match commits.outcome(*ticket) {
                None => None,
                Some(Ok(())) => Some(value.take().ok_or_else(taken)),
                Some(Err(reason)) => Some(Err(EngineError::Unavailable(reason))),
            },
            Pending::Remote(_) => None,
        }
    }

    /// The result mapped, keeping the wait.
    pub(crate) fn map<U: Send + 'static>(
        self,
        f: impl FnOnce(T) -> U + Send + 'static,
    ) -> Pending<U>
    where
        T: Send + 'static,
    {
        match self {
            Pending::Ready(outcome) => Pending::Ready(outcome.map(f)),
            Pending::Durable {
                ticket,
                value,
                commits,
                registered,
            } => Pending::Durable {
                ticket,
                value: value.map(f),
                commits,
                registered,
            },
            Pending::Remote(future) => {
                Pending::Remote(Box::pin(async move { future.await.map(f) }))
            }
        }
    }
}

fn taken() -> EngineError {
    EngineError::Internal("a result was taken twice".into())
}

impl<T: Unpin> Future for Pending<T> {
    type Output = Outcome<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(outcome) = this.try_take() {
                return Poll::Ready(outcome);
            }
            match this {
                Pending::Remote(future) => return future.as_mut().poll(cx),
                Pending::Durable {
                    ticket,
                    commits,
                    registered,
                    ..
                } => match commits.poll_settled(*ticket, registered, cx) {
                    Poll::Pending => return Poll::Pending,
                    // Settled: the outcome is known now.
                    Poll::Ready(()) => *registered = None,
                },
                Pending::Ready(_) => unreachable!("taken above"),
            }
        }
    }
}

/// A new engagement.
pub(crate) struct Started {
    pub channel_sid: Arc<str>,
}

/// `JoinChannel`'s answer.
pub(crate) struct Joined {
    pub members: Vec<Member>,
    /// The newest message accepted before the join (`-1` for none).
    pub last_index: i64,
}

/// `SendMessage`'s answer.
pub(crate) struct Posted {
    pub index: u64,
    pub date_created: Arc<str>,
}

/// A message to post.
pub(crate) struct NewMessage {
    pub body: String,
    pub attributes: crate::store::Attributes,
    /// Posted by the broker itself (a configured greeter): it need not be
    /// a member.
    pub by_broker: bool,
}

/// How a widget changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WidgetChange {
    Toggle,
    Minimize,
}

/// The per-identity state a `Connect` returns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdentitySnapshot {
    pub engagement: Option<EngagementSnapshot>,
    pub widget: WidgetState,
    pub input_text: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WidgetState {
    pub expanded: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EngagementSnapshot {
    pub channel_sid: Arc<str>,
    pub started_at: Arc<str>,
    /// Who is in it (an extension: a new tab rebuilds the chat from it).
    pub members: Vec<Member>,
    /// The newest delivered message (`-1` for none).
    pub last_index: i64,
}

/// What attaching a session to its identity gives `Connect`.
pub(crate) struct Attached {
    pub snapshot: IdentitySnapshot,
    /// Per channel asked to recover: whether history reached back.
    pub recovered: HashMap<String, bool>,
}

/// A page of a queue's open engagements.
pub(crate) struct QueuePage {
    pub engagements: Vec<QueuedEngagement>,
    pub has_more: bool,
}

/// A page of history.
pub(crate) struct HistoryPage {
    pub messages: Vec<Arc<StoredMessage>>,
    pub has_more: bool,
}

/// A channel as the server API shows it (`GET /api/v1/channels/{sid}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChannelReport {
    pub channel_sid: Arc<str>,
    /// `open` or `ended`.
    pub status: &'static str,
    pub queue: Arc<str>,
    pub started_at: Arc<str>,
    pub ended_at: Option<Arc<str>>,
    pub members: Vec<Member>,
    /// `-1` before the first message.
    pub last_index: i64,
    pub form_data: Value,
}

/// An identity as the server API shows it (`GET /api/v1/identities/{id}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdentityReport {
    pub identity: Arc<str>,
    pub role: Role,
    /// Sessions open now, on every node.
    pub sessions: usize,
    pub engagement: Option<EngagementRef>,
    pub widget: WidgetState,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EngagementRef {
    pub channel_sid: Arc<str>,
    pub started_at: Arc<str>,
}

/// The operations of an engine. Every one that changes state returns a
/// [`Pending`] whose result stands once the change is durable; its events
/// are delivered to this node's sessions no sooner.
pub(crate) trait Engine: Send + Sync {
    /// The identity behind an authenticated principal, made on first sight.
    /// An identity's role is fixed.
    fn identify(&self, principal: &Principal) -> Pending<Actor>;
    /// Attaches a connected session to its identity and channels, pushing
    /// the messages each channel in `recover` has after the index given.
    fn attach(
        &self,
        session: &Arc<SessionHandle>,
        actor: &Actor,
        recover: &HashMap<String, i64>,
    ) -> Pending<Attached>;
    /// Removes every trace of an ended session.
    fn detach(&self, session: &Arc<SessionHandle>);

    fn start_engagement(
        &self,
        actor: &Actor,
        form_data: Value,
        queue: Arc<str>,
    ) -> Pending<Started>;
    /// Takes the customer out of its engagement (every session) in one step.
    fn restart_engagement(&self, actor: &Actor) -> Pending<Arc<str>>;
    /// Ends an engagement for everyone in it; `member`, when given, must be
    /// one of them (an agent ends only a chat it is in).
    fn end_engagement(
        &self,
        member: Option<&Actor>,
        channel_sid: &str,
        reason: &str,
    ) -> Pending<()>;
    fn join(&self, actor: &Actor, channel_sid: &str) -> Pending<Joined>;
    /// Takes an identity (every session) out of a channel.
    fn leave(&self, actor: &Actor, channel_sid: &str, reason: LeaveReason) -> Pending<()>;
    fn post(&self, actor: &Actor, channel_sid: &str, message: NewMessage) -> Pending<Posted>;
    fn set_widget(
        &self,
        actor: &Actor,
        change: WidgetChange,
        origin: Option<SessionKey>,
    ) -> Pending<bool>;
    fn set_draft(
        &self,
        actor: &Actor,
        channel_sid: &str,
        body: &str,
        origin: Option<SessionKey>,
    ) -> Pending<()>;
    /// Starts (or extends) typing: transient, never stored.
    fn typing(&self, actor: &Actor, channel_sid: &str) -> Pending<()>;

    /// Observes a channel (with `after`, the missed messages first).
    fn subscribe_channel(
        &self,
        session: &Arc<SessionHandle>,
        actor: &Actor,
        channel_sid: &str,
        after: Option<i64>,
    ) -> Pending<Option<bool>>;
    /// Observes a queue; answers the first page of its open engagements.
    fn subscribe_queue(&self, session: &Arc<SessionHandle>, queue: &str) -> Pending<QueuePage>;
    fn unsubscribe(&self, session: &Arc<SessionHandle>, topic: &str);

    /// A page of a channel's history below `before`, for `actor` (members,
    /// observers through `session`; staff may read ended transcripts).
    fn history(
        &self,
        actor: &Actor,
        session: Option<SessionKey>,
        channel_sid: &str,
        before: u64,
        limit: usize,
    ) -> Pending<HistoryPage>;
    /// A page of a queue's open engagements after `after`.
    fn queue_page(&self, queue: &str, after: Option<&str>) -> Pending<QueuePage>;

    // ---- the server API: the broker's operator acts, no session ----

    /// A channel, open or ended; `not_found` when there is none.
    fn channel_report(&self, channel_sid: &str) -> Pending<ChannelReport>;
    /// An identity the broker knows; `not_found` otherwise.
    fn identity_report(&self, identity: &str) -> Pending<IdentityReport>;
    /// Takes `identity` (every session) out of a channel, as `leave` does,
    /// with reason `removed`; `not_a_member` when it is not in it.
    fn remove_from_channel(&self, channel_sid: &str, identity: &str) -> Pending<()>;
    /// A page of any channel's history (open or ended), with no
    /// membership check.
    fn channel_history(&self, channel_sid: &str, before: u64, limit: usize)
        -> Pending<HistoryPage>;
    /// Closes every session of `identity` (on every node) with 4003;
    /// answers how many were closed.
    fn disconnect(&self, identity: &str) -> Pending<usize>;

    /// Whether every write accepted so far is durable.
    fn all_durable(&self) -> bool;
    /// `None` while the engine can take writes; otherwise resolves once it
    /// has room again (a full write queue pauses a session's reading
    /// rather than refusing its commands).
    fn room(&self) -> Option<Pending<()>>;
    /// `Err` with the reason when the engine cannot serve every action.
    fn health(&self) -> Result<(), String>;
    /// Periodic work: forgetting idle identities, retention.
    fn housekeeping(&self, tick: Housekeeping);
    /// Stops taking writes and waits (a bounded time) for those taken.
    fn close(&self);
}

/// Which periodic work is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Housekeeping {
    Reap,
    Purge,
    /// Another retention slice, if the last one stopped at its bounds.
    CatchUp,
}

/// `queue:<name>` for a valid name: 1 to 64 of `A-Z a-z 0-9 _ - .`
pub(crate) fn queue_channel(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    valid.then(|| format!("{QUEUE_PREFIX}{name}"))
}

pub(crate) fn new_channel_sid() -> String {
    format!("{CHANNEL_PREFIX}{}", crate::ids::new_id())
}

/// Whether `sid` has the shape of a channel sid.
pub(crate) fn is_channel_sid(sid: &str) -> bool {
    sid.len() == 34
        && sid.starts_with(CHANNEL_PREFIX)
        && sid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_and_queue_names() {
        let sid = new_channel_sid();
        assert!(is_channel_sid(&sid), "{sid}");
        assert!(!is_channel_sid("CH123"));
        assert!(!is_channel_sid(&sid.to_uppercase()));
        assert!(!is_channel_sid(&format!("XX{}", &sid[2..])));
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
