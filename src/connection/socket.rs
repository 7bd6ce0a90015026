//! A session's socket: reading client frames, and writing out what the
//! outbox could not write at once.
//!
//! Plain TCP (the common case, and the one that must be cheap) is shared
//! with the outbox, so a publisher can write a frame straight to it; the
//! session's own task reads it into a per-thread scratch buffer and writes
//! the outbox's queue when the socket is writable again. An idle plain
//! session therefore holds no read or write buffer at all.
//!
//! TLS cannot be written from two places (rustls keeps one state for both
//! directions), so a TLS session gets a writer task that owns the write
//! half and drains the outbox, and reads through its own buffer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::outbox::{CloseReason, Outbox, Progress};
use crate::tls::Stream;
use crate::ws::{self, FrameReader, Inbound, ReadError};

/// Bytes read from a plain socket per system call. One buffer per worker
/// thread, not per session.
const SCRATCH_BYTES: usize = 64 * 1024;

/// How long a TLS writer waits on a socket that takes nothing before it
/// gives up on the session (a plain session is bounded by its outbox and
/// the idle timeout instead).
const TLS_STALL: Duration = Duration::from_secs(60);

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

type TlsStream = Box<tokio_rustls::server::TlsStream<TcpStream>>;

pub(super) enum Socket {
    Plain(Arc<TcpStream>),
    Tls {
        read: ReadHalf<TlsStream>,
        buf: Box<[u8]>,
        writer: JoinHandle<()>,
    },
}

/// What a read brought.
pub(super) enum Read {
    /// Frames (possibly none yet: a frame in pieces).
    Frames,
    /// The peer closed the connection or it broke.
    Gone,
    /// The peer broke the framing rules.
    Refused(ReadError),
}

impl Socket {
    /// Sets the session's socket up: a plain one is handed to the outbox
    /// for direct writes, a TLS one gets its writer task.
    pub(super) fn new(stream: Stream, outbox: &Arc<Outbox>, read_buffer: usize) -> Socket {
        match stream {
            Stream::Plain(tcp) => {
                let tcp = Arc::new(tcp);
                outbox.write_directly_to(tcp.clone());
                Socket::Plain(tcp)
            }
            Stream::Tls(tls) => {
                let (read, write) = tokio::io::split(tls);
                let writer = tokio::spawn(tls_writer(write, outbox.clone()));
                Socket::Tls {
                    read,
                    buf: vec![0; read_buffer.max(1024)].into_boxed_slice(),
                    writer,
                }
            }
        }
    }

