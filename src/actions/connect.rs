//! `Connect {token?, resumeToken?}`: attaches the session to its identity.
//!
//! The connection authenticates the token before the pipeline runs (so that
//! listeners know who is connecting); this attaches the session and returns
//! the identity's shared state.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{session_required, ActionContext, ActionResult};
use crate::auth::Principal;
use crate::error::ActionError;

/// `recover: {"<channelSid>": <last index seen>}`.
fn recover_map(payload: &Value) -> Result<HashMap<String, i64>, ActionError> {
    match payload.get("recover") {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(sid, last)| match last.as_i64() {
                Some(last) if last >= -1 => Ok((sid.clone(), last)),
                _ => Err(ActionError::bad_request(format!(
                    "`recover.{sid}` must be the last index seen (an integer, -1 for none)"
                ))),
            })
            .collect(),
        Some(_) => Err(ActionError::bad_request(
            "`recover` must be a map of channelSid to the last index seen",
        )),
    }
}

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let session = session_required(ctx)?;
    if session.identity().is_some() {
        return Err(ActionError::bad_request("already connected"));
    }
    let identity = &ctx.identity;
    let principal = Principal {
        identity: identity.id.to_string(),
        role: identity.role,
        anonymous: identity.anonymous,
    };
    let recover = recover_map(payload)?;
    let attached = ctx.broker.attach_session(&principal, session, &recover)?;
    let (mut result, recovered) = (attached.snapshot, attached.recovered);
    let map = result.as_object_mut().expect("snapshot is a map");
    map.insert("sessionId".into(), session.id.clone().into());
    map.insert("identity".into(), identity.id.to_string().into());
    map.insert("role".into(), identity.role.as_str().into());
    map.insert(
        "actions".into(),
        json!(ctx.broker.actions.allowed_names(identity.role)),
    );
    if !recover.is_empty() {
        map.insert("recovered".into(), json!(recovered));
    }
    if identity.anonymous {
        map.insert(
            "resumeToken".into(),
            ctx.broker.auth.resume_token(&identity.id).into(),
        );
    }
    Ok(result)
}
