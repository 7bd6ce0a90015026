//! A session's bounded outbound queue, and the shortcut past it.
//!
//! Publishers never wait on a recipient. When a session's queue is empty and
//! its socket takes the frame, [`Outbox::push`] writes the shared frame
//! straight to the socket (one non-blocking `write`, under the session's
//! short lock so that frames keep their order): no queueing, no task to
//! wake, which is what most deliveries are. Only what the socket would not
//! take is queued, and the session's task writes the queue out (many frames
//! per `writev`) once the socket is writable again. When the queue is over
//! its frame or byte bound the session is marked for closing with 4008 and
//! its backlog is freed at once, but a frame already partly written is
//! kept, so the client reads whole frames and then the close frame.
//!
//! Typing pushes are the only frames the broker may drop: they go through
//! [`Outbox::push_droppable`], which keeps them in order with everything else
//! but refuses them when the queue is under pressure.
//!
//! Replies that stand once the store has made their writes durable are
//! parked here (`Outbox::park`), encoded and in command order, and the
//! outbox leaves itself with the store as a waker: the commit that settles
//! them writes them, with its pushes, without waking the session's task.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::io::{self, IoSlice};

use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use tokio::net::TcpStream;

use futures_util::task::AtomicWaker;

use crate::codec::{encode_error, Encoding};
use crate::error::ActionError;
use crate::metrics::{CommandTimer, Metrics};
use crate::store::Commits;

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
    /// 1007: a text message that is not UTF-8.
    InvalidPayload,
    /// 1000: the client sent a close frame; it gets one back.
    ClientClosed,
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
            CloseReason::InvalidPayload => Some((1007, "invalid UTF-8")),
            CloseReason::ClientClosed => Some((1000, "")),
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
            CloseReason::InvalidPayload => "invalid UTF-8",
            CloseReason::ClientClosed => "client closed",
        };
        f.write_str(text)
    }
}

thread_local! {
    /// The outboxes written to under this thread's [`Cork`], if one is on.
    static CORK: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
    /// Whether a reply was queued under this thread's [`Cork`].
    static REPLIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While one is alive on a thread, pushes made on that thread to idle
/// sessions are queued instead of written one by one, and written when it
/// is dropped: each session then gets one `writev` for everything a burst
/// of work sent it (a publisher's 32 pipelined messages to 1,000 observers
/// make 1,000 writes, not 32,000). A session's task runs each of its polls
/// under one, as an event loop flushes once per turn. Nested corks are one.
pub(crate) struct Cork {
    outer: bool,
}

impl Cork {
    pub(crate) fn new() -> Cork {
        let outer = CORK.with(|cork| {
            let mut cork = cork.borrow_mut();
            let outer = cork.is_none();
            if outer {
                *cork = Some(Vec::new());
            }
            outer
        });
        Cork { outer }
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs under a [`Cork`] (a session's task).
    /// Wraps the future in place, so that a task holds it once.
    pub(crate) struct Corked<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Corked<F> {
    pub(crate) fn new(inner: F) -> Corked<F> {
        Corked { inner }
    }
}

impl<F: Future> Future for Corked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _cork = Cork::new();
        self.project().inner.poll(cx)
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        if self.outer {
            let mut dirty = CORK
                .with(|cork| cork.borrow_mut().take())
                .unwrap_or_default();
            // Sessions that were sent replies under the cork go last: a
            // commit's replies are for its senders, and the other members
            // of their channels should not wait behind those writes.
            if REPLIED.with(|replied| replied.replace(false)) {
                dirty.retain(|outbox| !outbox.flush_corked(true));
            }
            for outbox in dirty {
                outbox.flush_corked(false);
            }
        }
    }
}

/// Bounds of one outbox, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub frames: usize,
    pub bytes: usize,
    pub typing_frames: usize,
}

/// Frames handed to one `writev`: enough to empty a typical burst in one
/// system call, few enough to keep the slice array on the stack.
const WRITEV_FRAMES: usize = 64;

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the session's writer (the session's task, or a TLS session's
    /// writer task). Polled, not awaited: a waiting session keeps no wait
    /// future of its own, only its place in here.
    writer: AtomicWaker,
    /// Set with every wake-up of the writer, taken by [`Self::poll_wanted`],
    /// so that a wake-up while the writer is busy is not lost.
    wanted: AtomicBool,
    /// Wakes the session's task when a close is asked for (it is the writer
    /// too on plain TCP; a TLS session's task only waits for this).
    owner: AtomicWaker,
    /// Signals for the session's task ([`Signal`] bits), raised by others
    /// and taken by the task, which is woken for them like for a write.
    signals: AtomicU8,
    /// When the session's task next wants a [`Signal::Tick`], in
    /// [`alarm_clock`] milliseconds ([`NO_ALARM`]: never). One node-wide
    /// sweep raises the ticks, so that a waiting session keeps no timer of
    /// its own (a timer entry is larger than everything else it waits on).
    alarm: AtomicU64,
    limits: OutboxLimits,
    metrics: Arc<Metrics>,
}

