//! `SetInputText {channelSid, body}`: stores the identity's draft for a
//! channel and syncs it to its other tabs. An empty body clears the draft.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{channel_sid, required_str, ActionContext, ActionResult};
use crate::codec::Push;
use crate::error::ActionError;
use crate::store::Op;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let body = required_str(payload, "body")?;
    let limit = ctx.broker.config.limits.max_body_bytes;
    if body.len() > limit {
        return Err(ActionError::TooLarge(format!(
            "`body` is {} bytes; the limit is {limit}",
            body.len()
        )));
    }
    let mut state = ctx.identity.lock();
    if !state.is_member(sid) {
        return Err(ActionError::NotAMember(sid.to_owned()));
    }
    let sid: Arc<str> = Arc::from(sid);
    if body.is_empty() {
        state.drafts.remove(&sid);
    } else {
        state.drafts.insert(sid.clone(), body.to_owned());
    }
    ctx.broker.persist(
        Op::SetDraft {
            identity: ctx.identity.id.clone(),
            sid: sid.clone(),
            body: (!body.is_empty()).then(|| body.to_owned()),
        },
        None,
    );
    let sid = &*sid;
    let event = json!({ "channelSid": sid, "body": body });
    state.push(&Push::new("inputTextSet", &event), ctx.session_key());
    Ok(json!({}))
}
