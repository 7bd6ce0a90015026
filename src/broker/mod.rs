//! The broker's shared state: who is connected, which channels exist, who
//! receives what.
//!
//! Registries are sharded concurrent maps (`DashMap`) from a key to an `Arc`
//! of the object; a lookup clones the `Arc` and drops the map guard at once,
//! so no map guard is ever held while another lock is taken or across an
//! `.await`. Each object has its own small lock; the order is always
//! identity, then channel, then queue (map shards innermost and brief).

pub mod channel;
pub mod identity;
pub mod queue;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use dashmap::DashMap;
use serde::Serialize;
use serde_json::Value;

use crate::actions::ActionRegistry;
use crate::auth::{Authenticator, Principal, Role};
use crate::business_hours::BusinessHours;
use crate::codec::Push;
use crate::config::{Config, ConfigError};
use crate::error::ActionError;
use crate::metrics::Metrics;
use crate::outbox::OutboxLimits;
use crate::store::{Durability, IdentityRow, Op, Retention, Snapshot, Store, StoredMessage};

use channel::{Channel, ChannelState, Event};
use identity::{Identity, IdentityState};
use queue::Queue;
use session::{SessionHandle, SessionKey};

pub struct Broker {
    pub config: Arc<Config>,
    pub auth: Authenticator,
    pub actions: ActionRegistry,
    pub business_hours: Option<BusinessHours>,
    pub metrics: Arc<Metrics>,
    pub identities: DashMap<Arc<str>, Arc<Identity>>,
    pub channels: DashMap<Arc<str>, Arc<Channel>>,
    pub queues: DashMap<Arc<str>, Arc<Queue>>,
    pub sessions: DashMap<SessionKey, Arc<SessionHandle>>,
    /// Durable storage; `None` with `durability = "memory"`.
    pub store: Option<Store>,
    /// Anonymous identities held (bounded by `[identities] max_anonymous`).
    anonymous_identities: AtomicUsize,
    next_session: AtomicU64,
}

/// What attaching a session to its identity gives the `Connect` result.
pub struct Attached {
    /// The identity's shared state (engagement, widget, drafts).
    pub snapshot: Value,
    /// Per channel asked to recover: whether history reached back.
    pub recovered: HashMap<String, bool>,
}

/// Why a member left a channel, as pushed in `memberLeft.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Left,
    Restart,
    /// The engagement was ended for everyone (`EndEngagement`).
    Ended,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Restart => "restart",
            LeaveReason::Ended => "ended",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EngagementEnded<'a> {
    channel_sid: &'a str,
    reason: &'a str,
}

impl Broker {
    /// A broker with `actions` (built-ins plus whatever the embedding code
    /// registered) and the configuration's `[actions]` added to them. With a
    /// durable store, opens it and restores its state first.
    pub fn new(config: Config, mut actions: ActionRegistry) -> Result<Broker, ConfigError> {
        config.validate()?;
        actions
            .apply_config(&config.actions)
            .map_err(|e| ConfigError::Actions(e.to_string()))?;
        let business_hours = config
            .business_hours
            .as_ref()
            .map(BusinessHours::from_config)
            .transpose()?;
        let metrics = Arc::new(Metrics::default());
        let (store, snapshot) = match config.durability {
            Durability::Memory => (None, None),
            durability => {
                let (store, snapshot) = Store::open(
                    &config.data_dir,
                    durability,
                    config.history.window(),
                    metrics.clone(),
                    config.accept_data_loss,
                )?;
                (Some(store), Some(snapshot))
            }
        };
        let auth = Authenticator::from_config(
            &config,
            snapshot.as_ref().map(|s| s.resume_secret.as_slice()),
        )
        .map_err(|message| ConfigError::Invalid {
            section: "[jwt]",
            message,
        })?;
        let broker = Broker {
            config: Arc::new(config),
            auth,
            actions,
            business_hours,
            metrics,
            identities: DashMap::new(),
            channels: DashMap::new(),
            queues: DashMap::new(),
            sessions: DashMap::new(),
            store,
            anonymous_identities: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
        };
        if let Some(snapshot) = snapshot {
            broker.restore(snapshot);
        }
        Ok(broker)
    }

