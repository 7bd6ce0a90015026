//! `LeaveChannel {channelSid}`: removes the identity (every session) from a
//! channel. A customer leaving its engagement ends it.

use serde_json::{json, Value};

use super::{channel_sid, ActionContext, ActionResult};
use crate::broker::LeaveReason;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let mut state = ctx.identity.lock();
    ctx.broker
        .remove_member(&ctx.identity, &mut state, sid, LeaveReason::Left, "left")?;
    Ok(json!({}))
}
