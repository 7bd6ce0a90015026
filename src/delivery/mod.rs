//! Delivery to this node's sessions: who receives which topic, and each
//! topic's events handed to them in the order the engine says they
//! happened.
//!
//! An engine (embedded or shared) reports what happened as a stream of
//! [`Event`]s per [`Topic`], in that topic's order; [`Delivery::deliver`]
//! fans each one out, encoding its push once per encoding. Who receives a
//! channel follows the delivered events, not the callers: a member's
//! sessions start receiving with its `memberJoined` and stop with its
//! `memberLeft`, so every session sees a channel's events in one order,
//! each once. The newest delivered messages of each channel are kept here
//! too (the window), because recovery and the newest history pages are
//! answered from what was delivered.
//!
//! Locks: a topic's lock, then an identity's session list (never the other
//! way round); no lock is held across an `.await`.

pub(crate) mod session;

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::DashMap;
use foldhash::fast::RandomState;
use foldhash::{HashMap, HashMapExt};
use parking_lot::Mutex;

use crate::auth::Role;
use crate::codec::Push;
use crate::event::{Event, QueuedEngagement, Topic};
use crate::metrics::Metrics;
use crate::store::StoredMessage;
use session::SessionHandle;

pub(crate) use crate::event::SessionKey;

/// Limits that shape delivery, from the configuration.
#[derive(Debug, Clone, Copy)]
struct DeliveryLimits {
    /// Newest messages kept per channel.
    pub window: usize,
    /// Most messages one recovery pushes.
    pub max_replay: u64,
    /// Most bytes one recovery pushes.
    pub replay_bytes: usize,
}

pub(crate) struct Delivery {
    channels: DashMap<Arc<str>, Arc<ChannelTopic>, RandomState>,
    queues: DashMap<Arc<str>, Arc<QueueTopic>, RandomState>,
    identities: DashMap<Arc<str>, Arc<IdentitySessions>, RandomState>,
    sessions: DashMap<SessionKey, Arc<SessionHandle>, RandomState>,
    limits: DeliveryLimits,
    metrics: Arc<Metrics>,
    /// Each message delivered here was accepted here (the embedded
    /// engine), so delivery counts it.
    counts_messages: bool,
}

/// A channel as delivered to this node's sessions.
pub(crate) struct ChannelTopic {
    state: Mutex<ChannelView>,
}

struct ChannelView {
    /// Members as of the last delivered event.
    members: HashMap<Arc<str>, Role>,
    recipients: HashMap<SessionKey, Recipient>,
    /// The newest delivered messages, ascending.
    window: VecDeque<Arc<StoredMessage>>,
    /// The index after the newest delivered message.
    next_index: u64,
    closed: bool,
}

struct Recipient {
    session: Arc<SessionHandle>,
    identity: Arc<str>,
    /// Receives because its identity is a member.
    member: bool,
    /// Receives because the session subscribed.
    subscribed: bool,
}

/// A queue as delivered here: who watches it, and its open engagements.
#[derive(Default)]
struct QueueTopic {
    state: Mutex<QueueView>,
}

#[derive(Default)]
struct QueueView {
    subscribers: HashMap<SessionKey, Arc<SessionHandle>>,
    open: HashMap<Arc<str>, QueuedEngagement>,
}

#[derive(Default)]
struct IdentitySessions {
    sessions: Mutex<Vec<Arc<SessionHandle>>>,
}

/// What a recovery pushed: whether history reached back that far.
pub(crate) type Recovered = bool;

/// A session made a recipient of a channel.
pub(crate) enum Added {
    /// Nothing more to do; with a recovery asked, whether it reached back.
    Done(Option<Recovered>),
    /// A recovery that needs the messages below the window read from
    /// storage (or a shared history) first: see [`Recovery::older`].
    Recovering(Recovery),
}

impl Added {
    /// Finishes at once, reading what the window lacks with `read_older`
    /// (the embedded engine's store reads are synchronous).
    pub(crate) fn complete(
        self,
        read_older: impl FnOnce(u64, u64) -> Option<Vec<Arc<StoredMessage>>>,
    ) -> Option<Recovered> {
        match self {
            Added::Done(recovered) => recovered,
            Added::Recovering(recovery) => {
                let older = recovery.older().map(|(from, to)| read_older(from, to));
                Some(recovery.finish(older.unwrap_or(Some(Vec::new()))))
            }
        }
    }
}

