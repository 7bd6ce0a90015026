//! Wire encodings: decoding commands and encoding replies and pushes.
//!
//! Both encodings carry the same maps with the same camelCase keys; a command
//! is decoded into a `serde_json::Value` whichever encoding it came in, so
//! every action sees one shape. Everything the broker sends is encoded into
//! a complete WebSocket frame (see `ws`): a push at most once per encoding,
//! and that one `Bytes` is shared by every recipient (cloning it is a
//! reference-count bump) and handed to each socket as it is.

use std::cell::OnceCell;

pub use crate::ws::Inbound;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::store::StoredMessage;
use crate::validate;

/// The subprotocol a session picked at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    pub fn from_subprotocol(name: &str) -> Option<Encoding> {
        match name.trim() {
            "switchboard.v1.json" => Some(Encoding::Json),
            "switchboard.v1.msgpack" => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "switchboard.v1.json",
            Encoding::MsgPack => "switchboard.v1.msgpack",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// A decoded command frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: u64,
    pub action: String,
    /// Always an object (`{}` when the client sent none).
    pub payload: Value,
}

/// A frame that is not a well-formed command. `id` is set when it could be
/// read, so the error reply can carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Option<u64>,
    pub message: String,
}

impl DecodeError {
    fn new(id: Option<u64>, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            message: message.into(),
        }
    }
}

/// Longest action name accepted in a command.
pub const MAX_ACTION_BYTES: usize = 64;

/// Decodes one client frame in the session's encoding.
pub fn decode_command(encoding: Encoding, frame: &Inbound) -> Result<Command, DecodeError> {
    let value: Value = match (encoding, frame) {
        (Encoding::Json, Inbound::Text(text)) => {
            // serde_json stops at 128 levels on its own; the stricter bound
            // is checked on the result so both encodings share one limit.
            // (The frame reader has checked the text is UTF-8.)
            let value: Value = serde_json::from_slice(text)
                .map_err(|e| DecodeError::new(None, format!("invalid JSON: {e}")))?;
            if validate::depth(&value, validate::MAX_FRAME_DEPTH) > validate::MAX_FRAME_DEPTH {
                return Err(DecodeError::new(
                    None,
                    format!(
                        "invalid JSON: nesting deeper than {} levels",
                        validate::MAX_FRAME_DEPTH
                    ),
                ));
            }
            value
        }
        (Encoding::MsgPack, Inbound::Binary(bytes)) => {
            // Length prefixes and nesting are checked before anything is
            // allocated from them (see `validate::check_msgpack`).
            validate::check_msgpack(bytes, validate::MAX_FRAME_DEPTH)
                .map_err(|e| DecodeError::new(None, format!("invalid MessagePack: {e}")))?;
            rmp_serde::from_slice(bytes)
                .map_err(|e| DecodeError::new(None, format!("invalid MessagePack: {e}")))?
        }
        (Encoding::Json, _) => {
            return Err(DecodeError::new(
                None,
                "this session speaks switchboard.v1.json: send text frames",
            ))
        }
        (Encoding::MsgPack, _) => {
            return Err(DecodeError::new(
                None,
                "this session speaks switchboard.v1.msgpack: send binary frames",
            ))
        }
    };
    command_from_value(value)
}

fn command_from_value(value: Value) -> Result<Command, DecodeError> {
    let Value::Object(mut map) = value else {
        return Err(DecodeError::new(None, "a command must be a map"));
    };
    let id = match map.get("id") {
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let Some(id) = id else {
        return Err(DecodeError::new(None, "`id` must be an unsigned integer"));
    };
    let action = match map.remove("action") {
        // Action names are at most 64 bytes (custom ones are refused longer),
        // and a longer one would only be echoed back in `unknown_action`.
        Some(Value::String(action)) if action.len() > MAX_ACTION_BYTES => {
            return Err(DecodeError::new(
                Some(id),
                format!("`action` must be at most {MAX_ACTION_BYTES} bytes"),
            ))
        }
        Some(Value::String(action)) if !action.is_empty() => action,
        Some(_) => return Err(DecodeError::new(Some(id), "`action` must be a string")),
        None => return Err(DecodeError::new(Some(id), "`action` is missing")),
    };
    let payload = match map.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(payload @ Value::Object(_)) => payload,
        Some(_) => return Err(DecodeError::new(Some(id), "`payload` must be a map")),
    };
    Ok(Command {
        id,
        action,
        payload,
    })
}

