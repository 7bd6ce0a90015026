//! `GetMessages {channelSid, before?, limit?}`: a page of a channel's
//! history, ascending: the newest `limit` (1-100, default 50) messages below
//! `before` (default: all), and whether older ones remain (`hasMore`).
//! Members and subscribers may read a channel; agents and services may also
//! read an ended engagement's transcript.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{channel_sid, ActionContext, ActionResult};
use crate::codec::{encoded_len, PAGE_BYTES};
use crate::error::ActionError;
use crate::store::{Store, StoredMessage};

const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 100;

pub(super) fn run(ctx: &ActionContext, payload: &Value) -> ActionResult {
    let sid = channel_sid(payload)?;
    let limit = match payload.get("limit") {
        None | Some(Value::Null) => DEFAULT_LIMIT,
        Some(v) => v
            .as_u64()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ActionError::bad_request("`limit` must be an integer from 1 to 100"))?,
    } as usize;
    let before = match payload.get("before") {
        None | Some(Value::Null) => u64::MAX,
        Some(v) => v.as_u64().ok_or_else(|| {
            ActionError::bad_request("`before` must be a message index (a non-negative integer)")
        })?,
    };
    let staff = ctx.role().is_staff();
    let denied = || ActionError::NotAMember(sid.to_owned());

    let (messages, has_more) = match ctx.broker.channel(sid) {
        Some(channel) => {
            let cs = channel.lock();
            let member = cs.members.contains_key(&ctx.identity.id);
            let subscriber = ctx
                .session
                .as_ref()
                .is_some_and(|s| cs.recipients.get(&s.key).is_some_and(|r| r.subscribed));
            if !(member || subscriber || (staff && cs.closed)) {
                return Err(denied());
            }
            let to = before.min(cs.delivered_next);
            match &ctx.broker.store {
                // The in-memory window answers whenever it holds the whole
                // page and can tell whether older messages exist (it starts
                // at index 0, or below the page): the newest pages, which
                // consoles ask for, then cost no disk read.
                Some(_)
                    if cs.history_start() == 0
                        || cs.history_start() < to.saturating_sub(limit as u64) =>
                {
                    page_from_window(&cs.history, to, limit)
                }
                None => page_from_window(&cs.history, to, limit),
                Some(store) => {
                    drop(cs);
                    page_from_store(store, sid, to, limit)?
                }
            }
        }
        // Not in memory: with a store, an ended engagement's transcript.
        None => {
            let store = ctx.broker.store.as_ref().filter(|_| staff).ok_or_else(|| {
                if staff {
                    ActionError::NotFound(format!("no channel {sid}"))
                } else {
                    denied()
                }
            })?;
            let next = store
                .ended_channel(sid)
                .map_err(|e| ActionError::Internal(e.to_string()))?
                .ok_or_else(|| ActionError::NotFound(format!("no channel {sid}")))?;
            page_from_store(store, sid, before.min(next), limit)?
        }
    };
    Ok(json!({ "messages": messages, "hasMore": has_more }))
}

fn page_from_window(
    history: &VecDeque<Arc<StoredMessage>>,
    to: u64,
    limit: usize,
) -> (Vec<Value>, bool) {
    let below: Vec<&StoredMessage> = history
        .iter()
        .filter(|m| m.index < to)
        .map(|m| &**m)
        .collect();
    newest_page(&below, limit)
}

fn page_from_store(
    store: &Store,
    sid: &str,
    to: u64,
    limit: usize,
) -> Result<(Vec<Value>, bool), ActionError> {
    // One more than the page, to tell whether older ones remain.
    let rows = store
        .messages(sid, 0, to, limit + 1)
        .map_err(|e| ActionError::Internal(e.to_string()))?;
    let rows: Vec<&StoredMessage> = rows.iter().collect();
    Ok(newest_page(&rows, limit))
}

/// The newest messages of `below` (ascending) that make one page: at most
/// `limit` of them, and no more than `codec::PAGE_BYTES` once encoded (but
/// never none), so that a page of large messages still fits in a frame.
/// `hasMore` is whether any of `below` was left out.
fn newest_page(below: &[&StoredMessage], limit: usize) -> (Vec<Value>, bool) {
    let mut start = below.len();
    let mut bytes = 0;
    while start > 0 && below.len() - start < limit {
        let size = encoded_len(below[start - 1]);
        if start < below.len() && bytes + size > PAGE_BYTES {
            break;
        }
        bytes += size;
        start -= 1;
    }
    let page = below[start..]
        .iter()
        .map(|m| serde_json::to_value(m).expect("messages serialize"))
        .collect();
    (page, start > 0)
}
