//! The segment log: the store's default backend.
//!
//! Every group commit is one record appended to the current segment file
//! (`log/NNNNNNNNNN.log`) and, with `durability = "fsync"`, one
//! `fdatasync`. A record is `[length u32][crc32 u32][payload]`; its payload
//! is either a batch (the commit sequence, then the batch's ops) or a
//! checkpoint (the commit sequence and every piece of state except the
//! messages themselves). Every segment starts with a checkpoint, so the
//! records of older segments that matter are only their messages.
//!
//! What is durable is also in memory ([`State`]): identities, drafts,
//! channels and members as they are, and per channel an index of where its
//! messages are on disk (a message read back is one `pread`). The writer
//! changes that state only after a record is durable, by reading back the
//! record it just wrote with the same code that replays the log at start,
//! so what memory holds and what a restart rebuilds cannot differ.
//!
//! Retention never deletes a record: it appends `trim` (a channel's
//! messages below an index are gone) and `drop` (an ended channel is gone)
//! ops. A segment none of whose messages is live any more is deleted whole;
//! one that is mostly dead is compacted, its live messages copied to the
//! head of the log a bounded slice at a time, then deleted.
//!
//! With `fsync`, commits overwrite a segment prepared with zeros (see
//! [`PREPARED_FILE`]), so zeros after the last record are the end of the
//! log.
//!
//! Crash recovery: segments are read in order and each record is checked
//! against its checksum. A bad record at the very end of the last segment
//! (nothing but zeros beyond what its write could have covered: see
//! [`check_record`]) is a write the crash cut short: it was never
//! acknowledged (a batch is acknowledged after its record is durable), so
//! it is dropped. A bad
//! record anywhere else is damage: the store refuses to start, naming the
//! file and the offset, and changes nothing (`--accept-data-loss` sets the
//! damaged part aside in a `.damaged` file beside it and goes on).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;

use foldhash::{HashMap, HashMapExt, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use super::{
    check_loss, Attributes, Backend, ChannelRow, Durability, HistoryReader, IdentityRow, Op,
    Opened, Retention, Snapshot, StoreError, StoredMessage,
};
use crate::auth::Role;

/// The directory, under the data directory, that holds the segments.
pub(crate) const LOG_DIR: &str = "log";

/// A segment is closed (and a new one started with a checkpoint) once it
/// has grown past this.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;

/// No record is larger: a length above this is damage, not a torn write.
const MAX_RECORD: u32 = 1 << 30;

const HEADER: usize = 8;

/// A record longer than this is written in two steps, its first
/// `TORN_SPAN` bytes (header included) made durable before the rest: so a
/// write a crash interrupts leaves nothing beyond `TORN_SPAN` past its
/// start unless its header is whole (see [`check_record`]).
const TORN_SPAN: usize = 1 << 20;

/// With `fsync`, the next segment is prepared in advance under this name:
/// its whole size written with zeros and synced, so that a commit
/// overwrites blocks that are already allocated and written and its
/// `fdatasync` has only data to flush (appending past the end of a file
/// makes every `fdatasync` also commit the file's size and extents through
/// the filesystem's journal). Not a segment name: a start deletes it.
const PREPARED_FILE: &str = "next.prepared";

const REC_BATCH: u8 = 1;
const REC_CHECKPOINT: u8 = 2;

/// The layout of records, written in every checkpoint; bumped when it
/// changes, and a log in another one is refused, not misread.
const FORMAT_VERSION: u8 = 1;

const OP_SAVE_CHANNEL: u8 = 1;
const OP_END_CHANNEL: u8 = 2;
const OP_ADD_MEMBER: u8 = 3;
const OP_REMOVE_MEMBER: u8 = 4;
const OP_MESSAGE: u8 = 5;
const OP_IDENTITY: u8 = 6;
const OP_DRAFT: u8 = 7;
/// A channel's messages below an index are gone (retention).
const OP_TRIM: u8 = 8;
/// An ended channel is gone, with its messages, members and drafts.
const OP_DROP: u8 = 9;
/// A post-event webhook event queued (its sequence number is the next one).
const OP_WEBHOOK_EVENT: u8 = 10;
const OP_WEBHOOK_CURSOR: u8 = 11;
const OP_WEBHOOK_PRUNE: u8 = 12;

/// Messages one retention slice removes by age, at most.
const PURGE_SLICE: usize = 2000;
/// Channels one retention slice checks against `max_messages`, at most.
const TRIM_CHANNELS: usize = 1000;
/// Ended channels one retention slice drops, at most.
const DROP_CHANNELS: usize = 100;
/// Messages one retention slice copies out of a segment being compacted.
const COMPACT_COPIES: usize = 4096;
/// Message records one slice looks at in a segment being compacted.
const COMPACT_CHECKS: usize = 65_536;

fn segment_name(id: u32) -> String {
    format!("{id:010}.log")
}

fn segment_id(name: &str) -> Option<u32> {
    name.strip_suffix(".log")?.parse().ok()
}

// --- encoding -------------------------------------------------------------

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_i64(b: &mut Vec<u8>, v: i64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_str(b: &mut Vec<u8>, s: &str) {
    put_bytes(b, s.as_bytes());
}
fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s);
}
fn put_opt_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            b.push(1);
            put_str(b, s);
        }
        None => b.push(0),
    }
}
fn role_code(role: Role) -> u8 {
    match role {
        Role::Customer => 0,
        Role::Agent => 1,
        Role::Service => 2,
    }
}

