//! Fan-out between nodes: one pub/sub connection per node, subscribed to
//! the topics its sessions need, and each topic's events delivered here in
//! sequence order.
//!
//! Pub/sub is at most once. Every sequenced event also sits in its topic's
//! event log (a capped stream, entry id `0-<seq>`), so a [`Feed`] that sees
//! a sequence number past the next one it expects keeps the early arrival
//! aside, reads the missing range from the log, and delivers in order; a
//! seq it has delivered already is dropped. When the pub/sub connection
//! drops, every feed is caught up from its log once the connection is
//! back (events published meanwhile reached no node). A gap the log no
//! longer covers cannot be filled: the feed's sessions are closed (4000)
//! so that their clients reconnect and recover from history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSubSink};

use super::wire::{self, Wire};
use crate::delivery::Delivery;
use crate::event::{Event, Topic};
use crate::outbox::{CloseReason, Cork};

/// Early arrivals kept per topic while a gap is filled; past it they are
/// dropped (the fill reads them from the log as well).
const MAX_EARLY: usize = 4096;
/// Transient events kept while a feed fills; past it they are dropped.
const MAX_TRANSIENT: usize = 64;
/// Log entries read per round trip while filling.
const FILL_BATCH: usize = 1000;
/// Most pub/sub events applied under one cork (those already received
/// when the first of them is read).
const BURST: usize = 256;
/// Pause between attempts while Redis cannot be reached.
const RETRY: Duration = Duration::from_millis(250);

pub(super) struct Feed {
    pub key: String,
    pub topic: Topic,
    state: Mutex<FeedState>,
}

struct FeedState {
    /// The next sequence number to deliver.
    next: u64,
    /// Early arrivals (seq → JSON), delivered once the gap before them is
    /// filled.
    early: BTreeMap<u64, String>,
    /// The newest seq heard of: filling goes on until it is delivered.
    newest: u64,
    filling: bool,
    /// Transient events (typing) that arrived while filling: delivered
    /// when the feed is in step again (at most `MAX_TRANSIENT`).
    transient: Vec<String>,
    /// Read the log once more (a catch-up asked while a fill ran).
    again: bool,
    last_used: Instant,
}

/// What applying an event asks of the engine afterwards (work that needs
/// Redis, done outside the feed's lock).
pub(super) enum FollowUp {
    /// The identity became a member of a channel: its local sessions
    /// receive it from now on.
    /// `from`: the channel's position just before the membership.
    Member {
        identity: Arc<str>,
        sid: Arc<str>,
        from: u64,
    },
    /// The channel is closed: stop following it.
    Closed(Arc<str>),
}

pub(super) trait Apply: Send + Sync + 'static {
    fn follow_up(&self, follow: FollowUp);
}

pub(super) struct Fanout {
    prefix: String,
    node: String,
    client: redis::Client,
    conn: ConnectionManager,
    delivery: Arc<Delivery>,
    feeds: DashMap<String, Arc<Feed>>,
    sink: Mutex<Option<PubSubSink>>,
    connected: AtomicBool,
    /// Set (unix ms) when a probe went out unanswered; 0 once it came back.
    probe_waiting_since: AtomicU64,
    /// Asks the pub/sub loop to drop its connection and start over.
    restart: tokio::sync::Notify,
    connect_timeout: Duration,
    command_timeout: Duration,
    engine: Mutex<Option<Weak<dyn Apply>>>,
}

