//! `SendTyping {channelSid}`: `typingStarted` to everyone else in the
//! channel, once per typing window; `typingEnded` when the window passes
//! with no new `SendTyping` (or on the author's next message, or leaving).

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{channel_sid, member_channel, ActionContext, ActionResult};
use crate::broker::channel::Channel;
use crate::error::ActionError;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let channel = member_channel(ctx, sid)?;
    let window = ctx.broker.config.typing_window();
    let mut cs = channel.lock();
    if cs.closed || !cs.members.contains_key(&ctx.identity.id) {
        return Err(ActionError::NotAMember(sid.to_owned()));
    }
    let started = cs.start_typing(sid, &ctx.identity.id, window);
    drop(cs);
    if let Some(generation) = started {
        tokio::spawn(end_when_window_passes(
            channel,
            ctx.identity.id.clone(),
            generation,
        ));
    }
    Ok(json!({}))
}

/// One task per typing period: sleeps to the window's end, and again if a
/// new `SendTyping` pushed the end further; gives up when the period it was
/// made for has already ended (a message, a leave, a newer period).
async fn end_when_window_passes(channel: Arc<Channel>, identity: Arc<str>, generation: u64) {
    loop {
        let until = match channel.lock().typing.get(&identity) {
            Some(typing) if typing.generation == generation => typing.until,
            _ => return,
        };
        tokio::time::sleep_until(Instant::from_std(until)).await;
        let mut cs = channel.lock();
        match cs.typing.get(&identity) {
            Some(typing) if typing.generation == generation => {
                if typing.until <= std::time::Instant::now() {
                    cs.end_typing(&channel.sid, &identity);
                    return;
                }
            }
            _ => return,
        }
    }
}
