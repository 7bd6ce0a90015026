//! The segment log on real files: torn tails, damage, retention's bound on
//! the disk, and a restart that rebuilds exactly what was durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::{check_record, data_end, segment_name, LOG_DIR, TORN_SPAN};
use crate::auth::Role;
use crate::metrics::Metrics;
use crate::store::{
    Attributes, Durability, IdentityRow, Op, Retention, Snapshot, Store, StoreEngine, StoreError,
    StoredMessage, ACK_MARKER_FILE,
};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-log-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(
    dir: &Path,
    segment_bytes: u64,
    accept_loss: bool,
) -> Result<(Store, Snapshot), StoreError> {
    Store::open_with(
        dir,
        Durability::Fsync,
        std::time::Duration::from_millis(crate::config::DEFAULT_COMMIT_DELAY_MS),
        1000,
        Arc::new(Metrics::default()),
        accept_loss,
        StoreEngine::Log,
        segment_bytes,
    )
}

fn message(sid: &str, index: u64, created_ms: i64) -> Op {
    Op::AppendMessage(Arc::new(StoredMessage {
        channel_sid: Arc::from(sid),
        index,
        author: Arc::from("customer-1"),
        author_role: Role::Customer,
        body: format!("message {index} of {sid}"),
        attributes: Attributes::of(&json!({"n": index})),
        date_created: "2026-11-26T00:00:00.000Z".into(),
        created_ms,
    }))
}

fn channel(sid: &str) -> Op {
    Op::SaveChannel {
        sid: Arc::from(sid),
        queue: Arc::from("support"),
        customer: Some(Arc::from("customer-1")),
        form_data: "{}".into(),
        started_at: "2026-11-26T00:00:00.000Z".into(),
    }
}

/// Submits one job and waits until it is durable.
fn write(store: &Store, ops: Vec<Op>) {
    let ticket = store.submit(ops, ()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.wait_durable(ticket)).unwrap();
}

/// Writes channel `sid`, then messages `0..count` into it, each its own
/// commit.
fn write_messages(store: &Store, sid: &str, count: u64) {
    write(store, vec![channel(sid)]);
    for i in 0..count {
        write(store, vec![message(sid, i, 1)]);
    }
}

