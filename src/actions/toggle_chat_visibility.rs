//! `ToggleChatVisibility`: flips the widget between minimized and expanded
//! and tells the identity's other tabs.

use serde_json::{json, Value};

use super::{ActionContext, ActionError};
use crate::engine::{Pending, WidgetChange};

pub(super) fn run(ctx: &ActionContext, _payload: Value) -> Result<Pending<Value>, ActionError> {
    let toggled = ctx
        .node
        .engine
        .set_widget(&ctx.actor, WidgetChange::Toggle, ctx.session_key());
    Ok(toggled.map(|expanded| json!({ "expanded": expanded })))
}
