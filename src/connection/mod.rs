//! One session, one task: it reads the client's frames and runs its
//! commands in order, and writes out whatever the session's outbox could
//! not write at once.
//!
//! Most frames never wait for this task: a push or reply finds the outbox
//! empty and goes straight to the socket (see `outbox`). What the socket
//! would not take stays queued, and this task writes the whole queue with
//! one `writev` as soon as the socket is writable again. The task never
//! blocks on writing: while the socket is full it goes on reading, so a
//! client that does not read ends with 4008 when its outbox overflows.
//!
//! A reply that acknowledges a write is held until the write is durable,
//! but the session does not wait for it: it goes on reading and running the
//! session's next commands, and held replies are released in command order
//! as the store's group commits cover them. A client that pipelines its
//! commands (a console flushing a backlog, a bot) then gets one commit per
//! burst instead of one commit per command. Before the task waits, replies
//! that wait for the store alone are parked in the outbox (`park_held`):
//! the commit writes them itself, so the task is not woken to acknowledge.

mod alarms;
mod held;
mod socket;

pub(crate) use alarms::{shut_down_sessions, sweep};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::actions::ActionContext;
use crate::broker::Broker;
use crate::codec::{decode_command, encode_error, encode_result, Command};
use crate::delivery::session::SessionHandle;
use crate::engine::{EngineError, Pending};
use crate::error::ActionError;
use crate::http::Upgraded;
use crate::metrics::CommandTimer;
use crate::outbox::{CloseReason, Outbox, ParkedReply, Progress, Signal, Signals};
use crate::rate_limit::SessionLimiter;
use crate::ws::{self, FrameReader, Inbound, ReadError};

use held::HeldReplies;
use socket::{Read, Socket};

/// What woke a waiting session.
enum Woke {
    /// Signals from elsewhere: a due alarm, the node shutting down.
    Signals(Signals),
    /// The front held reply stands, or the engine has room again.
    Settled,
    /// Something to write, a close asked for, or the socket writable again.
    Wanted,
    /// Bytes read (frames in `inbound`), or the end of the connection.
    Read(Read),
}

/// How long a closing session waits for its last frames and the peer's
/// close reply before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Replies a session may have waiting for durability before it stops
/// reading its commands. Bounds what one session can queue in the store,
/// and its memory, while letting a pipelining client fill a group commit.
const MAX_HELD_REPLIES: usize = 32;

/// Opens a session on an upgraded connection and returns its task. The
/// session is set up here, before the task's future exists, so that the
/// future holds each of its parts once: that future is most of what an idle
/// session costs.
pub(crate) fn run_session(
    broker: Arc<Broker>,
    upgraded: Upgraded,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let mut session = SessionTask::open(broker, upgraded, peer, shutdown);
    async move {
        let ended = session.serve().await;
        // Boxed: closing needs timers and buffers that a live session
        // should not carry.
        Box::pin(session.close(ended)).await;
    }
}

/// A session's task: its socket, its frame reader, and what runs commands.
struct SessionTask {
    reader: Reader,
    socket: Socket,
    frames: FrameReader,
    /// Bytes that came with the upgrade request (the first frames).
    leftover: Vec<u8>,
    shutdown: CancellationToken,
}

/// A session's deadlines (besides its token's, kept with the token).
struct Clock {
    connect_deadline: Instant,
    last_rx: Instant,
    next_ping: Instant,
}

