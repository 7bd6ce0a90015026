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
use std::task::Poll;
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
use crate::broker::Broker;
use crate::codec::{decode_command, encode_error, encode_result, Command, Encoding};
use crate::delivery::session::SessionHandle;
use crate::engine::Pending;
use crate::error::ActionError;
use crate::metrics::CommandTimer;
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

/// WebSocket settings for a session, from `[limits]`.
pub(crate) fn websocket_config(broker: &Broker) -> WebSocketConfig {
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
pub(crate) async fn run_session(
    broker: Arc<Broker>,
    (sink, mut stream): (SplitSink<Socket, Message>, SplitStream<Socket>),
    encoding: Encoding,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let node = &broker.node;
    let key = node.next_session_key();
    let outbox = Arc::new(Outbox::new(node.outbox_limits(), broker.metrics.clone()));
    let session = Arc::new(
        SessionHandle::new(key, encoding, outbox.clone(), peer)
            .with_rate_limiter(SessionLimiter::new(&broker.config.rate_limits)),
    );
    node.delivery.open_session(&session);
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
    };
    let ended = reader.run(&mut stream, &mut writer, &shutdown).await;
    outbox.close(ended);
    let reason = outbox.closing().unwrap_or(ended);
    // Nothing more is pushed to a closing session: stop fanning out to it
    // now, not once its last frames are written.
    node.engine.detach(&session);
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
}

/// Replies waiting for their commands' changes to be durable, in command
/// order (a reply that is ready still waits behind the ones before it).
/// Allocated while replies are held and freed when the last one goes: an
/// idle session carries one pointer, not a queue and its buffer.
#[derive(Default)]
struct HeldReplies(Option<Box<HeldQueue>>);

struct HeldQueue {
    replies: VecDeque<(u64, CommandTimer, Result<Pending<Value>, ActionError>)>,
    /// Armed for the newest held store ticket: one wake-up for a whole
    /// group commit, not one per reply.
    wait: Option<Pending<()>>,
}