/// A record that does not decode although its checksum matched.
#[derive(Debug)]
struct Bad(&'static str);

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(Bad("a field runs past its record"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64, Bad> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, Bad> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Bad("a string is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<&'a str>, Bad> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.str()?)),
        }
    }
    fn role(&mut self) -> Result<Role, Bad> {
        match self.u8()? {
            0 => Ok(Role::Customer),
            1 => Ok(Role::Agent),
            2 => Ok(Role::Service),
            _ => Err(Bad("unknown role")),
        }
    }
}

/// A message op's body (after its tag and length): the fields retention and
/// the index need come first, so replay reads them without decoding the
/// rest.
fn put_message(b: &mut Vec<u8>, m: &StoredMessage) {
    b.push(OP_MESSAGE);
    let at = b.len();
    put_u32(b, 0);
    put_str(b, &m.channel_sid);
    put_u64(b, m.index);
    put_i64(b, m.created_ms);
    put_str(b, &m.author);
    b.push(role_code(m.author_role));
    put_str(b, &m.body);
    put_str(b, m.attributes.json());
    put_str(b, &m.date_created);
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn decode_message(sid: &Arc<str>, body: &[u8]) -> Result<StoredMessage, Bad> {
    let mut d = Dec::new(body);
    let _sid = d.str()?;
    let index = d.u64()?;
    let created_ms = d.i64()?;
    let author = d.str()?;
    let author_role = d.role()?;
    let text = d.str()?;
    let attributes = Attributes::read(std::str::from_utf8(d.bytes()?).unwrap_or("null"));
    let date_created = d.str()?;
    Ok(StoredMessage {
        channel_sid: sid.clone(),
        index,
        author: Arc::from(author),
        author_role,
        body: text.to_owned(),
        attributes,
        date_created: date_created.to_owned(),
        created_ms,
    })
}

fn put_identity(b: &mut Vec<u8>, row: &IdentityRow) {
    put_str(b, &row.id);
    b.push(role_code(row.role));
    b.push(row.anonymous as u8);
    b.push(row.expanded as u8);
    match &row.engagement {
        Some((sid, at)) => {
            b.push(1);
            put_str(b, sid);
            put_str(b, at);
        }
        None => b.push(0),
    }
}

fn decode_identity(d: &mut Dec<'_>) -> Result<IdentityRow, Bad> {
    let id = Arc::from(d.str()?);
    let role = d.role()?;
    let anonymous = d.u8()? != 0;
    let expanded = d.u8()? != 0;
    let engagement = match d.u8()? {
        0 => None,
        _ => Some((Arc::from(d.str()?), d.str()?.to_owned())),
    };
    Ok(IdentityRow {
        id,
        role,
        anonymous,
        expanded,
        engagement,
    })
}

/// Encodes one op (not `Purge`, which the writer turns into trims and
/// drops).
fn put_op(b: &mut Vec<u8>, op: &Op) {
    match op {
        Op::SaveChannel {
            sid,
            queue,
            customer,
            form_data,
            started_at,
        } => {
            b.push(OP_SAVE_CHANNEL);
            put_str(b, sid);
            put_str(b, queue);
            put_opt_str(b, customer.as_deref());
            put_str(b, form_data);
            put_str(b, started_at);
        }
        Op::EndChannel { sid, ended_ms } => {
            b.push(OP_END_CHANNEL);
            put_str(b, sid);
            put_i64(b, *ended_ms);
        }
        Op::AddMember {
            sid,
            identity,
            role,
        } => {
            b.push(OP_ADD_MEMBER);
            put_str(b, sid);
            put_str(b, identity);
            b.push(role_code(*role));
        }
        Op::RemoveMember { sid, identity } => {
            b.push(OP_REMOVE_MEMBER);
            put_str(b, sid);
            put_str(b, identity);
        }
        Op::AppendMessage(m) => put_message(b, m),
        Op::SaveIdentity(row) => {
            b.push(OP_IDENTITY);
            put_identity(b, row);
        }
        Op::SetDraft {
            identity,
            sid,
            body,
        } => {
            b.push(OP_DRAFT);
            put_str(b, identity);
            put_str(b, sid);
            put_opt_str(b, body.as_deref());
        }
        Op::QueueWebhookEvent { channel_sid, body } => {
            b.push(OP_WEBHOOK_EVENT);
            put_str(b, channel_sid);
            put_str(b, body);
        }
        Op::WebhookCursor { url, seq } => {
            b.push(OP_WEBHOOK_CURSOR);
            put_str(b, url);
            put_u64(b, *seq);
        }
        Op::PruneWebhookEvents { upto } => {
            b.push(OP_WEBHOOK_PRUNE);
            put_u64(b, *upto);
        }
        Op::Purge(_) => unreachable!("purges are planned, not encoded"),
    }
}

/// Steps over an op other than a message (compaction looks only for
/// messages).
fn skip_op(tag: u8, d: &mut Dec<'_>) -> Result<(), Bad> {
    match tag {
        OP_SAVE_CHANNEL => {
            d.str()?;
            d.str()?;
            d.opt_str()?;
            d.str()?;
            d.str()?;
        }
        OP_END_CHANNEL => {
            d.str()?;
            d.i64()?;
        }
        OP_ADD_MEMBER => {
            d.str()?;
            d.str()?;
            d.u8()?;
        }
        OP_REMOVE_MEMBER => {
            d.str()?;
            d.str()?;
        }
        OP_IDENTITY => {
            decode_identity(d)?;
        }
        OP_DRAFT => {
            d.str()?;
            d.str()?;
            d.opt_str()?;
        }
        OP_TRIM => {
            d.str()?;
            d.u64()?;
        }
        OP_DROP => {
            d.str()?;
        }
        OP_WEBHOOK_EVENT => {
            d.str()?;
            d.str()?;
        }
        OP_WEBHOOK_CURSOR => {
            d.str()?;
            d.u64()?;
        }
        OP_WEBHOOK_PRUNE => {
            d.u64()?;
        }
        _ => return Err(Bad("unknown op")),
    }
    Ok(())
}

/// Appends a whole record (header and payload) built by `fill` to `b`.
fn put_record(b: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; HEADER]);
    fill(b);
    seal_record(b, start);
}

