//! Decoding a built-in action's payload into its typed form, with every
//! size and depth limit checked in this one place.
//!
//! A payload type is a serde type whose fields are [`Field`]s: a field that
//! is missing or of the wrong type does not fail deserialization; the
//! action's `check` turns it into the contract's error with a message
//! naming the field (`` `body` is required ``, `` `body` must be a string
//! ``), which is what clients see.

use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::ActionError;
use crate::store::Attributes;
use crate::validate::{depth, MAX_FRAME_DEPTH};

/// One field of a payload, as the client sent it.
#[derive(Debug, Clone, Default)]
pub(crate) enum Field<T> {
    #[default]
    Missing,
    /// Present, `null`.
    Null,
    /// Present, of another type.
    Invalid,
    Valid(T),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(Field::Null);
        }
        Ok(serde_json::from_value(value).map_or(Field::Invalid, Field::Valid))
    }
}

/// What a field must be, for its error message.
pub(crate) trait Kind {
    const WHAT: &'static str;
}

impl Kind for String {
    const WHAT: &'static str = "a string";
}

impl Kind for Map<String, Value> {
    const WHAT: &'static str = "a map";
}

impl Kind for u64 {
    const WHAT: &'static str = "a non-negative integer";
}

impl Kind for i64 {
    const WHAT: &'static str = "an integer";
}

impl<T: Kind> Field<T> {
    /// The value, which must be there.
    pub(crate) fn required(self, name: &str) -> Result<T, ActionError> {
        match self {
            Field::Valid(value) => Ok(value),
            Field::Missing | Field::Null => {
                Err(ActionError::bad_request(format!("`{name}` is required")))
            }
            Field::Invalid => Err(wrong_type::<T>(name)),
        }
    }

    /// The value if given (`null` is not given).
    pub(crate) fn optional(self, name: &str) -> Result<Option<T>, ActionError> {
        match self {
            Field::Valid(value) => Ok(Some(value)),
            Field::Missing | Field::Null => Ok(None),
            Field::Invalid => Err(wrong_type::<T>(name)),
        }
    }
}

fn wrong_type<T: Kind>(name: &str) -> ActionError {
    ActionError::bad_request(format!("`{name}` must be {}", T::WHAT))
}

/// Decodes a payload (always a map) into `P`.
pub(crate) fn decode<P: DeserializeOwned>(payload: Value) -> Result<P, ActionError> {
    serde_json::from_value(payload)
        .map_err(|e| ActionError::bad_request(format!("invalid payload: {e}")))
}

/// A string at most `max` bytes long (`too_large` otherwise).
pub(crate) fn bounded(name: &str, value: String, max: usize) -> Result<String, ActionError> {
    if value.len() > max {
        return Err(ActionError::TooLarge(format!(
            "`{name}` is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    Ok(value)
}

/// A message body or draft: within `max_body_bytes`.
pub(crate) fn body(name: &str, value: String, config: &Config) -> Result<String, ActionError> {
    bounded(name, value, config.limits.max_body_bytes)
}

/// A free-form map (`formData`): within the byte limit as JSON and the
/// nesting limit; `{}` when absent.
pub(crate) fn free_form(
    name: &str,
    field: Field<Map<String, Value>>,
    config: &Config,
) -> Result<Value, ActionError> {
    let Some(value) = non_empty_map(name, field, config)? else {
        return Ok(Value::Object(Map::new()));
    };
    within_bytes(name, crate::codec::encoded_len(&value), config)?;
    Ok(value)
}

/// `messageAttributes`: [`free_form`]'s checks, and the map as the JSON
/// text it is stored and sent as (serialized once, here).
pub(crate) fn attributes(
    name: &str,
    field: Field<Map<String, Value>>,
    config: &Config,
) -> Result<Attributes, ActionError> {
    let Some(value) = non_empty_map(name, field, config)? else {
        return Ok(Attributes::empty());
    };
    let attributes = Attributes::of(&value);
    within_bytes(name, attributes.json().len(), config)?;
    Ok(attributes)
}

/// A map field within the nesting limit; `None` when absent or empty
/// (nothing to measure).
fn non_empty_map(
    name: &str,
    field: Field<Map<String, Value>>,
    config: &Config,
) -> Result<Option<Value>, ActionError> {
    let Some(map) = field.optional(name)?.filter(|map| !map.is_empty()) else {
        return Ok(None);
    };
    let value = Value::Object(map);
    within_depth(name, &value, config)?;
    Ok(Some(value))
}

fn within_depth(name: &str, value: &Value, config: &Config) -> Result<(), ActionError> {
    let max_depth = config.validation.max_payload_depth;
    if depth(value, max_depth) > max_depth {
        return Err(ActionError::TooLarge(format!(
            "`{name}` is nested more than {max_depth} levels deep (validation.max_payload_depth)"
        )));
    }
    Ok(())
}

fn within_bytes(name: &str, bytes: usize, config: &Config) -> Result<(), ActionError> {
    let limit = config.limits.max_body_bytes;
    if bytes > limit {
        return Err(ActionError::TooLarge(format!(
            "`{name}` is {bytes} bytes as JSON; the limit is {limit}"
        )));
    }
    Ok(())
}

/// A `channelSid`: `CH` + 32 lowercase hex digits.
pub(crate) fn channel_sid(field: Field<String>) -> Result<String, ActionError> {
    let sid = field.required("channelSid")?;
    if !crate::engine::is_channel_sid(&sid) {
        let shown: String = sid.chars().take(40).collect();
        return Err(ActionError::bad_request(format!(
            "`channelSid` {shown:?} is not a channel sid (CH + 32 lowercase hex)"
        )));
    }
    Ok(sid)
}

/// A nested payload (`TriggerAction`'s): a map, not nested too deep.
pub(crate) fn nested_payload(field: Field<Map<String, Value>>) -> Result<Value, ActionError> {
    match field {
        Field::Missing | Field::Null => Ok(Value::Object(Map::new())),
        Field::Invalid => Err(ActionError::bad_request("`payload` must be a map")),
        Field::Valid(map) => {
            let value = Value::Object(map);
            if depth(&value, MAX_FRAME_DEPTH) > MAX_FRAME_DEPTH {
                return Err(ActionError::TooLarge("`payload` is nested too deep".into()));
            }
            Ok(value)
        }
    }
}
