//! The embedded engine: state in this process, writes through the embedded
//! store (or none, with `durability = "memory"`).
//!
//! An operation takes the locks that order it (an identity's, then a
//! channel's), checks, changes the state, and submits its writes and its
//! events as one job under those locks, so the jobs of one channel (or
//! identity) reach the store in the order they happened. The store settles
//! jobs in ticket order: a job's events are delivered once its write is
//! durable, and dropped if the write failed. Without a store the events
//! are delivered at once, still under the locks.
//!
//! The state is what is durable plus what is on its way to being durable.
//! When a write fails the store fails it and every job behind it; this
//! engine then reloads its state from what is durable (and once more when
//! the store can write again, before it takes writes), so that nothing a
//! failed write did stays visible. Operations hold the shared side of
//! `reload_guard` from their checks to their submission; a reload holds it
//! exclusively.

mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use dashmap::DashMap;
use foldhash::fast::RandomState;
use parking_lot::RwLock;
use serde_json::Value;

use super::{
    Actor, Attached, ChannelReport, EngagementRef, EngagementSnapshot, Engine, EngineError,
    HistoryPage, Housekeeping, IdentityReport, IdentitySnapshot, Joined, NewMessage, Outcome,
    Pending, Posted, QueuePage, Started, WidgetChange, WidgetState,
};
use crate::auth::{Principal, Role};
use crate::config::Config;
use crate::delivery::session::SessionHandle;
use crate::delivery::Delivery;
use crate::event::{
    member_list, EngagementStarted, Event, LeaveReason, Member, QueuedEngagement, SessionKey,
    Topic, QUEUE_PREFIX,
};
use crate::store::{
    AfterCommit, Durability, IdentityRow, Op, Retention, Snapshot, Store, StoreError,
    StoreListener, StoredMessage,
};
use state::{Channel, ChannelState, Engagement, Identity, IdentityState, Typing};

/// A job's events, delivered once its writes are durable.
pub(crate) struct Deliveries {
    delivery: Arc<Delivery>,
    events: Vec<(Topic, Event)>,
    /// Set when the job stored post-event webhook events: their senders
    /// are woken once they are durable.
    webhooks: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

impl AfterCommit for Deliveries {
    fn settled(self, durable: bool) {
        // A failed write's events are never shown.
        if durable {
            // One write per recipient for all of the job's events.
            let _cork = crate::outbox::Cork::new();
            for (topic, event) in &self.events {
                self.delivery.deliver(topic, event);
            }
            if let Some(webhooks) = &self.webhooks {
                webhooks.send_modify(|stored| *stored += 1);
            }
        }
    }

    fn settled_all(jobs: impl Iterator<Item = Self>, durable: bool, then: impl FnOnce()) {
        // One write per recipient for all of the commit's events (a
        // session in several of its jobs' channels gets one), with the
        // replies parked for these tickets (`then` releases them).
        let _cork = crate::outbox::Cork::new();
        for job in jobs {
            job.settled(durable);
        }
        then();
    }
}

pub(crate) struct Embedded {
    config: Arc<Config>,
    delivery: Arc<Delivery>,
    store: Option<Store<Deliveries>>,
    reload_guard: RwLock<()>,
    identities: DashMap<Arc<str>, Arc<Identity>, RandomState>,
    channels: DashMap<Arc<str>, Arc<Channel>, RandomState>,
    /// Anonymous identities held (bounded by `[identities] max_anonymous`).
    anonymous: AtomicUsize,
    /// For the typing timers, which outlive the operation that started them.
    me: Weak<Embedded>,
    /// With post-event webhooks configured (and a store): bumped whenever
    /// stored webhook events became durable.
    webhooks: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

/// Tells the engine about store failures without the store keeping the
/// engine alive.
struct Listener(Weak<Embedded>);

impl StoreListener for Listener {
    fn failed(&self, why: &str) {
        if let Some(engine) = self.0.upgrade() {
            tracing::warn!(error = %why, "reloading state from the store after a failed write");
            engine.reload(false);
        }
    }

