//! `JoinChannel {channelSid}` (agents, services): adds the identity, all its
//! sessions, as a member.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::Pending;
use crate::event::Member;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinChannel {
    #[serde(default)]
    channel_sid: Field<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Joined {
    channel_sid: String,
    members: Vec<Member>,
    last_index: i64,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: JoinChannel = payload::decode(payload)?;
    let sid = payload::channel_sid(p.channel_sid)?;
    let joined = ctx.node.engine.join(&ctx.actor, &sid);
    Ok(joined.map(move |joined| {
        serde_json::to_value(Joined {
            channel_sid: sid,
            members: joined.members,
            last_index: joined.last_index,
        })
        .expect("results serialize")
    }))
}
