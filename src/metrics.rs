//! Broker-wide counters, served as text at `GET /metrics`.
//!
//! Plain relaxed atomics: each is an independent tally, read only for
//! reporting, so no ordering between them is needed.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    sessions_open: AtomicU64,
    sessions_opened: AtomicU64,
    messages: AtomicU64,
    deliveries: AtomicU64,
    slow_consumer_closes: AtomicU64,
    typing_dropped: AtomicU64,
    frames_too_large: AtomicU64,
    bad_requests: AtomicU64,
    upgrades_refused: AtomicU64,
    connections_refused: AtomicU64,
    rate_limited: AtomicU64,
    store_failures: AtomicU64,
    store_commits: AtomicU64,
    store_commit_micros: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    pub sessions_open: u64,
    pub sessions_opened: u64,
    pub messages: u64,
    pub deliveries: u64,
    pub slow_consumer_closes: u64,
    pub typing_dropped: u64,
    pub frames_too_large: u64,
    pub bad_requests: u64,
    pub upgrades_refused: u64,
    pub connections_refused: u64,
    pub rate_limited: u64,
    pub store_failures: u64,
}

impl Metrics {
    pub fn session_opened(&self) {
        self.sessions_open.fetch_add(1, Relaxed);
        self.sessions_opened.fetch_add(1, Relaxed);
    }
    pub fn session_closed(&self) {
        self.sessions_open.fetch_sub(1, Relaxed);
    }
    pub fn message_added(&self, recipients: usize) {
        self.messages.fetch_add(1, Relaxed);
        self.deliveries.fetch_add(recipients as u64, Relaxed);
    }
    pub fn slow_consumer_closed(&self) {
        self.slow_consumer_closes.fetch_add(1, Relaxed);
    }
    pub fn typing_dropped(&self) {
        self.typing_dropped.fetch_add(1, Relaxed);
    }
    pub fn frame_too_large(&self) {
        self.frames_too_large.fetch_add(1, Relaxed);
    }
    pub fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Relaxed);
    }
    pub fn upgrade_refused(&self) {
        self.upgrades_refused.fetch_add(1, Relaxed);
    }
    /// Turned away by admission control (connection limits).
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }
    /// A store write that failed (its jobs answered `unavailable`).
    pub fn store_failed(&self) {
        self.store_failures.fetch_add(1, Relaxed);
    }
    /// One group commit, and how long it took.
    pub fn store_commit(&self, took: std::time::Duration) {
        self.store_commits.fetch_add(1, Relaxed);
        self.store_commit_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }
    /// A command refused with `rate_limited`.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            sessions_open: self.sessions_open.load(Relaxed),
            sessions_opened: self.sessions_opened.load(Relaxed),
            messages: self.messages.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Relaxed),
            typing_dropped: self.typing_dropped.load(Relaxed),
            frames_too_large: self.frames_too_large.load(Relaxed),
            bad_requests: self.bad_requests.load(Relaxed),
            upgrades_refused: self.upgrades_refused.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            store_failures: self.store_failures.load(Relaxed),
        }
    }
}

impl MetricsSnapshot {
    /// Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let rows: [(&str, &str, u64); 12] = [
            ("sessions_open", "gauge", self.sessions_open),
            ("sessions_opened_total", "counter", self.sessions_opened),
            ("messages_total", "counter", self.messages),
            ("deliveries_total", "counter", self.deliveries),
            (
                "slow_consumer_closes_total",
                "counter",
                self.slow_consumer_closes,
            ),
            ("typing_dropped_total", "counter", self.typing_dropped),
            ("frames_too_large_total", "counter", self.frames_too_large),
            ("bad_requests_total", "counter", self.bad_requests),
            ("upgrades_refused_total", "counter", self.upgrades_refused),
            (
                "connections_refused_total",
                "counter",
                self.connections_refused,
            ),
            ("rate_limited_total", "counter", self.rate_limited),
            ("store_failures_total", "counter", self.store_failures),
        ];
        let mut out = String::new();
        for (name, kind, value) in rows {
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
            let _ = writeln!(out, "switchboard_{name} {value}");
        }
        out
    }
}