/// Writes the length and checksum of the record that starts at `start`.
fn seal_record(b: &mut [u8], start: usize) {
    let payload = &b[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    b[start..start + 4].copy_from_slice(&len.to_le_bytes());
    b[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

// --- state ----------------------------------------------------------------

/// Where one message is: `len` bytes at `off` in segment `seg` (the
/// message op's body).
#[derive(Debug, Clone, Copy)]
struct Loc {
    index: u64,
    created_ms: i64,
    off: u64,
    seg: u32,
    len: u32,
}

#[derive(Debug, Default)]
struct ChannelLog {
    /// Messages below this index are gone (retention).
    floor: u64,
    /// The index after the newest message this channel ever had.
    next: u64,
    /// Live messages, ascending by index.
    locs: VecDeque<Loc>,
}

#[derive(Debug, Clone)]
struct ChannelMeta {
    queue: Arc<str>,
    customer: Option<Arc<str>>,
    form_data: String,
    started_at: String,
    ended_ms: Option<i64>,
}

struct Segment {
    file: Arc<File>,
    /// Bytes in the file that are records.
    size: u64,
    /// Live messages in it, and their bytes.
    live: u64,
    live_bytes: u64,
}

/// Everything durable, in memory.
#[derive(Default)]
struct State {
    commit_seq: u64,
    resume_secret: Vec<u8>,
    identities: HashMap<Arc<str>, IdentityRow>,
    /// `(channel sid, identity)` to the draft.
    drafts: BTreeMap<(Arc<str>, Arc<str>), String>,
    channels: HashMap<Arc<str>, ChannelMeta>,
    members: HashMap<Arc<str>, Vec<(Arc<str>, Role)>>,
    logs: HashMap<Arc<str>, ChannelLog>,
    segments: BTreeMap<u32, Segment>,
    /// Channels with messages, by their oldest message's creation time:
    /// age retention looks only at the front.
    by_age: BTreeSet<(i64, Arc<str>)>,
    /// Ended channels by when they ended.
    ended: BTreeSet<(i64, Arc<str>)>,
    /// Channels that may hold more than `max_messages` (all of them until
    /// the first retention pass says how many that is).
    grown: HashSet<Arc<str>>,
    max_messages: u64,
    /// Post-event webhook events not yet accepted by every URL, by
    /// sequence number: `(channel sid, body)`.
    webhook_events: BTreeMap<u64, (String, String)>,
    /// The last sequence number handed out (never reused).
    webhook_seq: u64,
    webhook_cursors: HashMap<String, u64>,
}

impl State {
    fn segment_mut(&mut self, seg: u32) -> Option<&mut Segment> {
        self.segments.get_mut(&seg)
    }

    fn forget_loc(&mut self, loc: &Loc) {
        if let Some(s) = self.segment_mut(loc.seg) {
            s.live = s.live.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(loc.len as u64);
        }
    }

    /// Keeps `by_age` right after the front of a channel's messages changed.
    fn age_moved(&mut self, sid: &Arc<str>, before: Option<i64>) {
        let now = self
            .logs
            .get(sid)
            .and_then(|l| l.locs.front())
            .map(|l| l.created_ms);
        if now != before {
            if let Some(before) = before {
                self.by_age.remove(&(before, sid.clone()));
            }
            if let Some(now) = now {
                self.by_age.insert((now, sid.clone()));
            }
        }
    }

    fn log_entry(&mut self, sid: &str) -> (Arc<str>, &mut ChannelLog) {
        let key = match self.logs.get_key_value(sid) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(sid);
                self.logs.insert(k.clone(), ChannelLog::default());
                k
            }
        };
        let log = self.logs.get_mut(&key).expect("just ensured");
        (key, log)
    }

    fn add_message(&mut self, sid: &str, loc: Loc) {
        let max = self.max_messages;
        let (key, log) = self.log_entry(sid);
        if loc.index < log.floor {
            return;
        }
        log.next = log.next.max(loc.index + 1);
        let before = log.locs.front().map(|l| l.created_ms);
        let mut replaced = None;
        match log.locs.back() {
            Some(last) if last.index >= loc.index => {
                match log.locs.binary_search_by_key(&loc.index, |l| l.index) {
                    Ok(i) => replaced = Some(std::mem::replace(&mut log.locs[i], loc)),
                    Err(i) => log.locs.insert(i, loc),
                }
            }
            _ => log.locs.push_back(loc),
        }
        let over = log.locs.len() as u64 > max;
        let front_moved = before.is_none() || loc.index == log.locs[0].index;
        if let Some(old) = replaced {
            self.forget_loc(&old);
        }
        if let Some(s) = self.segment_mut(loc.seg) {
            s.live += 1;
            s.live_bytes += loc.len as u64;
        }
        if over && !self.grown.contains(&key) {
            self.grown.insert(key.clone());
        }
        if front_moved {
            self.age_moved(&key, before);
        }
    }

    fn trim(&mut self, sid: &str, floor: u64) {
        let Some(key) = self.logs.get_key_value(sid).map(|(k, _)| k.clone()) else {
            return;
        };
        let log = self.logs.get_mut(&key).expect("just found");
        let before = log.locs.front().map(|l| l.created_ms);
        log.floor = log.floor.max(floor);
        log.next = log.next.max(floor);
        let mut gone = Vec::new();
        while log.locs.front().is_some_and(|l| l.index < floor) {
            gone.extend(log.locs.pop_front());
        }
        for loc in &gone {
            self.forget_loc(loc);
        }
        self.age_moved(&key, before);
    }

    fn drop_channel(&mut self, sid: &str) {
        if let Some((key, meta)) = self.channels.remove_entry(sid) {
            if let Some(ended) = meta.ended_ms {
                self.ended.remove(&(ended, key));
            }
        }
        self.members.remove(sid);
        self.grown.remove(sid);
        if let Some((key, log)) = self.logs.remove_entry(sid) {
            if let Some(front) = log.locs.front() {
                self.by_age.remove(&(front.created_ms, key.clone()));
            }
            for loc in &log.locs {
                self.forget_loc(loc);
            }
        }
        let sid_key: Arc<str> = Arc::from(sid);
        let doomed: Vec<_> = self
            .drafts
            .range((sid_key.clone(), Arc::from(""))..)
            .take_while(|((s, _), _)| *s == sid_key)
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.drafts.remove(&k);
        }
    }

    /// Applies one record's payload, which starts at `payload_off` in
    /// segment `seg`. The same code replays the log at start and applies a
    /// batch once it is durable.
    fn apply_record(&mut self, seg: u32, payload_off: u64, payload: &[u8]) -> Result<(), Bad> {
        let mut d = Dec::new(payload);
        match d.u8()? {
            REC_BATCH => {
                self.commit_seq = d.u64()?;
                while !d.done() {
                    self.apply_op(seg, payload_off, &mut d)?;
                }
            }
            REC_CHECKPOINT => self.apply_checkpoint(&mut d)?,
            _ => return Err(Bad("unknown record kind")),
        }
        Ok(())
    }

    /// Replays a record of a segment older than the newest checkpoint:
    /// that checkpoint holds all the state, so only the messages (where
    /// they are) matter here.
    fn skim_record(&mut self, seg: u32, payload_off: u64, payload: &[u8]) -> Result<(), Bad> {
        let mut d = Dec::new(payload);
        match d.u8()? {
            REC_BATCH => {
                d.u64()?;
                while !d.done() {
                    let tag = d.u8()?;
                    if tag == OP_MESSAGE {
                        d.pos -= 1;
                        self.apply_op(seg, payload_off, &mut d)?;
                    } else {
                        skip_op(tag, &mut d)?;
                    }
                }
                Ok(())
            }
            REC_CHECKPOINT => Ok(()),
            _ => Err(Bad("unknown record kind")),
        }
    }

    fn apply_op(&mut self, seg: u32, payload_off: u64, d: &mut Dec<'_>) -> Result<(), Bad> {
        match d.u8()? {
            OP_MESSAGE => {
                let len = d.u32()?;
                let off = payload_off + d.pos as u64;
                let body = d.take(len as usize)?;
                let mut m = Dec::new(body);
                let sid = m.str()?;
                let index = m.u64()?;
                let created_ms = m.i64()?;
                self.add_message(
                    sid,
                    Loc {
                        index,
                        created_ms,
                        off,
                        seg,
                        len,
                    },
                );
            }
            OP_SAVE_CHANNEL => {
                let sid: Arc<str> = Arc::from(d.str()?);
                let meta = ChannelMeta {
                    queue: Arc::from(d.str()?),
                    customer: d.opt_str()?.map(Arc::from),
                    form_data: d.str()?.to_owned(),
                    started_at: d.str()?.to_owned(),
                    ended_ms: None,
                };
                if let Some(old) = self.channels.insert(sid.clone(), meta) {
                    if let Some(ended) = old.ended_ms {
                        self.ended.remove(&(ended, sid));
                    }
                }
            }
            OP_END_CHANNEL => {
                let sid = d.str()?;
                let ended_ms = d.i64()?;
                let key = self.channels.get_key_value(sid).map(|(k, _)| k.clone());
                if let Some(key) = key {
                    let meta = self.channels.get_mut(&key).expect("just found");
                    if let Some(before) = meta.ended_ms.replace(ended_ms) {
                        self.ended.remove(&(before, key.clone()));
                    }
                    self.ended.insert((ended_ms, key));
                }
            }
            OP_ADD_MEMBER => {
                let sid = d.str()?;
                let identity = d.str()?;
                let role = d.role()?;
                let members = match self.members.get_mut(sid) {
                    Some(m) => m,
                    None => self.members.entry(Arc::from(sid)).or_default(),
                };
                match members.iter_mut().find(|(id, _)| &**id == identity) {
                    Some(member) => member.1 = role,
                    None => members.push((Arc::from(identity), role)),
                }
            }
            OP_REMOVE_MEMBER => {
                let sid = d.str()?;
                let identity = d.str()?;
                if let Some(members) = self.members.get_mut(sid) {
                    members.retain(|(id, _)| &**id != identity);
                    if members.is_empty() {
                        self.members.remove(sid);
                    }
                }
                self.drafts.remove(&(Arc::from(sid), Arc::from(identity)));
            }
            OP_IDENTITY => {
                let row = decode_identity(d)?;
                self.identities.insert(row.id.clone(), row);
            }
            OP_DRAFT => {
                let identity: Arc<str> = Arc::from(d.str()?);
                let sid: Arc<str> = Arc::from(d.str()?);
                match d.opt_str()? {
                    Some(body) => {
                        self.drafts.insert((sid, identity), body.to_owned());
                    }
                    None => {
                        self.drafts.remove(&(sid, identity));
                    }
                }
            }
            OP_TRIM => {
                let sid = d.str()?;
                let floor = d.u64()?;
                self.trim(sid, floor);
            }
            OP_DROP => {
                let sid = d.str()?;
                self.drop_channel(sid);
            }
            OP_WEBHOOK_EVENT => {
                let sid = d.str()?.to_owned();
                let body = d.str()?.to_owned();
                self.webhook_seq += 1;
                self.webhook_events.insert(self.webhook_seq, (sid, body));
            }
            OP_WEBHOOK_CURSOR => {
                let url = d.str()?;
                let seq = d.u64()?;
                match self.webhook_cursors.get_mut(url) {
                    Some(at) => *at = (*at).max(seq),
                    None => {
                        self.webhook_cursors.insert(url.to_owned(), seq);
                    }
                }
            }
            OP_WEBHOOK_PRUNE => {
                let upto = d.u64()?;
                let kept = self.webhook_events.split_off(&(upto + 1));
                self.webhook_events = kept;
            }
            _ => return Err(Bad("unknown op")),
        }
        Ok(())
    }

    /// Everything but the messages, as the first record of a segment.
    fn put_checkpoint(&self, b: &mut Vec<u8>) {
        b.push(REC_CHECKPOINT);
        b.push(FORMAT_VERSION);
        put_u64(b, self.commit_seq);
        put_bytes(b, &self.resume_secret);
        put_u32(b, self.identities.len() as u32);
        for row in self.identities.values() {
            put_identity(b, row);
        }
        put_u32(b, self.drafts.len() as u32);
        for ((sid, identity), body) in &self.drafts {
            put_str(b, sid);
            put_str(b, identity);
            put_str(b, body);
        }
        put_u32(b, self.channels.len() as u32);
        for (sid, c) in &self.channels {
            put_str(b, sid);
            put_str(b, &c.queue);
            put_opt_str(b, c.customer.as_deref());
            put_str(b, &c.form_data);
            put_str(b, &c.started_at);
            match c.ended_ms {
                Some(ms) => {
                    b.push(1);
                    put_i64(b, ms);
                }
                None => b.push(0),
            }
        }
        put_u32(b, self.members.len() as u32);
        for (sid, members) in &self.members {
            put_str(b, sid);
            put_u32(b, members.len() as u32);
            for (identity, role) in members {
                put_str(b, identity);
                b.push(role_code(*role));
            }
        }
        put_u32(b, self.logs.len() as u32);
        for (sid, log) in &self.logs {
            put_str(b, sid);
            put_u64(b, log.floor);
            put_u64(b, log.next);
        }
        put_u64(b, self.webhook_seq);
        put_u32(b, self.webhook_events.len() as u32);
        for (seq, (sid, body)) in &self.webhook_events {
            put_u64(b, *seq);
            put_str(b, sid);
            put_str(b, body);
        }
        put_u32(b, self.webhook_cursors.len() as u32);
        for (url, seq) in &self.webhook_cursors {
            put_str(b, url);
            put_u64(b, *seq);
        }
    }

    /// A checkpoint replaces every piece of state; of the messages indexed
    /// so far, those of channels it still lists, above their floor, stay.
    fn apply_checkpoint(&mut self, d: &mut Dec<'_>) -> Result<(), Bad> {
        if d.u8()? != FORMAT_VERSION {
            return Err(Bad(
                "the log is in a format this broker does not read (another version wrote it)",
            ));
        }
        self.commit_seq = d.u64()?;
        self.resume_secret = d.bytes()?.to_vec();
        self.identities.clear();
        for _ in 0..d.u32()? {
            let row = decode_identity(d)?;
            self.identities.insert(row.id.clone(), row);
        }
        self.drafts.clear();
        for _ in 0..d.u32()? {
            let sid = Arc::from(d.str()?);
            let identity = Arc::from(d.str()?);
            self.drafts.insert((sid, identity), d.str()?.to_owned());
        }
        self.channels.clear();
        self.ended.clear();
        for _ in 0..d.u32()? {
            let sid: Arc<str> = Arc::from(d.str()?);
            let meta = ChannelMeta {
                queue: Arc::from(d.str()?),
                customer: d.opt_str()?.map(Arc::from),
                form_data: d.str()?.to_owned(),
                started_at: d.str()?.to_owned(),
                ended_ms: match d.u8()? {
                    0 => None,
                    _ => Some(d.i64()?),
                },
            };
            if let Some(ms) = meta.ended_ms {
                self.ended.insert((ms, sid.clone()));
            }
            self.channels.insert(sid, meta);
        }
        self.members.clear();
        for _ in 0..d.u32()? {
            let sid: Arc<str> = Arc::from(d.str()?);
            let n = d.u32()?;
            let mut members = Vec::with_capacity(n as usize);
            for _ in 0..n {
                members.push((Arc::from(d.str()?), d.role()?));
            }
            self.members.insert(sid, members);
        }
        let mut logs = HashMap::new();
        for _ in 0..d.u32()? {
            let sid = d.str()?;
            let floor = d.u64()?;
            let next = d.u64()?;
            let (key, mut log) = match self.logs.remove_entry(sid) {
                Some(entry) => entry,
                None => (Arc::from(sid), ChannelLog::default()),
            };
            log.floor = floor;
            log.next = log.next.max(next);
            logs.insert(key, log);
        }
        self.webhook_seq = d.u64()?;
        self.webhook_events.clear();
        for _ in 0..d.u32()? {
            let seq = d.u64()?;
            let sid = d.str()?.to_owned();
            let body = d.str()?.to_owned();
            self.webhook_events.insert(seq, (sid, body));
        }
        self.webhook_cursors.clear();
        for _ in 0..d.u32()? {
            let url = d.str()?.to_owned();
            let seq = d.u64()?;
            self.webhook_cursors.insert(url, seq);
        }
        // Messages of channels the checkpoint no longer lists are gone.
        for (_, log) in std::mem::replace(&mut self.logs, logs) {
            for loc in &log.locs {
                self.forget_loc(loc);
            }
        }
        let mut gone = Vec::new();
        for log in self.logs.values_mut() {
            while log.locs.front().is_some_and(|l| l.index < log.floor) {
                gone.extend(log.locs.pop_front());
            }
        }
        for loc in &gone {
            self.forget_loc(loc);
        }
        self.by_age = self
            .logs
            .iter()
            .filter_map(|(sid, log)| log.locs.front().map(|l| (l.created_ms, sid.clone())))
            .collect();
        self.grown = self.logs.keys().cloned().collect();
        Ok(())
    }

    fn next_index(&self, sid: &str) -> u64 {
        self.logs.get(sid).map_or(0, |l| l.next.max(l.floor))
    }

    /// The locations of `sid`'s messages with `from <= index < to`, the
    /// newest `limit`, with the files to read them from.
    fn find(&self, sid: &str, from: u64, to: u64, limit: usize) -> Vec<(Loc, Arc<File>)> {
        let Some(log) = self.logs.get(sid) else {
            return Vec::new();
        };
        let start = log.locs.partition_point(|l| l.index < from);
        let end = log.locs.partition_point(|l| l.index < to);
        let start = start.max(end.saturating_sub(limit));
        log.locs
            .range(start..end.max(start))
            .filter_map(|l| Some((*l, self.segments.get(&l.seg)?.file.clone())))
            .collect()
    }
}