/// A recovery under way: the session's outbox is held at the position its
/// live pushes of the channel start from, so the history can be read
/// without any lock (even from another process) and still go ahead of
/// them. Releases the outbox when finished or dropped.
pub(crate) struct Recovery {
    session: Arc<SessionHandle>,
    hold: usize,
    /// The window's messages from `from` on.
    window: Vec<Arc<StoredMessage>>,
    from: u64,
    /// The index after the newest delivered message when it began.
    to: u64,
    replay_bytes: usize,
    released: bool,
}

impl Recovery {
    /// The messages `from..to` to read for it (those below the window).
    pub(crate) fn older(&self) -> Option<(u64, u64)> {
        let window_start = self.window.first().map_or(self.to, |m| m.index);
        (self.from < window_start).then_some((self.from, window_start))
    }

    /// Pushes the missed messages (`older` read, plus the window's) at the
    /// held position; `false`, pushing nothing, when they are not all there
    /// (`None`: they could not be read) or would be too much for one
    /// recovery.
    pub(crate) fn finish(mut self, older: Option<Vec<Arc<StoredMessage>>>) -> Recovered {
        let recovered = self.replay(older);
        self.released = true;
        self.session.outbox.release();
        recovered
    }

    fn replay(&self, older: Option<Vec<Arc<StoredMessage>>>) -> Recovered {
        let Some(older) = older else { return false };
        let replay: Vec<&Arc<StoredMessage>> = older.iter().chain(&self.window).collect();
        // Every index from `from` up to the newest, once each: a gap (a
        // range the store lost and the operator accepted losing) means
        // history does not reach back, whatever is on either side of it.
        let contiguous = replay.len() as u64 == self.to - self.from
            && replay
                .iter()
                .enumerate()
                .all(|(i, m)| m.index == self.from + i as u64);
        let bytes: usize = replay.iter().map(|m| m.body.len() + 256).sum();
        if !contiguous || bytes > self.replay_bytes {
            return false;
        }
        let encoding = self.session.encoding;
        let frames = replay
            .into_iter()
            .map(|m| Push::new("messageAdded", &**m).message_frame(encoding))
            .collect();
        self.session.outbox.insert_replay(self.hold, frames);
        true
    }
}

impl Drop for Recovery {
    fn drop(&mut self) {
        if !self.released {
            self.session.outbox.release();
        }
    }
}

impl Delivery {
    pub(crate) fn new(config: &crate::config::Config, metrics: Arc<Metrics>) -> Self {
        let limits = DeliveryLimits {
            window: config.history.window(),
            max_replay: config.history.max_replay,
            replay_bytes: config.limits.outbox_bytes,
        };
        Delivery {
            channels: DashMap::default(),
            queues: DashMap::default(),
            identities: DashMap::default(),
            sessions: DashMap::default(),
            limits,
            // A shared engine's messages reach every node with recipients;
            // the node that accepted one counts it.
            counts_messages: config.cluster.redis_url.is_none(),
            metrics,
        }
    }

    // ---- sessions ----

    pub(crate) fn open_session(&self, session: &Arc<SessionHandle>) {
        self.sessions.insert(session.key, session.clone());
    }

    /// Runs `f` for every open session on this node (a session opened
    /// meanwhile may or may not be seen).
    pub(crate) fn for_each_session(&self, mut f: impl FnMut(&Arc<SessionHandle>)) {
        for entry in self.sessions.iter() {
            f(entry.value());
        }
    }

    /// Every open session on this node.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Adds a connected session to its identity's sessions (it receives the
    /// identity's pushes from now on).
    pub(crate) fn attach_identity(&self, session: &Arc<SessionHandle>, identity: &Arc<str>) {
        let sessions = self.identities.entry(identity.clone()).or_default().clone();
        sessions.sessions.lock().push(session.clone());
    }

