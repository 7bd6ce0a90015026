//! Durable storage: messages, engagements, memberships and per-identity
//! state under the data directory.
//!
//! Writes never run on the caller's thread. A caller submits a job (the
//! [`Op`]s of one operation, and what to do once they are durable) under the
//! lock that ordered it, so the jobs that concern one channel are submitted
//! in that channel's order, and gets a ticket. A single writer thread takes
//! every job waiting, applies the whole batch as one durable step (group
//! commit), then settles each job in ticket order ([`AfterCommit`]: the
//! engine delivers the job's events) and publishes how far it is durable
//! ([`Commits`]). A command's reply waits for its ticket: an acknowledged
//! message is on disk.
//!
//! A failed write (a full disk, an I/O error) is not retried: the batch and
//! every job queued behind it fail at once (their callers answer
//! `unavailable`, their events are never shown), the store takes no more
//! writes, and the [`StoreListener`] (the engine) reloads what is durable.
//! The writer probes the disk until it can write again, then the listener
//! reloads once more and resumes the store.
//!
//! The store knows nothing of channels or sessions: it stores [`Op`]s and
//! calls back through the two small traits above. Under it, a
//! `Backend` does the storing; the store's front (tickets, the writer
//! thread, failure handling, the acknowledged-writes marker) is the same
//! for any backend.
//!
//! Why a segment log (`log.rs`): a message is one append to a file that
//! one fsync per group commit makes durable, and an in-memory index finds
//! it again; no B-tree page is written for it, at commit or at a later
//! checkpoint. Measured on this workload against SQLite, redb and fjall
//! (`benches/store_engines.rs`, figures in docs/benchmarks.md). A data
//! directory made before the log (a `switchboard.db` and no `log/`) keeps
//! its SQLite store (`sqlite.rs`), read and written as before: nothing is
//! migrated behind the operator's back. SQLite's two sync levels map to
//! the durable levels as the log's do: `fsync` syncs on every commit, `os`
//! hands every commit to the OS.

mod log;
mod sqlite;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::Role;
use crate::metrics::Metrics;

/// The SQLite database of a data directory made before the segment log.
const SQLITE_FILE: &str = "switchboard.db";

/// What stores the data.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    /// The segment log (`log.rs`): every new data directory.
    Log,
    /// SQLite (`sqlite.rs`): a data directory made before the log, which
    /// keeps being read and written as it is (nothing is migrated).
    Sqlite,
}

impl StoreEngine {
    /// The engine a data directory is in: SQLite only for a directory that
    /// already has its database and no log.
    pub fn for_dir(dir: &Path) -> StoreEngine {
        if dir.join(SQLITE_FILE).exists() && !dir.join(log::LOG_DIR).exists() {
            StoreEngine::Sqlite
        } else {
            StoreEngine::Log
        }
    }
}

/// How far an acknowledged write is guaranteed to have gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every group commit: survives power loss.
    #[default]
    Fsync,
    /// Written to the OS on every group commit: survives a crash of the
    /// broker, not of the machine.
    Os,
    /// Nothing on disk: for tests and benchmarks.
    Memory,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {path} is not a usable Switchboard store ({reason}); it was left untouched"
    )]
    Unusable { path: PathBuf, reason: String },
    #[error("cannot write to the store at {path}: {reason}")]
    Unwritable { path: PathBuf, reason: String },
    #[error(
        "the store at {path} has lost {lost} acknowledged write(s): it holds {found} of the \
         {acknowledged} writes that were acknowledged to clients (a damaged or truncated \
         journal). It was left untouched. Restore the data directory from a backup, or start \
         with --accept-data-loss to go on without them (channels then continue above every \
         index handed out before, and recovery of the lost range answers recovered: false)"
    )]
    LostWrites {
        path: PathBuf,
        lost: u64,
        found: u64,
        acknowledged: u64,
    },
    #[error(
        "the store's log file {path} is damaged at byte offset {offset} ({reason}): the writes \
         recorded from there on, which may include acknowledged ones, cannot be read and would be \
         lost. It was left untouched. Restore the data directory from a backup, or start with \
         --accept-data-loss to set the damaged part aside (kept beside it as a .damaged file) and \
         go on without it"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage is overloaded: too many writes waiting")]
    Overloaded,
    /// A write failed (a full disk, an I/O error): nothing more is taken
    /// until the store can write again.
    #[error("the store cannot take writes: {0}")]
    Unavailable(String),
    #[error("storage has stopped")]
    Stopped,
}

/// A message as stored and as pushed (`messageAdded`'s data).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub channel_sid: Arc<str>,
    pub index: u64,
    pub author: Arc<str>,
    pub author_role: Role,
    pub body: String,
    pub attributes: Attributes,
    pub date_created: String,
    /// Unix milliseconds, for age-based retention.
    #[serde(skip)]
    pub created_ms: i64,
}

/// A message's `attributes` (a map), kept as the compact JSON text that
/// serde_json writes for it (keys in order, no spaces): the text is made
/// once, when the message is accepted, and then copied as it is into the
/// log's record, the Redis stream and every JSON push and reply. Held as a
/// map, it was serialized again for each of those and its tree freed on
/// the store's thread, a tenth of a saturated broker's CPU with `fsync`.
///
/// `None` is `{}`, what most messages carry: no allocation for it.
#[derive(Debug, Clone)]
pub struct Attributes(Option<Box<RawValue>>);

const EMPTY: &str = "{}";

impl Attributes {
    /// `{}`.
    pub fn empty() -> Attributes {
        Attributes(None)
    }

    /// The text serde_json writes for `value`.
    pub fn of(value: &Value) -> Attributes {
        if value.as_object().is_some_and(Map::is_empty) {
            return Attributes::empty();
        }
        Attributes(Some(
            serde_json::value::to_raw_value(value).expect("a Value serializes"),
        ))
    }