// --- reading messages back ------------------------------------------------

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source: e,
    }
}

/// Reads messages of one channel: neighbours in one segment are read with
/// one `pread`.
fn read_messages(
    dir: &Path,
    sid: &str,
    locs: &[(Loc, Arc<File>)],
) -> Result<Vec<StoredMessage>, StoreError> {
    let sid: Arc<str> = Arc::from(sid);
    let mut out = Vec::with_capacity(locs.len());
    let mut i = 0;
    let mut buf = Vec::new();
    while i < locs.len() {
        let (first, file) = &locs[i];
        let mut j = i + 1;
        while j < locs.len()
            && locs[j].0.seg == first.seg
            && locs[j].0.off > first.off
            && locs[j].0.off + locs[j].0.len as u64 - first.off <= 1 << 20
        {
            j += 1;
        }
        let end = locs[i..j]
            .iter()
            .map(|(l, _)| l.off + l.len as u64)
            .max()
            .unwrap_or(first.off);
        buf.resize((end - first.off) as usize, 0);
        file.read_exact_at(&mut buf, first.off)
            .map_err(|e| io_error(&dir.join(segment_name(first.seg)), e))?;
        for (loc, _) in &locs[i..j] {
            let at = (loc.off - first.off) as usize;
            let m = decode_message(&sid, &buf[at..at + loc.len as usize]).map_err(|Bad(why)| {
                StoreError::Damaged {
                    path: dir.join(segment_name(loc.seg)),
                    offset: loc.off,
                    reason: why.into(),
                }
            })?;
            out.push(m);
        }
        i = j;
    }
    Ok(out)
}

