//! `GetActions`: every action, built-in and custom, with whether this
//! session may call it (`allowed`, an extension).

use serde_json::{json, Value};

use super::{ActionContext, ActionError};
use crate::engine::Pending;

pub(super) fn run(ctx: &ActionContext, _payload: Value) -> Result<Pending<Value>, ActionError> {
    Ok(Pending::ready(
        json!({ "actions": ctx.actions.describe(ctx.role()) }),
    ))
}