impl SessionTask {
    fn open(
        broker: Arc<Broker>,
        upgraded: Upgraded,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> SessionTask {
        let Upgraded {
            stream,
            leftover,
            encoding,
        } = upgraded;
        let node = &broker.node;
        let key = node.next_session_key();
        let outbox = Arc::new(Outbox::new(node.outbox_limits(), broker.metrics.clone()));
        let session = Arc::new(
            SessionHandle::new(key, encoding, outbox.clone())
                .with_rate_limiter(SessionLimiter::new(&broker.config.rate_limits)),
        );
        let limits = &broker.config.limits;
        let socket = Socket::new(stream, &outbox, limits.read_buffer_bytes);
        let frames = FrameReader::new(limits.max_frame_bytes);
        node.delivery.open_session(&session);
        broker.metrics.session_opened();
        info!(session = %session.id, %peer, encoding = encoding.subprotocol(), "session open");
        SessionTask {
            reader: Reader {
                broker,
                session,
                ctx: None,
                token_expires: None,
            },
            socket,
            frames,
            leftover,
            shutdown,
        }
    }

    /// Reads and runs commands, and writes what waits, until the session
    /// ends; returns why.
    async fn serve(&mut self) -> CloseReason {
        let SessionTask {
            reader,
            socket,
            frames,
            leftover,
            shutdown,
        } = self;
        let broker = reader.broker.clone();
        let limits = &broker.config.limits;
        let outbox = reader.session.outbox.clone();
        let now = Instant::now();
        let mut clock = Clock {
            connect_deadline: now + limits.connect_timeout(),
            last_rx: now,
            next_ping: now + limits.ping_interval(),
        };
        // Replies waiting for their results to stand.
        let mut held = HeldReplies::default();
        // Frames read and not yet run (allocated only while there are some).
        let mut inbound: Vec<Inbound> = Vec::new();
        if !leftover.is_empty() {
            if let Err(e) = frames.feed(leftover, &mut inbound) {
                return reader.refused(e);
            }
        }
        *leftover = Vec::new();
        // Opened after the node told its sessions it is shutting down.
        if shutdown.is_cancelled() {
            return CloseReason::Shutdown;
        }
        // One alarm for every deadline (Connect, idle, token expiry, the
        // next ping), set again only when it rings or a deadline moves
        // earlier: a busy session does not touch it for every frame.
        let mut alarm = reader.next_alarm(&clock);
        outbox.set_alarm(alarm);
        loop {
            if !inbound.is_empty() {
                clock.last_rx = Instant::now();
                // Boxed: running commands needs far more state than waiting
                // does, and an idle session should not carry it.
                if let Some(end) = Box::pin(reader.run_frames(&mut held, &mut inbound)).await {
                    return end;
                }
                // A Connect or RefreshToken may have brought a deadline
                // closer than the alarm set.
                let next = reader.next_alarm(&clock);
                if next < alarm {
                    alarm = next;
                    outbox.set_alarm(alarm);
                }
            }
            let blocked = match socket.write_queued(&outbox) {
                Ok(progress) => progress == Progress::Blocked,
                Err(_) => return CloseReason::ClientGone,
            };
            if let Some(reason) = outbox.closing() {
                if reason != CloseReason::SlowConsumer {
                    reader.flush_held(&mut held).await;
                }
                return reason;
            }
            // Read on while few replies are held and the engine has room;
            // otherwise wait first (backpressure, not errors).
            let mut room = broker.node.engine.room();
            reader.park_held(&mut held);
            // Parked replies count against the bound too: past it, wait
            // for the store to settle the newest of them, in the slot the
            // engine's room takes (whatever lives across the wait below is
            // in every session's task, idle ones too).
            let full = held.len() + outbox.parked_len() >= MAX_HELD_REPLIES;
            let readable = !full && room.is_none();
            let mut awaits_parked = false;
            if full && room.is_none() {
                room = outbox
                    .parked_newest()
                    .map(|(ticket, commits)| Pending::Durable {
                        ticket,
                        value: Some(()),
                        commits,
                        registered: None,
                    });
                awaits_parked = room.is_some();
            }
            let waiting = !held.is_empty() || room.is_some();
            // Everything a waiting session waits on is polled here rather
            // than awaited: the wake-ups live in the outbox, the socket's
            // registration and the store's commits, so a waiting session
            // stores no future for any of them.
            let woke = std::future::poll_fn(|cx| {
                let signals = outbox.take_signals();
                if !signals.is_empty() {
                    return Poll::Ready(Woke::Signals(signals));
                }
                if waiting {
                    let settled = match room.as_mut() {
                        Some(room) => Pin::new(room).poll(cx).map(drop),
                        None => held.poll_settled(cx),
                    };
                    if settled.is_ready() {
                        return Poll::Ready(Woke::Settled);
                    }
                }
                let writes = socket.writes_itself();
                if writes && outbox.poll_wanted(cx).is_ready() {
                    return Poll::Ready(Woke::Wanted);
                }
                if !writes && outbox.poll_closing(cx).is_ready() {
                    return Poll::Ready(Woke::Wanted);
                }
                if blocked && socket.poll_writable(cx).is_ready() {
                    return Poll::Ready(Woke::Wanted);
                }
                if readable {
                    if let Poll::Ready(read) = socket.poll_read(cx, frames, &mut inbound) {
                        return Poll::Ready(Woke::Read(read));
                    }
                }
                // Taken again now that the wakers are registered: a signal
                // raised in between would otherwise wait for the next one.
                let signals = outbox.take_signals();
                if !signals.is_empty() {
                    return Poll::Ready(Woke::Signals(signals));
                }
                Poll::Pending
            })
            .await;
            drop(room);
            match woke {
                Woke::Signals(signals) => {
                    if signals.has(Signal::Shutdown) {
                        reader.flush_held(&mut held).await;
                        return CloseReason::Shutdown;
                    }
                    if signals.has(Signal::Tick) {
                        if let Some(end) = reader.deadlines(&mut clock) {
                            if end != CloseReason::Unauthorized {
                                reader.flush_held(&mut held).await;
                            }
                            return end;
                        }
                        alarm = reader.next_alarm(&clock);
                        outbox.set_alarm(alarm);
                    }
                }
                // The parked replies are written here if the store's
                // thread has not yet.
                Woke::Settled if awaits_parked => outbox.release_parked(),
                Woke::Settled => reader.release_held(&mut held),
                Woke::Wanted => {}
                Woke::Read(read) => {
                    clock.last_rx = Instant::now();
                    match read {
                        Read::Frames => {}
                        Read::Gone => return CloseReason::ClientGone,
                        Read::Refused(e) => return reader.refused(e),
                    }
                }
            }
        }
    }

    /// Ends the session: its close frame after what it has queued, within
    /// a grace period.
    async fn close(&mut self, ended: CloseReason) {
        let session = &self.reader.session;
        let broker = &self.reader.broker;
        let outbox = &session.outbox;
        outbox.close(ended);
        let reason = outbox.closing().unwrap_or(ended);
        // Nothing more is pushed to a closing session: stop fanning out to it
        // now, not once its last frames are written.
        broker.node.engine.detach(session);
        // A slow consumer gets until the idle timeout to read the frames
        // already on their way and its 4008 (the contract's close-frame rule);
        // any other close a short grace. Shutdown cuts either short.
        let limits = &broker.config.limits;
        let grace = if reason == CloseReason::SlowConsumer {
            limits.idle_timeout()
        } else {
            CLOSE_GRACE
        };
        if reason != CloseReason::ClientGone {
            let deadline = Instant::now() + grace;
            let closed = tokio::select! {
                closed = self.socket.finish(outbox, reason, deadline) => closed,
                _ = self.shutdown.cancelled(), if reason != CloseReason::Shutdown => false,
            };
            if closed && reason != CloseReason::ClientClosed {
                let _ =
                    tokio::time::timeout(CLOSE_GRACE, self.socket.linger(&mut self.frames)).await;
            }
        }
        broker.metrics.session_closed();
        info!(
            session = %session.id,
            identity = session.identity().as_deref().unwrap_or("-"),
            %reason,
            "session closed"
        );
    }
}

/// Runs a session's commands: what `Connect` established, and its token.
struct Reader {
    broker: Arc<Broker>,
    session: Arc<SessionHandle>,
    /// Set once `Connect` succeeded.
    ctx: Option<ActionContext>,
    /// When the session's client token stops verifying (`exp` + leeway):
    /// the session is closed with 4001 then, unless `RefreshToken` moved it.
    token_expires: Option<Instant>,
}

impl Reader {
    /// When the session next has something to check: its earliest
    /// deadline or its next ping.
    fn next_alarm(&self, clock: &Clock) -> Instant {
        let idle = self.broker.config.limits.idle_timeout();
        let mut deadline = (clock.last_rx + idle).min(clock.next_ping);
        if self.ctx.is_none() {
            deadline = deadline.min(clock.connect_deadline);
        }
        if let Some(expires) = self.token_expires {
            deadline = deadline.min(expires);
        }
        deadline
    }

