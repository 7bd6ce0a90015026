//! One client session: a WebSocket speaking protocol v1, with the generic
//! handling of replies and pushes every scenario shares.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{self, Decoded, Encoding, Incoming, Op, ServerKind};
use crate::stats::{now_ns, ChannelTrackers, Shared};
use crate::target::{self, Route, Target, Ws};

/// Settings every session of a run shares.
#[derive(Clone)]
pub struct SessionCfg {
    /// The `--url`s; a `Route` picks one.
    pub targets: Vec<Target>,
    pub kind: ServerKind,
    pub enc: Encoding,
    pub buf: usize,
    pub timeout: Duration,
}

/// Who a session is.
#[derive(Debug, Clone)]
pub enum Login {
    /// An anonymous customer (widget).
    Anonymous,
    /// An agent: a minted token for the broker, the bare name for the peer.
    Agent {
        identity: String,
        token: Option<String>,
    },
}

impl Login {
    fn op(&self) -> Op<'_> {
        match self {
            Login::Anonymous => Op::Connect {
                token: None,
                identity: None,
            },
            Login::Agent { identity, token } => Op::Connect {
                token: token.as_deref(),
                identity: Some(identity),
            },
        }
    }
}

/// A push, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    MessageAdded { own: bool, tagged: bool },
    EngagementStarted,
    EngagementRestarted,
    EngagementEnded,
    TypingStarted,
    TypingEnded,
    MemberJoined,
    MemberLeft,
    Other,
}

/// What one received WebSocket message was.
#[derive(Debug)]
pub enum Ev {
    Reply {
        id: Option<u64>,
        /// The error code when the reply is a failure.
        error: Option<String>,
    },
    Push(Push),
    Control,
    Closed(Option<u16>),
    /// Undecodable frame (already counted as an error).
    Bad,
}

/// A reply's fields the scenarios need, owned.
#[derive(Debug, Default, Clone)]
pub struct Reply {
    pub channel_sid: Option<String>,
    pub last_index: Option<i64>,
    pub identity: Option<String>,
}

/// Why a call failed; `key()` is how it is counted.
#[derive(Debug)]
pub enum CallErr {
    Reply(String),
    Closed(Option<u16>),
    Io(String),
    Timeout,
}

impl CallErr {
    pub fn key(&self, action: &str) -> String {
        match self {
            CallErr::Reply(code) => format!("{action}: {code}"),
            CallErr::Closed(Some(c)) => format!("closed by server: {c}"),
            CallErr::Closed(None) => "closed by server".to_string(),
            CallErr::Io(e) => format!("{action}: {e}"),
            CallErr::Timeout => format!("{action}: timeout"),
        }
    }
}

pub struct Session {
    pub ws: Ws,
    pub kind: ServerKind,
    pub enc: Encoding,
    next_id: u64,
    pub identity: String,
    pub trackers: ChannelTrackers,
    pub stats: Shared,
    pub timeout: Duration,
    /// Kinds of push seen so far (`Push::bit`).
    pub seen: u32,
}

impl Push {
    pub fn bit(self) -> u32 {
        1 << match self {
            Push::MessageAdded { .. } => 0,
            Push::EngagementStarted => 1,
            Push::EngagementRestarted => 2,
            Push::EngagementEnded => 3,
            Push::TypingStarted => 4,
            Push::TypingEnded => 5,
            Push::MemberJoined => 6,
            Push::MemberLeft => 7,
            Push::Other => 8,
        }
    }
}

/// Short label of a connection-level failure, with volatile detail cut so
/// that equal causes count together.
pub fn short(e: &str) -> String {
    let cut = e.find(" (os error").unwrap_or(e.len());
    e[..cut].chars().take(120).collect()
}