/// Most bytes a reply's list (a history page, a queue's engagements, the
/// drafts in `Connect`) may take when encoded: far below the outbound frame
/// limit (`Limits::outbound_frame_bytes`), so that no reply the broker builds
/// can outgrow what a session can send. A list cut short says so
/// (`hasMore`).
pub const PAGE_BYTES: usize = 256 * 1024;

/// `value`'s encoded size as JSON, which bounds its MessagePack size too
/// within the margin between [`PAGE_BYTES`] and the outbound frame limit
/// (MessagePack is shorter for everything but short floats, which take 9
/// bytes there against at least 3 in JSON).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Encodes any serializable value in one encoding, as a complete WebSocket
/// frame (text for JSON, binary for MessagePack).
pub fn encode<T: Serialize + ?Sized>(encoding: Encoding, value: &T) -> Bytes {
    // Written after room for the frame header, so that framing copies
    // nothing. Serializing these types cannot fail: maps have string keys.
    let mut buf = crate::ws::payload_buffer(128);
    match encoding {
        Encoding::Json => {
            serde_json::to_writer(&mut buf, value).expect("wire frames serialize");
            crate::ws::finish(crate::ws::TEXT, buf)
        }
        Encoding::MsgPack => {
            rmp_serde::encode::write_named(&mut buf, value).expect("wire frames serialize");
            crate::ws::finish(crate::ws::BINARY, buf)
        }
    }
}

/// The payload of a frame [`encode`] built (tests and tools read frames
/// back with it).
pub fn payload_of(frame: &Bytes) -> Bytes {
    crate::ws::payload_of(frame)
}

/// A frame [`encode`] built, as a client sending the same bytes would be
/// read (round-trip tests and fuzzers use it).
pub fn as_inbound(frame: &Bytes) -> Inbound {
    let payload = payload_of(frame);
    if crate::ws::is_text(frame) {
        Inbound::Text(payload)
    } else {
        Inbound::Binary(payload)
    }
}

#[derive(Serialize)]
struct ReplyFrame<'a> {
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Value>,
}

/// `{"id": 7, "result": {…}}`
pub fn encode_result(encoding: Encoding, id: u64, result: &Value) -> Bytes {
    encode_reply(
        encoding,
        &ReplyFrame {
            id: Some(id),
            result: Some(result),
            error: None,
        },
    )
}

/// `{"id": 7, "error": {…}}`, with `"id": null` when the id was unreadable.
pub fn encode_error(encoding: Encoding, id: Option<u64>, error: &Value) -> Bytes {
    encode_reply(
        encoding,
        &ReplyFrame {
            id,
            result: None,
            error: Some(error),
        },
    )
}

fn encode_reply(encoding: Encoding, frame: &ReplyFrame<'_>) -> Bytes {
    match encoding {
        Encoding::Json => reply_json(frame),
        Encoding::MsgPack => encode(encoding, frame),
    }
}

/// A reply in JSON, written by hand: the same bytes serde_json writes
/// (tested), with strings through [`json_str`] (serde_json escapes a
/// string a byte at a time; every command's reply has a few).
fn reply_json(frame: &ReplyFrame<'_>) -> Bytes {
    let mut buf = crate::ws::payload_buffer(96);
    buf.extend_from_slice(b"{\"id\":");
    match frame.id {
        Some(id) => buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
    if let Some(result) = frame.result {
        buf.extend_from_slice(b",\"result\":");
        json_value(&mut buf, result);
    }
    if let Some(error) = frame.error {
        buf.extend_from_slice(b",\"error\":");
        json_value(&mut buf, error);
    }
    buf.push(b'}');
    crate::ws::finish(crate::ws::TEXT, buf)
}

/// `value` as serde_json writes it (compact, a map's keys in its order).
/// Recursion is bounded: every value a reply carries was built by the
/// broker or checked against the nesting limit when it came in.
fn json_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => json_str(buf, s),
        Value::Array(items) => {
            buf.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                json_value(buf, item);
            }
            buf.push(b']');
        }
        Value::Object(map) => {
            buf.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                json_str(buf, key);
                buf.push(b':');
                json_value(buf, item);
            }
            buf.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *buf, scalar).expect("a scalar serializes"),
    }
}

