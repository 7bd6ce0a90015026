//! The SQLite side of the store: schema, start-up checks, loading, applying
//! batches, and reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::{
    check_loss, Attributes, Backend, ChannelRow, Durability, HistoryReader, IdentityRow, Op,
    Opened, Snapshot, StoreError, StoredMessage,
};
use crate::auth::Role;

/// Bumped when the schema changes; a newer file is refused, not rewritten.
const SCHEMA_VERSION: i64 = 1;

/// The writer's page cache, in KiB.
const PAGE_CACHE_KIB: i64 = 64 * 1024;

/// Rows deleted per statement by one purge op, so that retention work is
/// sliced between ordinary batches instead of stalling them.
const PURGE_SLICE: i64 = 2000;

/// Channels one purge op checks against `max_messages`, at most.
const TRIM_CHANNELS: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS channels (
    sid TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    customer TEXT,
    form_data TEXT NOT NULL,
    started_at TEXT NOT NULL,
    next_index INTEGER NOT NULL DEFAULT 0,
    ended_ms INTEGER
);
CREATE TABLE IF NOT EXISTS members (
    sid TEXT NOT NULL,
    identity TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (sid, identity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    sid TEXT NOT NULL,
    idx INTEGER NOT NULL,
    author TEXT NOT NULL,
    author_role TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    date_created TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (sid, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (created_ms);
CREATE INDEX IF NOT EXISTS channels_by_end ON channels (ended_ms) WHERE ended_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    anonymous INTEGER NOT NULL,
    expanded INTEGER NOT NULL,
    engagement TEXT,
    engagement_started_at TEXT
);
CREATE TABLE IF NOT EXISTS webhook_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sid TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursors (url TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drafts (
    identity TEXT NOT NULL,
    sid TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (identity, sid)
) WITHOUT ROWID;
";

fn unusable(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Unusable {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Opens the writer connection and checks the file is a Switchboard store.
/// Returns it with the commit sequence it holds (see `Store::open`). A file
/// that exists must already be one: an empty or schema-less file is refused,
/// not taken for a fresh start. Nothing is written here: a file refused by
/// a later check is left exactly as it was (no checkpoint on close).
fn open_writer(path: &Path, durability: Durability) -> Result<(Connection, u64), StoreError> {
    let existed = match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(unusable(path, "the database file is empty (0 bytes)"))
        }
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(unusable(path, e.to_string())),
    };
    // SQLite quietly opens a file it may not write read-only, and fails
    // only at the first write; say it at start, naming the file.
    if existed {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Unwritable {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )
    .map_err(|e| unusable(path, e.to_string()))?;
    // Closing must not checkpoint a journal a later check refuses: the
    // operator gets the files as they were.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    // Any read fails on a file that is not a database; say so plainly.
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| unusable(path, e.to_string()))?;
    if check != "ok" {
        return Err(unusable(path, format!("integrity check failed: {check}")));
    }
    let version: Option<i64> = if existed {
        let has_meta: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| unusable(path, e.to_string()))?;
        if !has_meta {
            return Err(unusable(path, "the database has no Switchboard schema"));
        }
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    match version {
        None if existed => return Err(unusable(path, "the database has no schema version")),
        None | Some(SCHEMA_VERSION) => {}
        Some(other) => {
            return Err(unusable(
                path,
                format!("schema version {other}; this broker reads version {SCHEMA_VERSION}"),
            ))
        }
    }
    let commit_seq: Option<i64> = if existed {
        conn.query_row("SELECT value FROM meta WHERE key = 'commit_seq'", [], |r| {
            r.get(0)
        })
        .optional()?
    } else {
        None
    };
    // Only now that the file is known to be ours: settings that write.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| unusable(path, e.to_string()))?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        _ => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Keep the hot B-tree pages in memory (SQLite's default is ~2 MB): every
    // cache miss on an insert is a pread on the hot path.
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every statement `apply` and `purge` run stays prepared (rusqlite's
    // default cache holds 16).
    conn.set_prepared_statement_cache_capacity(64);
    Ok((conn, commit_seq.unwrap_or(0) as u64))
}

/// Creates what a new store needs (a no-op on an existing one) and proves
/// the file can be written: a store that cannot take a write (read-only
/// file or directory, full disk) stops the broker at start, not at the
/// first message.
fn prepare(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let write = |e: rusqlite::Error| StoreError::Unwritable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    conn.execute_batch(SCHEMA).map_err(write)?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
        params![SCHEMA_VERSION],
    )
    .map_err(write)?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('commit_seq', 0)",
        [],
    )
    .map_err(write)?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('resume_secret', ?1)",
        params![rand::random::<[u8; 32]>().to_vec()],
    )
    .map_err(write)?;
    // A write that changes nothing but must reach the file.
    conn.execute("UPDATE meta SET value = value WHERE key = 'commit_seq'", [])
        .map_err(write)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        false,
    )?;
    Ok(())
}

