//! The run report: a human table and `--json` for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::{CpuTimes, Sample};
use crate::proto::{Encoding, ServerKind};
use crate::stats::{OrderCounts, Stats};

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a nanosecond histogram, in microseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |v: u64| v as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Connections {
    pub ok: u64,
    pub failed: u64,
    /// Of `ok`, how many went to each `--url` (in the order given).
    pub ok_per_url: Vec<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub acked: u64,
    pub typing_sent: u64,
    pub skipped_sends: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Deliveries {
    pub received: u64,
    pub tagged: u64,
    pub expected: Option<u64>,
    pub missing: Option<u64>,
    pub per_s: f64,
    /// Mean size of a delivered `messageAdded` frame (WebSocket payload), so
    /// that runs against different servers can be seen to move the same bytes.
    pub mean_frame_bytes: Option<f64>,
}

/// CPU and memory of the server processes over the measured phase: all of
/// them together here, each one in `processes`.
#[derive(Debug, Default, Serialize)]
pub struct Server {
    pub pids: Vec<u32>,
    /// utime + stime.
    pub cpu_s: Option<f64>,
    pub cpu_user_s: Option<f64>,
    pub cpu_system_s: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub cpu_user_us_per_delivery: Option<f64>,
    pub cpu_system_us_per_delivery: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
    pub processes: Vec<ServerProcess>,
}

/// One `--server-pid` over the measured phase.
#[derive(Debug, Default, Serialize)]
pub struct ServerProcess {
    pub pid: u32,
    pub cpu_s: Option<f64>,
    pub cpu_user_s: Option<f64>,
    pub cpu_system_s: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl Server {
    fn build(start: &Sample, end: &Sample, deliveries: u64) -> Option<Server> {
        if start.servers.is_empty() {
            return None;
        }
        let diff = |a: Option<CpuTimes>, b: Option<CpuTimes>| match (a, b) {
            (Some(a), Some(b)) => Some(b.since(a)),
            _ => None,
        };
        let cpu = diff(start.server_cpu(), end.server_cpu());
        let per = |secs: f64| secs * 1e6 / deliveries as f64;
        let per_delivery = cpu.filter(|_| deliveries > 0);
        let processes = start
            .servers
            .iter()
            .zip(&end.servers)
            .map(|(a, b)| {
                let c = diff(a.cpu, b.cpu);
                ServerProcess {
                    pid: a.pid,
                    cpu_s: c.map(CpuTimes::total),
                    cpu_user_s: c.map(|c| c.user),
                    cpu_system_s: c.map(|c| c.system),
                    rss_before_kib: a.rss_kib,
                    rss_after_kib: b.rss_kib,
                }
            })
            .collect();
        Some(Server {
            pids: start.servers.iter().map(|s| s.pid).collect(),
            cpu_s: cpu.map(CpuTimes::total),
            cpu_user_s: cpu.map(|c| c.user),
            cpu_system_s: cpu.map(|c| c.system),
            cpu_us_per_delivery: per_delivery.map(|c| per(c.total())),
            cpu_user_us_per_delivery: per_delivery.map(|c| per(c.user)),
            cpu_system_us_per_delivery: per_delivery.map(|c| per(c.system)),
            rss_before_kib: start.server_rss_kib(),
            rss_after_kib: end.server_rss_kib(),
            rss_per_connection_bytes: None,
            processes,
        })
    }

    /// For scenarios whose unit is not a delivery.
    pub fn clear_per_delivery(&mut self) {
        self.cpu_us_per_delivery = None;
        self.cpu_user_us_per_delivery = None;
        self.cpu_system_us_per_delivery = None;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Harness {
    pub cpu_s: f64,
    /// Harness CPU over the measured phase, % of one core: near 100 means
    /// the harness, not the broker, may be the bottleneck.
    pub cpu_percent: f64,
    /// CPU seconds used during the measured phase by everything else on the
    /// machine (all cores busy time − broker − harness; needs --server-pid).
    /// Well above zero means other work competed with the run.
    pub other_cpu_s: Option<f64>,
    /// Interrupt and softirq time of the whole machine during the measured
    /// phase (loopback packet processing lands here, charged to no process).
    pub irq_cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub limit: String,
    pub value: f64,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// Which server was measured.
    pub target: ServerKind,
    pub urls: Vec<String>,
    pub encoding: Encoding,
    pub params: BTreeMap<&'static str, serde_json::Value>,
    pub completed: bool,
    pub stop_reason: String,
    pub elapsed_s: f64,
    pub measured_s: f64,
    pub connections: Connections,
    pub messages: Messages,
    pub deliveries: Deliveries,
    pub typing_received: u64,
    pub latency_us: Option<Latency>,
    pub timings_us: BTreeMap<&'static str, Latency>,
    pub order: OrderCounts,
    pub encoding_mismatches: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub pushes: BTreeMap<String, u64>,
    pub server: Option<Server>,
    pub harness: Harness,
    pub metrics: BTreeMap<&'static str, f64>,
    pub checks: Vec<Check>,
}

impl Report {
    /// Fill the common parts from the counters and the samples taken at the
    /// start and end of the measured phase.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        scenario: &'static str,
        target: ServerKind,
        urls: &[String],
        encoding: Encoding,
        stats: &Stats,
        start: &Sample,
        end: &Sample,
        elapsed_s: f64,
    ) -> Report {
        let measured_s = end.at.duration_since(start.at).as_secs_f64();
        let per_s = if measured_s > 0.0 {
            stats.deliveries as f64 / measured_s
        } else {
            0.0
        };
        let server = Server::build(start, end, stats.deliveries);
        let self_cpu = end.self_cpu - start.self_cpu;
        let other_cpu_s = match (
            start.machine_busy,
            end.machine_busy,
            start.server_cpu(),
            end.server_cpu(),
        ) {
            (Some(m0), Some(m1), Some(s0), Some(s1)) => Some(
                (((m1.0 - m0.0) - s1.since(s0).total() - self_cpu).max(0.0) * 100.0).round()
                    / 100.0,
            ),
            _ => None,
        };
        let irq_cpu_s = match (start.machine_busy, end.machine_busy) {
            (Some(m0), Some(m1)) => Some(((m1.1 - m0.1) * 100.0).round() / 100.0),
            _ => None,
        };
        Report {
            scenario,
            target,
            urls: urls.to_vec(),
            encoding,
            params: BTreeMap::new(),
            completed: true,
            stop_reason: "done".into(),
            elapsed_s,
            measured_s,
            connections: Connections {
                ok: stats.conn_ok,
                failed: stats.conn_failed,
                ok_per_url: (0..urls.len())
                    .map(|i| stats.conn_ok_by_target.get(i).copied().unwrap_or(0))
                    .collect(),
            },
            messages: Messages {
                sent: stats.sent,
                acked: stats.acked,
                typing_sent: stats.typing_sent,
                skipped_sends: stats.skipped_sends,
            },
            deliveries: Deliveries {
                received: stats.deliveries,
                tagged: stats.tagged_deliveries,
                expected: None,
                missing: None,
                per_s,
                mean_frame_bytes: (stats.deliveries > 0)
                    .then(|| (stats.delivered_bytes as f64 / stats.deliveries as f64).round()),
            },
            typing_received: stats.typing_received,
            latency_us: Latency::from_ns(&stats.latency),
            timings_us: stats
                .timings
                .iter()
                .filter_map(|(k, h)| Latency::from_ns(h).map(|l| (*k, l)))
                .collect(),
            order: stats.order,
            encoding_mismatches: stats.encoding_mismatch,
            errors_total: stats.errors_total(),
            errors: stats.errors.clone(),
            pushes: stats.other_pushes.clone(),
            server,
            harness: Harness {
                cpu_s: self_cpu,
                cpu_percent: if measured_s > 0.0 {
                    100.0 * self_cpu / measured_s
                } else {
                    0.0
                },
                other_cpu_s,
                irq_cpu_s,
            },
            metrics: BTreeMap::new(),
            checks: Vec::new(),
        }
    }

    pub fn param(&mut self, k: &'static str, v: impl Serialize) {
        self.params.insert(
            k,
            serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        );
    }

    pub fn expect_deliveries(&mut self, expected: u64) {
        self.deliveries.expected = Some(expected);
        self.deliveries.missing = Some(expected.saturating_sub(self.deliveries.tagged));
    }

    /// `value <= limit` check.
    pub fn check_max(&mut self, name: &str, value: Option<f64>, limit: f64, unit: &str) {
        if let Some(v) = value {
            self.checks.push(Check {
                name: name.to_string(),
                limit: format!("<= {} {unit}", trim_num(limit)),
                value: v,
                pass: v <= limit,
            });
        }
    }

    /// `value >= limit` check.
    pub fn check_min(&mut self, name: &str, value: Option<f64>, limit: f64, unit: &str) {
        if let Some(v) = value {
            self.checks.push(Check {
                name: name.to_string(),
                limit: format!(">= {} {unit}", trim_num(limit)),
                value: v,
                pass: v >= limit,
            });
        }
    }

    /// Errors, order violations and missing deliveries must all be zero.
    pub fn check_clean(&mut self) {
        self.check_max("errors", Some(self.errors_total as f64), 0.0, "");
        self.check_max(
            "order violations",
            Some(self.order.violations() as f64),
            0.0,
            "",
        );
        if let Some(m) = self.deliveries.missing {
            self.check_max("missing deliveries", Some(m as f64), 0.0, "");
        }
    }

    pub fn all_pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

fn trim_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `12345678.9` -> `12,345,679`.
pub fn group(v: f64) -> String {
    let n = v.round() as i128;
    let neg = n < 0;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

/// Microseconds, shown in the unit that reads best.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn lat_line(l: &Latency) -> String {
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  (n={})",
        fmt_us(l.p50),
        fmt_us(l.p99),
        fmt_us(l.p999),
        fmt_us(l.max),
        group(l.count as f64)
    )
}

/// The human table.
pub fn format_human(r: &Report) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row(
        "scenario",
        format!(
            "{} against {} ({}, {})",
            r.scenario,
            r.target,
            r.encoding,
            r.urls.join(" ")
        ),
    );
    let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !params.is_empty() {
        row("parameters", params.join(" "));
    }
    row(
        "status",
        if r.completed {
            "completed".to_string()
        } else {
            format!("stopped early: {}", r.stop_reason)
        },
    );
    row(
        "time",
        format!("{:.2} s total, {:.2} s measured", r.elapsed_s, r.measured_s),
    );
    let mut conns = format!(
        "{} ok, {} failed",
        group(r.connections.ok as f64),
        group(r.connections.failed as f64)
    );
    if r.urls.len() > 1 {
        let per: Vec<String> = r
            .connections
            .ok_per_url
            .iter()
            .map(|n| group(*n as f64))
            .collect();
        let _ = write!(conns, " ({} per URL)", per.join(" / "));
    }
    row("connections", conns);
    if r.messages.sent > 0 || r.messages.typing_sent > 0 {
        let mut s = format!(
            "{} sent, {} acknowledged",
            group(r.messages.sent as f64),
            group(r.messages.acked as f64)
        );
        if r.messages.typing_sent > 0 {
            let _ = write!(s, ", {} typing", group(r.messages.typing_sent as f64));
        }
        if r.messages.skipped_sends > 0 {
            let _ = write!(
                s,
                ", {} skipped (window full)",
                group(r.messages.skipped_sends as f64)
            );
        }
        row("messages", s);
    }
    if r.deliveries.received > 0 || r.deliveries.expected.is_some() {
        let mut s = group(r.deliveries.received as f64);
        if let (Some(e), Some(m)) = (r.deliveries.expected, r.deliveries.missing) {
            let _ = write!(
                s,
                " of {} expected, {} missing",
                group(e as f64),
                group(m as f64)
            );
        }
        row("deliveries", s);
        row("deliveries/s", group(r.deliveries.per_s));
        if let Some(b) = r.deliveries.mean_frame_bytes {
            row("delivered frame", format!("{} bytes (mean)", group(b)));
        }
    }
    if r.typing_received > 0 {
        row("typing pushes", group(r.typing_received as f64));
    }
    match &r.latency_us {
        Some(l) => row("latency (e2e)", lat_line(l)),
        None => {
            if r.deliveries.received > 0 {
                row(
                    "latency (e2e)",
                    "none timed (only own echoes, which are not timed)".into(),
                )
            }
        }
    }
    for (k, l) in &r.timings_us {
        row(k, lat_line(l));
    }
    row(
        "order violations",
        format!(
            "{} gaps ({} indices missing), {} duplicates",
            r.order.gaps, r.order.missing_indices, r.order.duplicates
        ),
    );
    if !r.pushes.is_empty() {
        let p: Vec<String> = r
            .pushes
            .iter()
            .map(|(k, v)| format!("{k} {}", group(*v as f64)))
            .collect();
        row("other pushes", p.join(", "));
    }
    if r.encoding_mismatches > 0 {
        row(
            "encoding",
            format!("{} frames of the wrong frame type", r.encoding_mismatches),
        );
    }
    row("errors", group(r.errors_total as f64));
    for (k, v) in &r.errors {
        row("  error", format!("{} × {k}", group(*v as f64)));
    }
    if let Some(s) = &r.server {
        let pids: Vec<String> = s.pids.iter().map(|p| p.to_string()).collect();
        if let (Some(c), Some(u), Some(k)) = (s.cpu_s, s.cpu_user_s, s.cpu_system_s) {
            row(
                "server CPU",
                format!(
                    "{c:.2} s: user {u:.2} + kernel {k:.2} (pid {})",
                    pids.join(" + ")
                ),
            );
        }
        if let (Some(c), Some(u), Some(k)) = (
            s.cpu_us_per_delivery,
            s.cpu_user_us_per_delivery,
            s.cpu_system_us_per_delivery,
        ) {
            row(
                "server CPU/delivery",
                format!("{c:.3} µs: user {u:.3} + kernel {k:.3}"),
            );
        }
        if let (Some(a), Some(b)) = (s.rss_before_kib, s.rss_after_kib) {
            row(
                "server RSS",
                format!("{} KiB -> {} KiB", group(a as f64), group(b as f64)),
            );
        }
        if let Some(b) = s.rss_per_connection_bytes {
            row(
                "server RSS/conn",
                format!("{} bytes ({:.2} KiB)", group(b), b / 1024.0),
            );
        }
        if s.processes.len() > 1 {
            for p in &s.processes {
                let mut v = format!("pid {}:", p.pid);
                if let (Some(u), Some(k)) = (p.cpu_user_s, p.cpu_system_s) {
                    let _ = write!(v, " CPU {:.2} s (user {u:.2} + kernel {k:.2})", u + k);
                }
                if let (Some(a), Some(b)) = (p.rss_before_kib, p.rss_after_kib) {
                    let _ = write!(v, ", RSS {} -> {} KiB", group(a as f64), group(b as f64));
                }
                row("  process", v);
            }
        }
    }
    for (k, v) in &r.metrics {
        row(
            k,
            if v.fract() == 0.0 {
                group(*v)
            } else {
                format!("{v:.2}")
            },
        );
    }
    row(
        "harness CPU",
        format!(
            "{:.2} s ({:.0}% of a core)",
            r.harness.cpu_s, r.harness.cpu_percent
        ),
    );
    if let Some(o) = r.harness.other_cpu_s {
        row(
            "other CPU",
            format!("{o:.2} s used by other processes during the measured phase"),
        );
    }
    if let Some(i) = r.harness.irq_cpu_s {
        row(
            "irq/softirq CPU",
            format!("{i:.2} s (all cores; not charged to any process)"),
        );
    }
    for c in &r.checks {
        row(
            "check",
            format!(
                "{} {}: {} (limit {})",
                if c.pass { "PASS" } else { "FAIL" },
                c.name,
                if c.value.fract() == 0.0 {
                    group(c.value)
                } else {
                    format!("{:.3}", c.value)
                },
                c.limit
            ),
        );
    }
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<w$}  {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::{ProcSample, Sample};
    use std::time::{Duration, Instant};

    fn sample(at: Instant, cpu: f64) -> Sample {
        Sample {
            servers: vec![ProcSample {
                pid: 42,
                cpu: Some(CpuTimes {
                    user: cpu * 0.25,
                    system: cpu * 0.75,
                }),
                rss_kib: Some(1000),
            }],
            self_cpu: 0.5,
            machine_busy: Some((cpu + 1.0, 0.1)),
            at,
        }
    }

    #[test]
    fn grouping_and_units() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(1234567.6), "1,234,568");
        assert_eq!(group(-1234.0), "-1,234");
        assert_eq!(fmt_us(12.34), "12.3 µs");
        assert_eq!(fmt_us(1500.0), "1.50 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }

    #[test]
    fn latency_percentiles() {
        let mut h = crate::stats::new_hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1..1000 µs
        }
        let l = Latency::from_ns(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 500.0).abs() < 1.0, "{}", l.p50);
        assert!((l.p99 - 990.0).abs() < 1.0, "{}", l.p99);
        assert!((l.p999 - 999.0).abs() < 1.0, "{}", l.p999);
        assert!((l.max - 1000.0).abs() < 1.0, "{}", l.max);
        assert!(Latency::from_ns(&crate::stats::new_hist()).is_none());
    }

    #[test]
    fn report_cpu_per_delivery_and_table() {
        let mut st = Stats::default();
        for _ in 0..2_000_000 {
            st.deliveries += 1;
        }
        st.tagged_deliveries = 1_999_000;
        st.latency.record(250_000).unwrap();
        st.error("closed by server: 4008");
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        st.delivered_bytes = 300 * st.deliveries;
        let mut r = Report::build(
            "fanout",
            ServerKind::Switchboard,
            &["ws://127.0.0.1:8080/ws".to_string()],
            Encoding::Json,
            &st,
            &sample(t0, 10.0),
            &sample(t1, 11.0),
            3.0,
        );
        r.param("observers", 1000);
        r.expect_deliveries(2_000_000);
        assert_eq!(r.deliveries.missing, Some(1000));
        assert!((r.deliveries.per_s - 1_000_000.0).abs() < 1.0);
        let srv = r.server.as_ref().unwrap();
        let c = srv.cpu_us_per_delivery.unwrap();
        assert!((c - 0.5).abs() < 1e-9, "{c}");
        assert!((srv.cpu_user_us_per_delivery.unwrap() - 0.125).abs() < 1e-9);
        assert!((srv.cpu_system_us_per_delivery.unwrap() - 0.375).abs() < 1e-9);
        assert_eq!(srv.pids, [42]);
        assert_eq!(r.deliveries.mean_frame_bytes, Some(300.0));
        r.check_max("broker CPU per delivery", Some(c), 0.7, "µs");
        r.check_clean();
        assert!(!r.all_pass()); // one error and 1000 missing
        let t = format_human(&r);
        assert!(t.contains("deliveries/s"), "{t}");
        assert!(t.contains("1,000,000"), "{t}");
        assert!(t.contains("0.500 µs: user 0.125 + kernel 0.375"), "{t}");
        assert!(t.contains("against switchboard"), "{t}");
        assert!(!t.contains("  process"), "one process, no breakdown: {t}");
        assert!(t.contains("p50 250.1 µs"), "{t}");
        assert!(t.contains("1 × closed by server: 4008"), "{t}");
        assert!(t.contains("PASS broker CPU per delivery"), "{t}");
        assert!(t.contains("FAIL missing deliveries"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["deliveries"]["missing"], 1000);
        assert_eq!(j["params"]["observers"], 1000);
        assert_eq!(j["encoding"], "json");
        assert_eq!(j["target"], "switchboard");
        assert_eq!(j["server"]["processes"][0]["pid"], 42);
        assert!((j["latency_us"]["p50"].as_f64().unwrap() - 250.0).abs() < 0.5);
    }

    #[test]
    fn several_server_processes_are_summed_and_listed() {
        let st = Stats {
            deliveries: 1_000_000,
            ..Default::default()
        };
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let two = |at, a: f64, b: f64| {
            let mut s = sample(at, a);
            let mut other = s.servers[0];
            other.pid = 43;
            other.cpu = Some(CpuTimes {
                user: b,
                system: 0.0,
            });
            other.rss_kib = Some(2000);
            s.servers.push(other);
            s
        };
        let mut r = Report::build(
            "chat",
            ServerKind::Uws,
            &["ws://127.0.0.1:1/ws".into(), "ws://127.0.0.1:2/ws".into()],
            Encoding::Json,
            &st,
            &two(t0, 4.0, 1.0),
            &two(t1, 6.0, 1.5),
            2.0,
        );
        assert_eq!(r.connections.ok_per_url, [0, 0]);
        let srv = r.server.as_ref().unwrap();
        assert_eq!(srv.pids, [42, 43]);
        // 2 s on the first (0.5 user, 1.5 kernel), 0.5 s user on the second.
        assert!((srv.cpu_s.unwrap() - 2.5).abs() < 1e-9);
        assert!((srv.cpu_user_s.unwrap() - 1.0).abs() < 1e-9);
        assert!((srv.cpu_us_per_delivery.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(srv.rss_before_kib, Some(3000));
        assert!((srv.processes[1].cpu_s.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(srv.processes[0].cpu_s, Some(2.0));
        let t = format_human(&r);
        assert!(t.contains("pid 42 + 43"), "{t}");
        assert!(
            t.contains("pid 43: CPU 0.50 s (user 0.50 + kernel 0.00)"),
            "{t}"
        );
        assert!(t.contains("against uws"), "{t}");
        r.server.as_mut().unwrap().clear_per_delivery();
        assert!(r
            .server
            .as_ref()
            .unwrap()
            .cpu_user_us_per_delivery
            .is_none());
    }
}
