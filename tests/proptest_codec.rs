//! Property tests for the wire codec: encode/decode round trips in both
//! encodings, and decoding arbitrary or truncated bytes never panics.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use std::sync::Arc;

use switchboard::auth::Role;
use switchboard::codec::{
    as_inbound, decode_command, encode, encode_error, encode_result, payload_of, Command, Encoding,
    Inbound, Push, MAX_ACTION_BYTES,
};
use switchboard::store::{Attributes, StoredMessage};
use switchboard::validate::{check_msgpack, depth, MAX_FRAME_DEPTH};

/// Any JSON value (finite numbers only: JSON has no others), nested a few
/// levels.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Text that needs escaping often: quotes, backslashes, control
/// characters, DEL and non-ASCII among plain letters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z0-9 \"\\\\\x00-\x1f\x7fé€😀]{0,40}",
        any::<String>(),
    ]
}

fn message() -> impl Strategy<Value = StoredMessage> {
    (
        (text(), any::<u64>(), text(), 0..3u8),
        (text(), value(), text(), any::<i64>()),
    )
        .prop_map(
            |((sid, index, author, role), (body, attributes, date, ms))| StoredMessage {
                channel_sid: Arc::from(sid),
                index,
                author: Arc::from(author),
                author_role: [Role::Customer, Role::Agent, Role::Service][role as usize],
                body,
                attributes: Attributes::of(&attributes),
                date_created: date,
                created_ms: ms,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    (
        any::<u64>(),
        ".{1,16}".prop_filter("within the action limit", |a| a.len() <= MAX_ACTION_BYTES),
        prop::collection::btree_map(".{0,12}", value(), 0..6),
    )
        .prop_map(|(id, action, payload)| Command {
            id,
            action,
            payload: Value::Object(payload.into_iter().collect()),
        })
}

/// A reply as serde_json writes it.
#[derive(serde::Serialize)]
struct Reply<'a> {
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Value>,
}

fn frame(c: &Command) -> Value {
    serde_json::json!({"id": c.id, "action": c.action, "payload": c.payload})
}

proptest! {
    /// The hand-written `messageAdded` push is byte for byte what
    /// serde_json writes for it, in both encodings.
    #[test]
    fn message_pushes_are_what_serde_writes(m in message()) {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let by_hand = Push::new("messageAdded", &m).message_frame(encoding);
            let by_serde = Push::new("messageAdded", &m).frame(encoding);
            prop_assert_eq!(&by_hand, &by_serde);
            // The attributes, kept as JSON text, arrive as the map in both.
            let payload = switchboard::codec::payload_of(&by_hand);
            let pushed: Value = match encoding {
                Encoding::Json => serde_json::from_slice(&payload).unwrap(),
                Encoding::MsgPack => rmp_serde::from_slice(&payload).unwrap(),
            };
            prop_assert_eq!(&pushed["data"]["attributes"], &m.attributes.to_value());
        }
    }

    /// The hand-written JSON replies are byte for byte what serde_json
    /// writes for them.
    #[test]
    fn json_replies_are_what_serde_writes(id in any::<u64>(), v in value(), known in any::<bool>()) {
        let result = payload_of(&encode_result(Encoding::Json, id, &v));
        let by_serde = serde_json::to_vec(&Reply { id: Some(id), result: Some(&v), error: None }).unwrap();
        prop_assert_eq!(&result[..], &by_serde[..]);
        let id = known.then_some(id);
        let error = payload_of(&encode_error(Encoding::Json, id, &v));
        let by_serde = serde_json::to_vec(&Reply { id, result: None, error: Some(&v) }).unwrap();
        prop_assert_eq!(&error[..], &by_serde[..]);
    }

    #[test]
    fn commands_round_trip_in_both_encodings(c in command()) {
        for encoding in Encoding::ALL {
            let decoded = decode_command(encoding, &as_inbound(&encode(encoding, &frame(&c))));
            prop_assert_eq!(decoded.as_ref().map_err(|e| &e.message), Ok(&c), "{:?}", encoding);
        }
    }

    #[test]
    fn the_msgpack_guard_accepts_what_the_encoder_makes_and_measures_depth_alike(v in value()) {
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        let d = depth(&v, MAX_FRAME_DEPTH + 1);
        prop_assert_eq!(check_msgpack(&bytes, MAX_FRAME_DEPTH).is_ok(), d <= MAX_FRAME_DEPTH);
        if d > 0 {
            prop_assert!(check_msgpack(&bytes, d).is_ok());
            prop_assert!(check_msgpack(&bytes, d - 1).is_err());
        }
    }

    #[test]
    fn truncated_msgpack_commands_are_refused_cleanly(c in command(), cut in any::<prop::sample::Index>()) {
        let bytes = rmp_serde::to_vec_named(&frame(&c)).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(check_msgpack(&bytes[..cut], MAX_FRAME_DEPTH).is_err());
        prop_assert!(decode_command(Encoding::MsgPack, &Inbound::Binary(bytes[..cut].to_vec().into())).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_command(Encoding::MsgPack, &Inbound::Binary(bytes.clone().into()));
        let _ = check_msgpack(&bytes, MAX_FRAME_DEPTH);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = decode_command(Encoding::Json, &Inbound::Text(text.as_bytes().to_vec().into()));
    }
}
