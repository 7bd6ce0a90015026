//! `StartEngagement {formData?, queue?}`: a new engagement channel with the
//! customer as its member, announced on the queue and to all its tabs.

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{ActionContext, ActionResult};
use crate::auth::Role;
use crate::broker::channel::{new_channel_sid, Channel};
use crate::broker::identity::Engagement;
use crate::broker::now_rfc3339;
use crate::broker::queue::{queue_channel, Member, OpenEngagement, DEFAULT_QUEUE};
use crate::codec::Push;
use crate::error::ActionError;
use crate::store::Op;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let broker = &ctx.broker;
    let form_data = match payload.get("formData") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(form @ Value::Object(_)) => form.clone(),
        Some(_) => return Err(ActionError::bad_request("`formData` must be a map")),
    };
    let limit = broker.config.limits.max_body_bytes;
    let form_bytes = serde_json::to_string(&form_data).map_or(usize::MAX, |s| s.len());
    if form_bytes > limit {
        return Err(ActionError::TooLarge(format!(
            "`formData` is {form_bytes} bytes as JSON; the limit is {limit}"
        )));
    }
    let queue = match payload.get("queue") {
        None | Some(Value::Null) => DEFAULT_QUEUE.to_owned(),
        Some(Value::String(name)) => queue_channel(name)
            .ok_or_else(|| ActionError::bad_request("`queue` must be 1-64 of A-Z a-z 0-9 _ - ."))?,
        Some(_) => return Err(ActionError::bad_request("`queue` must be a string")),
    };
    if let Some(hours) = &broker.business_hours {
        hours
            .check(Utc::now())
            .map_err(|opens| ActionError::OutsideBusinessHours {
                opens_at: opens.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            })?;
    }

    let identity = &ctx.identity;
    let mut state = identity.lock();
    if let Some(engagement) = &state.engagement {
        return Err(ActionError::AlreadyEngaged {
            channel_sid: engagement.channel_sid.to_string(),
        });
    }
    let sid: Arc<str> = Arc::from(new_channel_sid());
    let started_at = now_rfc3339();
    let channel = Arc::new(Channel::new(
        sid.clone(),
        Arc::from(queue.as_str()),
        Some(identity.id.clone()),
        form_data.clone(),
        started_at.clone(),
        broker.history_window(),
    ));
    {
        let mut cs = channel.lock();
        cs.members.insert(identity.id.clone(), Role::Customer);
        for session in &state.sessions {
            cs.add_member_session(session, &identity.id);
        }
    }
    broker.channels.insert(sid.clone(), channel);
    state.channels.insert(sid.clone());
    state.engagement = Some(Engagement {
        channel_sid: sid.clone(),
        started_at: started_at.clone(),
    });
    broker.persist(
        Op::SaveChannel {
            sid: sid.clone(),
            queue: Arc::from(queue.as_str()),
            customer: Some(identity.id.clone()),
            form_data: form_data.to_string(),
            started_at: started_at.clone(),
        },
        None,
    );
    broker.persist(
        Op::AddMember {
            sid: sid.clone(),
            identity: identity.id.clone(),
            role: Role::Customer,
        },
        None,
    );
    broker.save_identity(identity, &state);

    let event = json!({
        "channelSid": sid,
        "identity": identity.id,
        "formData": form_data,
        "startedAt": started_at,
        "queue": queue,
    });
    let push = Push::new("engagementStarted", &event);
    state.push(&push, None);
    broker.with_queue(&queue, |qs| {
        qs.open.insert(
            sid.clone(),
            OpenEngagement {
                channel_sid: sid.clone(),
                identity: identity.id.clone(),
                form_data: form_data.clone(),
                started_at: started_at.clone(),
                members: vec![Member {
                    identity: identity.id.clone(),
                    role: Role::Customer,
                }],
            },
        );
        qs.broadcast(&push);
    });
    Ok(json!({ "channelSid": sid }))
}
