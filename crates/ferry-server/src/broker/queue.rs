//! One queue as the broker keeps it: its engine and what it holds besides
//! (waiters' wake-ups, DEDUP keys, flags) behind a mutex — the
//! `QueueCell`, with its timer — and the one way to touch it,
//! [`QueueCell::with`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use ferry_core::engine::{self, Journal, Millis, WaiterId};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::*;
use crate::payload::{EngineQueue, Payload};
use crate::store::Store;

use super::dedup::DedupKeys;

/// What a queue holds besides its engine.
pub(crate) struct QueueState {
    pub(crate) q: EngineQueue,
    /// The task to wake for each waiter the engine may settle.
    pub(super) wakers: HashMap<WaiterId, Arc<Notify>>,
    /// DEDUP keys (what they weigh counts with the messages toward
    /// `--max-memory` and the users' `max_bytes`).
    pub(super) dedup: DedupKeys,
    /// Made by QCREATE (settings compared on a later QCREATE), rather than
    /// by first use.
    pub(crate) explicit: bool,
    /// Removed by QDROP; its timer task exits.
    pub(super) dropped: bool,
    /// The type of the order keys of the messages it holds (QPUT ...
    /// KEYTYPE): set by the first put into the queue while it holds
    /// nothing; a put of another type is refused until it is empty again.
    pub(crate) keytype: Option<Bytes>,
}

impl QueueState {
    /// Checks a put's key type against the messages the queue holds, and
    /// adopts it (logged) when the queue holds none: the stdlib compares
    /// only items present, so an empty queue takes any type.
    pub(crate) fn check_keytype(
        &mut self,
        queue: &[u8],
        keytype: &Bytes,
        store: Option<&Store>,
    ) -> Result<(), Bytes> {
        match &self.keytype {
            Some(t) if t == keytype => Ok(()),
            Some(t) if self.q.held_weight() > 0 => Err(t.clone()),
            _ => {
                if let Some(store) = store {
                    store.keytype(queue, keytype);
                }
                self.keytype = Some(keytype.clone());
                Ok(())
            }
        }
    }

    /// Registers the task to wake when the engine settles `waiter`.
    pub(crate) fn watch(&mut self, waiter: WaiterId, notify: &Arc<Notify>) {
        self.wakers.insert(waiter, Arc::clone(notify));
    }

    /// Forgets a waiter's wake-up (it was polled or cancelled).
    pub(crate) fn unwatch(&mut self, waiter: WaiterId) {
        self.wakers.remove(&waiter);
    }

    /// What the queue holds, as `--max-memory` counts it: its messages,
    /// the puts waiting for room in it, and its DEDUP keys.
    pub(super) fn held(&self) -> u64 {
        self.q.held_weight() + self.q.waiting_put_weight() + self.dedup.bytes()
    }

    /// The id an earlier put with this DEDUP key got, if it still counts.
    pub(crate) fn dedup(&mut self, key: &Bytes, now: Millis) -> Option<u64> {
        self.dedup.get(key, now)
    }

    /// Keeps a DEDUP key (replacing any it had).
    pub(super) fn keep_dedup(&mut self, key: Bytes, id: u64, until: Millis) {
        self.dedup.keep(key, id, until);
    }

    /// Remembers a DEDUP key for `window` ms, in the log too when there
    /// is one (a retry after a broker crash is exactly when a client needs
    /// it). Keys whose window ended go first, so the table stays bounded
    /// by the puts of one window.
    pub(crate) fn remember(
        &mut self,
        queue: &[u8],
        key: Bytes,
        id: u64,
        now: Millis,
        window: Millis,
        store: Option<&Store>,
    ) {
        self.dedup.sweep(now);
        let until = now.saturating_add(window);
        if let Some(store) = store {
            store.dedup(queue, &key, id, until);
        }
        self.keep_dedup(key, id, until);
    }

    /// Writes the queue's snapshot: everything a replay needs to rebuild
    /// it — settings, next id, every stored message (one at a time: a
    /// packed backlog is never unpacked whole), shutdown state, DEDUP keys
    /// — between a Reset and a SnapshotEnd (called under the queue's lock).
    pub(super) fn snapshot(&self, store: &Store, cell: &QueueCell, now: Millis) {
        let queue = &cell.name[..];
        store.reset(queue);
        store.settings(
            queue,
            self.explicit,
            self.q.config(),
            cell.expire(),
            cell.expire_if_empty(),
        );
        store.next_id(queue, self.q.next_id());
        let mut journal = store.journal(queue);
        // Written as it goes (async mode), on this thread: left pending, a
        // large backlog's records would be written by the next connection
        // that flushes, on its runtime worker (100 MB: a stall of all of
        // that worker's clients).
        let mut unwritten = 0;
        self.q.for_each_stored(|m, due, out| {
            journal.put(m.id, m.attempts, &m.item, due.filter(|&d| d > now));
            if out {
                journal.leased(m.id);
            }
            unwritten += m.item.data.len() + 32;
            if unwritten >= SNAPSHOT_WRITE_BYTES {
                unwritten = 0;
                store.log().write_now();
            }
        });
        journal.flush();
        if let Some(mode) = self.q.shutdown_state() {
            store.shutdown(queue, mode == engine::Shutdown::Immediate);
        }
        if let Some(t) = &self.keytype {
            store.keytype(queue, t);
        }
        for (key, id, until) in self.dedup.live(now) {
            store.dedup(queue, key, id, until);
        }
        store.snapshot_end(queue);
    }
}

