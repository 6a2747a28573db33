//! The broker's shared state: every queue (an engine behind its own
//! mutex), the lock table, and the counters INFO reports.
//!
//! There is no global lock on the hot path: the registry is read-locked
//! only to find a queue, and each queue has its own mutex, held for one
//! engine call and never across an `.await` (so std-style blocking mutexes
//! from parking_lot are right here, not tokio's).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::engine::{self, Millis};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::acl::Acl;
use crate::clients::{ClientView, Clients};
use crate::config::{Config, Durability};
use crate::counter::Counter;
use crate::locks::Permits;
use crate::payload::{DEFAULT_KEY, Payload};
use crate::store::{LogJournal, Recovered, Store};

mod dedup;
mod queue;
mod registry;
mod tasks;

pub(crate) use queue::{QueueCell, QueueState, take_woke};
use registry::Made;
use tasks::{compactor, disk_watcher, idle_sweeper};

/// Connections that hold leases and takes together (CLIENT HOLDER): any of
/// them may finish what another got, and what they hold is released when
/// the last of them closes — one process's many connections (a pool, an
/// asyncio program's) acting as one consumer.
pub(crate) struct HolderGroup {
    token: Bytes,
    /// The holder id their gets use (from the client id sequence, so it is
    /// no connection's own).
    pub(crate) id: u64,
    members: AtomicUsize,
    /// Queues in which the group holds something.
    pub(crate) holds: Mutex<HashMap<Bytes, Arc<QueueCell>>>,
}

/// How CLIENT UNBLOCK reaches a blocked client.
pub(crate) struct Unblock {
    pub(crate) notify: Notify,
    /// End with -UNBLOCKED rather than as a timeout.
    pub(crate) error: AtomicBool,
    /// The user the blocked client is logged in as (under an ACL file):
    /// only that user, or an operator, may end its wait.
    pub(crate) user: Option<String>,
}

/// The broker: all queues, all locks.
pub(crate) struct Broker {
    pub(crate) config: Config,
    started: Instant,
    queues: RwLock<HashMap<Bytes, Arc<QueueCell>>>,
    pub(crate) locks: Permits,
    pub(crate) semaphores: Permits,
    pub(crate) events: crate::events::Events,
    pub(crate) barriers: crate::barriers::Barriers,
    next_client: AtomicU64,
    pub(crate) clients: AtomicUsize,
    /// Users and rights (`--acl-file`), read at start.
    pub(crate) acl: std::sync::OnceLock<Acl>,
    /// Password checks (argon2) run one at a time, off the workers.
    argon: tokio::sync::Semaphore,
    /// Checkpoints run one at a time (a salvage start's and the
    /// compactor's could overlap: each deletes the segments before the one
    /// it began, which must not be the other's).
    checkpointing: tokio::sync::Mutex<()>,
    /// Password checks waiting or running.
    password_checks: AtomicUsize,
    /// Every connection, for `/api/clients`.
    pub(crate) connections: Clients,
    /// TLS handshakes under way.
    pub(crate) handshakes: crate::clients::Handshakes,
    /// Clients blocked in a command, by id: CLIENT UNBLOCK ends their wait.
    blocked: Mutex<HashMap<u64, Arc<Unblock>>>,
    /// Holder groups (CLIENT HOLDER), by their clients' token.
    groups: Mutex<HashMap<Bytes, Arc<HolderGroup>>>,
    /// Commands run since start (INFO total_commands_processed).
    pub(crate) commands: Counter,
    /// Connections closed for a request over the limits, idle past
    /// --idle-timeout, or not reading their replies within --write-timeout.
    pub(crate) refused_requests: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    /// Connections closed before they authenticated: past --auth-timeout,
    /// or to make room for a newcomer.
    pub(crate) unauthenticated_closed: AtomicU64,
    pub(crate) slow_closed: AtomicU64,
    /// Checkpoints completed since start.
    pub(crate) compactions: AtomicU64,
    /// Sum of every queue's held weight: what `--max-memory` limits.
    memory: Counter,
    /// The embedded store; `None` with `--durability memory`.
    pub(crate) store: Option<Arc<Store>>,
    /// The data directory's disk is below `min_free_disk`: puts are refused.
    nospace: AtomicBool,
    /// Where the HTTP admin port listens, once bound.
    http: std::sync::OnceLock<std::net::SocketAddr>,
}

/// What a queue costs besides its messages, roughly (its cell, engine,
/// timer task and registry entry: 200,000 queues took 360 MB), counted in
/// `--max-memory` so that queues cannot grow past it either.
pub(crate) const QUEUE_OVERHEAD: u64 = 2048;

/// The longest DEDUP key a put may carry (a client's own are about 40
/// bytes): keys are kept for minutes and logged.
pub(crate) const MAX_DEDUP_KEY: usize = 256;

