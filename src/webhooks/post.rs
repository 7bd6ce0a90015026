//! Post-event webhooks: every push of an acknowledged action, delivered at
//! least once and in order per channel to each configured URL.
//!
//! The events are stored with the action that made them (one
//! [`Op::QueueWebhookEvent`] in the same write, or appended by the same
//! Redis script), so they are durable exactly when the action is
//! acknowledged. One sender task per URL walks the stored events in order
//! from that URL's durable cursor: it sends one event at a time, retries it
//! with backoff until the URL accepts it (so every earlier event of a
//! channel was accepted before a later one is sent), then moves its cursor.
//! A dead URL holds up only its own task. Events every URL has accepted
//! are deleted.
//!
//! With several nodes on one store (Redis), every node runs a sender per
//! URL but only the one holding that URL's lease delivers, so the order
//! holds across nodes; when the holder dies its lease expires and another
//! node continues from the stored cursor.

use std::future::Future;
use std::pin::Pin;
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
pub(crate) const BATCH: usize = 256;
/// Longest a sender goes without writing its cursor while it makes progress.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// How long a release of a lease may take on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// An outbox's answer, later.
pub(crate) type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// The store side of post-event webhooks: small on purpose, so that any
/// engine (or store) can provide it.
pub(crate) trait WebhookOutbox: Send + Sync {
    /// Whether events are stored at all (a post-event webhook is
    /// configured and there is a store).
    fn stores_events(&self) -> bool;
    /// Wakes when newly stored events became durable; `None` when
    /// [`pending`](Self::pending) itself waits (a bounded time) for new
    /// events when there are none.
    fn changed(&self) -> Option<watch::Receiver<u64>>;
    /// Stored events after `after`, ascending, their bodies ready to send.
    fn pending(&self, after: u64, limit: usize) -> Answer<'_, Vec<WebhookEventRow>>;
    /// How far `url` got.
    fn cursor<'a>(&'a self, url: &'a str) -> Answer<'a, u64>;
    /// Records that `url` accepted every event up to `seq` (refused when
    /// this node no longer holds the URL's lease).
    fn save_cursor<'a>(&'a self, url: &'a str, seq: u64) -> Answer<'a, ()>;
    /// Deletes the events up to `upto` (every URL accepted them).
    fn prune(&self, upto: u64) -> Answer<'_, ()>;
    /// `Some(ttl)` when several nodes share the events: a node delivers
    /// for a URL only while it holds that URL's lease, which lapses `ttl`
    /// after its last renewal. `None`: this node is the only one.
    fn lease_ttl(&self) -> Option<Duration>;
    /// Takes or renews the lease of `url`: whether this node holds it now.
    fn hold<'a>(&'a self, url: &'a str) -> Answer<'a, bool>;
    /// Gives the lease of `url` up (graceful shutdown), if this node holds it.
    fn release<'a>(&'a self, url: &'a str) -> Answer<'a, ()>;
}

/// The stored form of an event that post-event webhooks receive; `None`
/// for the others. Each push is taken from one topic only, so that an
/// event addressed to several topics is stored once.
pub(crate) fn stored_event(topic: &Topic, event: &Event) -> Option<Op> {
    let event_id = format!("EV{}", crate::ids::new_id());
    let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let (channel_sid, body) = webhook_event(topic, event, &event_id, &timestamp)?;
    Some(Op::QueueWebhookEvent {
        channel_sid,
        body: Arc::from(body),
    })
}

