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
//!   commands in order, and a writer task that drains the session's
//!   [`outbox`] with one flush per batch.
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
//! - [`auth`]: JWTs, anonymous customers, resume tokens.
//! - [`business_hours`], [`config`], [`metrics`], [`error`] (the one mapping
//!   from Rust errors to the contract's error codes).
//! - Hardening against hostile clients (docs/security.md): [`admission`]
//!   (connection counts, the `Origin` allowlist), [`rate_limit`] (per-session
//!   token buckets), [`validate`] (MessagePack length/nesting guard, payload
//!   checks), [`tls`] (optional wss).
//!
//! Embedding: build an [`actions::ActionRegistry`], add listeners, replaced
//! implementations or custom actions to it, then
//! `Broker::new(config, actions)`, `Server::bind` and `Server::run`.

pub mod actions;
pub mod admission;
pub mod auth;
pub mod broker;
pub mod business_hours;
pub mod codec;
pub mod config;
pub mod connection;
pub mod error;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod rate_limit;
pub mod server;
pub mod tls;
pub mod validate;

pub use actions::{ActionContext, ActionRegistry, CustomAction, Roles};
pub use broker::Broker;
pub use config::Config;
pub use error::ActionError;
pub use server::Server;