    /// The identity's sessions on this node.
    pub(crate) fn identity_sessions(&self, identity: &str) -> Vec<Arc<SessionHandle>> {
        self.identities
            .get(identity)
            .map(|s| s.sessions.lock().clone())
            .unwrap_or_default()
    }

    /// Takes an ending session out of everything it receives.
    pub(crate) fn close_session(&self, session: &SessionHandle) {
        self.sessions.remove(&session.key);
        if let Some(identity) = session.identity() {
            let emptied = self.identities.get(&identity).is_some_and(|s| {
                let mut sessions = s.sessions.lock();
                sessions.retain(|s| s.key != session.key);
                sessions.is_empty()
            });
            if emptied {
                self.identities
                    .remove_if(&identity, |_, s| s.sessions.lock().is_empty());
            }
        }
        let (subscribed, member_of) = session.take_topics();
        for name in subscribed.iter().chain(&member_of) {
            if name.starts_with(crate::event::QUEUE_PREFIX) {
                if let Some(queue) = self.queues.get(name).map(|q| q.clone()) {
                    queue.state.lock().subscribers.remove(&session.key);
                }
            } else if let Some(topic) = self.channel(name) {
                topic.state.lock().recipients.remove(&session.key);
            }
        }
    }

    // ---- channels ----

    fn channel(&self, sid: &str) -> Option<Arc<ChannelTopic>> {
        self.channels.get(sid).map(|c| c.clone())
    }

    fn channel_or_new(&self, sid: &Arc<str>) -> Arc<ChannelTopic> {
        self.channels
            .entry(sid.clone())
            .or_insert_with(|| {
                Arc::new(ChannelTopic {
                    state: Mutex::new(ChannelView {
                        members: HashMap::new(),
                        recipients: HashMap::new(),
                        window: VecDeque::new(),
                        next_index: 0,
                        closed: false,
                    }),
                })
            })
            .clone()
    }

    /// A channel read back from storage at start: its members, numbering
    /// and newest messages.
    pub(crate) fn restore_channel(
        &self,
        sid: &Arc<str>,
        members: impl IntoIterator<Item = (Arc<str>, Role)>,
        next_index: u64,
        recent: Vec<Arc<StoredMessage>>,
    ) {
        let topic = self.channel_or_new(sid);
        let mut view = topic.state.lock();
        view.members = members.into_iter().collect();
        view.next_index = next_index;
        view.window = recent.into();
        while view.window.len() > self.limits.window {
            view.window.pop_front();
        }
    }

    /// Drops window messages created before `cutoff_ms` (unix ms): age
    /// retention.
    pub(crate) fn trim_windows(&self, cutoff_ms: i64) {
        let topics: Vec<Arc<ChannelTopic>> = self.channels.iter().map(|c| c.clone()).collect();
        for topic in topics {
            let mut view = topic.state.lock();
            while view
                .window
                .front()
                .is_some_and(|m| m.created_ms < cutoff_ms)
            {
                view.window.pop_front();
            }
        }
    }

    /// Forgets a channel that ended (its transcript is read from storage).
    pub(crate) fn forget_channel(&self, sid: &str) {
        self.channels.remove(sid);
    }

    /// The sessions receiving a channel here (a shared engine stops
    /// following a channel none of them needs, or makes them reconnect).
    pub(crate) fn channel_sessions(&self, sid: &str) -> Vec<Arc<SessionHandle>> {
        self.channel(sid).map_or_else(Vec::new, |topic| {
            let view = topic.state.lock();
            view.recipients
                .values()
                .map(|r| r.session.clone())
                .collect()
        })
    }

    /// The sessions watching a queue here.
    pub(crate) fn queue_sessions(&self, name: &str) -> Vec<Arc<SessionHandle>> {
        self.queues.get(name).map_or_else(Vec::new, |topic| {
            topic.state.lock().subscribers.values().cloned().collect()
        })
    }

    /// Forgets a queue's view (a shared engine no longer follows it).
    pub(crate) fn forget_queue(&self, name: &str) {
        self.queues.remove(name);
    }