impl Fanout {
    pub(super) fn new(
        prefix: String,
        node: String,
        client: redis::Client,
        conn: ConnectionManager,
        delivery: Arc<Delivery>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Arc<Fanout> {
        Arc::new(Fanout {
            prefix,
            node,
            client,
            conn,
            delivery,
            feeds: DashMap::new(),
            sink: Mutex::new(None),
            connected: AtomicBool::new(false),
            probe_waiting_since: AtomicU64::new(0),
            restart: tokio::sync::Notify::new(),
            connect_timeout,
            command_timeout,
            engine: Mutex::new(None),
        })
    }

    pub(super) fn set_engine(&self, engine: Weak<dyn Apply>) {
        *self.engine.lock() = Some(engine);
    }

    /// Whether the pub/sub connection is up.
    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn channel_name(&self, key: &str) -> String {
        format!("{}:ev:{key}", self.prefix)
    }

    pub(super) fn feed(&self, topic: &Topic) -> Option<Arc<Feed>> {
        self.feeds.get(&wire::topic_key(topic)).map(|f| f.clone())
    }

    /// Follows `topic` from just after `seq` (a position read together
    /// with the state `seed` puts into delivery's view). A topic followed
    /// already keeps its own position and view. Subscribes, then catches
    /// up from the log: events published between the read and the
    /// subscription reach this node that way.
    pub(super) async fn follow(
        self: &Arc<Self>,
        topic: &Topic,
        seq: u64,
        seed: impl FnOnce(),
    ) -> Arc<Feed> {
        let key = wire::topic_key(topic);
        let (feed, new) = match self.feeds.entry(key.clone()) {
            dashmap::Entry::Occupied(found) => {
                let feed = found.get().clone();
                feed.state.lock().last_used = Instant::now();
                (feed, false)
            }
            dashmap::Entry::Vacant(vacant) => {
                seed();
                let feed = Arc::new(Feed {
                    key: key.clone(),
                    topic: topic.clone(),
                    state: Mutex::new(FeedState {
                        next: seq + 1,
                        early: BTreeMap::new(),
                        newest: seq,
                        filling: false,
                        transient: Vec::new(),
                        again: false,
                        last_used: Instant::now(),
                    }),
                });
                vacant.insert(feed.clone());
                (feed, true)
            }
        };
        if new {
            let sink = self.sink.lock().clone();
            if let Some(mut sink) = sink {
                let channel = self.channel_name(&key);
                match tokio::time::timeout(self.command_timeout, sink.subscribe(&channel)).await {
                    Ok(Ok(())) => {}
                    // The pub/sub loop resubscribes everything and catches
                    // every feed up when it reconnects.
                    _ => tracing::debug!(topic = %key, "subscribe failed; left to the reconnect"),
                }
            }
            self.catch_up(&feed);
        }
        feed
    }

    /// Stops following a topic (no local session needs it).
    pub(super) fn unfollow(self: &Arc<Self>, key: &str) {
        if self.feeds.remove(key).is_none() {
            return;
        }
        let sink = self.sink.lock().clone();
        if let Some(mut sink) = sink {
            let channel = self.channel_name(key);
            let timeout = self.command_timeout;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await;
            });
        }
    }

    /// The feeds not used for `idle` (candidates to stop following).
    pub(super) fn idle_feeds(&self, idle: Duration) -> Vec<Arc<Feed>> {
        self.feeds
            .iter()
            .filter(|f| f.state.lock().last_used.elapsed() >= idle)
            .map(|f| f.clone())
            .collect()
    }

    /// The pub/sub loop: connects, subscribes every followed topic, catches
    /// them all up, then reads until the connection drops; again, forever.
    pub(super) async fn run(self: Arc<Self>) {
        loop {
            let connecting =
                tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub()).await;
            let Ok(Ok(pubsub)) = connecting else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            let (sink, mut stream) = pubsub.split();
            // The sink first: a topic followed from now on subscribes
            // itself; the ones listed below are subscribed here.
            *self.sink.lock() = Some(sink.clone());
            let mut channels: Vec<String> = self
                .feeds
                .iter()
                .map(|f| self.channel_name(&f.key))
                .collect();
            channels.push(self.probe_channel());
            {
                let mut sink = sink.clone();
                let subscribed =
                    tokio::time::timeout(self.command_timeout, sink.subscribe(&channels)).await;
                if !matches!(subscribed, Ok(Ok(()))) {
                    *self.sink.lock() = None;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            self.connected.store(true, Ordering::Relaxed);
            tracing::info!("pub/sub connected; catching every followed topic up");
            let feeds: Vec<Arc<Feed>> = self.feeds.iter().map(|f| f.clone()).collect();
            for feed in &feeds {
                self.catch_up(feed);
            }
            self.probe_waiting_since.store(0, Ordering::Relaxed);
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            // The events already here go out under one
                            // cork: each recipient gets one write for all
                            // of them, as after an embedded commit.
                            let _cork = Cork::new();
                            self.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                            for _ in 1..BURST {
                                match stream.next().now_or_never() {
                                    Some(Some(msg)) => self.on_message(msg.get_channel_name(), msg.get_payload_bytes()),
                                    _ => break,
                                }
                            }
                        }
                        None => break,
                    },
                    _ = self.restart.notified() => {
                        tracing::warn!("pub/sub connection silent (its probes do not come back); reconnecting");
                        break;
                    }
                }
            }
            self.connected.store(false, Ordering::Relaxed);
            *self.sink.lock() = None;
            tracing::warn!("pub/sub connection lost; reconnecting");
        }
    }

    /// This node's own probe channel: the heartbeat publishes to it, and
    /// the pub/sub connection must hear it (a connection can stall without
    /// closing, after a failover or behind a broken middlebox).
    pub(super) fn probe_channel(&self) -> String {
        format!("{}:probe:{}", self.prefix, self.node)
    }

    /// A probe went out and reached `receivers` subscribers (now: unix
    /// ms). Restarts the pub/sub connection when Redis says nobody listens
    /// or probes stop coming back for `patience`.
    pub(super) fn probed(&self, receivers: i64, now: u64, patience: Duration) {
        if !self.connected() {
            return;
        }
        if receivers == 0 {
            self.restart.notify_one();
            return;
        }
        let since = match self.probe_waiting_since.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(since) => since,
        };
        if now.saturating_sub(since) > patience.as_millis() as u64 {
            self.probe_waiting_since.store(0, Ordering::Relaxed);
            self.restart.notify_one();
        }
    }

    fn on_message(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        if channel == self.probe_channel() {
            self.probe_waiting_since.store(0, Ordering::Relaxed);
            return;
        }
        let Some(key) = channel
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(":ev:"))
        else {
            return;
        };
        let Some(feed) = self.feeds.get(key).map(|f| f.clone()) else {
            return;
        };
        let Some((seq, json)) = wire::split_payload(payload) else {
            tracing::warn!(topic = %key, "unreadable event");
            return;
        };
        let mut follow = Vec::new();
        {
            let mut state = feed.state.lock();
            match seq {
                // Transient (typing): delivered when the topic is in step,
                // dropped otherwise (it may be).
                None => {
                    if !state.filling && state.early.is_empty() {
                        self.apply(&feed, None, json, &mut follow);
                    } else if state.transient.len() < MAX_TRANSIENT {
                        state.transient.push(json.to_owned());
                    }
                }
                Some(seq) if seq < state.next => {}
                Some(seq) if seq == state.next && state.early.is_empty() && !state.filling => {
                    self.apply(&feed, Some(seq), json, &mut follow);
                    state.next += 1;
                    state.newest = state.newest.max(seq);
                }
                Some(seq) => {
                    state.newest = state.newest.max(seq);
                    if state.early.len() < MAX_EARLY {
                        state.early.insert(seq, json.to_owned());
                    }
                    self.drain_early(&feed, &mut state, &mut follow);
                    if state.next <= state.newest && !state.filling {
                        state.filling = true;
                        tokio::spawn(self.clone().fill(feed.clone()));
                    }
                }
            }
        }
        self.follow_ups(follow);
    }

    /// Delivers the early arrivals that are next in line.
    fn drain_early(&self, feed: &Feed, state: &mut FeedState, follow: &mut Vec<FollowUp>) {
        while let Some(entry) = state.early.first_entry() {
            let seq = *entry.key();
            if seq < state.next {
                entry.remove();
            } else if seq == state.next {
                let json = entry.remove();
                self.apply(feed, Some(seq), &json, follow);
                state.next += 1;
            } else {
                break;
            }
        }
    }

    /// Reads the feed's log from its next seq on (a gap, or a catch-up).
    pub(super) fn catch_up(self: &Arc<Self>, feed: &Arc<Feed>) {
        let mut state = feed.state.lock();
        if state.filling {
            state.again = true;
        } else {
            state.filling = true;
            state.again = true;
            tokio::spawn(self.clone().fill(feed.clone()));
        }
    }

    async fn fill(self: Arc<Self>, feed: Arc<Feed>) {
        let log = self.channel_name(&feed.key);
        loop {
            if !self
                .feeds
                .get(&feed.key)
                .is_some_and(|f| Arc::ptr_eq(&f, &feed))
            {
                return;
            }
            let from = {
                let mut state = feed.state.lock();
                if !state.again && state.next > state.newest {
                    state.filling = false;
                    let mut follow = Vec::new();
                    for json in std::mem::take(&mut state.transient) {
                        self.apply(&feed, None, &json, &mut follow);
                    }
                    drop(state);
                    self.follow_ups(follow);
                    return;
                }
                state.again = false;
                state.next
            };
            let mut conn = self.conn.clone();
            let read = tokio::time::timeout(
                self.command_timeout,
                redis::cmd("XRANGE")
                    .arg(&log)
                    .arg(format!("0-{from}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(FILL_BATCH)
                    .query_async::<Vec<(String, Vec<(String, String)>)>>(&mut conn),
            )
            .await;
            let entries = match read {
                Ok(Ok(entries)) => entries,
                _ => {
                    feed.state.lock().again = true;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let mut follow = Vec::new();
            let broken = {
                let mut state = feed.state.lock();
                let mut broken = false;
                for (id, fields) in &entries {
                    let Some(seq) = id.strip_prefix("0-").and_then(|s| s.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    state.newest = state.newest.max(seq);
                    if seq < state.next {
                        continue;
                    }
                    if seq > state.next {
                        broken = true;
                        break;
                    }
                    if let Some((_, json)) = fields.iter().find(|(f, _)| f == "e") {
                        self.apply(&feed, Some(seq), json, &mut follow);
                    }
                    state.next += 1;
                }
                if !broken {
                    self.drain_early(&feed, &mut state, &mut follow);
                    if entries.is_empty() && state.next <= state.newest {
                        // Heard of, yet nothing from there on in the log
                        // (a script logs before it publishes): lost.
                        broken = true;
                    } else if entries.len() >= FILL_BATCH || state.next <= state.newest {
                        state.again = true;
                    }
                }
                if broken {
                    state.filling = false;
                }
                broken
            };
            self.follow_ups(follow);
            if broken {
                self.resync(&feed);
                return;
            }
        }
    }

    /// A gap the log no longer covers: the sessions that follow the topic
    /// reconnect (4000) and recover from history; the topic is followed
    /// afresh when one needs it again.
    fn resync(self: &Arc<Self>, feed: &Arc<Feed>) {
        tracing::warn!(topic = %feed.key, "events lost beyond the event log; sessions reconnect");
        self.unfollow(&feed.key);
        let sessions = match &feed.topic {
            Topic::Channel(sid) => {
                let sessions = self.delivery.channel_sessions(sid);
                self.delivery.forget_channel(sid);
                sessions
            }
            Topic::Identity(id) => self.delivery.identity_sessions(id),
            Topic::Queue(name) => {
                let sessions = self.delivery.queue_sessions(name);
                self.delivery.forget_queue(name);
                sessions
            }
        };
        for session in sessions {
            session.outbox.close(CloseReason::Shutdown);
        }
    }

    /// Hands one event to delivery (under the feed's lock, in order): at
    /// `seq` in the topic's log, `None` for a transient one.
    fn apply(&self, feed: &Feed, seq: Option<u64>, json: &str, follow: &mut Vec<FollowUp>) {
        let wire = match Wire::parse(json, seq) {
            Ok(wire) => wire,
            Err(e) => {
                tracing::warn!(topic = %feed.key, error = %e, "unreadable event skipped");
                return;
            }
        };
        match (&feed.topic, &wire) {
            (Topic::Identity(id), Wire::MemberOf { sid, seq }) => follow.push(FollowUp::Member {
                identity: id.clone(),
                sid: Arc::from(sid.as_str()),
                from: seq.saturating_sub(1),
            }),
            // A new engagement: its channel from its first event on.
            (Topic::Identity(id), Wire::Started { sid, .. }) => follow.push(FollowUp::Member {
                identity: id.clone(),
                sid: Arc::from(sid.as_str()),
                from: 0,
            }),
            (Topic::Channel(sid), Wire::Closed {}) => follow.push(FollowUp::Closed(sid.clone())),
            (Topic::Identity(id), Wire::Disconnect {}) => {
                for session in self.delivery.identity_sessions(id) {
                    session.outbox.close(CloseReason::Disconnected);
                }
            }
            _ => {}
        }
        if let Some(event) = wire.event(&feed.topic, &self.node) {
            if matches!(event, Event::ChannelClosed { .. }) {
                // Forgotten here once it is no longer followed.
                self.delivery
                    .deliver(&feed.topic, &Event::ChannelClosed { forget: false });
            } else {
                self.delivery.deliver(&feed.topic, &event);
            }
        }
    }

    fn follow_ups(&self, follow: Vec<FollowUp>) {
        if follow.is_empty() {
            return;
        }
        let Some(engine) = self.engine.lock().as_ref().and_then(Weak::upgrade) else {
            return;
        };
        for f in follow {
            engine.follow_up(f);
        }
    }
}