impl State {
    /// What start-up (or a reload) restores: reads each segment the recent
    /// messages are in once.
    fn snapshot(&self, dir: &Path, recent: usize) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot {
            resume_secret: self.resume_secret.clone(),
            identities: self.identities.values().cloned().collect(),
            drafts: self
                .drafts
                .iter()
                .map(|((sid, identity), body)| (identity.clone(), sid.clone(), body.clone()))
                .collect(),
            channels: Vec::new(),
        };
        // (segment, offset, len, channel slot)
        let mut wanted: Vec<(u32, u64, u32, usize)> = Vec::new();
        for (sid, meta) in &self.channels {
            if meta.ended_ms.is_some() {
                continue;
            }
            let slot = snapshot.channels.len();
            snapshot.channels.push(ChannelRow {
                sid: sid.clone(),
                queue: meta.queue.clone(),
                customer: meta.customer.clone(),
                form_data: serde_json::from_str(&meta.form_data).unwrap_or(Value::Null),
                started_at: meta.started_at.clone(),
                next_index: self.next_index(sid),
                members: self.members.get(sid).cloned().unwrap_or_default(),
                recent: Vec::new(),
            });
            if let Some(log) = self.logs.get(sid) {
                let skip = log.locs.len().saturating_sub(recent);
                for l in log.locs.range(skip..) {
                    wanted.push((l.seg, l.off, l.len, slot));
                }
            }
        }
        wanted.sort_unstable();
        let mut at = 0;
        while at < wanted.len() {
            let seg = wanted[at].0;
            let end = at + wanted[at..].partition_point(|w| w.0 == seg);
            let path = dir.join(segment_name(seg));
            let file = &self
                .segments
                .get(&seg)
                .ok_or_else(|| StoreError::Damaged {
                    path: path.clone(),
                    offset: 0,
                    reason: "a segment the index points into is gone".into(),
                })?
                .file;
            let last = wanted[end - 1];
            let mut bytes = vec![0u8; (last.1 + last.2 as u64 - wanted[at].1) as usize];
            let base = wanted[at].1;
            file.read_exact_at(&mut bytes, base)
                .map_err(|e| io_error(&path, e))?;
            for &(_, off, len, slot) in &wanted[at..end] {
                let channel = &mut snapshot.channels[slot];
                let from = (off - base) as usize;
                let m = decode_message(&channel.sid, &bytes[from..from + len as usize]).map_err(
                    |Bad(why)| StoreError::Damaged {
                        path: path.clone(),
                        offset: off,
                        reason: why.into(),
                    },
                )?;
                channel.recent.push(Arc::new(m));
            }
            at = end;
        }
        for channel in &mut snapshot.channels {
            channel.recent.sort_unstable_by_key(|m| m.index);
        }
        Ok(snapshot)
    }
}

// --- opening --------------------------------------------------------------

/// Why a record at some offset is not a good one.
enum RecordError {
    /// Nothing but zeros from here on: the end of the records (a segment
    /// written over zeros prepared in advance ends this way).
    End,
    /// Cut short or bad, and nothing follows that the write which made it
    /// could not have reached: a write a crash interrupted.
    Torn,
    Damaged(String),
}

/// Where the bytes of a segment that are not zeros end: a preallocated
/// segment is zeros after its last record.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
}

/// Checks the record at `at` (`data_end` is [`data_end`] of `bytes`):
/// `Ok(end)` with the payload at `at + HEADER .. end`.
///
/// A write interrupted by a crash leaves some of its bytes and not others
/// (pages reach the disk in any order), over zeros (a preallocated
/// segment) or over nothing (the end of the file). So a bad record is a
/// torn one when nothing that is not zero lies beyond what its write could
/// have covered: its own length if its header is whole, else
/// [`TORN_SPAN`] (a longer record's first `TORN_SPAN` bytes, header
/// included, are durable before the rest is written). Anything further is
/// a record written after it: the bad one is damage.
fn check_record(bytes: &[u8], at: usize, data_end: usize) -> Result<usize, RecordError> {
    if data_end <= at {
        return Err(RecordError::End);
    }
    let rest = &bytes[at..];
    if rest.len() < HEADER {
        return Err(RecordError::Torn);
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4"));
    if len > MAX_RECORD {
        return Err(RecordError::Damaged(format!(
            "a record length of {len} bytes is not plausible"
        )));
    }
    // No record is empty (a payload starts with its kind): a zero length
    // is a header that was never written.
    let reach = if len == 0 {
        at + TORN_SPAN
    } else {
        let end = at + HEADER + len as usize;
        if end <= bytes.len() && crc32fast::hash(&rest[HEADER..HEADER + len as usize]) == crc {
            return Ok(end);
        }
        end
    };
    if data_end <= reach {
        return Err(RecordError::Torn);
    }
    Err(RecordError::Damaged(if len == 0 {
        "a record header is zeros but records follow".into()
    } else {
        "checksum mismatch".into()
    }))
}

fn list_segments(log_dir: &Path) -> Result<Vec<u32>, StoreError> {
    let entries = match std::fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Dir {
                path: log_dir.to_owned(),
                source,
            })
        }
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Dir {
            path: log_dir.to_owned(),
            source,
        })?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| unwritable(dir, e))
}