    /// Text read back from storage; `null` if it is not JSON (which only
    /// damage the checksums missed could cause).
    pub fn read(text: &str) -> Attributes {
        if text == EMPTY {
            return Attributes::empty();
        }
        Attributes(Some(RawValue::from_string(text.to_owned()).unwrap_or_else(
            |_| RawValue::from_string("null".to_owned()).expect("JSON"),
        )))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.as_deref().map_or(EMPTY, RawValue::get)
    }

    /// As a map (tests and the rare reader that needs one).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or(Value::Null)
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Attributes) -> bool {
        self.json() == other.json()
    }
}

impl Serialize for Attributes {
    /// serde_json's serializers (the only human-readable ones the broker
    /// uses) take the text as it is; MessagePack gets the map itself.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.0 {
            None => serializer.serialize_map(Some(0))?.end(),
            Some(text) if serializer.is_human_readable() => text.serialize(serializer),
            Some(_) => self.to_value().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Attributes {
    /// Through the map: Redis's events are read through a tagged enum,
    /// whose buffered fields a raw text cannot be taken from.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(|value| Attributes::of(&value))
    }
}

/// One write. Ops are applied in submission order.
#[derive(Debug, Clone)]
pub enum Op {
    SaveChannel {
        sid: Arc<str>,
        queue: Arc<str>,
        customer: Option<Arc<str>>,
        form_data: String,
        started_at: String,
    },
    /// The channel has no member left; purged after the ended retention.
    EndChannel {
        sid: Arc<str>,
        ended_ms: i64,
    },
    AddMember {
        sid: Arc<str>,
        identity: Arc<str>,
        role: Role,
    },
    RemoveMember {
        sid: Arc<str>,
        identity: Arc<str>,
    },
    AppendMessage(Arc<StoredMessage>),
    SaveIdentity(IdentityRow),
    SetDraft {
        identity: Arc<str>,
        sid: Arc<str>,
        body: Option<String>,
    },
    /// One bounded slice of retention work.
    Purge(Retention),
    /// A post-event webhook event, stored with the action that made it
    /// (`body` is the request body, eventId included).
    QueueWebhookEvent {
        channel_sid: Arc<str>,
        body: Arc<str>,
    },
    /// A webhook URL accepted every event up to `seq`.
    WebhookCursor {
        url: Arc<str>,
        seq: u64,
    },
    /// Every URL accepted the events up to `seq`: they go.
    PruneWebhookEvents {
        upto: u64,
    },
}

/// A stored post-event webhook event.
#[derive(Debug, Clone)]
pub(crate) struct WebhookEventRow {
    pub seq: u64,
    pub channel_sid: String,
    pub body: String,
}

/// Retention limits, applied by [`Op::Purge`].
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep at most this many messages per channel.
    pub max_messages: u64,
    /// Drop messages created before this (unix ms).
    pub older_than_ms: i64,
    /// Drop channels that ended before this (unix ms), with their messages.
    pub ended_before_ms: i64,
}

/// An identity's persistent state.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRow {
    pub id: Arc<str>,
    pub role: Role,
    pub anonymous: bool,
    pub expanded: bool,
    /// `(channel sid, startedAt)` of the current engagement.
    pub engagement: Option<(Arc<str>, String)>,
}

/// A live (not ended) channel as stored.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    pub sid: Arc<str>,
    pub queue: Arc<str>,
    pub customer: Option<Arc<str>>,
    pub form_data: Value,
    pub started_at: String,
    pub next_index: u64,
    pub members: Vec<(Arc<str>, Role)>,
    /// The newest messages, ascending.
    pub recent: Vec<Arc<StoredMessage>>,
}

/// Everything that is durable, as start-up (or a reload after a failed
/// write) restores it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub identities: Vec<IdentityRow>,
    pub drafts: Vec<(Arc<str>, Arc<str>, String)>,
    pub channels: Vec<ChannelRow>,
    /// Signs resume tokens, so anonymous customers survive a restart.
    pub resume_secret: Vec<u8>,
}

/// What to do once a job's fate is known. Called on the writer thread, in
/// ticket order: `durable` is false when its write failed and nothing of it
/// was stored.
pub trait AfterCommit: Send + 'static {
    fn settled(self, durable: bool);

    /// Settles a commit's jobs, in ticket order. `then` marks their
    /// tickets settled (it wakes whoever waits for them): called last,
    /// while whatever the jobs set up for their effects (a cork) is still
    /// in place.
    fn settled_all(jobs: impl Iterator<Item = Self>, durable: bool, then: impl FnOnce())
    where
        Self: Sized,
    {
        for job in jobs {
            job.settled(durable);
        }
        then();
    }
}

impl AfterCommit for () {
    fn settled(self, _durable: bool) {}
}

/// Told when the store fails a write and when it can write again (the
/// engine, whose in-memory state must match what is durable).
pub trait StoreListener: Send + Sync {
    /// A write failed: the store takes none until it can write again.
    fn failed(&self, reason: &str);
    /// The store can write again. The listener makes its state match
    /// [`Store::snapshot`], then calls [`Store::resume`].
    fn recovered(&self);
}

/// A storage backend under the writer thread.
pub(crate) trait Backend: Send {
    /// Applies `ops` in order as one durable step (one fsync at most,
    /// per the durability level), recording `commit_seq` with them.
    /// Returns whether retention work is left for another slice.
    fn apply(
        &mut self,
        ops: &mut dyn Iterator<Item = &Op>,
        commit_seq: u64,
    ) -> Result<bool, StoreError>;
    /// A small durable write, proving the store can write again.
    fn probe(&mut self, commit_seq: u64) -> Result<(), StoreError>;
}

