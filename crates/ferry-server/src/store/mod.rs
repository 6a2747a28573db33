//! The embedded store: the log, how far it is durable, and a writer for
//! each kind of record; replay and `ferry check` read it back.
//!
//! - `records`: the record format, written and read in one place.
//! - `journal`: a queue's engine reports durable changes to it, which
//!   become records (a batch's puts or finishes one record).
//! - `replay`: records folded back into queues at start.
//! - `check`: a data directory described offline.
//!
//! Each queue's engine carries a [`LogJournal`]; settings, shutdowns and
//! drops are logged by the commands that make them, and snapshots by the
//! broker's checkpoint. A connection that ran a command which changed
//! something waits, before it writes its replies, until the log is durable
//! up to everything appended so far ([`Store::wait_durable`]): one fsync
//! covers every connection's batch (group commit).

mod check;
mod journal;
mod records;
pub(crate) mod replay;

pub use check::{CheckReport, QueueReport, check};
pub(crate) use journal::LogJournal;
pub use records::MAX_PAYLOAD;
pub(crate) use records::{MAX_KEY, valid_name};
pub(crate) use replay::Recovered;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_core::engine::{self, Millis};
use ferry_log::{Log, LogError, Options, Recovery};
use std::task::{Poll, Waker};

use records::{
    CHECKPOINT, DROP, FINISH, KEYTYPE, NEXT_ID, REOPEN, RESET, SHUTDOWN, SNAPSHOT_ABORT,
    SNAPSHOT_END,
};
use replay::Replay;

/// Tasks waiting for the log to be durable up to a sequence number. The
/// writer wakes only those it reached: a watch channel woke every waiter
/// on every fsync, most of them to find their records not synced yet.
#[derive(Default)]
struct Waiters {
    list: parking_lot::Mutex<Vec<(u64, Waker)>>,
}

impl Waiters {
    /// The log is durable up to `upto` (`u64::MAX`: it failed; wake all).
    /// In sync mode the waiter with the lowest sequence number left is
    /// woken too, to sync the next batch itself (it stays in the list).
    fn reached(&self, upto: u64) {
        let mut woken = Vec::new();
        {
            let mut list = self.list.lock();
            let mut i = 0;
            let mut next: Option<usize> = None;
            while i < list.len() {
                if list[i].0 <= upto {
                    woken.push(list.swap_remove(i).1);
                } else {
                    if next.is_none_or(|n| list[n].0 > list[i].0) {
                        next = Some(i);
                    }
                    i += 1;
                }
            }
            if let Some(n) = next {
                woken.push(list[n].1.clone());
            }
        }
        // Woken after the lock is let go: a woken task may poll at once.
        for w in woken {
            w.wake();
        }
    }
}

/// Sync mode: at most this many yields gather other connections' records
/// before a commit (fewer once a yield brings none): 34 records per fsync
/// instead of 14 under redis-benchmark's 50 clients (docs/performance.md).
const GATHER_ROUNDS: usize = 8;

/// Unix time in ms.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Logs what recovery cut or skipped, and where it kept the bytes.
fn report(recovery: &Recovery) {
    if let Some(c) = &recovery.cut {
        let kept = c
            .kept
            .as_ref()
            .map_or_else(|| "not kept".into(), |p| p.display().to_string());
        tracing::warn!(
            segment = %c.path.display(),
            offset = c.offset,
            bytes = c.bytes,
            whole_records_after_zeros = c.records,
            kept = %kept,
            "cut the end of the log: torn by a crash, or its last record damaged (the two leave the same bytes); a record there was never replayed"
        );
    }
    for s in &recovery.skipped {
        tracing::warn!(
            segment = %s.path.display(),
            offset = s.offset,
            len = s.len,
            reason = %s.reason,
            held = %records::describe(&s.record),
            "salvage: skipped damaged bytes"
        );
    }
    if recovery.salvaged() {
        let kept: Vec<String> = recovery
            .kept
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        tracing::warn!(
            stretches = recovery.skipped.len(),
            records = recovery.records,
            kept = %kept.join(", "),
            "salvage: skipped the damaged stretches above and replayed every whole record; the damaged segments are kept aside unchanged"
        );
    }
}

