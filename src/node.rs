//! One broker process's shared parts: configuration, authentication, the
//! engine, delivery to local sessions, metrics. The actions and the
//! sessions reach everything through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::business_hours::BusinessHours;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::engine::Engine;
use crate::event::SessionKey;
use crate::outbox::OutboxLimits;

pub(crate) struct Node {
    pub(crate) config: Arc<Config>,
    pub(crate) auth: Authenticator,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) business_hours: Option<BusinessHours>,
    next_session: AtomicU64,
}

impl Node {
    pub(crate) fn new(
        config: Arc<Config>,
        auth: Authenticator,
        engine: Arc<dyn Engine>,
        delivery: Arc<Delivery>,
        business_hours: Option<BusinessHours>,
    ) -> Node {
        Node {
            config,
            auth,
            engine,
            delivery,
            business_hours,
            next_session: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_session_key(&self) -> SessionKey {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn outbox_limits(&self) -> OutboxLimits {
        let l = &self.config.limits;
        OutboxLimits {
            frames: l.outbox_frames,
            bytes: l.outbox_bytes,
            typing_frames: l.outbox_typing_frames,
        }
    }
}
