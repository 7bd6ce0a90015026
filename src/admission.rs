//! Admission control: who may open a connection at all.
//!
//! - Connection counts, in total and per client IP, taken at `accept` and
//!   held until the socket closes, so that a flood of sockets (finished
//!   upgrades, half-sent requests, idle TLS handshakes alike) is bounded.
//!   Over a limit the connection gets a short HTTP answer (503 over the
//!   total, 429 over the per-IP count) and is closed.
//! - The browser `Origin` allowlist for the WebSocket upgrade.
//! - The numbers the session layer enforces later (sessions per identity,
//!   subscriptions per session) live in the same `[admission]` section.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;

use crate::http::Request;

/// `[admission]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Open TCP connections (any stage: handshake, session, page request).
    pub max_connections: usize,
    /// Open TCP connections from one client IP address.
    pub max_connections_per_ip: usize,
    /// Sessions (tabs, devices) one identity may have at once.
    pub max_sessions_per_identity: usize,
    /// Channels and queues one session may observe (`Subscribe`).
    pub max_subscriptions_per_session: usize,
    /// Members (agents and services who joined, plus the customer) one
    /// channel may have: bounds `JoinChannel`'s member list and every push
    /// that carries it.
    pub max_members_per_channel: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_connections: 50_000,
            max_connections_per_ip: 256,
            max_sessions_per_identity: 32,
            max_subscriptions_per_session: 1024,
            max_members_per_channel: 1000,
        }
    }
}

impl AdmissionConfig {
    pub fn validate(&self) -> Result<(), String> {
        let values = [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_sessions_per_identity", self.max_sessions_per_identity),
            (
                "max_subscriptions_per_session",
                self.max_subscriptions_per_session,
            ),
            ("max_members_per_channel", self.max_members_per_channel),
        ];
        if let Some((name, _)) = values.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        Ok(())
    }
}

/// Why a connection was turned away at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the server is at its connection limit ({0}); try again later")]
    Full(usize),
    #[error("too many connections from your address (limit {0})")]
    PerIp(usize),
}

impl Refusal {
    /// The HTTP status the refusal is answered with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Full(_) => 503,
            Refusal::PerIp(_) => 429,
        }
    }
}

/// Live connection counts.
pub struct Admission {
    config: AdmissionConfig,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with at least one open connection: the map is bounded
    /// by `max_connections`.
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; its slot is given back on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        Arc::new(Admission {
            config,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut counts = self.counts.lock();
        if counts.total >= self.config.max_connections {
            return Err(Refusal::Full(self.config.max_connections));
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.config.max_connections_per_ip {
            return Err(Refusal::PerIp(self.config.max_connections_per_ip));
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// Open connections (for tests and metrics).
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Whether a WebSocket upgrade's `Origin` is acceptable. With no allowlist
/// every origin is. Without an `Origin` header the client is not a browser
/// (a bot, a console, the load harness): the header only exists to stop
/// *other sites' pages* from riding a visitor's browser, so its absence is
/// allowed. Comparison is ASCII case-insensitive, ignoring a trailing `/`.
pub fn origin_allowed(allowed: Option<&[String]>, request: &Request) -> Result<(), String> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let origins: Vec<&str> = request
        .headers
        .iter()
        .filter(|(name, _)| name == "origin")
        .map(|(_, value)| value.trim())
        .collect();
    let origin = match origins.as_slice() {
        [] => return Ok(()),
        [one] => one.trim_end_matches('/'),
        _ => return Err("more than one Origin header".into()),
    };
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(format!("origin {origin:?} is not allowed"))
    }
}

/// `Subscribe`: a session observes at most `max_subscriptions_per_session`
/// channels and queues (re-subscribing to one it has is always fine).
pub fn check_subscriptions(
    config: &AdmissionConfig,
    session: &crate::delivery::session::SessionHandle,
    name: &str,
) -> Result<(), crate::error::ActionError> {
    let max = config.max_subscriptions_per_session;
    if session.subscription_count() >= max && !session.is_subscribed(name) {
        return Err(crate::error::ActionError::RateLimited(format!(
            "this session already observes {max} channels and queues (admission.max_subscriptions_per_session); unsubscribe first"
        )));
    }
    Ok(())
}

/// Checks the configured allowlist: each entry an origin as browsers send
/// it, `scheme://host[:port]`, with no path. An empty list allows no browser
/// at all (only clients that send no `Origin`).
pub fn validate_origins(origins: &[String]) -> Result<(), String> {
    for origin in origins {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let host = rest.map(|r| r.trim_end_matches('/')).unwrap_or_default();
        if host.is_empty() || host.contains(['/', '?', '#', '*', ' ']) {
            return Err(format!(
                "{origin:?} is not an origin: write it as https://host or https://host:port"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origins: &[&str]) -> Request {
        Request {
            method: "GET".into(),
            path: "/ws".into(),
            query: None,
            headers: origins
                .iter()
                .map(|o| ("origin".to_owned(), o.to_string()))
                .collect(),
        }
    }

    #[test]
    fn origins() {
        let list = vec!["https://shop.example".to_owned()];
        let allowed = Some(list.as_slice());
        assert!(origin_allowed(allowed, &request(&["https://shop.example"])).is_ok());
        assert!(origin_allowed(allowed, &request(&["HTTPS://Shop.Example/"])).is_ok());
        assert!(origin_allowed(allowed, &request(&[])).is_ok(), "no Origin");
        assert!(origin_allowed(allowed, &request(&["https://evil.example"])).is_err());
        assert!(origin_allowed(allowed, &request(&["null"])).is_err());
        assert!(origin_allowed(allowed, &request(&["https://shop.example.evil"])).is_err());
        assert!(origin_allowed(
            allowed,
            &request(&["https://shop.example", "https://evil.example"])
        )
        .is_err());
        assert!(origin_allowed(None, &request(&["https://evil.example"])).is_ok());
        assert!(validate_origins(&list).is_ok());
        for bad in ["*", "shop.example", "https://shop.example/path", "https://"] {
            assert!(validate_origins(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_total_and_per_ip_and_give_slots_back() {
        let a = Admission::new(AdmissionConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..AdmissionConfig::default()
        });
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::PerIp(2)));
        let _t3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).err(), Some(Refusal::Full(3)));
        drop(t1);
        assert_eq!(a.open(), 2);
        let _t4 = a.admit(x).unwrap();
    }
}
