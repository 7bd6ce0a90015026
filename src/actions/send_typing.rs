//! `SendTyping {channelSid}`: `typingStarted` to everyone else in the
//! channel, once per typing window; `typingEnded` when the window passes
//! with no new `SendTyping` (or on the author's next message, or leaving).
//! Typing is never stored.

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::Pending;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendTyping {
    #[serde(default)]
    channel_sid: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: SendTyping = payload::decode(payload)?;
    let sid = payload::channel_sid(p.channel_sid)?;
    Ok(ctx.node.engine.typing(&ctx.actor, &sid).map(|()| json!({})))
}
