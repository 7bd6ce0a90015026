//! `StartEngagement {formData?, queue?}`: a new engagement channel with the
//! customer as its member, announced on the queue and to all its tabs.

use chrono::{SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::engine::{queue_channel, Pending, DEFAULT_QUEUE};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartEngagement {
    #[serde(default)]
    form_data: Field<Map<String, Value>>,
    #[serde(default)]
    queue: Field<String>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: StartEngagement = payload::decode(payload)?;
    let form_data = payload::free_form("formData", p.form_data, &ctx.node.config)?;
    let queue = match p.queue.optional("queue")? {
        None => DEFAULT_QUEUE.to_owned(),
        Some(name) => queue_channel(&name)
            .ok_or_else(|| ActionError::bad_request("`queue` must be 1-64 of A-Z a-z 0-9 _ - ."))?,
    };
    if let Some(hours) = &ctx.node.business_hours {
        hours
            .check(Utc::now())
            .map_err(|opens| ActionError::OutsideBusinessHours {
                opens_at: opens.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            })?;
    }
    let started = ctx
        .node
        .engine
        .start_engagement(&ctx.actor, form_data, queue.as_str().into());
    Ok(started.map(|started| json!({ "channelSid": started.channel_sid })))
}
