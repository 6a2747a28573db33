//! The embedded store: what the broker writes to its log, and how a
//! restart rebuilds every queue from it.
//!
//! Each queue's engine reports its durable changes through a
//! [`Journal`](ferry_core::engine::Journal) (`LogJournal` here), which
//! appends one record per change while the queue's lock is held, so the
//! log's order is each queue's order. Settings, shutdowns and drops are
//! logged by the commands that make them. A connection that ran a command
//! which changed something waits, before it writes its replies, until the
//! log is durable up to everything appended so far (see `Conn::flush`):
//! one fsync covers every connection's batch (group commit).
//!
//! Records (little-endian; a queue name is a u8 length and its bytes):
//!
//! | tag | record | fields |
//! |---|---|---|
//! | 1 | Put | queue, id u64, attempts u32, due (Unix ms, 0: none) u64, key (u16 length + bytes), payload (the rest) |
//! | 2 | Finish | queue, id u64 |
//! | 3 | Return | queue, id u64, attempts u32 |
//! | 4 | Lease | queue, id u64 |
//! | 5 | Settings | queue, explicit u8, kind u8, maxsize u64, lease i64, max_attempts i64, dead-letter queue |
//! | 6 | Shutdown | queue, immediate u8 |
//! | 7 | Drop | queue |
//! | 8 | Checkpoint | (empty queue name) — marks the end of a snapshot |
//! | 9 | Reset | queue — forget everything before: a snapshot follows |
//! | 10 | NextId | queue, next id u64 |
//! | 11 | SnapshotEnd | queue — the snapshot since its Reset is complete |
//! | 12 | SnapshotAbort | queue — the snapshot since its Reset was cut by a crash; forget it |
//! | 13 | Dedup | queue, id u64, until (Unix ms) u64, key (the rest) |
//! | 14 | FinishMany | queue, id u64 × n (n ≥ 2): one operation's finishes — a QDONE of many ids, a QGET COUNT with NOACK or TAKE |
//! | 15 | PutMany | queue, then n ≥ 2 × (id u64, attempts u32, due u64, key (u16 length + bytes), payload (u32 length + bytes)): one operation's puts (QPUTMANY, a snapshot), at most ~64 kB a record |
//!
//! **Compaction** (`Broker::checkpoint`): the log starts a new segment,
//! then each queue, under its lock, appends a snapshot — Reset, Settings,
//! NextId, a Put (and a Lease if out) per stored message, Shutdown,
//! SnapshotEnd —, then a Checkpoint marker; once that is durable, every
//! older segment is deleted. A snapshot spans many records and so may be
//! cut by a crash: replay collects a queue's records from its Reset to its
//! SnapshotEnd aside, and puts them in the queue's place only when
//! SnapshotEnd arrives, so a crash at any point of a checkpoint replays
//! right. A snapshot cut short that way is followed, at the next start and
//! before anything else, by a SnapshotAbort, so that the records of the
//! lives after it are not taken for the rest of the snapshot.
//! Disk use so follows the live backlog, not history.
//!
//! Replay keeps, per queue, the messages put and not finished, with their
//! attempts; a message leased at the crash comes back with one attempt
//! more, as if its consumer's connection had closed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use ferry_core::engine::{self, Journal, Kind, Millis};
use ferry_log::{Log, LogError, Options, Recovery};
use tokio::sync::watch;

use crate::broker::Payload;

const PUT: u8 = 1;
const FINISH: u8 = 2;
const RETURN: u8 = 3;
const LEASE: u8 = 4;
const SETTINGS: u8 = 5;
const SHUTDOWN: u8 = 6;
const DROP: u8 = 7;
const CHECKPOINT: u8 = 8;
const RESET: u8 = 9;
const NEXT_ID: u8 = 10;
const SNAPSHOT_END: u8 = 11;
const SNAPSHOT_ABORT: u8 = 12;
const DEDUP: u8 = 13;
const FINISH_MANY: u8 = 14;
const PUT_MANY: u8 = 15;
/// A PutMany record is written before its entries would pass this many
/// bytes (one larger message makes a record of its own).
const PUT_MANY_BYTES: usize = 64 << 10;

/// The longest priority key a put may carry: its length is logged in a
/// u16. Longer keys are refused, never cut (a cut key would order the
/// message differently after a restart).
pub(crate) const MAX_KEY: usize = u16::MAX as usize;

