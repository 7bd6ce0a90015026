//! Backends in the loop: pre-event webhooks (a `before` listener that asks
//! a URL whether, and with which payload, an action runs) and post-event
//! webhooks (every push of an acknowledged action, delivered at least once
//! and in order per channel to each configured URL).
//!
//! Both sign the raw request body with HMAC-SHA256 keyed with the URL's
//! secret (`X-Switchboard-Signature: sha256=<hex>`).

use serde::Deserialize;

/// `[webhooks]`: `[[webhooks.pre]]` and `[[webhooks.post]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    pub pre: Vec<PreWebhookConfig>,
    pub post: Vec<PostWebhookConfig>,
}

/// A post-event webhook: every event (or those named) of every channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostWebhookConfig {
    pub url: String,
    pub secret: String,
    /// Event names it wants; absent: every event.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// A pre-event webhook: a `before` listener of each named action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreWebhookConfig {
    pub url: String,
    pub secret: String,
    pub actions: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_timeout_ms() -> u64 {
    2000
}

/// What a pre-event webhook's failure (5xx, no connection, no answer in
/// time) does to the action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Reject,
    Allow,
}

/// The events a post-event webhook can receive (never typing).
pub(crate) const POST_EVENTS: [&str; 6] = [
    "engagementStarted",
    "engagementEnded",
    "engagementRestarted",
    "messageAdded",
    "memberJoined",
    "memberLeft",
];

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("webhook url {url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("webhook url {url:?} has no host"));
    }
    Ok(())
}

impl WebhooksConfig {
    /// `clustered`: the events live in Redis, whatever the local store's
    /// durability.
    pub(crate) fn validate(
        &self,
        durability: crate::store::Durability,
        clustered: bool,
    ) -> Result<(), String> {
        if !self.post.is_empty() && !clustered && durability == crate::store::Durability::Memory {
            return Err(
                "post-event webhooks deliver stored events: they need durability \"fsync\" or \"os\", not \"memory\"".into(),
            );
        }
        for post in &self.post {
            check_url(&post.url)?;
            if post.secret.is_empty() {
                return Err(format!("webhook {:?} needs a secret", post.url));
            }
            for event in post.events.iter().flatten() {
                if !POST_EVENTS.contains(&event.as_str()) {
                    return Err(format!(
                        "webhook {:?}: unknown event {event:?} (known: {})",
                        post.url,
                        POST_EVENTS.join(", ")
                    ));
                }
            }
        }
        for pre in &self.pre {
            check_url(&pre.url)?;
            if pre.secret.is_empty() {
                return Err(format!("webhook {:?} needs a secret", pre.url));
            }
            if pre.actions.is_empty() {
                return Err(format!("pre-event webhook {:?} names no actions", pre.url));
            }
            if pre.timeout_ms == 0 {
                return Err(format!(
                    "pre-event webhook {:?}: timeout_ms must be > 0",
                    pre.url
                ));
            }
        }
        Ok(())
    }
}

mod post;
mod pre;

pub(crate) use post::{spawn_senders, stored_event, webhook_event, Answer, WebhookOutbox};
pub(crate) use pre::register;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `sha256=<lowercase hex HMAC-SHA256 of body keyed with secret>`: the
/// `X-Switchboard-Signature` header.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 15)] as char);
    }
    out
}

pub(crate) const SIGNATURE_HEADER: &str = "X-Switchboard-Signature";
pub(crate) const EVENT_ID_HEADER: &str = "X-Switchboard-Event-Id";

/// The HTTP client every webhook shares: pooled keep-alive connections per
/// host, rustls, no redirects (a webhook answers, it does not send the
/// broker elsewhere), a connect timeout. Per-request timeouts are set by
/// each kind of webhook.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the webhook HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
