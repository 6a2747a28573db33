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
use ferry_core::engine::{self, Journal, Millis, WaiterId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::acl::Acl;
use crate::clients::{ClientView, Clients};
use crate::config::{Config, Durability};
use crate::counter::Counter;
use crate::locks::Locks;
use crate::payload::{DEFAULT_KEY, EngineQueue, Payload};
use crate::store::{LogJournal, Recovered, Store};

/// What a queue holds besides its engine.
pub(crate) struct QueueState {
    pub(crate) q: EngineQueue,
    /// The task to wake for each waiter the engine may settle.
    wakers: HashMap<WaiterId, Arc<Notify>>,
    /// DEDUP keys: the id their put got, and until when they count.
    dedup: HashMap<Bytes, (u64, Millis)>,
    /// What the DEDUP keys weigh: counted with the messages toward
    /// `--max-memory` and the users' `max_bytes`.
    dedup_bytes: u64,
    /// Made by QCREATE (settings compared on a later QCREATE), rather than
    /// by first use.
    pub(crate) explicit: bool,
    /// Removed by QDROP; its timer task exits.
    dropped: bool,
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
    fn held(&self) -> u64 {
        self.q.held_weight() + self.q.waiting_put_weight() + self.dedup_bytes
    }

    /// The id an earlier put with this DEDUP key got, if it still counts.
    pub(crate) fn dedup(&mut self, key: &Bytes, now: Millis) -> Option<u64> {
        match self.dedup.get(key) {
            Some(&(id, until)) if until > now => Some(id),
            Some(_) => {
                self.dedup.remove(key);
                self.dedup_bytes -= dedup_weight(key);
                None
            }
            None => None,
        }
    }

    /// Keeps a DEDUP key (replacing any it had).
    fn keep_dedup(&mut self, key: Bytes, id: u64, until: Millis) {
        let weight = dedup_weight(&key);
        if self.dedup.insert(key, (id, until)).is_none() {
            self.dedup_bytes += weight;
        }
    }

    /// Remembers a DEDUP key for `window` ms, in the log too when there
    /// is one (a retry after a broker crash is exactly when a client needs
    /// it). Expired keys are swept when the table has doubled since the
    /// last sweep, so it stays bounded by the puts of one window.
    pub(crate) fn remember(
        &mut self,
        queue: &[u8],
        key: Bytes,
        id: u64,
        now: Millis,
        window: Millis,
        store: Option<&Store>,
    ) {
        if self.dedup.len() >= 1024 && self.dedup.len().is_power_of_two() {
            self.dedup.retain(|_, &mut (_, until)| until > now);
            self.dedup_bytes = self.dedup.keys().map(|k| dedup_weight(k)).sum();
        }
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
    fn snapshot(&self, store: &Store, cell: &QueueCell, now: Millis) {
        let queue = &cell.name[..];
        store.reset(queue);
        store.settings(queue, self.explicit, self.q.config(), cell.expire());
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
        for (key, &(id, until)) in &self.dedup {
            if until > now {
                store.dedup(queue, key, id, until);
            }
        }
        store.snapshot_end(queue);
    }
}

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

/// One queue: its state behind a mutex, and the timer that lets time pass
/// for it (delays running out, leases expiring).
pub(crate) struct QueueCell {
    pub(crate) name: Bytes,
    /// The users with limits it counts toward (`--acl-file`'s max_bytes,
    /// max_queues).
    charges: Vec<crate::acl::Charge>,
    state: Mutex<QueueState>,
    timer: Notify,
    /// The deadline the timer task currently sleeps until (u64::MAX: none).
    armed: AtomicU64,
    /// Set by QDROP, so that connections caching this cell look again.
    removed: AtomicBool,
    /// When a command last named the queue (broker ms).
    last_used: AtomicU64,
    /// Dropped once unused this long, with no client waiting in it or
    /// holding its messages (ms; u64::MAX: never). QCREATE ... EXPIRE.
    expire: AtomicU64,
    /// Set while a checkpoint writes this queue's snapshot (it holds the
    /// lock for as long as a large backlog takes: see `lock`).
    snapshotting: AtomicBool,
}

/// The broker: all queues, all locks.
pub(crate) struct Broker {
    pub(crate) config: Config,
    started: Instant,
    queues: RwLock<HashMap<Bytes, Arc<QueueCell>>>,
    pub(crate) locks: Locks,
    next_client: AtomicU64,
    pub(crate) clients: AtomicUsize,
    /// Users and rights (`--acl-file`), read at start.
    pub(crate) acl: std::sync::OnceLock<Acl>,
    /// Password checks (argon2) run one at a time, off the workers.
    argon: tokio::sync::Semaphore,
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

/// What a DEDUP key weighs: its bytes and its entry, roughly.
fn dedup_weight(key: &[u8]) -> u64 {
    key.len() as u64 + 64
}

/// The longest DEDUP key a put may carry (a client's own are about 40
/// bytes): keys are kept for minutes and logged.
pub(crate) const MAX_DEDUP_KEY: usize = 256;

/// Password checks that may wait at once; beyond, AUTH answers "try
/// again" at once.
pub(crate) const MAX_PASSWORD_CHECKS: usize = 64;

/// The refusal of a put or a new queue over `--max-memory`.
pub(crate) const OVER_MEMORY: &str = "command not allowed when used memory > 'max-memory'";

/// Why a queue cannot be named.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    (1..=200).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

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
                    if !st.dropped {
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
        let (cell, _) = self.create_cell(&name, rec.config, rec.explicit, rec.expire, false);
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
            locks: Locks::default(),
            next_client: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            acl: std::sync::OnceLock::new(),
            argon: tokio::sync::Semaphore::new(1),
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

    /// The queue of that name, if it exists.
    pub(crate) fn queue(&self, name: &[u8]) -> Option<Arc<QueueCell>> {
        self.queues.read().get(name).cloned()
    }

    /// The queue of that name, created with default settings if it does not
    /// exist (as Redis does with keys and beanstalkd with tubes), for the
    /// broker's own use (a dead letter's move): never refused.
    pub(crate) fn queue_or_create(self: &Arc<Self>, name: &Bytes) -> Arc<QueueCell> {
        if let Some(cell) = self.queue(name) {
            return cell;
        }
        self.create_cell(name, engine::Config::default(), false, None, true)
            .0
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
            return Ok((cell, false));
        }
        if self.over_memory() {
            return Err(OVER_MEMORY.into());
        }
        if let Some(why) = user.and_then(crate::acl::User::over_queues) {
            return Err(why);
        }
        Ok(self.create_cell(name, config, explicit, expire, true))
    }

    /// Logs a queue's current settings.
    pub(crate) fn log_settings(&self, cell: &QueueCell, st: &QueueState) {
        if let Some(store) = &self.store {
            store.settings(&cell.name, st.explicit, st.q.config(), cell.expire());
        }
    }

    fn create_cell(
        self: &Arc<Self>,
        name: &Bytes,
        config: engine::Config,
        explicit: bool,
        expire: Option<Millis>,
        journal: bool,
    ) -> (Arc<QueueCell>, bool) {
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
                dedup: HashMap::new(),
                dedup_bytes: 0,
                explicit,
                dropped: false,
                keytype: None,
            }),
            timer: Notify::new(),
            armed: AtomicU64::new(u64::MAX),
            removed: AtomicBool::new(false),
            snapshotting: AtomicBool::new(false),
            last_used: AtomicU64::new(self.now()),
            expire: AtomicU64::new(expire.unwrap_or(u64::MAX)),
        });
        queues.insert(name.clone(), Arc::clone(&cell));
        if journal {
            // Logged under the registry lock, so that a drop and a re-create
            // of the same name reach the log in the order they happened.
            if let Some(store) = &self.store {
                store.settings(name, explicit, cell.lock().q.config(), expire);
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
        cell.removed.store(true, Ordering::Release);
        self.memory.sub(QUEUE_OVERHEAD);
        for c in &cell.charges {
            c.count_queue(false);
        }
        cell.with(self, |st, now| {
            st.q.shutdown(true, now);
            st.dropped = true;
            st.dedup.clear();
            st.dedup_bytes = 0;
            if let Some(store) = &self.store {
                store.dropped(name);
            }
        });
        cell.timer.notify_one();
        true
    }
}

