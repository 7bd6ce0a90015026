//! `RestartEngagement`: takes the customer (every tab) out of its engagement
//! in one step and returns it to the pre-engagement form.

use serde_json::{json, Value};

use super::{ActionContext, ActionError};
use crate::engine::Pending;

pub(super) fn run(ctx: &ActionContext, _payload: Value) -> Result<Pending<Value>, ActionError> {
    let restarted = ctx.node.engine.restart_engagement(&ctx.actor);
    Ok(restarted.map(|sid| json!({ "channelSid": sid })))
}
