//! `TriggerAction {name, payload?}`: runs a custom action by its reference
//! name, the given payload merged over the preset.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionRegistry, ActionResult};
use crate::error::ActionError;

/// Longest action name (custom ones are refused longer).
const MAX_NAME_BYTES: usize = 64;

#[derive(Deserialize)]
struct TriggerAction {
    #[serde(default)]
    name: Field<String>,
    #[serde(default)]
    payload: Field<Map<String, Value>>,
}

pub(super) async fn run(
    registry: &ActionRegistry,
    ctx: &ActionContext,
    payload: Value,
) -> ActionResult {
    let p: TriggerAction = payload::decode(payload)?;
    let name = payload::bounded("name", p.name.required("name")?, MAX_NAME_BYTES)?;
    let inner = payload::nested_payload(p.payload)?;
    if !registry.is_custom(&name) {
        return Err(ActionError::UnknownAction(format!(
            "{name} (TriggerAction runs custom actions)"
        )));
    }
    registry.invoke_boxed(ctx, &name, inner).await
}
