//! Durable storage: messages, engagements, memberships and per-identity
//! state in an embedded SQLite database under the data directory.
//!
//! Writes never run on the caller's thread. An action submits an [`Op`]
//! (under the lock that ordered it, so ops of one channel are submitted in
//! index order) and gets a ticket; a single writer thread takes every op
//! waiting, applies the whole batch in one transaction and commits once
//! (group commit), then publishes how far it is durable. Whatever the op
//! made visible to clients (a `messageAdded`, a `memberLeft`) is only
//! delivered once its ticket is durable, and a command's reply waits for the
//! tickets it produced: an acknowledged message is on disk.
//!
//! Why SQLite in WAL mode: its two sync levels are exactly the two durable
//! levels offered. `synchronous = FULL` fsyncs the log on every commit
//! (survives power loss); `synchronous = NORMAL` writes the log to the OS on
//! every commit and fsyncs only at checkpoints (survives a crash or kill of
//! the broker, not of the machine). A reader connection sees committed data
//! while the writer writes. Measured against redb with this workload
//! (`benches/store_engines.rs`, figures in docs/benchmarks.md): SQLite is
//! as fast or faster for small commits, which is where a broker below
//! saturation lives; redb is cheaper only for commits of hundreds of
//! messages.

mod sqlite;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::Role;
use crate::broker::channel::Channel;
use crate::metrics::Metrics;

pub use sqlite::{ChannelRow, IdentityRow, Snapshot};

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
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage is overloaded: too many writes waiting")]
    Overloaded,
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
    pub attributes: Value,
    pub date_created: String,
    /// Unix milliseconds, for age-based retention.
    #[serde(skip)]
    pub created_ms: i64,
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

struct Job {
    ticket: u64,
    op: Op,
    /// A channel with events waiting for this ticket to be durable.
    deliver: Option<Arc<Channel>>,
}

