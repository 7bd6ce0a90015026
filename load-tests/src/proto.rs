//! Protocol v1 frames: encoding commands and decoding replies/pushes, in JSON
//! or MessagePack, with as little allocation as the hot path allows.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

/// Wire encoding, chosen with the WebSocket subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Json,
    Msgpack,
}

impl Encoding {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "switchboard.v1.json",
            Encoding::Msgpack => "switchboard.v1.msgpack",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        })
    }
}

#[derive(Serialize)]
struct Command<'a, P: Serialize> {
    id: u64,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<P>,
}

/// Encode one command frame.
pub fn encode<P: Serialize>(enc: Encoding, id: u64, action: &str, payload: Option<P>) -> Message {
    let cmd = Command {
        id,
        action,
        payload,
    };
    match enc {
        Encoding::Json => {
            let s = serde_json::to_string(&cmd).expect("commands always serialize");
            Message::Text(s.into())
        }
        Encoding::Msgpack => {
            let v = rmp_serde::to_vec_named(&cmd).expect("commands always serialize");
            Message::Binary(v.into())
        }
    }
}

// ---- the two servers -----------------------------------------------------

/// The server the harness talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// The Switchboard broker (protocol v1).
    Switchboard,
    /// The uWebSockets.js comparison peer (`load-tests/peers/uws`): a tiny JSON
    /// pub/sub protocol in protocol v1's envelope, JSON only.
    Uws,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Switchboard => "switchboard",
            ServerKind::Uws => "uws",
        })
    }
}

impl ServerKind {
    /// The WebSocket subprotocol to offer (the peer negotiates none).
    pub fn subprotocol(self, enc: Encoding) -> Option<&'static str> {
        match self {
            ServerKind::Switchboard => Some(enc.subprotocol()),
            ServerKind::Uws => None,
        }
    }
}

/// What a scenario asks of a server. Each server kind has its own command
/// for it; the scenarios are written once against these.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Identify: a token for a Switchboard agent, a name for a peer agent;
    /// neither for an anonymous customer.
    Connect {
        token: Option<&'a str>,
        identity: Option<&'a str>,
    },
    /// Open a new channel for this session: `StartEngagement` (the broker
    /// picks the sid), or a subscription to the topic `name` on the peer.
    StartChannel { name: &'a str },
    /// Become a member of a channel: `JoinChannel` / `subscribe`.
    Join { sid: &'a str },
    /// Watch a channel without being a member: `Subscribe` / `subscribe`.
    Observe { sid: &'a str },
    /// Send a message carrying the harness's send time `t`.
    SendMessage { sid: &'a str, body: &'a str, t: u64 },
    /// Tell the channel this session is typing.
    SendTyping { sid: &'a str },
}

impl Op<'_> {
    /// The command's action name on `kind`'s wire (also how errors are counted).
    pub fn action(&self, kind: ServerKind) -> &'static str {
        use ServerKind::*;
        match (kind, self) {
            (Switchboard, Op::Connect { .. }) => "Connect",
            (Switchboard, Op::StartChannel { .. }) => "StartEngagement",
            (Switchboard, Op::Join { .. }) => "JoinChannel",
            (Switchboard, Op::Observe { .. }) => "Subscribe",
            (Switchboard, Op::SendMessage { .. }) => "SendMessage",
            (Switchboard, Op::SendTyping { .. }) => "SendTyping",
            (Uws, Op::Connect { .. }) => "hello",
            (Uws, Op::StartChannel { .. } | Op::Join { .. } | Op::Observe { .. }) => "subscribe",
            (Uws, Op::SendMessage { .. }) => "publish",
            (Uws, Op::SendTyping { .. }) => "typing",
        }
    }

    /// The command frame for `kind`.
    pub fn encode(&self, kind: ServerKind, enc: Encoding, id: u64) -> Message {
        let action = self.action(kind);
        match (kind, *self) {
            (ServerKind::Switchboard, Op::Connect { token, .. }) => {
                encode(enc, id, action, Some(ConnectP { token }))
            }
            (ServerKind::Uws, Op::Connect { identity, .. }) => {
                encode(enc, id, action, Some(HelloP { identity }))
            }
            (ServerKind::Switchboard, Op::StartChannel { .. }) => {
                encode::<()>(enc, id, action, None)
            }
            (ServerKind::Switchboard, Op::Observe { sid }) => {
                encode(enc, id, action, Some(SubscribeP { channel: sid }))
            }
            (ServerKind::Uws, Op::StartChannel { name: sid })
            | (ServerKind::Uws, Op::Observe { sid })
            | (_, Op::Join { sid })
            | (_, Op::SendTyping { sid }) => {
                encode(enc, id, action, Some(ChannelSidP { channel_sid: sid }))
            }
            (_, Op::SendMessage { sid, body, t }) => encode(
                enc,
                id,
                action,
                Some(SendMessageP {
                    channel_sid: sid,
                    body,
                    message_attributes: TimeAttr { t },
                }),
            ),
        }
    }
}

// ---- payloads -------------------------------------------------------------

#[derive(Serialize)]
pub struct ConnectP<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<&'a str>,
}

