//! Post-event webhooks on a cluster: the events live in Redis.
//!
//! - `<prefix>:wh:events`: one stream of every pending event, appended by
//!   the script of the action that made it (see `emit` in `prelude.lua`),
//!   entry id `0-<seq>` (so `seq` counts up by one per event), fields `k`
//!   (the topic), `ms` (when, unix ms) and `e` (the event as the scripts
//!   write it). Capped at `[cluster] webhook_events_max`: beyond it the
//!   oldest entries go, and a URL that had not accepted them logs how many
//!   it lost. Entries every configured URL accepted are trimmed.
//! - `<prefix>:wh:cursors`: per URL, the seq it accepted everything up to.
//! - `<prefix>:wh:lease:<url>`: the node delivering for that URL (`SET NX
//!   PX`, renewed by its holder every third of its time, deleted on a
//!   graceful shutdown). Only the holder moves the URL's cursor, so the
//!   order per channel holds across nodes; when the holder dies its lease
//!   lapses and another node goes on from the cursor (the events it had in
//!   flight are sent again, with the same `X-Switchboard-Event-Id`).
//! - `<prefix>:wh:epoch`: a random string in every event id, so that ids
//!   stay unique even if Redis lost its data and counted again from 1.
//!
//! A request body is built when the event is read, from the stored event:
//! the push's data exactly as sessions get it.

use std::time::Duration;

use chrono::SecondsFormat;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::wire::Wire;
use super::{RedisEngine, Refused};
use crate::event::Topic;
use crate::store::WebhookEventRow;
use crate::webhooks::{webhook_event, Answer, WebhookOutbox};

/// How long a read of new events waits in Redis when there are none.
const BLOCK: Duration = Duration::from_secs(2);

pub(super) struct Outbox {
    client: redis::Client,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The epoch in event ids, as the last lease renewal read it.
    epoch: Mutex<String>,
    /// Connections for blocking reads (one per sender reading at a time;
    /// a blocking read would hold up every other command on a shared one).
    readers: Mutex<Vec<MultiplexedConnection>>,
}

impl Outbox {
    pub(super) fn new(
        client: redis::Client,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Outbox {
        Outbox {
            client,
            connect_timeout,
            command_timeout,
            epoch: Mutex::new(String::new()),
            readers: Mutex::new(Vec::new()),
        }
    }

    async fn reader(&self) -> Result<MultiplexedConnection, String> {
        if let Some(conn) = self.readers.lock().pop() {
            return Ok(conn);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(BLOCK + self.command_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot reach Redis: {e}"))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(list) | Value::Set(list) => list.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREAD` reply of one stream: `(seq, fields)`.
fn entries(reply: &Value) -> Vec<(u64, Vec<(String, String)>)> {
    // [[key, [[id, [field, value, …]], …]]] (a map of key → entries in RESP3).
    let streams = items(reply);
    let Some(list) = streams.get(1) else {
        return Vec::new();
    };
    items(list)
        .into_iter()
        .filter_map(|entry| {
            let parts = items(entry);
            let id = text(parts.first()?)?;
            let seq = id.strip_prefix("0-")?.parse().ok()?;
            let flat: Vec<String> = items(parts.get(1)?).into_iter().filter_map(text).collect();
            let fields = flat
                .chunks(2)
                .filter_map(|pair| match pair {
                    [field, value] => Some((field.clone(), value.clone())),
                    _ => None,
                })
                .collect();
            Some((seq, fields))
        })
        .collect()
}

fn topic_of(key: &str) -> Option<Topic> {
    let (kind, name) = key.split_once(':')?;
    let name = std::sync::Arc::from(name);
    Some(match kind {
        "c" => Topic::Channel(name),
        "i" => Topic::Identity(name),
        "q" => Topic::Queue(name),
        _ => return None,
    })
}

impl RedisEngine {
    /// The request body of a stored entry; an empty body (passed over by
    /// the sender) when it cannot be read.
    fn webhook_row(&self, epoch: &str, seq: u64, fields: &[(String, String)]) -> WebhookEventRow {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| v.as_str())
        };
        let made = (|| {
            let topic = topic_of(field("k")?)?;
            let ms: i64 = field("ms")?.parse().ok()?;
            let event = Wire::parse(field("e")?, None)
                .ok()?
                .event(&topic, &self.node)?;
            let timestamp = chrono::DateTime::from_timestamp_millis(ms)?
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            webhook_event(&topic, &event, &format!("EV{epoch}{seq:016x}"), &timestamp)
        })();
        match made {
            Some((channel_sid, body)) => WebhookEventRow {
                seq,
                channel_sid: channel_sid.to_string(),
                body,
            },
            None => {
                tracing::error!(seq, "unreadable webhook event in Redis; passed over");
                WebhookEventRow {
                    seq,
                    channel_sid: String::new(),
                    body: String::new(),
                }
            }
        }
    }
}

fn refused(Refused(code): Refused) -> String {
    format!("refused: {code}")
}

impl WebhookOutbox for RedisEngine {
    fn stores_events(&self) -> bool {
        !self.config.webhooks.post.is_empty()
    }

    fn changed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // `pending` waits in Redis itself (a blocking read).
        None
    }

    fn pending(&self, after: u64, limit: usize) -> Answer<'_, Vec<WebhookEventRow>> {
        Box::pin(async move {
            let epoch = self.webhooks.epoch.lock().clone();
            if epoch.is_empty() {
                return Err("the webhook epoch is not known yet".into());
            }
            let mut conn = self.webhooks.reader().await?;
            let read = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(limit)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(self.key("wh:events"))
                .arg(format!("0-{after}"))
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| format!("cannot read webhook events from Redis: {e}"))?;
            self.webhooks.readers.lock().push(conn);
            let entries = match &read {
                Value::Nil => Vec::new(),
                reply => items(reply)
                    .first()
                    .map(|stream| match stream {
                        // RESP2: [[key, entries]]; RESP3: {key: entries}.
                        Value::Array(_) => entries(stream),
                        _ => entries(reply),
                    })
                    .unwrap_or_default(),
            };
            Ok(entries
                .iter()
                .map(|(seq, fields)| self.webhook_row(&epoch, *seq, fields))
                .collect())
        })
    }

