//! `EndEngagement {channelSid, reason?}` (agents who are members, services):
//! ends the engagement for everyone, as the HTTP API's
//! `POST /api/v1/channels/{sid}/end` does (an extension of the protocol, so
//! that a console can end a chat).

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::auth::Role;
use crate::engine::Pending;

/// Longest `reason` accepted.
pub(crate) const MAX_REASON_BYTES: usize = 64;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndEngagement {
    #[serde(default)]
    channel_sid: Field<String>,
    #[serde(default)]
    reason: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: EndEngagement = payload::decode(payload)?;
    let sid = payload::channel_sid(p.channel_sid)?;
    let reason = match p.reason.optional("reason")? {
        None => "ended".to_owned(),
        Some(r) if r.is_empty() => {
            return Err(ActionError::bad_request("`reason` must not be empty"))
        }
        Some(r) => payload::bounded("reason", r, MAX_REASON_BYTES)?,
    };
    // An agent ends only a chat it is in; a service (a backend) any.
    let member = (ctx.role() == Role::Agent).then_some(&ctx.actor);
    let ended = ctx.node.engine.end_engagement(member, &sid, &reason);
    Ok(ended.map(|()| json!({})))
}