/// One queue: its state behind a mutex, and the timer that lets time pass
/// for it (delays running out, leases expiring).
pub(crate) struct QueueCell {
    pub(crate) name: Bytes,
    /// The users with limits it counts toward (`--acl-file`'s max_bytes,
    /// max_queues).
    pub(super) charges: Vec<crate::acl::Charge>,
    pub(super) state: Mutex<QueueState>,
    pub(super) timer: Notify,
    /// The deadline the timer task currently sleeps until (u64::MAX: none).
    pub(super) armed: AtomicU64,
    /// Set by QDROP, so that connections caching this cell look again.
    pub(super) removed: AtomicBool,
    /// Its memory was let go of after the drop (see [`QueueCell::with`]).
    pub(super) discharged: AtomicBool,
    /// When a command last named the queue (broker ms).
    pub(super) last_used: AtomicU64,
    /// Dropped once unused this long, with no client waiting in it or
    /// holding its messages (ms; u64::MAX: never). QCREATE ... EXPIRE.
    pub(super) expire: AtomicU64,
    /// ... and, set so, only while it holds no message at all.
    pub(super) expire_if_empty: AtomicBool,
    /// Made by a get's wait alone: not in the log, and swept once nobody
    /// waits in it, unless something else names it first (`promote`).
    /// Written under the registry's write lock and the queue's.
    pub(super) tentative: AtomicBool,
    /// Set while a checkpoint writes this queue's snapshot (it holds the
    /// lock for as long as a large backlog takes: see `lock`).
    pub(super) snapshotting: AtomicBool,
}

/// A snapshot writes its records out every this many bytes (see
/// `QueueState::snapshot`).
pub(super) const SNAPSHOT_WRITE_BYTES: usize = 1 << 20;

impl QueueCell {
    /// The queue's state, locked. A checkpoint may hold it for as long as
    /// a large backlog's snapshot takes (~0.35 s for 3 M messages): a
    /// runtime worker that must wait for that first hands the other
    /// connections it serves to another thread (`block_in_place`), so
    /// that only the clients of this queue wait.
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, QueueState> {
        if let Some(st) = self.state.try_lock() {
            return st;
        }
        if self.snapshotting.load(Ordering::Acquire)
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return tokio::task::block_in_place(|| self.state.lock());
        }
        self.state.lock()
    }

    /// True once QDROP removed this queue from the registry.
    pub(crate) fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// A command named the queue at `now`.
    pub(crate) fn used(&self, now: Millis) {
        // Written only when it changed: every client of the queue reads
        // it, and a store per command would take the line from the others.
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// The idle expiry, if any (QCREATE ... EXPIRE).
    pub(crate) fn expire(&self) -> Option<Millis> {
        Some(self.expire.load(Ordering::Relaxed)).filter(|&e| e != u64::MAX)
    }

    /// Sets the idle expiry (an admin's: unconditional).
    pub(crate) fn set_expire(&self, expire: Option<Millis>) {
        self.expire
            .store(expire.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.expire_if_empty.store(false, Ordering::Relaxed);
    }

    /// Its idle expiry drops it only while it holds nothing (it was set by
    /// a user without admin, making the queue: a queue others may have
    /// put to never vanishes with their messages).
    pub(crate) fn expire_if_empty(&self) -> bool {
        self.expire_if_empty.load(Ordering::Relaxed)
    }

    /// Runs `f` on the queue under its lock, then does what every engine
    /// call needs after it: wakes the waiters it settled, re-arms the timer
    /// if a deadline moved earlier, and — after unlocking — moves dead
    /// letters to their queue.
    pub(crate) fn with<R>(
        &self,
        broker: &Arc<Broker>,
        f: impl FnOnce(&mut QueueState, Millis) -> R,
    ) -> R {
        self.with_at(broker, broker.now(), f)
    }

    /// [`QueueCell::with`] at a broker time the caller read: a command
    /// passes its session's ([`crate::session::Session::now`]).
    pub(crate) fn with_at<R>(
        &self,
        broker: &Arc<Broker>,
        now: Millis,
        f: impl FnOnce(&mut QueueState, Millis) -> R,
    ) -> R {
        let mut st = self.lock();
        let before = st.held();
        let r = f(&mut st, now);
        // Under the lock, before any reply can wait for the log: the
        // operation's gathered records (a batch's finishes) go in now.
        st.q.flush_journal();
        let after = st.held();
        let QueueState { q, wakers, .. } = &mut *st;
        // A dropped queue counts no more: what it still holds (leases no
        // QDONE can reach by name) is let go of at once, as the drop
        // promised, and nothing after.
        let (before, after) = if !self.removed() {
            (before, after)
        } else if !self.discharged.swap(true, Ordering::AcqRel) {
            (before, 0)
        } else {
            (0, 0)
        };
        if after != before {
            let delta = after as i64 - before as i64;
            for c in &self.charges {
                c.add_bytes(delta);
            }
        }
        if after > before {
            broker.memory.add(after - before);
        } else if after < before {
            broker.memory.sub(before - after);
        }
        for id in q.drain_woken() {
            if let Some(n) = wakers.get(&id) {
                n.notify_one();
                WOKE.set(true);
            }
        }
        if let Some(d) = q.next_deadline()
            && d < self.armed.load(Ordering::Acquire)
        {
            self.timer.notify_one();
        }
        let dead: Vec<engine::Message<Payload>> = q.drain_dead_letters().collect();
        if dead.is_empty() {
            return r;
        }
        let target = q.config().dead_letter.clone();
        drop(st);
        broker.bury(&self.name, target, dead);
        r
    }
}

thread_local! {
    /// A queue operation on this thread woke a waiting client.
    static WOKE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a queue operation on this thread woke a waiting client since
/// the last call.
pub(crate) fn take_woke() -> bool {
    WOKE.replace(false)
}
