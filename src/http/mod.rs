//! The HTTP side of the listener: reading a request head, the WebSocket
//! upgrade at `/ws`, and the few plain routes (demo pages, `/healthz`,
//! `/metrics`, `/demo/token`).
//!
//! The request head is read by hand (with `httparse`) rather than by
//! tungstenite so that one listener can serve pages too, and so that every
//! refusal (a bad upgrade, an unknown path) is a proper HTTP answer.

pub(crate) mod assets;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::Role;
use crate::broker::Broker;
use crate::codec::Encoding;

/// Largest request head accepted (request line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("connection closed before the request was complete")]
    Eof,
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Request {
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

/// Reads one request head. Returns it with any bytes read past its end.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p, Some(q.to_owned())),
                    None => (target, None),
                };
                let request = Request {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query,
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                return Ok((request, buf.split_off(len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) => return Err(HttpError::TooLarge),
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
    }
}

/// A complete (non-upgrade) response; the connection closes after it.
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            body.into().into_bytes(),
        )
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

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
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// What to do with a request.
pub(crate) enum Route {
    /// Upgrade to a WebSocket session in this encoding; the 101 response.
    Upgrade {
        encoding: Encoding,
        response: Vec<u8>,
    },
    /// Answer and close.
    Respond(Response),
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
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            broker.metrics.snapshot().to_prometheus(),
        ),
        "/demo/token"
            if broker.config.demo_tokens && loopback && broker.auth().can_mint_client_tokens() =>
        {
            demo_token(broker, request)
        }
        path => match assets::lookup(path) {
            Some(asset) => {
                let mut response = Response::new(200, asset.content_type, asset.body)
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
        return refuse(405, "the WebSocket endpoint takes GET");
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
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if !offered.is_empty() {
        response.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            encoding.subprotocol()
        ));
    }
    response.push_str("\r\n");
    Route::Upgrade {
        encoding,
        response: response.into_bytes(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_a_head_and_keeps_what_follows() {
        let raw = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Protocol: foo, switchboard.v1.msgpack\r\n\r\nEXTRA";
        let (req, rest) = read_request(&mut &raw[..]).await.unwrap();
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query.as_deref(), Some("x=1"));
        assert!(req.is_websocket_upgrade());
        assert_eq!(rest, b"EXTRA");
        let protocols: Vec<_> = req.header_tokens("sec-websocket-protocol").collect();
        assert_eq!(protocols, ["foo", "switchboard.v1.msgpack"]);
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend_from_slice(b"X-Pad: ");
        raw.resize(raw.len() + MAX_HEAD_BYTES, b'a');
        assert!(matches!(
            read_request(&mut &raw[..]).await,
            Err(HttpError::TooLarge)
        ));
        let many = "X-A: b\r\n".repeat(MAX_HEADERS + 1);
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            read_request(&mut raw.as_bytes()).await,
            Err(HttpError::TooLarge)
        ));
    }

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
}