/// What a session's task is told besides "there is something to write".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Signal {
    /// Its alarm is due: a deadline (Connect, idle, token expiry) or a ping.
    Tick = 1,
    /// The node is shutting down: answer what is held, then close with 4000.
    Shutdown = 2,
}

/// A set of [`Signal`]s taken at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Signals(u8);

impl Signals {
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn has(self, signal: Signal) -> bool {
        self.0 & signal as u8 != 0
    }
}

/// No alarm set.
pub(crate) const NO_ALARM: u64 = u64::MAX;

/// Milliseconds since the process's first use of the alarm clock: the unit
/// of session alarms (u64 atomics, where an `Instant` would not fit one).
pub(crate) fn alarm_clock(at: tokio::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    // Rounded up, so that an alarm never rings before its deadline.
    let since = at.saturating_duration_since(epoch);
    u64::try_from(since.as_micros().div_ceil(1000)).unwrap_or(NO_ALARM - 1)
}

/// What a queued frame counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Must be delivered; counts against the bounds.
    Required,
    /// Typing: may be refused under pressure.
    Droppable,
    /// Recovered history: bounded by the recovery itself.
    Replayed,
}

#[derive(Default)]
struct State {
    /// Frames waiting, each a complete WebSocket frame. Freed (no
    /// allocation) whenever it empties: an idle session keeps no buffer.
    queue: VecDeque<(Bytes, Kind)>,
    /// Bytes of the front frame already written to the socket.
    front_written: usize,
    bytes: usize,
    /// How many of the queued frames are droppable (typing).
    droppable: usize,
    /// Queued replay frames, and their bytes: bounded by the replay itself,
    /// so not counted against the outbox bound.
    replayed: usize,
    replayed_bytes: usize,
    /// Recoveries in progress: while any is, nothing is written, so that
    /// the positions they will insert history at stay put.
    holds: usize,
    closing: Option<CloseReason>,
    /// The socket a publisher may write to directly (plain TCP only; a TLS
    /// session's frames go through its writer task).
    socket: Option<Arc<TcpStream>>,
    /// Queued under a [`Cork`] and listed for its flush.
    corked: bool,
    /// A reply was queued under the cork: flushed in its second round.
    replied: bool,
    /// Replies waiting for the store (allocated while there are some).
    parked: Option<Box<Parked>>,
}

/// A session's replies that stand once the store settles their tickets,
/// written by whichever thread sees them settle ([`Outbox::park`]).
struct Parked {
    /// In command order; tickets never decrease along it.
    replies: VecDeque<ParkedReply>,
    commits: Arc<Commits>,
    encoding: Encoding,
    /// The newest ticket the store will wake this outbox for.
    registered: u64,
}

/// One parked reply: its frame as it stands if its ticket's write is
/// durable (or at once: ticket 0, a reply that only waits its turn).
pub(crate) struct ParkedReply {
    pub(crate) ticket: u64,
    /// The command's id, for the error that replaces the frame if the
    /// write fails.
    pub(crate) id: u64,
    /// Recorded when the reply is written (`None`: recorded already).
    pub(crate) timer: Option<CommandTimer>,
    pub(crate) frame: Bytes,
}

/// What [`Outbox::push_in`] did.
enum Pushed {
    /// Written, or queued under a cork that writes it.
    Done,
    /// Queued for the writer.
    Queued,
    /// Over the bounds: the session closes with 4008.
    Overflowed,
    /// The session is closing.
    Refused,
}

/// What releasing parked replies did, for after the lock.
#[derive(Default)]
struct Released {
    wake: bool,
    end: Option<Pushed>,
}

/// How far [`Outbox::write_to`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Everything queued is written (or writing is held by a recovery).
    Idle,
    /// The socket took no more: wait until it is writable.
    Blocked,
}