#[derive(Serialize)]
struct PushFrame<'a, T> {
    event: &'a str,
    data: &'a T,
}

/// A push, encoded lazily and at most once per encoding, then shared.
pub struct Push<'a, T: Serialize> {
    event: &'static str,
    data: PushData<'a, T>,
    frames: [OnceCell<Bytes>; 2],
}

enum PushData<'a, T> {
    Borrowed(&'a T),
    Owned(T),
}

impl<'a, T: Serialize> Push<'a, T> {
    pub fn new(event: &'static str, data: &'a T) -> Self {
        Push {
            event,
            data: PushData::Borrowed(data),
            frames: [OnceCell::new(), OnceCell::new()],
        }
    }

    /// A push whose data is made for it.
    pub fn owned(event: &'static str, data: T) -> Self {
        Push {
            event,
            data: PushData::Owned(data),
            frames: [OnceCell::new(), OnceCell::new()],
        }
    }

    fn data(&self) -> &T {
        match &self.data {
            PushData::Borrowed(data) => data,
            PushData::Owned(data) => data,
        }
    }

    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The push as a post-event webhook's JSON body:
    /// `{"event", "eventId", "timestamp", "data"}`.
    pub(crate) fn webhook_body(&self, event_id: &str, timestamp: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct WebhookBody<'a, T> {
            event: &'a str,
            event_id: &'a str,
            timestamp: &'a str,
            data: &'a T,
        }
        serde_json::to_string(&WebhookBody {
            event: self.event,
            event_id,
            timestamp,
            data: self.data(),
        })
        .expect("wire data serializes")
    }

    /// The frame for one encoding; the bytes are shared with every other
    /// recipient of the same encoding.
    pub fn frame(&self, encoding: Encoding) -> Bytes {
        self.frame_with(encoding, |encoding, push| encode(encoding, push))
    }

    /// [`Push::frame`], encoded by `encode_with` the first time.
    fn frame_with(
        &self,
        encoding: Encoding,
        encode_with: impl FnOnce(Encoding, &PushFrame<'_, T>) -> Bytes,
    ) -> Bytes {
        self.frames[encoding.slot()]
            .get_or_init(|| {
                encode_with(
                    encoding,
                    &PushFrame {
                        event: self.event,
                        data: self.data(),
                    },
                )
            })
            .clone()
    }
}

impl Push<'_, StoredMessage> {
    /// [`Push::frame`] for a message: in JSON written by hand, the same
    /// bytes serde_json writes (tested), because serde_json escapes a
    /// string a byte at a time and this push, made once per message, was
    /// an eighth of a chat's instructions. MessagePack as any push.
    pub fn message_frame(&self, encoding: Encoding) -> Bytes {
        self.frame_with(encoding, |encoding, push| match encoding {
            Encoding::Json => message_json(push.event, push.data),
            Encoding::MsgPack => encode(encoding, push),
        })
    }
}

/// `{"event":…,"data":{…}}` for a message, as serde_json would write it.
fn message_json(event: &str, m: &StoredMessage) -> Bytes {
    let mut buf = crate::ws::payload_buffer(
        160 + event.len() + m.channel_sid.len() + m.author.len() + m.body.len(),
    );
    buf.extend_from_slice(b"{\"event\":");
    json_str(&mut buf, event);
    buf.extend_from_slice(b",\"data\":{\"channelSid\":");
    json_str(&mut buf, &m.channel_sid);
    buf.extend_from_slice(b",\"index\":");
    buf.extend_from_slice(itoa::Buffer::new().format(m.index).as_bytes());
    buf.extend_from_slice(b",\"author\":");
    json_str(&mut buf, &m.author);
    buf.extend_from_slice(b",\"authorRole\":\"");
    buf.extend_from_slice(m.author_role.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"body\":");
    json_str(&mut buf, &m.body);
    buf.extend_from_slice(b",\"attributes\":");
    buf.extend_from_slice(m.attributes.json().as_bytes());
    buf.extend_from_slice(b",\"dateCreated\":");
    json_str(&mut buf, &m.date_created);
    buf.extend_from_slice(b"}}");
    crate::ws::finish(crate::ws::TEXT, buf)
}

