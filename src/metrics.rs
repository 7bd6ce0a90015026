//! Broker-wide metrics, served at `GET /metrics` in the Prometheus text
//! format (0.0.4) by `prometheus-client`.
//!
//! Each broker has its own registry (several brokers share a process in
//! tests and embeddings). The hot paths hold plain handles: a counter is one
//! relaxed atomic add, deliveries are counted once per message (an add of
//! the recipient count, never once per recipient), and a command's counter
//! and latency histogram are looked up by a `match` on the built-in action
//! names, so recording allocates nothing.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ActionError;

/// Latency buckets in seconds: a chat broker answers most commands in tens
/// to hundreds of microseconds, a durable write takes milliseconds, and
/// anything past a second is an outage.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Commands that get a label of their own; anything else (custom actions,
/// names that do not exist, frames that did not decode) is counted as
/// `other`, so a client cannot grow the label set.
const ACTIONS: [&str; 18] = [
    "Connect",
    "GetActions",
    "TriggerAction",
    "StartEngagement",
    "RestartEngagement",
    "ToggleChatVisibility",
    "MinimizeChat",
    "SendMessage",
    "SetInputText",
    "SendTyping",
    "JoinChannel",
    "LeaveChannel",
    "EndEngagement",
    "Subscribe",
    "Unsubscribe",
    "GetEngagements",
    "GetMessages",
    "RefreshToken",
];
const OTHER: &str = "other";

/// A command's `action` label, resolved without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandKey(u8);

impl CommandKey {
    /// The label for the action a client named (`None`: the frame did not
    /// decode).
    pub fn of(action: Option<&str>) -> CommandKey {
        let index = action
            .and_then(|a| ACTIONS.iter().position(|&known| known == a))
            .unwrap_or(ACTIONS.len());
        CommandKey(index as u8)
    }

    fn label(self) -> &'static str {
        ACTIONS.get(self.0 as usize).copied().unwrap_or(OTHER)
    }
}

/// A command in flight: its label and when it arrived, carried to where
/// its reply is produced (for a pipelined command, once its change is
/// durable).
#[derive(Debug, Clone, Copy)]
pub struct CommandTimer {
    key: CommandKey,
    arrived: Instant,
}

