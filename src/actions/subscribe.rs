//! `Subscribe {channel}` (agents, services): observe a channel or a
//! `queue:<name>` without joining. A queue's result also lists its open
//! engagements (`engagements`, an extension), taken under the same lock that
//! announces new ones, so a console misses none: the first page of them,
//! with `hasMore` when `GetEngagements` has the rest. `after: <last index seen>`
//! on a channel pushes what was missed first (`recovered` says whether history
//! still reached back that far).

use serde_json::{json, Value};

use super::{required_str, session_required, ActionContext, ActionResult};
use crate::broker::channel::is_channel_sid;
use crate::broker::queue::{queue_channel, QUEUE_PREFIX};
use crate::error::ActionError;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let session = session_required(ctx)?;
    let name = required_str(payload, "channel")?;
    crate::admission::check_subscriptions(&ctx.broker.config.admission, session, name)?;
    if let Some(queue_name) = name.strip_prefix(QUEUE_PREFIX) {
        let queue = queue_channel(queue_name)
            .ok_or_else(|| ActionError::bad_request("queue names are 1-64 of A-Z a-z 0-9 _ - ."))?;
        let (engagements, more) = ctx.broker.with_queue(&queue, |qs| {
            qs.subscribers.insert(session.key, session.clone());
            qs.page(None)
        });
        session.add_subscription(queue.as_str().into());
        return Ok(json!({ "channel": queue, "engagements": engagements, "hasMore": more }));
    }
    if !is_channel_sid(name) {
        return Err(ActionError::bad_request(format!(
            "`channel` {name:?} is neither a channel sid nor queue:<name>"
        )));
    }
    let after = match payload.get("after") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(after) if after >= -1 => Some(after),
            _ => {
                return Err(ActionError::bad_request(
                    "`after` must be the last index seen (an integer, -1 for none)",
                ))
            }
        },
    };
    let not_found = || ActionError::NotFound(format!("no channel {name}"));
    let channel = ctx.broker.channel(name).ok_or_else(not_found)?;
    let mut cs = channel.lock();
    if cs.closed {
        return Err(not_found());
    }
    cs.add_subscriber(session, &ctx.identity.id);
    session.add_subscription(channel.sid.clone());
    // Missed messages go out under the same lock that made the session a
    // recipient: nothing newer can slip in between.
    match after {
        Some(after) => {
            let recovered = ctx.broker.replay(&channel, &cs, session, after);
            Ok(json!({ "channel": name, "recovered": recovered }))
        }
        None => Ok(json!({ "channel": name })),
    }
}
