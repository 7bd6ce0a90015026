//! The listener: accepts TCP connections, answers HTTP, upgrades `/ws` to
//! sessions, and shuts down gracefully.
//!
//! Shutdown is explicit: when the shutdown future resolves the listener stops
//! accepting, a cancellation token fans out to every connection task (each
//! closes its session with 4000), and `run` returns once they have all
//! drained (or a deadline passes).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal, Ticket};
use crate::broker::Broker;
use crate::connection::{self, run_session};
use crate::http::{self, close_lingering, Response};
use crate::outbox::Corked;
use crate::tls::Stream;

/// Pending connections the kernel queues before accept (tokio's default is
/// 1,024; a burst of reconnecting widgets overflows that, and each
/// overflowed SYN costs its client a one-second retransmit).
const ACCEPT_BACKLOG: u32 = 4096;

/// How long shutdown waits for sessions to drain.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often idle identities are swept.
const REAP_EVERY: Duration = Duration::from_secs(60);
/// Connections being turned away at once (each gets a short HTTP answer and
/// a moment to read it). Past this, refused sockets are simply closed: a
/// flood must not cost more to refuse than to accept.
const MAX_REFUSING: usize = 64;

pub struct Server {
    listener: TcpListener,
    broker: Arc<Broker>,
    admission: Arc<Admission>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Binds the listener; with `[tls]` configured, reads the certificate
    /// and key first (an unreadable one is an `InvalidInput` error).
    pub async fn bind(broker: Arc<Broker>, addr: SocketAddr) -> std::io::Result<Server> {
        let tls = match &broker.config.tls {
            Some(tls) => Some(tls.acceptor().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("[tls]: {e}"))
            })?),
            None => None,
        };
        let listener = listen(addr)?;
        let admission = Admission::new(broker.config.admission.clone());
        Ok(Server {
            listener,
            broker,
            admission,
            tls,
        })
    }

    /// Connection counts (admission control).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let loopback = self
            .local_addr()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false);
        if loopback
            && self.broker.config.demo_tokens_enabled()
            && self.broker.auth().can_mint_client_tokens()
        {
            warn!(
                "DEMO TOKENS ARE ON: GET /demo/token hands agent and service tokens to any client \
                 on this machine (loopback Host, no proxy headers); set demo_tokens = false \
                 unless this is a demo"
            );
        }
        tracker.spawn(housekeeping(self.broker.clone(), token.clone()));
        tracker.spawn(connection::sweep(self.broker.clone(), token.clone()));
        self.broker.start_webhooks(token.clone(), |sender| {
            tracker.spawn(sender);
        });
        let refusing = Arc::new(AtomicUsize::new(0));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.admission.admit(peer.ip()) {
                        Ok(ticket) => {
                            let (broker, tls, token) =
                                (self.broker.clone(), self.tls.clone(), token.clone());
                            tracker.spawn(handle_connection(
                                ticket, broker, stream, peer, loopback, tls, token,
                            ));
                        }
                        Err(refusal) => {
                            self.broker.metrics.connection_refused();
                            debug!(%peer, %refusal, "connection refused");
                            // Over TLS a plain answer would be noise: close.
                            if self.tls.is_none()
                                && refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING
                            {
                                let refusing = refusing.clone();
                                tracker.spawn(async move {
                                    refuse(stream, refusal).await;
                                    refusing.fetch_sub(1, Ordering::Relaxed);
                                });
                            } else if self.tls.is_none() {
                                refusing.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    },
                    Err(e) => {
                        // Usually out of file descriptors: back off rather
                        // than spin, and keep serving who is connected.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(self.listener);
        info!(
            sessions = self.broker.session_count(),
            "shutting down: closing sessions with 4000"
        );
        token.cancel();
        connection::shut_down_sessions(&self.broker);
        tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not drain in time");
        }
        info!("shutdown complete");
    }
}

