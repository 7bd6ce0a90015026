//! `switchboard [--config FILE] [--listen ADDR]`

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use switchboard::{ActionRegistry, Broker, Config, Server};
use tracing_subscriber::EnvFilter;

/// See Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A realtime chat-channel broker for web-chat widgets, agent consoles and bots.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks one).
    #[arg(long, value_name = "ADDR", env = "SWITCHBOARD_LISTEN")]
    listen: Option<String>,
    /// Directory of the durable store (default ./data; unused with
    /// `durability = "memory"`).
    #[arg(long, value_name = "DIR", env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Start even though the store has lost writes that were acknowledged
    /// to clients (a damaged journal): without this the broker refuses to
    /// start on such a store. Channels then continue above every index
    /// handed out before.
    #[arg(long)]
    accept_data_loss: bool,
    /// Redis shared by several nodes (`[cluster] redis_url`), e.g.
    /// redis://127.0.0.1:6379/0.
    #[arg(long, value_name = "URL", env = "SWITCHBOARD_REDIS_URL")]
    redis_url: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

fn load_config(cli: &Cli) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Ok(secret) = std::env::var("SWITCHBOARD_JWT_SECRET") {
        if !secret.is_empty() {
            config.jwt_secret = Some(secret);
        }
    }
    if let Some(listen) = &cli.listen {
        config.listen = listen.clone();
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    config.accept_data_loss = cli.accept_data_loss;
    if let Some(url) = cli.redis_url.as_ref().filter(|url| !url.is_empty()) {
        config.cluster.redis_url = Some(url.clone());
    }
    config.validate()?;
    Ok(config)
}

async fn serve(config: Config) -> ExitCode {
    let addr = match config.listen_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    if config.jwt_secret.is_none() {
        tracing::warn!("no JWT secret (SWITCHBOARD_JWT_SECRET): only anonymous customers and demo tokens can connect");
    }
    let durability = config.durability;
    let data_dir = config.data_dir.clone();
    let cluster = config.cluster.redis_url.clone();
    // Opening the store restores its state before anything is accepted; a
    // store that cannot be read stops the broker here, untouched.
    let broker = match Broker::new(config, ActionRegistry::new()) {
        Ok(broker) => Arc::new(broker),
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(broker, addr).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("switchboard: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match durability {
        _ if cluster.is_some() => {
            tracing::info!(redis = %cluster.as_deref().unwrap_or_default(), "cluster engine on Redis")
        }
        switchboard::config::Durability::Memory => {
            tracing::warn!("durability = memory: nothing survives a restart")
        }
        level => tracing::info!(?level, dir = %data_dir.display(), "durable store open"),
    }
    let local = server.local_addr().unwrap_or(addr);
    // One line on stdout, for scripts and tests that start the broker on
    // port 0 and need to know where it is.
    // Written, not `println!`ed: a stdout that cannot be written (a full
    // disk under a redirect, a closed pipe) must not panic the broker.
    let mut stdout = std::io::stdout();
    if let Err(e) =
        writeln!(stdout, "switchboard listening on {local}").and_then(|()| stdout.flush())
    {
        tracing::warn!(error = %e, "cannot write the listening line to stdout");
    }
    tracing::info!(%local, "listening");
    let broker = server.broker().clone();
    server.run(shutdown_signal()).await;
    broker.close();
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
