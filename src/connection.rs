//! One session: a reader loop that runs commands, and a writer task that
//! drains the session's outbox onto the socket.
//!
//! The writer is the only code that writes to the socket. It takes every
//! queued frame at once, feeds them all, and flushes once per batch, so a
//! burst of pushes costs one system call rather than one per frame. The
//! reader never writes: replies go through the same outbox as pushes, which
//! keeps replies in command order and bounded like everything else.
//!
//! A reply that acknowledges a write is held until the write is durable,
//! but the reader does not wait for it: it goes on reading and running the
//! session's next commands, and held replies are released in command order
//! as the store's group commits cover them. A client that pipelines its
//! commands (a console flushing a backlog, a bot) then gets one commit per
//! burst instead of one commit per command.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::actions::ActionContext;
use crate::broker::session::SessionHandle;
use crate::broker::Broker;
use crate::codec::{decode_command, encode_error, encode_result, Command, Encoding};
use crate::error::ActionError;
use crate::metrics::CommandKey;
use crate::outbox::{CloseReason, Outbox};
use crate::rate_limit::SessionLimiter;

type Socket = WebSocketStream<crate::tls::Stream>;

/// How long a closing session waits for its last frames and the peer's
/// close reply before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Replies a session may have waiting for durability before the reader
/// stops reading its commands. Bounds what one session can queue in the
/// store, and its memory, while letting a pipelining client fill a group
/// commit.
const MAX_HELD_REPLIES: usize = 32;

/// Commands that run while earlier replies are still held, unless an
/// application replaced their implementation. Their effects are in memory
/// at once, so a later command sees them whether or not they are durable
/// yet. Any other command (it may read what only durability makes
/// visible: `GetMessages` reads the store; a replaced action may do
/// anything) first waits until every earlier reply has been sent, so that
/// a session always reads its own writes.
const PIPELINED: [&str; 3] = ["SendMessage", "SendTyping", "SetInputText"];

/// WebSocket settings for a session, from `[limits]`.
pub fn websocket_config(broker: &Broker) -> WebSocketConfig {
    let limits = &broker.config.limits;
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        // The outbox is the bound on what waits to be written; this only
        // stops tungstenite buffering without limit if writes keep failing.
        // It must hold the largest frame the broker sends on top of the
        // buffer, or that frame could never be written.
        .max_write_buffer_size(limits.write_buffer_bytes + limits.outbound_frame_bytes() + 4096)
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
}

/// Runs a session to its end.
/// Takes the socket already split: an async fn's arguments keep their space
/// in its future for its whole life, and a whole `WebSocketStream` there
/// would cost every idle session about a kilobyte.
pub async fn run_session(
    broker: Arc<Broker>,
    (sink, mut stream): (SplitSink<Socket, Message>, SplitStream<Socket>),
    encoding: Encoding,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let key = broker.next_session_key();
    let outbox = Arc::new(Outbox::new(broker.outbox_limits(), broker.metrics.clone()));
    let session = Arc::new(
        SessionHandle::new(key, encoding, outbox.clone(), peer)
            .with_rate_limiter(SessionLimiter::new(&broker.config.rate_limits)),
    );
    broker.sessions.insert(key, session.clone());
    broker.metrics.session_opened();
    info!(session = %session.id, %peer, encoding = encoding.subprotocol(), "session open");

    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        broker.config.limits.ping_interval(),
    ));
    let mut reader = Reader {
        broker: &broker,
        session: &session,
        ctx: None,
        token_expires: None,
        held: HeldReplies::default(),
    };
    let ended = reader.run(&mut stream, &mut writer, &shutdown).await;
    outbox.close(ended);
    let reason = outbox.closing().unwrap_or(ended);
    // Nothing more is pushed to a closing session: stop fanning out to it
    // now, not once its last frames are written.
    broker.detach_session(&session);
    // A slow consumer gets until the idle timeout to read the frames
    // already on their way and its 4008 (the contract's close-frame rule);
    // any other close a short grace. Shutdown cuts either short.
    let grace = if reason == CloseReason::SlowConsumer {
        broker.config.limits.idle_timeout()
    } else {
        CLOSE_GRACE
    };
    if !writer.is_finished() {
        tokio::select! {
            _ = tokio::time::timeout(grace, &mut writer) => {}
            _ = shutdown.cancelled(), if reason != CloseReason::Shutdown => {}
        }
    }
    let wrote_close = writer.is_finished();
    writer.abort();
    if reason.close_frame().is_some() && wrote_close {
        // Read until the peer answers our close frame, so that unread bytes
        // do not turn our close into a reset that loses the close frame.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    broker.metrics.session_closed();
    info!(
        session = %session.id,
        identity = session.identity().as_deref().unwrap_or("-"),
        %reason,
        "session closed"
    );
}

