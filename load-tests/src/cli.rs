//! Command line.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proto::{Encoding, ServerKind};

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-load",
    version,
    about = "Load-test harness for the Switchboard broker (protocol v1, loopback only).",
    long_about = "Load-test harness for the Switchboard broker. Speaks protocol v1 (JSON or \
MessagePack) as web-chat widgets, agent consoles and bots do; with --target uws it runs the \
same scenarios against the uWebSockets.js comparison peer (load-tests/peers/uws). Every \
scenario is bounded in count and in time (--duration) and only ever connects to a loopback \
address."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server WebSocket URL; only loopback hosts (127.0.0.0/8, localhost, ::1) are accepted.
    /// Repeat it (or give a comma-separated list) for several nodes: connections are spread
    /// over them round-robin, and a chat's customer and agent land on different ones.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: Vec<String>,
    /// Which server speaks at --url: the broker, or the uWebSockets.js comparison peer
    /// (JSON only; fanout, chat and idle).
    #[arg(long, global = true, value_enum, default_value_t = ServerKind::Switchboard)]
    pub target: ServerKind,
    /// Wire encoding (WebSocket subprotocol switchboard.v1.json or switchboard.v1.msgpack).
    #[arg(long, global = true, value_enum, default_value_t = Encoding::Json)]
    pub encoding: Encoding,
    /// Hard cap on the whole run, in seconds (setup included).
    #[arg(long, global = true, default_value_t = 60)]
    pub duration: u64,
    /// PID of the server, for its CPU seconds per delivery (user and kernel) and RSS per
    /// connection (/proc). Repeat it (or give a comma-separated list) for several server
    /// processes: figures are summed, and each process is reported too.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Print the report as JSON on stdout (the progress bar stays on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Also write the JSON report to this file (the human table still goes to stdout).
    #[arg(long, global = true, value_name = "FILE")]
    pub json_out: Option<std::path::PathBuf>,
    /// HS256 secret for minting agent/service tokens.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Exit with status 3 when a budget check fails (or errors, gaps or missing deliveries occur).
    #[arg(long, global = true)]
    pub strict: bool,
    /// Client WebSocket read/write buffer size per connection, bytes.
    #[arg(long, global = true, default_value_t = 8192)]
    pub ws_buffer: usize,
    /// Connections per source address before spreading to 127.0.0.2, 127.0.0.3, ...
    /// (the kernel's ephemeral-port search slows down sharply as one address's
    /// ~28k ports fill up, so keep this well below that).
    #[arg(long, global = true, default_value_t = 5000)]
    pub per_source_ip: usize,
    /// Timeout for each connect and each request/reply during setup, seconds.
    #[arg(long, global = true, default_value_t = 10)]
    pub op_timeout: u64,
    /// Seconds to wait, after the last send, for outstanding replies and deliveries.
    #[arg(long, global = true, default_value_t = 5)]
    pub drain: u64,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// One channel, N observers, one publisher.
    Fanout(FanoutArgs),
    /// C engagements, a customer and an agent in each, messages and typing both ways.
    Chat(ChatArgs),
    /// N connected sessions held for T seconds; broker RSS per connection.
    Idle(IdleArgs),
    /// Connect, start an engagement, chat, restart, disconnect, at a rate.
    Churn(ChurnArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObserveMode {
    /// Agents `Subscribe` to the channel (observers, not members).
    Subscribe,
    /// Agents `JoinChannel` (members; each join is pushed to all earlier ones).
    Join,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Observer sessions (agents).
    #[arg(long, default_value_t = 1000)]
    pub observers: usize,
    /// Messages the publisher sends.
    #[arg(long, default_value_t = 5000)]
    pub messages: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 200)]
    pub body_bytes: usize,
    /// Max unacknowledged SendMessage in flight.
    #[arg(long, default_value_t = 32)]
    pub window: u64,
    /// Messages per second (default: as fast as the window allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How observers attach to the channel.
    #[arg(long, value_enum, default_value_t = ObserveMode::Subscribe)]
    pub observe: ObserveMode,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Engagements (each: one anonymous customer and one agent).
    #[arg(long, default_value_t = 500)]
    pub engagements: usize,
    /// Total SendMessage per second across all sessions (each is delivered to 2 sessions).
    #[arg(long, default_value_t = 20000.0)]
    pub rate: f64,
    /// SendTyping commands per SendMessage (0..1), sent just before the message.
    #[arg(long, default_value_t = 0.1)]
    pub typing_share: f64,
    /// Seconds of traffic after setup.
    #[arg(long, default_value_t = 10)]
    pub run: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Max unacknowledged commands per session; a send due when it is full is skipped and counted.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Engagements being set up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleRole {
    /// Anonymous customers (widgets), no token.
    Customer,
    /// Agents with minted tokens.
    Agent,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 10000)]
    pub connections: usize,
    /// Seconds to hold them once all are connected.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Who connects.
    #[arg(long, value_enum, default_value_t = IdleRole::Customer)]
    pub role: IdleRole,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds to wait after the last Connect reply before reading the RSS.
    #[arg(long, default_value_t = 1)]
    pub settle: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Engagement cycles started per second (0: as fast as --concurrency allows).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Engagement cycles in all.
    #[arg(long, default_value_t = 25000)]
    pub total: u64,
    /// Cycles in progress at once (a cycle due when all are busy starts late).
    #[arg(long, default_value_t = 2000)]
    pub concurrency: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 50)]
    pub body_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("switchboard-load").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn defaults() {
        let c = parse(&["idle"]);
        assert_eq!(c.common.url, ["ws://127.0.0.1:8080/ws"]);
        assert_eq!(c.common.target, ServerKind::Switchboard);
        assert!(c.common.server_pid.is_empty());
    }

    #[test]
    fn several_urls_and_pids_repeated_or_comma_separated() {
        let c = parse(&[
            "--url",
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws",
            "--server-pid",
            "10",
            "--url",
            "ws://127.0.0.1:3/ws",
            "--server-pid",
            "11,12",
            "chat",
        ]);
        assert_eq!(
            c.common.url,
            [
                "ws://127.0.0.1:1/ws",
                "ws://127.0.0.1:2/ws",
                "ws://127.0.0.1:3/ws"
            ]
        );
        assert_eq!(c.common.server_pid, [10, 11, 12]);
        assert!(matches!(c.cmd, Cmd::Chat(_)));
        // After the subcommand works too (all of them on one side of it).
        let c = parse(&[
            "chat",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--url",
            "ws://127.0.0.1:2/ws",
        ]);
        assert_eq!(c.common.url.len(), 2);
    }

    #[test]
    fn target_kind() {
        let c = parse(&["--target", "uws", "fanout", "--observers", "3"]);
        assert_eq!(c.common.target, ServerKind::Uws);
        let Cmd::Fanout(f) = c.cmd else { panic!() };
        assert_eq!(f.observers, 3);
        let c = parse(&["idle", "--target", "switchboard"]);
        assert_eq!(c.common.target, ServerKind::Switchboard);
        assert!(Cli::try_parse_from(["switchboard-load", "--target", "nginx", "idle"]).is_err());
        assert!(Cli::try_parse_from(["switchboard-load", "--server-pid", "x", "idle"]).is_err());
    }
}