impl State {
    fn add(&mut self, frame: Bytes, kind: Kind) {
        self.bytes += frame.len();
        match kind {
            Kind::Required => {}
            Kind::Droppable => self.droppable += 1,
            Kind::Replayed => {
                self.replayed += 1;
                self.replayed_bytes += frame.len();
            }
        }
        self.queue.push_back((frame, kind));
    }

    fn pop_front(&mut self) {
        if let Some((frame, kind)) = self.queue.pop_front() {
            self.bytes -= frame.len();
            match kind {
                Kind::Required => {}
                Kind::Droppable => self.droppable -= 1,
                Kind::Replayed => {
                    self.replayed -= 1;
                    self.replayed_bytes -= frame.len();
                }
            }
        }
        self.front_written = 0;
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// Empties the queue but for a frame partly on the wire.
    fn free_backlog(&mut self) {
        let in_flight = if self.front_written > 0 {
            self.queue.pop_front()
        } else {
            None
        };
        self.queue = VecDeque::new();
        self.bytes = 0;
        self.droppable = 0;
        self.replayed = 0;
        self.replayed_bytes = 0;
        self.holds = 0;
        if let Some((frame, _)) = in_flight {
            self.bytes = frame.len();
            self.queue.push_back((frame, Kind::Required));
        } else {
            self.front_written = 0;
        }
    }

    /// Whether a push may go straight to the socket.
    fn direct(&self) -> Option<&TcpStream> {
        if self.queue.is_empty() && self.holds == 0 {
            self.socket.as_deref()
        } else {
            None
        }
    }

    /// Writes as much of the queue as the socket takes now.
    fn write_queue(&mut self, socket: &TcpStream) -> io::Result<Progress> {
        loop {
            if self.queue.is_empty() || self.holds > 0 {
                return Ok(Progress::Idle);
            }
            let mut slices = [IoSlice::new(&[]); WRITEV_FRAMES];
            let mut n = 0;
            for (frame, _) in self.queue.iter().take(WRITEV_FRAMES) {
                let from = if n == 0 { self.front_written } else { 0 };
                slices[n] = IoSlice::new(&frame[from..]);
                n += 1;
            }
            let written = match socket.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                Err(e) => return Err(e),
            };
            self.advance(written);
        }
    }

    /// Counts `n` bytes from the front of the queue as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some((front, _)) = self.queue.front() else {
                return;
            };
            let left = front.len() - self.front_written;
            if n >= left {
                n -= left;
                self.pop_front();
            } else {
                self.front_written += n;
                n = 0;
            }
        }
    }
}