fn unwritable(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unwritable {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The newest segment that starts with a whole checkpoint: replay takes the
/// state from there, and only messages from the segments before it.
fn newest_checkpoint(log_dir: &Path, ids: &[u32]) -> Option<u32> {
    ids.iter().rev().copied().find(|&id| {
        let Ok(file) = File::open(log_dir.join(segment_name(id))) else {
            return false;
        };
        let mut header = [0u8; HEADER];
        if file.read_exact_at(&mut header, 0).is_err() {
            return false;
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4"));
        if len > MAX_RECORD {
            return false;
        }
        let mut record = vec![0u8; HEADER + len as usize];
        file.read_exact_at(&mut record, 0).is_ok()
            && check_record(&record, 0, record.len()).is_ok()
            && record.get(HEADER) == Some(&REC_CHECKPOINT)
    })
}

/// What a segment scan left to do once the start is known to go ahead.
enum Repair {
    /// Cut a torn tail off.
    Truncate(PathBuf, u64),
}

/// Opens the log under `dir` (creating it for a new store), replays it,
/// checks it holds every acknowledged write, and starts a new segment.
pub(super) fn open(
    dir: &Path,
    durability: Durability,
    recent_messages: usize,
    acknowledged: u64,
    accept_loss: bool,
    segment_bytes: u64,
) -> Result<Opened, StoreError> {
    let log_dir = dir.join(LOG_DIR);
    let ids = list_segments(&log_dir)?;
    let mut state = State {
        max_messages: 0,
        ..State::default()
    };
    let mut repairs = Vec::new();
    let newest_checkpoint = newest_checkpoint(&log_dir, &ids);
    if ids.is_empty() {
        check_loss(&log_dir, 0, acknowledged, accept_loss)?;
        state.resume_secret = rand::random::<[u8; 32]>().to_vec();
    }
    // One buffer for every segment: a start reads the whole log, and a
    // fresh buffer per segment made the kernel fault in (and jemalloc
    // hand back) hundreds of megabytes of pages more than the largest
    // segment needs.
    let mut bytes = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let path = log_dir.join(segment_name(id));
        let last = i + 1 == ids.len();
        bytes.clear();
        let file = File::open(&path)
            .and_then(|mut file| file.read_to_end(&mut bytes).map(|_| file))
            .map_err(|source| StoreError::Dir {
                path: path.clone(),
                source,
            })?;
        let bytes = &bytes[..];
        let file = Arc::new(file);
        state.segments.insert(
            id,
            Segment {
                file,
                size: 0,
                live: 0,
                live_bytes: 0,
            },
        );
        let data_end = data_end(bytes);
        let mut at = 0;
        while at < bytes.len() {
            match check_record(bytes, at, data_end) {
                Ok(end) => {
                    let payload = &bytes[at + HEADER..end];
                    let payload_off = (at + HEADER) as u64;
                    let applied = if newest_checkpoint.is_some_and(|newest| id < newest) {
                        state.skim_record(id, payload_off, payload)
                    } else {
                        state.apply_record(id, payload_off, payload)
                    };
                    applied.map_err(|Bad(why)| StoreError::Damaged {
                        path: path.clone(),
                        offset: at as u64,
                        reason: why.into(),
                    })?;
                    at = end;
                }
                // Zeros prepared for records never written; the file is
                // cut to its records, as every closed segment is.
                Err(RecordError::End) if last => {
                    repairs.push(Repair::Truncate(path.clone(), at as u64));
                    break;
                }
                Err(RecordError::Torn) if last => {
                    tracing::warn!(path = %path.display(), offset = at, "dropping a write cut short by a crash (never acknowledged)");
                    repairs.push(Repair::Truncate(path.clone(), at as u64));
                    break;
                }
                Err(RecordError::End | RecordError::Torn | RecordError::Damaged(_))
                    if accept_loss =>
                {
                    set_aside(&path, &bytes[..data_end.max(at)], at)?;
                    break;
                }
                // A closed segment was cut to its records and synced before
                // a newer one existed: zeros or a torn record in it are
                // damage.
                Err(RecordError::End | RecordError::Torn) => {
                    return Err(StoreError::Damaged {
                        path,
                        offset: at as u64,
                        reason: "a record is cut short before the end of the log".into(),
                    })
                }
                Err(RecordError::Damaged(reason)) => {
                    return Err(StoreError::Damaged {
                        path,
                        offset: at as u64,
                        reason,
                    })
                }
            }
        }
        if let Some(s) = state.segments.get_mut(&id) {
            s.size = at as u64;
        }
    }
    let found = state.commit_seq;
    let lost = check_loss(&log_dir, found, acknowledged, accept_loss)?;
    // From here on the start goes ahead: repairs may write.
    for Repair::Truncate(path, len) in repairs {
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| {
                f.set_len(len)?;
                f.sync_all()
            })
            .map_err(|e| unwritable(&path, e))?;
    }
    if lost > 0 {
        // No index a client may have seen is handed out again (see
        // `sqlite::renumber_after_loss`).
        let open: Vec<Arc<str>> = state
            .channels
            .iter()
            .filter(|(_, c)| c.ended_ms.is_none())
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in open {
            let (_, log) = state.log_entry(&sid);
            log.next = log.next.max(log.floor) + lost;
        }
        state.commit_seq = acknowledged;
    }
    std::fs::create_dir_all(&log_dir).map_err(|e| unwritable(&log_dir, e))?;
    // A segment being prepared when the last run stopped: never used.
    let prepared = log_dir.join(PREPARED_FILE);
    if let Err(e) = std::fs::remove_file(&prepared) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(unwritable(&prepared, e));
        }
    }
    let snapshot = state.snapshot(&log_dir, recent_messages)?;
    let state = Arc::new(RwLock::new(state));
    let mut backend = LogBackend {
        dir: log_dir.clone(),
        state: state.clone(),
        durability,
        current: ids.last().copied().unwrap_or(0),
        // Synced by the roll below, so the last run's newest segment is
        // complete on disk before a newer one exists.
        file: ids
            .last()
            .and_then(|id| state.read().segments.get(id).map(|s| s.file.clone())),
        len: 0,
        buf: Vec::new(),
        compaction: None,
        segment_bytes,
        checkpoint_bytes: 0,
        needs_roll: true,
        prepared_len: 0,
        preparing: None,
    };
    // A new segment, starting with a checkpoint of what was replayed: the
    // start proves the store can be written, and every older segment is
    // now one whose state records are superseded.
    backend.roll()?;
    sync_dir(dir)?;
    Ok(Opened {
        backend: Box::new(backend),
        reader: Box::new(LogReader {
            dir: log_dir,
            state,
        }),
        snapshot,
        commit_seq: found.max(acknowledged),
    })
}

/// Copies a damaged segment's bytes from `at` on into a file beside it and
/// cuts them off (only with `--accept-data-loss`).
fn set_aside(path: &Path, bytes: &[u8], at: usize) -> Result<(), StoreError> {
    let aside = path.with_extension(format!("log.damaged-at-{at}"));
    std::fs::write(&aside, &bytes[at..]).map_err(|e| unwritable(&aside, e))?;
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(at as u64)?;
            f.sync_all()
        })
        .map_err(|e| unwritable(path, e))?;
    tracing::warn!(path = %path.display(), offset = at, aside = %aside.display(), "damaged records set aside (--accept-data-loss)");
    Ok(())
}

// --- writing --------------------------------------------------------------

/// A segment being compacted: its bytes and how far the copying is.
struct Compaction {
    seg: u32,
    bytes: Vec<u8>,
    /// Byte offsets of its message ops' bodies (with their lengths) not
    /// looked at yet.
    pending: VecDeque<(u64, u32)>,
}

struct LogBackend {
    dir: PathBuf,
    state: Arc<RwLock<State>>,
    durability: Durability,
    current: u32,
    file: Option<Arc<File>>,
    /// Bytes of the current segment that are whole records.
    len: u64,
    buf: Vec<u8>,
    compaction: Option<Compaction>,
    segment_bytes: u64,
    /// The size of the newest checkpoint: a segment holds at least four
    /// times that, so checkpoints stay a small part of what is written
    /// however much state there is.
    checkpoint_bytes: u64,
    /// The last write failed midway: start a new segment before the next.
    needs_roll: bool,
    /// How far the current segment's file holds prepared zeros (0: it was
    /// not prepared, and commits append).
    prepared_len: u64,
    /// The next segment's file being prepared (`fsync` only).
    preparing: Option<std::thread::JoinHandle<std::io::Result<File>>>,
}

