//! The HTTP side of the listener, on `hyper` 1: keep-alive, request bodies
//! (`Content-Length` and chunked) and their limits, timeouts, the WebSocket
//! upgrade at `/ws`, and the plain routes (demo pages, `/healthz`,
//! `/readyz`, `/metrics`, `/demo/token`).
//!
//! The upgrade stays lean: hyper answers the 101, then hands back the very
//! socket it was given plus the bytes it read past the request head
//! (`Connection::into_parts`), and the session runs on that raw socket.
//! Everything hyper allocated for the connection is freed before the
//! session starts.

pub(crate) mod api;
pub(crate) mod assets;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::Role;
use crate::broker::Broker;
use crate::codec::Encoding;
use crate::tls::Stream;

/// Largest request head accepted (request line and headers): hyper's read
/// buffer is this size, and a head that does not fit is answered 431.
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields a request may carry (over it: 431).
pub(crate) const MAX_HEADERS: usize = 64;
/// Largest request body accepted (over it: 413).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a closed or refused connection keeps reading (and discarding)
/// what the client still sends, so that its request in flight does not turn
/// our close into a reset that destroys the answer before it is read.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// A parsed request head (names lower-cased, in arrival order).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn from_parts(parts: &hyper::http::request::Parts) -> Request {
        Request {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Comma-separated tokens of every header called `name`.
    pub fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(v))
        })
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket") && self.has_token("connection", "upgrade")
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A complete (non-upgrade) response.
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Writes the response straight to a socket that hyper is not serving
    /// (refusals at accept, the handshake deadline); the connection closes
    /// after it.
    pub(crate) async fn write_to<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        head_only: bool,
    ) -> std::io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        stream.write_all(&bytes).await?;
        stream.flush().await
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(self.body));
        *response.status_mut() =
            hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::OK);
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(self.content_type),
        );
        headers.insert(
            hyper::header::X_CONTENT_TYPE_OPTIONS,
            hyper::header::HeaderValue::from_static("nosniff"),
        );
        for (name, value) in self.headers {
            if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                headers.append(name, value);
            }
        }
        response
    }
}

fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// What to do with a request.
pub(crate) enum Route {
    /// Upgrade to a WebSocket session in this encoding.
    Upgrade {
        encoding: Encoding,
        /// `Sec-WebSocket-Accept`.
        accept: String,
        /// Whether the client offered subprotocols (then the chosen one is
        /// named in the answer).
        name_protocol: bool,
    },
    /// Answer (and keep the connection for the next request).
    Respond(Response),
}

/// Whether the broker can serve every action now; `Err` says why not. The
/// one place readiness is decided (`/readyz`): the engine's health (the
/// embedded engine: its store can take writes, and a memory-only broker
/// always can; a clustered engine adds its shared state's).
pub(crate) fn readiness(broker: &Broker) -> Result<(), String> {
    broker.node.engine.health()
}

/// Decides what a request gets. `loopback` says whether the listener is on
/// a loopback address (demo tokens are only ever minted there).
pub(crate) fn route(broker: &Broker, request: &Request, loopback: bool) -> Route {
    if request.path == "/ws" {
        return websocket_upgrade(broker, request);
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Route::Respond(
            Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD"),
        );
    }
    let response = match request.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match readiness(broker) {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => Response::new(200, crate::metrics::CONTENT_TYPE, broker.metrics.render())
            .with_header("Cache-Control", "no-store"),
        "/demo/token"
            if broker.config.demo_tokens_enabled()
                && loopback
                && broker.auth().can_mint_client_tokens() =>
        {
            match demo_token_refusal(request) {
                Some(why) => Response::text(403, format!("{why}\n")),
                None => demo_token(broker, request),
            }
        }
        path => match assets::lookup(path) {
            Some(asset) => {
                let mut response =
                    Response::new(200, asset.content_type, Bytes::from_static(asset.body))
                        .with_header("Cache-Control", "no-cache");
                response.headers.extend(assets::cors_headers(
                    &broker.config,
                    request.header("origin"),
                ));
                response
            }
            None => Response::text(404, "not found\n"),
        },
    };
    Route::Respond(response)
}