impl Outbox {
    pub fn new(limits: OutboxLimits, metrics: Arc<Metrics>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            writer: AtomicWaker::new(),
            wanted: AtomicBool::new(false),
            owner: AtomicWaker::new(),
            signals: AtomicU8::new(0),
            alarm: AtomicU64::new(NO_ALARM),
            limits,
            metrics,
        }
    }

    /// Lets publishers write to `socket` directly while the queue is empty.
    pub(crate) fn write_directly_to(&self, socket: Arc<TcpStream>) {
        self.state.lock().socket = Some(socket);
    }

    /// Queues a frame that must not be dropped, or writes it at once when
    /// nothing is waiting before it. Returns `false` when the session is
    /// closing (or has just been closed for overflowing).
    pub fn push(self: &Arc<Self>, frame: Bytes) -> bool {
        let mut state = self.state.lock();
        let pushed = self.push_in(&mut state, frame);
        drop(state);
        self.after_push(pushed)
    }

    /// [`Self::push`]'s work under the lock; the wake-ups it calls for are
    /// left to [`Self::after_push`], once the lock is released.
    fn push_in(self: &Arc<Self>, state: &mut State, frame: Bytes) -> Pushed {
        let len = frame.len();
        if state.closing.is_some() {
            return Pushed::Refused;
        }
        if state.direct().is_some() {
            if self.cork_in(state) {
                state.add(frame, Kind::Required);
                return Pushed::Done;
            }
            let socket = state.direct().expect("checked");
            match socket.try_write(&frame) {
                Ok(n) if n == len => return Pushed::Done,
                Ok(n) => {
                    state.add(frame, Kind::Required);
                    state.front_written = n;
                }
                // Queued for the writer, which will meet the error (or the
                // writable socket) itself.
                Err(_) => state.add(frame, Kind::Required),
            }
            return Pushed::Queued;
        }
        // A cork gathers at most a writev's worth for one session: past
        // that, what it holds is written now. Otherwise a long burst under
        // one cork (a publisher whose poll keeps finding commands to read,
        // a large commit) would count against a session's bound frames its
        // socket would have taken, and close a reader that keeps up with
        // 4008. Only frames the socket does not take stay queued.
        if state.corked && state.queue.len() >= WRITEV_FRAMES {
            if let Some(socket) = state.socket.clone() {
                // An error is the writer's to meet, as in `flush_corked`.
                let _ = state.write_queue(&socket);
            }
        }
        let must_deliver = state.queue.len() - state.droppable - state.replayed;
        let bytes = state.bytes - state.replayed_bytes;
        if must_deliver >= self.limits.frames || bytes + len > self.limits.bytes {
            // Free the backlog now: the session is going away with 4008.
            state.free_backlog();
            state.parked = None;
            state.closing = Some(CloseReason::SlowConsumer);
            return Pushed::Overflowed;
        }
        state.add(frame, Kind::Required);
        // A cork's flush will write it (and wake the writer if it must).
        if state.corked {
            Pushed::Done
        } else {
            Pushed::Queued
        }
    }

    /// The wake-ups a push calls for; whether the frame was taken.
    fn after_push(&self, pushed: Pushed) -> bool {
        match pushed {
            Pushed::Done => true,
            Pushed::Queued => {
                self.wake_writer();
                true
            }
            Pushed::Overflowed => {
                self.metrics.slow_consumer_closed();
                self.wake_writer();
                self.owner.wake();
                false
            }
            Pushed::Refused => false,
        }
    }

    /// Sends a reply to one of the session's commands: behind its parked
    /// replies if it has any (replies go out in command order), otherwise
    /// like [`Self::push`].
    pub(crate) fn push_reply(self: &Arc<Self>, frame: Bytes) -> bool {
        let mut state = self.state.lock();
        if let Some(parked) = state.parked.as_mut() {
            parked.replies.push_back(ParkedReply {
                ticket: 0,
                id: 0,
                timer: None,
                frame,
            });
            return true;
        }
        let pushed = self.push_in(&mut state, frame);
        drop(state);
        self.after_push(pushed)
    }

    /// Parks replies that stand once the store has settled their tickets:
    /// the thread that settles them writes them (with the commit's pushes,
    /// in one `writev`), so the session's task is not woken for its own
    /// acknowledgements. `replies` are in command order, after any parked
    /// before.
    pub(crate) fn park(
        self: &Arc<Self>,
        commits: &Arc<Commits>,
        encoding: Encoding,
        mut replies: VecDeque<ParkedReply>,
    ) {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return;
        }
        let parked = match &mut state.parked {
            Some(parked) => {
                parked.replies.append(&mut replies);
                parked
            }
            none => none.insert(Box::new(Parked {
                replies,
                commits: commits.clone(),
                encoding,
                registered: 0,
            })),
        };
        let newest = parked
            .replies
            .iter()
            .rev()
            .map(|r| r.ticket)
            .find(|&t| t != 0)
            .unwrap_or(0);
        if newest > parked.registered {
            parked.registered = newest;
            // The store wakes this outbox when `newest` settles (see the
            // `Wake` impl); if it has already, the front stands below.
            parked
                .commits
                .notify_when_settled(newest, || Waker::from(self.clone()));
        }
        // What stands already (settled meanwhile, or only waiting its
        // turn behind replies written since) goes now.
        let upto = parked.commits.upto();
        if parked.replies.front().is_some_and(|r| r.ticket <= upto) {
            let released = self.release_in(&mut state);
            drop(state);
            self.after_release(released);
        }
    }

    /// Writes the parked replies whose tickets are settled, in order (a
    /// failed write's reply is its `unavailable` error).
    pub(crate) fn release_parked(self: &Arc<Self>) {
        let mut state = self.state.lock();
        let pushed = self.release_in(&mut state);
        drop(state);
        self.after_release(pushed);
    }

    fn release_in(self: &Arc<Self>, state: &mut State) -> Released {
        let mut released = Released::default();
        let Some(mut parked) = state.parked.take() else {
            return released;
        };
        let upto = parked.commits.upto();
        while let Some(front) = parked.replies.front() {
            if front.ticket > upto {
                break;
            }
            let reply = parked.replies.pop_front().expect("front");
            let frame = match parked.commits.outcome(reply.ticket) {
                Some(Err(why)) if reply.ticket != 0 => {
                    let error = ActionError::Unavailable(why);
                    if let Some(timer) = reply.timer {
                        self.metrics.command(timer, Some(&error));
                    }
                    encode_error(parked.encoding, Some(reply.id), &error.to_wire())
                }
                _ => {
                    if let Some(timer) = reply.timer {
                        self.metrics.command(timer, None);
                    }
                    reply.frame
                }
            };
            match self.push_in(state, frame) {
                Pushed::Done if state.corked => {
                    state.replied = true;
                    REPLIED.with(|replied| replied.set(true));
                }
                Pushed::Done => {}
                Pushed::Queued => released.wake = true,
                other => {
                    released.end = Some(other);
                    return released;
                }
            }
        }
        if !parked.replies.is_empty() {
            state.parked = Some(parked);
        }
        released
    }

    fn after_release(&self, released: Released) {
        if let Some(end) = released.end {
            self.after_push(end);
        } else if released.wake {
            self.wake_writer();
        }
    }

    /// How many replies are parked and not yet written.
    pub(crate) fn parked_len(&self) -> usize {
        self.state
            .lock()
            .parked
            .as_ref()
            .map_or(0, |p| p.replies.len())
    }

    /// The newest store ticket a parked reply waits for, and the store's
    /// commits to wait on (`None`: nothing is parked).
    pub(crate) fn parked_newest(&self) -> Option<(u64, Arc<Commits>)> {
        let state = self.state.lock();
        let parked = state.parked.as_deref()?;
        Some((parked.registered, parked.commits.clone()))
    }

    /// Queues recovered history (a replay on reconnect). The caller has
    /// bounded the whole replay (`[history] max_replay`, `outbox_bytes`), so
    /// it is not held to the frame bound, which a recovering slow consumer
    /// would otherwise trip again at once.
    pub fn push_replay(&self, frame: Bytes) -> bool {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return false;
        }
        state.add(frame, Kind::Replayed);
        drop(state);
        self.wake_writer();
        true
    }

    /// Starts a recovery: nothing is written until [`Self::release`], and
    /// the position returned is where the recovered history goes, ahead of
    /// everything pushed from now on (live pushes of the channel being
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
    pub fn insert_replay(&self, at: usize, frames: Vec<Bytes>) -> usize {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return at;
        }
        let at = at.min(state.queue.len());
        let added = frames.len();
        let mut tail = state.queue.split_off(at);
        for frame in frames {
            state.add(frame, Kind::Replayed);
        }
        state.queue.append(&mut tail);
        at + added
    }

    /// Ends a recovery [`Self::hold`] started.
    pub fn release(&self) {
        let mut state = self.state.lock();
        state.holds = state.holds.saturating_sub(1);
        drop(state);
        self.wake_writer();
    }

    /// Queues a frame the broker may drop under pressure (typing). Returns
    /// whether it was queued.
    pub fn push_droppable(self: &Arc<Self>, frame: Bytes) -> bool {
        let len = frame.len();
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return false;
        }
        if state.direct().is_some() && self.cork_in(&mut state) {
            state.add(frame, Kind::Droppable);
            return true;
        }
        if let Some(socket) = state.direct() {
            match socket.try_write(&frame) {
                Ok(n) if n == len => return true,
                Ok(n) => {
                    // Partly on the wire: it must be finished now.
                    state.add(frame, Kind::Required);
                    state.front_written = n;
                    drop(state);
                    self.wake_writer();
                    return true;
                }
                Err(_) => {}
            }
        }
        let under_pressure = state.queue.len() - state.replayed >= self.limits.frames / 2
            || state.droppable >= self.limits.typing_frames
            || state.bytes + len > self.limits.bytes / 2;
        if under_pressure {
            drop(state);
            self.metrics.typing_dropped();
            return false;
        }
        state.add(frame, Kind::Droppable);
        let corked = state.corked;
        drop(state);
        if !corked {
            self.wake_writer();
        }
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
        self.wake_writer();
        self.owner.wake();
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.state.lock().closing
    }

    pub fn is_closing(&self) -> bool {
        self.closing().is_some()
    }

    /// Under a [`Cork`] on this thread: lists the outbox for the cork's
    /// flush (once) and says the frame is to be queued, not written now.
    fn cork_in(self: &Arc<Self>, state: &mut State) -> bool {
        CORK.with(|cork| match cork.borrow_mut().as_mut() {
            Some(dirty) => {
                if !state.corked {
                    state.corked = true;
                    dirty.push(self.clone());
                }
                true
            }
            None => false,
        })
    }

    /// Writes what a cork held back, as far as the socket takes it; the
    /// writer gets the rest. With `unless_replied`, an outbox a reply was
    /// queued to under the cork is left for the cork's second round
    /// (`false`). Inlined: it runs for every recipient of every burst.
    #[inline(always)]
    fn flush_corked(&self, unless_replied: bool) -> bool {
        let mut state = self.state.lock();
        if unless_replied && state.replied {
            return false;
        }
        state.corked = false;
        state.replied = false;
        let blocked = match state.socket.clone() {
            Some(socket) => !matches!(state.write_queue(&socket), Ok(Progress::Idle)),
            None => true,
        };
        drop(state);
        if blocked {
            self.wake_writer();
        }
        true
    }

    fn wake_writer(&self) {
        self.wanted.store(true, Ordering::Release);
        self.writer.wake();
    }

    /// Ready when there may be work for the writer (frames queued, a
    /// recovery released, a close asked for) since it last looked.
    pub(crate) fn poll_wanted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.wanted.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.writer.register(cx.waker());
        // Checked again: a wake-up between the swap and the registration
        // would otherwise be missed.
        if self.wanted.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Raises `signal` for the session's task and wakes it (whichever of
    /// its wakers it waits on).
    pub(crate) fn signal(&self, signal: Signal) {
        self.signals.fetch_or(signal as u8, Ordering::AcqRel);
        self.wake_writer();
        self.owner.wake();
    }

    /// The signals raised since the last call. The task calls this after
    /// registering its wakers too, so that none raised meanwhile is missed.
    pub(crate) fn take_signals(&self) -> Signals {
        Signals(self.signals.swap(0, Ordering::AcqRel))
    }

    /// Asks for a [`Signal::Tick`] at `at` (replacing any alarm set).
    pub(crate) fn set_alarm(&self, at: tokio::time::Instant) {
        self.alarm.store(alarm_clock(at), Ordering::Release);
    }

    /// Raises [`Signal::Tick`] if the alarm is due by `now` (in
    /// [`alarm_clock`] units) and clears it; the task sets the next one.
    /// Returns whether it rang.
    pub(crate) fn ring_if_due(&self, now: u64) -> bool {
        let at = self.alarm.load(Ordering::Acquire);
        // The exchange loses to the task setting a new alarm meanwhile: that
        // alarm then stands and rings in its own time.
        if at > now
            || self
                .alarm
                .compare_exchange(at, NO_ALARM, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        self.signal(Signal::Tick);
        true
    }

    /// Ready once a close has been asked for.
    pub(crate) fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Some(reason) = self.closing() {
            return Poll::Ready(reason);
        }
        self.owner.register(cx.waker());
        match self.closing() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }

    /// Writes as much of the queue as `socket` takes now, without waiting.
    pub(crate) fn write_to(&self, socket: &TcpStream) -> io::Result<Progress> {
        self.state.lock().write_queue(socket)
    }

    /// Whether everything queued has been written.
    pub(crate) fn is_written(&self) -> bool {
        let state = self.state.lock();
        state.queue.is_empty()
    }

    /// Takes every frame that may be written now (none while a recovery
    /// holds the queue), for a writer that cannot write under the lock (a
    /// TLS stream). What it takes is its to finish: whole frames.
    pub(crate) fn take(&self, out: &mut Vec<Bytes>) {
        let mut state = self.state.lock();
        if state.holds > 0 {
            return;
        }
        let from = state.front_written;
        out.extend(state.queue.drain(..).map(|(frame, _)| frame));
        if let Some(first) = out.first_mut().filter(|_| from > 0) {
            *first = first.slice(from..);
        }
        state.free_backlog();
    }

    /// Takes every queued frame at once without writing it (benchmarks and
    /// tests stand in for the writer with this). Returns how many.
    pub fn drain(&self) -> usize {
        let mut frames = Vec::new();
        self.take(&mut frames);
        frames.len()
    }

    /// Takes every queued frame (tests read what a session was sent).
    pub fn take_frames(&self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        self.take(&mut frames);
        frames
    }

    /// Frames waiting (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The store wakes an outbox that parked replies when their tickets
