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

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::connection::{run_session, websocket_config};
use crate::http::{read_request, route, HttpError, Response, Route};

/// How long shutdown waits for sessions to drain.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often idle identities are swept.
const REAP_EVERY: Duration = Duration::from_secs(60);

pub struct Server {
    listener: TcpListener,
    broker: Arc<Broker>,
}

impl Server {
    pub async fn bind(broker: Arc<Broker>, addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, broker })
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
        tracker.spawn(housekeeping(self.broker.clone(), token.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tracker.spawn(handle_connection(
                            self.broker.clone(),
                            stream,
                            peer,
                            loopback,
                            token.clone(),
                        ));
                    }
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
            sessions = self.broker.sessions.len(),
            "shutting down: closing sessions with 4000"
        );
        token.cancel();
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

async fn handle_connection(
    broker: Arc<Broker>,
    mut stream: TcpStream,
    peer: SocketAddr,
    loopback: bool,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let head = tokio::select! {
        head = tokio::time::timeout(broker.config.limits.handshake_timeout(), read_request(&mut stream)) => head,
        _ = shutdown.cancelled() => return,
    };
    let (request, leftover) = match head {
        Ok(Ok(head)) => head,
        Ok(Err(HttpError::Eof)) => return,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "bad HTTP request");
            broker.metrics.upgrade_refused();
            let status = if matches!(e, HttpError::TooLarge) {
                431
            } else {
                400
            };
            let _ = Response::text(status, format!("{e}\n"))
                .write_to(&mut stream, false)
                .await;
            return;
        }
        Err(_) => {
            debug!(%peer, "HTTP request not complete in time");
            broker.metrics.upgrade_refused();
            let _ = Response::text(408, "request timeout\n")
                .write_to(&mut stream, false)
                .await;
            return;
        }
    };
    match route(&broker, &request, loopback) {
        Route::Respond(response) => {
            if request.path == "/ws" {
                broker.metrics.upgrade_refused();
            }
            let _ = response
                .write_to(&mut stream, request.method == "HEAD")
                .await;
            let _ = stream.shutdown().await;
        }
        Route::Upgrade { encoding, response } => {
            if stream.write_all(&response).await.is_err() {
                return;
            }
            let socket = WebSocketStream::from_partially_read(
                stream,
                leftover,
                WsRole::Server,
                Some(websocket_config(&broker)),
            )
            .await;
            run_session(broker, socket, encoding, peer, shutdown).await;
        }
    }
}

/// Periodic work off the hot path: forgetting idle identities and
/// retention (history length and age, ended engagements).
async fn housekeeping(broker: Arc<Broker>, shutdown: CancellationToken) {
    let ttl = Duration::from_secs(broker.config.identities.idle_ttl_secs);
    let purge_every = Duration::from_secs(broker.config.history.purge_interval_secs);
    let mut reap = tokio::time::interval(REAP_EVERY);
    let mut purge = tokio::time::interval(purge_every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = reap.tick() => {
                let reaped = broker.reap_identities(ttl);
                if reaped > 0 {
                    debug!(reaped, "forgot idle identities");
                }
            }
            _ = purge.tick() => broker.purge(),
        }
    }
}
