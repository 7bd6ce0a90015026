//! `Connect {token?, resumeToken?}`: attaches the session to its identity.
//!
//! The connection authenticates the token before the pipeline runs (so that
//! listeners know who is connecting); this attaches the session and returns
//! the identity's shared state.

use serde_json::{json, Value};

use super::{session_required, ActionContext, ActionResult};
use crate::auth::Principal;
use crate::error::ActionError;

pub(super) fn run(ctx: &ActionContext, _payload: &Value) -> ActionResult {
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
    let (_, mut result) = ctx.broker.attach_session(&principal, session)?;
    let map = result.as_object_mut().expect("snapshot is a map");
    map.insert("sessionId".into(), session.id.clone().into());
    map.insert("identity".into(), identity.id.to_string().into());
    map.insert("role".into(), identity.role.as_str().into());
    map.insert(
        "actions".into(),
        json!(ctx.broker.actions.allowed_names(identity.role)),
    );
    if identity.anonymous {
        map.insert(
            "resumeToken".into(),
            ctx.broker.auth.resume_token(&identity.id).into(),
        );
    }
    Ok(result)
}
