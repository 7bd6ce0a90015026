//! Broker configuration: a TOML file, environment variables and command-line
//! flags, in that order of precedence (the flag wins).
//!
//! Every key has a default, so an empty file (or none) is a working broker on
//! `127.0.0.1:8080` with anonymous customers. Unknown keys are refused: a typo
//! in a limit should stop the broker, not silently leave the default in force.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub use crate::store::Durability;

/// Default listen address, as written in the wire contract.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `commit_delay_ms` by default: at moderate rates a commit gathers 3 ms of
/// writes (docs/architecture.md, "The pace").
pub const DEFAULT_COMMIT_DELAY_MS: u64 = 3;
/// At most: an acknowledgement may wait this long for its commit to start.
const MAX_COMMIT_DELAY_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid listen address {0:?}: expected HOST:PORT such as 127.0.0.1:8080")]
    Listen(String),
    #[error("invalid [business_hours]: {0}")]
    BusinessHours(String),
    #[error("invalid [actions]: {0}")]
    Actions(String),
    #[error("invalid [limits]: {0}")]
    Limits(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The shared engine cannot be reached at start.
    #[error("{0}")]
    Cluster(String),
    /// The hardening sections (`[rate_limits]`, `[admission]`, `[jwt]`,
    /// `[tls]`, `[validation]`, `allowed_origins`).
    #[error("invalid {section}: {message}")]
    Invalid {
        section: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`SWITCHBOARD_LISTEN`, `--listen`).
    pub listen: String,
    /// HS256 secret for client JWTs (`SWITCHBOARD_JWT_SECRET`). Without one,
    /// only anonymous customers (and demo tokens) can connect.
    pub jwt_secret: Option<String>,
    /// Customers may connect with no token and get a fresh identity.
    pub anonymous_customers: bool,
    /// Serve `GET /demo/token` (mints short-lived agent/service tokens for the
    /// demo console). Unset: on only when no JWT secret and no public key is
    /// configured (see [`Config::demo_tokens_enabled`]). Only ever honoured
    /// on a loopback listen address, to requests that name a loopback host
    /// and carry no forwarding header (docs/security.md).
    pub demo_tokens: Option<bool>,
    /// `fsync` (default), `os` or `memory`: see `Durability`.
    pub durability: Durability,
    /// With `fsync`: how long a commit may wait for more writes, from the
    /// start of the one before (0-100; 0: no wait). Longer is less CPU per
    /// message at moderate rates for that much more latency.
    pub commit_delay_ms: u64,
    /// Where the store lives (`--data-dir`); unused with `memory`.
    pub data_dir: PathBuf,
    pub history: History,
    pub limits: Limits,
    pub typing: Typing,
    pub identities: Identities,
    pub business_hours: Option<BusinessHoursConfig>,
    pub actions: ActionsConfig,
    // ---- hardening against hostile clients (see docs/security.md) ----
    /// Browser origins allowed to open a WebSocket (`Origin` header). Absent:
    /// any. Requests with no `Origin` (non-browser clients) are allowed.
    pub allowed_origins: Option<Vec<String>>,
    pub rate_limits: crate::rate_limit::RateLimits,
    pub admission: crate::admission::AdmissionConfig,
    pub jwt: crate::auth::JwtConfig,
    pub tls: Option<crate::tls::TlsConfig>,
    pub validation: crate::validate::ValidationConfig,
    /// Several nodes sharing one Redis (`[cluster]`); absent: the embedded
    /// engine.
    pub cluster: Cluster,
    // ---- backends in the loop (docs/integrations.md) ----
    /// The server HTTP API under `/api/v1/`.
    pub api: ApiConfig,
    /// Pre- and post-event webhooks.
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// Start even though the store lost acknowledged writes
    /// (`--accept-data-loss`; never from the file: it is a one-off
    /// decision about one damaged store).
    #[serde(skip)]
    pub accept_data_loss: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_string(),
            jwt_secret: None,
            anonymous_customers: true,
            demo_tokens: None,
            durability: Durability::default(),
            commit_delay_ms: DEFAULT_COMMIT_DELAY_MS,
            data_dir: PathBuf::from("data"),
            history: History::default(),
            limits: Limits::default(),
            typing: Typing::default(),
            identities: Identities::default(),
            business_hours: None,
            actions: ActionsConfig::default(),
            allowed_origins: None,
            rate_limits: Default::default(),
            admission: Default::default(),
            jwt: Default::default(),
            tls: None,
            validation: Default::default(),
            cluster: Cluster::default(),
            api: ApiConfig::default(),
            webhooks: Default::default(),
            accept_data_loss: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket frame (and message) a client may send; over it the
    /// session is closed with 4009 before the payload is buffered.
    pub max_frame_bytes: usize,
    /// Largest message body (and draft) in bytes; over it = `too_large`.
    pub max_body_bytes: usize,
    /// Time a new session has to send `Connect` (then close 4001).
    pub connect_timeout_ms: u64,
    /// Time a client has to finish the HTTP upgrade request.
    pub handshake_timeout_ms: u64,
    /// The server pings every session this often.
    pub ping_interval_ms: u64,
    /// A session from which nothing at all arrives (not even a pong) for this
    /// long is closed: it is a half-open socket or a stalled peer.
    pub idle_timeout_ms: u64,
    /// Frames a session's outbound queue holds before the session is closed
    /// with 4008 (slow consumer).
    pub outbox_frames: usize,
    /// Bytes a session's outbound queue holds before it is closed with 4008.
    pub outbox_bytes: usize,
    /// Typing pushes queued per session; past this (or when the queue is half
    /// full) typing pushes are dropped instead of queued.
    pub outbox_typing_frames: usize,
    /// Read buffer of a TLS session (a plain session reads into one
    /// buffer per worker thread and holds none of its own).
    pub read_buffer_bytes: usize,
    /// No longer used: frames are written from their shared encoded
    /// buffers, with no per-connection write buffer. Accepted so that
    /// existing configuration files still load.
    pub write_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            connect_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            outbox_frames: 1024,
            outbox_bytes: 8 * 1024 * 1024,
            outbox_typing_frames: 64,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 16 * 1024,
        }
    }
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The largest frame the broker sends: 16 × `max_frame_bytes` (1 MiB
    /// with the defaults). Everything the broker builds stays below it by
    /// construction: a push carries at most a body and attributes of
    /// `max_body_bytes` each (JSON escapes can make them six times longer),
    /// and lists in replies are cut at `codec::PAGE_BYTES`.
    pub fn outbound_frame_bytes(&self) -> usize {
        (16 * self.max_frame_bytes).max(1 << 20)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("outbox_frames", self.outbox_frames as u64),
            ("outbox_bytes", self.outbox_bytes as u64),
            ("read_buffer_bytes", self.read_buffer_bytes as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Limits(format!(
                "{name} must be greater than 0"
            )));
        }
        if self.max_body_bytes > self.max_frame_bytes {
            return Err(ConfigError::Limits(
                "max_body_bytes must not exceed max_frame_bytes".into(),
            ));
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(ConfigError::Limits(
                "idle_timeout_ms must be longer than ping_interval_ms, or live clients time out"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    /// Messages kept per channel; older ones are purged.
    pub max_messages: u64,
    /// Messages older than this are purged.
    pub max_age_secs: u64,
    /// Newest messages per channel held in memory, so that recovery after a
    /// reconnect rarely reads the disk. With `durability = "memory"` this
    /// window is the whole history.
    pub memory_messages: usize,
    /// Ended engagements (no member left) and their transcripts are purged
    /// this long after they ended.
    pub ended_retention_secs: u64,
    /// How often retention runs.
    pub purge_interval_secs: u64,
    /// Most messages pushed to one session by a recovery (`recover`,
    /// `after`); a larger gap (or one over `[limits] outbox_bytes`) answers
    /// `recovered: false` and the client pages with `GetMessages`.
    pub max_replay: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            max_messages: 10_000,
            max_age_secs: 30 * 24 * 3600,
            memory_messages: 256,
            ended_retention_secs: 7 * 24 * 3600,
            purge_interval_secs: 60,
            max_replay: 5000,
        }
    }
}

impl History {
    /// Messages a channel holds in memory: never more than retention keeps,
    /// so that the window (which answers recovery and the newest
    /// `GetMessages` pages) is always part of what the store still has.
    pub fn window(&self) -> usize {
        self.memory_messages.min(self.max_messages as usize)
    }
}

/// `[cluster]`: several nodes acting as one broker on a shared Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://host:port/db` (`SWITCHBOARD_REDIS_URL`, `--redis-url`).
    /// Unset: one node with the embedded engine.
    pub redis_url: Option<String>,
    /// Prefix of every key and pub/sub channel, so that several brokers
    /// can share one Redis.
    pub key_prefix: String,
    /// A command that needs Redis fails with `unavailable` after this long
    /// (the contract allows 2 s).
    pub command_timeout_ms: u64,
    /// Time to open a connection to Redis.
    pub connect_timeout_ms: u64,
    /// How often a node says it is alive; what it holds for its sessions
    /// (session counts, observers) expires 3 heartbeats after it stops.
    pub heartbeat_ms: u64,
    /// Events kept per topic for nodes to fill pub/sub gaps from.
    pub event_log_len: u64,
    /// Most post-event webhook events kept in Redis for URLs that have not
    /// accepted them yet; beyond it the oldest are dropped (and logged).
    pub webhook_events_max: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis_url: None,
            key_prefix: "switchboard".into(),
            command_timeout_ms: 1500,
            connect_timeout_ms: 1000,
            heartbeat_ms: 1000,
            event_log_len: 10_000,
            webhook_events_max: 1_000_000,
        }
    }
}

