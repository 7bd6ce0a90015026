//! Switchboard: a realtime chat-channel broker for web-chat widgets, agent
//! consoles and bots, speaking protocol v1 over WebSocket.
//!
//! How the modules fit together, following a `SendMessage` inwards and its
//! `messageAdded` back out:
//!
//! - `server`: the TCP listener; accepts, hands each connection to the
//!   HTTP layer, runs periodic housekeeping and graceful shutdown.
//! - `http`: HTTP/1.1 on hyper; upgrades `/ws` (picking the encoding from
//!   the subprotocol) and hands the raw socket back, or answers plain
//!   routes (pages, health, readiness, metrics, demo tokens).
//! - `connection`: one session, one task: it reads frames (`ws` cuts
//!   them out of the socket's bytes), runs commands in order (a pipelined
//!   command's reply waits, in command order, for its change to be durable
//!   while the session reads on: parked in the [`outbox`], which the
//!   store's commit writes it from), and writes out whatever its outbox
//!   queued, many frames per `writev`.
//! - [`codec`]: JSON and MessagePack, encoded straight into complete
//!   WebSocket frames; a push is encoded once per encoding and its bytes
//!   shared by every recipient, and written directly to a recipient's
//!   socket when nothing is queued before it ([`outbox`]).
//! - [`actions`]: the Actions Framework: `before` listeners, replaceable
//!   implementations, `after` listeners, custom actions; `BUILTINS` lists
//!   the built-in actions, one file each (e.g. `actions/send_message.rs`),
//!   with their typed payloads (`actions/payload.rs` checks sizes).
//! - `engine`: the seam: every state change is one engine operation that
//!   checks, changes and emits its events atomically, and answers once the
//!   change is durable. `engine/embedded` keeps the state in this process
//!   and writes through the [`store`]; `engine/redis` (`[cluster]`) is
//!   several nodes on one Redis, one Lua script per operation.
//! - [`store`]: durable storage (the segment log, `store/log.rs`, by
//!   default, or SQLite, under a `Backend` trait; group commit on a writer
//!   thread, the acknowledged-writes check at start); settles each job in
//!   ticket order and fails fast when it cannot write. A message as stored
//!   and pushed is a `StoredMessage`, its attributes JSON text.
//! - `delivery`: this node's sessions and who receives which topic
//!   (channel, identity, queue); hands each topic's `event`s to them in
//!   the engine's order, and keeps what was delivered (members, recent
//!   messages, queues' open engagements).
//! - `node`: one process's shared parts (config, auth, engine, delivery);
//!   `broker`: a node plus its actions, what embedding code builds.
//! - [`auth`]: JWTs, anonymous customers, resume tokens; `ids`: the
//!   server-made ids (time-ordered, for the store's sake).
//! - `business_hours`, [`config`], [`metrics`], [`error`] (the one mapping
//!   from Rust errors to the contract's error codes).
//! - Hardening against hostile clients (docs/security.md): [`admission`]
//!   (connection counts, the `Origin` allowlist), `rate_limit` (per-session
//!   token buckets), [`validate`] (MessagePack length/nesting guard), `tls`
//!   (optional wss).
//!
//! Embedding: build an [`actions::ActionRegistry`], add listeners, replaced
//! implementations or custom actions to it, then
//! `Broker::new(config, actions)`, `Server::bind` and `Server::run`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use serde_json::json;
//! use switchboard::{ActionError, ActionRegistry, Broker, Config, CustomAction, Roles, Server};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut actions = ActionRegistry::new();
//!     actions.before("SendMessage", |_ctx, payload| async move {
//!         if payload["body"].as_str().is_some_and(|b| b.contains("password")) {
//!             return Err(ActionError::Rejected("never send passwords in chat".into()));
//!         }
//!         Ok(payload)
//!     })?;
//!     actions.after("StartEngagement", |_ctx, payload, result| async move {
//!         tracing::info!(%payload, %result, "engagement started");
//!     })?;
//!     actions.register(
//!         CustomAction::new("escalate").description("Escalate to tier 2").roles(Roles::STAFF),
//!         |ctx, payload| async move {
//!             ctx.invoke("SendMessage", json!({"channelSid": payload["channelSid"], "body": "Escalated."}))
//!                 .await?;
//!             Ok(json!({"escalated": true}))
//!         },
//!     )?;
//!     let broker = Arc::new(Broker::new(Config::default(), actions)?);
//!     let server = Server::bind(broker, "127.0.0.1:8080".parse()?).await?;
//!     server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//!     Ok(())
//! }
//! ```

#![warn(unreachable_pub)]
pub mod actions;
pub mod admission;
pub mod auth;
mod broker;
mod business_hours;
#[doc(hidden)]
pub mod codec;
pub mod config;
mod connection;
mod delivery;
mod engine;
pub mod error;
mod event;
mod http;
mod ids;
pub mod metrics;
mod node;
#[doc(hidden)]
pub mod outbox;
mod rate_limit;
mod server;
#[doc(hidden)]
pub mod store;
mod tls;
#[doc(hidden)]
pub mod validate;
mod webhooks;
mod ws;

pub use actions::{ActionContext, ActionRegistry, CustomAction, Roles};
pub use broker::Broker;
pub use config::Config;
pub use error::ActionError;
pub use server::Server;
