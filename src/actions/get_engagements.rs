//! `GetEngagements {queue, after?}` (agents, services; an extension): a page
//! of a queue's open engagements, oldest first, after the one whose
//! `channelSid` is `after`: `{engagements, hasMore}`. What a console reads
//! when `Subscribe` to a queue answered `hasMore: true`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::{is_channel_sid, queue_channel, Pending, QUEUE_PREFIX};

#[derive(Deserialize)]
struct GetEngagements {
    #[serde(default)]
    queue: Field<String>,
    #[serde(default)]
    after: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: GetEngagements = payload::decode(payload)?;
    let name = p.queue.required("queue")?;
    let name = name.strip_prefix(QUEUE_PREFIX).unwrap_or(&name);
    let queue = queue_channel(name)
        .ok_or_else(|| ActionError::bad_request("queue names are 1-64 of A-Z a-z 0-9 _ - ."))?;
    let after = p.after.optional("after")?;
    if after.as_deref().is_some_and(|sid| !is_channel_sid(sid)) {
        return Err(ActionError::bad_request(
            "`after` must be the channelSid of the last engagement read",
        ));
    }
    let page = ctx.node.engine.queue_page(&queue, after.as_deref());
    Ok(page.map(|page| json!({ "engagements": page.engagements, "hasMore": page.has_more })))
}
