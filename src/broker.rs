//! The broker: a [`Node`] and the actions its sessions run. What embedding
//! code builds and hands to the [`Server`](crate::Server).

use std::sync::Arc;

use crate::actions::{ActionContext, ActionRegistry};
use crate::auth::{Authenticator, Principal, Role};
use crate::business_hours::BusinessHours;
use crate::codec::Encoding;
use crate::config::{Config, ConfigError};
use crate::delivery::session::SessionHandle;
use crate::delivery::Delivery;
use crate::engine::embedded::Embedded;
use crate::engine::redis::RedisEngine;
use crate::engine::Engine;
use crate::error::ActionError;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::outbox::Outbox;

pub struct Broker {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub(crate) node: Arc<Node>,
    pub(crate) actions: Arc<ActionRegistry>,
}

impl Broker {
    /// A broker with `actions` (built-ins plus whatever the embedding code
    /// registered) and the configuration's `[actions]` added to them. With a
    /// durable store, opens it and restores its state first.
    pub fn new(config: Config, mut actions: ActionRegistry) -> Result<Broker, ConfigError> {
        config.validate()?;
        actions
            .apply_config(&config.actions)
            .map_err(|e| ConfigError::Actions(e.to_string()))?;
        let business_hours = config
            .business_hours
            .as_ref()
            .map(BusinessHours::from_config)
            .transpose()?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let delivery = Arc::new(Delivery::new(&config, metrics.clone()));
        let (engine, resume_secret): (Arc<dyn Engine>, Option<Vec<u8>>) =
            match config.cluster.redis_url {
                // Several nodes on one Redis: the shared engine.
                Some(_) => {
                    let (engine, secret) = RedisEngine::open(config.clone(), delivery.clone())?;
                    (engine, Some(secret))
                }
                None => {
                    let (engine, secret) =
                        Embedded::open(config.clone(), delivery.clone(), metrics.clone())?;
                    (engine, secret)
                }
            };
        let auth =
            Authenticator::from_config(&config, resume_secret.as_deref()).map_err(|message| {
                ConfigError::Invalid {
                    section: "[jwt]",
                    message,
                }
            })?;
        let node = Arc::new(Node::new(
            config.clone(),
            auth,
            engine,
            delivery,
            business_hours,
        ));
        Ok(Broker {
            config,
            metrics,
            node,
            actions: Arc::new(actions),
        })
    }

    /// Open sessions on this node.
    pub fn session_count(&self) -> usize {
        self.node.delivery.session_count()
    }

    /// `Err` with the reason when the broker cannot serve every action
    /// (its store, or its shared engine, cannot take writes).
    pub fn readiness(&self) -> Result<(), String> {
        self.node.engine.health()
    }

    /// Stops taking writes and lets the store commit what it has (a
    /// bounded wait). Called once the server has drained.
    pub fn close(&self) {
        self.node.engine.close();
    }

    pub(crate) fn auth(&self) -> &Authenticator {
        &self.node.auth
    }

    /// A connected session with no socket, for benchmarks of the hot paths:
    /// its context runs actions as `identity`, and its outbox collects what
    /// would be sent.
    #[doc(hidden)]
    pub async fn session_without_socket(
        &self,
        identity: &str,
        role: Role,
        encoding: Encoding,
    ) -> Result<(ActionContext, Arc<Outbox>), ActionError> {
        let node = &self.node;
        let outbox = Arc::new(Outbox::new(node.outbox_limits(), self.metrics.clone()));
        let session = Arc::new(SessionHandle::new(
            node.next_session_key(),
            encoding,
            outbox.clone(),
            "127.0.0.1:1".parse().expect("an address"),
        ));
        node.delivery.open_session(&session);
        let principal = Principal {
            identity: identity.to_owned(),
            role,
            anonymous: false,
        };
        let ctx = ActionContext {
            node: node.clone(),
            actions: self.actions.clone(),
            actor: node.engine.identify(&principal).await?,
            session: Some(session),
            internal: false,
        };
        ctx.invoke("Connect", serde_json::json!({})).await?;
        Ok((ctx, outbox))
    }
}
