//! Errors an action can end with, and the one place they become the wire
//! contract's error codes.

use serde_json::{Map, Value};

/// Why a command failed. Each variant is one of the contract's error codes;
/// [`ActionError::code`] is the only mapping from Rust to wire.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    BadRequest(String),
    #[error("send Connect first")]
    NotConnected,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error("{0}")]
    NotFound(String),
    #[error("not a member of {0}")]
    NotAMember(String),
    #[error("already in engagement {channel_sid}")]
    AlreadyEngaged { channel_sid: String },
    #[error("no active engagement")]
    NoEngagement,
    #[error("outside business hours")]
    OutsideBusinessHours { opens_at: Option<String> },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ActionError {
    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::BadRequest(_) => "bad_request",
            ActionError::NotConnected => "not_connected",
            ActionError::Unauthorized(_) => "unauthorized",
            ActionError::Forbidden(_) => "forbidden",
            ActionError::UnknownAction(_) => "unknown_action",
            ActionError::NotFound(_) => "not_found",
            ActionError::NotAMember(_) => "not_a_member",
            ActionError::AlreadyEngaged { .. } => "already_engaged",
            ActionError::NoEngagement => "no_engagement",
            ActionError::OutsideBusinessHours { .. } => "outside_business_hours",
            ActionError::TooLarge(_) => "too_large",
            ActionError::RateLimited(_) => "rate_limited",
            ActionError::Rejected(_) => "rejected",
            ActionError::Unavailable(_) => "unavailable",
            ActionError::Internal(_) => "internal",
        }
    }

    /// The HTTP status the server API answers this error with (the
    /// contract's table).
    pub fn http_status(&self) -> u16 {
        match self {
            ActionError::BadRequest(_) | ActionError::NotConnected => 400,
            ActionError::Unauthorized(_) => 401,
            ActionError::Forbidden(_) => 403,
            ActionError::NotFound(_) | ActionError::UnknownAction(_) => 404,
            ActionError::NotAMember(_)
            | ActionError::AlreadyEngaged { .. }
            | ActionError::NoEngagement
            | ActionError::OutsideBusinessHours { .. } => 409,
            ActionError::TooLarge(_) => 413,
            ActionError::Rejected(_) => 422,
            ActionError::RateLimited(_) => 429,
            ActionError::Internal(_) => 500,
            ActionError::Unavailable(_) => 503,
        }
    }

    /// The `error` object of a reply: `code`, `message` and any details.
    pub fn to_wire(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code().into());
        error.insert("message".into(), self.to_string().into());
        match self {
            ActionError::AlreadyEngaged { channel_sid } => {
                error.insert("channelSid".into(), channel_sid.clone().into());
            }
            ActionError::OutsideBusinessHours { opens_at } => {
                error.insert("opensAt".into(), opens_at.clone().into());
            }
            _ => {}
        }
        Value::Object(error)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ActionError::BadRequest(message.into())
    }
}

impl From<crate::engine::EngineError> for ActionError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match e {
            E::NotAMember(sid) => ActionError::NotAMember(sid),
            E::NotFound(what) => ActionError::NotFound(what),
            E::AlreadyEngaged { channel_sid } => ActionError::AlreadyEngaged { channel_sid },
            E::NoEngagement => ActionError::NoEngagement,
            // A capacity reached: the client may retry later.
            E::Full(why) => ActionError::RateLimited(why),
            E::Unauthorized(why) => ActionError::Unauthorized(why),
            E::Unavailable(why) => ActionError::Unavailable(why),
            E::Internal(why) => ActionError::Internal(why),
        }
    }
}

impl From<crate::auth::AuthError> for ActionError {
    fn from(e: crate::auth::AuthError) -> Self {
        if let crate::auth::AuthError::InvalidToken { detail } = &e {
            tracing::debug!(%detail, "token refused");
        }
        ActionError::Unauthorized(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_ride_along() {
        let wire = ActionError::AlreadyEngaged {
            channel_sid: "CHx".into(),
        }
        .to_wire();
        assert_eq!(wire["code"], "already_engaged");
        assert_eq!(wire["channelSid"], "CHx");
        let wire = ActionError::OutsideBusinessHours {
            opens_at: Some("2026-11-23T09:00:00.000Z".into()),
        }
        .to_wire();
        assert_eq!(wire["code"], "outside_business_hours");
        assert_eq!(wire["opensAt"], "2026-11-23T09:00:00.000Z");
    }
}