/// The largest payload the broker accepts at most (`--max-payload` is
/// checked against it at start): one log record must hold a message whole,
/// with its key, queue name and fields.
pub const MAX_PAYLOAD: usize = ferry_log::MAX_RECORD - (1 << 20);
const _: () = assert!(MAX_KEY + 1024 < 1 << 20);

/// Unix time in ms.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn put_name(buf: &mut Vec<u8>, name: &[u8]) {
    // Queue names are at most 200 bytes (checked before any queue exists).
    let len = name.len().min(255);
    buf.push(len as u8);
    buf.extend_from_slice(&name[..len]);
}

/// The log, and a watch on how far it is durable.
pub(crate) struct Store {
    log: Log,
    durable: watch::Receiver<u64>,
    /// Told once if the log fails: the server then stops.
    pub(crate) failure: Arc<tokio::sync::Notify>,
    /// Unix ms when the broker's clock read 0: delays are logged in wall
    /// time so that they survive a restart.
    base: u64,
}

/// A queue as the log describes it.
#[derive(Default)]
pub(crate) struct Recovered {
    pub(crate) config: engine::Config,
    pub(crate) explicit: bool,
    pub(crate) shutdown: Option<bool>,
    pub(crate) next_id: u64,
    pub(crate) msgs: BTreeMap<u64, RecoveredMsg>,
    /// DEDUP keys: the id they answer, and until when (Unix ms).
    pub(crate) dedup: HashMap<Bytes, (u64, u64)>,
}

pub(crate) struct RecoveredMsg {
    pub(crate) attempts: u32,
    pub(crate) out: bool,
    pub(crate) due: u64,
    pub(crate) key: Bytes,
    pub(crate) data: Bytes,
}

fn take_name(b: &mut Bytes) -> Result<Bytes, String> {
    if b.is_empty() {
        return Err("record is cut short".into());
    }
    let len = b.get_u8() as usize;
    if b.len() < len {
        return Err("record is cut short".into());
    }
    Ok(b.split_to(len))
}

fn take_u64(b: &mut Bytes) -> Result<u64, String> {
    b.try_get_u64_le().map_err(|_| "record is cut short".into())
}

fn take_u32(b: &mut Bytes) -> Result<u32, String> {
    b.try_get_u32_le().map_err(|_| "record is cut short".into())
}

fn take_u8(b: &mut Bytes) -> Result<u8, String> {
    b.try_get_u8().map_err(|_| "record is cut short".into())
}