/// A JSON string: copied as it is when nothing in it needs escaping (the
/// check looks at every byte without branching, so it runs many bytes per
/// instruction), else left to serde_json.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    let escapes = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        serde_json::to_writer(&mut *buf, s).expect("a string serializes");
    } else {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(s: &str) -> Inbound {
        Inbound::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn text_of(frame: &Bytes) -> String {
        assert!(crate::ws::is_text(frame), "a text frame");
        String::from_utf8(payload_of(frame).to_vec()).unwrap()
    }

    #[test]
    fn decodes_json_and_msgpack_alike() {
        let json_cmd = decode_command(
            Encoding::Json,
            &text(r#"{"id":7,"action":"SendMessage","payload":{"channelSid":"CHx","body":"hi"}}"#),
        )
        .unwrap();
        let packed = rmp_serde::to_vec_named(&json!({
            "id": 7, "action": "SendMessage", "payload": {"channelSid": "CHx", "body": "hi"}
        }))
        .unwrap();
        let msgpack_cmd =
            decode_command(Encoding::MsgPack, &Inbound::Binary(packed.into())).unwrap();
        assert_eq!(json_cmd, msgpack_cmd);
        assert_eq!(json_cmd.payload["body"], "hi");
    }

    #[test]
    fn missing_payload_is_an_empty_map() {
        let cmd =
            decode_command(Encoding::Json, &text(r#"{"id":1,"action":"GetActions"}"#)).unwrap();
        assert_eq!(cmd.payload, json!({}));
    }

    #[test]
    fn bad_frames_keep_the_id_when_readable() {
        let err = decode_command(Encoding::Json, &text("{nope")).unwrap_err();
        assert_eq!(err.id, None);
        let err = decode_command(Encoding::Json, &text(r#"{"id":3}"#)).unwrap_err();
        assert_eq!(err.id, Some(3));
        let err = decode_command(Encoding::Json, &text(r#"{"id":-1,"action":"X"}"#)).unwrap_err();
        assert_eq!(err.id, None);
        let err = decode_command(
            Encoding::Json,
            &text(r#"{"id":4,"action":"X","payload":[]}"#),
        )
        .unwrap_err();
        assert_eq!(err.id, Some(4));
        let err = decode_command(Encoding::MsgPack, &text(r#"{"id":4}"#)).unwrap_err();
        assert!(err.message.contains("binary"));
    }

    #[test]
    fn a_push_is_encoded_once_per_encoding_and_shared() {
        let data = json!({"channelSid": "CHx", "index": 0});
        let push = Push::new("messageAdded", &data);
        let (a, b) = (push.frame(Encoding::Json), push.frame(Encoding::Json));
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes");
        let v: Value = serde_json::from_str(&text_of(&a)).unwrap();
        assert_eq!(v, json!({"event": "messageAdded", "data": data}));
        let packed = push.frame(Encoding::MsgPack);
        assert!(
            !crate::ws::is_text(&packed),
            "msgpack pushes are binary frames"
        );
        let v: Value = rmp_serde::from_slice(&payload_of(&packed)).unwrap();
        assert_eq!(v["event"], "messageAdded");
    }

    #[test]
    fn replies() {
        let t = text_of(&encode_result(Encoding::Json, 9, &json!({})));
        assert_eq!(t, r#"{"id":9,"result":{}}"#);
        let t = text_of(&encode_error(
            Encoding::Json,
            None,
            &json!({"code": "bad_request"}),
        ));
        assert_eq!(t, r#"{"id":null,"error":{"code":"bad_request"}}"#);
    }
}
