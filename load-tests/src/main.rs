//! `switchboard-load`: the load-test harness of the Switchboard broker.
//!
//! One binary, one scenario per subcommand (`fanout`, `chat`, `idle`,
//! `churn`), against the broker or (`--target uws`) the uWebSockets.js
//! comparison peer. Runs on a single-threaded tokio runtime (pin it to one
//! core with `taskset`); every session is a local task.

mod cli;
mod conn;
mod jwt;
mod procfs;
mod proto;
mod report;
mod scenarios;
mod stats;
mod target;

use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::cli::{Cli, Cmd, Common};
use crate::conn::{Login, SessionCfg};
use crate::proto::{Encoding, ServerKind};
use crate::report::Report;
use crate::stats::Shared;
use crate::target::{Spread, Target};

/// What every scenario gets.
pub struct Ctx {
    pub common: Common,
    pub cfg: SessionCfg,
    pub stats: Shared,
    pub started: Instant,
    pub deadline: tokio::time::Instant,
    cancel: watch::Receiver<bool>,
    pub progress: ProgressBar,
    /// Distinguishes identities of this run from earlier runs.
    pub run_id: String,
}

impl Ctx {
    /// Resolves when the hard time cap passes or on Ctrl-C.
    pub async fn cutoff(&self) {
        let mut rx = self.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline) => {}
            _ = rx.wait_for(|c| *c) => {}
        }
    }

    /// Why the run must stop now, if it must.
    pub fn stop_reason(&self) -> Option<String> {
        if *self.cancel.borrow() {
            Some("interrupted".into())
        } else if tokio::time::Instant::now() >= self.deadline {
            Some(format!("--duration {} s reached", self.common.duration))
        } else {
            None
        }
    }

    /// A scenario's report, common part: measured from `start` to `end`,
    /// marked incomplete when the run was cut short.
    pub fn report(
        &self,
        scenario: &'static str,
        stats: &crate::stats::Stats,
        start: &crate::procfs::Sample,
        end: &crate::procfs::Sample,
        stop_reason: Option<String>,
    ) -> Report {
        let mut report = Report::build(
            scenario,
            self.cfg.kind,
            &self.common.url,
            self.cfg.enc,
            stats,
            start,
            end,
            0.0,
        );
        if let Some(why) = stop_reason {
            report.completed = false;
            report.stop_reason = why;
        }
        report
    }

    /// A deadline `secs` from now, but never past the hard cap.
    pub fn within(&self, d: Duration) -> tokio::time::Instant {
        (tokio::time::Instant::now() + d).min(self.deadline)
    }

    pub fn secret(&self) -> Result<&str, String> {
        self.common.secret.as_deref().ok_or_else(|| {
            "agent tokens need a secret: pass --secret or set SWITCHBOARD_JWT_SECRET".to_string()
        })
    }

    /// Whether the server is the broker (its budget checks apply).
    pub fn is_broker(&self) -> bool {
        self.cfg.kind == ServerKind::Switchboard
    }

    /// How `conns` connections spread over the `--url`s and source addresses.
    pub fn spread(&self, conns: usize) -> Result<Spread, String> {
        Spread::new(&self.cfg.targets, conns, self.common.per_source_ip)
    }

    /// The login of agent `identity`: a minted HS256 token for the broker,
    /// the bare name for the peer (which has no authentication).
    pub fn agent(&self, identity: &str) -> Result<Login, String> {
        let token = match self.cfg.kind {
            ServerKind::Switchboard => {
                Some(crate::jwt::mint(self.secret()?, identity, "agent", 86_400))
            }
            ServerKind::Uws => None,
        };
        Ok(Login::Agent {
            identity: identity.to_string(),
            token,
        })
    }

    pub fn set_phase(&self, msg: &str, len: u64) {
        self.progress.set_length(len);
        self.progress.set_position(0);
        self.stats.borrow_mut().progress = 0;
        self.progress.set_prefix(msg.to_string());
    }

    /// An empty report for a run that could not go on.
    pub fn failed(&self, scenario: &'static str, why: String) -> Report {
        let s = procfs::sample(&[]);
        let mut r = Report::build(
            scenario,
            self.cfg.kind,
            &self.common.url,
            self.cfg.enc,
            &self.stats.borrow(),
            &s,
            &s,
            self.started.elapsed().as_secs_f64(),
        );
        r.completed = false;
        r.stop_reason = format!("setup failed: {why}");
        r
    }
}

fn raise_fd_limit(want: u64) -> Result<u64, String> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().map_err(|e| e.to_string())?;
    if soft >= want {
        return Ok(soft);
    }
    // Root may raise the hard limit too; otherwise go up to the hard limit.
    if hard < want && Resource::NOFILE.set(want, want).is_ok() {
        return Ok(want);
    }
    let new = want.min(hard);
    Resource::NOFILE.set(new, hard).map_err(|e| e.to_string())?;
    Ok(new)
}

fn connections_needed(cmd: &Cmd) -> u64 {
    match cmd {
        Cmd::Fanout(a) => a.observers as u64 + 1,
        Cmd::Chat(a) => 2 * a.engagements as u64,
        Cmd::Idle(a) => a.connections as u64,
        Cmd::Churn(a) => a.concurrency as u64,
    }
}