fn opt_from(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

/// Applies one record to the recovered state.
/// Replay's state: the queues, and the snapshots still being read.
#[derive(Default)]
struct Replay {
    state: HashMap<Bytes, Recovered>,
    /// A queue's snapshot between its Reset and its SnapshotEnd. It
    /// replaces the queue only once complete: a crash in the middle of
    /// writing it leaves the queue as the records before it describe
    /// (those segments are deleted only after every snapshot is durable).
    pending: HashMap<Bytes, Recovered>,
}

impl Replay {
    fn apply(&mut self, record: &[u8]) -> Result<(), String> {
        let mut b = Bytes::copy_from_slice(record);
        let tag = take_u8(&mut b)?;
        let name = take_name(&mut b)?;
        match tag {
            RESET => {
                self.pending.insert(name, Recovered::default());
                Ok(())
            }
            SNAPSHOT_END => {
                if let Some(q) = self.pending.remove(&name) {
                    self.state.insert(name, q);
                }
                Ok(())
            }
            SNAPSHOT_ABORT => {
                self.pending.remove(&name);
                Ok(())
            }
            _ => {
                let state = if self.pending.contains_key(&name) {
                    &mut self.pending
                } else {
                    &mut self.state
                };
                replay(state, tag, name, b)
            }
        }
    }

    /// The queues, with incomplete snapshots dropped, and the names of the
    /// queues whose snapshot was incomplete.
    fn finish(self) -> (HashMap<Bytes, Recovered>, Vec<Bytes>) {
        (self.state, self.pending.into_keys().collect())
    }
}

/// A put's id, attempts, due time and key (the payload is the caller's to
/// take).
fn take_put_head(b: &mut Bytes) -> Result<(u64, RecoveredMsg), String> {
    let id = take_u64(b)?;
    let attempts = take_u32(b)?;
    let due = take_u64(b)?;
    let klen = b.try_get_u16_le().map_err(|_| "record is cut short")? as usize;
    if b.len() < klen {
        return Err("record is cut short".into());
    }
    let key = b.split_to(klen);
    let msg = RecoveredMsg {
        attempts,
        out: false,
        due,
        key,
        data: Bytes::new(),
    };
    Ok((id, msg))
}

fn recovered_put(state: &mut HashMap<Bytes, Recovered>, name: Bytes, id: u64, msg: RecoveredMsg) {
    let q = state.entry(name).or_default();
    q.next_id = q.next_id.max(id + 1);
    q.msgs.insert(id, msg);
}

fn replay(
    state: &mut HashMap<Bytes, Recovered>,
    tag: u8,
    name: Bytes,
    mut b: Bytes,
) -> Result<(), String> {
    match tag {
        PUT => {
            let (id, msg) = take_put_head(&mut b)?;
            recovered_put(state, name, id, RecoveredMsg { data: b, ..msg });
        }
        PUT_MANY => {
            if !b.has_remaining() {
                return Err("a PutMany record holds no message".into());
            }
            while b.has_remaining() {
                let (id, msg) = take_put_head(&mut b)?;
                let len = b.try_get_u32_le().map_err(|_| "record is cut short")? as usize;
                if b.len() < len {
                    return Err("record is cut short".into());
                }
                let data = b.split_to(len);
                recovered_put(state, name.clone(), id, RecoveredMsg { data, ..msg });
            }
        }
        FINISH => {
            let id = take_u64(&mut b)?;
            if let Some(q) = state.get_mut(&name) {
                q.msgs.remove(&id);
            }
        }
        FINISH_MANY => {
            if b.len() < 16 || !b.len().is_multiple_of(8) {
                return Err("a FinishMany record's ids are cut short".into());
            }
            let mut q = state.get_mut(&name);
            while b.has_remaining() {
                let id = take_u64(&mut b)?;
                if let Some(q) = q.as_deref_mut() {
                    q.msgs.remove(&id);
                }
            }
        }
        RETURN => {
            let id = take_u64(&mut b)?;
            let attempts = take_u32(&mut b)?;
            if let Some(m) = state.get_mut(&name).and_then(|q| q.msgs.get_mut(&id)) {
                m.attempts = attempts;
                m.out = false;
            }
        }
        LEASE => {
            let id = take_u64(&mut b)?;
            if let Some(m) = state.get_mut(&name).and_then(|q| q.msgs.get_mut(&id)) {
                m.out = true;
            }
        }
        SETTINGS => {
            let explicit = take_u8(&mut b)? != 0;
            let kind = match take_u8(&mut b)? {
                0 => Kind::Fifo,
                1 => Kind::Lifo,
                2 => Kind::Priority,
                _ => return Err("unknown queue kind".into()),
            };
            let maxsize = take_u64(&mut b)?;
            let lease = opt_from(take_u64(&mut b)? as i64);
            let max_attempts =
                opt_from(take_u64(&mut b)? as i64).and_then(|v| u32::try_from(v).ok());
            let dl = take_name(&mut b)?;
            let q = state.entry(name).or_default();
            q.explicit = explicit;
            q.config = engine::Config {
                kind,
                maxsize,
                lease_timeout: lease,
                max_attempts,
                dead_letter: (!dl.is_empty()).then(|| String::from_utf8_lossy(&dl).into_owned()),
            };
        }
        SHUTDOWN => {
            let immediate = take_u8(&mut b)? != 0;
            let q = state.entry(name).or_default();
            q.shutdown = Some(q.shutdown.unwrap_or(false) || immediate);
        }
        DROP => {
            state.remove(&name);
        }
        CHECKPOINT => {}
        DEDUP => {
            let id = take_u64(&mut b)?;
            let until = take_u64(&mut b)?;
            state.entry(name).or_default().dedup.insert(b, (id, until));
        }
        NEXT_ID => {
            let next = take_u64(&mut b)?;
            let q = state.entry(name).or_default();
            q.next_id = q.next_id.max(next);
        }
        _ => return Err(format!("unknown record type {tag}")),
    }
    Ok(())
}

impl Store {
    /// Opens the log in `dir` and replays it; replies the store, the queues
    /// it describes, and what recovery found.
    pub(crate) fn open(
        dir: &std::path::Path,
        options: Options,
    ) -> Result<(Store, HashMap<Bytes, Recovered>, Recovery), LogError> {
        let mut state = Replay::default();
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let failure = Arc::new(tokio::sync::Notify::new());
        let (on_durable, on_error) = (Arc::clone(&tx), Arc::clone(&failure));
        let (log, recovery) = Log::open(
            dir,
            options,
            |r| state.apply(r),
            Box::new(move |lsn| {
                on_durable.send_replace(lsn);
            }),
            Box::new(move |e| {
                // SPEC §3: a write or fsync error stops the broker rather
                // than acknowledging anything it could not make durable.
                // Waiters wake to find the log failed and withhold their
                // replies; the server stops (see `Server::run`).
                tracing::error!(error = %e, "the log failed; stopping");
                tx.send_modify(|_| {});
                on_error.notify_one();
            }),
        )?;
        let (state, cut) = state.finish();
        for name in cut {
            // Appended before anything else this run: the records that
            // follow are live ones, not the rest of that snapshot.
            tracing::warn!(queue = %String::from_utf8_lossy(&name), "a snapshot was cut short by a crash; ignoring it");
            let _ = log.append_with(|b| {
                b.push(SNAPSHOT_ABORT);
                put_name(b, &name);
            });
        }
        Ok((
            Store {
                log,
                durable: rx,
                failure,
                base: unix_ms(),
            },
            state,
            recovery,
        ))
    }

    /// The log itself, for compaction.
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// Appends one queue's snapshot (called under the queue's lock).
    pub(crate) fn snapshot(&self, queue: &[u8], st: &crate::broker::QueueState, now: Millis) {
        self.append(|b| {
            b.push(RESET);
            put_name(b, queue);
        });
        self.settings(queue, st.explicit, st.q.config());
        self.append(|b| {
            b.push(NEXT_ID);
            put_name(b, queue);
            b.extend_from_slice(&st.q.next_id().to_le_bytes());
        });
        let mut journal = LogJournal::new(self, Bytes::copy_from_slice(queue));
        st.q.for_each_stored(|m, due, out| {
            let due = due.filter(|&d| d > now);
            journal.put(m.id, m.attempts, &m.item, due);
            if out {
                journal.leased(m.id);
            }
        });
        journal.flush();
        if let Some(mode) = st.q.shutdown_state() {
            self.shutdown(queue, mode == engine::Shutdown::Immediate);
        }
        for (key, id, until) in st.dedup_keys(now) {
            self.dedup(queue, key, id, until);
        }
        self.append(|b| {
            b.push(SNAPSHOT_END);
            put_name(b, queue);
        });
    }

    /// Logs a DEDUP key: the id it answers until `until` (broker ms).
    pub(crate) fn dedup(&self, queue: &[u8], key: &[u8], id: u64, until: Millis) {
        let until = self.base.saturating_add(until);
        self.append(|b| {
            b.push(DEDUP);
            put_name(b, queue);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&until.to_le_bytes());
            b.extend_from_slice(key);
        });
    }

    /// Marks the end of a checkpoint.
    pub(crate) fn checkpoint_marker(&self) {
        self.append(|b| {
            b.push(CHECKPOINT);
            put_name(b, b"");
        });
    }

    /// Writes and syncs everything appended, then stops the log's writer.
    pub(crate) fn close(&self) {
        self.log.close();
    }

    /// fsyncs done since start.
    pub(crate) fn syncs(&self) -> u64 {
        self.log.syncs()
    }

    /// Everything appended so far.
    pub(crate) fn appended(&self) -> u64 {
        self.log.appended()
    }

    /// Waits until the log is durable up to `lsn`; false if it failed. In
    /// async mode the caller writes the pending batch itself first, so it
    /// waits for no other thread.
    pub(crate) async fn wait_durable(&self, lsn: u64) -> bool {
        if !self.log.write_now() {
            return false;
        }
        let mut rx = self.durable.clone();
        loop {
            if self.log.failed() {
                return false;
            }
            if *rx.borrow_and_update() >= lsn {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Broker time (ms since start) of a wall-clock moment.
    pub(crate) fn to_broker_ms(&self, unix: u64) -> Millis {
        unix.saturating_sub(self.base)
    }

    /// Appends one record. A record the log refuses is fatal, as a failed
    /// write is: the change it describes may already be visible, and must
    /// not be acknowledged unlogged. (Settings are validated at start so
    /// that every record fits; this is the backstop.)
    fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if let Err(e) = self.log.append_with(write) {
            self.log.fail(std::io::Error::other(e.to_string()));
        }
    }

    /// Logs a queue's settings (on creation and every change).
    pub(crate) fn settings(&self, queue: &[u8], explicit: bool, c: &engine::Config) {
        self.append(|b| {
            b.push(SETTINGS);
            put_name(b, queue);
            b.push(u8::from(explicit));
            b.push(match c.kind {
                Kind::Fifo => 0,
                Kind::Lifo => 1,
                Kind::Priority => 2,
            });
            b.extend_from_slice(&c.maxsize.to_le_bytes());
            b.extend_from_slice(&c.lease_timeout.map_or(-1i64, |v| v as i64).to_le_bytes());
            b.extend_from_slice(&c.max_attempts.map_or(-1i64, i64::from).to_le_bytes());
            put_name(b, c.dead_letter.as_deref().unwrap_or("").as_bytes());
        });
    }

    pub(crate) fn shutdown(&self, queue: &[u8], immediate: bool) {
        self.append(|b| {
            b.push(SHUTDOWN);
            put_name(b, queue);
            b.push(u8::from(immediate));
        });
    }

    pub(crate) fn dropped(&self, queue: &[u8]) {
        self.append(|b| {
            b.push(DROP);
            put_name(b, queue);
        });
    }

    pub(crate) fn finish(&self, queue: &[u8], id: u64) {
        self.append(|b| {
            b.push(FINISH);
            put_name(b, queue);
            b.extend_from_slice(&id.to_le_bytes());
        });
    }
}

/// What `ferry check` reports of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    /// The queue's name.
    pub name: String,
    /// fifo, lifo or priority.
    pub kind: &'static str,
    /// Its bound (0: none).
    pub maxsize: u64,
    /// Messages stored (each comes back after a restart).
    pub messages: u64,
    /// Of which were leased when the log ends (they return with one more
    /// attempt).
    pub leased: u64,
    /// Of which are delayed past now.
    pub delayed: u64,
    /// Payload bytes stored.
    pub bytes: u64,
    /// `None`, `Some(false)` graceful, `Some(true)` immediate.
    pub shutdown: Option<bool>,
}

/// What `ferry check` found in a data directory.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Segments and records read.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// A torn tail the next start would cut: segment, offset, bytes.
    pub torn_tail: Option<(std::path::PathBuf, u64, u64)>,
    /// Every queue, by name.
    pub queues: Vec<QueueReport>,
}

