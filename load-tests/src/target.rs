//! Where the harness connects: loopback only, and from which source address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

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

/// Parse every `--url` (see [`parse_loopback_url`]); at least one.
pub fn parse_loopback_urls(urls: &[String]) -> Result<Vec<Target>, String> {
    if urls.is_empty() {
        return Err("no --url given".into());
    }
    urls.iter().map(|u| parse_loopback_url(u.trim())).collect()
}

/// Where connection number `i` of a scenario goes, and from which source
/// address (`None`: let the kernel choose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index into the run's targets (the `--url`s).
    pub target: usize,
    pub src: Option<Ipv4Addr>,
}

/// How a scenario's connections spread: over the targets round-robin
/// (connection `i` to target `i mod n`, so consecutive connections, such as
/// a chat's customer and agent, land on different targets whenever there
/// are several), and, per target, over source addresses. One loopback source
/// address has only ~28k ephemeral ports towards one destination, so big runs
/// spread over 127.0.0.2, 127.0.0.3, ...
#[derive(Debug, Clone)]
pub struct Spread {
    targets: usize,
    ips: Vec<Ipv4Addr>,
}

impl Spread {
    /// Enough source addresses for `conns` connections over `targets`, at
    /// most `per_ip` from one address to one target.
    pub fn new(targets: &[Target], conns: usize, per_ip: usize) -> Result<Self, String> {
        let n = targets.len().max(1);
        let per_ip = per_ip.max(1);
        let per_target = conns.div_ceil(n);
        let k = per_target.div_ceil(per_ip);
        if k <= 1 {
            return Ok(Spread {
                targets: n,
                ips: Vec::new(),
            });
        }
        if targets.iter().any(|t| !t.addr.is_ipv4()) {
            return Err(format!(
                "{per_target} connections to one --url need {k} source addresses; use IPv4 loopback URLs (127.0.0.1)"
            ));
        }
        if k > 250 {
            return Err(format!(
                "{per_target} connections to one --url need more than 250 source addresses"
            ));
        }
        let ips = (0..k)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        Ok(Spread { targets: n, ips })
    }

    /// Source addresses in use (1 when the kernel chooses).
    pub fn source_count(&self) -> usize {
        self.ips.len().max(1)
    }

    /// The route of connection number `i`.
    pub fn route(&self, i: usize) -> Route {
        let src = if self.ips.is_empty() {
            None
        } else {
            // Every target gets every source address in turn.
            Some(self.ips[(i / self.targets) % self.ips.len()])
        };
        Route {
            target: i % self.targets,
            src,
        }
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Open a TCP connection (bound to `src` if given) and do the WebSocket
/// handshake, offering `subprotocol` when there is one.
pub async fn open(
    target: &Target,
    src: Option<Ipv4Addr>,
    subprotocol: Option<&'static str>,
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
        if let Some(p) = subprotocol {
            req.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
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

    fn targets(urls: &[&str]) -> Vec<Target> {
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        parse_loopback_urls(&urls).unwrap()
    }

    #[test]
    fn parses_several_urls() {
        let t = targets(&["ws://127.0.0.1:8080/ws", " ws://localhost:8081/ws"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].addr, "127.0.0.1:8081".parse().unwrap());
        let bad = vec!["ws://127.0.0.1:1/ws".to_string(), "ws://10.0.0.1/ws".into()];
        assert!(parse_loopback_urls(&bad).is_err());
        assert!(parse_loopback_urls(&[]).is_err());
    }

    #[test]
    fn spreads_sources() {
        let t = targets(&["ws://127.0.0.1:8080/ws"]);
        let s = Spread::new(&t, 1000, 20000).unwrap();
        assert_eq!(s.route(5).src, None);
        assert_eq!(s.route(5).target, 0);
        let s = Spread::new(&t, 50_000, 20000).unwrap();
        assert_eq!(s.source_count(), 3);
        assert_eq!(s.route(0).src, Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(s.route(4).src, Some(Ipv4Addr::new(127, 0, 0, 3)));
        let t6 = targets(&["ws://[::1]:8080/ws"]);
        assert!(Spread::new(&t6, 50_000, 20000).is_err());
        assert!(Spread::new(&t6, 5_000, 20000).is_ok());
    }

    #[test]
    fn spreads_over_urls_round_robin() {
        let t = targets(&[
            "ws://127.0.0.1:1/ws",
            "ws://127.0.0.1:2/ws",
            "ws://127.0.0.1:3/ws",
        ]);
        let s = Spread::new(&t, 9, 5000).unwrap();
        let got: Vec<usize> = (0..9).map(|i| s.route(i).target).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        // A chat's customer (2i) and agent (2i + 1) never share a URL when
        // there are several, whatever their number.
        for n in 2..=5 {
            let urls: Vec<String> = (0..n)
                .map(|p| format!("ws://127.0.0.1:{}/ws", p + 1))
                .collect();
            let s = Spread::new(&parse_loopback_urls(&urls).unwrap(), 1000, 5000).unwrap();
            for i in 0..500 {
                assert_ne!(
                    s.route(2 * i).target,
                    s.route(2 * i + 1).target,
                    "n={n} i={i}"
                );
            }
        }
        // Sources are counted per URL: 12,000 over 2 URLs is 6,000 each,
        // 2 addresses at 5,000; each URL gets both addresses in turn.
        let two = targets(&["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"]);
        let s = Spread::new(&two, 12_000, 5000).unwrap();
        assert_eq!(s.source_count(), 2);
        let a = Ipv4Addr::new(127, 0, 0, 2);
        let b = Ipv4Addr::new(127, 0, 0, 3);
        let first: Vec<Route> = (0..4).map(|i| s.route(i)).collect();
        assert_eq!(
            first,
            [
                Route {
                    target: 0,
                    src: Some(a)
                },
                Route {
                    target: 1,
                    src: Some(a)
                },
                Route {
                    target: 0,
                    src: Some(b)
                },
                Route {
                    target: 1,
                    src: Some(b)
                },
            ]
        );
    }
}
