//! Input checks that sit in front of decoding and dispatch.
//!
//! - [`check_msgpack`] walks a MessagePack frame's structure *before* it is
//!   decoded: every length prefix must fit in the bytes that are actually
//!   there, and nesting is bounded. A 20-byte frame claiming a 4 GiB string
//!   or a billion-element array is refused without allocating anything.
//!   (rmp-serde and serde are careful already; this makes the bound ours,
//!   explicit, and fuzzed, rather than an accident of their internals.)
//! - [`depth`] bounds the nesting of decoded values (JSON frames, and the
//!   free-form `formData` / `messageAttributes` maps).
//!
//! The per-action payload checks (field types, lengths, the free-form maps'
//! size and nesting) are made while each action decodes its typed payload
//! (`actions::payload`).

use serde::Deserialize;
use serde_json::Value;

/// Deepest nesting of maps and arrays in any command frame, the frame itself
/// counting as one. Far above what any real command needs (a command is 2
/// deep, `messageAttributes` adds `[validation] max_payload_depth`), far
/// below what could hurt the stack.
pub const MAX_FRAME_DEPTH: usize = 32;

/// Longest `token` / `resumeToken` accepted by `Connect` and `RefreshToken`.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// `[validation]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Deepest nesting inside `formData` and `messageAttributes` (the map
    /// itself is 1): `{"a": {"b": 1}}` is 2.
    pub max_payload_depth: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_payload_depth: 8,
        }
    }
}

impl ValidationConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_payload_depth == 0 || self.max_payload_depth >= MAX_FRAME_DEPTH - 2 {
            return Err(format!(
                "max_payload_depth must be between 1 and {}",
                MAX_FRAME_DEPTH - 3
            ));
        }
        Ok(())
    }
}

/// Checks that `bytes` hold exactly one MessagePack value whose length
/// prefixes all fit in the frame and whose nesting is at most `max_depth`.
/// Iterative, so a hostile frame cannot exhaust the stack either.
pub fn check_msgpack(bytes: &[u8], max_depth: usize) -> Result<(), String> {
    // Items still to read at each open level; the root is one item.
    let mut pending: Vec<u64> = vec![1];
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<u64, String> {
        let end = pos
            .checked_add(n)
            .filter(|&end| end <= bytes.len())
            .ok_or("MessagePack frame is truncated")?;
        let value = bytes[*pos..end]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64);
        *pos = end;
        Ok(value)
    };
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let marker = take(&mut pos, 1)? as u8;
        // (bytes of data to skip, child items that follow); containers are
        // the markers that open a level, empty or not.
        let container = matches!(marker, 0x80..=0x9f | 0xdc..=0xdf);
        let (skip, items): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * (marker & 0x0f) as u64),
            0x90..=0x9f => (0, (marker & 0x0f) as u64),
            0xa0..=0xbf => ((marker & 0x1f) as u64, 0),
            0xc4 | 0xd9 => (take(&mut pos, 1)?, 0),
            0xc5 | 0xda => (take(&mut pos, 2)?, 0),
            0xc6 | 0xdb => (take(&mut pos, 4)?, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xdc => (0, take(&mut pos, 2)?),
            0xdd => (0, take(&mut pos, 4)?),
            0xde => (0, 2 * take(&mut pos, 2)?),
            0xdf => (0, 2 * take(&mut pos, 4)?),
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                return Err("MessagePack extension types are not part of the protocol".into())
            }
            0xc1 => return Err("invalid MessagePack marker 0xc1".into()),
        };
        let left = (bytes.len() - pos) as u64;
        if skip > left {
            return Err(format!(
                "MessagePack value claims {skip} bytes but only {left} remain in the frame"
            ));
        }
        pos += skip as usize;
        if container {
            // Every item takes at least one byte.
            let left = (bytes.len() - pos) as u64;
            if items > left {
                return Err(format!(
                    "MessagePack container claims {items} items but only {left} bytes remain in the frame"
                ));
            }
            // `pending` holds the root slot plus one entry per open level.
            if pending.len() > max_depth {
                return Err(format!("nesting deeper than {max_depth} levels"));
            }
            pending.push(items);
        }
    }
    if pos != bytes.len() {
        return Err(format!(
            "{} bytes after the end of the command",
            bytes.len() - pos
        ));
    }
    Ok(())
}