impl HeldReplies {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.replies.len())
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn push(&mut self, id: u64, timer: CommandTimer, result: Result<Pending<Value>, ActionError>) {
        let queue = self.0.get_or_insert_with(|| {
            Box::new(HeldQueue {
                replies: VecDeque::new(),
                wait: None,
            })
        });
        queue.replies.push_back((id, timer, result));
    }

    /// The front reply, if its result stands now.
    fn pop_ready(&mut self) -> Option<(u64, CommandTimer, Result<Value, ActionError>)> {
        let queue = self.0.as_mut()?;
        let (id, timer, front) = queue.replies.front_mut()?;
        let (id, timer) = (*id, *timer);
        let result = match front {
            Err(e) => Err(e.clone()),
            Ok(pending) => pending.try_take()?.map_err(ActionError::from),
        };
        queue.replies.pop_front();
        if queue.replies.is_empty() {
            self.0 = None;
        }
        Some((id, timer, result))
    }

    /// Resolves once the front reply may stand (then `pop_ready` has it).
    fn settled(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let Some(queue) = self.0.as_mut() else {
                return Poll::Ready(());
            };
            let HeldQueue { replies, wait } = &mut **queue;
            // The newest store ticket held: waiting for it wakes once for
            // a whole group commit.
            let newest = replies
                .iter()
                .rev()
                .find_map(|(_, _, r)| r.as_ref().ok().and_then(Pending::ticket));
            let Some((_, _, Ok(front))) = replies.front_mut() else {
                return Poll::Ready(());
            };
            if front.is_settled() {
                *wait = None;
                return Poll::Ready(());
            }
            if let Pending::Remote(future) = front {
                // Decided elsewhere: this reply's own answer.
                return match future.as_mut().poll(cx) {
                    Poll::Ready(outcome) => {
                        *front = Pending::Ready(outcome);
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            if wait.is_none() {
                *wait = newest.and_then(|ticket| front.wait_for(ticket));
            }
            let Some(waiting) = wait.as_mut() else {
                return Poll::Ready(());
            };
            match Pin::new(waiting).poll(cx) {
                Poll::Ready(_) => {
                    *wait = None;
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

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
        let engine = self.broker.node.engine.clone();
        // Replies waiting for their results to stand.
        let mut held = HeldReplies::default();
        loop {
            // Read on while few replies are held and the engine has room;
            // otherwise wait first (backpressure, not errors).
            let room = engine.room();
            let readable = held.len() < MAX_HELD_REPLIES && room.is_none();
            let waiting = !held.is_empty() || room.is_some();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.flush_held(&mut held).await;
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
                _ = async {
                    match room {
                        Some(room) => { let _ = room.await; }
                        None => held.settled().await,
                    }
                }, if waiting => {
                    self.release_held(&mut held);
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if self.ctx.is_none() && now >= connect_deadline {
                        debug!(session = %self.session.id, "no Connect in time");
                        return CloseReason::Unauthorized;
                    }
                    if self.token_expires.is_some_and(|t| now >= t) {
                        debug!(session = %self.session.id, "token expired");
                        self.flush_held(&mut held).await;
                        return CloseReason::TokenExpired;
                    }
                    if now >= last_rx + idle_timeout {
                        self.flush_held(&mut held).await;
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
                            Box::pin(self.handle_frame(&mut held, &frame)).await;
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

    async fn handle_frame(&mut self, held: &mut HeldReplies, frame: &Message) {
        self.run_command(held, frame).await;
        self.release_held(held);
        if self.session.rate.is_abusive() {
            debug!(session = %self.session.id, "persistent rate-limit abuse");
            self.flush_held(held).await;
            self.session.outbox.close(CloseReason::RateLimited);
        }
    }

    async fn run_command(&mut self, held: &mut HeldReplies, frame: &Message) {
        // Every frame draws on the session's command bucket, garbage too; the
        // frame is still decoded (bounded by the frame limit) so that the
        // `rate_limited` reply can carry the command's id.
        let admitted = self.session.rate.check_frame();
        let decoded = decode_command(self.session.encoding, frame);
        let timer = CommandTimer::start(decoded.as_ref().ok().map(|c| c.action.as_str()));
        let command = match (admitted, decoded) {
            (Err(limited), decoded) => {
                let id = match &decoded {
                    Ok(command) => Some(command.id),
                    Err(e) => e.id,
                };
                return self.answer(held, timer, id, Err(limited));
            }
            (Ok(()), Err(e)) => {
                self.broker.metrics.bad_request();
                return self.answer(held, timer, e.id, Err(ActionError::BadRequest(e.message)));
            }
            (Ok(()), Ok(command)) => command,
        };
        let id = command.id;
        let is_connect = command.action == "Connect";
        match &self.ctx {
            None if is_connect => {
                let outcome = self.connect(command).await;
                let failed = matches!(outcome, Err(ActionError::Unauthorized(_)));
                self.answer(held, timer, Some(id), outcome);
                // A failed Connect ends the session, after its reply.
                if failed {
                    self.flush_held(held).await;
                    self.session.outbox.close(CloseReason::Unauthorized);
                }
            }
            None => self.answer(held, timer, Some(id), Err(ActionError::NotConnected)),
            Some(_) if is_connect => self.answer(
                held,
                timer,
                Some(id),
                Err(ActionError::bad_request("already connected")),
            ),
            Some(_) if command.action == REFRESH_TOKEN => {
                let outcome = self.refresh_token(&command);
                self.answer(held, timer, Some(id), outcome);
            }
            Some(ctx) => {
                let ctx = ctx.clone();
                let actions = self.broker.actions.clone();
                if actions.pipelinable(&command.action) {
                    // Run now; its reply waits behind the earlier ones.
                    held.push(
                        id,
                        timer,
                        actions.start(&ctx, &command.action, command.payload),
                    );
                } else {
                    // Anything else may read what only durability makes
                    // visible (a replaced action may do anything): it runs
                    // once every earlier reply has been sent, so a session
                    // always reads its own writes.
                    self.drain_held(held).await;
                    let outcome = ctx.invoke(&command.action, command.payload).await;
                    self.answer(held, timer, Some(id), outcome);
                }
            }
        }
    }

    /// Queues an answer behind the replies still held (at once when none
    /// is).
    fn answer(
        &self,
        held: &mut HeldReplies,
        timer: CommandTimer,
        id: Option<u64>,
        outcome: Result<Value, ActionError>,
    ) {
        match (id, held.is_empty()) {
            (Some(id), false) => held.push(id, timer, outcome.map(Pending::ready)),
            _ => self.send_reply(timer, id, outcome),
        }
    }

    /// Encodes and sends one reply.
    fn send_reply(
        &self,
        timer: CommandTimer,
        id: Option<u64>,
        outcome: Result<Value, ActionError>,
    ) {
        self.broker.metrics.command(timer, outcome.as_ref().err());
        let encoding = self.session.encoding;
        let mut frame = match (&outcome, id) {
            (Ok(result), Some(id)) => encode_result(encoding, id, result),
            (Ok(_), None) => unreachable!("a result answers a command with an id"),
            (Err(error), id) => {
                if let ActionError::RateLimited(_) = error {
                    self.broker.metrics.rate_limited();
                }
                encode_error(encoding, id, &error.to_wire())
            }
        };
        let limit = self.broker.config.limits.outbound_frame_bytes();
        if frame.len() > limit {
            // Replies are bounded by construction; one that is not is the
            // broker's fault, and the client gets an answer, not a cut
            // connection.
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
        self.session.outbox.push(frame);
    }

    /// Sends the held replies whose results stand, in order.
    fn release_held(&self, held: &mut HeldReplies) {
        while let Some((id, timer, outcome)) = held.pop_ready() {
            self.send_reply(timer, Some(id), outcome);
        }
    }

    /// Waits until every held reply has been sent.
    async fn drain_held(&self, held: &mut HeldReplies) {
        while !held.is_empty() {
            held.settled().await;
            self.release_held(held);
        }
    }

    /// Waits (a bounded time) for the held replies and sends those that
    /// stand: a session that is being closed still acknowledges what it
    /// wrote before its close frame. Boxed: its timer and wait would
    /// otherwise take space in every session's future, idle ones too.
    fn flush_held<'b>(
        &'b self,
        held: &'b mut HeldReplies,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>> {
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.drain_held(held)).await;
            self.release_held(held);
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
        crate::actions::check_tokens(&command.payload)?;
        let (principal, until) = self.broker.auth().authenticate_until(Some(token), None)?;
        if *principal.identity != *ctx.identity() || principal.role != ctx.role() {
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
        crate::actions::check_tokens(&command.payload)?;
        let (principal, until) = self.broker.auth().authenticate_until(token, resume)?;
        let node = &self.broker.node;
        let actor = node.engine.identify(&principal).await?;
        let ctx = ActionContext {
            node: node.clone(),
            actions: self.broker.actions.clone(),
            actor,
            session: Some(self.session.clone()),
            internal: false,
        };
        let mut result = ctx.invoke("Connect", command.payload.clone()).await?;
        self.ctx = Some(ctx);
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
pub(crate) const REFRESH_TOKEN: &str = "RefreshToken";

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
