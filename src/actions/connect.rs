//! `Connect {token?, resumeToken?, recover?}`: attaches the session to its
//! identity.
//!
//! The connection authenticates the token before the pipeline runs (so that
//! listeners know who is connecting); this attaches the session and returns
//! the identity's shared state, pushing first what each channel in
//! `recover` had after the index given.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::payload::{self, Field};
use super::{session_required, ActionContext, ActionError};
use crate::engine::Pending;
use crate::validate::MAX_TOKEN_BYTES;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Connect {
    // `token` and `resumeToken` were used by the connection to
    // authenticate (and are checked by `check_tokens`).
    #[serde(default)]
    recover: Field<Map<String, Value>>,
}

/// `recover: {"<channelSid>": <last index seen>}`.
fn recover_map(field: Field<Map<String, Value>>) -> Result<HashMap<String, i64>, ActionError> {
    let map = match field {
        Field::Valid(map) => map,
        Field::Invalid => {
            return Err(ActionError::bad_request(
                "`recover` must be a map of channelSid to the last index seen",
            ))
        }
        Field::Missing | Field::Null => return Ok(HashMap::new()),
    };
    map.into_iter()
        .map(|(sid, last)| match last.as_i64() {
            Some(last) if last >= -1 => Ok((sid, last)),
            _ => Err(ActionError::bad_request(format!(
                "`recover.{sid}` must be the last index seen (an integer, -1 for none)"
            ))),
        })
        .collect()
}

/// The token fields' bounds (the connection checks them before it
/// authenticates too).
pub(crate) fn check_tokens(payload: &Value) -> Result<(), ActionError> {
    for field in ["token", "resumeToken"] {
        match payload.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                payload::bounded(field, s.clone(), MAX_TOKEN_BYTES)?;
            }
            Some(_) => {
                return Err(ActionError::bad_request(format!(
                    "`{field}` must be a string"
                )))
            }
        }
    }
    Ok(())
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let session = session_required(ctx)?.clone();
    if session.identity().is_some() {
        return Err(ActionError::bad_request("already connected"));
    }
    check_tokens(&payload)?;
    let p: Connect = payload::decode(payload)?;
    let recover = recover_map(p.recover)?;
    let attached = ctx.node.engine.attach(&session, &ctx.actor, &recover);
    let actor = ctx.actor.clone();
    let actions: Vec<String> = ctx
        .actions
        .allowed_names(actor.role)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let resume = actor
        .anonymous
        .then(|| ctx.node.auth.resume_token(&actor.id));
    Ok(attached.map(move |attached| {
        let mut result = serde_json::to_value(&attached.snapshot).expect("snapshots serialize");
        let map = result.as_object_mut().expect("snapshot is a map");
        map.insert("sessionId".into(), session.id.as_str().into());
        map.insert("identity".into(), actor.id.to_string().into());
        map.insert("role".into(), actor.role.as_str().into());
        map.insert("actions".into(), json!(actions));
        if !recover.is_empty() {
            map.insert("recovered".into(), json!(attached.recovered));
        }
        if let Some(resume) = resume {
            map.insert("resumeToken".into(), resume.into());
        }
        result
    }))
}
