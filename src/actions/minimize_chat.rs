//! `MinimizeChat`: minimizes the widget; other tabs hear of it only when it
//! changed.

use serde_json::{json, Value};

use super::{ActionContext, ActionError};
use crate::engine::{Pending, WidgetChange};

pub(super) fn run(ctx: &ActionContext, _payload: Value) -> Result<Pending<Value>, ActionError> {
    let minimized =
        ctx.node
            .engine
            .set_widget(&ctx.actor, WidgetChange::Minimize, ctx.session_key());
    Ok(minimized.map(|expanded| json!({ "expanded": expanded })))
}