/// Verifies a data directory offline and describes what it holds, without
/// changing it. Corruption before the last segment is an error.
pub fn check(dir: &std::path::Path) -> Result<CheckReport, LogError> {
    let mut replay = Replay::default();
    let recovery = ferry_log::inspect(dir, |r| replay.apply(r))?;
    let (state, _) = replay.finish();
    let now = unix_ms();
    let mut queues: Vec<QueueReport> = state
        .into_iter()
        .map(|(name, q)| QueueReport {
            name: String::from_utf8_lossy(&name).into_owned(),
            kind: match q.config.kind {
                Kind::Fifo => "fifo",
                Kind::Lifo => "lifo",
                Kind::Priority => "priority",
            },
            maxsize: q.config.maxsize,
            messages: q.msgs.len() as u64,
            leased: q.msgs.values().filter(|m| m.out).count() as u64,
            delayed: q.msgs.values().filter(|m| m.due > now).count() as u64,
            bytes: q.msgs.values().map(|m| m.data.len() as u64).sum(),
            shutdown: q.shutdown,
        })
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CheckReport {
        segments: recovery.segments,
        records: recovery.records,
        torn_tail: recovery.truncated,
        queues,
    })
}

/// One queue's journal: every durable change becomes a log record.
pub(crate) struct LogJournal<S = Arc<Store>> {
    store: S,
    queue: Bytes,
    /// Finishes of the operation under way, written as one record by
    /// `flush` (or before any other record of this queue).
    finished: Vec<u64>,
    /// Puts of the operation under way, encoded as PutMany entries, and how
    /// many: the same, for puts. At most one of the two is non-empty, so
    /// the log keeps the operation's order.
    puts: Vec<u8>,
    put_count: usize,
    /// The last put, kept whole in case it stays alone (a plain Put).
    last_put: Option<(u64, u32, u64, Payload)>,
}