/// Password checks that may wait at once; beyond, AUTH answers "try
/// again" at once.
pub(crate) const MAX_PASSWORD_CHECKS: usize = 64;

/// The refusal of a put or a new queue over `--max-memory`.
pub(crate) const OVER_MEMORY: &str = "command not allowed when used memory > 'max-memory'";

impl Broker {
    /// Opens the broker: with a store, replays its log and rebuilds every
    /// queue (counted toward the limits of `acl`'s users). Needs a tokio
    /// runtime (each queue gets a timer task).
    pub(crate) fn open(
        config: Config,
        acl: Option<Acl>,
    ) -> Result<(Arc<Self>, Option<ferry_log::Recovery>), ferry_log::LogError> {
        let options = |durability| {
            let mut o = ferry_log::Options {
                durability,
                salvage: config.salvage,
                reserve_bytes: config.disk_reserve,
                ..ferry_log::Options::default()
            };
            if let Some(storage) = &config.log_storage {
                o.storage = Arc::clone(&storage.0);
            }
            o
        };
        let (store, recovered, recovery) = match config.durability {
            Durability::Memory => (None, HashMap::new(), None),
            Durability::Sync | Durability::Async => {
                let mode = if config.durability == Durability::Sync {
                    ferry_log::Durability::Sync
                } else {
                    ferry_log::Durability::Async
                };
                let (store, state, recovery) = Store::open(&config.data_dir, options(mode))?;
                (Some(Arc::new(store)), state, Some(recovery))
            }
        };
        let broker = Broker::new(config, store);
        if let Some(acl) = acl {
            let _ = broker.acl.set(acl);
        }
        for (name, rec) in recovered {
            broker.restore_queue(name, rec);
        }
        if broker.store.is_some() {
            broker.check_disk();
            tokio::spawn(compactor(Arc::clone(&broker)));
            tokio::spawn(disk_watcher(Arc::clone(&broker)));
        }
        tokio::spawn(idle_sweeper(Arc::clone(&broker)));
        Ok((broker, recovery))
    }

    /// Compacts the log: a new segment, a snapshot of every queue, then the
    /// older segments go (see `store.rs`). Replies the bytes freed.
    pub(crate) async fn checkpoint(self: &Arc<Self>) -> Result<u64, ferry_log::LogError> {
        let Some(store) = self.store.clone() else {
            return Ok(0);
        };
        let _one = self.checkpointing.lock().await;
        store.log().start_segment();
        // Off the runtime's workers: snapshots of a large backlog take long
        // (a 3M-message queue: ~0.4 s), and on a worker they would stall
        // every connection it serves, not only the queue being written.
        let (broker, snapshots) = (Arc::clone(self), Arc::clone(&store));
        tokio::task::spawn_blocking(move || {
            let cells: Vec<Arc<QueueCell>> = broker.queues.read().values().cloned().collect();
            for cell in cells {
                cell.snapshotting.store(true, Ordering::Release);
                cell.with(&broker, |st, now| {
                    // A queue dropped since the segment started logged its
                    // Drop already; a snapshot after it would bring it back.
                    // One a get made for its wait alone is not the log's.
                    if !st.dropped && !cell.tentative.load(Ordering::Acquire) {
                        st.snapshot(&snapshots, &cell, now);
                    }
                });
                cell.snapshotting.store(false, Ordering::Release);
                // Its records written here, not by a connection (see
                // `QueueState::snapshot`).
                snapshots.log().write_now();
            }
            snapshots.checkpoint_marker();
        })
        .await
        .map_err(|_| ferry_log::LogError::Failed)?;
        if !store.wait_durable(store.log().appended()).await {
            return Err(ferry_log::LogError::Failed);
        }
        match store.log().started_segment() {
            0 => Ok(0),
            // Unlinking segments and syncing the directory: off the workers.
            seq => tokio::task::spawn_blocking(move || store.log().delete_before(seq))
                .await
                .map_err(|_| ferry_log::LogError::Failed)?,
        }
    }

    /// Rebuilds one queue from the log, then journals it from here on.
    fn restore_queue(self: &Arc<Self>, name: Bytes, rec: Recovered) {
        let expire = (rec.expire, rec.expire_if_empty);
        let (cell, _) = self.create_cell(&name, rec.config, rec.explicit, expire, Made::Restored);
        cell.with(self, |st, now| {
            st.q.set_next_id(rec.next_id);
            for (id, m) in rec.msgs {
                let due = (m.due > 0)
                    .then(|| self.store.as_ref().map_or(0, |s| s.to_broker_ms(m.due)))
                    .filter(|&d| d > now);
                let item = Payload {
                    data: m.data,
                    key: m.key,
                };
                st.q.restore(id, m.attempts + u32::from(m.out), item, due);
            }
            if let Some(immediate) = rec.shutdown {
                st.q.shutdown(immediate, now);
            }
            st.keytype = rec.keytype;
            if let Some(store) = &self.store {
                for (key, (id, until)) in rec.dedup {
                    let until = store.to_broker_ms(until);
                    if until > now {
                        st.keep_dedup(key, id, until);
                    }
                }
            }
            if let Some(store) = &self.store {
                st.q.set_journal(Box::new(LogJournal::new(Arc::clone(store), name.clone())));
            }
        });
    }