    /// Rebuilds identities, channels, memberships, drafts and the queues'
    /// open engagements from the store, before any connection is accepted.
    fn restore(&self, snapshot: Snapshot) {
        let window = self.history_window();
        for row in snapshot.channels {
            let channel = Channel::new(
                row.sid.clone(),
                row.queue.clone(),
                row.customer.clone(),
                row.form_data.clone(),
                row.started_at.clone(),
                window,
            );
            {
                let mut cs = channel.lock();
                cs.restore(row.next_index, row.recent);
                cs.members = row.members.iter().cloned().collect();
            }
            self.channels.insert(row.sid.clone(), Arc::new(channel));
            for (identity, role) in row.members {
                let identity = self
                    .identities
                    .entry(identity.clone())
                    .or_insert_with(|| Arc::new(Identity::new(identity.clone(), role, false)));
                identity.lock().channels.insert(row.sid.clone());
            }
        }
        for row in snapshot.identities {
            let identity = self
                .identities
                .entry(row.id.clone())
                .or_insert_with(|| Arc::new(Identity::new(row.id.clone(), row.role, row.anonymous)))
                .clone();
            let identity = if identity.anonymous != row.anonymous {
                let fixed = Arc::new(Identity::new(row.id.clone(), row.role, row.anonymous));
                fixed.lock().channels = identity.lock().channels.clone();
                self.identities.insert(row.id.clone(), fixed.clone());
                fixed
            } else {
                identity
            };
            let mut state = identity.lock();
            state.expanded = row.expanded;
            if let Some((sid, started_at)) = row.engagement {
                if let Some(channel) = self.channel(&sid) {
                    state.engagement = Some(identity::Engagement {
                        channel_sid: sid.clone(),
                        started_at: started_at.clone(),
                    });
                    let cs = channel.lock();
                    let open = queue::OpenEngagement {
                        channel_sid: sid.clone(),
                        identity: identity.id.clone(),
                        form_data: cs.form_data.clone(),
                        started_at,
                        members: queue::member_list(&cs.members),
                    };
                    drop(cs);
                    self.with_queue(&channel.queue, |qs| {
                        qs.open.insert(sid.clone(), open.clone());
                    });
                }
            }
        }
        for (identity, sid, body) in snapshot.drafts {
            if let Some(identity) = self.identities.get(&identity).map(|i| i.clone()) {
                let mut state = identity.lock();
                if state.channels.contains(&sid) {
                    state.drafts.insert(sid, body);
                }
            }
        }
        let anonymous = self.identities.iter().filter(|i| i.anonymous).count();
        self.anonymous_identities
            .store(anonymous, Ordering::Relaxed);
        tracing::info!(
            identities = self.identities.len(),
            channels = self.channels.len(),
            "restored state from the store"
        );
    }

    /// Messages a channel keeps in memory.
    pub fn history_window(&self) -> usize {
        self.config.history.window()
    }

    /// Queues a write; returns its ticket (`None` without a store). A write
    /// that cannot be queued is logged: the caller checked for room first.
    pub fn persist(&self, op: Op, deliver: Option<Arc<Channel>>) -> Option<u64> {
        let store = self.store.as_ref()?;
        match store.submit(op, deliver) {
            Ok(ticket) => Some(ticket),
            Err(e) => {
                tracing::error!(error = %e, "a write could not be queued");
                None
            }
        }
    }

    /// Persists an identity's state.
    pub fn save_identity(&self, identity: &Identity, state: &IdentityState) {
        if self.store.is_some() {
            self.persist(
                Op::SaveIdentity(IdentityRow {
                    id: identity.id.clone(),
                    role: identity.role,
                    anonymous: identity.anonymous,
                    expanded: state.expanded,
                    engagement: state
                        .engagement
                        .as_ref()
                        .map(|e| (e.channel_sid.clone(), e.started_at.clone())),
                }),
                None,
            );
        }
    }