/// The peer's `hello`.
#[derive(Serialize)]
pub struct HelloP<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSidP<'a> {
    pub channel_sid: &'a str,
}

#[derive(Serialize)]
pub struct SubscribeP<'a> {
    pub channel: &'a str,
}

/// `messageAttributes` of the harness: `t` is the send time, nanoseconds on
/// the harness's monotonic clock (since the harness started).
#[derive(Serialize)]
pub struct TimeAttr {
    pub t: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageP<'a> {
    pub channel_sid: &'a str,
    pub body: &'a str,
    pub message_attributes: TimeAttr,
}

// ---- incoming -------------------------------------------------------------

/// A string that borrows from the frame when it can (no escapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                std::str::from_utf8(v)
                    .map(|s| Str(Cow::Borrowed(s)))
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A number that may come as an unsigned, signed or float value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl Num {
    pub fn as_u64(self) -> u64 {
        if self.0 <= 0.0 {
            0
        } else {
            self.0 as u64
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `attributes` of a `messageAdded`; only the harness's own `t` is read.
/// Anything that is not a map (or a map without `t`) reads as no time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attrs {
    pub t: Option<u64>,
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attrs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("message attributes")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Attrs, A::Error> {
                let mut out = Attrs::default();
                while let Some(k) = m.next_key::<Str<'de>>()? {
                    if k.as_str() == "t" {
                        // A `t` that is not a number is simply not ours.
                        let v: Option<NumOrAny> = m.next_value()?;
                        if let Some(NumOrAny::Num(n)) = v {
                            out.t = Some(n.as_u64());
                        }
                    } else {
                        m.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Attrs, D2::Error> {
                d.deserialize_any(V)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Attrs, E> {
                Ok(Attrs::default())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Attrs, A::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Attrs::default())
            }
        }
        d.deserialize_any(V)
    }
}

enum NumOrAny {
    Num(Num),
    Other,
}

impl<'de> Deserialize<'de> for NumOrAny {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NumOrAny;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumOrAny, E> {
                Ok(NumOrAny::Num(Num(v as f64)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumOrAny, E> {
                Ok(NumOrAny::Num(Num(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumOrAny, E> {
                Ok(NumOrAny::Num(Num(v)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<NumOrAny, E> {
                Ok(NumOrAny::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NumOrAny, E> {
                Ok(NumOrAny::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<NumOrAny, E> {
                Ok(NumOrAny::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<NumOrAny, A::Error> {
                while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(NumOrAny::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<NumOrAny, A::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(NumOrAny::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The fields of a `result` or a push's `data` that the harness reads.
/// Every other field is skipped without being materialised.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Body<'a> {
    #[serde(borrow)]
    pub channel_sid: Option<Str<'a>>,
    pub index: Option<Num>,
    #[serde(borrow)]
    pub author: Option<Str<'a>>,
    pub attributes: Option<Attrs>,
    pub last_index: Option<Num>,
    #[serde(borrow)]
    pub identity: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrBody<'a> {
    #[serde(borrow)]
    pub code: Option<Str<'a>>,
    #[serde(borrow)]
    pub message: Option<Str<'a>>,
}

/// Any server frame: a reply (`id` + `result`|`error`) or a push
/// (`event` + `data`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Incoming<'a> {
    pub id: Option<u64>,
    #[serde(borrow)]
    pub event: Option<Str<'a>>,
    #[serde(borrow)]
    pub data: Option<Body<'a>>,
    #[serde(borrow)]
    pub result: Option<Body<'a>>,
    #[serde(borrow)]
    pub error: Option<ErrBody<'a>>,
}

impl Incoming<'_> {
    pub fn is_reply(&self) -> bool {
        self.event.is_none() && (self.result.is_some() || self.error.is_some())
    }
    pub fn error_code(&self) -> Option<&str> {
        self.error
            .as_ref()
            .map(|e| e.code.as_ref().map(|c| c.as_str()).unwrap_or("?"))
    }
}

/// What kind of frame arrived, decoded.
#[allow(clippy::large_enum_variant)]
pub enum Decoded<'a> {
    Frame(Incoming<'a>),
    /// Ping/pong and other control frames: nothing to do.
    Control,
    /// Close frame, with its code when there was one.
    Close(Option<u16>),
}

/// Decode one WebSocket message. `Err` carries a short reason.
pub fn decode(msg: &Message) -> Result<Decoded<'_>, String> {
    match msg {
        Message::Text(t) => serde_json::from_str::<Incoming>(t.as_str())
            .map(Decoded::Frame)
            .map_err(|e| format!("json: {e}")),
        Message::Binary(b) => rmp_serde::from_slice::<Incoming>(b)
            .map(Decoded::Frame)
            .map_err(|e| format!("msgpack: {e}")),
        Message::Close(c) => Ok(Decoded::Close(c.as_ref().map(|c| u16::from(c.code)))),
        _ => Ok(Decoded::Control),
    }
}

/// Whether a frame's type matches the negotiated encoding.
pub fn frame_matches(enc: Encoding, msg: &Message) -> bool {
    match msg {
        Message::Text(_) => enc == Encoding::Json,
        Message::Binary(_) => enc == Encoding::Msgpack,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_command_shape() {
        let m = encode(
            Encoding::Json,
            7,
            "SendMessage",
            Some(SendMessageP {
                channel_sid: "CHabc",
                body: "hi",
                message_attributes: TimeAttr { t: 42 },
            }),
        );
        let Message::Text(t) = m else { panic!() };
        assert_eq!(
            t.as_str(),
            r#"{"id":7,"action":"SendMessage","payload":{"channelSid":"CHabc","body":"hi","messageAttributes":{"t":42}}}"#
        );
        let m = encode::<()>(Encoding::Json, 8, "RestartEngagement", None);
        let Message::Text(t) = m else { panic!() };
        assert_eq!(t.as_str(), r#"{"id":8,"action":"RestartEngagement"}"#);
    }

    fn text(m: Message) -> String {
        match m {
            Message::Text(t) => t.as_str().to_string(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn switchboard_commands_are_protocol_v1() {
        let sb = ServerKind::Switchboard;
        let e = |op: Op, id| text(op.encode(sb, Encoding::Json, id));
        assert_eq!(
            e(
                Op::Connect {
                    token: None,
                    identity: Some("ignored")
                },
                1
            ),
            r#"{"id":1,"action":"Connect","payload":{}}"#
        );
        assert_eq!(
            e(
                Op::Connect {
                    token: Some("jwt"),
                    identity: None
                },
                2
            ),
            r#"{"id":2,"action":"Connect","payload":{"token":"jwt"}}"#
        );
        assert_eq!(
            e(Op::StartChannel { name: "ignored" }, 3),
            r#"{"id":3,"action":"StartEngagement"}"#
        );
        assert_eq!(
            e(Op::Join { sid: "CH1" }, 4),
            r#"{"id":4,"action":"JoinChannel","payload":{"channelSid":"CH1"}}"#
        );
        assert_eq!(
            e(Op::Observe { sid: "CH1" }, 5),
            r#"{"id":5,"action":"Subscribe","payload":{"channel":"CH1"}}"#
        );
        assert_eq!(
            e(
                Op::SendMessage {
                    sid: "CH1",
                    body: "hi",
                    t: 42
                },
                6
            ),
            r#"{"id":6,"action":"SendMessage","payload":{"channelSid":"CH1","body":"hi","messageAttributes":{"t":42}}}"#
        );
        assert_eq!(
            e(Op::SendTyping { sid: "CH1" }, 7),
            r#"{"id":7,"action":"SendTyping","payload":{"channelSid":"CH1"}}"#
        );
        assert_eq!(
            ServerKind::Switchboard.subprotocol(Encoding::Msgpack),
            Some("switchboard.v1.msgpack")
        );
        // MessagePack carries the same map.
        let Message::Binary(b) = Op::Join { sid: "CH1" }.encode(sb, Encoding::Msgpack, 4) else {
            panic!()
        };
        let v: serde_json::Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 4, "action": "JoinChannel", "payload": {"channelSid": "CH1"}})
        );
    }

    #[test]
    fn uws_peer_commands() {
        let u = ServerKind::Uws;
        let e = |op: Op, id| text(op.encode(u, Encoding::Json, id));
        assert_eq!(
            e(
                Op::Connect {
                    token: Some("ignored"),
                    identity: None
                },
                1
            ),
            r#"{"id":1,"action":"hello","payload":{}}"#
        );
        assert_eq!(
            e(
                Op::Connect {
                    token: None,
                    identity: Some("load-1-agent-0")
                },
                2
            ),
            r#"{"id":2,"action":"hello","payload":{"identity":"load-1-agent-0"}}"#
        );
        for op in [
            Op::StartChannel {
                name: "load-1-eng-0",
            },
            Op::Join {
                sid: "load-1-eng-0",
            },
            Op::Observe {
                sid: "load-1-eng-0",
            },
        ] {
            assert_eq!(
                e(op, 3),
                r#"{"id":3,"action":"subscribe","payload":{"channelSid":"load-1-eng-0"}}"#
            );
        }
        assert_eq!(
            e(
                Op::SendMessage {
                    sid: "T",
                    body: "x\"y",
                    t: 9
                },
                4
            ),
            r#"{"id":4,"action":"publish","payload":{"channelSid":"T","body":"x\"y","messageAttributes":{"t":9}}}"#
        );
        assert_eq!(
            e(Op::SendTyping { sid: "T" }, 5),
            r#"{"id":5,"action":"typing","payload":{"channelSid":"T"}}"#
        );
        assert_eq!(u.subprotocol(Encoding::Json), None);
    }

    #[test]
    fn decodes_uws_peer_frames() {
        // Frames exactly as load-tests/peers/uws/server.js writes them.
        let push = r#"{"event":"messageAdded","data":{"channelSid":"T","index":0,"author":"anon-1","authorRole":"customer","body":"hi","attributes":{"t":5},"dateCreated":"2026-11-25T22:46:21.180Z"}}"#;
        let msg = Message::Text(push.into());
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert!(!f.is_reply());
        let d = f.data.as_ref().unwrap();
        assert_eq!(d.author.as_ref().unwrap().as_str(), "anon-1");
        assert_eq!(d.attributes.unwrap().t, Some(5));
        let msg = Message::Text(r#"{"id":2,"result":{"channelSid":"T","lastIndex":-1}}"#.into());
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert!(f.is_reply());
        assert_eq!(f.result.as_ref().unwrap().last_index, Some(Num(-1.0)));
        let msg = Message::Text(r#"{"id":1,"result":{"identity":"anon-7"}}"#.into());
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert_eq!(f.result.unwrap().identity.unwrap().as_str(), "anon-7");
        let msg = Message::Text(
            r#"{"id":3,"error":{"code":"not_a_member","message":"publish needs a subscription to the topic"}}"#.into(),
        );
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert_eq!(f.error_code(), Some("not_a_member"));
    }

    #[test]
    fn decode_push_json_and_msgpack() {
        let json = r#"{"event":"messageAdded","data":{"channelSid":"CH01","index":3,"author":"a","authorRole":"customer","body":"x\"y","attributes":{"t":123,"other":[1,2]},"dateCreated":"2024-01-01T00:00:00Z"}}"#;
        let msg = Message::Text(json.into());
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert_eq!(f.event.as_ref().unwrap().as_str(), "messageAdded");
        let d = f.data.as_ref().unwrap();
        assert_eq!(d.index.unwrap().as_u64(), 3);
        assert_eq!(d.attributes.unwrap().t, Some(123));
        assert_eq!(d.channel_sid.as_ref().unwrap().as_str(), "CH01");

        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let bin = rmp_serde::to_vec_named(&v).unwrap();
        let msg = Message::Binary(bin.into());
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        let d = f.data.as_ref().unwrap();
        assert_eq!(d.index.unwrap().as_u64(), 3);
        assert_eq!(d.attributes.unwrap().t, Some(123));
    }

    #[test]
    fn decode_replies() {
        let msg = Message::Text(
            r#"{"id":null,"error":{"code":"bad_request","message":"no \"id\""}}"#.into(),
        );
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert!(f.is_reply());
        assert_eq!(f.id, None);
        assert_eq!(f.error_code(), Some("bad_request"));
        let msg = Message::Text(
            r#"{"id":2,"result":{"channelSid":"CH1","members":[{"identity":"x","role":"agent"}],"lastIndex":-1}}"#.into(),
        );
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert_eq!(f.result.as_ref().unwrap().last_index, Some(Num(-1.0)));
        // attributes that are null or not ours
        let msg = Message::Text(
            r#"{"event":"messageAdded","data":{"index":0,"attributes":null}}"#.into(),
        );
        let Ok(Decoded::Frame(f)) = decode(&msg) else {
            panic!()
        };
        assert_eq!(f.data.unwrap().attributes.unwrap_or_default().t, None);
        let msg = Message::Text(
            r#"{"event":"messageAdded","data":{"index":0,"attributes":{"t":"x"}}}"#.into(),
        );
        assert!(matches!(decode(&msg), Ok(Decoded::Frame(_))));
    }
}