/// A store in `dir` holding channel CH1 and messages 0 to 5, closed after
/// the last; returns the acknowledged-writes marker as it was before that
/// last write (a torn last record was never acknowledged) and the segment
/// holding them.
fn five_then_one_more(dir: &Path, segment_bytes: u64) -> (Vec<u8>, PathBuf) {
    let (store, _) = open(dir, segment_bytes, false).unwrap();
    write_messages(&store, "CH1", 5);
    let marker_before = std::fs::read(dir.join(ACK_MARKER_FILE)).unwrap();
    write(&store, vec![message("CH1", 5, 1)]);
    drop(store);
    (marker_before, segments(dir).pop().unwrap())
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

/// The start offsets of the records of a segment file.
fn record_starts(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let end = data_end(&bytes);
    let mut starts = Vec::new();
    let mut at = 0;
    while at < end {
        starts.push(at);
        at = check_record(&bytes, at, end).ok().expect("a whole record");
    }
    starts
}

/// Where the records of a segment file end (zeros prepared for more may
/// follow).
fn records_end(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let end = data_end(&bytes);
    let mut at = 0;
    while let Ok(next) = check_record(&bytes, at, end) {
        at = next;
    }
    at
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn bodies(snapshot: &Snapshot, sid: &str) -> Vec<String> {
    snapshot
        .channels
        .iter()
        .find(|c| &*c.sid == sid)
        .map(|c| c.recent.iter().map(|m| m.body.clone()).collect())
        .unwrap_or_default()
}

/// A log whose last record is cut at every byte offset of that record
/// starts with everything before it; whole, with it too. Both as a log
/// that appends (the file ends where the write stopped) and as one written
/// over prepared zeros (zeros follow the torn bytes).
#[test]
fn a_last_record_cut_at_any_byte_is_dropped_and_the_rest_kept() {
    let dir = fresh_dir("torn");
    let segment_bytes = 64 * 1024;
    let (marker_before, segment) = five_then_one_more(&dir, segment_bytes);
    let starts = record_starts(&segment);
    let last = *starts.last().unwrap();
    let full = std::fs::read(&segment).unwrap();
    let end = records_end(&segment);
    assert!(end - last > 100, "a message record is long enough");
    assert!(
        full.len() >= segment_bytes as usize,
        "the segment was prepared"
    );

    for zeros_after in [false, true] {
        for cut in last..=end {
            let trial = fresh_dir("torn-trial");
            copy_dir(&dir, &trial);
            let trial_segment = trial.join(LOG_DIR).join(segment.file_name().unwrap());
            let mut bytes = full[..cut].to_vec();
            if zeros_after {
                bytes.resize(full.len(), 0);
            }
            std::fs::write(&trial_segment, &bytes).unwrap();
            if cut < end {
                std::fs::write(trial.join(ACK_MARKER_FILE), &marker_before).unwrap();
            }
            let what = format!("cut at {cut}, zeros after: {zeros_after}");
            let (store, snapshot) =
                open(&trial, segment_bytes, false).unwrap_or_else(|e| panic!("{what}: {e}"));
            let expected: Vec<String> = (0..if cut == end { 6 } else { 5 })
                .map(|i| format!("message {i} of CH1"))
                .collect();
            assert_eq!(bodies(&snapshot, "CH1"), expected, "{what}");
            // The torn bytes are gone: the next write is read back after it.
            write(&store, vec![message("CH1", 6, 1)]);
            drop(store);
            let (_, snapshot) = open(&trial, segment_bytes, false).unwrap();
            assert_eq!(
                bodies(&snapshot, "CH1").last().map(String::as_str),
                Some("message 6 of CH1"),
                "{what}"
            );
            let _ = std::fs::remove_dir_all(&trial);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash can keep a write's later pages and lose its first, header
/// included: zeros where the last record's header was, its other bytes
/// after them. That write was never acknowledged: the start drops it.
/// The same zeros before records that reach further than one write can
/// is damage, refused with the file and offset.
#[test]
fn a_lost_header_is_a_torn_write_at_the_end_and_damage_before_it() {
    let dir = fresh_dir("lost-header");
    let (marker_before, segment) = five_then_one_more(&dir, super::SEGMENT_BYTES);
    let last = *record_starts(&segment).last().unwrap();
    let full = std::fs::read(&segment).unwrap();

    let trial = fresh_dir("lost-header-trial");
    copy_dir(&dir, &trial);
    let mut bytes = full.clone();
    bytes[last..last + 8].fill(0);
    let trial_segment = trial.join(LOG_DIR).join(segment.file_name().unwrap());
    std::fs::write(&trial_segment, &bytes).unwrap();
    std::fs::write(trial.join(ACK_MARKER_FILE), &marker_before).unwrap();
    let (_, snapshot) = open(&trial, super::SEGMENT_BYTES, false).unwrap();
    let expected: Vec<String> = (0..5).map(|i| format!("message {i} of CH1")).collect();
    assert_eq!(bodies(&snapshot, "CH1"), expected);
    let _ = std::fs::remove_dir_all(&trial);

    // Records reaching further than one torn write could after the lost
    // header: one longer than `TORN_SPAN` (written in two steps).
    let (store, _) = open(&dir, super::SEGMENT_BYTES, false).unwrap();
    let bad = records_end(&segments(&dir).pop().unwrap());
    write(&store, vec![message("CH1", 6, 1)]);
    let mut long = message("CH1", 7, 1);
    if let Op::AppendMessage(m) = &mut long {
        Arc::get_mut(m).unwrap().body = "x".repeat(TORN_SPAN + 4096);
    }
    write(&store, vec![long]);
    drop(store);
    let segment = segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[bad..bad + 8].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    match open(&dir, super::SEGMENT_BYTES, false).err() {
        Some(StoreError::Damaged { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(offset, bad as u64);
        }
        other => panic!("not refused as damage: {other:?}"),
    }
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Damage before the end is refused, naming the file and the offset of the
/// bad record, and nothing is changed; `--accept-data-loss` sets the
/// damaged part aside and starts with what came before it.
#[test]
fn a_damaged_record_in_the_middle_is_refused_with_file_and_offset() {
    let dir = fresh_dir("damaged");
    let (store, _) = open(&dir, super::SEGMENT_BYTES, false).unwrap();
    write_messages(&store, "CH1", 20);
    drop(store);
    let segment = segments(&dir).into_iter().next().unwrap();
    let starts = record_starts(&segment);
    // The records: checkpoint, channel, messages 0..20.
    let bad = starts[2 + 10];
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[bad + 20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let files_before: Vec<(PathBuf, Vec<u8>)> = segments(&dir)
        .into_iter()
        .chain([dir.join(ACK_MARKER_FILE)])
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();

    let e = open(&dir, super::SEGMENT_BYTES, false)
        .err()
        .expect("refused");
    match &e {
        StoreError::Damaged { path, offset, .. } => {
            assert_eq!(path, &segment);
            assert_eq!(*offset, bad as u64);
        }
        other => panic!("not a damage error: {other}"),
    }
    let text = e.to_string();
    assert!(text.contains(segment.to_str().unwrap()), "{text}");
    assert!(text.contains(&format!("offset {bad}")), "{text}");
    assert!(text.contains("--accept-data-loss"), "{text}");
    for (path, content) in &files_before {
        assert!(
            std::fs::read(path).unwrap() == *content,
            "{path:?} untouched"
        );
    }
    assert_eq!(
        segments(&dir).len(),
        files_before.len() - 1,
        "no file added"
    );

    let (_, snapshot) = open(&dir, super::SEGMENT_BYTES, true).unwrap();
    let expected: Vec<String> = (0..10).map(|i| format!("message {i} of CH1")).collect();
    assert_eq!(bodies(&snapshot, "CH1"), expected);
    let channel = snapshot.channels.iter().find(|c| &*c.sid == "CH1").unwrap();
    assert!(
        channel.next_index >= 20,
        "no index handed out before is handed out again: {}",
        channel.next_index
    );
    let aside = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.contains("damaged"))
        .expect("the damaged part is kept");
    assert!(aside.contains(&format!("{bad}")), "{aside}");
    // Accepted once: the next start is a normal one.
    open(&dir, super::SEGMENT_BYTES, false).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retention under a steady stream of messages keeps the log's size
/// bounded by what is live (whole dead segments deleted, mostly dead ones
/// compacted), and a restart reads back exactly what retention kept.
#[test]
fn retention_under_load_keeps_the_disk_bounded() {
    let dir = fresh_dir("retention");
    let segment_bytes = 64 * 1024;
    let (store, _) = open(&dir, segment_bytes, false).unwrap();
    let channels: Vec<String> = (0..50).map(|c| format!("CH{c:032}")).collect();
    for sid in &channels {
        write(&store, vec![channel(sid)]);
    }
    let retention = Retention {
        max_messages: 10,
        older_than_ms: 0,
        ended_before_ms: 0,
    };
    let log_bytes = |dir: &Path| -> u64 {
        segments(dir)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let mut largest = 0;
    let mut next = vec![0u64; channels.len()];
    for round in 0..400 {
        let mut ops = Vec::new();
        for _ in 0..50 {
            let c = rand::random_range(0..channels.len());
            ops.push(message(&channels[c], next[c], 1));
            next[c] += 1;
        }
        ops.push(Op::Purge(retention));
        write(&store, ops);
        if round % 20 == 19 {
            largest = largest.max(log_bytes(&dir));
        }
    }
    // A slice plans from what is durable before its batch: one more
    // catches up with the last batch's messages.
    write(&store, vec![Op::Purge(retention)]);
    // 20,000 messages of ~150 bytes were written (3 MB); 500 are live.
    let live_bytes = 500 * 200;
    assert!(
        largest < 2 * live_bytes + 4 * segment_bytes,
        "the log stayed bounded: {largest} bytes at most"
    );
    eprintln!(
        "largest log: {largest} bytes, {} segments now",
        segments(&dir).len()
    );
    drop(store);
    let (_, snapshot) = open(&dir, segment_bytes, false).unwrap();
    for (c, sid) in channels.iter().enumerate() {
        let expected: Vec<String> = (next[c].saturating_sub(10)..next[c])
            .map(|i| format!("message {i} of {sid}"))
            .collect();
        assert_eq!(bodies(&snapshot, sid), expected, "{sid}");
        let row = snapshot.channels.iter().find(|r| &*r.sid == sid).unwrap();
        assert_eq!(row.next_index, next[c]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a restart rebuilds is what was durable: identities, drafts,
/// members, ended channels (readable, then dropped by retention), across
/// several segments.
#[test]
fn a_restart_rebuilds_every_kind_of_state_across_segments() {
    let dir = fresh_dir("state");
    let (store, _) = open(&dir, 4096, false).unwrap();
    let identity = IdentityRow {
        id: Arc::from("customer-1"),
        role: Role::Customer,
        anonymous: true,
        expanded: true,
        engagement: Some((Arc::from("CH1"), "2026-11-26T00:00:00.000Z".into())),
    };
    write(
        &store,
        vec![
            channel("CH1"),
            channel("CH2"),
            Op::AddMember {
                sid: Arc::from("CH1"),
                identity: Arc::from("customer-1"),
                role: Role::Customer,
            },
            Op::AddMember {
                sid: Arc::from("CH1"),
                identity: Arc::from("bob"),
                role: Role::Agent,
            },
            Op::SaveIdentity(identity.clone()),
            Op::SetDraft {
                identity: Arc::from("customer-1"),
                sid: Arc::from("CH1"),
                body: Some("half a sentence".into()),
            },
        ],
    );
    for i in 0..100 {
        write(&store, vec![message("CH1", i, 1), message("CH2", i, 1)]);
    }
    write(
        &store,
        vec![
            Op::RemoveMember {
                sid: Arc::from("CH1"),
                identity: Arc::from("bob"),
            },
            Op::EndChannel {
                sid: Arc::from("CH2"),
                ended_ms: 1000,
            },
        ],
    );
    drop(store);
    assert!(segments(&dir).len() > 2, "the writes span several segments");
    let (store, snapshot) = open(&dir, 4096, false).unwrap();
    assert_eq!(snapshot.identities, vec![identity]);
    assert_eq!(
        snapshot.drafts,
        vec![(
            Arc::from("customer-1"),
            Arc::from("CH1"),
            "half a sentence".to_string()
        )]
    );
    assert_eq!(snapshot.channels.len(), 1, "CH2 ended");
    let ch1 = &snapshot.channels[0];
    assert_eq!(ch1.members, vec![(Arc::from("customer-1"), Role::Customer)]);
    assert_eq!(ch1.next_index, 100);
    assert_eq!(ch1.recent.len(), 100);
    assert_eq!(ch1.recent[42].attributes.to_value(), json!({"n": 42}));
    assert_eq!(store.ended_channel("CH2").unwrap(), Some(100));
    assert_eq!(store.messages("CH2", 10, 20, 5).unwrap().len(), 5);
    assert_eq!(store.messages("CH2", 10, 20, 5).unwrap()[0].index, 15);
    write(
        &store,
        vec![Op::Purge(Retention {
            max_messages: 1000,
            older_than_ms: 0,
            ended_before_ms: 2000,
        })],
    );
    assert_eq!(store.ended_channel("CH2").unwrap(), None);
    drop(store);
    let (store, _) = open(&dir, 4096, false).unwrap();
    assert_eq!(
        store.ended_channel("CH2").unwrap(),
        None,
        "the drop is durable"
    );
    assert_eq!(store.oldest_index("CH1").unwrap(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn segment_names_sort_in_order() {
    assert!(segment_name(9) < segment_name(10));
    assert_eq!(super::segment_id(&segment_name(1234)), Some(1234));
}