    /// The session's alarm rang: the deadline that passed ends it (after
    /// its held replies, but for a missed Connect), or a ping is due.
    fn deadlines(&self, clock: &mut Clock) -> Option<CloseReason> {
        let limits = &self.broker.config.limits;
        let now = Instant::now();
        if self.ctx.is_none() && now >= clock.connect_deadline {
            debug!(session = %self.session.id, "no Connect in time");
            return Some(CloseReason::Unauthorized);
        }
        if self.token_expires.is_some_and(|t| now >= t) {
            debug!(session = %self.session.id, "token expired");
            return Some(CloseReason::TokenExpired);
        }
        if now >= clock.last_rx + limits.idle_timeout() {
            return Some(CloseReason::Idle);
        }
        if now >= clock.next_ping {
            self.session.outbox.push(ws::frame(ws::PING, b""));
            clock.next_ping = now + limits.ping_interval();
        }
        None
    }

    /// Why a session whose client broke the framing rules ends.
    fn refused(&self, error: ReadError) -> CloseReason {
        match error {
            ReadError::TooLarge => {
                self.broker.metrics.frame_too_large();
                CloseReason::FrameTooLarge
            }
            ReadError::InvalidUtf8 => CloseReason::InvalidPayload,
            ReadError::Protocol(e) => {
                debug!(session = %self.session.id, error = e, "protocol error");
                CloseReason::ProtocolError
            }
        }
    }