    /// The index after the newest delivered message of a channel.
    pub(crate) fn next_index(&self, sid: &str) -> Option<u64> {
        self.channel(sid).map(|c| c.state.lock().next_index)
    }

    /// Whether a session observes a channel (`Subscribe`).
    pub(crate) fn is_subscriber(&self, sid: &str, session: SessionKey) -> bool {
        self.channel(sid).is_some_and(|c| {
            c.state
                .lock()
                .recipients
                .get(&session)
                .is_some_and(|r| r.subscribed)
        })
    }

    /// A page of delivered history from the window: the newest messages
    /// below `before`, ascending, when the window holds all of them and can
    /// tell whether older ones exist. `None` sends the caller to storage.
    pub(crate) fn window_page(
        &self,
        sid: &str,
        before: u64,
        limit: usize,
        complete: bool,
    ) -> Option<(Vec<Arc<StoredMessage>>, u64)> {
        let topic = self.channel(sid)?;
        let view = topic.state.lock();
        let to = before.min(view.next_index);
        let start = view.window.front().map_or(view.next_index, |m| m.index);
        // The window answers when it starts at 0 (or holds the whole
        // history), or holds more than the page below `to`.
        if !(complete || start == 0 || start < to.saturating_sub(limit as u64)) {
            return None;
        }
        let below: Vec<Arc<StoredMessage>> = view
            .window
            .iter()
            .filter(|m| m.index < to)
            .cloned()
            .collect();
        Some((below, to))
    }

    /// Adds a session of the identity as a member recipient of a channel
    /// it is a member of (a `Connect`); with `recover`, the messages after
    /// that index go to it first (see [`Added`]). `None` when the identity
    /// is not a member as delivered yet (its join waits for its write to be
    /// durable: the `memberJoined` adds the session then).
    pub(crate) fn attach_member(
        &self,
        session: &Arc<SessionHandle>,
        identity: &Arc<str>,
        sid: &Arc<str>,
        recover: Option<i64>,
    ) -> Option<Added> {
        let topic = self.channel(sid)?;
        if !topic.state.lock().members.contains_key(identity) {
            return None;
        }
        self.add_recipient(&topic, sid, session, identity, true, recover)
    }

    /// `Subscribe` to a channel (with `after`, the missed messages first):
    /// `None` if it is not open here.
    pub(crate) fn subscribe_channel(
        &self,
        session: &Arc<SessionHandle>,
        identity: &Arc<str>,
        sid: &Arc<str>,
        after: Option<i64>,
    ) -> Option<Added> {
        let topic = self.channel(sid)?;
        if topic.state.lock().closed {
            return None;
        }
        session.add_subscription(sid.clone());
        self.add_recipient(&topic, sid, session, identity, false, after)
    }

    pub(crate) fn unsubscribe_channel(&self, session: &SessionHandle, sid: &str) {
        session.remove_subscription(sid);
        if let Some(topic) = self.channel(sid) {
            let mut view = topic.state.lock();
            if let Some(r) = view.recipients.get_mut(&session.key) {
                if r.member {
                    r.subscribed = false;
                } else {
                    view.recipients.remove(&session.key);
                }
            }
        }
    }

    /// Makes `session` a recipient (as a member's session, or an observer)
    /// and, with `after`, starts a recovery of every delivered message
    /// after that index: the outbox is held at the position the session's
    /// live pushes start from, and the history goes there when the
    /// recovery finishes. `None` when the channel is closed.
    fn add_recipient(
        &self,
        topic: &ChannelTopic,
        sid: &Arc<str>,
        session: &Arc<SessionHandle>,
        identity: &Arc<str>,
        member: bool,
        after: Option<i64>,
    ) -> Option<Added> {
        let mut view = topic.state.lock();
        if view.closed {
            return None;
        }
        let r = view
            .recipients
            .entry(session.key)
            .or_insert_with(|| Recipient {
                session: session.clone(),
                identity: identity.clone(),
                member: false,
                subscribed: false,
            });
        if member {
            r.member = true;
            session.add_membership(sid.clone());
        } else {
            r.subscribed = true;
        }
        let Some(after) = after else {
            return Some(Added::Done(None));
        };
        let from = (after + 1).max(0) as u64;
        let to = view.next_index;
        if from >= to {
            return Some(Added::Done(Some(true)));
        }
        if to - from > self.limits.max_replay {
            return Some(Added::Done(Some(false)));
        }
        let window: Vec<Arc<StoredMessage>> = view
            .window
            .iter()
            .filter(|m| m.index >= from)
            .cloned()
            .collect();
        // Live pushes of the channel from here on go behind the position
        // held now.
        let Some(hold) = session.outbox.hold() else {
            return Some(Added::Done(Some(false)));
        };
        Some(Added::Recovering(Recovery {
            session: session.clone(),
            hold,
            window,
            from,
            to,
            replay_bytes: self.limits.replay_bytes,
            released: false,
        }))
    }