    fn recovered(&self) {
        if let Some(engine) = self.0.upgrade() {
            engine.reload(true);
        }
    }
}

impl Embedded {
    /// Opens the store (with a durable level), restores what it holds, and
    /// returns the engine with the resume-token secret the store keeps.
    pub(crate) fn open(
        config: Arc<Config>,
        delivery: Arc<Delivery>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<(Arc<Embedded>, Option<Vec<u8>>), StoreError> {
        let (store, snapshot) = match config.durability {
            Durability::Memory => (None, None),
            durability => {
                let (store, snapshot) = Store::open(
                    &config.data_dir,
                    durability,
                    config.commit_delay(),
                    config.history.window(),
                    metrics,
                    config.accept_data_loss,
                )?;
                (Some(store), Some(snapshot))
            }
        };
        let webhooks = (store.is_some() && !config.webhooks.post.is_empty())
            .then(|| Arc::new(tokio::sync::watch::Sender::new(0)));
        let engine = Arc::new_cyclic(|me| Embedded {
            config,
            delivery,
            store,
            reload_guard: RwLock::new(()),
            identities: DashMap::default(),
            channels: DashMap::default(),
            anonymous: AtomicUsize::new(0),
            me: me.clone(),
            webhooks,
        });
        let secret = snapshot.map(|snapshot| {
            engine.restore(&snapshot, true);
            snapshot.resume_secret
        });
        if let Some(store) = &engine.store {
            store.set_listener(Arc::new(Listener(Arc::downgrade(&engine))));
        }
        Ok((engine, secret))
    }

    /// Makes the state what `snapshot` says is durable. At start (`seed`)
    /// the delivery's views are seeded too; on a reload they already show
    /// only durable events. Live facts that are not stored (sessions per
    /// identity, observers per channel) carry over.
    fn restore(&self, snapshot: &Snapshot, seed: bool) {
        let old_identities: HashMap<Arc<str>, Arc<Identity>> = self
            .identities
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let old_channels: HashMap<Arc<str>, Arc<Channel>> = self
            .channels
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let identities: DashMap<Arc<str>, Arc<Identity>, RandomState> = DashMap::default();
        let identity = |id: &Arc<str>, role: Role, anonymous: bool| -> Arc<Identity> {
            identities
                .entry(id.clone())
                .or_insert_with(|| Arc::new(Identity::new(id.clone(), role, anonymous)))
                .clone()
        };
        let window = self.config.history.window();
        self.channels.clear();
        for row in &snapshot.channels {
            let channel = Arc::new(Channel::new(
                row.sid.clone(),
                row.queue.clone(),
                row.form_data.clone(),
                Arc::from(row.started_at.as_str()),
            ));
            {
                let mut cs = channel.lock();
                cs.members = row.members.iter().cloned().collect();
                cs.next_index = row.next_index;
                cs.observers = old_channels
                    .get(&row.sid)
                    .map_or(0, |old| old.lock().observers);
            }
            for (member, role) in &row.members {
                identity(member, *role, false)
                    .lock()
                    .memberships
                    .insert(row.sid.clone());
            }
            if seed {
                let recent = row
                    .recent
                    .iter()
                    .rev()
                    .take(window)
                    .rev()
                    .cloned()
                    .collect();
                self.delivery.restore_channel(
                    &row.sid,
                    row.members.iter().cloned(),
                    row.next_index,
                    recent,
                );
            }
            self.channels.insert(row.sid.clone(), channel);
        }
        for row in &snapshot.identities {
            let found = identity(&row.id, row.role, row.anonymous);
            let found = if found.anonymous != row.anonymous {
                let fixed = Arc::new(Identity::new(row.id.clone(), row.role, row.anonymous));
                fixed.lock().memberships = found.lock().memberships.clone();
                identities.insert(row.id.clone(), fixed.clone());
                fixed
            } else {
                found
            };
            let mut state = found.lock();
            state.expanded = row.expanded;
            let Some((sid, started_at)) = &row.engagement else {
                continue;
            };
            let Some(channel) = self.channels.get(sid).map(|c| c.clone()) else {
                continue;
            };
            state.engagement = Some(Engagement {
                channel_sid: sid.clone(),
                started_at: Arc::from(started_at.as_str()),
            });
            if seed {
                let members = member_list(channel.lock().members.iter());
                self.delivery.restore_queued(
                    &channel.queue,
                    QueuedEngagement {
                        channel_sid: sid.clone(),
                        identity: found.id.clone(),
                        form_data: channel.form_data.clone(),
                        started_at: channel.started_at.clone(),
                        members,
                    },
                );
            }
        }
        for (identity, sid, body) in &snapshot.drafts {
            if let Some(found) = identities.get(identity).map(|i| i.clone()) {
                // Kept only for a channel it is still a member of.
                found
                    .lock()
                    .memberships
                    .set_draft(sid.clone(), body.clone());
            }
        }
        // Identities with sessions here but nothing stored are kept, with
        // their sessions.
        for (id, old) in &old_identities {
            let mut old_state = old.lock();
            old_state.removed = true;
            if old_state.sessions > 0 {
                let found = identity(id, old.role, old.anonymous);
                let mut state = found.lock();
                state.sessions = old_state.sessions;
                state.idle_since = None;
            }
        }
        self.identities.clear();
        for (id, found) in identities {
            self.identities.insert(id, found);
        }
        let anonymous = self.identities.iter().filter(|i| i.anonymous).count();
        self.anonymous.store(anonymous, Ordering::Relaxed);
        tracing::info!(
            identities = self.identities.len(),
            channels = self.channels.len(),
            "state restored from the store"
        );
    }

    /// Makes the state what is durable after a failed write (and, with
    /// `resume`, lets the store take writes again, before any operation
    /// can see the state).
    fn reload(&self, resume: bool) {
        let Some(store) = &self.store else { return };
        let _exclusive = self.reload_guard.write();
        match store.snapshot(self.config.history.window()) {
            Ok(snapshot) => self.restore(&snapshot, false),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store back; state may show writes that failed until it can");
                if resume {
                    // Not resuming on a state that does not match the store.
                    return;
                }
            }
        }
        if resume {
            store.resume();
        }
    }

    /// `unavailable` before anything is changed when the store would not
    /// take the write.
    fn writable(&self) -> Outcome<()> {
        match &self.store {
            Some(store) => store.accepting().map_err(EngineError::from),
            None => Ok(()),
        }
    }

    /// Submits one operation's writes and events (under the locks that
    /// ordered them). Without a store the events are delivered at once.
    fn commit(&self, mut ops: Vec<Op>, events: Vec<(Topic, Event)>) -> Outcome<Option<u64>> {
        match &self.store {
            Some(store) => {
                // Post-event webhook events are written with the action
                // that made them: durable exactly when it is.
                let webhooks =
                    self.webhooks.as_ref().and_then(|signal| {
                        let before = ops.len();
                        ops.extend(events.iter().filter_map(|(topic, event)| {
                            crate::webhooks::stored_event(topic, event)
                        }));
                        (ops.len() > before).then(|| signal.clone())
                    });
                store.submit(
                    ops,
                    Deliveries {
                        delivery: self.delivery.clone(),
                        events,
                        webhooks,
                    },
                )
            }
            .map(Some)
            .map_err(EngineError::from),
            None => {
                for (topic, event) in &events {
                    self.delivery.deliver(topic, event);
                }
                Ok(None)
            }
        }
    }

    /// A result that stands once `committed` is durable.
    fn pending<T>(&self, committed: Outcome<Option<u64>>, value: T) -> Pending<T> {
        match committed {
            Ok(ticket) => Pending::after(ticket, value, self.store.as_ref().map(|s| s.commits())),
            Err(e) => Pending::failed(e),
        }
    }

    /// A change to an identity's state: held off a reload, refused before
    /// anything changes when the store would not take it, and run with the
    /// identity locked.
    fn change<T>(
        &self,
        actor: &Actor,
        f: impl FnMut(&Arc<Identity>, &mut IdentityState) -> Pending<T>,
    ) -> Pending<T> {
        let _shared = self.reload_guard.read();
        if let Err(e) = self.writable() {
            return Pending::failed(e);
        }
        self.with_identity(actor, f)
    }

    /// The identity of an actor, made again if the reaper forgot it, with
    /// its state locked.
    fn with_identity<R>(
        &self,
        actor: &Actor,
        mut f: impl FnMut(&Arc<Identity>, &mut IdentityState) -> R,
    ) -> R {
        loop {
            let identity = self
                .identities
                .entry(actor.id.clone())
                .or_insert_with(|| {
                    Arc::new(Identity::new(actor.id.clone(), actor.role, actor.anonymous))
                })
                .clone();
            let mut state = identity.lock();
            if !state.removed {
                return f(&identity, &mut state);
            }
        }
    }

