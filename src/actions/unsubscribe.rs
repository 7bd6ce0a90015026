//! `Unsubscribe {channel}`: stop observing. Unsubscribing from something not
//! observed is not an error.

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{session_required, ActionContext, ActionError};
use crate::engine::Pending;

#[derive(Deserialize)]
struct Unsubscribe {
    #[serde(default)]
    channel: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let session = session_required(ctx)?;
    let p: Unsubscribe = payload::decode(payload)?;
    let name = super::subscribe::channel_name(p.channel)?;
    ctx.node.engine.unsubscribe(session, &name);
    Ok(Pending::ready(json!({})))
}
