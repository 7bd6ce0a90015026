//! The server HTTP API under `/api/v1/` (contract: `http-api-v1.md`): what a
//! company's backends (CRM, bots, moderation, support tooling) call.
//!
//! Every state change goes through the engine seam (or, for
//! `POST /actions/{action}`, through the whole actions framework), exactly
//! as a session's command would, so the API works on every node of a
//! cluster and its pushes reach every session they concern.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::Response;
use crate::actions::ActionContext;
use crate::auth::{Principal, Role, MAX_IDENTITY_BYTES};
use crate::broker::Broker;
use crate::engine::{is_channel_sid, queue_channel, EngineError};
use crate::error::ActionError;

const JSON: &str = "application/json";
/// Most pages of a queue gathered for one answer (the engine's pages are
/// bounded; this bounds the answer).
const MAX_QUEUE_PAGES: usize = 100;

/// Answers a request for a path under `/api/`.
pub(crate) async fn handle(
    broker: &Arc<Broker>,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Response {
    let keys = &broker.config.api.keys;
    // No key configured: the API is off and does not say it exists.
    if keys.is_empty() {
        return error(ActionError::NotFound("no such resource".into()));
    }
    if let Err(e) = authorize(keys, headers) {
        return error(e).with_header("WWW-Authenticate", "Bearer");
    }
    match dispatch(broker, method, path, query, body).await {
        Ok(value) => {
            Response::new(200, JSON, value.to_string()).with_header("Cache-Control", "no-store")
        }
        Err(e) => error(e),
    }
}

/// The error body `{"error": {code, message, ...details}}` with the
/// contract's status for its code.
pub(crate) fn error(e: ActionError) -> Response {
    Response::new(
        e.http_status(),
        JSON,
        json!({ "error": e.to_wire() }).to_string(),
    )
    .with_header("Cache-Control", "no-store")
}

/// `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in
/// constant time against every configured key.
fn authorize(keys: &[String], headers: &hyper::HeaderMap) -> Result<(), ActionError> {
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
    let Some(presented) = presented else {
        return Err(ActionError::Unauthorized(
            "an API key is required (Authorization: Bearer <key>)".into(),
        ));
    };
    // Every key is compared, whichever matches, so timing says nothing.
    let matched = keys.iter().fold(false, |found, key| {
        found | constant_time_eq(key.as_bytes(), presented.as_bytes())
    });
    if matched {
        Ok(())
    } else {
        Err(ActionError::Unauthorized("the API key is not valid".into()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A path segment, percent-decoded (`+` stays a plus).
fn segment(raw: &str) -> Result<String, ActionError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ActionError::bad_request("malformed percent-encoding in the path")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ActionError::bad_request("the path is not UTF-8"))
}

fn not_found() -> ActionError {
    ActionError::NotFound("no such resource".into())
}

async fn dispatch(
    broker: &Arc<Broker>,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<Value, ActionError> {
    let rest = path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["actions", action]) => run_action(broker, &segment(action)?, body).await,
        ("GET", ["channels", sid]) => channel(broker, &segment(sid)?).await,
        ("GET", ["channels", sid, "messages"]) => messages(broker, &segment(sid)?, query).await,
        ("DELETE", ["channels", sid, "members", identity]) => {
            let sid = channel_sid(&segment(sid)?)?;
            let identity = segment(identity)?;
            broker
                .node
                .engine
                .remove_from_channel(&sid, &identity)
                .await?;
            Ok(json!({}))
        }
        ("POST", ["channels", sid, "end"]) => end(broker, &segment(sid)?, body).await,
        ("GET", ["queues", name]) => queue(broker, &segment(name)?).await,
        ("GET", ["identities", identity]) => {
            let report = broker
                .node
                .engine
                .identity_report(&segment(identity)?)
                .await?;
            Ok(serde_json::to_value(report).map_err(internal)?)
        }
        ("DELETE", ["identities", identity, "sessions"]) => {
            let closed = broker.node.engine.disconnect(&segment(identity)?).await?;
            Ok(json!({ "closed": closed }))
        }
        _ => Err(not_found()),
    }
}

fn internal(e: impl std::fmt::Display) -> ActionError {
    ActionError::Internal(e.to_string())
}

/// A request body as a JSON object (an empty body is `{}`).
fn object_body(body: &Bytes) -> Result<Map<String, Value>, ActionError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ActionError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ActionError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// A sid that cannot be a channel's is simply not found.
fn channel_sid(sid: &str) -> Result<String, ActionError> {
    if is_channel_sid(sid) {
        Ok(sid.to_owned())
    } else {
        Err(ActionError::NotFound(format!("no channel {sid:?}")))
    }
}

/// `POST /api/v1/actions/{action}` `{identity, role?, payload?}`.
async fn run_action(broker: &Arc<Broker>, action: &str, body: Bytes) -> Result<Value, ActionError> {
    let mut body = object_body(&body)?;
    let identity = match body.remove("identity") {
        Some(Value::String(identity))
            if !identity.is_empty()
                && identity.len() <= MAX_IDENTITY_BYTES
                && !identity.chars().any(char::is_control) =>
        {
            identity
        }
        Some(_) => {
            return Err(ActionError::bad_request(format!(
                "`identity` must be a string of 1 to {MAX_IDENTITY_BYTES} bytes without control characters"
            )))
        }
        None => return Err(ActionError::bad_request("`identity` is required")),
    };
    let role = match body.remove("role") {
        None | Some(Value::Null) => Role::Service,
        Some(Value::String(role)) => role
            .parse()
            .map_err(|()| ActionError::bad_request("`role` must be service, agent or customer"))?,
        Some(_) => {
            return Err(ActionError::bad_request(
                "`role` must be service, agent or customer",
            ))
        }
    };
    let payload = match body.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(payload @ Value::Object(_)) => payload,
        Some(_) => return Err(ActionError::bad_request("`payload` must be an object")),
    };
    if let Some(extra) = body.keys().next() {
        return Err(ActionError::bad_request(format!("unknown field `{extra}`")));
    }
    // Counted and timed like a session's command.
    let timer = crate::metrics::CommandTimer::start(Some(action));
    let outcome = run_as(broker, action, identity, role, payload).await;
    broker.metrics.command(timer, outcome.as_ref().err());
    Ok(json!({ "result": outcome? }))
}

async fn run_as(
    broker: &Arc<Broker>,
    action: &str,
    identity: String,
    role: Role,
    payload: Value,
) -> Result<Value, ActionError> {
    if !broker.actions.contains(action) {
        return Err(ActionError::UnknownAction(action.to_owned()));
    }
    let principal = Principal {
        identity,
        role,
        anonymous: false,
    };
    let actor = match broker.node.engine.identify(&principal).await {
        Ok(actor) => actor,
        // The identity exists with another role: the key is fine, the
        // request is not.
        Err(EngineError::Unauthorized(why)) => return Err(ActionError::Forbidden(why)),
        Err(e) => return Err(e.into()),
    };
    let ctx = ActionContext {
        node: broker.node.clone(),
        actions: broker.actions.clone(),
        actor,
        session: None,
        internal: false,
    };
    ctx.invoke(action, payload).await
}

async fn channel(broker: &Arc<Broker>, sid: &str) -> Result<Value, ActionError> {
    let sid = channel_sid(sid)?;
    let report = broker.node.engine.channel_report(&sid).await?;
    serde_json::to_value(report).map_err(internal)
}

/// `GET /api/v1/channels/{sid}/messages?before=&limit=`: as `GetMessages`.
async fn messages(
    broker: &Arc<Broker>,
    sid: &str,
    query: Option<&str>,
) -> Result<Value, ActionError> {
    let sid = channel_sid(sid)?;
    let param = |key: &str| {
        query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == key && !v.is_empty()).then_some(v)
            })
        })
    };
    let limit = match param("limit") {
        None => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(l) if (1..=100).contains(&l) => l,
            _ => {
                return Err(ActionError::bad_request(
                    "`limit` must be an integer from 1 to 100",
                ))
            }
        },
    };
    let before = match param("before") {
        None => u64::MAX,
        Some(b) => b.parse::<u64>().map_err(|_| {
            ActionError::bad_request("`before` must be a message index (a non-negative integer)")
        })?,
    };
    let page = broker
        .node
        .engine
        .channel_history(&sid, before, limit)
        .await?;
    Ok(crate::actions::get_messages::within_a_frame(page))
}

