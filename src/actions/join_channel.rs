//! `JoinChannel {channelSid}` (agents, services): adds the identity, all its
//! sessions, as a member.

use serde_json::{json, Value};

use super::{channel_sid, ActionContext, ActionResult};
use crate::broker::channel::Event;
use crate::error::ActionError;
use crate::store::Op;

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
    let max = ctx.broker.config.admission.max_members_per_channel;
    if cs.members.len() >= max && !cs.members.contains_key(&identity.id) {
        return Err(ActionError::RateLimited(format!(
            "channel {sid} already has {max} members (admission.max_members_per_channel)"
        )));
    }
    if cs
        .members
        .insert(identity.id.clone(), identity.role)
        .is_none()
    {
        state.channels.insert(channel.sid.clone());
        let ticket = ctx.broker.persist(
            Op::AddMember {
                sid: channel.sid.clone(),
                identity: identity.id.clone(),
                role: identity.role,
            },
            Some(channel.clone()),
        );
        // The identity's sessions start receiving with its `memberJoined`,
        // after every message accepted before the join.
        let event = Event::MemberJoined {
            identity: identity.id.clone(),
            role: identity.role,
            sessions: state.sessions.clone(),
        };
        cs.publish(sid, ticket, event, &ctx.broker.metrics);
        ctx.broker.members_changed(&channel, &cs);
        ctx.broker.save_identity(identity, &state);
    }
    let mut members: Vec<_> = cs.members.iter().collect();
    members.sort();
    let members: Vec<Value> = members
        .into_iter()
        .map(|(identity, role)| json!({ "identity": identity, "role": role }))
        .collect();
    Ok(json!({ "channelSid": sid, "members": members, "lastIndex": cs.last_index() }))
}