/// The channel and request body of an event post-event webhooks receive
/// (the push's data exactly as sessions get it), on `topic`; `None` for
/// the others.
pub(crate) fn webhook_event(
    topic: &Topic,
    event: &Event,
    event_id: &str,
    timestamp: &str,
) -> Option<(Arc<str>, String)> {
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
    let body = event.push()?.webhook_body(event_id, timestamp);
    debug_assert!(body.starts_with(&format!("{{\"event\":\"{name}\"")));
    Some((channel_sid, body))
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
    if webhooks.is_empty() || !outbox.stores_events() {
        return;
    }
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
        spawn(Box::pin(sender.run(outbox.changed(), shutdown.clone())));
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

/// Why a sender stopped delivering.
enum Stop {
    Shutdown,
    /// The URL's lease lapsed or went to another node.
    LeaseLost,
}

/// A held lease of a URL, kept by a renewing task until dropped.
struct Held {
    /// Cancelled once the lease is (or may be) lost.
    lost: CancellationToken,
    /// The renewer stops with this.
    done: CancellationToken,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl Sender {
    async fn run(self, mut changed: Option<watch::Receiver<u64>>, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let held = match self.outbox.lease_ttl() {
                None => None,
                Some(ttl) => match self.acquire(ttl, &shutdown).await {
                    Some(held) => Some(held),
                    None => return,
                },
            };
            let never = CancellationToken::new();
            let lost = held.as_ref().map_or(&never, |held| &held.lost);
            match self
                .deliver_all(&mut changed, &shutdown, lost, &mut backoff)
                .await
            {
                Stop::Shutdown => {
                    if held.is_some() {
                        // Another node takes over at once rather than
                        // after the lease's time.
                        let _ =
                            tokio::time::timeout(RELEASE_TIMEOUT, self.outbox.release(&self.url))
                                .await;
                    }
                    return;
                }
                Stop::LeaseLost => {
                    tracing::info!(url = %self.url, "webhook lease lost; another node delivers (or this one again once it holds it)");
                }
            }
        }
    }

    /// Waits until this node holds the URL's lease (`None` on shutdown),
    /// and keeps it renewed while the answer lives.
    async fn acquire(&self, ttl: Duration, shutdown: &CancellationToken) -> Option<Held> {
        let mut backoff = FIRST_BACKOFF;
        let renew_every = ttl / 3;
        loop {
            let asked = Instant::now();
            match self.outbox.hold(&self.url).await {
                Ok(true) => {
                    tracing::debug!(url = %self.url, "webhook lease held");
                    let held = Held {
                        lost: CancellationToken::new(),
                        done: CancellationToken::new(),
                    };
                    tokio::spawn(renew(
                        self.outbox.clone(),
                        self.url.clone(),
                        asked + ttl,
                        renew_every,
                        held.lost.clone(),
                        held.done.clone(),
                    ));
                    return Some(held);
                }
                // Held by another node: ask again, about as often as it
                // renews, so that a dead holder is followed soon after its
                // lease lapses.
                Ok(false) => backoff = FIRST_BACKOFF.min(renew_every),
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "webhook lease unavailable; retrying");
                }
            }
            let delay = backoff.min(renew_every.max(Duration::from_millis(50)));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Delivers from the stored cursor on until shutdown or the lease is
    /// lost.
    async fn deliver_all(
        &self,
        changed: &mut Option<watch::Receiver<u64>>,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
        backoff: &mut Duration,
    ) -> Stop {
        let stop = || {
            if shutdown.is_cancelled() {
                Stop::Shutdown
            } else {
                Stop::LeaseLost
            }
        };
        // Stopping at either: a lease lost stops delivery as shutdown does.
        let halt = CancellationToken::new();
        let _halt_guard = halt.clone().drop_guard();
        {
            let (halt, shutdown, lost) = (halt.clone(), shutdown.clone(), lost.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = lost.cancelled() => {}
                    _ = halt.cancelled() => {}
                }
                halt.cancel();
            });
        }
        // The cursor (and anything else read from the store) is retried
        // while the store cannot answer; read anew each time the lease is
        // taken, since another node may have moved it.
        let mut cursor = loop {
            match self.outbox.cursor(&self.url).await {
                Ok(cursor) => break cursor,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "webhook cursor unreadable; retrying");
                    if wait(&halt, backoff).await.is_err() {
                        return stop();
                    }
                }
            }
        };
        *backoff = FIRST_BACKOFF;
        loop {
            // Seen before reading, so that events stored meanwhile wake us.
            if let Some(changed) = changed.as_mut() {
                changed.borrow_and_update();
            }
            let batch = tokio::select! {
                _ = halt.cancelled() => return stop(),
                batch = self.outbox.pending(cursor, BATCH) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "stored webhook events unreadable; retrying");
                    if wait(&halt, backoff).await.is_err() {
                        return stop();
                    }
                    continue;
                }
            };
            *backoff = FIRST_BACKOFF;
            if batch.is_empty() {
                if let Some(changed) = changed.as_mut() {
                    tokio::select! {
                        _ = halt.cancelled() => return stop(),
                        woke = changed.changed() => if woke.is_err() { return Stop::Shutdown },
                    }
                }
                continue;
            }
            if let Some(first) = batch.first() {
                if first.seq > cursor + 1 {
                    // Only when the stored events reached their bound
                    // while this URL lagged: the oldest went.
                    let lost = first.seq - cursor - 1;
                    tracing::error!(url = %self.url, lost, "webhook events dropped at the outbox's bound before this URL accepted them");
                    self.metrics.webhook_events_lost(&self.url, lost);
                }
            }
            // The cursor is written once per batch, and at least every
            // CURSOR_EVERY while a batch is slow: after a crash at most
            // that much is sent again (at least once; receivers
            // deduplicate on eventId).
            let mut saved_at = Instant::now();
            let last = batch.last().map_or(cursor, |row| row.seq);
            for row in batch {
                let head = serde_json::from_str::<Head>(&row.body).unwrap_or_default();
                if self.wants(&head) && self.deliver(&row, &head, &halt).await.is_err() {
                    self.save_cursor(cursor).await;
                    return stop();
                }
                cursor = row.seq;
                if cursor == last || saved_at.elapsed() >= CURSOR_EVERY {
                    self.save_cursor(cursor).await;
                    saved_at = Instant::now();
                }
            }
        }
    }

    async fn save_cursor(&self, seq: u64) {
        if let Err(e) = self.outbox.save_cursor(&self.url, seq).await {
            // Not saved: after a restart (or by the next holder) those
            // events are sent again.
            tracing::debug!(url = %self.url, error = %e, "webhook cursor not saved");
        }
        self.progress.send_replace(());
    }

    fn wants(&self, head: &Head) -> bool {
        // An entry that could not be read is passed over.
        if head.event.is_empty() {
            return false;
        }
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

/// Keeps a held lease renewed; cancels `lost` when it went to another
/// node or could not be renewed before it lapsed.
async fn renew(
    outbox: Arc<dyn WebhookOutbox>,
    url: Arc<str>,
    mut lapses_at: Instant,
    every: Duration,
    lost: CancellationToken,
    done: CancellationToken,
) {
    let ttl = every * 3;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let asked = Instant::now();
        let left = lapses_at.saturating_duration_since(asked);
        let renewed = tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(left) => Err("not renewed before it lapsed".to_owned()),
            renewed = outbox.hold(&url) => renewed,
        };
        match renewed {
            Ok(true) => lapses_at = asked + ttl,
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) if Instant::now() >= lapses_at => {
                tracing::warn!(url = %url, error = %e, "webhook lease lapsed: not renewed in time");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(url = %url, error = %e, "webhook lease not renewed; retrying");
            }
        }
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
        let mut lowest = Some(u64::MAX);
        for url in urls.iter() {
            lowest = match (lowest, outbox.cursor(url).await) {
                (Some(low), Ok(cursor)) => Some(low.min(cursor)),
                _ => None,
            };
        }
        if let Some(upto) = lowest.filter(|&upto| upto != u64::MAX) {
            if upto > pruned && outbox.prune(upto).await.is_ok() {
                pruned = upto;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