    fn cursor<'a>(&'a self, url: &'a str) -> Answer<'a, u64> {
        let read = self.query::<Option<u64>>(
            redis::cmd("HGET")
                .arg(self.key("wh:cursors"))
                .arg(url)
                .clone(),
        );
        Box::pin(async move {
            read.await
                .map(Option::unwrap_or_default)
                .map_err(|e| e.to_string())
        })
    }

    fn save_cursor<'a>(&'a self, url: &'a str, seq: u64) -> Answer<'a, ()> {
        let call = self.call(|s| &s.wh_cursor, vec![url.to_owned(), seq.to_string()]);
        Box::pin(async move {
            call.await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(refused)
        })
    }

    fn prune(&self, upto: u64) -> Answer<'_, ()> {
        let trim = self.query::<u64>(
            redis::cmd("XTRIM")
                .arg(self.key("wh:events"))
                .arg("MINID")
                .arg(format!("0-{}", upto + 1))
                .clone(),
        );
        Box::pin(async move { trim.await.map(|_| ()).map_err(|e| e.to_string()) })
    }

    fn lease_ttl(&self) -> Option<Duration> {
        // As long as a node's own heartbeat key lives: a dead holder is
        // followed about when its sessions stop counting.
        Some(Duration::from_millis(self.config.cluster.heartbeat_ms * 3))
    }

    fn hold<'a>(&'a self, url: &'a str) -> Answer<'a, bool> {
        let ttl = self.config.cluster.heartbeat_ms * 3;
        let call = self.call(
            |s| &s.wh_hold,
            vec![
                url.to_owned(),
                ttl.to_string(),
                format!("{:016x}", rand::random::<u64>()),
            ],
        );
        Box::pin(async move {
            let reply = call.await.map_err(|e| e.to_string())?.map_err(refused)?;
            let (held, epoch) = reply
                .split_once(':')
                .ok_or_else(|| format!("unreadable lease answer {reply:?}"))?;
            *self.webhooks.epoch.lock() = epoch.to_owned();
            Ok(held == "1")
        })
    }

    fn release<'a>(&'a self, url: &'a str) -> Answer<'a, ()> {
        let call = self.call(|s| &s.wh_release, vec![url.to_owned()]);
        Box::pin(async move {
            call.await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(refused)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_replies_of_both_protocols_are_read() {
        let stream = Value::Array(vec![Value::Array(vec![
            bulk("0-7"),
            Value::Array(vec![bulk("k"), bulk("c:CH1"), bulk("e"), bulk("{}")]),
        ])]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("p:wh:events"),
            stream.clone(),
        ])]);
        let resp3 = Value::Map(vec![(bulk("p:wh:events"), stream)]);
        for reply in [resp2, resp3] {
            let first = items(&reply)[0];
            let read = match first {
                Value::Array(_) => entries(first),
                _ => entries(&reply),
            };
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].0, 7);
            assert_eq!(read[0].1[0], ("k".to_owned(), "c:CH1".to_owned()));
        }
        assert!(topic_of("c:CH1").is_some());
        assert!(topic_of("x").is_none());
    }
}