/// After acknowledged writes were found lost (and the operator accepted
/// it): every open channel's numbering jumps `lost` past what the store
/// still has, so no index a client may have seen is handed out again (a
/// channel cannot have taken more messages than writes were lost), and
/// the store's sequence catches up with the acknowledged one.
fn renumber_after_loss(conn: &Connection, lost: u64, acknowledged: u64) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE channels SET next_index =
            max(next_index, coalesce((SELECT MAX(idx) + 1 FROM messages m WHERE m.sid = channels.sid), 0)) + ?1
         WHERE ended_ms IS NULL",
        params![lost as i64],
    )?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'commit_seq'",
        params![acknowledged as i64],
    )?;
    tx.commit()?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    Ok(conn)
}

fn role(text: &str) -> Role {
    text.parse().unwrap_or(Role::Customer)
}

fn message_from_row(sid: &Arc<str>, row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let attributes: String = row.get("attributes")?;
    let author: String = row.get("author")?;
    let author_role: String = row.get("author_role")?;
    Ok(StoredMessage {
        channel_sid: sid.clone(),
        index: row.get::<_, i64>("idx")? as u64,
        author: Arc::from(author),
        author_role: role(&author_role),
        body: row.get("body")?,
        attributes: Attributes::read(&attributes),
        date_created: row.get("date_created")?,
        created_ms: row.get("created_ms")?,
    })
}

/// Reads everything start-up restores.
fn load(conn: &Connection, recent_messages: usize) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();

    let secret: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'resume_secret'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    // `prepare` made it when the store was new.
    snapshot.resume_secret = secret.unwrap_or_default();

    let mut stmt = conn.prepare(
        "SELECT id, role, anonymous, expanded, engagement, engagement_started_at FROM identities",
    )?;
    snapshot.identities = stmt
        .query_map([], |r| {
            let id: String = r.get(0)?;
            let role_text: String = r.get(1)?;
            let engagement: Option<String> = r.get(4)?;
            let started: Option<String> = r.get(5)?;
            Ok(IdentityRow {
                id: Arc::from(id),
                role: role(&role_text),
                anonymous: r.get(2)?,
                expanded: r.get(3)?,
                engagement: engagement.map(|sid| (Arc::from(sid), started.unwrap_or_default())),
            })
        })?
        .collect::<Result<_, _>>()?;

    let mut stmt = conn.prepare("SELECT identity, sid, body FROM drafts")?;
    snapshot.drafts = stmt
        .query_map([], |r| {
            Ok((
                Arc::from(r.get::<_, String>(0)?),
                Arc::from(r.get::<_, String>(1)?),
                r.get(2)?,
            ))
        })?
        .collect::<Result<_, _>>()?;

    let mut members: HashMap<String, Vec<(Arc<str>, Role)>> = HashMap::new();
    let mut stmt = conn.prepare("SELECT sid, identity, role FROM members")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (sid, identity, role_text) = row?;
        members
            .entry(sid)
            .or_default()
            .push((Arc::from(identity), role(&role_text)));
    }

    let mut stmt = conn.prepare(
        "SELECT sid, queue, customer, form_data, started_at, next_index,
                (SELECT MAX(idx) FROM messages m WHERE m.sid = c.sid)
         FROM channels c WHERE ended_ms IS NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        let sid: String = r.get(0)?;
        let queue: String = r.get(1)?;
        let customer: Option<String> = r.get(2)?;
        let form: String = r.get(3)?;
        let next: i64 = r.get(5)?;
        let max_idx: Option<i64> = r.get(6)?;
        Ok(ChannelRow {
            members: Vec::new(),
            recent: Vec::new(),
            next_index: next.max(max_idx.map_or(0, |m| m + 1)) as u64,
            sid: Arc::from(sid),
            queue: Arc::from(queue),
            customer: customer.map(Arc::from),
            form_data: serde_json::from_str(&form).unwrap_or(Value::Null),
            started_at: r.get(4)?,
        })
    })?;
    for row in rows {
        let mut channel = row?;
        channel.members = members.remove(&*channel.sid).unwrap_or_default();
        channel.recent = messages(conn, &channel.sid, 0, channel.next_index, recent_messages)?
            .into_iter()
            .map(Arc::new)
            .collect();
        snapshot.channels.push(channel);
    }
    Ok(snapshot)
}