/// Writes `size` bytes of zeros to a new [`PREPARED_FILE`] in `dir` and
/// syncs it with its size and allocation.
/// The zeros must never take the room that the records need: they are
/// written only where at least as much room stays free beside them (a
/// preparation that ran out of room would hold the disk's last free bytes
/// until it gave up, and the commits meanwhile would find none), and on
/// failure the partial file is removed.
fn prepare_segment(dir: &Path, size: u64) -> std::io::Result<File> {
    let stat = rustix::fs::statvfs(dir)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < size.saturating_mul(2) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{free} bytes free, too little to set {size} aside for a segment"),
        ));
    }
    let path = dir.join(PREPARED_FILE);
    write_zeros(&path, size).inspect_err(|_| {
        let _ = std::fs::remove_file(&path);
    })
}

fn write_zeros(path: &Path, size: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // One page per write: the page cache sizes its folios by the writes
    // that create them, and a commit then dirties, and its fdatasync
    // writes back, every folio it touches whole. Zeros written a MiB at a
    // time made each small commit write a MiB to the disk.
    let zeros = [0u8; 4096];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    file.sync_all()?;
    Ok(file)
}

impl Drop for LogBackend {
    fn drop(&mut self) {
        // Never left writing: a store opened next on this directory
        // prepares the same file.
        if let Some(preparing) = self.preparing.take() {
            let _ = preparing.join();
        }
    }
}

impl LogBackend {
    fn path(&self, seg: u32) -> PathBuf {
        self.dir.join(segment_name(seg))
    }

    /// How large a segment grows before the next one starts.
    fn segment_target(&self) -> u64 {
        self.segment_bytes.max(4 * self.checkpoint_bytes)
    }

    /// Starts a new segment with a checkpoint (durable, with the directory
    /// entry) before anything is appended to it.
    fn roll(&mut self) -> Result<(), StoreError> {
        let id = self.current + 1;
        let path = self.path(id);
        if let Some(old) = &self.file {
            // The closed segment is complete on disk, cut to its records,
            // before a newer one exists, whatever the durability level:
            // only the newest segment can ever have a torn tail or zeros
            // after its records.
            if self.prepared_len > self.len {
                old.set_len(self.len)
                    .map_err(|e| unwritable(&self.path(self.current), e))?;
            }
            old.sync_data()
                .map_err(|e| unwritable(&self.path(self.current), e))?;
        }
        let mut buf = Vec::new();
        put_record(&mut buf, |b| self.state.read().put_checkpoint(b));
        self.checkpoint_bytes = buf.len() as u64;
        let prepared = if self.durability == Durability::Fsync {
            let prepared = match self.preparing.take().map(|p| p.join()) {
                Some(Ok(Ok(file))) => Ok(file),
                Some(Ok(Err(e))) => Err(e),
                Some(Err(_)) => Err(std::io::Error::other("preparing a segment panicked")),
                None => prepare_segment(&self.dir, self.segment_target()),
            };
            let prepared_path = self.dir.join(PREPARED_FILE);
            let file = prepared.and_then(|file| {
                file.write_all_at(&buf, 0)?;
                file.sync_data()?;
                std::fs::rename(&prepared_path, &path)?;
                Ok(file)
            });
            match file {
                Ok(file) => {
                    let len = file.metadata().map_err(|e| unwritable(&path, e))?.len();
                    Some((file, len))
                }
                // No room for a prepared segment (or it failed): this one
                // appends, as with the other durability levels. Slower
                // commits, nothing refused for want of the zeros' room.
                Err(e) => {
                    let _ = std::fs::remove_file(&prepared_path);
                    tracing::warn!(
                        segment = %path.display(),
                        error = %e,
                        "could not prepare a segment in advance; appending to it instead"
                    );
                    None
                }
            }
        } else {
            None
        };
        let (file, prepared_len) = if let Some(prepared) = prepared {
            prepared
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| unwritable(&path, e))?;
            file.write_all_at(&buf, 0)
                .and_then(|_| file.sync_data())
                .map_err(|e| {
                    let _ = std::fs::remove_file(&path);
                    unwritable(&path, e)
                })?;
            (file, 0)
        };
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        self.state.write().segments.insert(
            id,
            Segment {
                file: file.clone(),
                size: buf.len() as u64,
                live: 0,
                live_bytes: 0,
            },
        );
        self.current = id;
        self.file = Some(file);
        self.len = buf.len() as u64;
        self.prepared_len = prepared_len;
        self.needs_roll = false;
        if self.durability == Durability::Fsync {
            // The next segment's zeros are written while this one fills,
            // off the writer thread: a roll then costs a rename.
            let (dir, size) = (self.dir.clone(), self.segment_target());
            self.preparing = std::thread::Builder::new()
                .name("switchboard-segment".into())
                .spawn(move || prepare_segment(&dir, size))
                .ok();
        }
        Ok(())
    }

    /// Appends `self.buf` (whole records) as one durable write.
    fn append(&mut self) -> Result<u64, StoreError> {
        let file = self.file.clone().expect("a segment is open");
        let at = self.len;
        let written = if self.durability == Durability::Fsync {
            // A long record's head (with its header) is durable before
            // its tail is written: see `TORN_SPAN`.
            let head = if self.buf.len() > TORN_SPAN {
                TORN_SPAN
            } else {
                self.buf.len()
            };
            file.write_all_at(&self.buf[..head], at)
                .and_then(|_| file.sync_data())
                .and_then(|_| {
                    if head < self.buf.len() {
                        file.write_all_at(&self.buf[head..], at + head as u64)?;
                        file.sync_data()?;
                    }
                    Ok(())
                })
        } else {
            file.write_all_at(&self.buf, at)
        };
        if let Err(e) = written {
            // Nothing of a failed write may stay: a later record after it
            // would make it look like damage. If even cutting it off fails,
            // the next write goes to a new segment.
            if file.set_len(at).is_err() {
                self.needs_roll = true;
            }
            self.prepared_len = self.prepared_len.min(at);
            return Err(io_error(&self.path(self.current), e));
        }
        self.len += self.buf.len() as u64;
        if let Some(s) = self.state.write().segments.get_mut(&self.current) {
            s.size = self.len;
        }
        Ok(at)
    }

    /// Plans one retention slice as trim and drop ops (and compaction
    /// copies) in `self.buf`; returns whether work is left.
    fn plan_purge(&mut self, r: &Retention) -> bool {
        let state_lock = self.state.clone();
        let mut state = state_lock.write();
        state.max_messages = r.max_messages.max(1);
        let b = &mut self.buf;
        let mut behind = false;
        // Ended channels, with everything they had.
        let ended: Vec<Arc<str>> = state
            .ended
            .iter()
            .take_while(|(ms, _)| *ms < r.ended_before_ms)
            .take(DROP_CHANNELS)
            .map(|(_, sid)| sid.clone())
            .collect();
        behind |= ended.len() == DROP_CHANNELS;
        for sid in &ended {
            b.push(OP_DROP);
            put_str(b, sid);
        }
        // Age: channels whose oldest message is too old, oldest first.
        let mut budget = PURGE_SLICE;
        for (oldest, sid) in &state.by_age {
            if *oldest >= r.older_than_ms {
                break;
            }
            if budget == 0 {
                behind = true;
                break;
            }
            let Some(log) = state.logs.get(sid) else {
                continue;
            };
            let old = log
                .locs
                .iter()
                .take(budget)
                .take_while(|l| l.created_ms < r.older_than_ms)
                .count();
            budget -= old;
            let floor = log.locs.get(old).map_or(log.next, |l| l.index);
            b.push(OP_TRIM);
            put_str(b, sid);
            put_u64(b, floor);
        }
        // Length: only channels that may have grown past it.
        let max = state.max_messages;
        let checked: Vec<Arc<str>> = state.grown.iter().take(TRIM_CHANNELS).cloned().collect();
        behind |= state.grown.len() > TRIM_CHANNELS;
        for sid in checked {
            let Some(log) = state.logs.get(&sid) else {
                state.grown.remove(&sid);
                continue;
            };
            let len = log.locs.len() as u64;
            if len > max {
                let floor = log.locs[(len - max) as usize].index;
                b.push(OP_TRIM);
                put_str(b, &sid);
                put_u64(b, floor);
            }
            // A channel that takes more messages is listed again.
            state.grown.remove(&sid);
        }
        drop(state);
        behind |= self.plan_compaction();
        behind
    }

    /// Copies a slice of the live messages of a mostly dead segment to the
    /// head of the log; returns whether the compaction goes on.
    fn plan_compaction(&mut self) -> bool {
        if self.compaction.is_none() {
            let victim = {
                let state = self.state.read();
                state
                    .segments
                    .iter()
                    .find(|(id, s)| **id != self.current && s.live > 0 && s.live_bytes * 2 < s.size)
                    .map(|(id, s)| (*id, s.file.clone(), s.size))
            };
            let Some((seg, file, size)) = victim else {
                return false;
            };
            let mut bytes = vec![0u8; size as usize];
            if file.read_exact_at(&mut bytes, 0).is_err() {
                return false;
            }
            let mut pending = VecDeque::new();
            let mut at = 0;
            while let Ok(end) = check_record(&bytes, at, bytes.len()) {
                let payload = &bytes[at + HEADER..end];
                if payload.first() == Some(&REC_BATCH) {
                    let mut d = Dec::new(&payload[9..]);
                    while !d.done() {
                        let Ok(tag) = d.u8() else { break };
                        if tag != OP_MESSAGE {
                            if skip_op(tag, &mut d).is_err() {
                                break;
                            }
                            continue;
                        }
                        let Ok(len) = d.u32() else { break };
                        let off = (at + HEADER + 9 + d.pos) as u64;
                        pending.push_back((off, len));
                        if d.take(len as usize).is_err() {
                            break;
                        }
                    }
                }
                at = end;
            }
            self.compaction = Some(Compaction {
                seg,
                bytes,
                pending,
            });
        }
        let Some(c) = &mut self.compaction else {
            return false;
        };
        let state = self.state.read();
        if !state.segments.contains_key(&c.seg) {
            self.compaction = None;
            return false;
        }
        let (mut copies, mut checks) = (0, 0);
        while copies < COMPACT_COPIES && checks < COMPACT_CHECKS {
            let Some((off, len)) = c.pending.pop_front() else {
                break;
            };
            checks += 1;
            let body = &c.bytes[off as usize..off as usize + len as usize];
            let mut d = Dec::new(body);
            let (Ok(sid), Ok(index)) = (d.str(), d.u64()) else {
                continue;
            };
            let live = state.logs.get(sid).is_some_and(|log| {
                log.locs
                    .binary_search_by_key(&index, |l| l.index)
                    .is_ok_and(|i| log.locs[i].seg == c.seg && log.locs[i].off == off)
            });
            if live {
                self.buf.push(OP_MESSAGE);
                put_u32(&mut self.buf, len);
                self.buf.extend_from_slice(body);
                copies += 1;
            }
        }
        if c.pending.is_empty() {
            self.compaction = None;
        }
        true
    }

    /// After a durable batch: deletes the segments nothing live is in.
    fn reclaim(&mut self) {
        let dead: Vec<u32> = {
            let mut state = self.state.write();
            let dead: Vec<u32> = state
                .segments
                .iter()
                .filter(|(id, s)| **id != self.current && s.live == 0)
                .map(|(id, _)| *id)
                .collect();
            for id in &dead {
                state.segments.remove(id);
            }
            dead
        };
        for id in dead {
            if let Err(e) = std::fs::remove_file(self.path(id)) {
                tracing::warn!(error = %e, segment = id, "cannot delete a segment nothing is live in");
            }
        }
    }
}

