//! `EndEngagement {channelSid, reason?}` (agents who are members, services):
//! ends the engagement for everyone, as the HTTP API's
//! `POST /api/v1/channels/{sid}/end` does (an extension of the protocol, so
//! that a console can end a chat).

use serde_json::{json, Value};

use super::{channel_sid, ActionContext, ActionResult};
use crate::auth::Role;
use crate::error::ActionError;

/// Longest `reason` accepted.
const MAX_REASON_BYTES: usize = 64;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let reason = match payload.get("reason") {
        None | Some(Value::Null) => "ended",
        Some(Value::String(r)) if r.is_empty() => {
            return Err(ActionError::bad_request("`reason` must not be empty"))
        }
        Some(Value::String(r)) if r.len() > MAX_REASON_BYTES => {
            return Err(ActionError::TooLarge(format!(
                "`reason` is {} bytes; the limit is {MAX_REASON_BYTES}",
                r.len()
            )))
        }
        Some(Value::String(r)) => r.as_str(),
        Some(_) => return Err(ActionError::bad_request("`reason` must be a string")),
    };
    // An agent ends only a chat it is in; a service (a backend) any.
    if ctx.role() == Role::Agent && !ctx.identity.lock().is_member(sid) {
        return Err(ActionError::NotAMember(sid.to_owned()));
    }
    ctx.broker.end_engagement(sid, reason)?;
    Ok(json!({}))
}