impl Session {
    /// Open a WebSocket along `route` and identify as `login`.
    /// Connection failures are counted here.
    pub async fn open(
        cfg: &SessionCfg,
        route: Route,
        login: &Login,
        stats: &Shared,
    ) -> Result<Session, String> {
        let t0 = now_ns();
        let subprotocol = cfg.kind.subprotocol(cfg.enc);
        let target = &cfg.targets[route.target];
        let ws = match target::open(target, route.src, subprotocol, cfg.buf, cfg.timeout).await {
            Ok(ws) => ws,
            Err(e) => {
                let mut s = stats.borrow_mut();
                s.conn_failed += 1;
                s.error(short(&e));
                return Err(e);
            }
        };
        let mut sess = Session {
            ws,
            kind: cfg.kind,
            enc: cfg.enc,
            next_id: 0,
            identity: String::new(),
            trackers: ChannelTrackers::default(),
            stats: stats.clone(),
            timeout: cfg.timeout,
            seen: 0,
        };
        let op = login.op();
        match sess.call_op(op).await {
            Ok(r) => {
                sess.identity = r.identity.unwrap_or_default();
                let mut s = stats.borrow_mut();
                s.connected(route.target);
                s.timing("connect time", now_ns() - t0);
                Ok(sess)
            }
            Err(e) => {
                let k = e.key(op.action(cfg.kind));
                let mut s = stats.borrow_mut();
                s.conn_failed += 1;
                s.error(k.clone());
                Err(k)
            }
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Send one command and return its id (without flushing when `feed`).
    pub async fn send<P: Serialize>(
        &mut self,
        action: &str,
        payload: Option<P>,
        feed: bool,
    ) -> Result<u64, CallErr> {
        let id = self.next_id();
        let msg = proto::encode(self.enc, id, action, payload);
        let r = if feed {
            self.ws.feed(msg).await
        } else {
            self.ws.send(msg).await
        };
        r.map_err(|e| CallErr::Io(short(&e.to_string())))?;
        Ok(id)
    }

    /// The action name of `op` on this session's server (for error keys).
    pub fn action(&self, op: Op) -> &'static str {
        op.action(self.kind)
    }

    /// Send one command of the scenario vocabulary (see [`Op`]) and return
    /// its id, without flushing when `feed`.
    pub async fn send_op(&mut self, op: Op<'_>, feed: bool) -> Result<u64, CallErr> {
        let id = self.next_id();
        let msg = op.encode(self.kind, self.enc, id);
        let r = if feed {
            self.ws.feed(msg).await
        } else {
            self.ws.send(msg).await
        };
        r.map_err(|e| CallErr::Io(short(&e.to_string())))?;
        Ok(id)
    }

    /// [`Session::send_op`] and wait for its reply.
    pub async fn call_op(&mut self, op: Op<'_>) -> Result<Reply, CallErr> {
        let id = self.send_op(op, false).await?;
        self.await_reply(id).await
    }

    /// Open a channel of this session's own (`StartEngagement` on the
    /// broker, a subscription to the fresh topic `name` on the peer) and
    /// return its sid; the error is the key it is counted under.
    pub async fn start_channel(&mut self, name: &str) -> Result<String, String> {
        let op = Op::StartChannel { name };
        let action = self.action(op);
        match self.call_op(op).await {
            Ok(Reply {
                channel_sid: Some(sid),
                ..
            }) => {
                self.trackers.expect(&sid, Some(0));
                Ok(sid)
            }
            Ok(_) => Err(format!("{action}: result without channelSid")),
            Err(e) => Err(e.key(action)),
        }
    }

    /// Attach to channel `sid` as a member (`join`) or as an observer, and
    /// set up its order tracking from the reply; the error is the key it is
    /// counted under.
    pub async fn attach(&mut self, sid: &str, join: bool) -> Result<(), String> {
        let op = if join {
            Op::Join { sid }
        } else {
            Op::Observe { sid }
        };
        let action = self.action(op);
        let r = self.call_op(op).await.map_err(|e| e.key(action))?;
        // The broker's `Subscribe` starts an observer at the next message
        // (its reply has no lastIndex: the channel here is fresh, so 0);
        // `JoinChannel` and the peer's `subscribe` say where they start.
        let next = (r.last_index.unwrap_or(-1) + 1).max(0) as u64;
        self.trackers.expect(sid, Some(next));
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), CallErr> {
        self.ws
            .flush()
            .await
            .map_err(|e| CallErr::Io(short(&e.to_string())))
    }

    /// Send a command and wait for its reply, handling pushes meanwhile.
    pub async fn call<P: Serialize>(
        &mut self,
        action: &str,
        payload: Option<P>,
    ) -> Result<Reply, CallErr> {
        let id = self.send(action, payload, false).await?;
        self.await_reply(id).await
    }

    /// Wait for the reply to command `id`, handling pushes meanwhile.
    async fn await_reply(&mut self, id: u64) -> Result<Reply, CallErr> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(CallErr::Timeout),
                Ok(None) => return Err(CallErr::Closed(None)),
                Ok(Some(Err(e))) => return Err(CallErr::Io(short(&e.to_string()))),
                Ok(Some(Ok(m))) => m,
            };
            if !proto::frame_matches(self.enc, &msg) {
                self.stats.borrow_mut().encoding_mismatch += 1;
            }
            let size = msg.len();
            let inc = match proto::decode(&msg) {
                Ok(Decoded::Frame(f)) => f,
                Ok(Decoded::Control) => continue,
                Ok(Decoded::Close(c)) => return Err(CallErr::Closed(c)),
                Err(e) => {
                    self.stats
                        .borrow_mut()
                        .error(format!("undecodable frame: {}", short(&e)));
                    continue;
                }
            };
            if inc.is_reply() {
                if inc.id == Some(id) {
                    if let Some(code) = inc.error_code() {
                        return Err(CallErr::Reply(code.to_string()));
                    }
                    let r = inc.result.unwrap_or_default();
                    return Ok(Reply {
                        channel_sid: r.channel_sid.map(|s| s.0.into_owned()),
                        last_index: r.last_index.map(|n| n.0 as i64),
                        identity: r.identity.map(|s| s.0.into_owned()),
                    });
                }
                self.count_stray_reply(&inc);
            } else {
                self.on_push(&inc, size);
            }
        }
    }

    fn count_stray_reply(&mut self, inc: &Incoming) {
        let mut s = self.stats.borrow_mut();
        match inc.error_code() {
            Some(code) => s.error(format!("reply to id {:?}: {code}", inc.id)),
            None => s.error("unexpected reply id"),
        }
    }

    /// Account a push of `size` bytes: deliveries, latency and order for
    /// `messageAdded`.
    pub fn on_push(&mut self, inc: &Incoming, size: usize) -> Push {
        let p = self.classify_push(inc, size);
        self.seen |= p.bit();
        p
    }

    fn classify_push(&mut self, inc: &Incoming, size: usize) -> Push {
        let Some(ev) = inc.event.as_ref() else {
            self.stats
                .borrow_mut()
                .error("frame with neither id nor event");
            return Push::Other;
        };
        match ev.as_str() {
            "messageAdded" => {
                let now = now_ns();
                let d = inc.data.as_ref();
                let sid = d
                    .and_then(|d| d.channel_sid.as_ref())
                    .map(|s| s.as_str())
                    .unwrap_or("");
                let idx = d.and_then(|d| d.index).map(|n| n.as_u64());
                let t = d.and_then(|d| d.attributes).and_then(|a| a.t);
                let own = d
                    .and_then(|d| d.author.as_ref())
                    .is_some_and(|a| a.as_str() == self.identity);
                let mut s = self.stats.borrow_mut();
                let order = match idx {
                    Some(i) => self.trackers.observe(sid, i),
                    None => {
                        s.error("messageAdded without index");
                        crate::stats::OrderEvent::InOrder
                    }
                };
                s.delivery(t, own, order, now);
                s.delivered_bytes += size as u64;
                Push::MessageAdded {
                    own,
                    tagged: t.is_some(),
                }
            }
            "typingStarted" | "typingEnded" => {
                self.stats.borrow_mut().typing_received += 1;
                if ev.as_str() == "typingStarted" {
                    Push::TypingStarted
                } else {
                    Push::TypingEnded
                }
            }
            other => {
                self.stats.borrow_mut().push_seen(other);
                match other {
                    "engagementStarted" => Push::EngagementStarted,
                    "engagementRestarted" => Push::EngagementRestarted,
                    "engagementEnded" => Push::EngagementEnded,
                    "memberJoined" => Push::MemberJoined,
                    "memberLeft" => Push::MemberLeft,
                    _ => Push::Other,
                }
            }
        }
    }

    /// Classify one received message (already pulled from the stream).
    pub fn process(&mut self, msg: &Message) -> Ev {
        if !proto::frame_matches(self.enc, msg) {
            self.stats.borrow_mut().encoding_mismatch += 1;
        }
        match proto::decode(msg) {
            Ok(Decoded::Frame(inc)) => {
                if inc.is_reply() {
                    Ev::Reply {
                        id: inc.id,
                        error: inc.error_code().map(str::to_string),
                    }
                } else {
                    Ev::Push(self.on_push(&inc, msg.len()))
                }
            }
            Ok(Decoded::Control) => Ev::Control,
            Ok(Decoded::Close(c)) => Ev::Closed(c),
            Err(e) => {
                self.stats
                    .borrow_mut()
                    .error(format!("undecodable frame: {}", short(&e)));
                Ev::Bad
            }
        }
    }

    /// Next received message, classified; `Closed` on end of stream.
    pub async fn next_ev(&mut self) -> Ev {
        match self.ws.next().await {
            None => Ev::Closed(None),
            Some(Err(e)) => {
                self.stats
                    .borrow_mut()
                    .error(format!("read: {}", short(&e.to_string())));
                Ev::Closed(None)
            }
            Some(Ok(m)) => self.process(&m),
        }
    }

    /// Close politely: send a Close frame and wait (bounded) for the server
    /// to finish the close handshake and end the TCP stream.
    pub async fn close(mut self, wait: Duration) {
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Count a server-initiated close.
pub fn count_close(stats: &Shared, code: Option<u16>) {
    let key = match code {
        Some(c) => format!("closed by server: {c}"),
        None => "closed by server".to_string(),
    };
    stats.borrow_mut().error(key);
}
