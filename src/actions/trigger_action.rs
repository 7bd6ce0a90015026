//! `TriggerAction {name, payload?}`: runs a custom action by its reference
//! name, the given payload merged over the preset.

use serde_json::{Map, Value};

use super::{ActionContext, ActionRegistry, ActionResult};
use crate::error::ActionError;

pub(super) async fn run(
    registry: &ActionRegistry,
    ctx: &ActionContext,
    payload: &Value,
) -> ActionResult {
    let name = super::required_str(payload, "name")?;
    let inner = match payload.get("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(ActionError::bad_request("`payload` must be a map")),
    };
    if !registry.is_custom(name) {
        return Err(ActionError::UnknownAction(format!(
            "{name} (TriggerAction runs custom actions)"
        )));
    }
    registry.invoke_boxed(ctx, name, inner).await
}
