//! `SendMessage {channelSid, body, messageAttributes?}`: appends a message;
//! `messageAdded` reaches every member's and observer's sessions once it is
//! durable.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::{NewMessage, Pending};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendMessage {
    #[serde(default)]
    channel_sid: Field<String>,
    #[serde(default)]
    body: Field<String>,
    #[serde(default)]
    message_attributes: Field<Map<String, Value>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sent {
    channel_sid: String,
    index: u64,
    date_created: std::sync::Arc<str>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: SendMessage = payload::decode(payload)?;
    let config = &ctx.node.config;
    let sid = payload::channel_sid(p.channel_sid)?;
    let body = payload::body("body", p.body.required("body")?, config)?;
    if body.is_empty() {
        return Err(ActionError::bad_request("`body` must not be empty"));
    }
    let attributes = payload::attributes("messageAttributes", p.message_attributes, config)?;
    let posted = ctx.node.engine.post(
        &ctx.actor,
        &sid,
        NewMessage {
            body,
            attributes,
            by_broker: ctx.internal,
        },
    );
    Ok(posted.map(move |posted| {
        serde_json::to_value(Sent {
            channel_sid: sid,
            index: posted.index,
            date_created: posted.date_created,
        })
        .expect("results serialize")
    }))
}
