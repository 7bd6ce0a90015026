//! `SendMessage {channelSid, body, messageAttributes?}`: appends a message
//! and fans it out to every member's and observer's sessions.

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{channel_sid, member_channel, ActionContext, ActionResult};
use crate::auth::Role;
use crate::broker::channel::Event;
use crate::error::ActionError;
use crate::store::{Op, StoredMessage};

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
    let attributes = match payload.get("messageAttributes") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(attributes @ Value::Object(map)) => {
            if !map.is_empty() {
                let bytes = serde_json::to_string(attributes).map_or(usize::MAX, |s| s.len());
                if bytes > limit {
                    return Err(ActionError::TooLarge(format!(
                        "`messageAttributes` is {bytes} bytes as JSON; the limit is {limit}"
                    )));
                }
            }
            attributes.clone()
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
    let now = Utc::now();
    let message = Arc::new(StoredMessage {
        channel_sid: channel.sid.clone(),
        index,
        author: identity.id.clone(),
        author_role: identity.role,
        body: body.clone(),
        attributes,
        date_created: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        created_ms: now.timestamp_millis(),
    });
    cs.end_typing(sid, &identity.id);
    // Written (and, with a store, delivered once durable) in index order:
    // both happen under this lock.
    let ticket = ctx
        .broker
        .persist(Op::AppendMessage(message.clone()), Some(channel.clone()));
    cs.publish(
        sid,
        ticket,
        Event::Message(message.clone()),
        &ctx.broker.metrics,
    );
    drop(cs);
    Ok(json!({ "channelSid": sid, "index": index, "dateCreated": message.date_created }))
}
