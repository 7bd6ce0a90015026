//! `GetActions`: every action, built-in and custom, with whether this
//! session may call it (`allowed`, an extension).

use serde_json::{json, Value};

use super::{ActionContext, ActionResult};

pub(super) fn run(ctx: &ActionContext, _payload: &Value) -> ActionResult {
    Ok(json!({ "actions": ctx.broker.actions.describe(ctx.role()) }))
}
