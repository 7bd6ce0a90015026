//! `RestartEngagement`: takes the customer (every tab) out of its engagement
//! in one step and returns it to the pre-engagement form.

use serde_json::{json, Value};

use super::{ActionContext, ActionResult};
use crate::broker::LeaveReason;
use crate::error::ActionError;

pub(super) fn run(ctx: &ActionContext, _payload: &Value) -> ActionResult {
    let mut state = ctx.identity.lock();
    let sid = state
        .engagement
        .as_ref()
        .ok_or(ActionError::NoEngagement)?
        .channel_sid
        .clone();
    ctx.broker.remove_member(
        &ctx.identity,
        &mut state,
        &sid,
        LeaveReason::Restart,
        "restart",
    )?;
    Ok(json!({ "channelSid": sid }))
}
