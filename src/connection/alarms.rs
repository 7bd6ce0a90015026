//! Session deadlines without a timer per session.
//!
//! Every session has deadlines (its `Connect`, its idle timeout, its token's
//! expiry, its next ping), all of them seconds away and none needing
//! millisecond precision. A timer per session would be the largest thing an
//! idle session keeps, so each session instead posts its next deadline as
//! an alarm in its outbox, and one sweep per node walks the sessions a few
//! times a second and raises [`Signal::Tick`] for those due. A deadline
//! rings at most one sweep late.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::outbox::{alarm_clock, Signal};

/// The sweep's period: a sixteenth of the shortest session deadline
/// configured, within these bounds (tight test settings get a fine sweep,
/// the defaults one every quarter second).
const FINEST: Duration = Duration::from_millis(10);
const COARSEST: Duration = Duration::from_millis(250);

pub(crate) fn sweep_period(broker: &Broker) -> Duration {
    let limits = &broker.config.limits;
    let shortest = limits
        .connect_timeout()
        .min(limits.idle_timeout())
        .min(limits.ping_interval());
    (shortest / 16).clamp(FINEST, COARSEST)
}

/// Rings the alarms that are due until shutdown.
pub(crate) async fn sweep(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(sweep_period(&broker));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        // Rounded down (the alarms are rounded up), so that a session is
        // never woken before its deadline.
        let now = alarm_clock(Instant::now()).saturating_sub(1);
        broker.node.delivery.for_each_session(|session| {
            session.outbox.ring_if_due(now);
        });
    }
}

/// Tells every open session that the node is shutting down. A session that
/// opens after this sees the cancelled token when it starts.
pub(crate) fn shut_down_sessions(broker: &Broker) {
    broker
        .node
        .delivery
        .for_each_session(|session| session.outbox.signal(Signal::Shutdown));
}