/// The handle actions write through.
pub struct Store {
    /// Ticket assignment and submission under one lock, so tickets reach the
    /// writer in ticket order and "durable up to N" covers every op <= N.
    submit: Mutex<Submitter>,
    /// The newest ticket handed out; written under `submit`, read without
    /// it (every session checks it around every command).
    issued: AtomicU64,
    durable: Arc<Durable>,
    /// Read connections. WAL readers block neither each other nor the
    /// writer, so several let concurrent history reads run side by side.
    readers: Vec<Mutex<rusqlite::Connection>>,
    next_reader: AtomicUsize,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

/// How far the store is durable, and who waits for what. Why not a `watch`:
/// every commit would wake every waiting session; here a commit wakes only
/// the waiters its tickets cover.
#[derive(Default)]
struct Durable {
    upto: AtomicU64,
    /// The last purge stopped at one of its bounds: more retention work is
    /// waiting for another slice.
    retention_behind: std::sync::atomic::AtomicBool,
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

impl Durable {
    /// Called by the writer after a commit.
    fn advance(&self, upto: u64) {
        self.upto.store(upto, Ordering::Release);
        let ready = {
            let mut waiters = self.waiters.lock();
            let later = waiters.split_off(&(upto + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for sender in ready.into_values().flatten() {
            let _ = sender.send(());
        }
    }

    async fn wait(&self, ticket: u64) {
        if self.upto.load(Ordering::Acquire) >= ticket {
            return;
        }
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiters = self.waiters.lock();
            // Checked again under the lock `advance` takes, so a commit
            // between the first check and here cannot be missed.
            if self.upto.load(Ordering::Acquire) >= ticket {
                return;
            }
            waiters.entry(ticket).or_default().push(sender);
        }
        // The writer never drops a waiter without sending; if the store
        // stops, the sender is dropped and this returns too.
        let _ = receiver.await;
    }
}

struct Submitter {
    last_ticket: u64,
    sender: Option<SyncSender<Job>>,
}

/// Ops waiting for the writer, at most.
const QUEUE_BOUND: usize = 65_536;

/// Read connections (history pages, recovery from disk, transcripts).
const READERS: usize = 4;

impl Store {
    /// Opens (or creates) the store in `dir` and reads back what it holds.
    /// A database that cannot be read is refused, never replaced.
    ///
    /// The store counts every write it commits (`commit_seq`, in the
    /// database) and, after each commit, records how many were acknowledged
    /// in a small file beside it ([`ACK_MARKER_FILE`]). A database holding
    /// fewer writes than were acknowledged has lost some (a damaged journal
    /// that SQLite discarded on open, a truncated file): it is refused,
    /// untouched, unless `accept_loss` (`--accept-data-loss`).
    pub fn open(
        dir: &Path,
        durability: Durability,
        recent_messages: usize,
        metrics: Arc<Metrics>,
        accept_loss: bool,
    ) -> Result<(Store, Snapshot), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("switchboard.db");
        let marker = AckMarker::open(&dir.join(ACK_MARKER_FILE))?;
        let acknowledged = marker.read()?;
        let db_exists = path.exists();
        if !db_exists && acknowledged > 0 && !accept_loss {
            return Err(StoreError::LostWrites {
                path,
                lost: acknowledged,
                found: 0,
                acknowledged,
            });
        }
        let (writer_conn, found) = sqlite::open_writer(&path, durability)?;
        if found < acknowledged {
            if !accept_loss {
                return Err(StoreError::LostWrites {
                    path,
                    lost: acknowledged - found,
                    found,
                    acknowledged,
                });
            }
            tracing::warn!(
                path = %path.display(),
                lost = acknowledged - found,
                "starting with acknowledged writes lost (--accept-data-loss): open channels continue above every index handed out before"
            );
        }
        sqlite::prepare(&writer_conn, &path)?;
        if found < acknowledged {
            sqlite::accept_loss(&writer_conn, acknowledged - found, acknowledged)?;
        }
        let commit_seq = found.max(acknowledged);
        let snapshot = sqlite::load(&writer_conn, recent_messages)?;
        let readers = (0..READERS)
            .map(|_| sqlite::open_reader(&path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        let (sender, receiver) = sync_channel::<Job>(QUEUE_BOUND);
        let durable = Arc::new(Durable::default());
        let durable_tx = durable.clone();
        let grown = sqlite::Grown::new(
            snapshot
                .channels
                .iter()
                .map(|c| (c.sid.clone(), c.next_index)),
        );
        let writer = std::thread::Builder::new()
            .name("switchboard-store".into())
            .spawn(move || {
                write_loop(
                    writer_conn,
                    receiver,
                    Progress { commit_seq, marker },
                    grown,
                    durable_tx,
                    metrics,
                )
            })
            .map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        Ok((
            Store {
                submit: Mutex::new(Submitter {
                    last_ticket: 0,
                    sender: Some(sender),
                }),
                issued: AtomicU64::new(0),
                durable,
                readers,
                next_reader: AtomicUsize::new(0),
                writer: Mutex::new(Some(writer)),
                path,
            },
            snapshot,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store can take writes now: `Err` says why not (for
    /// `/readyz` and logs).
    pub fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Queues a write; returns its ticket. Never blocks: a full queue is an
    /// error the caller reports, and nothing has been changed for it.
    pub fn submit(&self, op: Op, deliver: Option<Arc<Channel>>) -> Result<u64, StoreError> {
        let mut submitter = self.submit.lock();
        let ticket = submitter.last_ticket + 1;
        let sender = submitter.sender.as_ref().ok_or(StoreError::Stopped)?;
        match sender.try_send(Job {
            ticket,
            op,
            deliver,
        }) {
            Ok(()) => {
                submitter.last_ticket = ticket;
                self.issued.store(ticket, Ordering::Release);
                Ok(ticket)
            }
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Stopped),
        }
    }

    /// Whether there is room for `n` more ops (checked before an action
    /// changes anything, so it never half-applies).
    pub fn has_room(&self) -> bool {
        self.last_ticket().saturating_sub(self.durable_upto()) < (QUEUE_BOUND as u64 - 64)
    }

    /// The newest ticket handed out.
    pub fn last_ticket(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }

    pub fn durable_upto(&self) -> u64 {
        self.durable.upto.load(Ordering::Acquire)
    }

    /// Resolves once every op up to `ticket` is committed.
    pub async fn wait_durable(&self, ticket: u64) {
        self.durable.wait(ticket).await;
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
        self.read(|conn| sqlite::messages(conn, sid, from, to, limit))
    }

    /// The oldest index still stored for a channel.
    pub fn oldest_index(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        self.read(|conn| sqlite::oldest_index(conn, sid))
    }

    /// A channel that is no longer in memory (ended): whether it exists, and
    /// its next index.
    pub fn ended_channel(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        self.read(|conn| sqlite::channel_next_index(conn, sid))
    }

    /// Runs a read on a free reader connection. A read that misses the page
    /// cache waits for the disk: on the multi-threaded runtime the worker
    /// first hands its other sessions to another thread
    /// (`block_in_place`), so one slow read stalls only its own caller.
    fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let run = || {
            let conn = self
                .readers
                .iter()
                .find_map(|r| r.try_lock())
                .unwrap_or_else(|| {
                    let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
                    self.readers[i].lock()
                });
            read(&conn)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }

    /// Whether the last retention slice left work behind (then the next
    /// one should not wait a whole purge interval).
    pub fn retention_behind(&self) -> bool {
        self.durable.retention_behind.load(Ordering::Acquire)
    }

    /// Stops taking writes, lets the writer commit what it has, and waits.
    pub fn close(&self) {
        self.submit.lock().sender = None;
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Ops applied per transaction at most.
const MAX_BATCH: usize = 8192;

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

/// How many writes the store has taken, and where that is recorded once
/// acknowledged.
struct Progress {
    commit_seq: u64,
    marker: AckMarker,
}

fn write_loop(
    mut conn: rusqlite::Connection,
    jobs: std::sync::mpsc::Receiver<Job>,
    mut progress: Progress,
    mut grown: sqlite::Grown,
    durable: Arc<Durable>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Job> = Vec::new();
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut backoff = std::time::Duration::from_millis(10);
        // A failed commit (disk full, I/O error) is retried, never skipped:
        // nothing in the batch has been acknowledged or delivered yet.
        let commit_seq = progress.commit_seq + batch.len() as u64;
        let behind = loop {
            let started = std::time::Instant::now();
            match sqlite::apply(
                &mut conn,
                batch.iter().map(|j| &j.op),
                commit_seq,
                &mut grown,
            ) {
                Ok(behind) => {
                    metrics.store_commit(started.elapsed());
                    break behind;
                }
                Err(e) => {
                    tracing::error!(error = %e, ops = batch.len(), "store commit failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        };
        progress.commit_seq = commit_seq;
        // Recorded before anything of the batch is acknowledged or shown.
        if let Err(e) = progress.marker.write(commit_seq) {
            tracing::error!(error = %e, path = %progress.marker.path.display(), "cannot record acknowledged writes");
        }
        if batch.iter().any(|j| matches!(j.op, Op::Purge(_))) {
            durable.retention_behind.store(behind, Ordering::Release);
        }
        let upto = batch.last().map(|j| j.ticket).unwrap_or(0);
        let mut delivered = HashSet::new();
        for job in &batch {
            if let Some(channel) = &job.deliver {
                if delivered.insert(Arc::as_ptr(channel)) {
                    channel.lock().deliver_ready(&channel.sid, upto, &metrics);
                }
            }
        }
        durable.advance(upto);
        batch.clear();
    }
}