/// The log, and who waits for it to be durable.
pub(crate) struct Store {
    log: Log,
    waiters: Arc<Waiters>,
    /// Told once if the log fails: the server then stops.
    pub(crate) failure: Arc<tokio::sync::Notify>,
    /// Unix ms when the broker's clock read 0: delays and DEDUP windows are
    /// logged in wall time so that they survive a restart.
    base: u64,
}

impl Store {
    /// Opens the log in `dir` and replays it; replies the store, the queues
    /// it describes, and what recovery found.
    pub(crate) fn open(
        dir: &std::path::Path,
        options: Options,
    ) -> Result<(Store, HashMap<Bytes, Recovered>, Recovery), LogError> {
        let mut replay = Replay::default();
        let waiters = Arc::new(Waiters::default());
        let failure = Arc::new(tokio::sync::Notify::new());
        let (on_durable, on_error) = (Arc::clone(&waiters), Arc::clone(&failure));
        let failed = Arc::clone(&waiters);
        let (log, recovery) = Log::open(
            dir,
            options,
            |r| replay.apply(r),
            Box::new(move |lsn| on_durable.reached(lsn)),
            Box::new(move |e| {
                // SPEC §3: a write or fsync error stops the broker rather
                // than acknowledging anything it could not make durable.
                // Waiters wake to find the log failed and withhold their
                // replies; the server stops (see `Server::run`).
                tracing::error!(error = %e, "the log failed; stopping");
                failed.reached(u64::MAX);
                on_error.notify_one();
            }),
        )?;
        report(&recovery);
        let (state, cut) = replay.finish();
        let store = Store {
            log,
            waiters,
            failure,
            base: unix_ms(),
        };
        for name in cut {
            // Appended before anything else this run: the records that
            // follow are live ones, not the rest of that snapshot.
            tracing::warn!(queue = %String::from_utf8_lossy(&name), "a snapshot was cut short by a crash; ignoring it");
            store.marker(SNAPSHOT_ABORT, &name);
        }
        Ok((store, state, recovery))
    }

    /// The log itself, for compaction and INFO.
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// Writes and syncs everything appended, then stops the log's writer.
    pub(crate) fn close(&self) {
        self.log.close();
    }

