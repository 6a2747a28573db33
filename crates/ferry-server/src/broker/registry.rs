//! The registry: queues by name — found, made (by a client, by first
//! use, by a get's wait alone), promoted, dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use ferry_core::engine::{self, Millis};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::queue::{QueueCell, QueueState};
use super::tasks::timer;
use super::{Broker, OVER_MEMORY, QUEUE_OVERHEAD};
use crate::payload::EngineQueue;
use crate::store::LogJournal;

/// How long a queue a get made for its wait alone outlives its last
/// getter before the idle sweeper drops it (it was never in the log).
pub(crate) const TENTATIVE_IDLE_MS: Millis = 1000;

/// Who makes a queue, and so whether the log knows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    /// A client (or the broker's own move): its settings are logged, and
    /// so is everything done to it.
    Logged,
    /// The log's replay: journaled once it is rebuilt.
    Restored,
    /// A get's wait alone: not in the log until something else names it.
    ByAGet,
}

impl Broker {
    /// The queue of that name, if it exists.
    pub(crate) fn queue(&self, name: &[u8]) -> Option<Arc<QueueCell>> {
        self.queues.read().get(name).cloned()
    }

    /// The queue of that name, created with default settings if it does not
    /// exist (as Redis does with keys and beanstalkd with tubes), for the
    /// broker's own use (a dead letter's move): never refused.
    pub(crate) fn queue_or_create(self: &Arc<Self>, name: &Bytes) -> Arc<QueueCell> {
        if let Some(cell) = self.queue(name) {
            return self.promote(cell);
        }
        self.create_cell(
            name,
            engine::Config::default(),
            false,
            (None, false),
            Made::Logged,
        )
        .0
    }

    /// The queue a get names, if it exists; else one made for the get's
    /// wait alone: not in the log, dropped by the idle sweeper once nobody
    /// waits in it (`TENTATIVE_IDLE_MS`), and made a queue of the log's by
    /// whatever else names it first (a put: see [`Broker::promote`]) — a
    /// get of a queue that does not exist leaves none behind. Refused as
    /// [`Broker::create`] refuses.
    pub(crate) fn queue_to_get(
        self: &Arc<Self>,
        name: &Bytes,
        user: Option<&crate::acl::User>,
    ) -> Result<Arc<QueueCell>, String> {
        if let Some(cell) = self.queue(name) {
            return Ok(cell);
        }
        self.refuse_new(user)?;
        let idle = (Some(TENTATIVE_IDLE_MS), true);
        Ok(self
            .create_cell(name, engine::Config::default(), false, idle, Made::ByAGet)
            .0)
    }

    /// A queue made by a get's wait alone becomes a queue of the log's (its
    /// settings logged, its journal set, no idle expiry), before anything
    /// else touches it; one the sweeper dropped meanwhile is made anew.
    /// Replies the queue to use. Cheap when there is nothing to do.
    pub(crate) fn promote(self: &Arc<Self>, cell: Arc<QueueCell>) -> Arc<QueueCell> {
        if !cell.tentative.load(Ordering::Acquire) {
            return cell;
        }
        let queues = self.queues.write();
        if cell.removed() {
            drop(queues);
            return self
                .create_cell(
                    &cell.name,
                    engine::Config::default(),
                    false,
                    (None, false),
                    Made::Logged,
                )
                .0;
        }
        let mut st = cell.lock();
        if cell.tentative.load(Ordering::Acquire) {
            if let Some(store) = &self.store {
                st.q.set_journal(Box::new(LogJournal::new(
                    Arc::clone(store),
                    cell.name.clone(),
                )));
                store.settings(&cell.name, false, st.q.config(), None, false);
            }
            cell.set_expire(None);
            cell.tentative.store(false, Ordering::Release);
        }
        drop(st);
        drop(queues);
        cell
    }

    /// Creates a queue for a client unless one exists; replies it and
    /// whether it is new. A new queue is refused (the reason said) while
    /// the broker is over `--max-memory` (a queue costs memory too) or
    /// `user` is at its `max_queues`.
    pub(crate) fn create(
        self: &Arc<Self>,
        name: &Bytes,
        config: engine::Config,
        explicit: bool,
        expire: Option<Millis>,
        user: Option<&crate::acl::User>,
    ) -> Result<(Arc<QueueCell>, bool), String> {
        if let Some(cell) = self.queue(name) {
            return Ok((self.promote(cell), false));
        }
        self.refuse_new(user)?;
        // An expiry set by a user without admin drops the queue only while
        // it holds nothing.
        let admin = user.is_none_or(|u| u.may(crate::acl::Right::Admin, name));
        Ok(self.create_cell(name, config, explicit, (expire, !admin), Made::Logged))
    }

