//! The shared engine: several nodes on one Redis acting as one broker.
//!
//! Every state change is one Lua script (see `scripts.rs`): its checks,
//! counters, appends and the publish of its events run as one atomic step
//! in Redis, so two nodes never hand out the same index and a message
//! either lands before a `memberLeft` or finds its author gone. An
//! operation's result is [`Pending::Remote`]: it stands once Redis has
//! answered the script (with `appendfsync always`, once it is on disk), or
//! is `unavailable` after `[cluster] command_timeout_ms`: each call carries
//! that moment as its deadline, in Redis's time (`clock.rs`), and a script
//! Redis runs after it does nothing.
//!
//! A node keeps only caches (delivery's views) and its own sessions. What
//! it holds in Redis for them (session counts, observers) is counted per
//! node and ignored once the node's heartbeat key expires, so a node that
//! dies leaves nothing lingering. Events reach this node's sessions through
//! [`fanout`]: per topic, in sequence order, gaps filled from the topic's
//! event log.

mod clock;
mod fanout;
mod outbox;
mod scripts;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    Actor, Attached, ChannelReport, EngagementRef, EngagementSnapshot, Engine, EngineError,
    HistoryPage, Housekeeping, IdentityReport, IdentitySnapshot, Joined, NewMessage, Outcome,
    Pending, Posted, QueuePage, Started, WidgetChange, WidgetState,
};
use crate::auth::{Principal, Role};
use crate::config::{Config, ConfigError};
use crate::delivery::session::SessionHandle;
use crate::delivery::{Added, Delivery};
use crate::event::QUEUE_PREFIX;
use crate::event::{member_list, LeaveReason, Member, QueuedEngagement, SessionKey, Topic};
use crate::metrics::Metrics;
use crate::store::{Attributes, StoredMessage};
use clock::RedisClock;
use fanout::{Apply, Fanout, FollowUp};
use scripts::Scripts;
use wire::WireMember;

/// Most entries (a dead node's identities and observed channels, overdue
/// typing periods) one heartbeat's reap handles, so that one call stays
/// short however many sessions a dead node had.
const REAP_BUDGET: usize = 1000;

/// One age-retention call's bounds (channel logs looked at, log entries
/// read), so that it stays short however long the logs are; a pass is as
/// many calls as it takes.
const PURGE_KEYS: usize = 100;
const PURGE_ROWS: usize = 2000;

/// A call whose answer from Redis never came (a `SendMessage`, or a state
/// change that records its answer) is asked after until this long after
/// it was sent (the contract's 2 s, less a margin for the reply's way
/// out); while the connection is being made again, every pause.
const SETTLE_WITHIN: Duration = Duration::from_millis(1800);
const SETTLE_PAUSE: Duration = Duration::from_millis(10);

/// A followed topic no local session has needed for this long is dropped.
const IDLE_FEED: Duration = Duration::from_secs(60);

pub(crate) struct RedisEngine {
    config: Arc<Config>,
    delivery: Arc<Delivery>,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    /// Redis's clock as this node knows it: each call's deadline.
    clock: Arc<RedisClock>,
    fanout: Arc<Fanout>,
    /// This node's id (random per process): its heartbeat key and its
    /// entries in per-node counts.
    node: Arc<str>,
    url: Arc<str>,
    /// The last command (or heartbeat) reached Redis.
    up: Arc<AtomicBool>,
    stop: CancellationToken,
    me: Weak<RedisEngine>,
    /// Post-event webhooks' side of the engine.
    webhooks: outbox::Outbox,
    /// The typing periods this node began and times, by author and channel
    /// (the period's token, and what stops its timer): a message from the
    /// author through this node ends the period in Redis, so its timer has
    /// nothing left to do.
    typing_timers: Arc<TypingTimers>,
    /// An age-retention pass of this node is under way.
    purging: Arc<AtomicBool>,
    /// Messages are counted by the node that accepted them.
    metrics: Arc<Metrics>,
}

type TypingTimers = dashmap::DashMap<(Arc<str>, Arc<str>), (String, CancellationToken)>;

/// A script's refusal: its code and detail (`E:<code>[:<detail>]`).
struct Refused(String);

/// A call that got no answer it could use.
struct Failed {
    error: EngineError,
    /// The call was sent and no answer came (none in time, or the
    /// connection dropped while it waited): it may have run, or run yet,
    /// up to its deadline.
    in_doubt: Option<InDoubt>,
}

#[derive(Clone)]
struct InDoubt {
    /// Redis's time (unix ms) after which the call does nothing.
    deadline: u64,
    /// When its node gave up or would have (about that moment on the
    /// node's clock).
    give_up: Instant,
    /// When it was sent.
    sent: Instant,
    /// A recorded function's call id (`settle_call`).
    call_id: Option<String>,
}

/// A channel's state and its topic's position, read in one step.
#[derive(Debug, Deserialize)]
struct ChannelState {
    sid: String,
    seq: u64,
    next: u64,
    closed: bool,
    exists: bool,
    #[serde(deserialize_with = "wire::list")]
    mem: Vec<WireMember>,
}

#[derive(Deserialize)]
struct AttachState {
    seq: u64,
    x: bool,
    eng: String,
    eat: String,
    #[serde(deserialize_with = "wire::list")]
    chans: Vec<ChannelState>,
    #[serde(deserialize_with = "wire::list")]
    drafts: Vec<String>,
}

#[derive(Deserialize)]
struct QueueState {
    seq: u64,
    #[serde(deserialize_with = "wire::list")]
    open: Vec<OpenEngagement>,
}

#[derive(Deserialize)]
struct OpenEngagement {
    sid: String,
    id: String,
    form: String,
    at: String,
    #[serde(deserialize_with = "wire::list")]
    mem: Vec<WireMember>,
}

/// A message as the post script appends it, after its index.
#[derive(Serialize)]
struct MessageTail<'a> {
    sid: &'a str,
    a: &'a str,
    r: Role,
    b: &'a str,
    at: &'a Attributes,
    d: &'a str,
    /// The `post` call's id (random), so that a call whose answer never
    /// came can be looked for (`settle`).
    c: &'a str,
    /// Last: age retention and `settle` read it at the end of the event.
    ms: i64,
}

fn members(list: &[WireMember]) -> Vec<(Arc<str>, Role)> {
    list.iter()
        .map(|m| (Arc::from(m.identity.as_str()), m.role))
        .collect()
}

fn unavailable(url: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!(
        "the shared engine (Redis at {url}) cannot be reached ({why}); retry later"
    ))
}