    pub fn next_session_key(&self) -> SessionKey {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn outbox_limits(&self) -> OutboxLimits {
        let l = &self.config.limits;
        OutboxLimits {
            frames: l.outbox_frames,
            bytes: l.outbox_bytes,
            typing_frames: l.outbox_typing_frames,
        }
    }

    /// The identity behind a principal, made on first sight. An identity's
    /// role is fixed: a token naming it with another role is refused.
    pub fn identity_for(&self, principal: &Principal) -> Result<Arc<Identity>, ActionError> {
        let identity = match self
            .identities
            .entry(Arc::from(principal.identity.as_str()))
        {
            dashmap::Entry::Occupied(existing) => existing.get().clone(),
            dashmap::Entry::Vacant(vacant) => {
                // Anyone can mint anonymous identities by reconnecting; each
                // is kept until the reaper's idle TTL, so their number is
                // capped (token identities are the operator's to bound).
                if principal.anonymous {
                    let cap = self.config.identities.max_anonymous;
                    if self.anonymous_identities.load(Ordering::Relaxed) >= cap {
                        return Err(ActionError::RateLimited(format!(
                            "the broker holds its maximum of {cap} anonymous identities; retry later"
                        )));
                    }
                    self.anonymous_identities.fetch_add(1, Ordering::Relaxed);
                }
                vacant
                    .insert(Arc::new(Identity::new(
                        Arc::from(principal.identity.as_str()),
                        principal.role,
                        principal.anonymous,
                    )))
                    .clone()
            }
        };
        if identity.role != principal.role {
            return Err(ActionError::Unauthorized(format!(
                "identity {:?} is {}, not {}",
                principal.identity,
                identity.role.with_article(),
                principal.role.with_article()
            )));
        }
        Ok(identity)
    }

    /// A service identity the broker acts as (configured `after` listeners).
    pub fn service_identity(&self, name: &str) -> Result<Arc<Identity>, ActionError> {
        self.identity_for(&Principal {
            identity: name.to_owned(),
            role: Role::Service,
            anonymous: false,
        })
    }

    pub fn channel(&self, sid: &str) -> Option<Arc<Channel>> {
        self.channels.get(sid).map(|c| c.clone())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    /// Runs `f` on a live queue, creating it when missing. Retries when the
    /// queue found was closed between lookup and lock.
    pub fn with_queue<R>(&self, name: &str, f: impl Fn(&mut queue::QueueState) -> R) -> R {
        loop {
            let queue = self
                .queues
                .entry(Arc::from(name))
                .or_insert_with(|| Arc::new(Queue::new(Arc::from(name))))
                .clone();
            let mut state = queue.lock();
            if !state.closed {
                return f(&mut state);
            }
        }
    }

    /// Drops a queue nobody watches and nothing waits in.
    pub fn drop_queue_if_abandoned(&self, queue: &Queue, state: &mut queue::QueueState) {
        if state.is_abandoned() && !state.closed {
            state.closed = true;
            self.queues.remove(&queue.name);
        }
    }

    /// Ends a channel with no member and no observer. With a store it
    /// leaves memory (its transcript stays on disk until the ended
    /// retention passes); without one it stays in memory, closed, for that
    /// long.
    pub fn drop_channel_if_abandoned(&self, channel: &Channel, state: &mut ChannelState) {
        if state.is_abandoned() && !state.closed {
            state.closed = true;
            self.retire_channel(channel, state);
        }
    }

    /// Records that a closed channel has ended: its transcript is kept for
    /// the ended retention (on disk with a store, in memory without).
    fn retire_channel(&self, channel: &Channel, state: &mut ChannelState) {
        state.ended_at = Some(Instant::now());
        if self.store.is_some() {
            self.persist(
                Op::EndChannel {
                    sid: channel.sid.clone(),
                    ended_ms: Utc::now().timestamp_millis(),
                },
                None,
            );
            self.channels.remove(&channel.sid);
        }
    }

    /// Ends an engagement for everyone (`EndEngagement`, the HTTP API's
    /// "end"): the channel stops taking members and messages at once, then
    /// every member leaves with `memberLeft {reason: "ended"}` and gets
    /// `engagementEnded {channelSid, reason}` on all its sessions; the
    /// customer is back in pre-engagement and the queue hears of it.
    pub fn end_engagement(&self, channel_sid: &str, reason: &str) -> Result<(), ActionError> {
        let not_found = || ActionError::NotFound(format!("no open channel {channel_sid}"));
        let channel = self.channel(channel_sid).ok_or_else(not_found)?;
        let members: Vec<Arc<str>> = {
            let mut cs = channel.lock();
            if cs.closed {
                return Err(not_found());
            }
            // Closed first: from here on nobody joins or posts, so the
            // member list taken now is the final one.
            cs.closed = true;
            cs.members.keys().cloned().collect()
        };
        for id in members {
            let Some(identity) = self.identities.get(&id).map(|i| i.clone()) else {
                continue;
            };
            let mut state = identity.lock();
            match self.remove_member(
                &identity,
                &mut state,
                channel_sid,
                LeaveReason::Ended,
                reason,
            ) {
                // The customer's own engagement: remove_member told its
                // sessions and the queue.
                Ok(true) => {}
                Ok(false) => state.push(
                    &Push::new(
                        "engagementEnded",
                        &EngagementEnded {
                            channel_sid,
                            reason,
                        },
                    ),
                    None,
                ),
                Err(_) => {} // left in the meantime
            }
        }
        let mut cs = channel.lock();
        if cs.ended_at.is_none() {
            self.retire_channel(&channel, &mut cs);
        }
        Ok(())
    }

    /// Tells the queue's subscribers that an open engagement's members
    /// changed (`engagementUpdated`, so consoles can tell waiting
    /// engagements from picked-up ones). Called under the channel lock.
    pub fn members_changed(&self, channel: &Channel, state: &ChannelState) {
        let Some(queue) = self.queue(&channel.queue) else {
            return;
        };
        let mut qs = queue.lock();
        let members = queue::member_list(&state.members);
        let Some(open) = qs.open.get_mut(&channel.sid) else {
            return;
        };
        open.members = members.clone();
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Updated<'a> {
            channel_sid: &'a str,
            members: &'a [queue::Member],
        }
        let update = Updated {
            channel_sid: &channel.sid,
            members: &members,
        };
        qs.broadcast(&Push::new("engagementUpdated", &update));
    }

    /// Pushes to `session` every message of the channel after `last_seen`,
    /// before anything newer can reach it (the caller holds the channel lock
    /// and has just made the session a recipient). Returns `false`, pushing
    /// nothing, when history no longer reaches back that far or the gap is
    /// larger than a replay may be (the client should page with
    /// `GetMessages`).
    pub fn replay(
        &self,
        channel: &Channel,
        state: &ChannelState,
        session: &SessionHandle,
        last_seen: i64,
    ) -> bool {
        let from = (last_seen + 1).max(0) as u64;
        if from >= state.delivered_next {
            return true;
        }
        if state.delivered_next - from > self.config.history.max_replay {
            return false;
        }
        let window_start = state.history_start();
        let older = if from >= window_start {
            Vec::new()
        } else {
            let Some(store) = &self.store else {
                return false;
            };
            // Older than the memory window: read the gap from disk. Rare,
            // and bounded by `max_replay`.
            match store.messages(&channel.sid, from, window_start, usize::MAX) {
                Ok(older)
                    if older.first().map(|m| m.index) == Some(from)
                        && older.len() as u64 == window_start - from =>
                {
                    older.into_iter().map(Arc::new).collect()
                }
                Ok(_) => return false,
                Err(e) => {
                    tracing::error!(error = %e, "recovery read failed");
                    return false;
                }
            }
        };
        let replay: Vec<&Arc<StoredMessage>> = older
            .iter()
            .chain(state.window_from(from.max(window_start)))
            .collect();
        // Every index from `from` up to the newest, once each: a gap (a
        // range the store lost and the operator accepted losing) means
        // history does not reach back, whatever is on either side of it.
        let contiguous = replay.len() as u64 == state.delivered_next - from
            && replay
                .iter()
                .enumerate()
                .all(|(i, m)| m.index == from + i as u64);
        if !contiguous {
            return false;
        }
        let bytes: usize = replay.iter().map(|m| m.body.len() + 256).sum();
        if bytes > self.config.limits.outbox_bytes {
            return false;
        }
        for message in replay {
            session.push_replay(&Push::new("messageAdded", &**message));
        }
        true
    }

    /// One retention pass: trims in-memory windows by age, forgets ended
    /// channels past their retention, and queues one slice of disk purge.
    pub fn purge(&self) {
        let history = &self.config.history;
        let age_cutoff = Utc::now().timestamp_millis() - (history.max_age_secs as i64) * 1000;
        let ended_retention = Duration::from_secs(history.ended_retention_secs);
        let channels: Vec<Arc<Channel>> = self.channels.iter().map(|c| c.clone()).collect();
        for channel in channels {
            let mut cs = channel.lock();
            cs.trim_history(age_cutoff);
            if cs.ended_at.is_some_and(|t| t.elapsed() >= ended_retention) {
                self.channels.remove(&channel.sid);
            }
        }
        self.purge_store();
    }

    /// Queues one bounded slice of disk retention. Called by every
    /// retention pass, and more often while the last slice left work
    /// behind, so that retention keeps up with a busy broker without any
    /// one slice holding commits up for long.
    pub fn purge_store(&self) {
        let history = &self.config.history;
        let now_ms = Utc::now().timestamp_millis();
        let ended_retention = Duration::from_secs(history.ended_retention_secs);
        if let Some(store) = &self.store {
            if store.has_room() {
                self.persist(
                    Op::Purge(Retention {
                        max_messages: history.max_messages,
                        older_than_ms: now_ms - (history.max_age_secs as i64) * 1000,
                        ended_before_ms: now_ms - ended_retention.as_millis() as i64,
                    }),
                    None,
                );
            }
        }
    }

    /// Attaches a session to its identity (and the identity's channels) and
    /// returns the identity's state for the `Connect` result. For each
    /// channel in `recover`, the messages after the given index are pushed
    /// to the session before any newer push of that channel.
    pub fn attach_session(
        &self,
        principal: &Principal,
        session: &Arc<SessionHandle>,
        recover: &HashMap<String, i64>,
    ) -> Result<Attached, ActionError> {
        loop {
            let identity = self.identity_for(principal)?;
            let mut state = identity.lock();
            if state.removed {
                continue; // the reaper got it between lookup and lock
            }
            let max = self.config.admission.max_sessions_per_identity;
            if state.sessions.len() >= max {
                return Err(ActionError::RateLimited(format!(
                    "identity {} already has {max} sessions (admission.max_sessions_per_identity)",
                    identity.id
                )));
            }
            state.sessions.push(session.clone());
            state.idle_since = None;
            let mut recovered: HashMap<String, bool> =
                recover.keys().map(|sid| (sid.clone(), false)).collect();
            for sid in &state.channels {
                if let Some(channel) = self.channel(sid) {
                    let mut channel_state = channel.lock();
                    if !channel_state.closed {
                        channel_state.add_member_session(session, &identity.id);
                        if let Some(last_seen) = recover.get(&**sid) {
                            let ok = self.replay(&channel, &channel_state, session, *last_seen);
                            recovered.insert(sid.to_string(), ok);
                        }
                    }
                }
            }
            session.set_identity(identity.id.clone());
            let mut snapshot = state.snapshot();
            if let Some(engagement) = &state.engagement {
                if let Some(channel) = self.channel(&engagement.channel_sid) {
                    // Who is in the chat and how far it has gone, so a new
                    // tab can rebuild it (an extension of the contract's
                    // `{channelSid, startedAt}`).
                    let cs = channel.lock();
                    snapshot["engagement"]["members"] =
                        serde_json::json!(queue::member_list(&cs.members));
                    snapshot["engagement"]["lastIndex"] = (cs.delivered_next as i64 - 1).into();
                }
            }
            drop(state);
            return Ok(Attached {
                snapshot,
                recovered,
            });
        }
    }

    /// Removes every trace of a closed session.
    pub fn detach_session(&self, session: &SessionHandle) {
        self.sessions.remove(&session.key);
        if let Some(id) = session.identity() {
            if let Some(identity) = self.identities.get(&id).map(|i| i.clone()) {
                let mut state = identity.lock();
                state.sessions.retain(|s| s.key != session.key);
                if state.sessions.is_empty() {
                    state.idle_since = Some(Instant::now());
                }
                for sid in &state.channels {
                    if let Some(channel) = self.channel(sid) {
                        channel.lock().remove_member_session(session.key);
                    }
                }
            }
        }
        for name in session.take_subscriptions() {
            self.unsubscribe(session.key, &name);
        }
    }

    /// Stops a session observing a channel or queue.
    pub fn unsubscribe(&self, key: SessionKey, name: &str) {
        if name.starts_with(queue::QUEUE_PREFIX) {
            if let Some(queue) = self.queue(name) {
                let mut state = queue.lock();
                state.subscribers.remove(&key);
                self.drop_queue_if_abandoned(&queue, &mut state);
            }
        } else if let Some(channel) = self.channel(name) {
            let mut state = channel.lock();
            state.remove_subscriber(key);
            self.drop_channel_if_abandoned(&channel, &mut state);
        }
    }

    /// Takes `identity` (all its sessions) out of a channel in one step:
    /// under the channel lock it stops being a member, its typing ends, and
    /// exactly one `memberLeft` is published, ordered after every message
    /// already accepted; its sessions stop receiving when that `memberLeft`
    /// is delivered. A message the identity sends afterwards finds it no
    /// longer a member. Ends the identity's engagement when this was it
    /// (the queue and the identity's sessions are told, with
    /// `ended_reason`); returns whether it did.
    pub fn remove_member(
        &self,
        identity: &Identity,
        state: &mut IdentityState,
        channel_sid: &str,
        reason: LeaveReason,
        ended_reason: &str,
    ) -> Result<bool, ActionError> {
        if !state.channels.remove(channel_sid) {
            return Err(ActionError::NotAMember(channel_sid.to_owned()));
        }
        state.drafts.remove(channel_sid);
        let is_engagement = state
            .engagement
            .as_ref()
            .is_some_and(|e| &*e.channel_sid == channel_sid);
        if is_engagement {
            state.engagement = None;
        }
        let Some(channel) = self.channel(channel_sid) else {
            return Ok(is_engagement);
        };
        let mut cs = channel.lock();
        if cs.members.remove(&identity.id).is_some() {
            cs.end_typing(channel_sid, &identity.id);
            let ticket = self.persist(
                Op::RemoveMember {
                    sid: channel.sid.clone(),
                    identity: identity.id.clone(),
                },
                Some(channel.clone()),
            );
            cs.publish(
                channel_sid,
                ticket,
                Event::MemberLeft {
                    identity: identity.id.clone(),
                    reason: reason.as_str(),
                },
                &self.metrics,
            );
            if !is_engagement && !cs.closed {
                self.members_changed(&channel, &cs);
            }
            self.drop_channel_if_abandoned(&channel, &mut cs);
        }
        drop(cs);
        if is_engagement {
            self.save_identity(identity, state);
            let ended = EngagementEnded {
                channel_sid,
                reason: ended_reason,
            };
            let push = Push::new("engagementEnded", &ended);
            if let Some(queue) = self.queue(&channel.queue) {
                let mut qs = queue.lock();
                qs.open.remove(channel_sid);
                qs.broadcast(&push);
                self.drop_queue_if_abandoned(&queue, &mut qs);
            }
            if reason == LeaveReason::Restart {
                #[derive(Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Restarted<'a> {
                    channel_sid: &'a str,
                }
                state.push(
                    &Push::new("engagementRestarted", &Restarted { channel_sid }),
                    None,
                );
            } else {
                state.push(&push, None);
            }
        }
        Ok(is_engagement)
    }

    /// Forgets identities with no session, no membership and no engagement
    /// that have been idle longer than `ttl`. Skips any identity whose lock is
    /// busy: it is in use, and the next sweep will see it.
    pub fn reap_identities(&self, ttl: Duration) -> usize {
        let before = self.identities.len();
        self.identities.retain(|_, identity| {
            let Some(mut state) = identity.try_lock() else {
                return true;
            };
            let idle = state.sessions.is_empty()
                && state.channels.is_empty()
                && state.engagement.is_none()
                && state.idle_since.is_some_and(|t| t.elapsed() >= ttl);
            if idle {
                state.removed = true;
                if identity.anonymous {
                    self.anonymous_identities.fetch_sub(1, Ordering::Relaxed);
                }
            }
            !idle
        });
        before - self.identities.len()
    }
}

/// Now, as the contract's RFC 3339 UTC string (millisecond precision).
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