/// Answers a connection that admission control turned away: a short HTTP
/// answer, then read (and discard) for a moment so that the client's
/// request in flight does not turn our close into a reset that loses it.
async fn refuse(stream: TcpStream, refusal: Refusal) {
    let response =
        Response::text(refusal.status(), format!("{refusal}\n")).with_header("Retry-After", "5");
    close_lingering(stream, Some(response)).await;
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restarted broker can take its port back
    // while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A connection's task: the handshake, then (for an upgrade) its session.
/// Built so that the task's future holds the admission slot, a pointer to
/// the boxed handshake and the session's own future, nothing twice: the
/// handshake returns the session ready to run, so what it needed (the
/// request, its buffers, the arguments here) is gone before the session
/// starts.
fn handle_connection(
    ticket: Ticket,
    broker: Arc<Broker>,
    tcp: TcpStream,
    peer: SocketAddr,
    loopback: bool,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(async move {
        let upgraded = handshake(&broker, tcp, peer, loopback, tls, &shutdown).await?;
        Some(run_session(broker, upgraded, peer, shutdown))
    });
    async move {
        // The admission slot is held for the connection's life (dropped
        // last, not moved: a moved copy would take room in the task).
        // (`let else`, not `if let`: the matched temporary would stay in the
        // task beside the session it holds.)
        let Some(session) = opening.await else {
            drop(ticket);
            return;
        };
        // Each poll of the session runs under a cork: what it sends to idle
        // sessions (its replies, its fan-out) is written once per session
        // when the poll ends.
        Corked::new(session).await;
        drop(ticket);
    }
}

/// TLS (when configured), then HTTP until the connection closes or
/// upgrades; for an upgrade, the WebSocket on the raw socket.
async fn handshake(
    broker: &Arc<Broker>,
    tcp: TcpStream,
    peer: SocketAddr,
    loopback: bool,
    tls: Option<TlsAcceptor>,
    shutdown: &CancellationToken,
) -> Option<http::Upgraded> {
    let _ = tcp.set_nodelay(true);
    // One deadline for the TLS handshake and the first request head.
    let deadline = Instant::now() + broker.config.limits.handshake_timeout();
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let accepted = tokio::select! {
                // Boxed: the handshake's state then lives on the heap only
                // while it runs, instead of widening every idle
                // connection's task.
                accepted = timeout_at(deadline, Box::pin(acceptor.accept(tcp))) => accepted,
                _ = shutdown.cancelled() => return None,
            };
            match accepted {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    broker.metrics.upgrade_refused();
                    return None;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake not complete in time");
                    broker.metrics.upgrade_refused();
                    return None;
                }
            }
        }
    };
    http::serve(broker, stream, peer, loopback, deadline, shutdown).await
}

/// How soon another disk retention slice follows one that stopped at its
/// bounds.
const RETENTION_CATCH_UP: Duration = Duration::from_millis(250);

/// Periodic work off the hot path: forgetting idle identities and
/// retention (history length and age, ended engagements).
async fn housekeeping(broker: Arc<Broker>, shutdown: CancellationToken) {
    use crate::engine::Housekeeping;
    let purge_every = Duration::from_secs(broker.config.history.purge_interval_secs);
    // Each first due one period after start, not at once (a tokio
    // interval's first tick): a broker that has just started has nothing
    // idle to forget, and its first retention slice need not race the
    // first clients' writes.
    let every = |period: Duration| tokio::time::interval_at(Instant::now() + period, period);
    let mut reap = every(REAP_EVERY);
    let mut purge = every(purge_every);
    let mut catch_up = every(RETENTION_CATCH_UP);
    let engine = &broker.node.engine;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = catch_up.tick() => engine.housekeeping(Housekeeping::CatchUp),
            _ = reap.tick() => engine.housekeeping(Housekeeping::Reap),
            _ = purge.tick() => engine.housekeeping(Housekeeping::Purge),
        }
    }
}