/// `POST /api/v1/channels/{sid}/end` `{reason?}`.
async fn end(broker: &Arc<Broker>, sid: &str, body: Bytes) -> Result<Value, ActionError> {
    let sid = channel_sid(sid)?;
    let mut body = object_body(&body)?;
    let max = crate::actions::end_engagement::MAX_REASON_BYTES;
    let reason = match body.remove("reason") {
        None | Some(Value::Null) => "ended".to_owned(),
        Some(Value::String(r)) if !r.is_empty() && r.len() <= max => r,
        Some(_) => {
            return Err(ActionError::bad_request(format!(
                "`reason` must be a string of 1 to {max} bytes"
            )))
        }
    };
    if let Some(extra) = body.keys().next() {
        return Err(ActionError::bad_request(format!("unknown field `{extra}`")));
    }
    broker
        .node
        .engine
        .end_engagement(None, &sid, &reason)
        .await?;
    Ok(json!({}))
}

/// `GET /api/v1/queues/{name}`: every open engagement, oldest first.
async fn queue(broker: &Arc<Broker>, name: &str) -> Result<Value, ActionError> {
    let bare = name
        .strip_prefix(crate::engine::QUEUE_PREFIX)
        .unwrap_or(name);
    let queue = queue_channel(bare).ok_or_else(|| {
        ActionError::NotFound(format!(
            "no queue {name:?} (a queue name is 1-64 of A-Z a-z 0-9 _ - .)"
        ))
    })?;
    let mut engagements = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_QUEUE_PAGES {
        let page = broker
            .node
            .engine
            .queue_page(&queue, after.as_deref())
            .await?;
        after = page.engagements.last().map(|e| e.channel_sid.to_string());
        engagements.extend(page.engagements);
        if !page.has_more || after.is_none() {
            break;
        }
    }
    Ok(json!({ "queue": queue, "engagements": engagements }))
}
