//! Pre-event webhooks: a `before` listener of each named action that asks
//! a URL, and waits for its answer before anything of the action happens.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{signature, OnFailure, PreWebhookConfig, SIGNATURE_HEADER};
use crate::actions::{ActionRegistry, RegistryError};
use crate::error::ActionError;
use crate::metrics::Metrics;

/// Most bytes of an answer read (an answer is `{}`, a payload or a reason).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Adds each pre-event webhook as a `before` listener of its actions.
pub(crate) fn register(
    registry: &mut ActionRegistry,
    webhooks: &[PreWebhookConfig],
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Result<(), RegistryError> {
    for webhook in webhooks {
        let webhook = Arc::new(webhook.clone());
        for action in &webhook.actions {
            let (webhook, client, metrics) = (webhook.clone(), client.clone(), metrics.clone());
            let name = action.clone();
            registry.before(action, move |ctx, payload| {
                let (webhook, client, metrics, name) =
                    (webhook.clone(), client.clone(), metrics.clone(), name.clone());
                async move {
                    let body = json!({
                        "action": name,
                        "identity": ctx.identity(),
                        "role": ctx.role(),
                        "payload": payload,
                    })
                    .to_string();
                    match ask(&client, &webhook, body).await {
                        Ok(Answer::Unchanged) => {
                            metrics.webhook_delivered(&webhook.url);
                            Ok(payload)
                        }
                        Ok(Answer::Payload(changed)) => {
                            metrics.webhook_delivered(&webhook.url);
                            Ok(changed)
                        }
                        Ok(Answer::Reject(reason)) => {
                            metrics.webhook_delivered(&webhook.url);
                            Err(ActionError::Rejected(reason.unwrap_or_else(|| {
                                format!("{name} was rejected by a pre-event webhook")
                            })))
                        }
                        Err(why) => {
                            metrics.webhook_failed(&webhook.url);
                            tracing::warn!(url = %webhook.url, action = %name, error = %why, "pre-event webhook failed");
                            match webhook.on_failure {
                                OnFailure::Allow => Ok(payload),
                                OnFailure::Reject => Err(ActionError::Rejected(format!(
                                    "{name} could not be checked ({why})"
                                ))),
                            }
                        }
                    }
                }
            })?;
        }
    }
    Ok(())
}

/// What a webhook decided.
enum Answer {
    Unchanged,
    Payload(Value),
    Reject(Option<String>),
}

/// Posts `body` and reads the answer within `timeout_ms` (connection,
/// answer and body all included). `Err`: the failure policy applies.
async fn ask(
    client: &reqwest::Client,
    webhook: &PreWebhookConfig,
    body: String,
) -> Result<Answer, String> {
    let timeout = Duration::from_millis(webhook.timeout_ms);
    let exchange = async {
        let response = client
            .post(&webhook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(&webhook.secret, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        let bytes = read_limited(response).await?;
        Ok::<_, String>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} ms", webhook.timeout_ms))??;
    if status.is_success() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::Unchanged);
        }
        let answer: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))?;
        return match answer {
            Value::Object(mut map) => match map.remove("payload") {
                None => Ok(Answer::Unchanged),
                Some(payload @ Value::Object(_)) => Ok(Answer::Payload(payload)),
                Some(_) => Err("the answer's payload is not an object".into()),
            },
            _ => Err("the answer is not a JSON object".into()),
        };
    }
    if status.is_client_error() {
        let reason = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|answer| answer.get("reject")?.as_str().map(str::to_owned));
        return Ok(Answer::Reject(reason));
    }
    Err(format!("answered {status}"))
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("answer cut off: {e}"))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