    /// Reads what has arrived and cuts the frames it completes into `out`;
    /// pending (the task woken by the socket) when nothing has. Polled, not
    /// awaited, so that a waiting session keeps no read future.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut FrameReader,
        out: &mut Vec<Inbound>,
    ) -> Poll<Read> {
        match self {
            Socket::Plain(tcp) => loop {
                if ready!(tcp.poll_read_ready(cx)).is_err() {
                    return Poll::Ready(Read::Gone);
                }
                let read = SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    match tcp.try_read(&mut scratch) {
                        Ok(0) => Some(Read::Gone),
                        Ok(n) => Some(match frames.feed(&scratch[..n], out) {
                            Ok(()) => Read::Frames,
                            Err(e) => Read::Refused(e),
                        }),
                        // Readiness is cleared: the next poll registers.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        Err(_) => Some(Read::Gone),
                    }
                });
                if let Some(read) = read {
                    return Poll::Ready(read);
                }
            },
            Socket::Tls { read, buf, .. } => {
                let mut filled = ReadBuf::new(buf);
                match ready!(Pin::new(read).poll_read(cx, &mut filled)) {
                    Err(_) => Poll::Ready(Read::Gone),
                    Ok(()) if filled.filled().is_empty() => Poll::Ready(Read::Gone),
                    Ok(()) => Poll::Ready(match frames.feed(filled.filled(), out) {
                        Ok(()) => Read::Frames,
                        Err(e) => Read::Refused(e),
                    }),
                }
            }
        }
    }

    /// Waits for bytes (see [`Self::poll_read`]).
    async fn read(&mut self, frames: &mut FrameReader, out: &mut Vec<Inbound>) -> Read {
        std::future::poll_fn(|cx| self.poll_read(cx, frames, out)).await
    }

    /// Ready when a blocked plain socket can be written again (never for
    /// TLS, whose writer task waits itself).
    pub(super) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Socket::Plain(tcp) => tcp.poll_write_ready(cx).map(|_| ()),
            Socket::Tls { .. } => Poll::Pending,
        }
    }

    /// Writes what the outbox has queued, as far as the socket takes it
    /// now (a TLS session's writer task does this itself).
    pub(super) fn write_queued(&self, outbox: &Outbox) -> io::Result<Progress> {
        match self {
            Socket::Plain(tcp) => outbox.write_to(tcp),
            Socket::Tls { .. } => Ok(Progress::Idle),
        }
    }

    /// Whether this task writes the outbox (plain TCP) or a writer task
    /// does (TLS).
    pub(super) fn writes_itself(&self) -> bool {
        matches!(self, Socket::Plain(_))
    }

    /// Ends the session's writing: writes what is queued, then the close
    /// frame `reason` asks for, all by `deadline`. Returns whether the
    /// close frame went out.
    pub(super) async fn finish(
        &mut self,
        outbox: &Outbox,
        reason: CloseReason,
        deadline: tokio::time::Instant,
    ) -> bool {
        match self {
            Socket::Plain(tcp) => {
                let written = tokio::time::timeout_at(deadline, async {
                    loop {
                        match outbox.write_to(tcp) {
                            Ok(Progress::Idle) => return true,
                            Ok(Progress::Blocked) => {
                                if tcp.writable().await.is_err() {
                                    return false;
                                }
                            }
                            Err(_) => return false,
                        }
                    }
                })
                .await;
                if written != Ok(true) {
                    return false;
                }
                let Some((code, text)) = reason.close_frame() else {
                    return false;
                };
                let close = ws::close(code, text);
                let sent = tokio::time::timeout_at(deadline, write_all(tcp, &close)).await;
                matches!(sent, Ok(Ok(())))
            }
            Socket::Tls { writer, .. } => {
                // The writer task writes the queue and the close frame.
                outbox.close(reason);
                let done = tokio::time::timeout_at(deadline, &mut *writer).await;
                if done.is_err() {
                    writer.abort();
                }
                matches!(done, Ok(Ok(()))) && reason.close_frame().is_some()
            }
        }
    }

    /// After our close frame: reads (and drops) what the peer still sends
    /// until it answers with its own close or goes, so that unread bytes do
    /// not turn our close into a reset that destroys the close frame.
    pub(super) async fn linger(&mut self, frames: &mut FrameReader) {
        let mut out = Vec::new();
        loop {
            match self.read(frames, &mut out).await {
                Read::Frames => {
                    if out.iter().any(|f| matches!(f, Inbound::Close(_))) {
                        return;
                    }
                    out.clear();
                }
                Read::Gone | Read::Refused(_) => return,
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Socket::Tls { writer, .. } = self {
            writer.abort();
        }
    }
}

async fn write_all(tcp: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A TLS session's writer: drains the outbox, whole frames at a time, and
/// ends with the close frame the outbox asks for.
async fn tls_writer(mut write: WriteHalf<TlsStream>, outbox: Arc<Outbox>) {
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        outbox.take(&mut frames);
        if frames.is_empty() {
            if let Some(reason) = outbox.closing().filter(|_| outbox.is_written()) {
                if let Some((code, text)) = reason.close_frame() {
                    let close = ws::close(code, text);
                    let _ = tokio::time::timeout(TLS_STALL, async {
                        write.write_all(&close).await?;
                        write.flush().await
                    })
                    .await;
                }
                return;
            }
            std::future::poll_fn(|cx| outbox.poll_wanted(cx)).await;
            continue;
        }
        for frame in frames.drain(..) {
            let wrote = tokio::time::timeout(TLS_STALL, write.write_all(&frame)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                return;
            }
            // After an overflow no further frame is begun: the client
            // reads whole frames, then the 4008.
            if outbox.closing() == Some(CloseReason::SlowConsumer) {
                break;
            }
        }
        frames.clear();
        if !matches!(
            tokio::time::timeout(TLS_STALL, write.flush()).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