    // ---- queues ----

    fn queue_or_new(&self, name: &Arc<str>) -> Arc<QueueTopic> {
        self.queues.entry(name.clone()).or_default().clone()
    }

    /// An open engagement read back from storage at start.
    pub(crate) fn restore_queued(&self, queue: &Arc<str>, engagement: QueuedEngagement) {
        self.queue_or_new(queue)
            .state
            .lock()
            .open
            .insert(engagement.channel_sid.clone(), engagement);
    }

    /// `Subscribe` to a queue: the session receives its pushes from now on,
    /// and the first page of its open engagements as delivered, taken under
    /// the same lock, so a console misses none and sees none twice.
    pub(crate) fn subscribe_queue(
        &self,
        session: &Arc<SessionHandle>,
        queue: &Arc<str>,
    ) -> (Vec<QueuedEngagement>, bool) {
        let topic = self.queue_or_new(queue);
        let mut view = topic.state.lock();
        view.subscribers.insert(session.key, session.clone());
        session.add_subscription(queue.clone());
        view.page(None)
    }

    pub(crate) fn unsubscribe_queue(&self, session: &SessionHandle, queue: &str) {
        session.remove_subscription(queue);
        if let Some(topic) = self.queues.get(queue).map(|q| q.clone()) {
            topic.state.lock().subscribers.remove(&session.key);
        }
    }

    /// A page of a queue's open engagements after the one whose sid is
    /// `after`.
    pub(crate) fn queue_page(
        &self,
        queue: &str,
        after: Option<&str>,
    ) -> (Vec<QueuedEngagement>, bool) {
        match self.queues.get(queue).map(|q| q.clone()) {
            Some(topic) => topic.state.lock().page(after),
            None => (Vec::new(), false),
        }
    }

    // ---- events ----

    /// Hands one event of `topic` to the local sessions that receive it.
    /// Called in the topic's order.
    pub(crate) fn deliver(&self, topic: &Topic, event: &Event) {
        match topic {
            Topic::Channel(sid) => self.deliver_channel(sid, event),
            Topic::Identity(identity) => {
                let Some(push) = event.push() else { return };
                let origin = match event {
                    Event::WidgetStateChanged { origin, .. }
                    | Event::InputTextSet { origin, .. } => *origin,
                    _ => None,
                };
                for session in self.identity_sessions(identity) {
                    if Some(session.key) != origin {
                        session.push_frame(push.frame(session.encoding));
                    }
                }
            }
            Topic::Queue(name) => {
                let topic = self.queue_or_new(name);
                let mut view = topic.state.lock();
                match event {
                    Event::EngagementStarted(started) => {
                        view.open.insert(
                            started.channel_sid.clone(),
                            QueuedEngagement {
                                channel_sid: started.channel_sid.clone(),
                                identity: started.identity.clone(),
                                form_data: started.form_data.clone(),
                                started_at: started.started_at.clone(),
                                members: vec![crate::event::Member {
                                    identity: started.identity.clone(),
                                    role: Role::Customer,
                                }],
                            },
                        );
                    }
                    Event::EngagementEnded { channel_sid, .. } => {
                        view.open.remove(channel_sid);
                    }
                    Event::EngagementUpdated {
                        channel_sid,
                        members,
                    } => match view.open.get_mut(channel_sid) {
                        Some(open) => open.members = members.to_vec(),
                        // Not waiting in this queue any more: nobody to tell.
                        None => return,
                    },
                    _ => {}
                }
                let Some(push) = event.push() else { return };
                for session in view.subscribers.values() {
                    session.push_frame(push.frame(session.encoding));
                }
            }
        }
    }