    fn channel(&self, sid: &str) -> Option<Arc<Channel>> {
        self.channels.get(sid).map(|c| c.clone())
    }

    /// A channel a member acts on. Customers get `not_a_member` for a
    /// channel that does not exist too, so sids cannot be probed.
    fn member_channel(&self, actor: &Actor, sid: &str) -> Outcome<Arc<Channel>> {
        self.channel(sid).ok_or_else(|| unknown_channel(actor, sid))
    }

    fn identity_row(identity: &Identity, state: &IdentityState) -> Op {
        Op::SaveIdentity(IdentityRow {
            id: identity.id.clone(),
            role: identity.role,
            anonymous: identity.anonymous,
            expanded: state.expanded,
            engagement: state
                .engagement
                .as_ref()
                .map(|e| (e.channel_sid.clone(), e.started_at.to_string())),
        })
    }

    /// Marks a closed channel ended: written, and its topic told (with a
    /// store the transcript is read from disk from now on).
    fn retire(
        &self,
        channel: &Channel,
        cs: &mut ChannelState,
        ops: &mut Vec<Op>,
        events: &mut Vec<(Topic, Event)>,
    ) {
        cs.closed = true;
        cs.ended_at = Some(Instant::now());
        let (ended_at, ended_ms) = now();
        cs.ended_at_text = Some(ended_at);
        let forget = self.store.is_some();
        ops.push(Op::EndChannel {
            sid: channel.sid.clone(),
            ended_ms,
        });
        events.push((
            Topic::Channel(channel.sid.clone()),
            Event::ChannelClosed { forget },
        ));
        if forget {
            self.channels.remove(&channel.sid);
        }
    }

    /// Takes `identity` (all its sessions) out of a channel in one job:
    /// under the channel lock it stops being a member, its typing ends, and
    /// exactly one `memberLeft` is published, ordered after every message
    /// already accepted. Ends the identity's engagement when this was it
    /// (the queue and its sessions are told, with `ended_reason`); with
    /// `tell_identity`, its sessions are told the engagement ended anyway
    /// (an agent in a chat that was ended for everyone).
    fn remove_member(
        &self,
        identity: &Identity,
        state: &mut IdentityState,
        sid: &str,
        reason: LeaveReason,
        ended_reason: &Arc<str>,
        tell_identity: bool,
    ) -> Outcome<Option<u64>> {
        if !state.memberships.contains(sid) {
            return Err(EngineError::NotAMember(sid.to_owned()));
        }
        // (Its draft goes with it.)
        let sid: Arc<str> = state.memberships.take(sid).expect("checked");
        let is_engagement = state
            .engagement
            .as_ref()
            .is_some_and(|e| e.channel_sid == sid);
        if is_engagement {
            state.engagement = None;
        }
        let mut ops = vec![Op::RemoveMember {
            sid: sid.clone(),
            identity: identity.id.clone(),
        }];
        let mut events = Vec::new();
        if is_engagement {
            ops.push(Self::identity_row(identity, state));
        }
        let channel = self.channel(&sid);
        let mut locked = channel.as_ref().map(|c| (c, c.lock()));
        if let Some((channel, cs)) = locked.as_mut() {
            if cs.members.remove(&identity.id).is_some() {
                self.end_typing(cs, &sid, &identity.id);
                let left = Event::MemberLeft {
                    channel_sid: sid.clone(),
                    identity: identity.id.clone(),
                    reason,
                };
                // Removed by the server: its own sessions did not ask, so
                // they are told too (after the channel stops reaching them).
                if reason == LeaveReason::Removed {
                    events.push((Topic::Channel(sid.clone()), left.clone()));
                    events.push((Topic::Identity(identity.id.clone()), left));
                } else {
                    events.push((Topic::Channel(sid.clone()), left));
                }
                if !is_engagement && !cs.closed {
                    events.push(members_changed(channel, cs));
                }
                if !cs.closed && cs.is_abandoned() {
                    self.retire(channel, cs, &mut ops, &mut events);
                }
            }
        }
        if is_engagement || tell_identity {
            let ended = Event::EngagementEnded {
                channel_sid: sid.clone(),
                reason: ended_reason.clone(),
            };
            if let (true, Some(channel)) = (is_engagement, &channel) {
                events.push((Topic::Queue(channel.queue.clone()), ended.clone()));
            }
            let told = if reason == LeaveReason::Restart {
                Event::EngagementRestarted {
                    channel_sid: sid.clone(),
                }
            } else {
                ended
            };
            events.push((Topic::Identity(identity.id.clone()), told));
        }
        // Submitted while the channel is still locked.
        let committed = self.commit(ops, events);
        drop(locked);
        committed
    }

    /// Ends `identity`'s typing in a channel, if any: `typingEnded` at once
    /// (typing is never stored).
    fn end_typing(&self, cs: &mut ChannelState, sid: &Arc<str>, identity: &Arc<str>) {
        if cs.typing.remove(identity).is_some() {
            self.delivery.deliver(
                &Topic::Channel(sid.clone()),
                &Event::TypingEnded {
                    channel_sid: sid.clone(),
                    identity: identity.clone(),
                },
            );
        }
    }

    /// Reads a channel's messages `from..to` from the store for a recovery
    /// (none without one).
    fn read_older(&self, sid: &str, from: u64, to: u64) -> Option<Vec<Arc<StoredMessage>>> {
        let store = self.store.as_ref()?;
        match store.messages(sid, from, to, usize::MAX) {
            Ok(older) => Some(older.into_iter().map(Arc::new).collect()),
            Err(e) => {
                tracing::error!(error = %e, "recovery read failed");
                None
            }
        }
    }

    fn purge(&self) {
        let history = &self.config.history;
        let now_ms = Utc::now().timestamp_millis();
        let age_cutoff = now_ms - (history.max_age_secs as i64) * 1000;
        self.delivery.trim_windows(age_cutoff);
        let ended_retention = Duration::from_secs(history.ended_retention_secs);
        // Without a store, ended channels wait in memory for their transcript
        // to be read, as long as retention keeps them.
        self.channels.retain(|sid, channel| {
            let expired = channel
                .lock()
                .ended_at
                .is_some_and(|t| t.elapsed() >= ended_retention);
            if expired {
                self.delivery.forget_channel(sid);
            }
            !expired
        });
        self.purge_store();
    }