/// Nesting depth of a value: a scalar is 0, `{}` and `[]` are 1, `{"a": []}`
/// is 2. Iterative (a value built in code may be deeper than any stack),
/// one iterator per open level and no allocation for a flat value; stops
/// counting once past `limit`. Every JSON command passes through here.
pub fn depth(value: &Value, limit: usize) -> usize {
    let Some(mut current) = Children::of(value) else {
        return 0;
    };
    let mut deepest = 1;
    // The levels above `current`, outermost first.
    let mut open: Vec<Children<'_>> = Vec::new();
    loop {
        match current.next() {
            Some(child) => {
                if let Some(inner) = Children::of(child) {
                    deepest = deepest.max(open.len() + 2);
                    if deepest > limit {
                        return deepest;
                    }
                    open.push(std::mem::replace(&mut current, inner));
                }
            }
            None => match open.pop() {
                Some(outer) => current = outer,
                None => return deepest,
            },
        }
    }
}

/// The values directly inside an array or a map.
enum Children<'a> {
    Items(std::slice::Iter<'a, Value>),
    Fields(serde_json::map::Values<'a>),
}

impl<'a> Children<'a> {
    fn of(value: &'a Value) -> Option<Children<'a>> {
        match value {
            Value::Array(items) => Some(Children::Items(items.iter())),
            Value::Object(map) => Some(Children::Fields(map.values())),
            _ => None,
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = &'a Value;

    fn next(&mut self) -> Option<&'a Value> {
        match self {
            Children::Items(items) => items.next(),
            Children::Fields(fields) => fields.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packed(v: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn well_formed_msgpack_passes() {
        let v = json!({"id": 1, "action": "SendMessage", "payload": {"channelSid": "CHx",
            "body": "x".repeat(300), "n": [1, -1, 1.5, null, true, u64::MAX, i64::MIN]}});
        check_msgpack(&packed(&v), MAX_FRAME_DEPTH).unwrap();
    }

    #[test]
    fn allocation_bombs_and_truncation_are_refused() {
        // str32 claiming 4 GiB
        let e = check_msgpack(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], 32).unwrap_err();
        assert!(e.contains("claims 4294967295 bytes"), "{e}");
        // array32 claiming 4 billion items
        let e = check_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], 32).unwrap_err();
        assert!(e.contains("claims 4294967295 items"), "{e}");
        // map32: 2 × items
        assert!(check_msgpack(&[0xdf, 0xff, 0xff, 0xff, 0xff], 32).is_err());
        assert!(
            check_msgpack(&[0xda, 0x00], 32).is_err(),
            "truncated length"
        );
        assert!(check_msgpack(&[], 32).is_err());
        assert!(check_msgpack(&[0xc1], 32).is_err());
        assert!(check_msgpack(&[0xd4, 0x01, 0x02], 32).is_err(), "ext");
        assert!(check_msgpack(&[0x01, 0x02], 32).is_err(), "trailing");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| {
            let mut bytes = vec![0x91; n];
            bytes.push(0x01);
            bytes
        };
        assert!(check_msgpack(&deep(32), 32).is_ok());
        assert!(check_msgpack(&deep(33), 32).is_err());
        assert!(check_msgpack(&deep(100_000), 32).is_err());
        assert_eq!(depth(&json!(1), 8), 0);
        assert_eq!(depth(&json!({"a": [{"b": {}}]}), 8), 4);
        assert_eq!(depth(&json!({}), 8), 1);
        // The deepest branch counts, wherever it is among its siblings.
        assert_eq!(depth(&json!({"a": 1, "b": [[]], "c": {}}), 8), 3);
        assert_eq!(depth(&json!([[], [[[]]], 2]), 8), 4);
        assert_eq!(depth(&json!([[[[]]], []]), 8), 4);
        let mut v = json!(1);
        for _ in 0..20 {
            v = json!([v]);
        }
        assert!(depth(&v, 8) > 8);
    }
}