/// A put's id, attempts, due time (Unix ms, 0: none) and key.
fn put_head(b: &mut Vec<u8>, id: u64, attempts: u32, due: u64, key: &[u8]) {
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&attempts.to_le_bytes());
    b.extend_from_slice(&due.to_le_bytes());
    // Keys over MAX_KEY are refused before they reach a queue.
    let klen = u16::try_from(key.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&klen.to_le_bytes());
    b.extend_from_slice(&key[..usize::from(klen)]);
}

impl<S: std::ops::Deref<Target = Store>> LogJournal<S> {
    pub(crate) fn new(store: S, queue: Bytes) -> Self {
        LogJournal {
            store,
            queue,
            finished: Vec::new(),
            puts: Vec::new(),
            put_count: 0,
            last_put: None,
        }
    }

    /// Writes the gathered puts: one Put, or one PutMany.
    fn write_puts(&mut self) {
        match self.put_count {
            0 => {}
            1 => {
                if let Some((id, attempts, due, item)) = self.last_put.take() {
                    self.put_record(id, attempts, due, &item);
                }
            }
            _ => self.store.append(|b| {
                b.push(PUT_MANY);
                put_name(b, &self.queue);
                b.extend_from_slice(&self.puts);
            }),
        }
        self.puts.clear();
        self.put_count = 0;
        self.last_put = None;
    }

