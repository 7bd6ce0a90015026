//! `GetMessages {channelSid, before?, limit?}`: a page of a channel's
//! history, ascending: the newest `limit` (1-100, default 50) messages below
//! `before` (default: all), cut shorter when they would take more than
//! `codec::PAGE_BYTES` encoded, and whether older ones remain (`hasMore`).
//! Members and subscribers may read a channel; agents and services may also
//! read an ended engagement's transcript.

use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::{self, Field};
use super::{ActionContext, ActionError};
use crate::codec::{encoded_len, PAGE_BYTES};
use crate::engine::{HistoryPage, Pending};

const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetMessages {
    #[serde(default)]
    channel_sid: Field<String>,
    #[serde(default)]
    before: Field<u64>,
    #[serde(default)]
    limit: Field<u64>,
}

pub(super) fn run(ctx: &ActionContext, payload: Value) -> Result<Pending<Value>, ActionError> {
    let p: GetMessages = payload::decode(payload)?;
    let sid = payload::channel_sid(p.channel_sid)?;
    let limit = match p.limit {
        payload::Field::Missing | payload::Field::Null => DEFAULT_LIMIT,
        payload::Field::Valid(l) if (1..=MAX_LIMIT).contains(&l) => l,
        _ => {
            return Err(ActionError::bad_request(
                "`limit` must be an integer from 1 to 100",
            ))
        }
    } as usize;
    let before = match p.before {
        payload::Field::Missing | payload::Field::Null => u64::MAX,
        payload::Field::Valid(b) => b,
        payload::Field::Invalid => {
            return Err(ActionError::bad_request(
                "`before` must be a message index (a non-negative integer)",
            ))
        }
    };
    let session = ctx.session.as_ref().map(|s| s.key);
    let page = ctx
        .node
        .engine
        .history(&ctx.actor, session, &sid, before, limit);
    Ok(page.map(within_a_frame))
}

/// The page as sent: its newest messages that fit in `PAGE_BYTES` encoded
/// (never none), so that a page of large messages still fits in a frame.
pub(crate) fn within_a_frame(page: HistoryPage) -> Value {
    let messages = &page.messages;
    let mut start = messages.len();
    let mut bytes = 0;
    while start > 0 {
        let size = encoded_len(&*messages[start - 1]);
        if start < messages.len() && bytes + size > PAGE_BYTES {
            break;
        }
        bytes += size;
        start -= 1;
    }
    let kept: Vec<&crate::store::StoredMessage> = messages[start..].iter().map(|m| &**m).collect();
    json!({ "messages": kept, "hasMore": page.has_more || start > 0 })
}
