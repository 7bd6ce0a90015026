//! A session's bounded outbound queue.
//!
//! Publishers never wait on a recipient: [`Outbox::push`] takes a short lock,
//! appends a shared frame and wakes the session's writer task. When the queue
//! is over its frame or byte bound the session is marked for closing with
//! 4008 and its queue is emptied at once, so a stalled reader costs nothing
//! more than the bound and never delays the publisher or other recipients.
//!
//! Typing pushes are the only frames the broker may drop: they go through
//! [`Outbox::push_droppable`], which keeps them in order with everything else
//! but refuses them when the queue is under pressure.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::metrics::Metrics;

/// Why a session ends. The writer turns it into a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the socket or it broke; no close frame to send.
    ClientGone,
    /// 4000: the broker is shutting down.
    Shutdown,
    /// 4001: unauthorized, or no `Connect` in time.
    Unauthorized,
    /// 4001: the session's client token expired (and was not refreshed).
    TokenExpired,
    /// 4003: disconnected by the server (the HTTP API).
    Disconnected,
    /// 4008: the outbound queue overflowed.
    SlowConsumer,
    /// 4009: a frame over the size limit.
    FrameTooLarge,
    /// 4029: persistent rate-limit abuse.
    RateLimited,
    /// 1001: nothing received (not even a pong) within the idle timeout.
    Idle,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
}

impl CloseReason {
    /// Close code and reason text, or `None` when no close frame is sent.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            CloseReason::ClientGone => None,
            CloseReason::Shutdown => Some((4000, "server shutting down")),
            CloseReason::Unauthorized => Some((4001, "unauthorized")),
            CloseReason::TokenExpired => Some((4001, "token expired")),
            CloseReason::Disconnected => Some((4003, "disconnected by the server")),
            CloseReason::SlowConsumer => Some((4008, "slow consumer")),
            CloseReason::FrameTooLarge => Some((4009, "frame too large")),
            CloseReason::RateLimited => Some((4029, "rate limited")),
            CloseReason::Idle => Some((1001, "idle timeout")),
            CloseReason::ProtocolError => Some((1002, "protocol error")),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CloseReason::ClientGone => "client closed",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::TokenExpired => "token expired",
            CloseReason::Disconnected => "disconnected by the server",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::FrameTooLarge => "frame too large",
            CloseReason::RateLimited => "rate limited",
            CloseReason::Idle => "idle timeout",
            CloseReason::ProtocolError => "protocol error",
        };
        f.write_str(text)
    }
}

/// Bounds of one outbox, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub frames: usize,
    pub bytes: usize,
    pub typing_frames: usize,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the single writer task; `notify_one` keeps a permit when the
    /// writer is busy, so no wake-up is lost.
    wake: Notify,
    /// Wakes whoever waits for an overflow (the reader, and the writer
    /// while the socket is not taking frames).
    overflow: Notify,
    limits: OutboxLimits,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    bytes: usize,
    /// How many of the queued frames are droppable (typing).
    droppable: usize,
    /// Queued replay frames, and their bytes: bounded by the replay itself,
    /// so not counted against the outbox bound.
    replayed: usize,
    replayed_bytes: usize,
    /// Recoveries in progress: while any is, the writer takes nothing, so
    /// that the positions they will insert history at stay put.
    holds: usize,
    closing: Option<CloseReason>,
}

/// What the writer gets: frames to write, then possibly the end.
pub struct Batch {
    pub closing: Option<CloseReason>,
}