impl RedisEngine {
    /// Connects (refusing to start when Redis cannot be reached, naming
    /// the URL), registers this node and starts its pub/sub loop and
    /// heartbeat. Returns the engine and the resume-token secret every
    /// node shares.
    pub(crate) fn open(
        config: Arc<Config>,
        delivery: Arc<Delivery>,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<RedisEngine>, Vec<u8>), ConfigError> {
        let cluster = &config.cluster;
        let url = cluster.redis_url.clone().unwrap_or_default();
        let connect_timeout = Duration::from_millis(cluster.connect_timeout_ms);
        let command_timeout = Duration::from_millis(cluster.command_timeout_ms);
        let unreachable = |e: redis::RedisError| {
            ConfigError::Cluster(format!("cannot reach Redis at {url}: {e}"))
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| ConfigError::Cluster(format!("invalid [cluster] redis_url {url}: {e}")))?;
        let node: Arc<str> = Arc::from(crate::ids::new_id().as_str());
        let prefix = cluster.key_prefix.clone();
        let heartbeat = Duration::from_millis(cluster.heartbeat_ms);
        let scripts = Arc::new(Scripts::new(&scripts::Settings {
            prefix: &cluster.key_prefix,
            event_log_len: cluster.event_log_len,
            ended_retention_secs: config.history.ended_retention_secs.max(1),
            webhook_events_max: if config.webhooks.post.is_empty() {
                0
            } else {
                cluster.webhook_events_max
            },
            history_len: config.history.max_messages,
        }));
        // At start, synchronously: a node that cannot reach Redis does not
        // start as if it could.
        let (secret, clock): (String, RedisClock) = {
            let mut sync = client
                .get_connection_with_timeout(connect_timeout)
                .map_err(unreachable)?;
            sync.set_read_timeout(Some(command_timeout))
                .map_err(unreachable)?;
            sync.set_write_timeout(Some(command_timeout))
                .map_err(unreachable)?;
            let key = format!("{prefix}:resume_secret");
            redis::cmd("SET")
                .arg(&key)
                .arg(format!("{:064x}", rand::random::<u128>()))
                .arg("NX")
                .exec(&mut sync)
                .map_err(unreachable)?;
            redis::cmd("SET")
                .arg(format!("{prefix}:node:{node}"))
                .arg(1)
                .arg("PX")
                .arg(heartbeat.as_millis() as u64 * 3)
                .exec(&mut sync)
                .map_err(unreachable)?;
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(&scripts.library)
                .exec(&mut sync)
                .map_err(|e| {
                    ConfigError::Cluster(format!(
                        "Redis at {url} refused the broker's function library (Redis 7 or later is needed): {e}"
                    ))
                })?;
            let secret = redis::cmd("GET")
                .arg(&key)
                .query(&mut sync)
                .map_err(unreachable)?;
            let sent = Instant::now();
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query(&mut sync).map_err(unreachable)?;
            (secret, RedisClock::new(sent, clock::redis_ms(secs, micros)))
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(unreachable)?;
        let webhooks = outbox::Outbox::new(client.clone(), connect_timeout, command_timeout);
        let fanout = Fanout::new(
            prefix,
            node.to_string(),
            client,
            conn.clone(),
            delivery.clone(),
            connect_timeout,
            command_timeout,
        );
        let engine = Arc::new_cyclic(|me| RedisEngine {
            config: config.clone(),
            delivery,
            conn,
            scripts,
            clock: Arc::new(clock),
            fanout: fanout.clone(),
            node,
            url: Arc::from(url.as_str()),
            up: Arc::new(AtomicBool::new(true)),
            stop: CancellationToken::new(),
            me: me.clone(),
            webhooks,
            typing_timers: Arc::default(),
            purging: Arc::default(),
            metrics,
        });
        let apply: Weak<dyn Apply> = Arc::downgrade(&engine) as Weak<dyn Apply>;
        fanout.set_engine(apply);
        let stop = engine.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = fanout.run() => {}
            }
        });
        tokio::spawn(Self::heartbeat(Arc::downgrade(&engine), heartbeat));
        tracing::info!(redis = %url, node = %engine.node, "cluster node registered");
        Ok((engine, secret.into_bytes()))
    }

    /// Finds out whether a call whose answer never came ran, so that its
    /// caller is told the truth: `pick` is the function that looks
    /// (`settle`: a message in its channel's log; `settle_call`: a
    /// recorded answer), with `args`; its answer when the call ran,
    /// `unavailable` (nothing was done) once the call's deadline has
    /// passed without it. Asks at once, then from when the call's node
    /// gave up (or would have), until `SETTLE_WITHIN` after the call was
    /// sent; gives up at once when Redis refuses connections. A call
    /// still in doubt then is answered `error` (`unavailable`), as before.
    fn settle(
        &self,
        pick: fn(&Scripts) -> &scripts::Function,
        args: Vec<String>,
        doubt: InDoubt,
        error: EngineError,
    ) -> impl Future<Output = Outcome<Result<String, Refused>>> + Send + 'static {
        let until = doubt.sent + SETTLE_WITHIN;
        let engine = self.me.clone();
        async move {
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let Some(engine) = engine.upgrade().filter(|_| !left.is_zero()) else {
                    break;
                };
                let pause = match engine.invoke(pick, args.clone(), left).await {
                    Ok(Ok(answer)) if answer == "none" => {
                        return Err(unavailable(&engine.url, "the call did nothing"));
                    }
                    // Not done, and it still could be: ask again once
                    // Redis's clock has passed its deadline.
                    Ok(Ok(answer)) if answer == "wait" => doubt
                        .give_up
                        .saturating_duration_since(Instant::now())
                        .max(SETTLE_PAUSE),
                    Ok(answer) => return Ok(answer),
                    Err(failed) if failed.in_doubt.is_none() => break,
                    // The connection being made again.
                    Err(_) => SETTLE_PAUSE,
                };
                tokio::time::sleep(pause).await;
            }
            tracing::warn!("a call's outcome is unknown (Redis unreachable); answered unavailable");
            Err(error)
        }
    }

    /// Age retention: one pass over every channel's log in Redis (by one
    /// node of the cluster each period; see `PURGE` in `scripts.rs`), and
    /// the messages this node holds for recovery. A pass still under way
    /// when the next period comes is left to finish.
    fn purge(&self) {
        let max_age_ms = self.config.history.max_age_secs.saturating_mul(1000);
        let cutoff = Utc::now().timestamp_millis() - max_age_ms.min(i64::MAX as u64) as i64;
        self.delivery.trim_windows(cutoff);
        if self.purging.swap(true, Ordering::AcqRel) {
            return;
        }
        // The turn lasts a little less than a period, so that the node
        // that took it finds it free again at its next tick.
        let turn_ms = self.config.history.purge_interval_secs * 900;
        let engine = self.me.clone();
        let purging = self.purging.clone();
        tokio::spawn(async move {
            let mut cursor = "0".to_owned();
            while let Some(engine) = engine.upgrade().filter(|e| !e.stop.is_cancelled()) {
                let args = vec![
                    cursor,
                    max_age_ms.to_string(),
                    PURGE_KEYS.to_string(),
                    PURGE_ROWS.to_string(),
                    turn_ms.to_string(),
                ];
                match engine.call(|s| &s.purge, args).await {
                    Ok(Ok(next)) if next != "0" && next != "busy" => cursor = next,
                    Ok(Ok(_)) => break,
                    Ok(Err(Refused(code))) => {
                        tracing::warn!(%code, "age retention refused; next period");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "age retention interrupted; next period");
                        break;
                    }
                }
            }
            purging.store(false, Ordering::Release);
        });
    }

    /// Says this node is alive (its per-node counts stay counted), tells
    /// readiness whether Redis answers, and reads Redis's clock again (for
    /// the calls' deadlines).
    async fn heartbeat(engine: Weak<RedisEngine>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if engine.stop.is_cancelled() {
                return;
            }
            let mut conn = engine.conn.clone();
            let key = format!("{}:node:{}", engine.config.cluster.key_prefix, engine.node);
            let ttl = every.as_millis() as u64 * 3;
            let timeout = Duration::from_millis(engine.config.cluster.command_timeout_ms);
            let sent = Instant::now();
            let time = tokio::time::timeout(
                timeout,
                redis::cmd("TIME").query_async::<(u64, u64)>(&mut conn),
            )
            .await;
            if let Ok(Ok((secs, micros))) = time {
                engine
                    .clock
                    .read(sent, Instant::now(), clock::redis_ms(secs, micros));
            }
            let set = tokio::time::timeout(
                timeout,
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("PX")
                    .arg(ttl)
                    .exec_async(&mut conn),
            )
            .await;
            let ok = matches!(set, Ok(Ok(())));
            if ok {
                // What dead nodes held, and typing periods nobody ended.
                let reaped = engine
                    .call(
                        |s| &s.reap,
                        vec![
                            engine.config.identities.idle_ttl_secs.max(1).to_string(),
                            ttl.to_string(),
                            REAP_BUDGET.to_string(),
                        ],
                    )
                    .await;
                if let Err(e) = reaped {
                    tracing::debug!(error = %e, "reaping dead nodes' state failed; next heartbeat");
                }
                let now = Utc::now().timestamp_millis().max(0) as u64;
                let probe = tokio::time::timeout(
                    timeout,
                    redis::cmd("PUBLISH")
                        .arg(engine.fanout.probe_channel())
                        .arg(now)
                        .query_async::<i64>(&mut conn),
                )
                .await;
                if let Ok(Ok(receivers)) = probe {
                    engine.fanout.probed(receivers, now, every * 3);
                }
            }
            if ok != engine.up.swap(ok, Ordering::Relaxed) {
                if ok {
                    tracing::info!(redis = %engine.url, "Redis reachable again");
                } else {
                    tracing::warn!(redis = %engine.url, "Redis unreachable");
                }
            }
        }
    }

    /// Runs a function with the common arguments; its answer, a refusal,
    /// or `unavailable` (an error or no answer within the command
    /// timeout). The call carries the moment this node stops waiting for
    /// it, in Redis's time (its deadline, `clock.rs`): a call Redis runs
    /// after that, held up while Redis was blocked or slow, does nothing
    /// (`begin` in `prelude.lua`), so that `unavailable` for a call given
    /// up means that it was not done. A function that records its answer
    /// (`scripts::RECORDED`) and got none is asked after (`settle`): its
    /// recorded answer if it ran, `unavailable` once it no longer can.
    fn call(
        &self,
        pick: fn(&Scripts) -> &scripts::Function,
        args: Vec<String>,
    ) -> impl Future<Output = Outcome<Result<String, Refused>>> + Send + 'static {
        let timeout = Duration::from_millis(self.config.cluster.command_timeout_ms);
        let call = self.invoke(pick, args, timeout);
        let engine = self.me.clone();
        async move {
            let (doubt, error) = match call.await {
                Ok(answer) => return Ok(answer),
                Err(Failed {
                    in_doubt: Some(doubt),
                    error,
                }) if doubt.call_id.is_some() => (doubt, error),
                Err(failed) => return Err(failed.error),
            };
            // A recorded function's lost answer: asked for again.
            let Some(engine) = engine.upgrade() else {
                return Err(error);
            };
            let args = vec![
                doubt.call_id.clone().unwrap_or_default(),
                doubt.deadline.to_string(),
            ];
            let recorded = engine
                .settle(|s| &s.settle_call, args, doubt, error)
                .await?;
            Ok(match recorded {
                Ok(answer) => {
                    let answer = answer.strip_prefix('R').unwrap_or(&answer);
                    match answer.strip_prefix("E:") {
                        Some(code) => Err(Refused(code.to_owned())),
                        None => Ok(answer.to_owned()),
                    }
                }
                Err(refused) => Err(refused),
            })
        }
    }

    /// [`call`](Self::call), waiting at most `timeout`, and saying of a
    /// call that got no answer whether it may have run.
    fn invoke(
        &self,
        pick: fn(&Scripts) -> &scripts::Function,
        args: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Result<String, Refused>, Failed>> + Send + 'static {
        let scripts = self.scripts.clone();
        let mut conn = self.conn.clone();
        let node = pick(&self.scripts).common.then(|| self.node.clone());
        let call_id = pick(&self.scripts)
            .recorded
            .then(|| format!("{:016x}", rand::random::<u64>()));
        let clock = self.clock.clone();
        let up = self.up.clone();
        let url = self.url.clone();
        async move {
            // From when the call is sent (a session's command is polled
            // only at the front of its replies): the node gives up at
            // `give_up`, and the function does nothing from the same
            // moment on.
            let give_up = Instant::now() + timeout;
            let mut deadline = clock.deadline(give_up);
            let build = |deadline: u64| {
                let mut invocation = redis::cmd("FCALL");
                invocation.arg(&pick(&scripts).name).arg(0).arg(deadline);
                if let Some(node) = &node {
                    invocation.arg(&**node);
                }
                if let Some(call_id) = &call_id {
                    invocation.arg(call_id);
                }
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation
            };
            let attempts = async {
                let mut invocation = build(deadline);
                let (mut reloaded, mut corrected) = (false, false);
                loop {
                    let sent = Instant::now();
                    let reply = invocation.query_async::<String>(&mut conn).await;
                    match &reply {
                        Err(e) if !reloaded && e.to_string().contains("Function not found") => {
                            // Redis lost its functions (a new or emptied
                            // instance): load the library again, then run
                            // the call once more.
                            tracing::warn!(
                                "the Redis function library is missing; loading it again"
                            );
                            reloaded = true;
                            let mut load = redis::cmd("FUNCTION");
                            load.arg("LOAD").arg("REPLACE").arg(&scripts.library);
                            if load.exec_async(&mut conn).await.is_err() {
                                return reply;
                            }
                        }
                        Ok(answer) if !corrected && Instant::now() < give_up => {
                            let Some(at) = late(answer).filter(|&at| at > 0) else {
                                return reply;
                            };
                            // Refused as late while this node still waits:
                            // Redis's clock is ahead of what the node read
                            // (it was set forward). Nothing was done; the
                            // call goes again with its deadline from this
                            // answer's time.
                            tracing::warn!(
                                redis = %url,
                                "Redis's clock is ahead of the node's reading of it; reading it again"
                            );
                            corrected = true;
                            clock.correct(sent, at);
                            deadline = clock.deadline(give_up);
                            invocation = build(deadline);
                        }
                        _ => return reply,
                    }
                }
            };
            let outcome =
                tokio::time::timeout_at(tokio::time::Instant::from_std(give_up), attempts).await;
            let failed = |error, in_doubt: bool| Failed {
                error,
                in_doubt: in_doubt.then(|| InDoubt {
                    deadline,
                    give_up,
                    sent: give_up - timeout,
                    call_id: call_id.clone(),
                }),
            };
            match outcome {
                Ok(Ok(reply)) if late(&reply).is_some() => Err(failed(
                    unavailable(&url, "it ran the call after its deadline, and did nothing"),
                    false,
                )),
                Ok(Ok(reply)) => {
                    up.store(true, Ordering::Relaxed);
                    Ok(match reply.strip_prefix("E:") {
                        Some(code) => Err(Refused(code.to_owned())),
                        None => Ok(reply),
                    })
                }
                Ok(Err(e))
                    if e.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                {
                    tracing::error!(error = %e, "a Redis function failed");
                    let error = EngineError::Internal(format!("shared engine script failed: {e}"));
                    Err(failed(error, false))
                }
                Ok(Err(e)) => {
                    up.store(false, Ordering::Relaxed);
                    // Refused a connection: the call was not sent.
                    let in_doubt = !e.is_connection_refusal();
                    Err(failed(unavailable(&url, e), in_doubt))
                }
                Err(_) => {
                    up.store(false, Ordering::Relaxed);
                    Err(failed(unavailable(&url, "no answer in time"), true))
                }
            }
        }
    }

    /// A plain command with the same timeout and error mapping.
    fn query<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> impl Future<Output = Outcome<T>> + Send + 'static {
        let mut conn = self.conn.clone();
        let timeout = Duration::from_millis(self.config.cluster.command_timeout_ms);
        let url = self.url.clone();
        let up = self.up.clone();
        async move {
            match tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => {
                    up.store(false, Ordering::Relaxed);
                    Err(unavailable(&url, e))
                }
                Err(_) => {
                    up.store(false, Ordering::Relaxed);
                    Err(unavailable(&url, "no answer in time"))
                }
            }
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.cluster.key_prefix)
    }

    fn engine(&self) -> Arc<RedisEngine> {
        self.me.upgrade().expect("the engine is alive while called")
    }

    /// Follows a channel from `seq` on, its view seeded with `state`.
    async fn follow_channel(&self, state: &ChannelState, seq: u64) {
        let sid: Arc<str> = Arc::from(state.sid.as_str());
        let delivery = self.delivery.clone();
        let members = members(&state.mem);
        let next = state.next;
        self.fanout
            .follow(&Topic::Channel(sid.clone()), seq, move || {
                delivery.restore_channel(&sid, members, next, Vec::new());
            })
            .await;
    }

    async fn channel_state(&self, sid: &str) -> Outcome<ChannelState> {
        let reply = self
            .call(|s| &s.channel, vec![sid.to_owned()])
            .await?
            .map_err(|Refused(code)| EngineError::Internal(code))?;
        parse(&reply)
    }

    /// Follows a queue (its view seeded with its open engagements).
    async fn follow_queue(&self, queue: &Arc<str>) -> Outcome<()> {
        let topic = Topic::Queue(queue.clone());
        if self.fanout.feed(&topic).is_some() {
            self.fanout.follow(&topic, 0, || {}).await;
            return Ok(());
        }
        let reply = self
            .call(|s| &s.queue, vec![queue.to_string()])
            .await?
            .map_err(|Refused(code)| EngineError::Internal(code))?;
        let state: QueueState = parse(&reply)?;
        let delivery = self.delivery.clone();
        let name = queue.clone();
        self.fanout
            .follow(&topic, state.seq, move || {
                delivery.forget_queue(&name);
                for open in state.open {
                    let mut list: Vec<Member> = open
                        .mem
                        .iter()
                        .map(|m| Member {
                            identity: Arc::from(m.identity.as_str()),
                            role: m.role,
                        })
                        .collect();
                    list.sort();
                    delivery.restore_queued(
                        &name,
                        QueuedEngagement {
                            channel_sid: Arc::from(open.sid),
                            identity: Arc::from(open.id),
                            form_data: serde_json::from_str(&open.form).unwrap_or(Value::Null),
                            started_at: Arc::from(open.at),
                            members: list,
                        },
                    );
                }
            })
            .await;
        Ok(())
    }

    /// Messages `from..to` of a channel from its log (a recovery's part
    /// below delivery's window). The log holds the channel's other events
    /// too; message `i` has a seq above `i`, so the read starts there.
    async fn read_messages(
        &self,
        sid: &str,
        from: u64,
        to: u64,
    ) -> Option<Vec<Arc<StoredMessage>>> {
        let mut messages = Vec::new();
        if from >= to {
            return Some(messages);
        }
        let key = self.key(&format!("ev:c:{sid}"));
        let count = (to - from) as usize + 16;
        let mut start = format!("0-{}", from + 1);
        loop {
            let rows: Vec<(String, Vec<(String, String)>)> = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(count)
                        .clone(),
                )
                .await
                .ok()?;
            let mut done = rows.len() < count;
            for (id, fields) in &rows {
                let seq = id.strip_prefix("0-").and_then(|s| s.parse().ok());
                let message = fields
                    .iter()
                    .find(|(f, _)| f == "e")
                    .and_then(|(_, json)| wire::message(json, seq));
                match message {
                    Some(m) if m.index >= to => {
                        done = true;
                        break;
                    }
                    Some(m) if m.index >= from => messages.push(m),
                    _ => {}
                }
            }
            match rows.last() {
                Some((id, _)) if !done => start = format!("({id}"),
                _ => return Some(messages),
            }
        }
    }

    /// Finishes a session's addition to a channel (a recovery reads what
    /// delivery's window lacks from Redis).
    async fn complete(&self, sid: &str, added: Option<Added>) -> Option<bool> {
        match added? {
            Added::Done(recovered) => recovered,
            Added::Recovering(recovery) => {
                let older = match recovery.older() {
                    Some((from, to)) => self.read_messages(sid, from, to).await,
                    None => Some(Vec::new()),
                };
                Some(recovery.finish(older))
            }
        }
    }

    /// An identity of this node's sessions became a member of `sid` (seen
    /// at `seq` of the channel's topic): its sessions here receive the
    /// channel from there on.
    async fn member_of(&self, identity: Arc<str>, sid: Arc<str>, seq: u64) {
        let sessions = self.delivery.identity_sessions(&identity);
        if sessions.is_empty() {
            return;
        }
        let topic = Topic::Channel(sid.clone());
        if self.fanout.feed(&topic).is_none() {
            match self.channel_state(&sid).await {
                Ok(state) if state.exists => {
                    // Seeded with the state now and replayed from the
                    // membership on: joins and leaves apply as set changes,
                    // and this identity's sessions get every message after
                    // its join.
                    self.follow_channel(&state, seq).await;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(channel = %sid, error = %e, "cannot follow a channel; its sessions catch up on reconnect");
                    return;
                }
            }
        }
        for session in sessions {
            let _ = self.delivery.attach_member(&session, &identity, &sid, None);
        }
    }

    fn common_refusal(actor: &Actor, sid: &str, code: &str) -> EngineError {
        let (code, detail) = code.split_once(':').unwrap_or((code, ""));
        match code {
            "not_a_member" => EngineError::NotAMember(sid.to_owned()),
            "not_found" => EngineError::NotFound(format!("no channel {sid}")),
            "no_channel" => match actor.role {
                Role::Customer => EngineError::NotAMember(sid.to_owned()),
                _ => EngineError::NotFound(format!("no channel {sid}")),
            },
            "full" => EngineError::Full(format!(
                "channel {sid} is full (admission.max_members_per_channel)"
            )),
            "no_engagement" => EngineError::NoEngagement,
            "engaged" => EngineError::AlreadyEngaged {
                channel_sid: detail.to_owned(),
            },
            other => EngineError::Internal(format!("unexpected refusal {other}")),
        }
    }

    fn remote<T: Send + 'static>(
        future: impl Future<Output = Outcome<T>> + Send + 'static,
    ) -> Pending<T> {
        Pending::Remote(Box::pin(future))
    }

    /// A session count that could not be lowered: once Redis answers
    /// again, this node's count of the identity is set to what it is here
    /// (idempotent, unlike the decrement that failed), so that a Redis
    /// outage does not leave sessions counted that are gone.
    async fn recount_sessions(self: Arc<Self>, identity: Arc<str>) {
        let mut wait = Duration::from_millis(250);
        while !self.stop.is_cancelled() {
            tokio::time::sleep(wait).await;
            let here = self.delivery.identity_sessions(&identity).len();
            let set = self
                .call(
                    |s| &s.sessions,
                    vec![identity.to_string(), here.to_string()],
                )
                .await;
            if set.is_ok() {
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn typing_period(
        self: Arc<Self>,
        actor: Arc<str>,
        sid: Arc<str>,
        token: String,
        cancel: CancellationToken,
    ) {
        self.time_typing(&actor, &sid, &token, &cancel).await;
        self.typing_timers
            .remove_if(&(actor, sid), |_, (timed, _)| *timed == token);
    }

    async fn time_typing(&self, actor: &str, sid: &str, token: &str, cancel: &CancellationToken) {
        let mut wait = self.config.typing_window();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                // A message through this node ended the period.
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let left = self
                .call(
                    |s| &s.typing_end,
                    vec![actor.to_owned(), sid.to_owned(), token.to_owned()],
                )
                .await;
            match left {
                Ok(Ok(ms)) => match ms.parse::<u64>() {
                    Ok(0) | Err(_) => return,
                    Ok(ms) => wait = Duration::from_millis(ms),
                },
                // Typing is transient: when Redis cannot say, the key's
                // own expiry ends it.
                _ => return,
            }
        }
    }
}

/// A session counted in Redis by an attach that may not finish.
struct Counted {
    engine: Arc<RedisEngine>,
    identity: Arc<str>,
    settled: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.engine.clone().recount_sessions(self.identity.clone()));
        }
    }
}