struct Reader<'a> {
    broker: &'a Arc<Broker>,
    session: &'a Arc<SessionHandle>,
    /// Set once `Connect` succeeded.
    ctx: Option<ActionContext>,
    /// When the session's client token stops verifying (`exp` + leeway):
    /// the session is closed with 4001 then, unless `RefreshToken` moved it.
    token_expires: Option<Instant>,
    /// Replies waiting for their writes to be durable.
    held: HeldReplies,
}

/// Replies waiting for the store ticket they need, in command order (a
/// reply that needs none still waits behind the ones before it). Allocated
/// while replies are held and freed when the last one goes: an idle
/// session carries one pointer, not a queue and its buffer.
#[derive(Default)]
struct HeldReplies(Option<Box<HeldQueue>>);

struct HeldQueue {
    replies: VecDeque<(u64, Message)>,
    /// The highest ticket a held reply needs.
    upto: u64,
}

impl HeldReplies {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.replies.len())
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The ticket after which every held reply may go.
    fn upto(&self) -> u64 {
        self.0.as_ref().map_or(0, |q| q.upto)
    }

    fn push(&mut self, needs: u64, frame: Message) {
        let queue = self.0.get_or_insert_with(|| {
            Box::new(HeldQueue {
                replies: VecDeque::new(),
                upto: 0,
            })
        });
        queue.upto = queue.upto.max(needs);
        queue.replies.push_back((needs, frame));
    }

    /// The next reply, if the store is durable far enough for it.
    fn pop_ready(&mut self, durable: u64) -> Option<Message> {
        let queue = self.0.as_mut()?;
        if queue.replies.front()?.0 > durable {
            return None;
        }
        let (_, frame) = queue.replies.pop_front()?;
        if queue.replies.is_empty() {
            self.0 = None;
        }
        Some(frame)
    }
}

