//! `JoinChannel {channelSid}` (agents, services): adds the identity, all its
//! sessions, as a member.

use serde_json::{json, Value};

use super::{channel_sid, ActionContext, ActionResult};
use crate::codec::Push;
use crate::error::ActionError;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let identity = &ctx.identity;
    let mut state = identity.lock();
    let not_found = || ActionError::NotFound(format!("no channel {sid}"));
    let channel = ctx.broker.channel(sid).ok_or_else(not_found)?;
    let mut cs = channel.lock();
    if cs.closed {
        return Err(not_found());
    }
    if cs
        .members
        .insert(identity.id.clone(), identity.role)
        .is_none()
    {
        for session in &state.sessions {
            cs.add_member_session(session, &identity.id);
        }
        state.channels.insert(channel.sid.clone());
        let event = json!({ "channelSid": sid, "identity": identity.id, "role": identity.role });
        cs.broadcast(&Push::new("memberJoined", &event), None);
    }
    let mut members: Vec<_> = cs.members.iter().collect();
    members.sort();
    let members: Vec<Value> = members
        .into_iter()
        .map(|(identity, role)| json!({ "identity": identity, "role": role }))
        .collect();
    Ok(json!({ "channelSid": sid, "members": members, "lastIndex": cs.last_index() }))
}