    /// Waits until the log is durable up to `lsn`; false if it failed. In
    /// async mode the caller writes the pending batch itself first, so it
    /// waits for no other thread. In sync mode it gathers, then leads: it
    /// yields while other connections' records keep arriving (each yield
    /// lets every connection ready now run up to its own wait), then
    /// syncs them all with one fsync on this thread ([`Log::lead`]) — as
    /// Redis syncs between reading a round of requests and replying. If
    /// another thread is syncing, it waits for that one, and leads the
    /// next batch if that one did not cover it.
    pub(crate) async fn wait_durable(&self, lsn: u64) -> bool {
        if !self.log.write_now() {
            return false;
        }
        if self.log.durable() >= lsn {
            return true;
        }
        let mut seen = self.log.appended();
        for _ in 0..GATHER_ROUNDS {
            tokio::task::yield_now().await;
            if self.log.durable() >= lsn {
                return !self.log.failed();
            }
            let now = self.log.appended();
            if now == seen {
                break;
            }
            seen = now;
        }
        // The waker this wait registered: a poll that comes before the
        // writer's wake-up (a select! around it) must not add another.
        let mut registered: Option<Waker> = None;
        std::future::poll_fn(|cx| {
            let settled = || {
                if self.log.failed() {
                    Some(false)
                } else {
                    (self.log.durable() >= lsn).then_some(true)
                }
            };
            if let Some(r) = settled() {
                return Poll::Ready(r);
            }
            let mut list = self.waiters.list.lock();
            // Looked at again under the lock: the writer publishes how far
            // it got before it takes the lock to wake anyone.
            if let Some(r) = settled() {
                return Poll::Ready(r);
            }
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                list.push((lsn, cx.waker().clone()));
                registered = Some(cx.waker().clone());
            }
            drop(list);
            // Registered before it looks: a leader that lets the log go
            // after this wakes it.
            match self.log.lead() {
                Some(false) => Poll::Ready(false),
                Some(true) if self.log.durable() >= lsn => Poll::Ready(true),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Broker time (ms since start) of a wall-clock moment.
    pub(crate) fn to_broker_ms(&self, unix: u64) -> Millis {
        unix.saturating_sub(self.base)
    }

    /// The wall-clock moment of a broker time.
    pub(crate) fn to_unix_ms(&self, at: Millis) -> u64 {
        self.base.saturating_add(at)
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

    fn marker(&self, tag: u8, queue: &[u8]) {
        self.append(|b| records::head(b, tag, queue));
    }

    // ----- one writer per record ------------------------------------------

    /// A queue's settings (on creation and every change).
    pub(crate) fn settings(
        &self,
        queue: &[u8],
        explicit: bool,
        c: &engine::Config,
        expire: Option<u64>,
        expire_if_empty: bool,
    ) {
        self.append(|b| records::settings(b, queue, explicit, c, expire, expire_if_empty));
    }

    pub(crate) fn keytype(&self, queue: &[u8], keytype: &[u8]) {
        self.append(|b| {
            records::head(b, KEYTYPE, queue);
            b.extend_from_slice(keytype);
        });
    }

    pub(crate) fn reopened(&self, queue: &[u8]) {
        self.marker(REOPEN, queue);
    }

    pub(crate) fn shutdown(&self, queue: &[u8], immediate: bool) {
        self.append(|b| {
            records::head(b, SHUTDOWN, queue);
            b.push(u8::from(immediate));
        });
    }

    pub(crate) fn dropped(&self, queue: &[u8]) {
        self.marker(DROP, queue);
    }

    pub(crate) fn finish(&self, queue: &[u8], id: u64) {
        self.append(|b| records::id(b, FINISH, queue, id, None));
    }

    /// A DEDUP key: the id it answers until `until` (broker ms).
    pub(crate) fn dedup(&self, queue: &[u8], key: &[u8], id: u64, until: Millis) {
        let until = self.to_unix_ms(until);
        self.append(|b| records::dedup(b, queue, key, id, until));
    }

    /// The start of a queue's snapshot: forget what came before it.
    pub(crate) fn reset(&self, queue: &[u8]) {
        self.marker(RESET, queue);
    }

    pub(crate) fn next_id(&self, queue: &[u8], next: u64) {
        self.append(|b| {
            records::head(b, NEXT_ID, queue);
            b.extend_from_slice(&next.to_le_bytes());
        });
    }

    /// The end of a queue's snapshot: it replaces what came before.
    pub(crate) fn snapshot_end(&self, queue: &[u8]) {
        self.marker(SNAPSHOT_END, queue);
    }

    /// The end of a checkpoint.
    pub(crate) fn checkpoint_marker(&self) {
        self.marker(CHECKPOINT, b"");
    }

    /// A journal writing a snapshot's messages.
    pub(crate) fn journal(&self, queue: &[u8]) -> LogJournal<&Store> {
        LogJournal::new(self, Bytes::copy_from_slice(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_sync_wakes_the_waiters_it_reached_and_the_next_leader() {
        let waiters = Waiters::default();
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(std::sync::atomic::AtomicUsize::new(0))))
            .collect();
        for (lsn, c) in [5u64, 10, 15].into_iter().zip(&counts) {
            waiters.list.lock().push((lsn, Waker::from(Arc::clone(c))));
        }
        let woken = || -> Vec<usize> {
            counts
                .iter()
                .map(|c| c.0.load(std::sync::atomic::Ordering::SeqCst))
                .collect()
        };
        // 5 is durable; 10, the lowest left, is woken to sync the next
        // batch and stays in the list; 15 sleeps on.
        waiters.reached(9);
        assert_eq!(woken(), [1, 1, 0]);
        waiters.reached(10);
        assert_eq!(woken(), [1, 2, 1]);
        assert_eq!(waiters.list.lock().len(), 1);
        // A failed log wakes everyone left.
        waiters.reached(u64::MAX);
        assert_eq!(woken(), [1, 2, 2]);
        assert!(waiters.list.lock().is_empty());
    }
}
