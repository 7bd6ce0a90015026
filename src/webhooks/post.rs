//! Post-event webhooks: every push of an acknowledged action, delivered at
//! least once and in order per channel to each configured URL.
//!
//! The events are stored with the action that made them (one
//! [`Op::QueueWebhookEvent`] in the same write), so they are durable exactly
//! when the action is acknowledged. One sender task per URL walks the
//! stored events in order from that URL's durable cursor: it sends one
//! event at a time, retries it with backoff until the URL accepts it (so
//! every earlier event of a channel was accepted before a later one is
//! sent), then moves its cursor. A dead URL holds up only its own task.
//! Events every URL has accepted are deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{signature, PostWebhookConfig, EVENT_ID_HEADER, SIGNATURE_HEADER};
use crate::event::{Event, Topic};
use crate::metrics::Metrics;
use crate::store::{Op, WebhookEventRow};

/// How long one attempt may take (the contract's 10 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay, doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one event is retried before it is given up (logged and
/// counted as a failure): the contract's "at least 24 hours", plus one
/// last backoff. This also bounds how much a dead URL keeps on disk.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600 + 60);
/// Events read from the store at a time.
const BATCH: usize = 256;
/// Longest a sender goes without writing its cursor while it makes progress.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// The store side of post-event webhooks: small on purpose, so that any
/// engine (or store) can provide it.
pub(crate) trait WebhookOutbox: Send + Sync {
    /// Wakes when newly stored events became durable; `None` when no
    /// events are stored (no post-event webhook, or no store).
    fn changed(&self) -> Option<watch::Receiver<u64>>;
    /// Stored events after `after`, ascending.
    fn pending(&self, after: u64, limit: usize) -> Result<Vec<WebhookEventRow>, String>;
    /// How far `url` got.
    fn cursor(&self, url: &str) -> Result<u64, String>;
    /// Writes `ops` (cursor moves, pruning) without waiting.
    fn save(&self, ops: Vec<Op>) -> Result<(), String>;
}

/// The stored form of an event that post-event webhooks receive; `None`
/// for the others. Each push is taken from one topic only, so that an
/// event addressed to several topics is stored once.
pub(crate) fn stored_event(topic: &Topic, event: &Event) -> Option<Op> {
    let (name, channel_sid) = match (topic, event) {
        (Topic::Channel(_), Event::MessageAdded(m)) => ("messageAdded", m.channel_sid.clone()),
        (Topic::Channel(_), Event::MemberJoined { channel_sid, .. }) => {
            ("memberJoined", channel_sid.clone())
        }
        (Topic::Channel(_), Event::MemberLeft { channel_sid, .. }) => {
            ("memberLeft", channel_sid.clone())
        }
        (Topic::Queue(_), Event::EngagementStarted(started)) => {
            ("engagementStarted", started.channel_sid.clone())
        }
        (Topic::Queue(_), Event::EngagementEnded { channel_sid, .. }) => {
            ("engagementEnded", channel_sid.clone())
        }
        (Topic::Identity(_), Event::EngagementRestarted { channel_sid }) => {
            ("engagementRestarted", channel_sid.clone())
        }
        _ => return None,
    };
    // The push's data exactly as sessions get it.
    let event_id = format!("EV{}", crate::ids::new_id());
    let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let body = event.push()?.webhook_body(&event_id, &timestamp);
    debug_assert!(body.starts_with(&format!("{{\"event\":\"{name}\"")));
    Some(Op::QueueWebhookEvent {
        channel_sid,
        body: Arc::from(body),
    })
}

/// Starts one sender per configured URL, and the pruner; they stop when
/// `shutdown` is cancelled. Each spawns through `spawn`.
pub(crate) fn spawn_senders(
    webhooks: &[PostWebhookConfig],
    outbox: Arc<dyn WebhookOutbox>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut spawn: impl FnMut(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
) {
    let Some(changed) = outbox.changed() else {
        return;
    };
    let urls: Arc<[Arc<str>]> = webhooks.iter().map(|w| Arc::from(w.url.as_str())).collect();
    let (progress, progress_rx) = watch::channel(());
    for webhook in webhooks {
        let sender = Sender {
            url: Arc::from(webhook.url.as_str()),
            secret: webhook.secret.clone(),
            events: webhook.events.clone(),
            outbox: outbox.clone(),
            client: client.clone(),
            metrics: metrics.clone(),
            progress: progress.clone(),
        };
        spawn(Box::pin(sender.run(changed.clone(), shutdown.clone())));
    }
    spawn(Box::pin(prune(outbox, urls, progress_rx, shutdown)));
}

/// What a sender reads of a stored body (the rest is skipped unparsed).
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    event: String,
    event_id: String,
}