    /// Why a new queue cannot be made now: the broker is over
    /// `--max-memory` (a queue costs memory too), or `user` is at its
    /// `max_queues`.
    fn refuse_new(&self, user: Option<&crate::acl::User>) -> Result<(), String> {
        if self.over_memory() {
            return Err(OVER_MEMORY.into());
        }
        match user.and_then(crate::acl::User::over_queues) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Logs a queue's current settings.
    pub(crate) fn log_settings(&self, cell: &QueueCell, st: &QueueState) {
        if let Some(store) = &self.store {
            store.settings(
                &cell.name,
                st.explicit,
                st.q.config(),
                cell.expire(),
                cell.expire_if_empty(),
            );
        }
    }

    pub(super) fn create_cell(
        self: &Arc<Self>,
        name: &Bytes,
        config: engine::Config,
        explicit: bool,
        (expire, expire_if_empty): (Option<Millis>, bool),
        made: Made,
    ) -> (Arc<QueueCell>, bool) {
        let journal = made == Made::Logged;
        let mut queues = self.queues.write();
        if let Some(cell) = queues.get(name) {
            return (Arc::clone(cell), false);
        }
        let charges = self.acl.get().map(|a| a.charges(name)).unwrap_or_default();
        for c in &charges {
            c.count_queue(true);
        }
        self.memory.add(QUEUE_OVERHEAD);
        let mut q = EngineQueue::new(config);
        if let (Some(store), true) = (&self.store, journal) {
            q.set_journal(Box::new(LogJournal::new(Arc::clone(store), name.clone())));
        }
        let cell = Arc::new(QueueCell {
            name: name.clone(),
            charges,
            state: Mutex::new(QueueState {
                q,
                wakers: HashMap::new(),
                dedup: Default::default(),
                explicit,
                dropped: false,
                keytype: None,
            }),
            timer: Notify::new(),
            armed: AtomicU64::new(u64::MAX),
            removed: AtomicBool::new(false),
            discharged: AtomicBool::new(false),
            snapshotting: AtomicBool::new(false),
            last_used: AtomicU64::new(self.now()),
            expire: AtomicU64::new(expire.unwrap_or(u64::MAX)),
            expire_if_empty: AtomicBool::new(expire.is_some() && expire_if_empty),
            tentative: AtomicBool::new(made == Made::ByAGet),
        });
        queues.insert(name.clone(), Arc::clone(&cell));
        if journal {
            // Logged under the registry lock, so that a drop and a re-create
            // of the same name reach the log in the order they happened.
            if let Some(store) = &self.store {
                let if_empty = cell.expire_if_empty();
                store.settings(name, explicit, cell.lock().q.config(), expire, if_empty);
            }
        }
        drop(queues);
        tokio::spawn(timer(Arc::clone(self), Arc::clone(&cell)));
        (cell, true)
    }

    /// Names of all queues, sorted.
    pub(crate) fn names(&self) -> Vec<Bytes> {
        let mut names: Vec<Bytes> = self.queues.read().keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    /// Removes a queue: it is shut down immediately first, so that its
    /// waiters are released, and its timer task ends.
    pub(crate) fn drop_queue(self: &Arc<Self>, name: &[u8]) -> bool {
        let Some(cell) = self.queues.write().remove(name) else {
            return false;
        };
        self.let_go(name, &cell);
        true
    }

    /// The idle sweeper's drop: `cell` goes only if it is still the queue
    /// of its name, unused for its idle expiry and idle (`idle`, under its
    /// lock) at the moment it is removed — a command that named it since
    /// (a put that came as the sweeper looked) keeps it.
    pub(crate) fn drop_if_idle(
        self: &Arc<Self>,
        cell: &Arc<QueueCell>,
        idle: impl Fn(&QueueState) -> bool,
    ) -> bool {
        let mut queues = self.queues.write();
        if !queues.get(&cell.name).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            return false;
        }
        {
            let st = cell.lock();
            let now = self.now();
            let unused = cell
                .expire()
                .is_some_and(|e| now.saturating_sub(cell.last_used.load(Ordering::Acquire)) >= e);
            if !unused || !idle(&st) {
                return false;
            }
            queues.remove(&cell.name);
            // Under its lock: a command that had found it sees it removed.
            cell.removed.store(true, Ordering::Release);
        }
        drop(queues);
        self.let_go(&cell.name, cell);
        true
    }

    /// A removed queue lets go of everything: its count, its waiters (shut
    /// down immediately), its log record (unless it never had one), its
    /// timer.
    fn let_go(self: &Arc<Self>, name: &[u8], cell: &Arc<QueueCell>) {
        cell.removed.store(true, Ordering::Release);
        self.memory.sub(QUEUE_OVERHEAD);
        for c in &cell.charges {
            c.count_queue(false);
        }
        let logged = !cell.tentative.load(Ordering::Acquire);
        cell.with(self, |st, now| {
            st.q.shutdown(true, now);
            st.dropped = true;
            st.dedup.clear();
            if let (Some(store), true) = (&self.store, logged) {
                store.dropped(name);
            }
        });
        cell.timer.notify_one();
    }
}
