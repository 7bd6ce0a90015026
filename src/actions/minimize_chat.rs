//! `MinimizeChat`: minimizes the widget; other tabs hear of it only when it
//! changed.

use serde_json::{json, Value};

use super::{ActionContext, ActionResult};
use crate::codec::Push;

pub(super) fn run(ctx: &ActionContext, _payload: &Value) -> ActionResult {
    let mut state = ctx.identity.lock();
    let result = json!({ "expanded": false });
    if state.expanded {
        state.expanded = false;
        ctx.broker.save_identity(&ctx.identity, &state);
        state.push(&Push::new("widgetStateChanged", &result), ctx.session_key());
    }
    Ok(result)
}
