//! Which storage the store uses: the broker's message writes run through
//! the store it ships (`switchboard::store::Store`: one writer thread,
//! group commit) with each of its two engines (the segment log, and SQLite
//! in WAL mode), and through redb (a copy-on-write B-tree) and fjall (an
//! LSM tree: a journal append plus a memtable), the other embedded
//! candidates, committing the same messages in the same batches.
//!
//! The workload is the one that costs: 500 channels whose messages
//! interleave (each batch takes the next message of each channel in turn),
//! rows shaped like a chat message (34-byte channel sid, index, author,
//! 100-byte body, timestamps), an index by age for retention. Batches of
//! 1 to 2,048 messages stand for group commits from one to many waiting
//! writers. Each engine gets a fresh directory per cell.
//!
//!     cargo bench --bench store_engines            # prints a table
//!
//! Printed per cell: messages/s, and process CPU time per message (user +
//! system, all threads: on the broker's core that time is taken from
//! serving sessions). Figures and the decision: docs/benchmarks.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};
use switchboard::auth::Role;
use switchboard::config::Durability;
use switchboard::metrics::Metrics;
use switchboard::store::{Op, Store, StoreEngine, StoredMessage};

const CHANNELS: u64 = 500;

/// Messages by `(channel sid, index)`, the value the message as stored.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// Retention's index by age.
const BY_AGE: TableDefinition<(i64, &str, u64), ()> = TableDefinition::new("messages_by_age");

fn message(n: u64) -> StoredMessage {
    let channel = n % CHANNELS;
    StoredMessage {
        channel_sid: Arc::from(format!("CH{channel:032x}")),
        index: n / CHANNELS,
        author: Arc::from(format!("customer-{channel}")),
        author_role: Role::Customer,
        body: "x".repeat(100),
        attributes: switchboard::store::Attributes::empty(),
        date_created: "2026-11-21T12:00:00.000Z".into(),
        created_ms: 1_795_000_000_000 + n as i64,
    }
}

/// utime + stime of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')').
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

trait Engine {
    fn commit(&mut self, batch: &[StoredMessage]);
}

/// The broker's store, with one of its engines.
struct Shipped {
    store: Store,
    rt: tokio::runtime::Runtime,
}