    fn put_record(&self, id: u64, attempts: u32, due: u64, item: &Payload) {
        self.store.append(|b| {
            b.push(PUT);
            put_name(b, &self.queue);
            put_head(b, id, attempts, due, &item.key);
            b.extend_from_slice(&item.data);
        });
    }

    /// Writes whatever the operation gathered so far.
    fn write_gathered(&mut self) {
        self.write_puts();
        self.write_finished();
    }

    /// Writes the gathered finishes: one Finish, or one FinishMany.
    fn write_finished(&mut self) {
        match self.finished.as_slice() {
            [] => return,
            [id] => self.id_record(FINISH, *id, None),
            ids => self.store.append(|b| {
                b.push(FINISH_MANY);
                put_name(b, &self.queue);
                for id in ids {
                    b.extend_from_slice(&id.to_le_bytes());
                }
            }),
        }
        self.finished.clear();
    }

    fn id_record(&self, tag: u8, id: u64, extra: Option<u32>) {
        self.store.append(|b| {
            b.push(tag);
            put_name(b, &self.queue);
            b.extend_from_slice(&id.to_le_bytes());
            if let Some(v) = extra {
                b.extend_from_slice(&v.to_le_bytes());
            }
        });
    }
}

impl<S: std::ops::Deref<Target = Store> + Send> Journal<Payload> for LogJournal<S> {
    fn put(&mut self, id: u64, attempts: u32, item: &Payload, due: Option<Millis>) {
        self.write_finished();
        if !self.puts.is_empty()
            && self.puts.len() + item.data.len() + item.key.len() > PUT_MANY_BYTES
        {
            self.write_puts();
        }
        let due = due.map_or(0, |d| self.store.base.saturating_add(d));
        put_head(&mut self.puts, id, attempts, due, &item.key);
        let len = u32::try_from(item.data.len()).unwrap_or(u32::MAX);
        self.puts.extend_from_slice(&len.to_le_bytes());
        self.puts.extend_from_slice(&item.data);
        self.put_count += 1;
        self.last_put = (self.put_count == 1).then(|| (id, attempts, due, item.clone()));
    }

    fn finished(&mut self, id: u64) {
        self.write_puts();
        self.finished.push(id);
    }

    fn returned(&mut self, id: u64, attempts: u32) {
        self.write_gathered();
        self.id_record(RETURN, id, Some(attempts));
    }

    fn leased(&mut self, id: u64) {
        self.write_gathered();
        self.id_record(LEASE, id, None);
    }

    fn flush(&mut self) {
        self.write_gathered();
    }

