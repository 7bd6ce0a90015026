//! `ToggleChatVisibility`: flips the widget between minimized and expanded
//! and tells the identity's other tabs.

use serde_json::{json, Value};

use super::{ActionContext, ActionResult};
use crate::codec::Push;

pub(super) fn run(ctx: &ActionContext, _payload: &Value) -> ActionResult {
    let mut state = ctx.identity.lock();
    state.expanded = !state.expanded;
    let result = json!({ "expanded": state.expanded });
    ctx.broker.save_identity(&ctx.identity, &state);
    state.push(&Push::new("widgetStateChanged", &result), ctx.session_key());
    Ok(result)
}