/// A snapshot writes its records out every this many bytes (see
/// `QueueState::snapshot`).
const SNAPSHOT_WRITE_BYTES: usize = 1 << 20;

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

    pub(crate) fn set_expire(&self, expire: Option<Millis>) {
        self.expire
            .store(expire.unwrap_or(u64::MAX), Ordering::Relaxed);
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

/// Compacts the log whenever it grows past `checkpoint_bytes` and past
/// twice what the last compaction left, so that a large live backlog is not
/// rewritten over and over.
async fn compactor(broker: Arc<Broker>) {
    let Some(store) = broker.store.clone() else {
        return;
    };
    let mut floor = 0u64;
    let mut waiting = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bytes = store.log().bytes();
        if bytes < broker.config.checkpoint_bytes || bytes < 2 * floor {
            continue;
        }
        // A snapshot needs room for every live message: on a disk that
        // cannot hold it, compaction waits for consumers to drain (it would
        // fill the disk and stop the log, freeing nothing).
        let live = broker.memory();
        let room = store.log().room();
        if room < live + live / 4 + (1 << 20) {
            if !waiting {
                tracing::warn!(
                    room,
                    live,
                    "log compaction waits: the disk has no room for a snapshot of the live messages"
                );
                waiting = true;
            }
            continue;
        }
        waiting = false;
        match broker.checkpoint().await {
            Ok(freed) => {
                broker.compactions.fetch_add(1, Ordering::Relaxed);
                floor = store.log().bytes();
                tracing::info!(freed, kept = floor, "log compacted");
            }
            Err(e) => {
                tracing::error!(error = %e, "log compaction failed");
                return;
            }
        }
    }
}