    fn dead_lettered(&mut self, _id: u64) {
        // Logged as finished by `Broker::bury`, after the dead-letter
        // queue's put, so that a crash in between keeps a copy.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_unknown_records_are_refused_not_panicked_on() {
        let mut r = Replay::default();
        for bad in [
            &[][..],
            &[PUT],
            &[PUT, 5, b'q'],
            &[99, 1, b'q'],
            &[FINISH, 1, b'q', 1, 2],
            &[FINISH_MANY, 1, b'q', 1, 0, 0, 0, 0, 0, 0, 0],
            &[FINISH_MANY, 1, b'q', 1, 0, 0, 0, 0, 0, 0, 0, 2, 0],
        ] {
            assert!(r.apply(bad).is_err(), "{bad:?}");
        }
    }

    fn put(q: &[u8], id: u64) -> Vec<u8> {
        let mut b = vec![PUT];
        put_name(&mut b, q);
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(b"payload");
        b
    }

    fn marker(tag: u8, q: &[u8]) -> Vec<u8> {
        let mut b = vec![tag];
        put_name(&mut b, q);
        b
    }

    fn ids(r: Replay) -> Vec<u64> {
        r.finish().0[&Bytes::from_static(b"q")]
            .msgs
            .keys()
            .copied()
            .collect()
    }

    /// What `LogJournal` writes for a batch of puts.
    fn put_many(q: &[u8], ids: &[u64]) -> Vec<u8> {
        let mut b = marker(PUT_MANY, q);
        for &id in ids {
            put_head(&mut b, id, 1, 0, b"k");
            b.extend_from_slice(&7u32.to_le_bytes());
            b.extend_from_slice(b"payload");
        }
        b
    }

    #[test]
    fn a_record_the_log_refuses_is_fatal_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = Store::open(dir.path(), Options::default()).unwrap();
        store.append(|b| b.extend(std::iter::repeat_n(1u8, ferry_log::MAX_RECORD + 1)));
        assert!(
            store.log().failed(),
            "an oversized record must stop the log"
        );
        store.close();
    }

    #[test]
    fn put_many_puts_each_message() {
        let mut r = Replay::default();
        r.apply(&put_many(b"q", &[3, 5, 8])).unwrap();
        let state = r.finish().0;
        let q = &state[&Bytes::from_static(b"q")];
        assert_eq!(q.msgs.keys().copied().collect::<Vec<_>>(), vec![3, 5, 8]);
        assert_eq!(q.next_id, 9);
        let m = &q.msgs[&5];
        assert_eq!(
            (m.attempts, &m.key[..], &m.data[..]),
            (1, &b"k"[..], &b"payload"[..])
        );
    }

    #[test]
    fn a_put_many_cut_short_is_refused() {
        let whole = put_many(b"q", &[1, 2]);
        for cut in [whole.len() - 1, whole.len() - 8, 3] {
            assert!(
                Replay::default().apply(&whole[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn finish_many_finishes_each_id() {
        let mut r = Replay::default();
        for id in 1..=4 {
            r.apply(&put(b"q", id)).unwrap();
        }
        let mut b = marker(FINISH_MANY, b"q");
        for id in [1u64, 3, 9] {
            b.extend_from_slice(&id.to_le_bytes());
        }
        r.apply(&b).unwrap();
        assert_eq!(ids(r), vec![2, 4]);
    }

    #[test]
    fn records_after_an_aborted_snapshot_count() {
        let mut r = Replay::default();
        r.apply(&put(b"q", 1)).unwrap();
        r.apply(&marker(RESET, b"q")).unwrap();
        r.apply(&put(b"q", 1)).unwrap();
        // The crash; the next start appends SnapshotAbort, then lives on.
        r.apply(&marker(SNAPSHOT_ABORT, b"q")).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        assert_eq!(ids(r), vec![1, 2]);
    }

    #[test]
    fn a_snapshot_cut_short_by_a_crash_changes_nothing() {
        let mut r = Replay::default();
        r.apply(&put(b"q", 1)).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        // A checkpoint began: Reset, part of the snapshot, then the crash.
        r.apply(&marker(RESET, b"q")).unwrap();
        r.apply(&put(b"q", 1)).unwrap();
        assert_eq!(ids(r), vec![1, 2]);
    }

    #[test]
    fn a_complete_snapshot_replaces_the_queue() {
        let mut r = Replay::default();
        r.apply(&put(b"q", 1)).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        r.apply(&marker(RESET, b"q")).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        r.apply(&marker(SNAPSHOT_END, b"q")).unwrap();
        r.apply(&put(b"q", 3)).unwrap();
        assert_eq!(ids(r), vec![2, 3]);
    }
}