    fn new(config: Config, store: Option<Arc<Store>>) -> Arc<Self> {
        Arc::new(Broker {
            store,
            config,
            started: Instant::now(),
            queues: RwLock::new(HashMap::new()),
            locks: Permits::new(),
            semaphores: Permits::new(),
            events: crate::events::Events::default(),
            barriers: crate::barriers::Barriers::default(),
            next_client: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            acl: std::sync::OnceLock::new(),
            argon: tokio::sync::Semaphore::new(1),
            checkpointing: tokio::sync::Mutex::new(()),
            password_checks: AtomicUsize::new(0),
            connections: Clients::default(),
            handshakes: crate::clients::Handshakes::default(),
            blocked: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            commands: Counter::default(),
            refused_requests: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            unauthenticated_closed: AtomicU64::new(0),
            slow_closed: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            memory: Counter::default(),
            nospace: AtomicBool::new(false),
            http: std::sync::OnceLock::new(),
        })
    }

    /// Milliseconds since the broker started: the engine's clock.
    pub(crate) fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn instant_at(&self, at: Millis) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + Duration::from_millis(at))
    }

    /// Where the HTTP admin port listens, if it does.
    pub(crate) fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.get().copied()
    }

    pub(crate) fn set_http_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.http.set(addr);
    }

    /// Bytes held by queued messages (payloads plus per-message overhead).
    pub(crate) fn memory(&self) -> u64 {
        self.memory.get()
    }

    /// True when puts must be refused with -NOSPACE: free space is under
    /// the floor, or the log found no room for a new segment.
    pub(crate) fn low_on_disk(&self) -> bool {
        self.nospace.load(Ordering::Relaxed)
            || self
                .store
                .as_ref()
                .is_some_and(|s| s.log().short_of_space())
    }

    /// Measures the data directory's free space against `min_free_disk`.
    fn check_disk(&self) {
        let Ok(stat) = rustix::fs::statvfs(&self.config.data_dir) else {
            return;
        };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let low = free < self.config.min_free_disk;
        if low != self.nospace.swap(low, Ordering::Relaxed) {
            if low {
                tracing::warn!(
                    free,
                    floor = self.config.min_free_disk,
                    "disk space is low: refusing puts"
                );
            } else {
                tracing::info!(free, "disk space recovered: accepting puts");
            }
        }
    }

    /// Checks these credentials with argon2 unless they were checked
    /// before: one check at a time, on a blocking thread, so that a flood
    /// of wrong passwords holds up no worker (each check costs tens of
    /// milliseconds by design). The answer goes to the ACL's caches, where
    /// AUTH finds it. False (check nothing; ask again later) while
    /// [`MAX_PASSWORD_CHECKS`] are waiting already.
    pub(crate) async fn check_password(self: &Arc<Self>, user: &[u8], password: &[u8]) -> bool {
        let Some(acl) = self.acl.get() else {
            return true;
        };
        if !matches!(acl.known(user, password), crate::acl::Known::Unchecked) {
            return true;
        }
        if self.password_checks.fetch_add(1, Ordering::AcqRel) >= MAX_PASSWORD_CHECKS {
            self.password_checks.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        /// Counts the check out however it ends (its caller may be dropped).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.password_checks);
        let Ok(_permit) = self.argon.acquire().await else {
            return false;
        };
        // Checked while this one waited (a reconnecting pool sends the
        // same password on every connection)?
        if !matches!(acl.known(user, password), crate::acl::Known::Unchecked) {
            return true;
        }
        let (broker, user, password) = (Arc::clone(self), user.to_vec(), password.to_vec());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(acl) = broker.acl.get() {
                acl.verify(&user, &password);
            }
        })
        .await;
        true
    }

    /// True when puts (and new queues) must be refused with -OOM.
    pub(crate) fn over_memory(&self) -> bool {
        self.over_memory_with(0)
    }

    /// True when holding `adds` bytes more would pass `--max-memory` (or
    /// it is reached already).
    pub(crate) fn over_memory_with(&self, adds: u64) -> bool {
        let max = self.config.max_memory;
        max > 0 && (self.memory() >= max || self.memory().saturating_add(adds) > max)
    }

    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers client `id` (logged in as `user`) as blocked; its wait
    /// also ends when [`Broker::unblock`] fires the returned signal.
    pub(crate) fn block(&self, id: u64, user: Option<String>) -> Arc<Unblock> {
        let u = Arc::new(Unblock {
            notify: Notify::new(),
            error: AtomicBool::new(false),
            user,
        });
        self.blocked.lock().insert(id, Arc::clone(&u));
        u
    }

    /// Every connection as it is now.
    pub(crate) fn client_views(&self) -> Vec<ClientView> {
        let blocked = self.blocked.lock();
        self.connections
            .views(self.now(), |id| blocked.contains_key(&id))
    }

    /// Client `id` is no longer blocked.
    pub(crate) fn unblocked(&self, id: u64) {
        self.blocked.lock().remove(&id);
    }

    /// Joins the holder group of `token` (made if need be). Under an ACL
    /// file the token is the caller's to qualify with its user name: one
    /// user's clients never share a group with another's.
    pub(crate) fn join_group(&self, token: &Bytes) -> Arc<HolderGroup> {
        let mut groups = self.groups.lock();
        let group = groups.entry(token.clone()).or_insert_with(|| {
            Arc::new(HolderGroup {
                token: token.clone(),
                id: self.next_client_id(),
                members: AtomicUsize::new(0),
                holds: Mutex::new(HashMap::new()),
            })
        });
        group.members.fetch_add(1, Ordering::AcqRel);
        Arc::clone(group)
    }

    /// A member of `group` left; true when it was the last (the group is
    /// gone, and what it held must be released).
    pub(crate) fn leave_group(&self, group: &HolderGroup) -> bool {
        let mut groups = self.groups.lock();
        if group.members.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        groups.remove(&group.token);
        true
    }

    /// CLIENT UNBLOCK: ends client `id`'s wait as a timeout (or, with
    /// `error`, with -UNBLOCKED); false if it is not blocked. Under an ACL
    /// file (`by`: the caller's user), only for the same user or an
    /// operator; the error says why not.
    pub(crate) fn unblock(
        &self,
        id: u64,
        error: bool,
        by: Option<&crate::acl::User>,
    ) -> Result<bool, String> {
        let mut blocked = self.blocked.lock();
        let Some(u) = blocked.get(&id) else {
            return Ok(false);
        };
        if let Some(by) = by
            && !by.operator()
            && u.user.as_deref() != Some(by.name.as_str())
        {
            return Err(format!(
                "user '{}' may end only its own clients' waits (client {id} is another user's; an operator, admin on \"*\", may end any)",
                by.name
            ));
        }
        let Some(u) = blocked.remove(&id) else {
            return Ok(false);
        };
        drop(blocked);
        u.error.store(error, Ordering::Release);
        u.notify.notify_one();
        Ok(true)
    }
}