impl Backend for LogBackend {
    fn apply(
        &mut self,
        ops: &mut dyn Iterator<Item = &Op>,
        commit_seq: u64,
    ) -> Result<bool, StoreError> {
        if self.needs_roll || self.len >= self.segment_target() {
            self.roll()?;
        }
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER]);
        self.buf.push(REC_BATCH);
        put_u64(&mut self.buf, commit_seq);
        let mut behind = false;
        let mut purged = false;
        for op in ops {
            match op {
                Op::Purge(r) => {
                    behind |= self.plan_purge(r);
                    purged = true;
                }
                op => put_op(&mut self.buf, op),
            }
        }
        seal_record(&mut self.buf, 0);
        let at = self.append()?;
        self.state
            .write()
            .apply_record(self.current, at + HEADER as u64, &self.buf[HEADER..])
            .expect("a batch just encoded decodes");
        if purged {
            self.reclaim();
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
        Ok(behind)
    }

    fn probe(&mut self, commit_seq: u64) -> Result<(), StoreError> {
        if self.needs_roll {
            self.roll()?;
        }
        self.buf.clear();
        put_record(&mut self.buf, |b| {
            b.push(REC_BATCH);
            put_u64(b, commit_seq);
        });
        let at = self.append()?;
        self.state
            .write()
            .apply_record(self.current, at + HEADER as u64, &self.buf[HEADER..])
            .expect("a batch just encoded decodes");
        Ok(())
    }
}

struct LogReader {
    dir: PathBuf,
    state: Arc<RwLock<State>>,
}

impl HistoryReader for LogReader {
    fn messages(
        &self,
        sid: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let locs = self.state.read().find(sid, from, to, limit);
        read_messages(&self.dir, sid, &locs)
    }

    fn oldest_index(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .state
            .read()
            .logs
            .get(sid)
            .and_then(|l| l.locs.front())
            .map(|l| l.index))
    }

    fn ended_channel(&self, sid: &str) -> Result<Option<u64>, StoreError> {
        let state = self.state.read();
        Ok(state
            .channels
            .contains_key(sid)
            .then(|| state.next_index(sid)))
    }

    fn webhook_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<super::WebhookEventRow>, StoreError> {
        Ok(self
            .state
            .read()
            .webhook_events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(seq, (sid, body))| super::WebhookEventRow {
                seq: *seq,
                channel_sid: sid.clone(),
                body: body.clone(),
            })
            .collect())
    }

    fn webhook_cursor(&self, url: &str) -> Result<u64, StoreError> {
        Ok(self
            .state
            .read()
            .webhook_cursors
            .get(url)
            .copied()
            .unwrap_or(0))
    }

    fn channel_record(&self, sid: &str) -> Result<Option<super::ChannelRecord>, StoreError> {
        let state = self.state.read();
        Ok(state.channels.get(sid).map(|c| super::ChannelRecord {
            queue: c.queue.to_string(),
            form_data: c.form_data.clone(),
            started_at: c.started_at.clone(),
            next_index: state.next_index(sid),
            ended_ms: c.ended_ms,
        }))
    }

    fn snapshot(&self, recent_messages: usize) -> Result<Snapshot, StoreError> {
        self.state.read().snapshot(&self.dir, recent_messages)
    }
}

#[cfg(test)]
mod tests;
