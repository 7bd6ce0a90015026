//! Where the harness connects: loopback only, and from which source address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use crate::proto::Encoding;

/// A checked `ws://` URL on a loopback address.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

/// Parse `url` and refuse anything that is not plain `ws://` to a loopback
/// host (127.0.0.0/8, `localhost` or `::1`). No DNS lookup is made.
pub fn parse_loopback_url(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some(s) => return Err(format!("--url scheme {s:?} not supported: use ws://")),
        None => {
            return Err(format!(
                "--url {url:?} has no scheme: use ws://HOST:PORT/ws"
            ))
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("--url host {host:?} refused: only loopback addresses (127.0.0.0/8, localhost, ::1)"))?
    };
    let loopback = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    };
    if !loopback {
        return Err(format!(
            "--url host {host:?} refused: only loopback addresses (127.0.0.0/8, localhost, ::1)"
        ));
    }
    let port = uri.port_u16().unwrap_or(80);
    Ok(Target {
        url: url.to_string(),
        addr: SocketAddr::new(ip, port),
    })
}

/// Source addresses for outgoing connections: one loopback source address has
/// only ~28k ephemeral ports towards one destination, so big runs spread over
/// 127.0.0.2, 127.0.0.3, ...
#[derive(Debug, Clone)]
pub struct Sources {
    ips: Vec<Ipv4Addr>,
}

impl Sources {
    /// Enough source addresses for `conns` connections at `per_ip` each.
    pub fn for_connections(target: &Target, conns: usize, per_ip: usize) -> Result<Self, String> {
        let per_ip = per_ip.max(1);
        let n = conns.div_ceil(per_ip);
        if n <= 1 {
            return Ok(Sources { ips: Vec::new() });
        }
        if !target.addr.is_ipv4() {
            return Err(format!(
                "{conns} connections need {n} source addresses; use an IPv4 loopback --url (127.0.0.1)"
            ));
        }
        if n > 250 {
            return Err(format!(
                "{conns} connections need more than 250 source addresses"
            ));
        }
        let ips = (0..n)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        Ok(Sources { ips })
    }

    pub fn count(&self) -> usize {
        self.ips.len().max(1)
    }

    /// The source address for connection number `i` (round-robin); `None`
    /// means "let the kernel choose".
    pub fn pick(&self, i: usize) -> Option<Ipv4Addr> {
        if self.ips.is_empty() {
            None
        } else {
            Some(self.ips[i % self.ips.len()])
        }
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Open a TCP connection (bound to `src` if given) and do the WebSocket
/// handshake offering the encoding's subprotocol.
pub async fn open(
    target: &Target,
    src: Option<Ipv4Addr>,
    enc: Encoding,
    buf: usize,
    timeout: Duration,
) -> Result<Ws, String> {
    let fut = async {
        let sock = if target.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = src {
            bind_no_port(&sock);
            sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = sock
            .connect(target.addr)
            .await
            .map_err(|e| format!("tcp connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut req = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("request: {e}"))?;
        req.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(enc.subprotocol()),
        );
        let cfg = ws_config(buf);
        let (ws, _resp) = client_async_with_config(req, stream, Some(cfg))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(ws)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("connect timeout".to_string()),
    }
}

/// Small client buffers so that tens of thousands of sessions fit.
pub fn ws_config(buf: usize) -> WebSocketConfig {
    let buf = buf.max(1024);
    WebSocketConfig::default()
        .read_buffer_size(buf)
        .write_buffer_size(buf)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// IP_BIND_ADDRESS_NO_PORT: pick the port at connect() time from the full
/// 4-tuple, not at bind() time, so each source address gets its full range.
fn bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, with a valid int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback() {
        for u in [
            "ws://127.0.0.1:8080/ws",
            "ws://127.1.2.3:1/ws",
            "ws://localhost:9000/ws",
            "ws://LOCALHOST/ws",
            "ws://[::1]:8080/ws",
        ] {
            let t = parse_loopback_url(u).unwrap_or_else(|e| panic!("{u}: {e}"));
            assert!(t.addr.ip().is_loopback(), "{u}");
        }
        assert_eq!(
            parse_loopback_url("ws://localhost:9000/ws").unwrap().addr,
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_loopback_url("ws://127.0.0.1/ws").unwrap().addr.port(),
            80
        );
    }

    #[test]
    fn refuses_everything_else() {
        for u in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.1/ws",
            "ws://8.8.8.8/ws",
            "ws://example.com/ws",
            "ws://localhost.example.com/ws",
            "ws://[::2]:8080/ws",
            "ws://[::ffff:127.0.0.1]:8080/ws",
            "ws://0.0.0.0:8080/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "127.0.0.1:8080",
        ] {
            assert!(parse_loopback_url(u).is_err(), "{u} should be refused");
        }
    }

    #[test]
    fn spreads_sources() {
        let t = parse_loopback_url("ws://127.0.0.1:8080/ws").unwrap();
        let s = Sources::for_connections(&t, 1000, 20000).unwrap();
        assert_eq!(s.pick(5), None);
        let s = Sources::for_connections(&t, 50_000, 20000).unwrap();
        assert_eq!(s.count(), 3);
        assert_eq!(s.pick(0), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(s.pick(4), Some(Ipv4Addr::new(127, 0, 0, 3)));
        let t6 = parse_loopback_url("ws://[::1]:8080/ws").unwrap();
        assert!(Sources::for_connections(&t6, 50_000, 20000).is_err());
    }
}
