//! `SetInputText {channelSid, body}`: stores the identity's draft for a
//! channel and syncs it to its other tabs. An empty body clears the draft.

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::Pending;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetInputText {
    #[serde(default)]
    channel_sid: Field<String>,
    #[serde(default)]
    body: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: SetInputText = payload::decode(payload)?;
    let sid = payload::channel_sid(p.channel_sid)?;
    let body = payload::body("body", p.body.required("body")?, &ctx.node.config)?;
    let set = ctx
        .node
        .engine
        .set_draft(&ctx.actor, &sid, &body, ctx.session_key());
    Ok(set.map(|()| json!({})))
}