/// Runs a statement through the connection's statement cache: a batch runs
/// the same few statements over and over, and parsing one costs more than
/// running it.
fn cached(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Channels that took messages since retention last checked them against
/// `max_messages`, with the index after their newest message: the only
/// ones that can have grown past it. The writer keeps them so that a
/// retention pass looks at a bounded number of channels, never all of them
/// (with tens of thousands of open channels, a pass over all of them held
/// every commit up for the better part of a second).
#[derive(Default)]
struct Grown {
    next: HashMap<Arc<str>, u64>,
    /// Checked by the batch being applied; forgotten once it commits.
    checked: Vec<(Arc<str>, u64)>,
    /// A purge in the batch being applied stopped at one of its bounds.
    behind: bool,
}

impl Grown {
    /// Every open channel at start-up (the last run's may not have been
    /// checked before it stopped).
    fn new(channels: impl IntoIterator<Item = (Arc<str>, u64)>) -> Self {
        Grown {
            next: channels.into_iter().collect(),
            checked: Vec::new(),
            behind: false,
        }
    }

    /// Per message: clones the sid only for a channel not yet listed.
    fn appended(&mut self, sid: &Arc<str>, index: u64) {
        match self.next.get_mut(sid) {
            Some(next) => *next = (*next).max(index + 1),
            None => {
                self.next.insert(sid.clone(), index + 1);
            }
        }
    }

    /// Forgets the channels the committed batch checked, unless they took
    /// more messages after the check.
    fn settle(&mut self) {
        for (sid, next) in self.checked.drain(..) {
            if self.next.get(&sid) == Some(&next) {
                self.next.remove(&sid);
            }
        }
    }
}

/// Applies a batch in one transaction (one commit, one fsync at most).
/// Returns whether a purge in it left retention work for another slice.
fn apply<'a>(
    conn: &mut Connection,
    ops: impl Iterator<Item = &'a Op>,
    commit_seq: u64,
    grown: &mut Grown,
) -> Result<bool, StoreError> {
    // Whatever a failed attempt checked is checked again.
    grown.checked.clear();
    grown.behind = false;
    let tx = conn.transaction()?;
    {
        let mut append = tx.prepare_cached(
            "INSERT OR REPLACE INTO messages
             (sid, idx, author, author_role, body, attributes, date_created, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for op in ops {
            match op {
                Op::AppendMessage(m) => {
                    append.execute(params![
                        &*m.channel_sid,
                        m.index as i64,
                        &*m.author,
                        m.author_role.as_str(),
                        m.body,
                        m.attributes.json(),
                        m.date_created,
                        m.created_ms,
                    ])?;
                    grown.appended(&m.channel_sid, m.index);
                }
                Op::SaveChannel {
                    sid,
                    queue,
                    customer,
                    form_data,
                    started_at,
                } => {
                    cached(
                        &tx,
                        "INSERT OR REPLACE INTO channels (sid, queue, customer, form_data, started_at, next_index, ended_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, 0, NULL)",
                        params![&**sid, &**queue, customer.as_deref(), form_data, started_at],
                    )?;
                }
                Op::EndChannel { sid, ended_ms } => {
                    cached(
                        &tx,
                        "UPDATE channels SET ended_ms = ?2 WHERE sid = ?1",
                        params![&**sid, ended_ms],
                    )?;
                }
                Op::AddMember {
                    sid,
                    identity,
                    role,
                } => {
                    cached(
                        &tx,
                        "INSERT OR REPLACE INTO members (sid, identity, role) VALUES (?1, ?2, ?3)",
                        params![&**sid, &**identity, role.as_str()],
                    )?;
                }
                Op::RemoveMember { sid, identity } => {
                    cached(
                        &tx,
                        "DELETE FROM members WHERE sid = ?1 AND identity = ?2",
                        params![&**sid, &**identity],
                    )?;
                    cached(
                        &tx,
                        "DELETE FROM drafts WHERE sid = ?1 AND identity = ?2",
                        params![&**sid, &**identity],
                    )?;
                }
                Op::SaveIdentity(row) => {
                    cached(
                        &tx,
                        "INSERT OR REPLACE INTO identities (id, role, anonymous, expanded, engagement, engagement_started_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            &*row.id,
                            row.role.as_str(),
                            row.anonymous,
                            row.expanded,
                            row.engagement.as_ref().map(|(sid, _)| &**sid),
                            row.engagement.as_ref().map(|(_, at)| at.as_str()),
                        ],
                    )?;
                }
                Op::SetDraft {
                    identity,
                    sid,
                    body,
                } => match body {
                    Some(body) => {
                        cached(
                            &tx,
                            "INSERT OR REPLACE INTO drafts (identity, sid, body) VALUES (?1, ?2, ?3)",
                            params![&**identity, &**sid, body],
                        )?;
                    }
                    None => {
                        cached(
                            &tx,
                            "DELETE FROM drafts WHERE identity = ?1 AND sid = ?2",
                            params![&**identity, &**sid],
                        )?;
                    }
                },
                Op::Purge(retention) => purge(&tx, retention, grown)?,
                Op::QueueWebhookEvent { channel_sid, body } => {
                    cached(
                        &tx,
                        "INSERT INTO webhook_events (sid, body) VALUES (?1, ?2)",
                        params![&**channel_sid, &**body],
                    )?;
                }
                Op::WebhookCursor { url, seq } => {
                    cached(
                        &tx,
                        "INSERT INTO webhook_cursors (url, seq) VALUES (?1, ?2) ON CONFLICT (url) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                        params![&**url, *seq as i64],
                    )?;
                }
                Op::PruneWebhookEvents { upto } => {
                    cached(
                        &tx,
                        "DELETE FROM webhook_events WHERE seq <= ?1",
                        params![*upto as i64],
                    )?;
                }
            }
        }
    }
    // With the batch, how many writes the store has taken in all: compared
    // at start with the count acknowledged to clients (`Store::open`).
    cached(
        &tx,
        "UPDATE meta SET value = ?1 WHERE key = 'commit_seq'",
        params![commit_seq as i64],
    )?;
    tx.commit()?;
    grown.settle();
    Ok(grown.behind)
}

/// One bounded slice of retention. Every statement is bounded: by the age
/// index and `PURGE_SLICE`, by `TRIM_CHANNELS` channels, by the ended
/// index and 100 channels.
fn purge(
    tx: &rusqlite::Transaction<'_>,
    r: &super::Retention,
    grown: &mut Grown,
) -> Result<(), StoreError> {
    // Age. A channel's numbering goes on from its newest message's index;
    // `next_index` records it for the channels whose messages this slice
    // may delete, in case it deletes all of them. (Recording it here rather
    // than on every append keeps one write per message on the hot path.)
    cached(
        tx,
        "UPDATE channels SET next_index = (SELECT MAX(idx) + 1 FROM messages m WHERE m.sid = channels.sid)
         WHERE sid IN (SELECT sid FROM messages WHERE created_ms < ?1 LIMIT ?2)
           AND next_index < (SELECT MAX(idx) + 1 FROM messages m WHERE m.sid = channels.sid)",
        params![r.older_than_ms, PURGE_SLICE],
    )?;
    let aged = cached(
        tx,
        "DELETE FROM messages WHERE (sid, idx) IN
           (SELECT sid, idx FROM messages WHERE created_ms < ?1 LIMIT ?2)",
        params![r.older_than_ms, PURGE_SLICE],
    )?;
    grown.behind |= aged as i64 == PURGE_SLICE || grown.next.len() > TRIM_CHANNELS;
    // Length: only channels that took messages since they were last
    // checked. The newest `max_messages` (at least one) stay, so the
    // numbering is still there to read.
    let mut budget = PURGE_SLICE;
    let candidates: Vec<(Arc<str>, u64)> = grown
        .next
        .iter()
        .take(TRIM_CHANNELS)
        .map(|(sid, next)| (sid.clone(), *next))
        .collect();
    for (sid, next) in candidates {
        if budget == 0 {
            break;
        }
        if let Some(keep_from) = next.checked_sub(r.max_messages).filter(|k| *k > 0) {
            let deleted = cached(
                tx,
                "DELETE FROM messages WHERE (sid, idx) IN
                   (SELECT sid, idx FROM messages WHERE sid = ?1 AND idx < ?2 LIMIT ?3)",
                params![&*sid, keep_from as i64, budget],
            )? as i64;
            budget -= deleted;
            if budget == 0 {
                // Maybe more to delete here: check it again next time.
                grown.behind = true;
                break;
            }
        }
        grown.checked.push((sid, next));
    }
    let ended: Vec<String> = {
        let mut stmt = tx.prepare(
            "SELECT sid FROM channels WHERE ended_ms IS NOT NULL AND ended_ms < ?1 LIMIT 100",
        )?;
        let rows = stmt.query_map(params![r.ended_before_ms], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let ended_count = ended.len();
    for sid in ended {
        cached(tx, "DELETE FROM messages WHERE sid = ?1", params![sid])?;
        cached(tx, "DELETE FROM members WHERE sid = ?1", params![sid])?;
        cached(tx, "DELETE FROM drafts WHERE sid = ?1", params![sid])?;
        cached(tx, "DELETE FROM channels WHERE sid = ?1", params![sid])?;
    }
    grown.behind |= ended_count == 100;
    Ok(())
}

/// Messages with `from <= idx < to`, the newest `limit` of them, ascending.
fn messages(
    conn: &Connection,
    sid: &str,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let sid_arc: Arc<str> = Arc::from(sid);
    let mut stmt = conn.prepare_cached(
        "SELECT idx, author, author_role, body, attributes, date_created, created_ms
         FROM messages WHERE sid = ?1 AND idx >= ?2 AND idx < ?3
         ORDER BY idx DESC LIMIT ?4",
    )?;
    let mut out: Vec<StoredMessage> = stmt
        .query_map(
            params![
                sid,
                from as i64,
                to.min(i64::MAX as u64) as i64,
                limit as i64
            ],
            |r| message_from_row(&sid_arc, r),
        )?
        .collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

fn oldest_index(conn: &Connection, sid: &str) -> Result<Option<u64>, StoreError> {
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT MIN(idx) FROM messages WHERE sid = ?1")?
        .query_row(params![sid], |r| r.get(0))?;
    Ok(oldest.map(|i| i as u64))
}

fn channel_next_index(conn: &Connection, sid: &str) -> Result<Option<u64>, StoreError> {
    let row: Option<(i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT next_index, (SELECT MAX(idx) FROM messages WHERE sid = ?1) FROM channels WHERE sid = ?1",
        )?
        .query_row(params![sid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(next, max)| next.max(max.map_or(0, |m| m + 1)) as u64))
}

/// Opens the store at `path`: checks it is ours and holds every write that
/// was acknowledged (`acknowledged`, from the marker), prepares it, and
/// reads back what it holds.
pub(super) fn open(
    path: &Path,
    durability: Durability,
    recent_messages: usize,
    acknowledged: u64,
    accept_loss: bool,
) -> Result<Opened, StoreError> {
    if !path.exists() && acknowledged > 0 {
        check_loss(path, 0, acknowledged, accept_loss)?;
    }
    let (conn, found) = open_writer(path, durability)?;
    let lost = check_loss(path, found, acknowledged, accept_loss)?;
    prepare(&conn, path)?;
    if lost > 0 {
        renumber_after_loss(&conn, lost, acknowledged)?;
    }
    let snapshot = load(&conn, recent_messages)?;
    let readers = (0..READERS)
        .map(|_| open_reader(path).map(Mutex::new))
        .collect::<Result<_, _>>()?;
    let grown = Grown::new(
        snapshot
            .channels
            .iter()
            .map(|c| (c.sid.clone(), c.next_index)),
    );
    Ok(Opened {
        backend: Box::new(SqliteBackend { conn, grown }),
        reader: Box::new(SqliteReader {
            readers,
            next: AtomicUsize::new(0),
            path: path.to_owned(),
        }),
        snapshot,
        commit_seq: found.max(acknowledged),
    })
}

/// Read connections (history pages, recovery from disk, transcripts).
const READERS: usize = 4;

struct SqliteBackend {
    conn: Connection,
    grown: Grown,
}

impl Backend for SqliteBackend {
    fn apply(
        &mut self,
        ops: &mut dyn Iterator<Item = &Op>,
        commit_seq: u64,
    ) -> Result<bool, StoreError> {
        apply(&mut self.conn, ops, commit_seq, &mut self.grown)
    }

    fn probe(&mut self, commit_seq: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'commit_seq'",
            params![commit_seq as i64],
        )?;
        Ok(())
    }
}

/// Read connections. WAL readers block neither each other nor the writer,
/// so several let concurrent history reads run side by side.
struct SqliteReader {
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    path: PathBuf,
}

impl SqliteReader {
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .readers
            .iter()
            .find_map(|r| r.try_lock())
            .unwrap_or_else(|| {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
                self.readers[i].lock()
            });
        read(&conn)
    }
}

impl HistoryReader for SqliteReader {
    fn messages(
        &self,
        sid: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|conn| messages(conn, sid, from, to, limit))
    }

    fn oldest_index(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        self.read(|conn| oldest_index(conn, sid))
    }

    fn ended_channel(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        self.read(|conn| channel_next_index(conn, sid))
    }

    fn webhook_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<super::WebhookEventRow>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, sid, body FROM webhook_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after as i64, limit as i64], |r| {
                Ok(super::WebhookEventRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    channel_sid: r.get(1)?,
                    body: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn webhook_cursor(&self, url: &str) -> Result<u64, StoreError> {
        self.read(|conn| {
            let seq: Option<i64> = conn
                .prepare_cached("SELECT seq FROM webhook_cursors WHERE url = ?1")?
                .query_row(params![url], |r| r.get(0))
                .optional()?;
            Ok(seq.unwrap_or(0) as u64)
        })
    }

    fn channel_record(&self, sid: &str) -> Result<Option<super::ChannelRecord>, StoreError> {
        self.read(|conn| {
            let Some(next_index) = channel_next_index(conn, sid)? else {
                return Ok(None);
            };
            Ok(conn
                .prepare_cached(
                    "SELECT queue, form_data, started_at, ended_ms FROM channels WHERE sid = ?1",
                )?
                .query_row(params![sid], |r| {
                    Ok(super::ChannelRecord {
                        queue: r.get(0)?,
                        form_data: r.get(1)?,
                        started_at: r.get(2)?,
                        next_index,
                        ended_ms: r.get(3)?,
                    })
                })
                .optional()?)
        })
    }

    fn snapshot(&self, recent_messages: usize) -> Result<Snapshot, StoreError> {
        // A fresh connection: one consistent read of everything, however
        // long it takes, without holding a history reader.
        let conn = open_reader(&self.path)?;
        let tx = conn.unchecked_transaction()?;
        let snapshot = load(&tx, recent_messages)?;
        tx.finish()?;
        Ok(snapshot)
    }
}