fn websocket_upgrade(broker: &Broker, request: &Request) -> Route {
    let refuse = |status, text: &str| Route::Respond(Response::text(status, format!("{text}\n")));
    if request.method != "GET" {
        return Route::Respond(
            Response::text(405, "the WebSocket endpoint takes GET\n").with_header("Allow", "GET"),
        );
    }
    if !request.is_websocket_upgrade() {
        return Route::Respond(
            Response::text(426, "this endpoint speaks WebSocket (protocol switchboard.v1.json or switchboard.v1.msgpack)\n")
                .with_header("Upgrade", "websocket"),
        );
    }
    if request.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Route::Respond(
            Response::text(426, "unsupported WebSocket version\n")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    let Some(key) = request.header("sec-websocket-key").map(str::trim) else {
        return refuse(400, "missing Sec-WebSocket-Key");
    };
    // Another site's page must not ride a visitor's browser into the broker.
    if let Err(why) =
        crate::admission::origin_allowed(broker.config.allowed_origins.as_deref(), request)
    {
        return refuse(403, &why);
    }
    let offered: Vec<&str> = request.header_tokens("sec-websocket-protocol").collect();
    let encoding = if offered.is_empty() {
        Encoding::Json
    } else {
        match offered.iter().find_map(|p| Encoding::from_subprotocol(p)) {
            Some(encoding) => encoding,
            None => {
                return refuse(
                    400,
                    "no supported subprotocol offered: use switchboard.v1.json or switchboard.v1.msgpack",
                )
            }
        }
    };
    Route::Upgrade {
        encoding,
        accept: derive_accept_key(key.as_bytes()),
        name_protocol: !offered.is_empty(),
    }
}

/// Headers a reverse proxy adds. A request carrying one came through a
/// proxy, whatever address the socket shows.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Why a demo-token request is refused even though demo tokens are on: it
/// came through a proxy, or it does not name this machine as its host (a
/// proxy or a DNS-rebinding page would name another). `None`: serve it.
fn demo_token_refusal(request: &Request) -> Option<&'static str> {
    if request
        .headers
        .iter()
        .any(|(name, _)| FORWARDING_HEADERS.contains(&name.as_str()))
    {
        return Some("demo tokens are not served through a proxy (Forwarded, X-Forwarded-For or X-Real-IP present)");
    }
    let mut hosts = request.headers.iter().filter(|(name, _)| name == "host");
    match (hosts.next(), hosts.next()) {
        (Some((_, host)), None) if is_loopback_host(host) => None,
        _ => Some("demo tokens are only served to a Host of localhost, 127.0.0.0/8 or [::1]"),
    }
}

/// `localhost`, an address in 127.0.0.0/8 or `[::1]`, each with an optional
/// port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let valid_port = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok && address.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    let (name, port_ok) = match host.split_once(':') {
        Some((name, port)) => (name, valid_port(port)),
        None => (host, true),
    };
    port_ok
        && (name.eq_ignore_ascii_case("localhost")
            || name.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback()))
}

/// `GET /demo/token?sub=NAME&role=agent|service`: a short-lived token signed
/// with the broker's own secret, so the demo console can sign an agent in.
fn demo_token(broker: &Broker, request: &Request) -> Response {
    let role = match request.query_param("role").as_deref() {
        None | Some("agent") => Role::Agent,
        Some("service") => Role::Service,
        Some(_) => return Response::text(400, "role must be agent or service\n"),
    };
    let sub = request.query_param("sub").unwrap_or_else(|| "agent".into());
    if sub.is_empty() || sub.len() > 64 || sub.chars().any(char::is_control) {
        return Response::text(400, "sub must be 1 to 64 characters\n");
    }
    let ttl = Duration::from_secs(broker.config.identities.demo_token_ttl_secs);
    let token = broker.auth().client_token(&sub, role, ttl);
    Response::new(
        200,
        "application/json",
        serde_json::json!({ "token": token }).to_string(),
    )
    .with_header("Cache-Control", "no-store")
}

/// A connection upgraded to a WebSocket: its socket, the bytes the client
/// sent past the request head, and the session's encoding.
pub(crate) struct Upgraded {
    pub stream: Stream,
    pub leftover: Vec<u8>,
    pub encoding: Encoding,
}

/// What the serving loop learns from the service while hyper runs it.
#[derive(Default)]
struct ConnState {
    /// Request heads received so far.
    requests: AtomicU32,
    /// The encoding of an accepted `/ws` upgrade, plus one (0: none).
    upgrade: AtomicU8,
}