    fn deliver_channel(&self, sid: &Arc<str>, event: &Event) {
        let topic = match event {
            // A channel's first event makes its topic.
            Event::ChannelOpened { .. } => self.channel_or_new(sid),
            _ => match self.channel(sid) {
                Some(topic) => topic,
                None => return,
            },
        };
        let mut view = topic.state.lock();
        match event {
            Event::MessageAdded(message) => {
                let sent = view.broadcast(event, None);
                if self.counts_messages {
                    self.metrics.message_accepted();
                }
                self.metrics.delivered(sent);
                view.next_index = message.index + 1;
                view.window.push_back(message.clone());
                while view.window.len() > self.limits.window {
                    view.window.pop_front();
                }
            }
            Event::MemberJoined { member, .. } => {
                view.members.insert(member.identity.clone(), member.role);
                self.add_member_sessions(&mut view, sid, &member.identity);
                view.broadcast(event, None);
            }
            Event::MemberLeft { identity, .. } => {
                view.members.remove(identity);
                let leaving: Vec<SessionKey> = view
                    .recipients
                    .iter()
                    .filter(|(_, r)| r.member && r.identity == *identity)
                    .map(|(key, _)| *key)
                    .collect();
                for key in leaving {
                    let r = view.recipients.get_mut(&key).expect("listed");
                    r.session.remove_membership(sid);
                    if r.subscribed {
                        r.member = false;
                    } else {
                        view.recipients.remove(&key);
                    }
                }
                view.broadcast(event, None);
            }
            Event::ChannelOpened { customer, .. } => {
                view.members
                    .insert(customer.identity.clone(), customer.role);
                self.add_member_sessions(&mut view, sid, &customer.identity);
            }
            Event::ChannelClosed { forget, .. } => {
                view.closed = true;
                if *forget {
                    drop(view);
                    self.channels.remove(sid);
                }
            }
            Event::TypingStarted { identity, .. } | Event::TypingEnded { identity, .. } => {
                view.broadcast(event, Some(identity));
            }
            _ => {
                view.broadcast(event, None);
            }
        }
    }

    fn add_member_sessions(&self, view: &mut ChannelView, sid: &Arc<str>, identity: &Arc<str>) {
        for session in self.identity_sessions(identity) {
            if session.outbox.is_closing() {
                continue;
            }
            session.add_membership(sid.clone());
            view.recipients
                .entry(session.key)
                .and_modify(|r| r.member = true)
                .or_insert_with(|| Recipient {
                    session: session.clone(),
                    identity: identity.clone(),
                    member: true,
                    subscribed: false,
                });
        }
    }
}

impl ChannelView {
    /// Pushes `event` to every recipient, or every one not of `except`'s
    /// identity. Returns how many sessions it was queued for.
    fn broadcast(&self, event: &Event, except: Option<&Arc<str>>) -> usize {
        let Some(push) = event.push() else { return 0 };
        let droppable = event.droppable();
        let mut sent = 0;
        for r in self.recipients.values() {
            if except.is_some_and(|e| *e == r.identity) {
                continue;
            }
            let frame = push.frame(r.session.encoding);
            let queued = if droppable {
                r.session.push_droppable(frame)
            } else {
                r.session.push_frame(frame)
            };
            sent += queued as usize;
        }
        sent
    }
}

impl QueueView {
    /// One page of the open engagements, oldest first (by channel sid,
    /// which starts with the engagement's start time), after the one whose
    /// sid is `after`: as many as fit in `codec::PAGE_BYTES` encoded (at
    /// least one), and whether more remain. A queue holds as many
    /// engagements as customers start, each with up to `max_body_bytes` of
    /// `formData`, so its list is always read in pages.
    fn page(&self, after: Option<&str>) -> (Vec<QueuedEngagement>, bool) {
        let mut open: Vec<&QueuedEngagement> = self
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