/// Reads, from any thread.
pub(crate) trait HistoryReader: Send + Sync {
    fn messages(
        &self,
        sid: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    fn oldest_index(&self, sid: &str) -> Result<Option<u64>, StoreError>;
    /// A channel not in memory (ended): whether it exists, and its next index.
    fn ended_channel(&self, sid: &str) -> Result<Option<u64>, StoreError>;
    /// A channel's stored row (the server API shows ended channels from it).
    fn channel_record(&self, sid: &str) -> Result<Option<ChannelRecord>, StoreError>;
    /// Stored webhook events after `after`, ascending, at most `limit`.
    fn webhook_events(&self, after: u64, limit: usize) -> Result<Vec<WebhookEventRow>, StoreError>;
    /// How far a webhook URL got (0: nothing accepted yet).
    fn webhook_cursor(&self, url: &str) -> Result<u64, StoreError>;
    fn snapshot(&self, recent_messages: usize) -> Result<Snapshot, StoreError>;
}

/// A channel as stored: what the server API shows of an ended one.
#[derive(Debug, Clone)]
pub(crate) struct ChannelRecord {
    pub queue: String,
    pub form_data: String,
    pub started_at: String,
    pub next_index: u64,
    pub ended_ms: Option<i64>,
}

/// What a backend gives the store when it opens.
pub(crate) struct Opened {
    pub backend: Box<dyn Backend>,
    pub reader: Box<dyn HistoryReader>,
    pub snapshot: Snapshot,
    pub commit_seq: u64,
}

/// The acknowledged-writes check at start: `Ok(lost)` when the store may
/// start (`lost` > 0 only when the operator accepted the loss).
pub(crate) fn check_loss(
    path: &Path,
    found: u64,
    acknowledged: u64,
    accept_loss: bool,
) -> Result<u64, StoreError> {
    if found >= acknowledged {
        return Ok(0);
    }
    let lost = acknowledged - found;
    if !accept_loss {
        return Err(StoreError::LostWrites {
            path: path.to_owned(),
            lost,
            found,
            acknowledged,
        });
    }
    tracing::warn!(
        path = %path.display(),
        lost,
        "starting with acknowledged writes lost (--accept-data-loss): open channels continue above every index handed out before"
    );
    Ok(lost)
}

/// How far the store is durable, which writes failed, and who waits for
/// what. Why not a `watch`: every commit would wake every waiting session;
/// here a commit wakes only the waiters its tickets cover.
#[derive(Default)]
pub struct Commits {
    upto: AtomicU64,
    /// The last ticket of the newest failed range (0: none failed): a
    /// ticket above it succeeded without a look at `failed`.
    failed_upto: AtomicU64,
    /// Ticket ranges that failed (nothing of them was stored), with why;
    /// the newest few hundred, which is all a held reply can be waiting
    /// for.
    failed: Mutex<VecDeque<(u64, u64, Arc<str>)>>,
    /// Why the store takes no writes now (`None`: it does).
    unhealthy: Mutex<Option<Arc<str>>>,
    /// The last purge stopped at one of its bounds: more retention work is
    /// waiting for another slice.
    retention_behind: AtomicBool,
    /// Who waits for which ticket: a waiting session's own waker, no
    /// channel or allocation of its own (a few per commit, so a scan).
    waiters: Mutex<Vec<(u64, Waker)>>,
}

/// Failed ranges remembered.
const FAILED_RANGES: usize = 256;

impl Commits {
    /// Every ticket up to this one is settled (durable or failed).
    pub fn upto(&self) -> u64 {
        self.upto.load(Ordering::Acquire)
    }

    /// A ticket's fate: `None` while unsettled, `Err(why)` if its write
    /// failed.
    pub fn outcome(&self, ticket: u64) -> Option<Result<(), String>> {
        if self.upto() < ticket {
            return None;
        }
        if ticket > self.failed_upto.load(Ordering::Acquire) {
            return Some(Ok(()));
        }
        let failed = self.failed.lock();
        match failed
            .iter()
            .find(|(from, to, _)| (*from..=*to).contains(&ticket))
        {
            Some((_, _, why)) => Some(Err(why.to_string())),
            None => Some(Ok(())),
        }
    }

    /// Resolves once `ticket` is settled.
    pub async fn wait(&self, ticket: u64) {
        let mut registered = None;
        std::future::poll_fn(|cx| self.poll_settled(ticket, &mut registered, cx)).await
    }

