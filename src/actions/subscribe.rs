//! `Subscribe {channel}` (agents, services): observe a channel or a
//! `queue:<name>` without joining. A queue's result also lists its open
//! engagements (`engagements`, an extension), taken under the same lock
//! that delivers new ones, so a console misses none: the first page of
//! them, with `hasMore` when `GetEngagements` has the rest. `after: <last
//! index seen>` on a channel pushes what was missed first (`recovered` says
//! whether history still reached back that far).

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{session_required, ActionContext, ActionError};
use crate::engine::{is_channel_sid, queue_channel, Pending, QUEUE_PREFIX};

#[derive(Deserialize)]
struct Subscribe {
    #[serde(default)]
    channel: Field<String>,
    #[serde(default)]
    after: Field<i64>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let session = session_required(ctx)?;
    let p: Subscribe = payload::decode(payload)?;
    let name = channel_name(p.channel)?;
    crate::admission::check_subscriptions(&ctx.node.config.admission, session, &name)?;
    if name.starts_with(QUEUE_PREFIX) {
        let page = ctx.node.engine.subscribe_queue(session, &name);
        return Ok(page.map(move |page| {
            json!({ "channel": name, "engagements": page.engagements, "hasMore": page.has_more })
        }));
    }
    let after = match p.after {
        payload::Field::Missing | payload::Field::Null => None,
        payload::Field::Valid(after) if after >= -1 => Some(after),
        _ => {
            return Err(ActionError::bad_request(
                "`after` must be the last index seen (an integer, -1 for none)",
            ))
        }
    };
    let subscribed = ctx
        .node
        .engine
        .subscribe_channel(session, &ctx.actor, &name, after);
    Ok(subscribed.map(move |recovered| match recovered {
        Some(recovered) => json!({ "channel": name, "recovered": recovered }),
        None => json!({ "channel": name }),
    }))
}

/// `channel` of `Subscribe` / `Unsubscribe`: a channel sid or `queue:<name>`.
pub(super) fn channel_name(field: Field<String>) -> Result<String, ActionError> {
    let name = field.required("channel")?;
    let is_queue = name
        .strip_prefix(QUEUE_PREFIX)
        .is_some_and(|q| queue_channel(q).is_some());
    if is_queue || is_channel_sid(&name) {
        Ok(name)
    } else {
        let shown: String = name.chars().take(40).collect();
        Err(ActionError::bad_request(format!(
            "`channel` {shown:?} is neither a channel sid (CH + 32 lowercase hex) nor queue:<name> (1-64 of A-Z a-z 0-9 _ - .)"
        )))
    }
}