impl CommandTimer {
    /// Starts timing the command a client named (`None`: the frame did not
    /// decode).
    pub fn start(action: Option<&str>) -> CommandTimer {
        CommandTimer {
            key: CommandKey::of(action),
            arrived: Instant::now(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    action: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabel {
    url: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The handles one command label needs, resolved when the broker starts.
struct CommandHandles {
    ok: Counter,
    latency: Histogram,
}

pub struct Metrics {
    registry: Registry,
    sessions_open: Gauge,
    sessions_opened: Counter,
    messages: Counter,
    deliveries: Counter,
    slow_consumer_closes: Counter,
    typing_dropped: Counter,
    frames_too_large: Counter,
    bad_requests: Counter,
    upgrades_refused: Counter,
    connections_refused: Counter,
    rate_limited: Counter,
    store_failures: Counter,
    commands: Family<CommandLabels, Counter>,
    /// One per entry of `ACTIONS`, then `other`.
    command_handles: Box<[CommandHandles]>,
    store_commit: Histogram,
    webhook_deliveries: Family<UrlLabel, Counter>,
    webhook_failures: Family<UrlLabel, Counter>,
    webhook_events_lost: Family<UrlLabel, Counter>,
    engine_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// A copy of the plain counters at one instant.
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let sessions_open = Gauge::default();
        registry.register(
            "sessions_open",
            "WebSocket sessions open now",
            sessions_open.clone(),
        );
        // Counters are registered without `_total`: the encoder adds it.
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let sessions_opened = counter("sessions_opened", "WebSocket sessions opened");
        let messages = counter("messages", "Messages accepted into a channel");
        let deliveries = counter(
            "deliveries",
            "messageAdded pushes queued to sessions (recipients of each message)",
        );
        let slow_consumer_closes = counter(
            "slow_consumer_closes",
            "Sessions closed with 4008 because their outbound queue overflowed",
        );
        let typing_dropped = counter(
            "typing_dropped",
            "Typing pushes dropped under outbound pressure",
        );
        let frames_too_large = counter(
            "frames_too_large",
            "Sessions closed with 4009 for a frame over limits.max_frame_bytes",
        );
        let bad_requests = counter(
            "bad_requests",
            "Frames that did not decode as a command (answered bad_request)",
        );
        let upgrades_refused = counter(
            "upgrades_refused",
            "HTTP requests refused before a session: bad /ws upgrades, bad or late request heads, failed TLS handshakes",
        );
        let connections_refused = counter(
            "connections_refused",
            "Connections turned away at accept by admission control",
        );
        let rate_limited = counter("rate_limited", "Commands answered rate_limited");
        let store_failures = counter(
            "store_failures",
            "Store writes that failed (their commands answered unavailable)",
        );
        let engine_errors = counter(
            "engine_errors",
            "Errors talking to the shared engine (Redis) when clustered",
        );

        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands answered, by action and result code (ok or the error code)",
            commands.clone(),
        );
        let command_latency: HistogramFamily<ActionLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "command_duration_seconds",
            "Time from a command's arrival to its reply being produced, by action",
            command_latency.clone(),
        );
        let command_handles = ACTIONS
            .iter()
            .chain(std::iter::once(&OTHER))
            .map(|&action| CommandHandles {
                ok: commands
                    .get_or_create(&CommandLabels { action, code: "ok" })
                    .clone(),
                latency: command_latency
                    .get_or_create(&ActionLabel { action })
                    .clone(),
            })
            .collect();
        let store_commit = latency_histogram();
        registry.register(
            "store_commit_duration_seconds",
            "Time to apply and commit one batch of writes to the durable store",
            store_commit.clone(),
        );
        let webhook_deliveries = Family::<UrlLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook requests answered 2xx, by URL",
            webhook_deliveries.clone(),
        );
        let webhook_failures = Family::<UrlLabel, Counter>::default();
        registry.register(
            "webhook_failures",
            "Webhook requests that failed (non-2xx, timeout, connection error), by URL",
            webhook_failures.clone(),
        );
        let webhook_events_lost = Family::<UrlLabel, Counter>::default();
        registry.register(
            "webhook_events_lost",
            "Post-event webhook events dropped at the stored events' bound before the URL accepted them, by URL",
            webhook_events_lost.clone(),
        );
        Metrics {
            registry,
            sessions_open,
            sessions_opened,
            messages,
            deliveries,
            slow_consumer_closes,
            typing_dropped,
            frames_too_large,
            bad_requests,
            upgrades_refused,
            connections_refused,
            rate_limited,
            store_failures,
            commands,
            command_handles,
            store_commit,
            webhook_deliveries,
            webhook_failures,
            webhook_events_lost,
            engine_errors,
        }
    }

    pub fn session_opened(&self) {
        self.sessions_open.inc();
        self.sessions_opened.inc();
    }
    pub fn session_closed(&self) {
        self.sessions_open.dec();
    }
    /// One message accepted into a channel (counted once, where it was
    /// accepted: on a cluster, by the node that ran its `SendMessage`).
    pub fn message_accepted(&self) {
        self.messages.inc();
    }
    /// A message pushed to `recipients` sessions of this node.
    pub fn delivered(&self, recipients: usize) {
        self.deliveries.inc_by(recipients as u64);
    }
    pub fn slow_consumer_closed(&self) {
        self.slow_consumer_closes.inc();
    }
    pub fn typing_dropped(&self) {
        self.typing_dropped.inc();
    }
    pub fn frame_too_large(&self) {
        self.frames_too_large.inc();
    }
    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }
    pub fn upgrade_refused(&self) {
        self.upgrades_refused.inc();
    }
    /// Turned away by admission control (connection limits).
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }
    /// A command refused with `rate_limited`.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// A command answered (its reply produced): the label and arrival
    /// time taken when it arrived, and the error when it failed.
    pub fn command(&self, timer: CommandTimer, error: Option<&ActionError>) {
        let took = timer.arrived.elapsed();
        let handles = &self.command_handles[timer.key.0 as usize];
        handles.latency.observe(took.as_secs_f64());
        match error {
            None => handles.ok.inc(),
            // Errors are rarer: a lookup in the family (no allocation:
            // both labels are static).
            Some(error) => self
                .commands
                .get_or_create(&CommandLabels {
                    action: timer.key.label(),
                    code: error.code(),
                })
                .inc(),
        };
    }

    /// A store write that failed (its jobs answered `unavailable`).
    pub fn store_failed(&self) {
        self.store_failures.inc();
    }

    /// One batch of writes applied and committed by the store's writer.
    pub fn store_commit(&self, took: Duration) {
        self.store_commit.observe(took.as_secs_f64());
    }

    /// A webhook request to `url` that was accepted (2xx).
    pub fn webhook_delivered(&self, url: &str) {
        self.webhook_deliveries
            .get_or_create(&UrlLabel { url: url.into() })
            .inc();
    }

    /// A webhook request to `url` that failed and will be retried.
    pub fn webhook_failed(&self, url: &str) {
        self.webhook_failures
            .get_or_create(&UrlLabel { url: url.into() })
            .inc();
    }

    /// `n` events that `url` will never get: dropped at the stored events'
    /// bound (`[cluster] webhook_events_max`) before it accepted them.
    pub fn webhook_events_lost(&self, url: &str, n: u64) {
        self.webhook_events_lost
            .get_or_create(&UrlLabel { url: url.into() })
            .inc_by(n);
    }

    /// An error from the shared engine (Redis).
    pub fn engine_error(&self) {
        self.engine_errors.inc();
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            sessions_open: self.sessions_open.get().max(0) as u64,
            sessions_opened: self.sessions_opened.get(),
            messages: self.messages.get(),
            deliveries: self.deliveries.get(),
            slow_consumer_closes: self.slow_consumer_closes.get(),
            typing_dropped: self.typing_dropped.get(),
            frames_too_large: self.frames_too_large.get(),
            bad_requests: self.bad_requests.get(),
            upgrades_refused: self.upgrades_refused.get(),
            connections_refused: self.connections_refused.get(),
            rate_limited: self.rate_limited.get(),
            store_failures: self.store_failures.get(),
        }
    }

    /// Every family in the Prometheus text format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in action has a label of its own.
    #[test]
    fn every_builtin_action_is_labelled() {
        let registry = crate::ActionRegistry::new();
        for role in [
            crate::auth::Role::Customer,
            crate::auth::Role::Agent,
            crate::auth::Role::Service,
        ] {
            for name in registry.allowed_names(role) {
                assert_ne!(CommandKey::of(Some(name)).label(), OTHER, "{name}");
            }
        }
        assert_eq!(CommandKey::of(Some("made-up")).label(), OTHER);
        assert_eq!(CommandKey::of(None).label(), OTHER);
    }

    #[test]
    fn families_have_help_and_type_and_commands_are_labelled() {
        let m = Metrics::new();
        m.session_opened();
        m.message_accepted();
        m.delivered(3);
        m.command(CommandTimer::start(Some("SendMessage")), None);
        m.command(
            CommandTimer::start(Some("no-such-action")),
            Some(&ActionError::UnknownAction("x".into())),
        );
        m.store_commit(Duration::from_millis(2));
        m.webhook_failed("https://crm.example/hook");
        let text = m.render();
        assert!(
            text.contains("# TYPE switchboard_deliveries_total counter"),
            "{text}"
        );
        assert!(text.contains("switchboard_deliveries_total 3"), "{text}");
        assert!(text.contains("switchboard_commands_total{action=\"SendMessage\",code=\"ok\"} 1"));
        assert!(
            text.contains("switchboard_commands_total{action=\"other\",code=\"unknown_action\"} 1")
        );
        assert!(
            text.contains(
                "switchboard_command_duration_seconds_bucket{le=\"10\",action=\"SendMessage\"} 1"
            ) || text.contains(
                "switchboard_command_duration_seconds_bucket{action=\"SendMessage\",le=\"10\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("# HELP switchboard_webhook_failures_total"));
        assert!(
            text.contains("switchboard_webhook_failures_total{url=\"https://crm.example/hook\"} 1")
        );
        assert_eq!(m.snapshot().deliveries, 3);
        assert_eq!(m.snapshot().sessions_open, 1);
    }
}