struct Sender {
    url: Arc<str>,
    secret: String,
    events: Option<Vec<String>>,
    outbox: Arc<dyn WebhookOutbox>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    progress: watch::Sender<()>,
}

impl Sender {
    async fn run(self, mut changed: watch::Receiver<u64>, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        // The cursor (and anything else read from the store) is retried
        // while the store cannot answer.
        let mut cursor = loop {
            match self.outbox.cursor(&self.url) {
                Ok(cursor) => break cursor,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "webhook cursor unreadable; retrying");
                    if wait(&shutdown, &mut backoff).await.is_err() {
                        return;
                    }
                }
            }
        };
        loop {
            // Seen before reading, so that events stored meanwhile wake us.
            changed.borrow_and_update();
            let batch = match self.outbox.pending(cursor, BATCH) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "stored webhook events unreadable; retrying");
                    if wait(&shutdown, &mut backoff).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    woke = changed.changed() => if woke.is_err() { return },
                }
                continue;
            }
            // The cursor is written once per batch, and at least every
            // CURSOR_EVERY while a batch is slow: after a crash at most
            // that much is sent again (at least once; receivers
            // deduplicate on eventId).
            let mut saved_at = Instant::now();
            let last = batch.last().map_or(cursor, |row| row.seq);
            for row in batch {
                let head = serde_json::from_str::<Head>(&row.body).unwrap_or_default();
                if self.wants(&head) && self.deliver(&row, &head, &shutdown).await.is_err() {
                    self.save_cursor(cursor);
                    return;
                }
                cursor = row.seq;
                if cursor == last || saved_at.elapsed() >= CURSOR_EVERY {
                    self.save_cursor(cursor);
                    saved_at = Instant::now();
                }
            }
        }
    }

    fn save_cursor(&self, seq: u64) {
        if let Err(e) = self.outbox.save(vec![Op::WebhookCursor {
            url: self.url.clone(),
            seq,
        }]) {
            // Not saved: after a restart those events are sent again.
            tracing::debug!(url = %self.url, error = %e, "webhook cursor not saved");
        }
        self.progress.send_replace(());
    }

    fn wants(&self, head: &Head) -> bool {
        match &self.events {
            None => true,
            Some(events) => events.contains(&head.event),
        }
    }

    /// Sends one event until the URL accepts it (or it is given up).
    /// `Err` only on shutdown.
    async fn deliver(
        &self,
        row: &WebhookEventRow,
        head: &Head,
        shutdown: &CancellationToken,
    ) -> Result<(), ()> {
        let event_id = head.event_id.as_str();
        let signed = signature(&self.secret, row.body.as_bytes());
        let first_try = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = self
                .client
                .post(&*self.url)
                .timeout(ATTEMPT_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_ID_HEADER, event_id)
                .header(SIGNATURE_HEADER, &signed)
                .body(row.body.clone())
                .send();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Err(()),
                outcome = attempt => outcome,
            };
            let why = match outcome {
                Ok(response) if response.status().is_success() => {
                    self.metrics.webhook_delivered(&self.url);
                    return Ok(());
                }
                Ok(response) => format!("answered {}", response.status()),
                Err(e) if e.is_timeout() => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                Err(e) => format!("cannot reach it: {e}"),
            };
            self.metrics.webhook_failed(&self.url);
            if first_try.elapsed() >= GIVE_UP_AFTER {
                tracing::error!(url = %self.url, event_id, error = %why, "webhook event given up after 24 hours of retries");
                return Ok(());
            }
            tracing::debug!(url = %self.url, channel = %row.channel_sid, event_id, error = %why, retry_in = ?backoff, "webhook event not accepted");
            wait(shutdown, &mut backoff).await?;
        }
    }
}

/// Sleeps `backoff` (then doubles it, at most [`MAX_BACKOFF`]); `Err` on
/// shutdown.
async fn wait(shutdown: &CancellationToken, backoff: &mut Duration) -> Result<(), ()> {
    let delay = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = shutdown.cancelled() => Err(()),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// Deletes the events every configured URL has accepted, at most once a
/// second while senders make progress.
async fn prune(
    outbox: Arc<dyn WebhookOutbox>,
    urls: Arc<[Arc<str>]>,
    mut progress: watch::Receiver<()>,
    shutdown: CancellationToken,
) {
    let mut pruned = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            moved = progress.changed() => if moved.is_err() { return },
        }
        let lowest = urls
            .iter()
            .map(|url| outbox.cursor(url))
            .collect::<Result<Vec<u64>, String>>()
            .map(|cursors| cursors.into_iter().min().unwrap_or(0));
        if let Ok(upto) = lowest {
            if upto > pruned && outbox.save(vec![Op::PruneWebhookEvents { upto }]).is_ok() {
                pruned = upto;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
