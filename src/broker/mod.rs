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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use dashmap::DashMap;
use serde::Serialize;

use crate::actions::ActionRegistry;
use crate::auth::{Authenticator, Principal, Role};
use crate::business_hours::BusinessHours;
use crate::codec::Push;
use crate::config::{Config, ConfigError};
use crate::error::ActionError;
use crate::metrics::Metrics;
use crate::outbox::OutboxLimits;

use channel::{Channel, ChannelState};
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
    next_session: AtomicU64,
}

/// Why a member left a channel, as pushed in `memberLeft.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Left,
    Restart,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Restart => "restart",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberLeft<'a> {
    channel_sid: &'a str,
    identity: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EngagementEnded<'a> {
    channel_sid: &'a str,
    reason: &'a str,
}

impl Broker {
    /// A broker with `actions` (built-ins plus whatever the embedding code
    /// registered) and the configuration's `[actions]` added to them.
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
        let auth = Authenticator::from_config(&config).map_err(|message| ConfigError::Invalid {
            section: "[jwt]",
            message,
        })?;
        Ok(Broker {
            config: Arc::new(config),
            auth,
            actions,
            business_hours,
            metrics: Arc::new(Metrics::default()),
            identities: DashMap::new(),
            channels: DashMap::new(),
            queues: DashMap::new(),
            sessions: DashMap::new(),
            next_session: AtomicU64::new(1),
        })
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
        let identity = self
            .identities
            .entry(Arc::from(principal.identity.as_str()))
            .or_insert_with(|| {
                Arc::new(Identity::new(
                    Arc::from(principal.identity.as_str()),
                    principal.role,
                    principal.anonymous,
                ))
            })
            .clone();
        if identity.role != principal.role {
            return Err(ActionError::Unauthorized(format!(
                "identity {:?} is a {}, not a {}",
                principal.identity, identity.role, principal.role
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

    /// Drops a channel with no member and no observer.
    pub fn drop_channel_if_abandoned(&self, channel: &Channel, state: &mut ChannelState) {
        if state.is_abandoned() && !state.closed {
            state.closed = true;
            self.channels.remove(&channel.sid);
        }
    }

    /// Attaches a session to its identity (and the identity's channels) and
    /// returns the identity's state for the `Connect` result.
    pub fn attach_session(
        &self,
        principal: &Principal,
        session: &Arc<SessionHandle>,
    ) -> Result<(Arc<Identity>, serde_json::Value), ActionError> {
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
            for sid in &state.channels {
                if let Some(channel) = self.channel(sid) {
                    let mut channel_state = channel.lock();
                    if !channel_state.closed {
                        channel_state.add_member_session(session, &identity.id);
                    }
                }
            }
            session.set_identity(identity.id.clone());
            let snapshot = state.snapshot();
            drop(state);
            return Ok((identity, snapshot));
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
    /// under the channel lock its typing ends, its sessions stop receiving,
    /// and exactly one `memberLeft` goes to those who remain. A message the
    /// identity sends afterwards finds it no longer a member. Ends the
    /// identity's engagement when this was it.
    pub fn remove_member(
        &self,
        identity: &Identity,
        state: &mut IdentityState,
        channel_sid: &str,
        reason: LeaveReason,
    ) -> Result<(), ActionError> {
        if !state.channels.remove(channel_sid) {
            return Err(ActionError::NotAMember(channel_sid.to_owned()));
        }
        state.drafts.remove(channel_sid);
        if let Some(channel) = self.channel(channel_sid) {
            let mut cs = channel.lock();
            if !cs.closed && cs.members.remove(&identity.id).is_some() {
                cs.end_typing(channel_sid, &identity.id);
                for session in &state.sessions {
                    cs.remove_member_session(session.key);
                }
                let left = MemberLeft {
                    channel_sid,
                    identity: &identity.id,
                    reason: reason.as_str(),
                };
                cs.broadcast(&Push::new("memberLeft", &left), None);
                self.drop_channel_if_abandoned(&channel, &mut cs);
            }
            drop(cs);
            let is_engagement = state
                .engagement
                .as_ref()
                .is_some_and(|e| &*e.channel_sid == channel_sid);
            if is_engagement {
                state.engagement = None;
                let ended = EngagementEnded {
                    channel_sid,
                    reason: reason.as_str(),
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
        }
        Ok(())
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
            }
            !idle
        });
        before - self.identities.len()
    }

    /// Closes every session (graceful shutdown).
    pub fn close_all_sessions(&self, reason: crate::outbox::CloseReason) {
        let sessions: Vec<_> = self.sessions.iter().map(|s| s.value().clone()).collect();
        for session in sessions {
            session.outbox.close(reason);
        }
    }
}

/// Now, as the contract's RFC 3339 UTC string (millisecond precision).
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