impl Cluster {
    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!("redis_url {url:?} must start with redis://"));
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err("key_prefix must be non-empty, without spaces".into());
        }
        if self.command_timeout_ms == 0 || self.command_timeout_ms > 2000 {
            return Err("command_timeout_ms must be between 1 and 2000".into());
        }
        if self.webhook_events_max < 1000 {
            return Err("webhook_events_max must be at least 1000".into());
        }
        if self.connect_timeout_ms == 0 || self.heartbeat_ms == 0 || self.event_log_len < 100 {
            return Err(
                "connect_timeout_ms and heartbeat_ms must be greater than 0, event_log_len at least 100"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Typing {
    /// Repeated `SendTyping` inside this window are not re-sent; `typingEnded`
    /// follows the window's end with no new `SendTyping`.
    pub window_ms: u64,
}

impl Default for Typing {
    fn default() -> Self {
        Typing { window_ms: 5000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identities {
    /// An identity with no session and no channel membership is forgotten
    /// after this long (its resume token then yields a fresh identity).
    pub idle_ttl_secs: u64,
    /// Lifetime of the `resumeToken` given to anonymous customers.
    pub resume_ttl_secs: u64,
    /// How long a `/demo/token` token lives.
    pub demo_token_ttl_secs: u64,
    /// Anonymous identities held at once; a new anonymous customer past it
    /// gets `rate_limited` until the reaper forgets idle ones.
    pub max_anonymous: usize,
}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            idle_ttl_secs: 24 * 3600,
            resume_ttl_secs: 30 * 24 * 3600,
            demo_token_ttl_secs: 12 * 3600,
            max_anonymous: 200_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHoursConfig {
    /// IANA time zone name, e.g. `Europe/London`.
    pub timezone: String,
    /// Opening windows; outside all of them `StartEngagement` is refused.
    pub open: Vec<OpenWindow>,
    /// Whole days closed (`YYYY-MM-DD`, in the configured time zone).
    #[serde(default)]
    pub closed_dates: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenWindow {
    /// `mon-fri`, `sat`, `mon,wed,fri`, `fri-mon` …
    pub days: String,
    /// `HH:MM`, local time.
    pub from: String,
    /// `HH:MM`, local time; `24:00` is the end of the day; earlier than
    /// `from` means the window runs past midnight.
    pub to: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    pub custom: Vec<CustomActionConfig>,
    pub before: Vec<BeforeListenerConfig>,
    pub after: Vec<AfterListenerConfig>,
}

/// `[api]`: the server HTTP API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// API keys a backend presents (`Authorization: Bearer <key>` or
    /// `X-API-Key`). None: the API is off and every `/api/` path is 404.
    pub keys: Vec<String>,
}

impl ApiConfig {
    fn validate(&self) -> Result<(), String> {
        if self.keys.iter().any(|k| k.len() < 16) {
            return Err("every key in [api] keys must be at least 16 characters long".into());
        }
        Ok(())
    }
}

/// A widget's "API action": a reference name for a preset action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomActionConfig {
    pub name: String,
    pub action: String,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A `before` listener from configuration: fills payload defaults, or rejects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeforeListenerConfig {
    pub on: String,
    /// Keys merged into the payload where the client left them out.
    #[serde(default)]
    pub defaults: Option<Value>,
    /// When set, the action is rejected with `rejected` and this message.
    #[serde(default)]
    pub reject: Option<String>,
}

/// An `after` listener from configuration: invokes another action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterListenerConfig {
    pub on: String,
    pub invoke: String,
    /// Service identity to run the invoked action as (default: the caller).
    #[serde(default, rename = "as")]
    pub as_identity: Option<String>,
    #[serde(default)]
    pub payload: Option<Value>,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text and checks it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<inline>".into(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: limits, addresses, business hours, actions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.limits.validate()?;
        if self.history.max_messages == 0 || self.history.purge_interval_secs == 0 {
            return Err(ConfigError::Limits(
                "[history] max_messages and purge_interval_secs must be greater than 0".into(),
            ));
        }
        if self.commit_delay_ms > MAX_COMMIT_DELAY_MS {
            return Err(ConfigError::Invalid {
                section: "commit_delay_ms",
                message: format!(
                    "{} ms is more than {MAX_COMMIT_DELAY_MS} ms (every acknowledgement could wait that long)",
                    self.commit_delay_ms
                ),
            });
        }
        if let Some(hours) = &self.business_hours {
            crate::business_hours::BusinessHours::from_config(hours)?;
        }
        self.validate_hardening()
    }

    /// The hardening sections; keys that need files (TLS, a JWT public key)
    /// are read when the broker and server are built.
    fn validate_hardening(&self) -> Result<(), ConfigError> {
        let invalid = |section| move |message| ConfigError::Invalid { section, message };
        self.rate_limits
            .validate()
            .map_err(invalid("[rate_limits]"))?;
        self.admission.validate().map_err(invalid("[admission]"))?;
        self.validation
            .validate()
            .map_err(invalid("[validation]"))?;
        if let Some(tls) = &self.tls {
            tls.validate().map_err(invalid("[tls]"))?;
        }
        self.cluster.validate().map_err(invalid("[cluster]"))?;
        if let Some(origins) = &self.allowed_origins {
            crate::admission::validate_origins(origins).map_err(invalid("allowed_origins"))?;
        }
        self.api.validate().map_err(invalid("[api]"))?;
        self.webhooks
            .validate(self.durability, self.cluster.redis_url.is_some())
            .map_err(invalid("[webhooks]"))?;
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError::Listen(self.listen.clone()))
    }

    /// Whether `/demo/token` is on: as configured, else only while the
    /// broker has no real key (no `jwt_secret`, no `[jwt]` public key), so
    /// a production broker never mints staff tokens unless told to.
    pub fn demo_tokens_enabled(&self) -> bool {
        self.demo_tokens.unwrap_or(
            self.jwt_secret.is_none()
                && self.jwt.public_key_file.is_none()
                && self.jwt.public_key.is_none(),
        )
    }

    /// See [`Config::commit_delay_ms`].
    pub fn commit_delay(&self) -> Duration {
        Duration::from_millis(self.commit_delay_ms)
    }

    pub fn typing_window(&self) -> Duration {
        Duration::from_millis(self.typing.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
anonymous_customers = true

[limits]
max_frame_bytes = 65536
max_body_bytes = 16384

[typing]
window_ms = 5000

[business_hours]
timezone = "Europe/London"
open = [ { days = "mon-fri", from = "09:00", to = "17:00" } ]

[[actions.custom]]
name = "contact-sales"
action = "StartEngagement"
payload = { formData = { department = "sales" } }
description = "Start a chat with sales"

[[actions.after]]
on = "StartEngagement"
invoke = "SendMessage"
as = "greeter"
payload = { body = "Thanks for reaching out! An agent will be with you shortly." }
"#;
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.actions.custom[0].name, "contact-sales");
        assert_eq!(
            config.actions.after[0].as_identity.as_deref(),
            Some("greeter")
        );
        assert_eq!(config.limits.max_body_bytes, 16384);
        assert_eq!(config.business_hours.unwrap().open.len(), 1);
    }

    #[test]
    fn the_readme_and_security_examples_parse() {
        for doc in [
            include_str!("../README.md"),
            include_str!("../docs/security.md"),
            include_str!("../docs/operations.md"),
        ] {
            let block = doc
                .split("```toml\n")
                .nth(1)
                .and_then(|rest| rest.split("```").next())
                .expect("a toml example");
            Config::from_toml(block).unwrap_or_else(|e| panic!("{e}"));
        }
        let bad = Config::from_toml("[rate_limits]\ncommands_per_sec = 0.0\n").unwrap_err();
        assert!(bad.to_string().contains("commands_per_sec"), "{bad}");
        let bad = Config::from_toml("allowed_origins = [\"*\"]\n").unwrap_err();
        assert!(bad.to_string().contains("allowed_origins"), "{bad}");
        assert!(Config::from_toml("[jwt]\nnope = 1\n").is_err());
    }

    #[test]
    fn the_integration_examples_parse() {
        let doc = include_str!("../docs/integrations.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .collect();
        assert_eq!(blocks.len(), 3);
        for block in blocks {
            Config::from_toml(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        }
        let short = Config::from_toml("[api]\nkeys = [\"short\"]\n").unwrap_err();
        assert!(short.to_string().contains("[api]"), "{short}");
        let memory = Config::from_toml(
            "durability = \"memory\"\n[[webhooks.post]]\nurl = \"http://x.example/\"\nsecret = \"s\"\n",
        )
        .unwrap_err();
        assert!(memory.to_string().contains("memory"), "{memory}");
        let event = Config::from_toml(
            "[[webhooks.post]]\nurl = \"http://x.example/\"\nsecret = \"s\"\nevents = [\"typingStarted\"]\n",
        )
        .unwrap_err();
        assert!(event.to_string().contains("typingStarted"), "{event}");
    }

    #[test]
    fn typos_are_refused() {
        let err = Config::from_toml("[limits]\nmax_frame_byte = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert!(config.anonymous_customers);
        assert_eq!(config.limits.max_frame_bytes, 65536);
    }

    #[test]
    fn the_commit_delay_is_bounded() {
        assert_eq!(Config::from_toml("").unwrap().commit_delay_ms, 3);
        assert_eq!(
            Config::from_toml("commit_delay_ms = 0\n")
                .unwrap()
                .commit_delay(),
            Duration::ZERO
        );
        let long = Config::from_toml("commit_delay_ms = 101\n").unwrap_err();
        assert!(long.to_string().contains("commit_delay_ms"), "{long}");
    }

    #[test]
    fn nonsense_limits_are_refused() {
        assert!(Config::from_toml("[limits]\nmax_body_bytes = 0\n").is_err());
        assert!(
            Config::from_toml("[limits]\nidle_timeout_ms = 10\nping_interval_ms = 20\n").is_err()
        );
    }
}