impl Broker {
    /// Moves dead letters into the named queue (created if need be), past
    /// its bound; with no dead-letter queue they are dropped, already
    /// counted in the source's stats.
    fn bury(
        self: &Arc<Self>,
        source: &Bytes,
        target: Option<String>,
        dead: Vec<engine::Message<Payload>>,
    ) {
        let ids: Vec<u64> = dead.iter().map(|m| m.id).collect();
        if let Some(target) = target {
            let name = Bytes::from(target);
            let cell = self.queue_or_create(&name);
            cell.with(self, |st, now| {
                for msg in dead {
                    st.q.put_moved(msg.item, msg.attempts, now);
                }
            });
        }
        self.moved_out(source, &ids);
    }

    /// Moves up to `max` ready messages of `from` (a dead-letter queue) to
    /// `to`, past its bound, each starting over at attempt 0; replies how
    /// many. A message that lost its priority in a fifo queue comes back
    /// at priority 0.
    pub(crate) fn redrive(self: &Arc<Self>, from: &QueueCell, to: &QueueCell, max: usize) -> usize {
        let moved = from.with(self, |st, now| st.q.take_out(max, now));
        let ids: Vec<u64> = moved.iter().map(|m| m.id).collect();
        to.with(self, |st, now| {
            for msg in moved {
                let mut item = msg.item;
                if item.key.is_empty() {
                    item.key = Bytes::from_static(DEFAULT_KEY);
                }
                st.q.put_moved(item, 0, now);
            }
        });
        self.moved_out(&from.name, &ids);
        ids.len()
    }

    /// Only once their put in another queue is logged are moved messages
    /// finished in the queue they left: a crash in between leaves a copy in
    /// both, never in neither.
    fn moved_out(&self, source: &Bytes, ids: &[u64]) {
        if let Some(store) = &self.store {
            for &id in ids {
                store.finish(source, id);
            }
        }
    }
}