impl Outbox {
    pub fn new(limits: OutboxLimits, metrics: Arc<Metrics>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            overflow: Notify::new(),
            limits,
            metrics,
        }
    }

    /// Queues a frame that must not be dropped. Returns `false` when the
    /// session is closing (or has just been closed for overflowing).
    pub fn push(&self, frame: Message) -> bool {
        let len = frame.len();
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return false;
        }
        let must_deliver = state.queue.len() - state.droppable - state.replayed;
        let bytes = state.bytes - state.replayed_bytes;
        if must_deliver >= self.limits.frames || bytes + len > self.limits.bytes {
            // Free the backlog now: the session is going away with 4008.
            state.queue = VecDeque::new();
            state.bytes = 0;
            state.droppable = 0;
            state.replayed = 0;
            state.replayed_bytes = 0;
            state.holds = 0;
            state.closing = Some(CloseReason::SlowConsumer);
            drop(state);
            self.metrics.slow_consumer_closed();
            self.wake.notify_one();
            self.overflow.notify_waiters();
            return false;
        }
        state.bytes += len;
        state.queue.push_back(frame);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Queues recovered history (a replay on reconnect). The caller has
    /// bounded the whole replay (`[history] max_replay`, `outbox_bytes`), so
    /// it is not held to the frame bound, which a recovering slow consumer
    /// would otherwise trip again at once.
    pub fn push_replay(&self, frame: Message) -> bool {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return false;
        }
        state.bytes += frame.len();
        state.replayed_bytes += frame.len();
        state.replayed += 1;
        state.queue.push_back(frame);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Starts a recovery: the writer takes nothing until [`Self::release`],
    /// and the position returned is where the recovered history goes, ahead
    /// of everything pushed from now on (live pushes of the channel being
    /// recovered among them). `None` when the session is closing.
    pub fn hold(&self) -> Option<usize> {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return None;
        }
        state.holds += 1;
        Some(state.queue.len())
    }

    /// Inserts recovered history at a position [`Self::hold`] gave (not
    /// counted against the bounds: the caller bounded the replay). Returns
    /// the position after it, for a next insert.
    pub fn insert_replay(&self, at: usize, frames: Vec<Message>) -> usize {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return at;
        }
        let at = at.min(state.queue.len());
        let added = frames.len();
        let bytes: usize = frames.iter().map(Message::len).sum();
        state.bytes += bytes;
        state.replayed_bytes += bytes;
        state.replayed += added;
        let mut tail = state.queue.split_off(at);
        state.queue.extend(frames);
        state.queue.append(&mut tail);
        at + added
    }

    /// Ends a recovery [`Self::hold`] started.
    pub fn release(&self) {
        let mut state = self.state.lock();
        state.holds = state.holds.saturating_sub(1);
        drop(state);
        self.wake.notify_one();
    }

    /// Queues a frame the broker may drop under pressure (typing). Returns
    /// whether it was queued.
    pub fn push_droppable(&self, frame: Message) -> bool {
        let len = frame.len();
        let mut state = self.state.lock();
        let under_pressure = state.queue.len() - state.replayed >= self.limits.frames / 2
            || state.droppable >= self.limits.typing_frames
            || state.bytes + len > self.limits.bytes / 2;
        if state.closing.is_some() {
            return false;
        }
        if under_pressure {
            drop(state);
            self.metrics.typing_dropped();
            return false;
        }
        state.bytes += len;
        state.droppable += 1;
        state.queue.push_back(frame);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Asks the writer to end the session. The first reason wins; frames
    /// already queued are still written (a reply before a 4001, say).
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
        }
        drop(state);
        self.wake.notify_one();
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.state.lock().closing
    }

    pub fn is_closing(&self) -> bool {
        self.closing().is_some()
    }

    /// Waits for work, then moves every queued frame into `out`.
    pub async fn next_batch(&self, out: &mut Vec<Message>) -> Batch {
        loop {
            {
                let mut state = self.state.lock();
                let ready = !state.queue.is_empty() && state.holds == 0;
                if ready || state.closing.is_some() {
                    out.extend(state.queue.drain(..));
                    state.bytes = 0;
                    state.droppable = 0;
                    state.replayed = 0;
                    state.replayed_bytes = 0;
                    return Batch {
                        closing: state.closing,
                    };
                }
            }
            self.wake.notified().await;
        }
    }

    /// Resolves once the session has been closed for overflowing: the
    /// reader stops running commands, and a writer whose socket is not
    /// taking frames stops handing it more.
    pub async fn overflowed(&self) {
        let notified = self.overflow.notified();
        tokio::pin!(notified);
        // Registered before the check, so an overflow in between is seen.
        notified.as_mut().enable();
        if self.closing() == Some(CloseReason::SlowConsumer) {
            return;
        }
        notified.await;
    }

    /// Takes every queued frame at once without waiting (benchmarks and
    /// tests stand in for the writer with this). Returns how many.
    pub fn drain(&self) -> usize {
        let mut state = self.state.lock();
        let n = state.queue.len();
        state.queue.clear();
        state.bytes = 0;
        state.droppable = 0;
        state.replayed = 0;
        state.replayed_bytes = 0;
        n
    }

    /// Frames waiting (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(frames: usize) -> Outbox {
        Outbox::new(
            OutboxLimits {
                frames,
                bytes: 1 << 20,
                typing_frames: 2,
            },
            Arc::new(Metrics::default()),
        )
    }

    #[tokio::test]
    async fn overflow_closes_with_4008_and_frees_the_backlog() {
        let o = outbox(3);
        for _ in 0..3 {
            assert!(o.push(Message::Text("m".into())));
        }
        assert!(!o.push(Message::Text("m".into())));
        assert_eq!(o.closing(), Some(CloseReason::SlowConsumer));
        assert!(o.is_empty());
        let mut out = vec![];
        let batch = o.next_batch(&mut out).await;
        assert_eq!(batch.closing, Some(CloseReason::SlowConsumer));
        assert!(out.is_empty());
        assert_eq!(o.metrics.snapshot().slow_consumer_closes, 1);
    }

    #[tokio::test]
    async fn typing_is_dropped_under_pressure_but_messages_are_not() {
        let o = outbox(4);
        assert!(o.push_droppable(Message::Text("t1".into())));
        assert!(o.push_droppable(Message::Text("t2".into())));
        assert!(!o.push_droppable(Message::Text("t3".into())), "typing cap");
        assert!(o.push(Message::Text("m1".into())));
        assert!(o.push(Message::Text("m2".into())));
        // Typing frames do not count against the must-deliver bound.
        assert!(o.push(Message::Text("m3".into())));
        let mut out = vec![];
        o.next_batch(&mut out).await;
        let texts: Vec<_> = out
            .iter()
            .map(|m| m.to_text().unwrap().to_owned())
            .collect();
        assert_eq!(texts, ["t1", "t2", "m1", "m2", "m3"]);
        assert_eq!(o.metrics.snapshot().typing_dropped, 1);
    }

    #[tokio::test]
    async fn queued_frames_are_written_before_a_requested_close() {
        let o = outbox(4);
        o.push(Message::Text("reply".into()));
        o.close(CloseReason::Unauthorized);
        o.close(CloseReason::Shutdown);
        assert!(!o.push(Message::Text("late".into())));
        let mut out = vec![];
        let batch = o.next_batch(&mut out).await;
        assert_eq!(out.len(), 1);
        assert_eq!(batch.closing, Some(CloseReason::Unauthorized));
    }
}