impl Shipped {
    fn open(dir: &Path, durability: Durability, engine: StoreEngine) -> Shipped {
        let (store, _) = Store::open_with(
            dir,
            durability,
            // A fixed 1 ms pace, as the engines were compared with
            // (docs/benchmarks.md).
            Duration::from_millis(1),
            0,
            Arc::new(Metrics::default()),
            false,
            engine,
            32 << 20,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Shipped { store, rt }
    }
}

impl Engine for Shipped {
    fn commit(&mut self, batch: &[StoredMessage]) {
        let mut last = 0;
        for m in batch {
            last = self
                .store
                .submit(vec![Op::AppendMessage(Arc::new(m.clone()))], ())
                .unwrap();
        }
        let _ = self.rt.block_on(self.store.wait_durable(last));
    }
}

struct Redb {
    db: Database,
    durability: redb::Durability,
}

impl Redb {
    fn open(dir: &Path, durability: Durability) -> Redb {
        std::fs::create_dir_all(dir).unwrap();
        let db = Database::create(dir.join("switchboard.redb")).unwrap();
        let durability = match durability {
            Durability::Fsync => redb::Durability::Immediate,
            // Written, not fsynced: what `os` promises.
            _ => redb::Durability::Eventual,
        };
        Redb { db, durability }
    }
}

impl Engine for Redb {
    fn commit(&mut self, batch: &[StoredMessage]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(self.durability);
        {
            let mut messages = tx.open_table(MESSAGES).unwrap();
            let mut by_age = tx.open_table(BY_AGE).unwrap();
            for m in batch {
                let value = serde_json::to_vec(m).unwrap();
                messages
                    .insert((&*m.channel_sid, m.index), value.as_slice())
                    .unwrap();
                by_age
                    .insert((m.created_ms, &*m.channel_sid, m.index), ())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    messages: fjall::PartitionHandle,
    by_age: fjall::PartitionHandle,
    durability: fjall::PersistMode,
}

impl Fjall {
    fn open(dir: &Path, durability: Durability) -> Fjall {
        let keyspace = fjall::Config::new(dir).open().unwrap();
        let messages = keyspace
            .open_partition("messages", Default::default())
            .unwrap();
        let by_age = keyspace
            .open_partition("messages_by_age", Default::default())
            .unwrap();
        let durability = match durability {
            Durability::Fsync => fjall::PersistMode::SyncData,
            // Written to the OS, not fsynced: what `os` promises.
            _ => fjall::PersistMode::Buffer,
        };
        Fjall {
            keyspace,
            messages,
            by_age,
            durability,
        }
    }
}

impl Engine for Fjall {
    fn commit(&mut self, batch: &[StoredMessage]) {
        let mut tx = self.keyspace.batch().durability(Some(self.durability));
        for m in batch {
            let mut key = m.channel_sid.as_bytes().to_vec();
            key.extend_from_slice(&m.index.to_be_bytes());
            let value = serde_json::to_vec(m).unwrap();
            let mut age = m.created_ms.to_be_bytes().to_vec();
            age.extend_from_slice(&key);
            tx.insert(&self.messages, key, value);
            tx.insert(&self.by_age, age, []);
        }
        tx.commit().unwrap();
    }
}

/// Commits `total` messages in batches of `batch`; returns (messages/s,
/// CPU µs per message).
fn run(engine: &mut dyn Engine, batch: usize, total: u64) -> (f64, f64) {
    let messages: Vec<StoredMessage> = (0..total).map(message).collect();
    let (wall, cpu) = (Instant::now(), cpu_time());
    for chunk in messages.chunks(batch) {
        engine.commit(chunk);
    }
    let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
    (
        total as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / total as f64,
    )
}

/// `cargo bench --bench store_engines -- fill DIR CHANNELS MESSAGES`: fills
/// a data directory through the store (the segment log, `fsync`) with
/// CHANNELS open engagements holding MESSAGES messages in all, says
/// `filled` once every write is durable, and waits to be killed (`kill -9`,
/// for the restart measurement in docs/benchmarks.md).
fn fill(dir: &Path, channels: u64, messages: u64) {
    let (store, _) = Store::<()>::open_with(
        dir,
        Durability::Fsync,
        Duration::from_millis(switchboard::config::DEFAULT_COMMIT_DELAY_MS),
        0,
        Arc::new(Metrics::default()),
        false,
        StoreEngine::Log,
        32 << 20,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sid = |c: u64| -> Arc<str> { Arc::from(format!("CH{c:032x}")) };
    let customer = |c: u64| -> Arc<str> { Arc::from(format!("customer-{c}")) };
    let mut last = 0;
    for chunk in (0..channels).collect::<Vec<_>>().chunks(1000) {
        let mut ops = Vec::new();
        for &c in chunk {
            ops.push(Op::SaveChannel {
                sid: sid(c),
                queue: Arc::from("support"),
                customer: Some(customer(c)),
                form_data: "{}".into(),
                started_at: "2026-11-26T00:00:00.000Z".into(),
            });
            ops.push(Op::AddMember {
                sid: sid(c),
                identity: customer(c),
                role: Role::Customer,
            });
            ops.push(Op::SaveIdentity(switchboard::store::IdentityRow {
                id: customer(c),
                role: Role::Customer,
                anonymous: false,
                expanded: true,
                engagement: Some((sid(c), "2026-11-26T00:00:00.000Z".into())),
            }));
        }
        last = store.submit(ops, ()).unwrap();
    }
    rt.block_on(store.wait_durable(last)).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(2048) {
        let ops = chunk
            .iter()
            .map(|&n| {
                let c = n % channels;
                Op::AppendMessage(Arc::new(StoredMessage {
                    channel_sid: sid(c),
                    index: n / channels,
                    author: customer(c),
                    author_role: Role::Customer,
                    body: "x".repeat(100),
                    attributes: switchboard::store::Attributes::empty(),
                    date_created: "2026-11-26T00:00:00.000Z".into(),
                    created_ms: now,
                }))
            })
            .collect();
        last = store.submit(ops, ()).unwrap();
        if last % 64 == 0 {
            rt.block_on(store.wait_durable(last)).unwrap();
        }
    }
    rt.block_on(store.wait_durable(last)).unwrap();
    println!("filled");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "fill") {
        let n = |i: usize| args[at + i].parse::<u64>().unwrap();
        fill(Path::new(&args[at + 1]), n(2), n(3));
        return;
    }
    let root =
        std::env::temp_dir().join(format!("switchboard-store-engines-{}", std::process::id()));
    println!("| engine | durability | batch | messages/s | CPU µs/message |");
    println!("|---|---|---|---|---|");
    for durability in [Durability::Fsync, Durability::Os] {
        for batch in [1usize, 16, 256, 2048] {
            // Enough commits to average over, enough messages for the
            // tables to grow well past one page per channel.
            let total = (batch as u64 * 2000).clamp(2000, 40_000);
            for engine_name in ["log", "sqlite", "redb", "fjall"] {
                let dir = root.join(format!("{engine_name}-{durability:?}-{batch}"));
                let mut engine: Box<dyn Engine> = match engine_name {
                    "log" => Box::new(Shipped::open(&dir, durability, StoreEngine::Log)),
                    "sqlite" => Box::new(Shipped::open(&dir, durability, StoreEngine::Sqlite)),
                    "redb" => Box::new(Redb::open(&dir, durability)),
                    _ => Box::new(Fjall::open(&dir, durability)),
                };
                let (rate, cpu) = run(engine.as_mut(), batch, total);
                println!("| {engine_name} | {durability:?} | {batch} | {rate:.0} | {cpu:.1} |");
                drop(engine);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
