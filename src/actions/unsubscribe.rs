//! `Unsubscribe {channel}`: stop observing. Unsubscribing from something not
//! observed is not an error.

use serde_json::{json, Value};

use super::{required_str, session_required, ActionContext, ActionResult};

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let session = session_required(ctx)?;
    let name = required_str(payload, "channel")?;
    if session.remove_subscription(name) {
        ctx.broker.unsubscribe(session.key, name);
    }
    Ok(json!({}))
}