    /// Ready once `ticket` is settled; until then `cx`'s waker is woken
    /// when it is. `registered` is the caller's memory of the waker it
    /// left (so polling again with the same task registers nothing new).
    pub(crate) fn poll_settled(
        &self,
        ticket: u64,
        registered: &mut Option<Waker>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.upto() >= ticket {
            return Poll::Ready(());
        }
        if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let mut waiters = self.waiters.lock();
        // Checked again under the lock `advance` takes, so a commit
        // between the first check and here cannot be missed.
        if self.upto() >= ticket {
            return Poll::Ready(());
        }
        waiters.push((ticket, cx.waker().clone()));
        *registered = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Leaves the waker `waker` makes with the store, to be woken once
    /// `ticket` is settled; `false` (and no waker made) if it is already.
    pub(crate) fn notify_when_settled(&self, ticket: u64, waker: impl FnOnce() -> Waker) -> bool {
        if self.upto() >= ticket {
            return false;
        }
        let mut waiters = self.waiters.lock();
        // Checked again under the lock `advance` takes (see `poll_settled`).
        if self.upto() >= ticket {
            return false;
        }
        waiters.push((ticket, waker()));
        true
    }

    fn advance(&self, upto: u64) {
        self.upto.store(upto, Ordering::Release);
        let ready: Vec<Waker> = {
            let mut waiters = self.waiters.lock();
            if waiters.is_empty() {
                return;
            }
            let mut ready = Vec::new();
            let mut i = 0;
            while i < waiters.len() {
                if waiters[i].0 <= upto {
                    ready.push(waiters.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
            ready
        };
        for waker in ready {
            waker.wake();
        }
    }

    fn fail(&self, from: u64, to: u64, why: &str) {
        let why: Arc<str> = Arc::from(why);
        {
            let mut failed = self.failed.lock();
            failed.push_back((from, to, why.clone()));
            while failed.len() > FAILED_RANGES {
                failed.pop_front();
            }
            self.failed_upto.fetch_max(to, Ordering::AcqRel);
        }
        *self.unhealthy.lock() = Some(why);
        self.advance(to);
    }

    /// Settles every ticket up to `upto` as the writer does (tests of
    /// what waits for the store).
    #[cfg(test)]
    pub(crate) fn settle_for_tests(&self, upto: u64) {
        self.advance(upto);
    }

    /// Fails tickets `from..=to` as the writer does.
    #[cfg(test)]
    pub(crate) fn fail_for_tests(&self, from: u64, to: u64, why: &str) {
        self.fail(from, to, why);
    }

    /// `Err(why)` while the store takes no writes.
    pub fn health(&self) -> Result<(), String> {
        match &*self.unhealthy.lock() {
            None => Ok(()),
            Some(why) => Err(why.to_string()),
        }
    }
}

struct Job<A> {
    ticket: u64,
    ops: Vec<Op>,
    after: A,
}

struct Submitter<A> {
    last_ticket: u64,
    sender: Option<SyncSender<Job<A>>>,
    /// False from a failed write until the listener resumed the store.
    accepting: bool,
    /// The writer thread, woken when a full batch is waiting for it (see
    /// [`CommitPace`]); `None` until it is spawned.
    writer: Option<std::thread::Thread>,
}

/// The handle writes go through.
pub struct Store<A: AfterCommit = ()> {
    /// Ticket assignment and submission under one lock, so tickets reach the
    /// writer in ticket order and "durable up to N" covers every job <= N.
    submit: Arc<Mutex<Submitter<A>>>,
    /// The newest ticket handed out; written under `submit`, read without
    /// it (every session checks it around every command).
    issued: Arc<AtomicU64>,
    /// The newest ticket the writer has taken from the queue.
    taken: Arc<AtomicU64>,
    pace: CommitPace,
    commits: Arc<Commits>,
    reader: Box<dyn HistoryReader>,
    listener: Arc<OnceLock<Arc<dyn StoreListener>>>,
    stop: Arc<AtomicBool>,
    /// Says the writer thread has ended (`close` waits a bounded time).
    writer_done: Mutex<Option<Receiver<()>>>,
    path: PathBuf,
}

/// Jobs waiting for the writer, at most.
const QUEUE_BOUND: usize = 65_536;

/// How often a failed store tries to write again.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How long `close` waits for the writer to commit what it has.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl<A: AfterCommit> Store<A> {
    /// Opens (or creates) the store in `dir` and reads back what it holds.
    /// A database that cannot be read is refused, never replaced.
    ///
    /// The store counts every write it commits (`commit_seq`, in the
    /// database) and, after each commit, records how many were acknowledged
    /// in a small file beside it ([`ACK_MARKER_FILE`]). A database holding
    /// fewer writes than were acknowledged has lost some (a damaged journal
    /// that SQLite discarded on open, a truncated file): it is refused,
    /// untouched, unless `accept_loss` (`--accept-data-loss`).
    ///
    /// With `fsync`, `commit_delay` is how long a commit may wait for more
    /// writes (see [`CommitPace`]).
    pub fn open(
        dir: &Path,
        durability: Durability,
        commit_delay: Duration,
        recent_messages: usize,
        metrics: Arc<Metrics>,
        accept_loss: bool,
    ) -> Result<(Store<A>, Snapshot), StoreError> {
        Self::open_with(
            dir,
            durability,
            commit_delay,
            recent_messages,
            metrics,
            accept_loss,
            StoreEngine::for_dir(dir),
            log::SEGMENT_BYTES,
        )
    }

    /// [`Store::open`] with the engine chosen (benchmarks compare them) and
    /// the log's segment size (tests make it small).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn open_with(
        dir: &Path,
        durability: Durability,
        commit_delay: Duration,
        recent_messages: usize,
        metrics: Arc<Metrics>,
        accept_loss: bool,
        engine: StoreEngine,
        segment_bytes: u64,
    ) -> Result<(Store<A>, Snapshot), StoreError> {
        let pace = CommitPace::of(durability, commit_delay);
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let marker = AckMarker::open(&dir.join(ACK_MARKER_FILE))?;
        let acknowledged = marker.read()?;
        let (path, opened) = match engine {
            StoreEngine::Sqlite => {
                let path = dir.join(SQLITE_FILE);
                let opened = sqlite::open(
                    &path,
                    durability,
                    recent_messages,
                    acknowledged,
                    accept_loss,
                )?;
                (path, opened)
            }
            StoreEngine::Log => {
                let opened = log::open(
                    dir,
                    durability,
                    recent_messages,
                    acknowledged,
                    accept_loss,
                    segment_bytes,
                )?;
                (dir.join(log::LOG_DIR), opened)
            }
        };
        let (sender, receiver) = sync_channel::<Job<A>>(QUEUE_BOUND);
        let submit = Arc::new(Mutex::new(Submitter {
            last_ticket: 0,
            sender: Some(sender),
            accepting: true,
            writer: None,
        }));
        let commits = Arc::new(Commits::default());
        let listener: Arc<OnceLock<Arc<dyn StoreListener>>> = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = Writer {
            backend: opened.backend,
            pace,
            issued: issued.clone(),
            taken: taken.clone(),
            jobs: receiver,
            commit_seq: opened.commit_seq,
            marker,
            submit: submit.clone(),
            commits: commits.clone(),
            listener: listener.clone(),
            stop: stop.clone(),
            metrics,
        };
        let thread = std::thread::Builder::new()
            .name("switchboard-store".into())
            .spawn(move || {
                writer.run();
                let _ = done_tx.send(());
            })
            .map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        submit.lock().writer = Some(thread.thread().clone());
        Ok((
            Store {
                submit,
                issued,
                taken,
                pace,
                commits,
                reader: opened.reader,
                listener,
                stop,
                writer_done: Mutex::new(Some(done_rx)),
                path,
            },
            opened.snapshot,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who to tell when a write fails and when the store can write again.
    pub fn set_listener(&self, listener: Arc<dyn StoreListener>) {
        let _ = self.listener.set(listener);
    }

    /// Queues one operation's writes; returns their ticket. Never blocks:
    /// a full queue or a failed store is an error the caller reports.
    pub fn submit(&self, ops: Vec<Op>, after: A) -> Result<u64, StoreError> {
        let mut submitter = self.submit.lock();
        if !submitter.accepting {
            return Err(StoreError::Unavailable(
                self.commits
                    .health()
                    .err()
                    .unwrap_or_else(|| "recovering from a failed write".into()),
            ));
        }
        let ticket = submitter.last_ticket + 1;
        let sender = submitter.sender.as_ref().ok_or(StoreError::Stopped)?;
        match sender.try_send(Job { ticket, ops, after }) {
            Ok(()) => {
                submitter.last_ticket = ticket;
                self.issued.store(ticket, Ordering::Release);
                // One wake-up per batch, when it is full: the writer, held
                // by the pace, commits it without waiting out the rest.
                if self.pace.full_batch != 0
                    && ticket == self.taken.load(Ordering::Acquire) + self.pace.full_batch
                {
                    if let Some(writer) = &submitter.writer {
                        writer.unpark();
                    }
                }
                Ok(ticket)
            }
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Stopped),
        }
    }

    /// Whether a write would be taken now (checked before an operation
    /// changes anything, so that it never half-applies): the store is
    /// healthy and has room.
    pub fn accepting(&self) -> Result<(), StoreError> {
        self.commits.health().map_err(StoreError::Unavailable)?;
        if self.last_ticket().saturating_sub(self.durable_upto()) >= (QUEUE_BOUND as u64 - 64) {
            return Err(StoreError::Overloaded);
        }
        Ok(())
    }

    /// Whether there is room for more writes (a full queue pauses reading).
    pub fn has_room(&self) -> bool {
        self.last_ticket().saturating_sub(self.durable_upto()) < (QUEUE_BOUND as u64 - 64)
    }

    /// The newest ticket handed out.
    pub fn last_ticket(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }

    /// Every ticket up to this one is settled.
    pub fn durable_upto(&self) -> u64 {
        self.commits.upto()
    }

    pub fn commits(&self) -> &Arc<Commits> {
        &self.commits
    }

    /// Resolves once `ticket` is settled: `Err(why)` if its write failed.
    pub async fn wait_durable(&self, ticket: u64) -> Result<(), String> {
        self.commits.wait(ticket).await;
        self.commits.outcome(ticket).unwrap_or(Ok(()))
    }

    /// After a failed write: the listener's state matches what is durable,
    /// so writes may be taken again.
    pub fn resume(&self) {
        self.submit.lock().accepting = true;
        *self.commits.unhealthy.lock() = None;
        tracing::info!(path = %self.path.display(), "the store takes writes again");
    }

    /// `Err(why)` while the store takes no writes.
    pub fn health(&self) -> Result<(), String> {
        self.commits.health()
    }

    /// Messages of a channel with `from <= index < to`, ascending, at most
    /// `limit`, the newest ones when more exist.
    pub fn messages(
        &self,
        sid: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        blocking(|| self.reader.messages(sid, from, to, limit))
    }

    /// The oldest index still stored for a channel.
    pub fn oldest_index(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        blocking(|| self.reader.oldest_index(sid))
    }

    /// A channel that is no longer in memory (ended): whether it exists, and
    /// its next index.
    pub fn ended_channel(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        blocking(|| self.reader.ended_channel(sid))
    }

    /// Stored webhook events after `after`.
    pub(crate) fn webhook_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<WebhookEventRow>, StoreError> {
        blocking(|| self.reader.webhook_events(after, limit))
    }

    /// How far a webhook URL got.
    pub(crate) fn webhook_cursor(&self, url: &str) -> Result<u64, StoreError> {
        blocking(|| self.reader.webhook_cursor(url))
    }

    /// A channel's stored row.
    pub(crate) fn channel_record(&self, sid: &str) -> Result<Option<ChannelRecord>, StoreError> {
        blocking(|| self.reader.channel_record(sid))
    }

    /// Everything durable (a reload after a failed write).
    pub fn snapshot(&self, recent_messages: usize) -> Result<Snapshot, StoreError> {
        blocking(|| self.reader.snapshot(recent_messages))
    }

    /// Whether the last retention slice left work behind (then the next
    /// one should not wait a whole purge interval).
    pub fn retention_behind(&self) -> bool {
        self.commits.retention_behind.load(Ordering::Acquire)
    }

    /// Stops taking writes and lets the writer commit what it has: waits
    /// for it a bounded time, so a stuck disk cannot stop the process from
    /// exiting.
    pub fn close(&self) {
        let writer = {
            let mut submitter = self.submit.lock();
            submitter.sender = None;
            submitter.writer.take()
        };
        self.stop.store(true, Ordering::Release);
        // Out of the pace's wait at once: what is queued commits now.
        if let Some(writer) = writer {
            writer.unpark();
        }
        if let Some(done) = self.writer_done.lock().take() {
            if done.recv_timeout(CLOSE_WAIT).is_err() {
                tracing::error!(path = %self.path.display(), "the store's writer did not finish in time; exiting without it");
            }
        }
    }
}

impl<A: AfterCommit> Drop for Store<A> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A read that may wait for the disk: on the multi-threaded runtime the
/// worker first hands its other sessions to another thread
/// (`block_in_place`), so one slow read stalls only its own caller.
fn blocking<T>(read: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(read)
        }
        _ => read(),
    }
}

/// Jobs applied per batch at most.
const MAX_BATCH: usize = 8192;

/// When the writer starts a commit, with `fsync` (group commit).
///
/// A flush of a few hundred bytes costs about as much CPU in the kernel
/// (the device's write and cache-flush requests, their interrupts, the
/// writer's sleep and wake-up) as one of a few hundred kilobytes: on this
/// project's test machines ~75 µs of kernel time per commit. So the cost
/// of durability is set by how many commits a second there are, not by how
/// many messages. Without a pace a steady stream of writes commits nearly
/// one job at a time. Paced, a commit starts no sooner than `min` after
/// the one before it started, and then only once `full_batch` jobs are
/// waiting, or at the latest `max` after it: a busy broker commits full
/// batches about every `min` (its latency barely moves), a moderately busy
/// one gathers `max`'s worth per commit (it has the latency to spare, and
/// would otherwise spend most of its durability CPU on near-empty
/// commits). A write after a quiet spell (`max` or more since the last
/// commit) is committed at once, and after a sparse commit (fewer than
/// `SPARSE` jobs: a client that waits for each acknowledgement before it
/// sends again, or a trickle) the next waits only `min`: waiting longer
/// would not have gathered more, only slowed the acknowledgement that the
/// next write waits for. `max` is `commit_delay_ms` (default 3;
/// 0 commits as soon as the writer is free, as `os` does). The same idea
/// as MySQL's `binlog_group_commit_sync_delay` with `..._no_delay_count`.
#[derive(Clone, Copy, Debug)]
struct CommitPace {
    min: Duration,
    max: Duration,
    full_batch: u64,
}

impl CommitPace {
    /// Jobs that make a full batch.
    const FULL_BATCH: u64 = 32;
    /// The shortest wait from one commit to the next while batches fill.
    const MIN: Duration = Duration::from_millis(1);
    /// A commit of fewer jobs is sparse: the next one waits only `min`.
    const SPARSE: u64 = 4;

    /// The pace for `durability`, waiting at most `delay`
    /// (`commit_delay_ms`; the default is 3 ms).
    fn of(durability: Durability, delay: Duration) -> CommitPace {
        if durability != Durability::Fsync || delay.is_zero() {
            return CommitPace::NONE;
        }
        CommitPace {
            min: delay.min(CommitPace::MIN),
            max: delay,
            full_batch: CommitPace::FULL_BATCH,
        }
    }

    /// `os` and `memory`: every commit as soon as there is a job (and no
    /// wake-ups from submitters).
    const NONE: CommitPace = CommitPace {
        min: Duration::ZERO,
        max: Duration::ZERO,
        full_batch: 0,
    };

    /// How much longer the next commit must wait, `waiting` jobs being
    /// queued `since_last` after the last commit (of `last_batch` jobs)
    /// started; `None`: start it now.
    fn wait(&self, since_last: Duration, last_batch: u64, waiting: u64) -> Option<Duration> {
        let until = if waiting >= self.full_batch || last_batch < CommitPace::SPARSE {
            self.min
        } else {
            self.max
        };
        until.checked_sub(since_last).filter(|wait| !wait.is_zero())
    }
}

/// The file beside the database that records how many writes were
/// acknowledged, where a damaged journal cannot reach it.
pub const ACK_MARKER_FILE: &str = "acknowledged";

/// The acknowledged-writes marker: 16 bytes, the count and its complement
/// (a torn or damaged marker reads as damaged, not as a smaller count).
/// Written after each commit with one `pwrite` and no fsync of its own:
/// written after the data it counts, it can lag behind the store after a
/// power loss but never run ahead of it.
struct AckMarker {
    file: std::fs::File,
    path: PathBuf,
}

impl AckMarker {
    fn open(path: &Path) -> Result<AckMarker, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::Unwritable {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(AckMarker {
            file,
            path: path.to_owned(),
        })
    }

    /// The acknowledged count (0 for a new, empty marker).
    fn read(&self) -> Result<u64, StoreError> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        let n = self
            .file
            .read_at(&mut buf, 0)
            .map_err(|e| StoreError::Dir {
                path: self.path.clone(),
                source: e,
            })?;
        if n == 0 {
            return Ok(0);
        }
        let count = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let check = u64::from_le_bytes(buf[8..].try_into().expect("8 bytes"));
        if n != 16 || check != !count {
            return Err(StoreError::Unusable {
                path: self.path.clone(),
                reason: "the acknowledged-writes marker is damaged".into(),
            });
        }
        Ok(count)
    }

    fn write(&self, count: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&count.to_le_bytes());
        buf[8..].copy_from_slice(&(!count).to_le_bytes());
        self.file.write_all_at(&buf, 0)
    }
}

struct Writer<A> {
    backend: Box<dyn Backend>,
    pace: CommitPace,
    /// The store's newest ticket and the newest the writer took: how many
    /// jobs are waiting, without touching the queue.
    issued: Arc<AtomicU64>,
    taken: Arc<AtomicU64>,
    jobs: Receiver<Job<A>>,
    /// How many writes the store has taken in all.
    commit_seq: u64,
    marker: AckMarker,
    submit: Arc<Mutex<Submitter<A>>>,
    commits: Arc<Commits>,
    listener: Arc<OnceLock<Arc<dyn StoreListener>>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl<A: AfterCommit> Writer<A> {
    fn run(mut self) {
        let mut batch: Vec<Job<A>> = Vec::new();
        // When the last commit started, and how many jobs it took.
        let mut last_commit: Option<(Instant, u64)> = None;
        loop {
            // The pace is kept before waiting for a job, not after one
            // arrived: under a steady stream the jobs are already queued
            // when the pause ends, so the writer sleeps once per commit
            // instead of blocking on the queue and then sleeping too (one
            // context switch less per commit, and no wake-up for the
            // submitting thread to pay).
            if let Some((at, jobs)) = last_commit {
                self.keep_pace(at, jobs);
            }
            let Ok(first) = self.jobs.recv() else {
                break;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Some(last) = batch.last() {
                self.taken.store(last.ticket, Ordering::Release);
            }
            let commit_seq =
                self.commit_seq + batch.iter().map(|j| j.ops.len() as u64).sum::<u64>();
            let started = Instant::now();
            last_commit = Some((started, batch.len() as u64));
            let applied = self
                .backend
                .apply(&mut batch.iter().flat_map(|j| j.ops.iter()), commit_seq);
            match applied {
                Ok(behind) => {
                    self.metrics.store_commit(started.elapsed());
                    self.commit_seq = commit_seq;
                    // Recorded before anything of the batch is acknowledged
                    // or shown.
                    if let Err(e) = self.marker.write(commit_seq) {
                        tracing::error!(error = %e, path = %self.marker.path.display(), "cannot record acknowledged writes");
                    }
                    if batch
                        .iter()
                        .any(|j| j.ops.iter().any(|op| matches!(op, Op::Purge(_))))
                    {
                        self.commits
                            .retention_behind
                            .store(behind, Ordering::Release);
                    }
                    let upto = batch.last().map_or(0, |j| j.ticket);
                    let commits = &self.commits;
                    A::settled_all(batch.drain(..).map(|job| job.after), true, || {
                        commits.advance(upto)
                    });
                }
                Err(e) => {
                    self.fail(&mut batch, &e.to_string());
                    if !self.recover() {
                        return;
                    }
                }
            }
        }
    }

    /// Waits until the next commit may start (see [`CommitPace`]): `min`
    /// after the last one started with a full batch waiting or after a
    /// sparse one, else `max` after it. A submitter wakes the writer when
    /// the batch fills; a wake-up that comes early only makes it look again.
    fn keep_pace(&self, last_commit: Instant, last_batch: u64) {
        while !self.stop.load(Ordering::Acquire) {
            let waiting = self
                .issued
                .load(Ordering::Acquire)
                .saturating_sub(self.taken.load(Ordering::Acquire));
            match self.pace.wait(last_commit.elapsed(), last_batch, waiting) {
                Some(wait) => std::thread::park_timeout(wait),
                None => return,
            }
        }
    }

    /// A write failed: this batch and every job queued behind it fail now
    /// (nothing of them is stored or shown), and the store takes no more.
    fn fail(&mut self, batch: &mut Vec<Job<A>>, why: &str) {
        tracing::error!(error = %why, jobs = batch.len(), "a store write failed; answering unavailable until it can write again");
        self.metrics.store_failed();
        let last = {
            let mut submitter = self.submit.lock();
            submitter.accepting = false;
            submitter.last_ticket
        };
        // Everything submitted before `accepting` went false is queued by
        // now: take it all.
        while let Ok(job) = self.jobs.try_recv() {
            batch.push(job);
        }
        // Nothing is waiting any more (the pace counts from here).
        self.taken.store(last, Ordering::Release);
        let first = batch.first().map_or(last, |j| j.ticket);
        for job in batch.drain(..) {
            job.after.settled(false);
        }
        self.commits.fail(first, last, why);
        if let Some(listener) = self.listener.get() {
            listener.failed(why);
        }
    }

    /// Probes until the store can write again (or it is closed: `false`),
    /// then lets the listener reload and resume.
    fn recover(&mut self) -> bool {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(PROBE_EVERY);
            match self.backend.probe(self.commit_seq) {
                Ok(()) => break,
                Err(e) => tracing::debug!(error = %e, "the store still cannot write"),
            }
        }
        match self.listener.get() {
            Some(listener) => listener.recovered(),
            None => {
                self.submit.lock().accepting = true;
                *self.commits.unhealthy.lock() = None;
            }
        }
        true
    }
}

#[cfg(test)]
mod pace_tests {
    use super::{CommitPace, Durability, Op, Store, StoreEngine};
    use crate::metrics::Metrics;
    use std::sync::Arc;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    /// A last commit that was not sparse.
    const BUSY: u64 = 10;

