//! `LeaveChannel {channelSid}`: removes the identity (every session) from a
//! channel. A customer leaving its engagement ends it.

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::Pending;
use crate::event::LeaveReason;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaveChannel {
    #[serde(default)]
    channel_sid: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: LeaveChannel = payload::decode(payload)?;
    let sid = payload::channel_sid(p.channel_sid)?;
    let left = ctx.node.engine.leave(&ctx.actor, &sid, LeaveReason::Left);
    Ok(left.map(|()| json!({})))
}