    /// Queues one bounded slice of disk retention. Called by every
    /// retention pass, and more often while the last slice left work
    /// behind, so that retention keeps up with a busy broker without any
    /// one slice holding commits up for long.
    fn purge_store(&self) {
        let Some(store) = &self.store else { return };
        if store.accepting().is_err() {
            return;
        }
        let history = &self.config.history;
        let now_ms = Utc::now().timestamp_millis();
        let retention = Retention {
            max_messages: history.max_messages,
            older_than_ms: now_ms - (history.max_age_secs as i64) * 1000,
            ended_before_ms: now_ms - (history.ended_retention_secs as i64) * 1000,
        };
        if let Err(e) = store.submit(
            vec![Op::Purge(retention)],
            Deliveries {
                delivery: self.delivery.clone(),
                events: Vec::new(),
                webhooks: None,
            },
        ) {
            tracing::debug!(error = %e, "retention slice not queued");
        }
    }

    /// Forgets identities with no session, no membership and no engagement
    /// that have been idle longer than `ttl`. Skips any identity whose lock
    /// is busy: it is in use, and the next sweep will see it.
    fn reap(&self, ttl: Duration) -> usize {
        let before = self.identities.len();
        self.identities.retain(|_, identity| {
            let Some(mut state) = identity.try_lock() else {
                return true;
            };
            let idle = state.sessions == 0
                && state.memberships.is_empty()
                && state.engagement.is_none()
                && state.idle_since.is_some_and(|t| t.elapsed() >= ttl);
            if idle {
                state.removed = true;
                if identity.anonymous {
                    self.anonymous.fetch_sub(1, Ordering::Relaxed);
                }
            }
            !idle
        });
        before - self.identities.len()
    }