    #[test]
    fn a_write_after_a_quiet_spell_is_committed_at_once() {
        let pace = CommitPace::of(Durability::Fsync, 3 * MS);
        assert_eq!(pace.wait(pace.max, BUSY, 1), None);
        assert_eq!(pace.wait(10 * pace.max, BUSY, 1), None);
    }

    #[test]
    fn a_few_jobs_wait_for_the_longest_pace_and_a_full_batch_for_the_shortest() {
        let pace = CommitPace {
            min: MS,
            max: 3 * MS,
            full_batch: 32,
        };
        assert_eq!(pace.wait(Duration::ZERO, BUSY, 5), Some(3 * MS));
        assert_eq!(pace.wait(2 * MS, BUSY, 31), Some(MS));
        assert_eq!(pace.wait(Duration::ZERO, BUSY, 32), Some(MS));
        assert_eq!(pace.wait(MS / 2, BUSY, 100), Some(MS / 2));
        assert_eq!(pace.wait(MS, BUSY, 32), None);
        assert_eq!(pace.wait(3 * MS, BUSY, 0), None);
    }

    /// Over real files: with a pace that would hold a commit for an hour,
    /// the first write is not held, a sparse commit holds the next one only
    /// the minimum, and after a commit that was not sparse a full batch is
    /// committed as soon as its last job is submitted (the submitter wakes
    /// the writer; without that wake-up this test waits out its timeout).
    #[test]
    fn a_full_batch_is_committed_without_waiting_out_the_pace() {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-pace-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let metrics = Arc::new(Metrics::default());
        let (store, _) = Store::<()>::open_with(
            &dir,
            Durability::Fsync,
            Duration::from_secs(3600),
            100,
            metrics.clone(),
            false,
            StoreEngine::Log,
            1 << 20,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let durable = |ticket| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), store.wait_durable(ticket)).await
            })
            .expect("committed long before the pace's hour")
            .unwrap()
        };
        let cursor = |seq| Op::WebhookCursor {
            url: Arc::from("http://hooks.example/"),
            seq,
        };
        let submit = |n: u64| {
            (0..n)
                .map(|seq| store.submit(vec![cursor(seq)], ()).unwrap())
                .last()
                .unwrap()
        };
        let commits = || {
            metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("switchboard_store_commit_duration_seconds_count "))
                .expect("the commit histogram")
                .parse::<u64>()
                .unwrap()
        };
        durable(submit(1));
        // Sparse commits so far: each waits a millisecond. Jobs submitted
        // together within it make one commit that is not sparse (retried
        // if the writer was already waiting on the queue and took fewer).
        let mut tries = 0;
        loop {
            let before = commits();
            durable(submit(CommitPace::SPARSE));
            if commits() == before + 1 {
                break;
            }
            tries += 1;
            assert!(
                tries < 100,
                "never one commit for {} jobs",
                CommitPace::SPARSE
            );
        }
        let upto = store.durable_upto();
        durable(submit(CommitPace::FULL_BATCH));
        assert_eq!(store.durable_upto(), upto + CommitPace::FULL_BATCH);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_a_sparse_commit_the_next_waits_only_the_minimum() {
        let pace = CommitPace::of(Durability::Fsync, 3 * MS);
        // One client that waits for each acknowledgement: one job a commit.
        assert_eq!(pace.wait(Duration::ZERO, 1, 1), Some(MS));
        assert_eq!(pace.wait(MS, 1, 1), None);
        assert_eq!(
            pace.wait(Duration::ZERO, CommitPace::SPARSE - 1, 2),
            Some(MS)
        );
        // Enough jobs last time: gathering for longer is worth it.
        assert_eq!(
            pace.wait(Duration::ZERO, CommitPace::SPARSE, 2),
            Some(3 * MS)
        );
    }

    #[test]
    fn without_fsync_or_without_a_delay_nothing_waits() {
        for pace in [
            CommitPace::of(Durability::Os, 3 * MS),
            CommitPace::of(Durability::Fsync, Duration::ZERO),
        ] {
            assert_eq!(pace.wait(Duration::ZERO, BUSY, 0), None);
            assert_eq!(pace.wait(Duration::ZERO, BUSY, 1), None);
        }
    }

    #[test]
    fn a_delay_under_a_millisecond_is_the_whole_wait() {
        let pace = CommitPace::of(Durability::Fsync, MS / 2);
        assert_eq!(pace.wait(Duration::ZERO, BUSY, 1), Some(MS / 2));
        assert_eq!(pace.wait(Duration::ZERO, BUSY, 100), Some(MS / 2));
        let pace = CommitPace::of(Durability::Fsync, 10 * MS);
        assert_eq!(pace.wait(Duration::ZERO, BUSY, 1), Some(10 * MS));
        assert_eq!(pace.wait(Duration::ZERO, BUSY, 32), Some(MS));
    }
}