/// Drops the queues with an idle expiry that nobody used for that long,
/// nobody waits in, and nobody holds messages of: the leftovers of
/// programs that ended without cleaning up (a private queue whose program
/// was killed). Looks once a second.
async fn idle_sweeper(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = broker.now();
        let due: Vec<Arc<QueueCell>> = broker
            .queues
            .read()
            .values()
            .filter(|c| {
                c.expire()
                    .is_some_and(|e| now.saturating_sub(c.last_used.load(Ordering::Relaxed)) >= e)
            })
            .cloned()
            .collect();
        for cell in due {
            let idle = {
                let st = cell.lock();
                let q = &st.q;
                q.waiting_getters() + q.waiting_putters() + q.waiting_joiners() == 0
                    && q.leased() + q.taken() == 0
            };
            if idle && broker.drop_queue(&cell.name) {
                tracing::info!(queue = %String::from_utf8_lossy(&cell.name), "dropped a queue nobody used within its EXPIRE");
            }
        }
    }
}

/// Twice a second: lets the log look after its disk (its reserve, and a
/// segment it could not preallocate), then re-measures free space.
async fn disk_watcher(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(store) = broker.store.clone() {
            // It may fallocate: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || store.log().tend_space()).await;
        }
        broker.check_disk();
    }
}

/// Lets time pass for one queue: sleeps until its next deadline (or until
/// an operation arms an earlier one), then ticks the engine.
async fn timer(broker: Arc<Broker>, cell: Arc<QueueCell>) {
    loop {
        let deadline = {
            let st = cell.lock();
            if st.dropped {
                return;
            }
            let d = st.q.next_deadline();
            cell.armed.store(d.unwrap_or(u64::MAX), Ordering::Release);
            d
        };
        match deadline {
            None => cell.timer.notified().await,
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(broker.instant_at(d)) => {}
                    _ = cell.timer.notified() => {}
                }
            }
        }
        cell.with(&broker, |st, now| st.q.tick(now));
    }
}