impl ConnState {
    fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    fn upgrade(&self) -> Option<Encoding> {
        match self.upgrade.load(Ordering::Relaxed) {
            1 => Some(Encoding::Json),
            2 => Some(Encoding::MsgPack),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct Service {
    broker: Arc<Broker>,
    loopback: bool,
    state: Arc<ConnState>,
}

type ServiceFuture = Pin<
    Box<dyn Future<Output = Result<hyper::Response<Full<Bytes>>, std::convert::Infallible>> + Send>,
>;

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = hyper::Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> ServiceFuture {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        let service = self.clone();
        Box::pin(async move { Ok(service.answer(request).await) })
    }
}

impl Service {
    async fn answer(self, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        if parts.headers.len() > MAX_HEADERS {
            self.broker.metrics.upgrade_refused();
            return closing(Response::text(
                431,
                format!("too many header fields: more than {MAX_HEADERS}\n"),
            ));
        }
        // Every body is read (bounded) before the route runs: a handler
        // gets it whole, and keep-alive framing stays intact whatever the
        // route does with it.
        let is_api = parts.uri.path().starts_with("/api/");
        let body = match read_body(&parts, body).await {
            Ok(body) => body,
            Err(refusal) if is_api => {
                let message = String::from_utf8_lossy(&refusal.body).trim().to_owned();
                let e = if refusal.status == 413 {
                    crate::error::ActionError::TooLarge(message)
                } else {
                    crate::error::ActionError::BadRequest(message)
                };
                return closing(api::error(e));
            }
            Err(refusal) => return closing(refusal),
        };
        if is_api {
            return api::handle(
                &self.broker,
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query(),
                &parts.headers,
                body,
            )
            .await
            .into_hyper();
        }
        let request = Request::from_parts(&parts);
        match route(&self.broker, &request, self.loopback) {
            Route::Respond(response) => {
                if request.path == "/ws" {
                    self.broker.metrics.upgrade_refused();
                }
                response.into_hyper()
            }
            Route::Upgrade {
                encoding,
                accept,
                name_protocol,
            } => {
                let code = match encoding {
                    Encoding::Json => 1,
                    Encoding::MsgPack => 2,
                };
                self.state.upgrade.store(code, Ordering::Relaxed);
                switching_protocols(encoding, &accept, name_protocol)
            }
        }
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`], `Content-Length`
/// or chunked; a larger one is refused with 413 (a declared length before
/// any of it is read).
async fn read_body(parts: &hyper::http::request::Parts, body: Incoming) -> Result<Bytes, Response> {
    let too_large = || {
        Response::text(
            413,
            format!("request body larger than {MAX_BODY_BYTES} bytes\n"),
        )
    };
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Response::text(
            400,
            format!("cannot read the request body: {e}\n"),
        )),
    }
}

/// A response after which the connection closes (what is left of the
/// request cannot be trusted or was not read).
fn closing(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut response = response.into_hyper();
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

fn switching_protocols(
    encoding: Encoding,
    accept: &str,
    name_protocol: bool,
) -> hyper::Response<Full<Bytes>> {
    use hyper::header::{
        HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
    };
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if name_protocol {
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    response
}

/// How a connection's HTTP phase ended.
enum Ended {
    /// hyper is done with it (an upgrade, a close, or an error it answered).
    Served(hyper::Result<()>),
    /// The first request head was not complete by the deadline.
    HeadTimeout,
    /// Shutdown, or a request still unanswered when the shutdown grace ran
    /// out: drop the connection.
    Abandon,
}

/// Serves HTTP on a new connection until it closes or upgrades. The first
/// request head must be complete by `deadline` (shared with the TLS
/// handshake: trickling bytes does not extend it); later requests on a
/// kept-alive connection each get `limits.handshake_timeout_ms` from the
/// moment the previous answer is sent, which is also how long an idle
/// kept-alive connection stays open.
pub(crate) async fn serve(
    broker: &Arc<Broker>,
    stream: Stream,
    peer: SocketAddr,
    loopback: bool,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<Upgraded> {
    let timeout = broker.config.limits.handshake_timeout();
    let state = Arc::new(ConnState::default());
    let service = Service {
        broker: broker.clone(),
        loopback,
        state: state.clone(),
    };
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(StallGuard::new(stream, timeout)), service);
    let first_head = sleep_until(deadline);
    tokio::pin!(first_head);
    let mut grace_until: Option<Instant> = None;
    let ended = loop {
        tokio::select! {
            biased;
            served = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                break Ended::Served(served);
            }
            // The condition is only checked when the select starts: a head
            // that arrived since (a long answer still being written) must
            // not be cut off by the first head's deadline.
            _ = &mut first_head, if state.requests() == 0 => {
                if state.requests() == 0 {
                    break Ended::HeadTimeout;
                }
            }
            _ = shutdown.cancelled(), if grace_until.is_none() => {
                if state.requests() == 0 {
                    break Ended::Abandon;
                }
                // Answer what is in flight, then close.
                Pin::new(&mut conn).graceful_shutdown();
                grace_until = Some(Instant::now() + timeout);
            }
            _ = sleep_until(grace_until.unwrap_or(deadline)), if grace_until.is_some() => {
                break Ended::Abandon;
            }
        }
    };
    let parts = conn.into_parts();
    let read_past_head = parts.read_buf;
    let mut stream = parts.io.into_inner().into_inner();
    match ended {
        Ended::Served(Ok(())) => {
            if let Some(encoding) = state.upgrade() {
                return Some(Upgraded {
                    stream,
                    // Copied out: the slice would otherwise keep hyper's
                    // whole read buffer alive for the session's life.
                    leftover: read_past_head.to_vec(),
                    encoding,
                });
            }
            let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
        }
        // hyper's own head timer (later requests on a kept-alive
        // connection, or a tie with the first deadline): a request that
        // was started, or the first one, is answered 408 as above; an
        // idle kept-alive connection is simply closed.
        Ended::Served(Err(e))
            if e.is_timeout() && (state.requests() == 0 || !read_past_head.is_empty()) =>
        {
            debug!(%peer, "HTTP request not complete in time");
            broker.metrics.upgrade_refused();
            close_lingering(stream, Some(Response::text(408, "request timeout\n"))).await;
        }
        Ended::Served(Err(e)) => {
            // hyper has answered what deserves an answer (400, 431);
            // give the client a moment to read it.
            if e.is_parse_too_large() {
                let why = if read_past_head.len() >= MAX_HEAD_BYTES {
                    format!("request head larger than {MAX_HEAD_BYTES} bytes")
                } else {
                    "too many header fields".to_owned()
                };
                debug!(%peer, why, "request head refused (431)");
                broker.metrics.upgrade_refused();
            } else if e.is_parse() {
                debug!(%peer, error = %e, "malformed HTTP request");
                broker.metrics.upgrade_refused();
            } else {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
            close_lingering(stream, None).await;
        }
        Ended::HeadTimeout => {
            debug!(%peer, "HTTP request not complete in time");
            broker.metrics.upgrade_refused();
            close_lingering(stream, Some(Response::text(408, "request timeout\n"))).await;
        }
        Ended::Abandon => {}
    }
    None
}

/// Writes `answer` (if any), closes our side, and reads (discarding) what
/// the client still sends for a moment, so that the answer reaches it
/// instead of being destroyed by a reset.
pub(crate) async fn close_lingering<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    answer: Option<Response>,
) {
    let write = async {
        if let Some(answer) = answer {
            answer.write_to(&mut stream, false).await?;
        }
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(LINGER, write).await, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut total = 0;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// The connection's socket while hyper serves it: a write that makes no
/// progress for `limit` fails, so a client that stops reading a page (a
/// slow-read slowloris) cannot hold its connection slot forever.
struct StallGuard {
    inner: Stream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallGuard {
    fn new(inner: Stream, limit: Duration) -> Self {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }

    fn into_inner(self) -> Stream {
        self.inner
    }

    /// Called when a write is pending: arms the stall timer on the first
    /// one, and fails once it has run out.
    fn check_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        done: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match done {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.check_stall(cx),
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(done, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(done, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(done, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(done, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let req = Request {
            method: "GET".into(),
            path: "/demo/token".into(),
            query: Some("sub=Ada%20L&role=agent&bad=%zz".into()),
            headers: vec![],
        };
        assert_eq!(req.query_param("sub").as_deref(), Some("Ada L"));
        assert_eq!(req.query_param("role").as_deref(), Some("agent"));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(req.query_param("none"), None);
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.9.8.7:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]:80",
            "[::1]x",
            "localhost:",
            "localhost:80:80",
            "::1",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