#[cfg(test)]
mod attributes_tests {
    use super::Attributes;
    use serde_json::json;

    #[test]
    fn attributes_are_written_as_the_text_serde_json_writes_for_the_map() {
        let map = json!({"z": [1, 2.5, null], "a": {"nested": "é\"\n"}, "m": true});
        let attributes = Attributes::of(&map);
        assert_eq!(attributes.json(), serde_json::to_string(&map).unwrap());
        // In JSON as the text, inside any frame, and as the map to a Value.
        #[derive(serde::Serialize)]
        struct Holder<'a> {
            attributes: &'a Attributes,
        }
        let held = Holder {
            attributes: &attributes,
        };
        assert_eq!(
            serde_json::to_string(&held).unwrap(),
            serde_json::to_string(&json!({ "attributes": map })).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&held).unwrap(),
            json!({ "attributes": map })
        );
        // In MessagePack as the map itself, not as the text.
        let packed = rmp_serde::to_vec_named(&held).unwrap();
        let unpacked: serde_json::Value = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(unpacked, json!({ "attributes": map }));
        assert_eq!(
            packed,
            rmp_serde::to_vec_named(&json!({ "attributes": map })).unwrap()
        );
    }

    #[test]
    fn attributes_read_back_from_storage() {
        let attributes = Attributes::read(r#"{"a":1}"#);
        assert_eq!(attributes, Attributes::of(&json!({"a": 1})));
        assert_eq!(Attributes::read("not json").json(), "null");
        assert_eq!(Attributes::empty().json(), "{}");
        assert_eq!(Attributes::of(&json!({})), Attributes::empty());
        assert_eq!(Attributes::read("{}"), Attributes::empty());
        // The empty map (held as nothing) is a map in both encodings.
        let empty = Attributes::empty();
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        assert_eq!(serde_json::to_value(&empty).unwrap(), json!({}));
        assert_eq!(
            rmp_serde::to_vec_named(&empty).unwrap(),
            rmp_serde::to_vec_named(&json!({})).unwrap()
        );
        let parsed: Attributes = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(parsed.to_value(), json!({"a": 1}));
    }
}