    /// One typing period: sleeps to the window's end, and again if a new
    /// `SendTyping` pushed the end further; gives up when the period it was
    /// made for has already ended (a message, a leave, a newer period).
    async fn end_when_window_passes(
        engine: Weak<Embedded>,
        channel: Arc<Channel>,
        identity: Arc<str>,
        generation: u64,
    ) {
        loop {
            let until = match channel.lock().typing.get(&identity) {
                Some(typing) if typing.generation == generation => typing.until,
                _ => return,
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let mut cs = channel.lock();
            match cs.typing.get(&identity) {
                Some(typing) if typing.generation == generation => {
                    if typing.until <= Instant::now() {
                        engine.end_typing(&mut cs, &channel.sid, &identity);
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

/// `engagementUpdated` for a channel's queue (its members changed).
fn members_changed(channel: &Channel, cs: &ChannelState) -> (Topic, Event) {
    (
        Topic::Queue(channel.queue.clone()),
        Event::EngagementUpdated {
            channel_sid: channel.sid.clone(),
            members: member_list(cs.members.iter()).into(),
        },
    )
}

/// The error for a channel that does not exist (or is not in memory):
/// customers may not tell it from someone else's.
fn unknown_channel(actor: &Actor, sid: &str) -> EngineError {
    match actor.role {
        Role::Customer => EngineError::NotAMember(sid.to_owned()),
        _ => EngineError::NotFound(format!("no channel {sid}")),
    }
}

fn now() -> (Arc<str>, i64) {
    let now = Utc::now();
    (
        Arc::from(now.to_rfc3339_opts(SecondsFormat::Millis, true)),
        now.timestamp_millis(),
    )
}

impl Engine for Embedded {
    fn identify(&self, principal: &Principal) -> Pending<Actor> {
        let id: Arc<str> = Arc::from(principal.identity.as_str());
        let identity = match self.identities.entry(id.clone()) {
            dashmap::Entry::Occupied(existing) => existing.get().clone(),
            dashmap::Entry::Vacant(vacant) => {
                // Anyone can mint anonymous identities by reconnecting; each
                // is kept until the reaper's idle TTL, so their number is
                // capped (token identities are the operator's to bound).
                if principal.anonymous {
                    let cap = self.config.identities.max_anonymous;
                    if self.anonymous.load(Ordering::Relaxed) >= cap {
                        return Pending::failed(EngineError::Full(format!(
                            "the broker holds its maximum of {cap} anonymous identities; retry later"
                        )));
                    }
                    self.anonymous.fetch_add(1, Ordering::Relaxed);
                }
                vacant
                    .insert(Arc::new(Identity::new(
                        id,
                        principal.role,
                        principal.anonymous,
                    )))
                    .clone()
            }
        };
        if identity.role != principal.role {
            return Pending::failed(EngineError::Unauthorized(format!(
                "identity {:?} is {}, not {}",
                principal.identity,
                identity.role.with_article(),
                principal.role.with_article()
            )));
        }
        Pending::ready(Actor {
            id: identity.id.clone(),
            role: identity.role,
            anonymous: identity.anonymous,
        })
    }

    fn attach(
        &self,
        session: &Arc<SessionHandle>,
        actor: &Actor,
        recover: &HashMap<String, i64>,
    ) -> Pending<Attached> {
        let _shared = self.reload_guard.read();
        let attached = self.with_identity(actor, |identity, state| {
            let max = self.config.admission.max_sessions_per_identity;
            if state.sessions >= max {
                return Err(EngineError::Full(format!(
                    "identity {} already has {max} sessions (admission.max_sessions_per_identity)",
                    identity.id
                )));
            }
            state.sessions += 1;
            state.idle_since = None;
            session.set_identity(identity.id.clone());
            // Receiving the identity's pushes first, then its channels: a
            // join delivered in between adds this session with the others.
            self.delivery.attach_identity(session, &identity.id);
            let mut recovered: HashMap<String, bool> =
                recover.keys().map(|sid| (sid.clone(), false)).collect();
            for sid in state.memberships.iter() {
                let wanted = recover.get(&**sid).copied();
                let got = self
                    .delivery
                    .attach_member(session, &identity.id, sid, wanted)
                    .and_then(|added| added.complete(|from, to| self.read_older(sid, from, to)));
                if let (Some(_), Some(ok)) = (wanted, got) {
                    recovered.insert(sid.to_string(), ok);
                }
            }
            let engagement = state.engagement.as_ref().map(|e| {
                let members = self
                    .channel(&e.channel_sid)
                    .map(|c| member_list(c.lock().members.iter()))
                    .unwrap_or_default();
                let delivered = self.delivery.next_index(&e.channel_sid).unwrap_or(0);
                EngagementSnapshot {
                    channel_sid: e.channel_sid.clone(),
                    started_at: e.started_at.clone(),
                    members,
                    last_index: delivered as i64 - 1,
                }
            });
            Ok(Attached {
                snapshot: IdentitySnapshot {
                    engagement,
                    widget: WidgetState {
                        expanded: state.expanded,
                    },
                    input_text: drafts_within_a_page(state.memberships.drafts()),
                },
                recovered,
            })
        });
        Pending::Ready(attached)
    }

    fn detach(&self, session: &Arc<SessionHandle>) {
        let _shared = self.reload_guard.read();
        for name in session.subscriptions() {
            self.unsubscribe_locked(session, &name);
        }
        self.delivery.close_session(session);
        let Some(id) = session.identity() else { return };
        if let Some(identity) = self.identities.get(&id).map(|i| i.clone()) {
            let mut state = identity.lock();
            state.sessions = state.sessions.saturating_sub(1);
            if state.sessions == 0 {
                state.idle_since = Some(Instant::now());
            }
        }
    }

    fn start_engagement(
        &self,
        actor: &Actor,
        form_data: Value,
        queue: Arc<str>,
    ) -> Pending<Started> {
        self.change(actor, |identity, state| {
            if let Some(engagement) = &state.engagement {
                return Pending::failed(EngineError::AlreadyEngaged {
                    channel_sid: engagement.channel_sid.to_string(),
                });
            }
            let sid: Arc<str> = Arc::from(super::new_channel_sid());
            let (started_at, _) = now();
            let channel = Arc::new(Channel::new(
                sid.clone(),
                queue.clone(),
                form_data.clone(),
                started_at.clone(),
            ));
            channel
                .lock()
                .members
                .insert(identity.id.clone(), Role::Customer);
            self.channels.insert(sid.clone(), channel);
            state.memberships.insert(sid.clone());
            state.engagement = Some(Engagement {
                channel_sid: sid.clone(),
                started_at: started_at.clone(),
            });
            let ops = vec![
                Op::SaveChannel {
                    sid: sid.clone(),
                    queue: queue.clone(),
                    customer: Some(identity.id.clone()),
                    form_data: form_data.to_string(),
                    started_at: started_at.to_string(),
                },
                Op::AddMember {
                    sid: sid.clone(),
                    identity: identity.id.clone(),
                    role: Role::Customer,
                },
                Self::identity_row(identity, state),
            ];
            let started = Arc::new(EngagementStarted {
                channel_sid: sid.clone(),
                identity: identity.id.clone(),
                form_data: form_data.clone(),
                started_at: started_at.clone(),
                queue: queue.clone(),
            });
            let events = vec![
                (
                    Topic::Channel(sid.clone()),
                    Event::ChannelOpened {
                        customer: Member {
                            identity: identity.id.clone(),
                            role: Role::Customer,
                        },
                    },
                ),
                (
                    Topic::Identity(identity.id.clone()),
                    Event::EngagementStarted(started.clone()),
                ),
                (
                    Topic::Queue(queue.clone()),
                    Event::EngagementStarted(started),
                ),
            ];
            let committed = self.commit(ops, events);
            self.pending(committed, Started { channel_sid: sid })
        })
    }

    fn restart_engagement(&self, actor: &Actor) -> Pending<Arc<str>> {
        self.change(actor, |identity, state| {
            let Some(engagement) = &state.engagement else {
                return Pending::failed(EngineError::NoEngagement);
            };
            let sid = engagement.channel_sid.clone();
            let reason: Arc<str> = Arc::from(LeaveReason::Restart.as_str());
            let committed =
                self.remove_member(identity, state, &sid, LeaveReason::Restart, &reason, false);
            self.pending(committed, sid)
        })
    }

    fn end_engagement(
        &self,
        member: Option<&Actor>,
        channel_sid: &str,
        reason: &str,
    ) -> Pending<()> {
        let _shared = self.reload_guard.read();
        if let Err(e) = self.writable() {
            return Pending::failed(e);
        }
        let not_found = || EngineError::NotFound(format!("no open channel {channel_sid}"));
        let not_member = || EngineError::NotAMember(channel_sid.to_owned());
        let Some(channel) = self.channel(channel_sid) else {
            return Pending::failed(match member {
                Some(_) => not_member(),
                None => not_found(),
            });
        };
        let mut members: Vec<(Arc<str>, Role)> = {
            let mut cs = channel.lock();
            if member.is_some_and(|m| !cs.members.contains_key(&m.id)) {
                return Pending::failed(not_member());
            }
            if cs.closed {
                return Pending::failed(not_found());
            }
            // Closed first: from here on nobody joins or posts, so the
            // member list taken now is the final one.
            cs.closed = true;
            cs.members
                .iter()
                .map(|(id, role)| (id.clone(), *role))
                .collect()
        };
        members.sort();
        let reason: Arc<str> = Arc::from(reason);
        let mut last = Ok(None);
        for (id, role) in members {
            let actor = Actor {
                id,
                role,
                anonymous: false,
            };
            let removed = self.with_identity(&actor, |identity, state| {
                self.remove_member(
                    identity,
                    state,
                    channel_sid,
                    LeaveReason::Ended,
                    &reason,
                    true,
                )
            });
            match removed {
                Ok(ticket) => last = Ok(ticket),
                // Left in the meantime.
                Err(EngineError::NotAMember(_)) => {}
                Err(e) => return Pending::failed(e),
            }
        }
        let mut cs = channel.lock();
        if cs.ended_at.is_none() {
            let (mut ops, mut events) = (Vec::new(), Vec::new());
            self.retire(&channel, &mut cs, &mut ops, &mut events);
            last = self.commit(ops, events);
        }
        drop(cs);
        self.pending(last, ())
    }

    fn join(&self, actor: &Actor, channel_sid: &str) -> Pending<Joined> {
        let not_found = || EngineError::NotFound(format!("no channel {channel_sid}"));
        self.change(actor, |identity, state| {
            let Some(channel) = self.channel(channel_sid) else {
                return Pending::failed(not_found());
            };
            let mut cs = channel.lock();
            if cs.closed {
                return Pending::failed(not_found());
            }
            let last_index = cs.last_index();
            if cs.members.contains_key(&identity.id) {
                // Joining twice is not an error and pushes nothing.
                let members = member_list(cs.members.iter());
                return Pending::ready(Joined {
                    members,
                    last_index,
                });
            }
            let max = self.config.admission.max_members_per_channel;
            if cs.members.len() >= max {
                return Pending::failed(EngineError::Full(format!(
                    "channel {channel_sid} already has {max} members (admission.max_members_per_channel)"
                )));
            }
            cs.members.insert(identity.id.clone(), identity.role);
            state.memberships.insert(channel.sid.clone());
            let ops = vec![
                Op::AddMember {
                    sid: channel.sid.clone(),
                    identity: identity.id.clone(),
                    role: identity.role,
                },
                Self::identity_row(identity, state),
            ];
            // The identity's sessions start receiving with its
            // `memberJoined`, after every message accepted before the join.
            let events = vec![
                (
                    Topic::Channel(channel.sid.clone()),
                    Event::MemberJoined {
                        channel_sid: channel.sid.clone(),
                        member: Member {
                            identity: identity.id.clone(),
                            role: identity.role,
                        },
                    },
                ),
                members_changed(&channel, &cs),
            ];
            let members = member_list(cs.members.iter());
            let committed = self.commit(ops, events);
            drop(cs);
            self.pending(
                committed,
                Joined {
                    members,
                    last_index,
                },
            )
        })
    }

    fn leave(&self, actor: &Actor, channel_sid: &str, reason: LeaveReason) -> Pending<()> {
        let ended: Arc<str> = Arc::from(reason.as_str());
        self.change(actor, |identity, state| {
            let committed = self.remove_member(identity, state, channel_sid, reason, &ended, false);
            self.pending(committed, ())
        })
    }

    fn post(&self, actor: &Actor, channel_sid: &str, message: NewMessage) -> Pending<Posted> {
        let _shared = self.reload_guard.read();
        if let Err(e) = self.writable() {
            return Pending::failed(e);
        }
        let channel = match self.member_channel(actor, channel_sid) {
            Ok(channel) => channel,
            Err(e) => return Pending::failed(e),
        };
        let mut cs = channel.lock();
        // Membership is checked under the channel lock, the same lock a
        // restart or leave takes: a message either lands before the
        // `memberLeft` or finds its author gone.
        let member = !cs.closed && cs.members.contains_key(&actor.id);
        let by_broker = message.by_broker && actor.role == Role::Service && !cs.closed;
        if !member && !by_broker {
            return Pending::failed(EngineError::NotAMember(channel_sid.to_owned()));
        }
        let index = cs.next_index;
        cs.next_index += 1;
        let (date_created, created_ms) = now();
        let stored = Arc::new(StoredMessage {
            channel_sid: channel.sid.clone(),
            index,
            author: actor.id.clone(),
            author_role: actor.role,
            body: message.body,
            attributes: message.attributes,
            date_created: date_created.to_string(),
            created_ms,
        });
        self.end_typing(&mut cs, &channel.sid, &actor.id);
        // Written (and, with a store, delivered once durable) in index
        // order: both are submitted under this lock.
        let committed = self.commit(
            vec![Op::AppendMessage(stored.clone())],
            vec![(
                Topic::Channel(channel.sid.clone()),
                Event::MessageAdded(stored),
            )],
        );
        drop(cs);
        self.pending(
            committed,
            Posted {
                index,
                date_created,
            },
        )
    }

    fn set_widget(
        &self,
        actor: &Actor,
        change: WidgetChange,
        origin: Option<SessionKey>,
    ) -> Pending<bool> {
        self.change(actor, |identity, state| {
            let expanded = match change {
                WidgetChange::Toggle => !state.expanded,
                WidgetChange::Minimize => false,
            };
            if expanded == state.expanded {
                return Pending::ready(expanded);
            }
            state.expanded = expanded;
            let committed = self.commit(
                vec![Self::identity_row(identity, state)],
                vec![(
                    Topic::Identity(identity.id.clone()),
                    Event::WidgetStateChanged { expanded, origin },
                )],
            );
            self.pending(committed, expanded)
        })
    }

    fn set_draft(
        &self,
        actor: &Actor,
        channel_sid: &str,
        body: &str,
        origin: Option<SessionKey>,
    ) -> Pending<()> {
        self.change(actor, |identity, state| {
            let Some(sid) = state.memberships.get(channel_sid).cloned() else {
                return Pending::failed(EngineError::NotAMember(channel_sid.to_owned()));
            };
            if body.is_empty() {
                state.memberships.clear_draft(&sid);
            } else {
                state.memberships.set_draft(sid.clone(), body.to_owned());
            }
            let committed = self.commit(
                vec![Op::SetDraft {
                    identity: identity.id.clone(),
                    sid: sid.clone(),
                    body: (!body.is_empty()).then(|| body.to_owned()),
                }],
                vec![(
                    Topic::Identity(identity.id.clone()),
                    Event::InputTextSet {
                        channel_sid: sid,
                        body: Arc::from(body),
                        origin,
                    },
                )],
            );
            self.pending(committed, ())
        })
    }

    fn typing(&self, actor: &Actor, channel_sid: &str) -> Pending<()> {
        let _shared = self.reload_guard.read();
        let channel = match self.member_channel(actor, channel_sid) {
            Ok(channel) => channel,
            Err(e) => return Pending::failed(e),
        };
        let window = self.config.typing_window();
        let mut cs = channel.lock();
        if cs.closed || !cs.members.contains_key(&actor.id) {
            return Pending::failed(EngineError::NotAMember(channel_sid.to_owned()));
        }
        let until = Instant::now() + window;
        if let Some(typing) = cs.typing.get_mut(&actor.id) {
            // A repeat inside the window is not re-sent.
            typing.until = until;
            return Pending::ready(());
        }
        cs.typing_generation += 1;
        let generation = cs.typing_generation;
        cs.typing
            .insert(actor.id.clone(), Typing { until, generation });
        self.delivery.deliver(
            &Topic::Channel(channel.sid.clone()),
            &Event::TypingStarted {
                channel_sid: channel.sid.clone(),
                identity: actor.id.clone(),
            },
        );
        drop(cs);
        tokio::spawn(Self::end_when_window_passes(
            self.me.clone(),
            channel,
            actor.id.clone(),
            generation,
        ));
        Pending::ready(())
    }

    fn subscribe_channel(
        &self,
        session: &Arc<SessionHandle>,
        actor: &Actor,
        channel_sid: &str,
        after: Option<i64>,
    ) -> Pending<Option<bool>> {
        let _shared = self.reload_guard.read();
        let not_found = || EngineError::NotFound(format!("no channel {channel_sid}"));
        let Some(channel) = self.channel(channel_sid) else {
            return Pending::failed(not_found());
        };
        {
            let mut cs = channel.lock();
            if cs.closed {
                return Pending::failed(not_found());
            }
            if !session.is_subscribed(channel_sid) {
                cs.observers += 1;
            }
        }
        match self
            .delivery
            .subscribe_channel(session, &actor.id, &channel.sid, after)
        {
            Some(added) => {
                Pending::ready(added.complete(|from, to| self.read_older(channel_sid, from, to)))
            }
            None => {
                channel.lock().observers -= 1;
                Pending::failed(not_found())
            }
        }
    }

    fn subscribe_queue(&self, session: &Arc<SessionHandle>, queue: &str) -> Pending<QueuePage> {
        let (engagements, has_more) = self.delivery.subscribe_queue(session, &Arc::from(queue));
        Pending::ready(QueuePage {
            engagements,
            has_more,
        })
    }

    fn unsubscribe(&self, session: &Arc<SessionHandle>, topic: &str) {
        let _shared = self.reload_guard.read();
        self.unsubscribe_locked(session, topic);
    }

    fn history(
        &self,
        actor: &Actor,
        session: Option<SessionKey>,
        channel_sid: &str,
        before: u64,
        limit: usize,
    ) -> Pending<HistoryPage> {
        Pending::Ready(self.read_history(Some((actor, session)), channel_sid, before, limit))
    }

    fn queue_page(&self, queue: &str, after: Option<&str>) -> Pending<QueuePage> {
        let (engagements, has_more) = self.delivery.queue_page(queue, after);
        Pending::ready(QueuePage {
            engagements,
            has_more,
        })
    }

    fn channel_report(&self, channel_sid: &str) -> Pending<ChannelReport> {
        let not_found = || EngineError::NotFound(format!("no channel {channel_sid}"));
        if let Some(channel) = self.channel(channel_sid) {
            let cs = channel.lock();
            let mut members = member_list(cs.members.iter());
            members.sort();
            return Pending::ready(ChannelReport {
                channel_sid: channel.sid.clone(),
                status: if cs.closed { "ended" } else { "open" },
                queue: channel.queue.clone(),
                started_at: channel.started_at.clone(),
                ended_at: cs
                    .closed
                    .then(|| cs.ended_at_text.clone().unwrap_or_else(|| now().0)),
                members,
                last_index: cs.last_index(),
                form_data: channel.form_data.clone(),
            });
        }
        let Some(store) = &self.store else {
            return Pending::failed(not_found());
        };
        let report = match store.channel_record(channel_sid) {
            Ok(Some(record)) => Ok(ChannelReport {
                channel_sid: Arc::from(channel_sid),
                status: "ended",
                queue: Arc::from(record.queue),
                started_at: Arc::from(record.started_at),
                ended_at: Some(Arc::from(
                    chrono::DateTime::from_timestamp_millis(record.ended_ms.unwrap_or_default())
                        .unwrap_or_default()
                        .to_rfc3339_opts(SecondsFormat::Millis, true),
                )),
                members: Vec::new(),
                last_index: record.next_index as i64 - 1,
                form_data: serde_json::from_str(&record.form_data).unwrap_or(Value::Null),
            }),
            Ok(None) => Err(not_found()),
            Err(e) => Err(e.into()),
        };
        Pending::Ready(report)
    }

    fn identity_report(&self, identity: &str) -> Pending<IdentityReport> {
        let Some(found) = self.identities.get(identity).map(|i| i.clone()) else {
            return Pending::failed(EngineError::NotFound(format!("no identity {identity:?}")));
        };
        let state = found.lock();
        if state.removed {
            return Pending::failed(EngineError::NotFound(format!("no identity {identity:?}")));
        }
        Pending::ready(IdentityReport {
            identity: found.id.clone(),
            role: found.role,
            sessions: state.sessions,
            engagement: state.engagement.as_ref().map(|e| EngagementRef {
                channel_sid: e.channel_sid.clone(),
                started_at: e.started_at.clone(),
            }),
            widget: WidgetState {
                expanded: state.expanded,
            },
        })
    }

    fn remove_from_channel(&self, channel_sid: &str, identity: &str) -> Pending<()> {
        let Some(found) = self.identities.get(identity).map(|i| i.clone()) else {
            return Pending::failed(EngineError::NotAMember(channel_sid.to_owned()));
        };
        let actor = Actor {
            id: found.id.clone(),
            role: found.role,
            anonymous: found.anonymous,
        };
        self.leave(&actor, channel_sid, LeaveReason::Removed)
    }

    fn channel_history(
        &self,
        channel_sid: &str,
        before: u64,
        limit: usize,
    ) -> Pending<HistoryPage> {
        Pending::Ready(self.read_history(None, channel_sid, before, limit))
    }

    fn disconnect(&self, identity: &str) -> Pending<usize> {
        let sessions = self.delivery.identity_sessions(identity);
        for session in &sessions {
            session
                .outbox
                .close(crate::outbox::CloseReason::Disconnected);
        }
        Pending::ready(sessions.len())
    }

    fn all_durable(&self) -> bool {
        self.store
            .as_ref()
            .is_none_or(|s| s.durable_upto() >= s.last_ticket())
    }

    fn room(&self) -> Option<Pending<()>> {
        let store = self.store.as_ref()?;
        (!store.has_room())
            .then(|| Pending::after(Some(store.last_ticket()), (), Some(store.commits())))
    }

    fn health(&self) -> Result<(), String> {
        match &self.store {
            Some(store) => store.health(),
            None => Ok(()),
        }
    }

    fn housekeeping(&self, tick: Housekeeping) {
        match tick {
            Housekeeping::Reap => {
                let reaped = self.reap(Duration::from_secs(self.config.identities.idle_ttl_secs));
                if reaped > 0 {
                    tracing::debug!(reaped, "forgot idle identities");
                }
            }
            Housekeeping::Purge => {
                let _shared = self.reload_guard.read();
                self.purge();
            }
            Housekeeping::CatchUp => {
                if self.store.as_ref().is_some_and(|s| s.retention_behind()) {
                    let _shared = self.reload_guard.read();
                    self.purge_store();
                }
            }
        }
    }

    fn close(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }
}

impl Embedded {
    fn unsubscribe_locked(&self, session: &Arc<SessionHandle>, topic: &str) {
        if topic.starts_with(QUEUE_PREFIX) {
            self.delivery.unsubscribe_queue(session, topic);
            return;
        }
        if !session.is_subscribed(topic) {
            return;
        }
        self.delivery.unsubscribe_channel(session, topic);
        let Some(channel) = self.channel(topic) else {
            return;
        };
        let mut cs = channel.lock();
        cs.observers = cs.observers.saturating_sub(1);
        if !cs.closed && cs.is_abandoned() && self.writable().is_ok() {
            let (mut ops, mut events) = (Vec::new(), Vec::new());
            self.retire(&channel, &mut cs, &mut ops, &mut events);
            if let Err(e) = self.commit(ops, events) {
                tracing::debug!(error = %e, "ending an abandoned channel");
            }
        }
    }

    /// A page of history for `reader` (an actor and its session), or for
    /// the server API (`None`: any channel, open or ended).
    fn read_history(
        &self,
        reader: Option<(&Actor, Option<SessionKey>)>,
        channel_sid: &str,
        before: u64,
        limit: usize,
    ) -> Outcome<HistoryPage> {
        let _shared = self.reload_guard.read();
        let staff = reader.is_none_or(|(actor, _)| actor.role.is_staff());
        let denied = || EngineError::NotAMember(channel_sid.to_owned());
        match self.channel(channel_sid) {
            Some(channel) => {
                if let Some((actor, session)) = reader {
                    let (member, closed) = {
                        let cs = channel.lock();
                        (cs.members.contains_key(&actor.id), cs.closed)
                    };
                    let subscriber =
                        session.is_some_and(|key| self.delivery.is_subscriber(channel_sid, key));
                    if !(member || subscriber || (staff && closed)) {
                        return Err(denied());
                    }
                }
                match self
                    .delivery
                    .window_page(channel_sid, before, limit, self.store.is_none())
                {
                    Some((below, _)) => Ok(newest(below, limit)),
                    None => {
                        let to = before.min(self.delivery.next_index(channel_sid).unwrap_or(0));
                        self.store_page(channel_sid, to, limit)
                    }
                }
            }
            // Not in memory: with a store, an ended engagement's transcript.
            None => match self.store.as_ref() {
                Some(store) if staff => match store.ended_channel(channel_sid) {
                    Ok(Some(next)) => self.store_page(channel_sid, before.min(next), limit),
                    Ok(None) => Err(EngineError::NotFound(format!("no channel {channel_sid}"))),
                    Err(e) => Err(e.into()),
                },
                _ if staff => Err(EngineError::NotFound(format!("no channel {channel_sid}"))),
                _ => Err(denied()),
            },
        }
    }

    fn store_page(&self, sid: &str, to: u64, limit: usize) -> Outcome<HistoryPage> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| EngineError::NotFound(format!("no channel {sid}")))?;
        // One more than the page, to tell whether older ones remain.
        let rows = store.messages(sid, 0, to, limit + 1)?;
        Ok(newest(rows.into_iter().map(Arc::new).collect(), limit))
    }
}

/// The newest `limit` of `below` (ascending), and whether older ones were
/// left out.
fn newest(mut below: Vec<Arc<StoredMessage>>, limit: usize) -> HistoryPage {
    let start = below.len().saturating_sub(limit);
    let messages = below.split_off(start);
    HistoryPage {
        messages,
        has_more: start > 0,
    }
}

/// The drafts a `Connect` returns: as many as fit in `codec::PAGE_BYTES`
/// (an agent in many chats with long drafts must still get a reply that
/// fits in a frame); the rest stay stored.
fn drafts_within_a_page<'a>(
    drafts: impl Iterator<Item = (&'a Arc<str>, &'a String)>,
) -> serde_json::Map<String, Value> {
    let mut within = serde_json::Map::new();
    let mut bytes = 0;
    for (sid, body) in drafts {
        bytes += sid.len() + crate::codec::encoded_len(body.as_str()) + 4;
        if bytes > crate::codec::PAGE_BYTES {
            break;
        }
        within.insert(sid.to_string(), body.clone().into());
    }
    within
}

/// The post-event webhook senders' view of the store. One node: no lease.
impl crate::webhooks::WebhookOutbox for Embedded {
    fn stores_events(&self) -> bool {
        self.webhooks.is_some()
    }

    fn changed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.webhooks.as_ref().map(|signal| signal.subscribe())
    }

    fn pending(
        &self,
        after: u64,
        limit: usize,
    ) -> crate::webhooks::Answer<'_, Vec<crate::store::WebhookEventRow>> {
        let read = self
            .store
            .as_ref()
            .ok_or_else(|| "no store".to_owned())
            .and_then(|store| {
                store
                    .webhook_events(after, limit)
                    .map_err(|e| e.to_string())
            });
        Box::pin(std::future::ready(read))
    }

    fn cursor<'a>(&'a self, url: &'a str) -> crate::webhooks::Answer<'a, u64> {
        let read = self
            .store
            .as_ref()
            .ok_or_else(|| "no store".to_owned())
            .and_then(|store| store.webhook_cursor(url).map_err(|e| e.to_string()));
        Box::pin(std::future::ready(read))
    }

    fn save_cursor<'a>(&'a self, url: &'a str, seq: u64) -> crate::webhooks::Answer<'a, ()> {
        let saved = self.save_webhook_ops(vec![Op::WebhookCursor {
            url: Arc::from(url),
            seq,
        }]);
        Box::pin(std::future::ready(saved))
    }

    fn prune(&self, upto: u64) -> crate::webhooks::Answer<'_, ()> {
        let saved = self.save_webhook_ops(vec![Op::PruneWebhookEvents { upto }]);
        Box::pin(std::future::ready(saved))
    }

    fn lease_ttl(&self) -> Option<std::time::Duration> {
        None
    }

    fn hold<'a>(&'a self, _url: &'a str) -> crate::webhooks::Answer<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn release<'a>(&'a self, _url: &'a str) -> crate::webhooks::Answer<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Embedded {
    /// Writes webhook bookkeeping (cursor moves, pruning) without waiting.
    fn save_webhook_ops(&self, ops: Vec<Op>) -> Result<(), String> {
        let store = self.store.as_ref().ok_or("no store")?;
        store
            .submit(
                ops,
                Deliveries {
                    delivery: self.delivery.clone(),
                    events: Vec::new(),
                    webhooks: None,
                },
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => EngineError::Unavailable(format!(
                "storage is unavailable ({why}); nothing was done, retry later"
            )),
            StoreError::Overloaded => EngineError::Unavailable(
                "storage is overloaded; nothing was done, retry shortly".into(),
            ),
            StoreError::Stopped => EngineError::Unavailable("the broker is shutting down".into()),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
