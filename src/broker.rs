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
    /// Where post-event webhook senders find their events.
    webhook_outbox: Arc<dyn crate::webhooks::WebhookOutbox>,
    webhook_client: reqwest::Client,
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
        let metrics = Arc::new(Metrics::default());
        let webhook_client = crate::webhooks::client();
        crate::webhooks::register(
            &mut actions,
            &config.webhooks.pre,
            &webhook_client,
            &metrics,
        )
        .map_err(|e| ConfigError::Invalid {
            section: "[[webhooks.pre]]",
            message: e.to_string(),
        })?;
        let config = Arc::new(config);
        let delivery = Arc::new(Delivery::new(&config, metrics.clone()));
        type Opened = (
            Arc<dyn Engine>,
            Arc<dyn crate::webhooks::WebhookOutbox>,
            Option<Vec<u8>>,
        );
        let (engine, webhook_outbox, resume_secret): Opened = match config.cluster.redis_url {
            // Several nodes on one Redis: the shared engine.
            Some(_) => {
                let (engine, secret) =
                    RedisEngine::open(config.clone(), delivery.clone(), metrics.clone())?;
                (engine.clone(), engine, Some(secret))
            }
            None => {
                let (engine, secret) =
                    Embedded::open(config.clone(), delivery.clone(), metrics.clone())?;
                (engine.clone(), engine, secret)
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
            webhook_outbox,
            webhook_client,
        })
    }

    /// Starts the post-event webhook senders (one per URL); they stop with
    /// `shutdown`.
    pub(crate) fn start_webhooks(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
        spawn: impl FnMut(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) {
        crate::webhooks::spawn_senders(
            &self.config.webhooks.post,
            self.webhook_outbox.clone(),
            self.webhook_client.clone(),
            self.metrics.clone(),
            shutdown,
            spawn,
        );
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