type DurableWait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Reader<'_> {
    /// Reads and runs commands until the session ends; returns why.
    async fn run(
        &mut self,
        stream: &mut SplitStream<Socket>,
        writer: &mut tokio::task::JoinHandle<()>,
        shutdown: &CancellationToken,
    ) -> CloseReason {
        let limits = &self.broker.config.limits;
        let idle_timeout = limits.idle_timeout();
        let connect_deadline = Instant::now() + limits.connect_timeout();
        let mut last_rx = Instant::now();
        // One timer for every deadline (Connect, idle, token expiry), re-armed
        // only when it fires or a deadline moves earlier: an idle session
        // carries one timer, and a busy one does not touch the timer wheel
        // for every frame.
        let timer = sleep_until(self.next_deadline(connect_deadline, last_rx, idle_timeout));
        tokio::pin!(timer);
        let store = self.broker.store.as_ref();
        // Armed while replies are held (or the store is full): resolves when
        // the store is durable up to the ticket it was armed for.
        let mut durable_wait: Option<DurableWait<'_>> = None;
        loop {
            // Read on while few replies are held and the store has room;
            // otherwise wait for a commit first (backpressure, not errors).
            let store_full = store.is_some_and(|s| !s.has_room());
            let readable = self.held.len() < MAX_HELD_REPLIES && !store_full;
            if let (None, Some(store)) = (&durable_wait, store) {
                let target = if !self.held.is_empty() {
                    Some(self.held.upto())
                } else if store_full {
                    Some(store.last_ticket())
                } else {
                    None
                };
                durable_wait = target.map(|t| Box::pin(store.wait_durable(t)) as DurableWait<'_>);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.flush_held().await;
                    return CloseReason::Shutdown;
                }
                // The writer ends only when the outbox is closing (a
                // requested close) or the socket broke.
                _ = &mut *writer => {
                    return self.session.outbox.closing().unwrap_or(CloseReason::ClientGone);
                }
                // Overflowed (4008): stop running commands at once; the
                // writer finishes the frames in flight and sends the close.
                _ = self.session.outbox.overflowed() => return CloseReason::SlowConsumer,
                _ = async { durable_wait.as_mut().expect("armed").await }, if durable_wait.is_some() => {
                    durable_wait = None;
                    self.release_held();
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if self.ctx.is_none() && now >= connect_deadline {
                        debug!(session = %self.session.id, "no Connect in time");
                        return CloseReason::Unauthorized;
                    }
                    if self.token_expires.is_some_and(|t| now >= t) {
                        debug!(session = %self.session.id, "token expired");
                        self.flush_held().await;
                        return CloseReason::TokenExpired;
                    }
                    if now >= last_rx + idle_timeout {
                        self.flush_held().await;
                        return CloseReason::Idle;
                    }
                    timer.as_mut().reset(self.next_deadline(connect_deadline, last_rx, idle_timeout));
                }
                frame = stream.next(), if readable => {
                    last_rx = Instant::now();
                    match frame {
                        None => return CloseReason::ClientGone,
                        Some(Err(WsError::Capacity(_))) => {
                            self.broker.metrics.frame_too_large();
                            return CloseReason::FrameTooLarge;
                        }
                        Some(Err(WsError::Protocol(e))) => {
                            debug!(session = %self.session.id, error = %e, "protocol error");
                            return CloseReason::ProtocolError;
                        }
                        Some(Err(_)) => return CloseReason::ClientGone,
                        Some(Ok(Message::Close(_))) => return CloseReason::ClientGone,
                        Some(Ok(frame @ (Message::Text(_) | Message::Binary(_)))) => {
                            // Boxed: running a command (the whole actions
                            // pipeline) needs far more state than waiting
                            // does, and an idle session should not carry it.
                            Box::pin(self.handle_frame(&frame)).await;
                            // A Connect or RefreshToken may have brought a
                            // deadline closer than the one armed.
                            let next = self.next_deadline(connect_deadline, last_rx, idle_timeout);
                            if next < timer.deadline() {
                                timer.as_mut().reset(next);
                            }
                            if self.session.outbox.is_closing() {
                                // e.g. a failed Connect: let the writer send
                                // the reply and the close frame.
                                let _ = (&mut *writer).await;
                                return self.session.outbox.closing().unwrap_or(CloseReason::ClientGone);
                            }
                        }
                        // Pings are answered by tungstenite; pongs only
                        // prove the peer is alive (the idle reset above).
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// The earliest deadline in force: idle always, Connect until connected,
    /// the token's expiry once there is one.
    fn next_deadline(&self, connect: Instant, last_rx: Instant, idle: Duration) -> Instant {
        let mut deadline = last_rx + idle;
        if self.ctx.is_none() {
            deadline = deadline.min(connect);
        }
        if let Some(expires) = self.token_expires {
            deadline = deadline.min(expires);
        }
        deadline
    }

    async fn handle_frame(&mut self, frame: &Message) {
        let encoding = self.session.encoding;
        // Every frame draws on the session's command bucket, garbage too; the
        // frame is still decoded (bounded by the frame limit) so that the
        // `rate_limited` reply can carry the command's id.
        let arrived = Instant::now();
        let admitted = self.session.rate.check_frame();
        let decoded = decode_command(encoding, frame);
        let action = CommandKey::of(decoded.as_ref().ok().map(|c| c.action.as_str()));
        let store = self.broker.store.as_ref();
        let written_before = store.map(|s| s.last_ticket());
        let outcome = match (admitted, decoded) {
            (Err(limited), decoded) => {
                let id = match &decoded {
                    Ok(command) => Some(command.id),
                    Err(e) => e.id,
                };
                Err((id, limited))
            }
            (Ok(()), Err(e)) => {
                self.broker.metrics.bad_request();
                Err((e.id, ActionError::BadRequest(e.message)))
            }
            (Ok(()), Ok(command)) if store.is_some_and(|s| !s.has_room()) => Err((
                Some(command.id),
                ActionError::Internal("storage is overloaded; retry shortly".into()),
            )),
            (Ok(()), Ok(command)) => {
                let pipelined = PIPELINED.contains(&command.action.as_str())
                    && self.broker.actions.runs_builtin(&command.action);
                if !self.held.is_empty() && !pipelined {
                    if let Some(store) = store {
                        store.wait_durable(self.held.upto()).await;
                    }
                    self.release_held();
                }
                let id = command.id;
                let is_connect = command.action == "Connect";
                let outcome = match &self.ctx {
                    Some(_) if is_connect => Err(ActionError::bad_request("already connected")),
                    Some(_) if command.action == REFRESH_TOKEN => self.refresh_token(&command),
                    Some(ctx) => ctx.invoke(&command.action, command.payload).await,
                    None if is_connect => self.connect(command).await,
                    None => Err(ActionError::NotConnected),
                };
                outcome
                    .map(|result| (id, result))
                    .map_err(|e| (Some(id), e))
            }
        };
        // A command that wrote anything is answered once it is durable.
        let needs = match (store, &outcome) {
            (Some(store), Ok(_)) if Some(store.last_ticket()) != written_before => {
                store.last_ticket()
            }
            _ => 0,
        };
        let mut frame = match &outcome {
            Ok((id, result)) => encode_result(encoding, *id, result),
            Err((id, error)) => {
                if let ActionError::RateLimited(_) = error {
                    self.broker.metrics.rate_limited();
                }
                encode_error(encoding, *id, &error.to_wire())
            }
        };
        let limit = self.broker.config.limits.outbound_frame_bytes();
        if frame.len() > limit {
            // Replies are bounded by construction; one that is not is the
            // broker's fault, and the client gets an answer, not a cut
            // connection.
            let id = match &outcome {
                Ok((id, _)) => Some(*id),
                Err((id, _)) => *id,
            };
            tracing::error!(
                session = %self.session.id,
                bytes = frame.len(),
                limit,
                "a reply outgrew the outbound frame limit; answering internal"
            );
            let error = ActionError::Internal(format!(
                "the reply ({} bytes) is larger than the broker sends ({limit} bytes)",
                frame.len()
            ));
            frame = encode_error(encoding, id, &error.to_wire());
        }
        self.broker.metrics.command(
            action,
            outcome.as_ref().err().map(|(_, e)| e),
            arrived.elapsed(),
        );
        self.reply(needs, frame);
        // A failed Connect ends the session, after its reply.
        if let Err((_, ActionError::Unauthorized(_))) = &outcome {
            if self.ctx.is_none() {
                self.flush_held().await;
                self.session.outbox.close(CloseReason::Unauthorized);
            }
        }
        if self.session.rate.is_abusive() {
            debug!(session = %self.session.id, "persistent rate-limit abuse");
            self.flush_held().await;
            self.session.outbox.close(CloseReason::RateLimited);
        }
    }

    /// Sends a reply once the store is durable up to `needs` (0: nothing
    /// to wait for) and every reply before it has been sent.
    fn reply(&mut self, needs: u64, frame: Message) {
        if self.held.is_empty() && needs <= self.durable_upto() {
            self.session.outbox.push(frame);
            return;
        }
        self.held.push(needs, frame);
    }

    fn durable_upto(&self) -> u64 {
        self.broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| s.durable_upto())
    }

    /// Sends the held replies the store's progress now covers, in order.
    fn release_held(&mut self) {
        let durable = self.durable_upto();
        while let Some(frame) = self.held.pop_ready(durable) {
            self.session.outbox.push(frame);
        }
    }

    /// Waits (a bounded time) for every held reply to be durable and sends
    /// them: a session that is being closed still acknowledges what it
    /// wrote before its close frame. Boxed: its timer and wait would
    /// otherwise take space in every session's future, idle ones too.
    fn flush_held(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let (Some(store), false) = (self.broker.store.as_ref(), self.held.is_empty()) {
                let _ =
                    tokio::time::timeout(CLOSE_GRACE, store.wait_durable(self.held.upto())).await;
            }
            self.release_held();
        })
    }

    /// `RefreshToken {token}`: a fresh client token for the same identity and
    /// role moves the session's expiry. A bad one is `unauthorized` and
    /// changes nothing (the session still ends at the old expiry).
    fn refresh_token(&mut self, command: &Command) -> Result<Value, ActionError> {
        let ctx = self.ctx.as_ref().expect("connected");
        if self.token_expires.is_none() {
            return Err(ActionError::bad_request(
                "this session did not connect with a token: there is nothing to refresh",
            ));
        }
        let token = match command.payload.get("token") {
            Some(Value::String(token)) => token.as_str(),
            Some(_) => return Err(ActionError::bad_request("`token` must be a string")),
            None => return Err(ActionError::bad_request("`token` is required")),
        };
        crate::validate::payload(&self.broker.config, "Connect", &command.payload)?;
        let (principal, until) = self.broker.auth.authenticate_until(Some(token), None)?;
        if *principal.identity != *ctx.identity.id || principal.role != ctx.identity.role {
            return Err(ActionError::Unauthorized(format!(
                "the token is for {} ({}), not this session's identity",
                principal.identity, principal.role
            )));
        }
        self.token_expires = until.and_then(deadline_at);
        Ok(json!({ "tokenExpiresAt": until.map(rfc3339) }))
    }

    /// Authenticates, then runs `Connect` through the actions pipeline.
    async fn connect(&mut self, command: Command) -> Result<Value, ActionError> {
        let field = |key: &str| match command.payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ActionError::bad_request(format!(
                "`{key}` must be a string"
            ))),
        };
        let (token, resume) = (field("token")?, field("resumeToken")?);
        crate::validate::payload(&self.broker.config, "Connect", &command.payload)?;
        let (principal, until) = self.broker.auth.authenticate_until(token, resume)?;
        let ctx = ActionContext {
            broker: self.broker.clone(),
            identity: self.broker.identity_for(&principal)?,
            session: Some(self.session.clone()),
            internal: false,
        };
        let mut result = ctx.invoke("Connect", command.payload.clone()).await?;
        // The identity the session was attached to (looked up again in case
        // the reaper replaced it between lookup and attach).
        let identity = self.broker.identity_for(&principal)?;
        self.ctx = Some(ActionContext { identity, ..ctx });
        self.session.rate.set_role(principal.role);
        self.token_expires = until.and_then(deadline_at);
        if let (Some(until), Some(map)) = (until, result.as_object_mut()) {
            map.insert("tokenExpiresAt".into(), rfc3339(until).into());
        }
        Ok(result)
    }
}

