//! `GetEngagements {queue, after?}` (agents, services; an extension): a page
//! of a queue's open engagements, oldest first, after the one whose
//! `channelSid` is `after`: `{engagements, hasMore}`. What a console reads
//! when `Subscribe` to a queue answered `hasMore: true`.

use serde_json::{json, Value};

use super::{required_str, ActionContext, ActionResult};
use crate::broker::channel::is_channel_sid;
use crate::broker::queue::{queue_channel, QUEUE_PREFIX};
use crate::error::ActionError;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let name = required_str(payload, "queue")?;
    let name = name.strip_prefix(QUEUE_PREFIX).unwrap_or(name);
    let queue = queue_channel(name)
        .ok_or_else(|| ActionError::bad_request("queue names are 1-64 of A-Z a-z 0-9 _ - ."))?;
    let after = match payload.get("after") {
        None | Some(Value::Null) => None,
        Some(Value::String(sid)) if is_channel_sid(sid) => Some(sid.as_str()),
        Some(_) => {
            return Err(ActionError::bad_request(
                "`after` must be the channelSid of the last engagement read",
            ))
        }
    };
    let (engagements, more) = match ctx.broker.queue(&queue) {
        Some(q) => q.lock().page(after),
        None => (Vec::new(), false),
    };
    Ok(json!({ "engagements": engagements, "hasMore": more }))
}
