//! Switchboard: a realtime chat-channel broker for web-chat widgets, agent
//! consoles and bots, speaking protocol v1 over WebSocket.
//!
//! How the modules fit together, following a connection inwards:
//!
//! - [`server`]: the TCP listener; accepts, hands each connection to the
//!   HTTP layer, and runs graceful shutdown (stop accepting, close every
//!   session with 4000, wait for them to drain).
//! - [`http`]: reads the request head; upgrades `/ws` (picking the encoding
//!   from the subprotocol) or answers plain routes (demo pages, health,
//!   metrics, demo tokens).
//! - [`connection`]: one session: a reader loop that decodes and runs
//!   commands in order (holding a reply until its write is durable while it
//!   reads on), and a writer task that drains the session's [`outbox`] with
//!   one flush per batch.
//! - [`codec`]: JSON and MessagePack frames; a push is encoded once per
//!   encoding and its bytes shared by every recipient.
//! - [`outbox`]: the bounded per-session queue; overflow closes the session
//!   with 4008, typing pushes may be dropped under pressure.
//! - [`actions`]: the Actions Framework: `before` listeners, replaceable
//!   implementations, `after` listeners, custom actions; one file per
//!   built-in action.
//! - [`broker`]: shared state: identities (and their tabs), channels, queues
//!   and sessions in sharded concurrent maps, each object behind its own
//!   small lock.
//! - [`store`]: durable storage (SQLite, group commit on a writer thread);
//!   a channel's pushes wait for their writes to be durable.
//! - [`auth`]: JWTs, anonymous customers, resume tokens; [`ids`]: the
//!   server-made ids (time-ordered, for the store's sake).
//! - [`business_hours`], [`config`], [`metrics`], [`error`] (the one mapping
//!   from Rust errors to the contract's error codes).
//! - Hardening against hostile clients (docs/security.md): [`admission`]
//!   (connection counts, the `Origin` allowlist), [`rate_limit`] (per-session
//!   token buckets), [`validate`] (MessagePack length/nesting guard, payload
//!   checks), [`tls`] (optional wss).
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

pub use actions::{ActionContext, ActionRegistry, CustomAction, Roles};
pub use broker::Broker;
pub use config::Config;
pub use error::ActionError;
pub use server::Server;