/// The session-layer command that extends a token session (an extension;
/// see docs/protocol.md). Handled here, not in the actions registry, since
/// it changes the connection's own deadline.
pub const REFRESH_TOKEN: &str = "RefreshToken";

/// A Unix time as a timer deadline; `None` when it is too far away to be
/// represented (a token with an absurd `exp` then simply never expires
/// while the process lives, rather than overflowing `Instant`).
fn deadline_at(unix_secs: u64) -> Option<Instant> {
    let left = unix_secs.saturating_sub(crate::auth::now_secs());
    Instant::now().checked_add(Duration::from_secs(left))
}

fn rfc3339(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "9999-12-31T23:59:59.000Z".into())
}

/// Drains the outbox onto the socket, a batch at a time, with one flush per
/// batch; sends keepalive pings; ends with the close frame the outbox asks for.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    outbox: Arc<Outbox>,
    ping_every: Duration,
) {
    let mut batch = Vec::new();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut ping_due = false;
        let closing = tokio::select! {
            next = outbox.next_batch(&mut batch) => next.closing,
            _ = ping.tick() => {
                ping_due = true;
                None
            }
        };
        if ping_due {
            batch.push(Message::Ping(Default::default()));
        }
        if !batch.is_empty() {
            for frame in batch.drain(..) {
                // Biased to the write: the overflow is only looked at when
                // the socket is not taking frames. On overflow the frames
                // not yet handed to the socket are dropped (the backlog is
                // freed), and the ones already in the write buffer, all
                // whole frames, are flushed before the 4008: the client
                // reads complete frames with contiguous indexes, then the
                // close.
                tokio::select! {
                    biased;
                    fed = sink.feed(frame) => if fed.is_err() { return },
                    _ = outbox.overflowed() => break,
                }
            }
            batch.clear();
            if sink.flush().await.is_err() {
                return;
            }
        }
        if let Some(reason) = closing {
            if let Some((code, text)) = reason.close_frame() {
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: text.into(),
                }));
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await;
            }
            return;
        }
    }
}