fn main() -> ExitCode {
    stats::init_clock();
    let cli = Cli::parse();
    let targets = match target::parse_loopback_urls(&cli.common.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchboard-load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = check_target(&cli) {
        eprintln!("switchboard-load: {e}");
        return ExitCode::from(2);
    }
    let need = connections_needed(&cli.cmd) + 256;
    match raise_fd_limit(need) {
        Ok(n) if n < need => {
            eprintln!(
                "switchboard-load: this run needs about {need} file descriptors but the limit is {n} \
                 (hard limit; raise it with `ulimit -Hn` as root)"
            );
            return ExitCode::from(2);
        }
        Ok(_) => {}
        Err(e) => eprintln!("switchboard-load: warning: cannot raise the fd limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, run(cli.clone_for_run(), targets));
    let common = &cli.common;
    if let Some(path) = &common.json_out {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!("switchboard-load: cannot write {}: {e}", path.display());
        }
    }
    if common.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report::format_human(&report));
    }
    // Sessions still open (if any) are dropped with the process.
    if report.stop_reason.starts_with("setup failed") {
        ExitCode::from(1)
    } else if common.strict && !report.all_pass() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

impl Cli {
    fn clone_for_run(&self) -> (Common, Cmd) {
        (self.common.clone(), self.cmd.clone())
    }
}

/// What the peer cannot do: MessagePack, and `churn` (it has no engagements
/// to restart).
fn check_target(cli: &Cli) -> Result<(), String> {
    if cli.common.target != ServerKind::Uws {
        return Ok(());
    }
    if cli.common.encoding != Encoding::Json {
        return Err("--target uws speaks JSON only: drop --encoding msgpack".into());
    }
    if let Cmd::Churn(_) = cli.cmd {
        return Err(
            "churn restarts engagements, which the uws peer does not have: use fanout, chat or idle"
                .into(),
        );
    }
    Ok(())
}

async fn run((common, cmd): (Common, Cmd), targets: Vec<Target>) -> Report {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::task::spawn_local(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
        }
    });
    let progress = if common.quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb
    };
    let started = Instant::now();
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            & 0xffff_ffff
    );
    let ctx = Rc::new(Ctx {
        cfg: SessionCfg {
            targets,
            kind: common.target,
            enc: common.encoding,
            buf: common.ws_buffer,
            timeout: Duration::from_secs(common.op_timeout.max(1)),
        },
        stats: stats::shared(),
        started,
        deadline: tokio::time::Instant::now() + Duration::from_secs(common.duration),
        cancel: cancel_rx,
        progress,
        run_id,
        common,
    });
    for &pid in &ctx.common.server_pid {
        if let Err(e) = procfs::cpu_seconds(Some(pid)) {
            return ctx.failed(scenario_name(&cmd), format!("--server-pid {pid}: {e}"));
        }
    }
    let ticker = tokio::task::spawn_local(progress_ticker(ctx.clone()));
    let probe = tokio::task::spawn_local(lag_probe(ctx.clone()));
    let mut report = match cmd {
        Cmd::Fanout(a) => scenarios::fanout::run(ctx.clone(), a).await,
        Cmd::Chat(a) => scenarios::chat::run(ctx.clone(), a).await,
        Cmd::Idle(a) => scenarios::idle::run(ctx.clone(), a).await,
        Cmd::Churn(a) => scenarios::churn::run(ctx.clone(), a).await,
    };
    ticker.abort();
    probe.abort();
    if report.connections.ok == 0 && report.connections.failed > 0 && report.completed {
        report.completed = false;
        report.stop_reason = "setup failed: no connection succeeded".into();
    }
    ctx.progress.finish_and_clear();
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

fn scenario_name(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::Fanout(_) => "fanout",
        Cmd::Chat(_) => "chat",
        Cmd::Idle(_) => "idle",
        Cmd::Churn(_) => "churn",
    }
}

/// How late the harness's own event loop runs a 5 ms timer: when this is
/// large, the harness (not the broker) adds to the measured latency.
async fn lag_probe(ctx: Rc<Ctx>) {
    let period = Duration::from_millis(5);
    loop {
        let due = tokio::time::Instant::now() + period;
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        ctx.stats
            .borrow_mut()
            .timing("harness loop lag", late.as_nanos() as u64);
    }
}

async fn progress_ticker(ctx: Rc<Ctx>) {
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let (pos, deliveries, errors, conns) = {
            let s = ctx.stats.borrow();
            (s.progress, s.deliveries, s.errors_total(), s.conn_ok)
        };
        let now = Instant::now();
        let dt = now.duration_since(last.0).as_secs_f64();
        let rate = if dt > 0.0 {
            (deliveries - last.1) as f64 / dt
        } else {
            0.0
        };
        last = (now, deliveries);
        ctx.progress.set_position(pos);
        ctx.progress.set_message(format!(
            "conns {} | deliveries/s {} | errors {}",
            report::group(conns as f64),
            report::group(rate),
            errors
        ));
    }
}