/// settle: waking it writes them ([`Outbox::release_parked`]).
impl Wake for Outbox {
    fn wake(self: Arc<Self>) {
        self.release_parked();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.release_parked();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(ticket: u64, id: u64, text: &'static str) -> ParkedReply {
        ParkedReply {
            ticket,
            id,
            timer: Some(CommandTimer::start(Some("SendMessage"))),
            frame: Bytes::from_static(text.as_bytes()),
        }
    }

    #[test]
    fn parked_replies_go_out_in_command_order_as_the_store_settles_them() {
        let outbox = outbox(64);
        let commits = Arc::new(Commits::default());
        outbox.park(
            &commits,
            Encoding::Json,
            VecDeque::from([
                parked(1, 10, "r10"),
                parked(3, 11, "r11"),
                parked(0, 12, "r12"),
            ]),
        );
        // A reply that stands at once still waits its turn.
        outbox.push_reply(frame("r13"));
        // Pushes do not wait for replies.
        outbox.push(frame("push"));
        assert_eq!(texts(outbox.take_frames()), ["push"]);
        assert_eq!(outbox.parked_len(), 4);
        // The store wakes the outbox once, for its newest parked ticket (a
        // commit settles them together); a release asked for meanwhile
        // writes what is durable.
        commits.settle_for_tests(2);
        assert!(outbox.take_frames().is_empty());
        outbox.release_parked();
        assert_eq!(texts(outbox.take_frames()), ["r10"], "only what is durable");
        outbox.park(
            &commits,
            Encoding::Json,
            VecDeque::from([parked(4, 14, "r14")]),
        );
        commits.settle_for_tests(4);
        assert_eq!(texts(outbox.take_frames()), ["r11", "r12", "r13", "r14"]);
        assert_eq!(outbox.parked_len(), 0, "the parked list is freed");
        // Nothing parked: a reply goes like any frame.
        outbox.push_reply(frame("r15"));
        assert_eq!(texts(outbox.take_frames()), ["r15"]);
    }

    #[test]
    fn a_parked_reply_whose_write_failed_is_unavailable_and_one_already_durable_goes_at_once() {
        let outbox = outbox(64);
        let commits = Arc::new(Commits::default());
        commits.settle_for_tests(5);
        outbox.park(
            &commits,
            Encoding::Json,
            VecDeque::from([parked(5, 20, "r20")]),
        );
        assert_eq!(
            texts(outbox.take_frames()),
            ["r20"],
            "settled before parking"
        );
        outbox.park(
            &commits,
            Encoding::Json,
            VecDeque::from([parked(6, 21, "r21"), parked(7, 22, "r22")]),
        );
        commits.fail_for_tests(6, 7, "disk full");
        let frames = outbox.take_frames();
        assert_eq!(frames.len(), 2);
        for (frame, id) in frames.iter().zip([21, 22]) {
            let reply: serde_json::Value =
                serde_json::from_slice(&crate::ws::payload_of(frame)).unwrap();
            assert_eq!(reply["id"], id);
            assert_eq!(reply["error"]["code"], "unavailable");
        }
    }

    #[test]
    fn a_closing_outbox_drops_what_it_parked() {
        let outbox = outbox(64);
        let commits = Arc::new(Commits::default());
        outbox.park(
            &commits,
            Encoding::Json,
            VecDeque::from([parked(1, 1, "r1")]),
        );
        outbox.close(CloseReason::Shutdown);
        commits.settle_for_tests(1);
        assert!(outbox.take_frames().is_empty());
    }

    fn outbox(frames: usize) -> Arc<Outbox> {
        Arc::new(Outbox::new(
            OutboxLimits {
                frames,
                bytes: 1 << 20,
                typing_frames: 2,
            },
            Arc::new(Metrics::default()),
        ))
    }

    #[test]
    fn an_alarm_rings_once_when_due_and_a_new_one_stands() {
        let outbox = outbox(8);
        let start = tokio::time::Instant::now();
        let at = start + std::time::Duration::from_millis(50);
        outbox.set_alarm(at);
        let due = alarm_clock(at);
        assert!(!outbox.ring_if_due(due - 1), "not before its deadline");
        assert!(outbox.take_signals().is_empty());
        assert!(outbox.ring_if_due(due));
        assert!(outbox.take_signals().has(Signal::Tick));
        assert!(!outbox.ring_if_due(due + 1), "rang already: cleared");
        // The task sets the next alarm; it rings in its own time.
        outbox.set_alarm(at + std::time::Duration::from_millis(100));
        assert!(!outbox.ring_if_due(due + 1));
        assert!(outbox.ring_if_due(due + 100));
    }

    #[test]
    fn signals_wait_until_taken_and_are_taken_together() {
        let outbox = outbox(8);
        outbox.signal(Signal::Tick);
        outbox.signal(Signal::Shutdown);
        let signals = outbox.take_signals();
        assert!(signals.has(Signal::Tick) && signals.has(Signal::Shutdown));
        assert!(outbox.take_signals().is_empty());
    }

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    fn texts(frames: Vec<Bytes>) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    /// A connected pair of loopback sockets: (the session's, the client's).
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    #[test]
    fn overflow_closes_with_4008_and_frees_the_backlog() {
        let o = outbox(3);
        for _ in 0..3 {
            assert!(o.push(frame("m")));
        }
        assert!(!o.push(frame("m")));
        assert_eq!(o.closing(), Some(CloseReason::SlowConsumer));
        assert!(o.is_empty());
        assert_eq!(o.metrics.snapshot().slow_consumer_closes, 1);
    }

    #[test]
    fn typing_is_dropped_under_pressure_but_messages_are_not() {
        let o = outbox(4);
        assert!(o.push_droppable(frame("t1")));
        assert!(o.push_droppable(frame("t2")));
        assert!(!o.push_droppable(frame("t3")), "typing cap");
        assert!(o.push(frame("m1")));
        assert!(o.push(frame("m2")));
        // Typing frames do not count against the must-deliver bound.
        assert!(o.push(frame("m3")));
        assert_eq!(texts(o.take_frames()), ["t1", "t2", "m1", "m2", "m3"]);
        assert_eq!(o.metrics.snapshot().typing_dropped, 1);
    }

    #[test]
    fn queued_frames_are_written_before_a_requested_close() {
        let o = outbox(4);
        o.push(frame("reply"));
        o.close(CloseReason::Unauthorized);
        o.close(CloseReason::Shutdown);
        assert!(!o.push(frame("late")));
        assert_eq!(o.take_frames().len(), 1);
        assert_eq!(o.closing(), Some(CloseReason::Unauthorized));
    }

    #[tokio::test]
    async fn pushes_go_straight_to_an_idle_socket_and_queue_behind_a_held_one() {
        use tokio::io::AsyncReadExt;
        let (socket, mut client) = socket_pair().await;
        let o = outbox(8);
        o.write_directly_to(socket.clone());
        assert!(o.push(frame("a")));
        assert!(o.is_empty(), "written at once");
        // A recovery holds the queue: pushes wait, in order, behind it.
        let at = o.hold().unwrap();
        assert!(o.push(frame("c")));
        o.insert_replay(at, vec![frame("b")]);
        assert_eq!(o.len(), 2);
        o.release();
        assert_eq!(o.write_to(&socket).unwrap(), Progress::Idle);
        assert!(o.is_written());
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }

    #[tokio::test]
    async fn an_overflow_keeps_the_frame_on_the_wire_whole() {
        use tokio::io::AsyncReadExt;
        let (socket, mut client) = socket_pair().await;
        let o = Arc::new(Outbox::new(
            OutboxLimits {
                frames: 4,
                bytes: 64 << 20,
                typing_frames: 2,
            },
            Arc::new(Metrics::default()),
        ));
        o.write_directly_to(socket.clone());
        // Frames of distinct bytes, until the socket stops taking them and
        // the queue overflows.
        let big = |b: u8| Bytes::from(vec![b; 1 << 20]);
        let mut pushed = 0u8;
        while o.push(big(pushed)) {
            pushed += 1;
        }
        assert_eq!(o.closing(), Some(CloseReason::SlowConsumer));
        // Only a partly written frame may remain, and it is finished.
        assert!(o.len() <= 1);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        loop {
            if o.write_to(&socket).unwrap() == Progress::Idle {
                break;
            }
            socket.writable().await.unwrap();
        }
        drop(o);
        drop(socket);
        let all = reader.await.unwrap();
        assert_eq!(all.len() % (1 << 20), 0, "whole frames only");
        for (i, chunk) in all.chunks(1 << 20).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "frame {i} in order");
        }
    }

    #[tokio::test]
    async fn under_a_cork_pushes_wait_for_its_end_then_go_out_in_order() {
        use tokio::io::AsyncReadExt;
        let (socket, mut client) = socket_pair().await;
        let o = outbox(8);
        o.write_directly_to(socket.clone());
        {
            let _cork = Cork::new();
            let _inner = Cork::new();
            assert!(o.push(frame("a")));
            assert!(o.push_droppable(frame("b")));
            assert!(o.push(frame("c")));
            assert_eq!(o.len(), 3, "held while the cork is on");
        }
        assert!(o.is_written(), "written when it ends");
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        // Without a cork, a push to the idle socket goes out at once.
        assert!(o.push(frame("d")));
        assert!(o.is_empty());
    }
}
