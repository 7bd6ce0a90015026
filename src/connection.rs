//! One session: a reader loop that runs commands, and a writer task that
//! drains the session's outbox onto the socket.
//!
//! The writer is the only code that writes to the socket. It takes every
//! queued frame at once, feeds them all, and flushes once per batch, so a
//! burst of pushes costs one system call rather than one per frame. The
//! reader never writes: replies go through the same outbox as pushes, which
//! keeps replies in command order and bounded like everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
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
use crate::outbox::{CloseReason, Outbox};

type Socket = WebSocketStream<TcpStream>;

/// How long a closing session waits for its last frames and the peer's
/// close reply before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// WebSocket settings for a session, from `[limits]`.
pub fn websocket_config(broker: &Broker) -> WebSocketConfig {
    let limits = &broker.config.limits;
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        // The outbox is the bound on what waits to be written; this only
        // stops tungstenite buffering without limit if writes keep failing.
        .max_write_buffer_size(limits.write_buffer_bytes + limits.max_frame_bytes * 2 + 4096)
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
}

/// Runs a session to its end.
pub async fn run_session(
    broker: Arc<Broker>,
    socket: Socket,
    encoding: Encoding,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let key = broker.next_session_key();
    let outbox = Arc::new(Outbox::new(broker.outbox_limits(), broker.metrics.clone()));
    let session = Arc::new(SessionHandle::new(key, encoding, outbox.clone(), peer));
    broker.sessions.insert(key, session.clone());
    broker.metrics.session_opened();
    info!(session = %session.id, %peer, encoding = encoding.subprotocol(), "session open");

    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        broker.config.limits.ping_interval(),
    ));
    let mut reader = Reader {
        broker: &broker,
        session: &session,
        ctx: None,
    };
    let ended = reader.run(&mut stream, &mut writer, &shutdown).await;
    outbox.close(ended);
    let reason = outbox.closing().unwrap_or(ended);
    if !writer.is_finished() {
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
    }
    writer.abort();
    if reason.close_frame().is_some() && reason != CloseReason::SlowConsumer {
        // Read until the peer answers our close frame, so that unread bytes
        // do not turn our close into a reset that loses the close frame.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    broker.detach_session(&session);
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
        let connect_deadline = Instant::now() + limits.connect_timeout();
        let idle = tokio::time::sleep(limits.idle_timeout());
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return CloseReason::Shutdown,
                // The writer ends only when the outbox is closing (overflow,
                // a requested close) or the socket broke.
                _ = &mut *writer => {
                    return self.session.outbox.closing().unwrap_or(CloseReason::ClientGone);
                }
                _ = sleep_until(connect_deadline), if self.ctx.is_none() => {
                    debug!(session = %self.session.id, "no Connect in time");
                    return CloseReason::Unauthorized;
                }
                _ = &mut idle => return CloseReason::Idle,
                frame = stream.next() => {
                    idle.as_mut().reset(Instant::now() + limits.idle_timeout());
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
                            self.handle_frame(&frame).await;
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

    async fn handle_frame(&mut self, frame: &Message) {
        let encoding = self.session.encoding;
        let command = match decode_command(encoding, frame) {
            Ok(command) => command,
            Err(e) => {
                self.broker.metrics.bad_request();
                let error = ActionError::BadRequest(e.message).to_wire();
                self.session
                    .outbox
                    .push(encode_error(encoding, e.id, &error));
                return;
            }
        };
        let id = command.id;
        let store = self.broker.store.as_ref();
        if store.is_some_and(|s| !s.has_room()) {
            let error = ActionError::Internal("storage is overloaded; retry shortly".into());
            self.session
                .outbox
                .push(encode_error(encoding, Some(id), &error.to_wire()));
            return;
        }
        let written_before = store.map(|s| s.last_ticket());
        let outcome = match &self.ctx {
            Some(ctx) if command.action == "Connect" => {
                let _ = ctx;
                Err(ActionError::bad_request("already connected"))
            }
            Some(ctx) => ctx.invoke(&command.action, command.payload).await,
            None if command.action == "Connect" => self.connect(command).await,
            None => Err(ActionError::NotConnected),
        };
        // A command that wrote anything is answered once it is durable.
        if let (Some(store), Ok(_)) = (store, &outcome) {
            let written = store.last_ticket();
            if Some(written) != written_before {
                store.wait_durable(written).await;
            }
        }
        let frame = match &outcome {
            Ok(result) => encode_result(encoding, id, result),
            Err(error) => encode_error(encoding, Some(id), &error.to_wire()),
        };
        self.session.outbox.push(frame);
        if let Err(ActionError::Unauthorized(_)) = outcome {
            self.session.outbox.close(CloseReason::Unauthorized);
        }
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
        let principal = self
            .broker
            .auth
            .authenticate(token, resume)
            .map_err(|e| ActionError::Unauthorized(e.to_string()))?;
        let ctx = ActionContext {
            broker: self.broker.clone(),
            identity: self.broker.identity_for(&principal)?,
            session: Some(self.session.clone()),
            internal: false,
        };
        let result = ctx.invoke("Connect", command.payload.clone()).await?;
        // The identity the session was attached to (looked up again in case
        // the reaper replaced it between lookup and attach).
        let identity = self.broker.identity_for(&principal)?;
        self.ctx = Some(ActionContext { identity, ..ctx });
        Ok(result)
    }
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
            let write = async {
                for frame in batch.drain(..) {
                    sink.feed(frame).await?;
                }
                sink.flush().await
            };
            tokio::select! {
                written = write => if written.is_err() { return },
                // A stalled socket must not keep a 4008'd session alive.
                _ = outbox.overflowed() => return,
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