/// A function's answer that the call came after its deadline and did
/// nothing (`E:late:<Redis's time, unix ms>`): that time (0 when
/// unreadable).
fn late(reply: &str) -> Option<u64> {
    reply
        .strip_prefix("E:late:")
        .map(|at| at.parse().unwrap_or(0))
}

fn parse<T: for<'de> Deserialize<'de>>(reply: &str) -> Outcome<T> {
    serde_json::from_str(reply)
        .map_err(|e| EngineError::Internal(format!("unreadable shared engine reply: {e}")))
}

fn history_page(reply: &str) -> Outcome<HistoryPage> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(deserialize_with = "wire::list")]
        msgs: Vec<String>,
        more: bool,
    }
    let page: Page = parse(reply)?;
    Ok(HistoryPage {
        messages: page
            .msgs
            .iter()
            .filter_map(|m| wire::message(m, None))
            .collect(),
        has_more: page.more,
    })
}

fn now() -> (Arc<str>, i64) {
    let now = Utc::now();
    (
        Arc::from(now.to_rfc3339_opts(SecondsFormat::Millis, true)),
        now.timestamp_millis(),
    )
}

impl Apply for RedisEngine {
    fn follow_up(&self, follow: FollowUp) {
        let engine = self.engine();
        match follow {
            FollowUp::Member {
                identity,
                sid,
                from,
            } => {
                tokio::spawn(async move { engine.member_of(identity, sid, from).await });
            }
            FollowUp::Closed(sid) => {
                self.fanout
                    .unfollow(&wire::topic_key(&Topic::Channel(sid.clone())));
                self.delivery.forget_channel(&sid);
            }
        }
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Engine for RedisEngine {
    fn identify(&self, principal: &Principal) -> Pending<Actor> {
        let call = self.call(
            |s| &s.identify,
            vec![
                principal.identity.clone(),
                principal.role.as_str().to_owned(),
                if principal.anonymous { "1" } else { "0" }.to_owned(),
                self.config.identities.idle_ttl_secs.max(1).to_string(),
                self.config.identities.max_anonymous.to_string(),
            ],
        );
        let cap = self.config.identities.max_anonymous;
        let principal = principal.clone();
        Self::remote(async move {
            #[derive(Deserialize)]
            struct Identified {
                role: Role,
                anon: bool,
            }
            let reply = call.await?.map_err(|Refused(_)| {
                EngineError::Full(format!(
                    "the broker holds its maximum of {cap} anonymous identities; retry later"
                ))
            })?;
            let found: Identified = parse(&reply)?;
            if found.role != principal.role {
                return Err(EngineError::Unauthorized(format!(
                    "identity {:?} is {}, not {}",
                    principal.identity,
                    found.role.with_article(),
                    principal.role.with_article()
                )));
            }
            Ok(Actor {
                id: Arc::from(principal.identity.as_str()),
                role: found.role,
                anonymous: found.anon,
            })
        })
    }

    fn attach(
        &self,
        session: &Arc<SessionHandle>,
        actor: &Actor,
        recover: &HashMap<String, i64>,
    ) -> Pending<Attached> {
        let max = self.config.admission.max_sessions_per_identity;
        let call = self.call(|s| &s.attach, vec![actor.id.to_string(), max.to_string()]);
        let engine = self.engine();
        let session = session.clone();
        let actor = actor.clone();
        let recover = recover.clone();
        Self::remote(async move {
            // The script counts the session; if this attach is given up
            // before the session is known here (the client went, or the
            // answer was lost), the count is set right from what this node
            // holds.
            let mut counted = Counted {
                engine: engine.clone(),
                identity: actor.id.clone(),
                settled: false,
            };
            let state: AttachState = match call.await? {
                Ok(reply) => parse(&reply)?,
                Err(_) => {
                    counted.settled = true;
                    return Err(EngineError::Full(format!(
                    "identity {} already has {max} sessions (admission.max_sessions_per_identity)",
                    actor.id
                )));
                }
            };
            session.set_identity(actor.id.clone());
            counted.settled = true;
            engine.delivery.attach_identity(&session, &actor.id);
            engine
                .fanout
                .follow(&Topic::Identity(actor.id.clone()), state.seq, || {})
                .await;
            let mut recovered: HashMap<String, bool> =
                recover.keys().map(|sid| (sid.clone(), false)).collect();
            let mut engagement = None;
            for channel in &state.chans {
                if !channel.exists || channel.closed {
                    continue;
                }
                engine.follow_channel(channel, channel.seq).await;
                let sid: Arc<str> = Arc::from(channel.sid.as_str());
                let wanted = recover.get(&channel.sid).copied();
                let added = engine
                    .delivery
                    .attach_member(&session, &actor.id, &sid, wanted);
                let got = engine.complete(&sid, added).await;
                if let (Some(_), Some(ok)) = (wanted, got) {
                    recovered.insert(channel.sid.clone(), ok);
                }
                if channel.sid == state.eng {
                    engagement = Some(EngagementSnapshot {
                        channel_sid: sid.clone(),
                        started_at: Arc::from(state.eat.as_str()),
                        members: member_list(members(&channel.mem).iter().map(|(i, r)| (i, r))),
                        last_index: channel.next as i64 - 1,
                    });
                }
            }
            let mut input_text = serde_json::Map::new();
            let mut bytes = 0;
            for pair in state.drafts.chunks(2) {
                let [sid, body] = pair else { continue };
                bytes += sid.len() + crate::codec::encoded_len(body.as_str()) + 4;
                if bytes > crate::codec::PAGE_BYTES {
                    break;
                }
                input_text.insert(sid.clone(), body.clone().into());
            }
            Ok(Attached {
                snapshot: IdentitySnapshot {
                    engagement,
                    widget: WidgetState { expanded: state.x },
                    input_text,
                },
                recovered,
            })
        })
    }

    fn detach(&self, session: &Arc<SessionHandle>) {
        for name in session.subscriptions() {
            self.unsubscribe(session, &name);
        }
        self.delivery.close_session(session);
        let Some(id) = session.identity() else { return };
        let call = self.call(
            |s| &s.detach,
            vec![
                id.to_string(),
                self.config.identities.idle_ttl_secs.max(1).to_string(),
            ],
        );
        let engine = self.engine();
        tokio::spawn(async move {
            if call.await.is_err() {
                engine.recount_sessions(id).await;
            }
        });
    }

    fn start_engagement(
        &self,
        actor: &Actor,
        form_data: Value,
        queue: Arc<str>,
    ) -> Pending<Started> {
        let sid = super::new_channel_sid();
        let (started_at, _) = now();
        let call = self.call(
            |s| &s.start,
            vec![
                actor.id.to_string(),
                sid.clone(),
                queue.to_string(),
                form_data.to_string(),
                started_at.to_string(),
            ],
        );
        let actor = actor.clone();
        Self::remote(async move {
            match call.await? {
                Ok(_) => Ok(Started {
                    channel_sid: Arc::from(sid),
                }),
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn restart_engagement(&self, actor: &Actor) -> Pending<Arc<str>> {
        let call = self.call(|s| &s.restart, vec![actor.id.to_string()]);
        let actor = actor.clone();
        Self::remote(async move {
            match call.await? {
                Ok(sid) => Ok(Arc::from(sid)),
                Err(Refused(code)) => Err(Self::common_refusal(&actor, "", &code)),
            }
        })
    }

    fn end_engagement(
        &self,
        member: Option<&Actor>,
        channel_sid: &str,
        reason: &str,
    ) -> Pending<()> {
        let call = self.call(
            |s| &s.end,
            vec![
                channel_sid.to_owned(),
                member.map_or_else(String::new, |m| m.id.to_string()),
                reason.to_owned(),
            ],
        );
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            match call.await? {
                Ok(_) => Ok(()),
                Err(Refused(code)) if code == "not_found" => {
                    Err(EngineError::NotFound(format!("no open channel {sid}")))
                }
                Err(Refused(code)) => Err(Self::common_refusal(
                    &Actor {
                        id: Arc::from(""),
                        role: Role::Agent,
                        anonymous: false,
                    },
                    &sid,
                    &code,
                )),
            }
        })
    }

    fn join(&self, actor: &Actor, channel_sid: &str) -> Pending<Joined> {
        let max = self.config.admission.max_members_per_channel;
        let call = self.call(
            |s| &s.join,
            vec![
                actor.id.to_string(),
                actor.role.as_str().to_owned(),
                channel_sid.to_owned(),
                max.to_string(),
            ],
        );
        let actor = actor.clone();
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            #[derive(Deserialize)]
            struct JoinReply {
                #[serde(deserialize_with = "wire::list")]
                mem: Vec<WireMember>,
                last: i64,
            }
            match call.await? {
                Ok(reply) => {
                    let joined: JoinReply = parse(&reply)?;
                    let list = members(&joined.mem);
                    Ok(Joined {
                        members: member_list(list.iter().map(|(i, r)| (i, r))),
                        last_index: joined.last,
                    })
                }
                Err(Refused(code)) if code == "full" => Err(EngineError::Full(format!(
                    "channel {sid} already has {max} members (admission.max_members_per_channel)"
                ))),
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn leave(&self, actor: &Actor, channel_sid: &str, reason: LeaveReason) -> Pending<()> {
        let call = self.call(
            |s| &s.leave,
            vec![
                actor.id.to_string(),
                channel_sid.to_owned(),
                reason.as_str().to_owned(),
            ],
        );
        let actor = actor.clone();
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            match call.await? {
                Ok(_) => Ok(()),
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn post(&self, actor: &Actor, channel_sid: &str, message: NewMessage) -> Pending<Posted> {
        let (date_created, created_ms) = now();
        let call_id = format!("{:016x}", rand::random::<u64>());
        let tail = serde_json::to_string(&MessageTail {
            sid: channel_sid,
            a: &actor.id,
            r: actor.role,
            b: &message.body,
            at: &message.attributes,
            d: &date_created,
            c: &call_id,
            ms: created_ms,
        })
        .expect("a message serializes");
        let mut args = vec![
            actor.id.to_string(),
            channel_sid.to_owned(),
            if message.by_broker && actor.role == Role::Service {
                "1"
            } else {
                "0"
            }
            .to_owned(),
            tail[1..].to_owned(),
        ];
        if !self.config.webhooks.post.is_empty() {
            // The webhook event's time.
            args.push(created_ms.to_string());
        }
        let timeout = Duration::from_millis(self.config.cluster.command_timeout_ms);
        let call = self.invoke(|s| &s.post, args, timeout);
        let engine = self.me.clone();
        let actor = actor.clone();
        let sid = channel_sid.to_owned();
        let timers = self.typing_timers.clone();
        let metrics = self.metrics.clone();
        Self::remote(async move {
            let answer = match call.await {
                Ok(answer) => answer,
                Err(Failed {
                    in_doubt: Some(doubt),
                    error,
                }) => match engine.upgrade() {
                    Some(engine) => {
                        let args = vec![
                            sid.clone(),
                            call_id,
                            doubt.deadline.to_string(),
                            created_ms.to_string(),
                        ];
                        engine.settle(|s| &s.settle, args, doubt, error).await?
                    }
                    None => return Err(error),
                },
                Err(failed) => return Err(failed.error),
            };
            match answer {
                Ok(index) => {
                    // The message ended its author's typing period in the
                    // channel (`post` ends one whose window has passed too).
                    if !timers.is_empty() {
                        if let Some((_, (_, cancel))) =
                            timers.remove(&(actor.id.clone(), Arc::from(sid.as_str())))
                        {
                            cancel.cancel();
                        }
                    }
                    metrics.message_accepted();
                    Ok(Posted {
                        index: index.parse().map_err(|_| {
                            EngineError::Internal(format!("unreadable index {index:?}"))
                        })?,
                        date_created,
                    })
                }
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn set_widget(
        &self,
        actor: &Actor,
        change: WidgetChange,
        origin: Option<SessionKey>,
    ) -> Pending<bool> {
        let call = self.call(
            |s| &s.widget,
            vec![
                actor.id.to_string(),
                match change {
                    WidgetChange::Toggle => "toggle",
                    WidgetChange::Minimize => "minimize",
                }
                .to_owned(),
                wire::origin(&self.node, origin),
            ],
        );
        Self::remote(async move {
            match call.await? {
                Ok(expanded) => Ok(expanded == "1"),
                Err(Refused(code)) => Err(EngineError::Internal(code)),
            }
        })
    }

    fn set_draft(
        &self,
        actor: &Actor,
        channel_sid: &str,
        body: &str,
        origin: Option<SessionKey>,
    ) -> Pending<()> {
        let call = self.call(
            |s| &s.draft,
            vec![
                actor.id.to_string(),
                channel_sid.to_owned(),
                body.to_owned(),
                wire::origin(&self.node, origin),
            ],
        );
        let actor = actor.clone();
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            match call.await? {
                Ok(_) => Ok(()),
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn typing(&self, actor: &Actor, channel_sid: &str) -> Pending<()> {
        let token = crate::ids::new_id();
        let call = self.call(
            |s| &s.typing,
            vec![
                actor.id.to_string(),
                channel_sid.to_owned(),
                self.config.typing.window_ms.max(1).to_string(),
                token.clone(),
            ],
        );
        let engine = self.engine();
        let actor = actor.clone();
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            match call.await? {
                Ok(began) => {
                    if began == "1" {
                        let sid: Arc<str> = Arc::from(sid);
                        let cancel = CancellationToken::new();
                        engine.typing_timers.insert(
                            (actor.id.clone(), sid.clone()),
                            (token.clone(), cancel.clone()),
                        );
                        tokio::spawn(engine.typing_period(actor.id.clone(), sid, token, cancel));
                    }
                    Ok(())
                }
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn subscribe_channel(
        &self,
        session: &Arc<SessionHandle>,
        actor: &Actor,
        channel_sid: &str,
        after: Option<i64>,
    ) -> Pending<Option<bool>> {
        let again = session.is_subscribed(channel_sid);
        let call = if again {
            self.call(|s| &s.channel, vec![channel_sid.to_owned()])
        } else {
            self.call(|s| &s.observe, vec![channel_sid.to_owned()])
        };
        let engine = self.engine();
        let session = session.clone();
        let actor = actor.clone();
        let sid: Arc<str> = Arc::from(channel_sid);
        Self::remote(async move {
            let not_found = || EngineError::NotFound(format!("no channel {sid}"));
            let state: ChannelState = match call.await? {
                Ok(reply) => parse(&reply)?,
                Err(_) => return Err(not_found()),
            };
            if !state.exists || state.closed {
                return Err(not_found());
            }
            engine.follow_channel(&state, state.seq).await;
            let added = engine
                .delivery
                .subscribe_channel(&session, &actor.id, &sid, after);
            if added.is_none() {
                return Err(not_found());
            }
            Ok(engine.complete(&sid, added).await)
        })
    }

    fn subscribe_queue(&self, session: &Arc<SessionHandle>, queue: &str) -> Pending<QueuePage> {
        let engine = self.engine();
        let session = session.clone();
        let queue: Arc<str> = Arc::from(queue);
        Self::remote(async move {
            engine.follow_queue(&queue).await?;
            let (engagements, has_more) = engine.delivery.subscribe_queue(&session, &queue);
            Ok(QueuePage {
                engagements,
                has_more,
            })
        })
    }

    fn unsubscribe(&self, session: &Arc<SessionHandle>, topic: &str) {
        if topic.starts_with(QUEUE_PREFIX) {
            self.delivery.unsubscribe_queue(session, topic);
            return;
        }
        if !session.is_subscribed(topic) {
            return;
        }
        self.delivery.unsubscribe_channel(session, topic);
        let call = self.call(|s| &s.unobserve, vec![topic.to_owned()]);
        tokio::spawn(async move {
            if let Err(e) = call.await {
                tracing::debug!(error = %e, "observer count not lowered; it goes with this node's heartbeat");
            }
        });
    }

    fn history(
        &self,
        actor: &Actor,
        session: Option<SessionKey>,
        channel_sid: &str,
        before: u64,
        limit: usize,
    ) -> Pending<HistoryPage> {
        let subscriber = session.is_some_and(|key| self.delivery.is_subscriber(channel_sid, key));
        let call = self.call(
            |s| &s.history,
            vec![
                actor.id.to_string(),
                channel_sid.to_owned(),
                before.to_string(),
                limit.to_string(),
                if subscriber { "1" } else { "0" }.to_owned(),
                if actor.role.is_staff() { "1" } else { "0" }.to_owned(),
                "0".to_owned(),
            ],
        );
        let actor = actor.clone();
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            match call.await? {
                Ok(reply) => history_page(&reply),
                Err(Refused(code)) => Err(Self::common_refusal(&actor, &sid, &code)),
            }
        })
    }

    fn queue_page(&self, queue: &str, after: Option<&str>) -> Pending<QueuePage> {
        let engine = self.engine();
        let queue: Arc<str> = Arc::from(queue);
        let after = after.map(str::to_owned);
        Self::remote(async move {
            engine.follow_queue(&queue).await?;
            let (engagements, has_more) = engine.delivery.queue_page(&queue, after.as_deref());
            Ok(QueuePage {
                engagements,
                has_more,
            })
        })
    }

    fn channel_report(&self, channel_sid: &str) -> Pending<ChannelReport> {
        let call = self.call(|s| &s.channel_report, vec![channel_sid.to_owned()]);
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            #[derive(Deserialize)]
            struct Report {
                q: String,
                at: String,
                form: String,
                next: u64,
                closed: bool,
                ended: i64,
                #[serde(deserialize_with = "wire::list")]
                mem: Vec<WireMember>,
            }
            let report: Report = match call.await? {
                Ok(reply) => parse(&reply)?,
                Err(_) => return Err(EngineError::NotFound(format!("no channel {sid}"))),
            };
            let list = members(&report.mem);
            Ok(ChannelReport {
                channel_sid: Arc::from(sid.as_str()),
                status: if report.closed { "ended" } else { "open" },
                queue: Arc::from(report.q),
                started_at: Arc::from(report.at),
                ended_at: report.closed.then(|| {
                    Arc::from(
                        chrono::DateTime::from_timestamp_millis(report.ended)
                            .unwrap_or_default()
                            .to_rfc3339_opts(SecondsFormat::Millis, true),
                    )
                }),
                members: member_list(list.iter().map(|(i, r)| (i, r))),
                last_index: report.next as i64 - 1,
                form_data: serde_json::from_str(&report.form).unwrap_or(Value::Null),
            })
        })
    }

    fn identity_report(&self, identity: &str) -> Pending<IdentityReport> {
        let call = self.call(|s| &s.identity_report, vec![identity.to_owned()]);
        let id = identity.to_owned();
        Self::remote(async move {
            #[derive(Deserialize)]
            struct Report {
                role: Role,
                x: bool,
                eng: String,
                eat: String,
                sessions: usize,
            }
            let report: Report = match call.await? {
                Ok(reply) => parse(&reply)?,
                Err(_) => return Err(EngineError::NotFound(format!("no identity {id:?}"))),
            };
            Ok(IdentityReport {
                identity: Arc::from(id.as_str()),
                role: report.role,
                sessions: report.sessions,
                engagement: (!report.eng.is_empty()).then(|| EngagementRef {
                    channel_sid: Arc::from(report.eng),
                    started_at: Arc::from(report.eat),
                }),
                widget: WidgetState { expanded: report.x },
            })
        })
    }

    fn remove_from_channel(&self, channel_sid: &str, identity: &str) -> Pending<()> {
        let actor = Actor {
            id: Arc::from(identity),
            role: Role::Agent,
            anonymous: false,
        };
        self.leave(&actor, channel_sid, LeaveReason::Removed)
    }

    fn channel_history(
        &self,
        channel_sid: &str,
        before: u64,
        limit: usize,
    ) -> Pending<HistoryPage> {
        let call = self.call(
            |s| &s.history,
            vec![
                String::new(),
                channel_sid.to_owned(),
                before.to_string(),
                limit.to_string(),
                "0".to_owned(),
                "1".to_owned(),
                "1".to_owned(),
            ],
        );
        let sid = channel_sid.to_owned();
        Self::remote(async move {
            match call.await? {
                Ok(reply) => history_page(&reply),
                Err(_) => Err(EngineError::NotFound(format!("no channel {sid}"))),
            }
        })
    }

    fn disconnect(&self, identity: &str) -> Pending<usize> {
        let call = self.call(|s| &s.disconnect, vec![identity.to_owned()]);
        Self::remote(async move {
            match call.await? {
                Ok(n) => Ok(n.parse().unwrap_or(0)),
                Err(Refused(code)) => Err(EngineError::Internal(code)),
            }
        })
    }

    fn all_durable(&self) -> bool {
        // Every result stands only once Redis has answered its script.
        true
    }

    fn room(&self) -> Option<Pending<()>> {
        None
    }

    fn health(&self) -> Result<(), String> {
        if !self.up.load(Ordering::Relaxed) {
            return Err(format!(
                "the shared engine (Redis at {}) cannot be reached",
                self.url
            ));
        }
        if !self.fanout.connected() {
            return Err(format!(
                "no pub/sub connection to the shared engine (Redis at {})",
                self.url
            ));
        }
        Ok(())
    }

    fn housekeeping(&self, tick: Housekeeping) {
        match tick {
            // Retention by count is Redis's (logs are capped as they are
            // written) and ended channels expire; age is a pass.
            Housekeeping::Purge => return self.purge(),
            Housekeeping::CatchUp => return,
            Housekeeping::Reap => {}
        }
        for feed in self.fanout.idle_feeds(IDLE_FEED) {
            let unused = match &feed.topic {
                Topic::Channel(sid) => self.delivery.channel_sessions(sid).is_empty(),
                Topic::Identity(id) => self.delivery.identity_sessions(id).is_empty(),
                Topic::Queue(name) => self.delivery.queue_sessions(name).is_empty(),
            };
            if !unused {
                continue;
            }
            self.fanout.unfollow(&feed.key);
            match &feed.topic {
                Topic::Channel(sid) => self.delivery.forget_channel(sid),
                Topic::Queue(name) => self.delivery.forget_queue(name),
                Topic::Identity(_) => {}
            }
        }
    }

    fn close(&self) {
        self.stop.cancel();
    }
}
