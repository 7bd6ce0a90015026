//! `SendMessage {channelSid, body, messageAttributes?}`: appends a message
//! and fans it out to every member's and observer's sessions.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{channel_sid, member_channel, ActionContext, ActionResult};
use crate::auth::Role;
use crate::broker::now_rfc3339;
use crate::codec::Push;
use crate::error::ActionError;

/// The `messageAdded` push, serialized straight from borrowed parts.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageAdded<'a> {
    channel_sid: &'a str,
    index: u64,
    author: &'a str,
    author_role: &'a str,
    body: &'a str,
    attributes: &'a Value,
    date_created: &'a str,
}

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let limit = ctx.broker.config.limits.max_body_bytes;
    let body = match payload.get("body") {
        Some(Value::String(body)) => body,
        Some(_) => return Err(ActionError::bad_request("`body` must be a string")),
        None => return Err(ActionError::bad_request("`body` is required")),
    };
    if body.is_empty() {
        return Err(ActionError::bad_request("`body` must not be empty"));
    }
    if body.len() > limit {
        return Err(ActionError::TooLarge(format!(
            "`body` is {} bytes; the limit is {limit}",
            body.len()
        )));
    }
    let empty = Value::Object(Map::new());
    let attributes = match payload.get("messageAttributes") {
        None | Some(Value::Null) => &empty,
        Some(attributes @ Value::Object(map)) => {
            if !map.is_empty() {
                let bytes = serde_json::to_string(attributes).map_or(usize::MAX, |s| s.len());
                if bytes > limit {
                    return Err(ActionError::TooLarge(format!(
                        "`messageAttributes` is {bytes} bytes as JSON; the limit is {limit}"
                    )));
                }
            }
            attributes
        }
        Some(_) => {
            return Err(ActionError::bad_request(
                "`messageAttributes` must be a map",
            ))
        }
    };

    let channel = member_channel(ctx, sid)?;
    let identity = &ctx.identity;
    let mut cs = channel.lock();
    // Membership is checked under the channel lock, the same lock a restart
    // or leave takes: a message either lands before the `memberLeft` or
    // finds its author gone.
    let member = !cs.closed && cs.members.contains_key(&identity.id);
    let broker_post = ctx.internal && identity.role == Role::Service && !cs.closed;
    if !member && !broker_post {
        return Err(ActionError::NotAMember(sid.to_owned()));
    }
    let index = cs.next_index;
    cs.next_index += 1;
    let date_created = now_rfc3339();
    cs.end_typing(sid, &identity.id);
    let message = MessageAdded {
        channel_sid: sid,
        index,
        author: &identity.id,
        author_role: identity.role.as_str(),
        body,
        attributes,
        date_created: &date_created,
    };
    let delivered = cs.broadcast(&Push::new("messageAdded", &message), None);
    drop(cs);
    ctx.broker.metrics.message_added(delivered);
    Ok(json!({ "channelSid": sid, "index": index, "dateCreated": date_created }))
}