    /// Runs the frames read, in order; returns why the session ends if one
    /// ends it.
    async fn run_frames(
        &mut self,
        held: &mut HeldReplies,
        inbound: &mut Vec<Inbound>,
    ) -> Option<CloseReason> {
        // Taken, so the buffer goes once they have run: an idle session
        // keeps none.
        for frame in std::mem::take(inbound) {
            match frame {
                Inbound::Close(_) => return Some(CloseReason::ClientClosed),
                Inbound::Ping(payload) => {
                    self.session.outbox.push(ws::frame(ws::PONG, &payload));
                }
                Inbound::Pong => {}
                command => {
                    if held.len() >= MAX_HELD_REPLIES {
                        self.park_held(held);
                    }
                    while held.len() + self.session.outbox.parked_len() >= MAX_HELD_REPLIES {
                        if held.is_empty() {
                            self.await_parked().await;
                        } else {
                            held.settled().await;
                            self.release_held(held);
                        }
                    }
                    self.handle_frame(held, &command).await;
                    if self.session.outbox.is_closing() {
                        return self.session.outbox.closing();
                    }
                }
            }
        }
        None
    }

    async fn handle_frame(&mut self, held: &mut HeldReplies, frame: &Inbound) {
        self.run_command(held, frame).await;
        self.release_held(held);
        if self.session.rate.is_abusive() {
            debug!(session = %self.session.id, "persistent rate-limit abuse");
            self.flush_held(held).await;
            self.session.outbox.close(CloseReason::RateLimited);
        }
    }

    async fn run_command(&mut self, held: &mut HeldReplies, frame: &Inbound) {
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

    /// Encodes and sends one reply (behind any parked ones).
    fn send_reply(
        &self,
        timer: CommandTimer,
        id: Option<u64>,
        outcome: Result<Value, ActionError>,
    ) {
        let frame = self.encode_reply(Some(timer), id, outcome);
        self.session.outbox.push_reply(frame);
    }

    /// Encodes one reply; with its timer, records the command as answered.
    fn encode_reply(
        &self,
        timer: Option<CommandTimer>,
        id: Option<u64>,
        outcome: Result<Value, ActionError>,
    ) -> bytes::Bytes {
        if let Some(timer) = timer {
            self.broker.metrics.command(timer, outcome.as_ref().err());
        }
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
        frame
    }

    /// Hands the held replies to the outbox when they wait for the store
    /// alone: the thread that makes their writes durable then writes them,
    /// and this session's task is not woken for its acknowledgements.
    fn park_held(&self, held: &mut HeldReplies) {
        let Some((commits, replies)) = held.take_for_store() else {
            return;
        };
        // Encoded before the outbox's lock is taken: the store's writer
        // takes it too.
        let parked = replies
            .into_iter()
            .map(|(id, timer, result)| self.parked_reply(id, timer, result))
            .collect();
        self.session
            .outbox
            .park(&commits, self.session.encoding, parked);
    }

    /// One held reply as it will be written: encoded as it stands once its
    /// ticket is durable, or (settled already, or no write to wait for)
    /// as it stands now, waiting only its turn.
    fn parked_reply(
        &self,
        id: u64,
        timer: CommandTimer,
        result: Result<Pending<Value>, ActionError>,
    ) -> ParkedReply {
        let outcome = match result.map(Pending::into_durable) {
            Ok(Ok((ticket, value, commits))) => match commits.outcome(ticket) {
                None => {
                    return ParkedReply {
                        ticket,
                        id,
                        timer: Some(timer),
                        frame: self.encode_reply(None, Some(id), Ok(value)),
                    }
                }
                Some(Err(why)) => Err(ActionError::Unavailable(why)),
                Some(Ok(())) => Ok(value),
            },
            Ok(Err(mut pending)) => pending
                .try_take()
                .unwrap_or_else(|| Err(EngineError::Internal("unsettled".into())))
                .map_err(ActionError::from),
            Err(e) => Err(e),
        };
        ParkedReply {
            ticket: 0,
            id,
            timer: None,
            frame: self.encode_reply(Some(timer), Some(id), outcome),
        }
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
        self.await_parked().await;
    }

    /// Waits until the store has settled every parked reply's ticket, and
    /// writes them if the store's thread has not yet (it writes them when
    /// it settles them; either writes each once, in order).
    async fn await_parked(&self) {
        let outbox = &self.session.outbox;
        if let Some((newest, commits)) = outbox.parked_newest() {
            commits.wait(newest).await;
            outbox.release_parked();
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
            self.session.outbox.release_parked();
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
