//! Who is connected, for `/api/clients`: one entry per connection, which
//! the connection keeps current (once per batch of requests, not per
//! command) and the admin port reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytes::Bytes;
use ferry_core::engine::Millis;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

/// One connection, as others may see it.
pub(crate) struct Client {
    pub(crate) id: u64,
    addr: String,
    /// When it connected (broker ms).
    since: Millis,
    pub(crate) name: Mutex<Option<Bytes>>,
    /// When it last sent a request (broker ms).
    last: AtomicU64,
    commands: AtomicU64,
    /// [`MEMBER`], [`STRANGER`] (not yet authenticated, while a password
    /// is required: a newcomer may take its place when the broker is
    /// full) or [`EVICTED`] (told to leave to make that room).
    standing: AtomicU8,
    /// Wakes it when it is evicted.
    pub(crate) evict: Notify,
}

const MEMBER: u8 = 0;
const STRANGER: u8 = 1;
const EVICTED: u8 = 2;

impl Client {
    /// It authenticated: it is no stranger any more. False if it was
    /// told to leave first (its place is taken).
    pub(crate) fn authenticated(&self) -> bool {
        match self
            .standing
            .compare_exchange(STRANGER, MEMBER, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(MEMBER) => true,
            Err(_) => false,
        }
    }

    /// It sent requests: `commands` in all, the last at `now`.
    pub(crate) fn active(&self, commands: u64, now: Millis) {
        self.commands.store(commands, Ordering::Relaxed);
        self.last.store(now, Ordering::Relaxed);
    }
}

/// A connection as `/api/clients` shows it.
#[derive(Serialize)]
pub(crate) struct ClientView {
    id: u64,
    addr: String,
    name: Option<String>,
    age_seconds: u64,
    idle_seconds: u64,
    commands: u64,
    /// Waiting in a blocking command (a get, put, join or lock).
    blocked: bool,
}

/// Every connection, by id.
#[derive(Default)]
pub(crate) struct Clients(Mutex<HashMap<u64, Arc<Client>>>);

impl Clients {
    pub(crate) fn register(
        &self,
        id: u64,
        addr: String,
        now: Millis,
        stranger: bool,
    ) -> Arc<Client> {
        let c = Arc::new(Client {
            id,
            addr,
            since: now,
            name: Mutex::new(None),
            last: AtomicU64::new(now),
            commands: AtomicU64::new(0),
            standing: AtomicU8::new(if stranger { STRANGER } else { MEMBER }),
            evict: Notify::new(),
        });
        self.0.lock().insert(id, Arc::clone(&c));
        c
    }

    /// Tells the oldest connection that has not authenticated to leave;
    /// false if there is none.
    pub(crate) fn evict_oldest_stranger(&self) -> bool {
        let all = self.0.lock();
        // The oldest first; one that authenticates meanwhile is passed by.
        // (One pass over the connections per newcomer to a full broker.)
        loop {
            let Some(c) = all
                .values()
                .filter(|c| c.standing.load(Ordering::Acquire) == STRANGER)
                .min_by_key(|c| c.id)
            else {
                return false;
            };
            // Claimed here, or by its own AUTH: never both.
            if c.standing
                .compare_exchange(STRANGER, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                c.evict.notify_one();
                return true;
            }
        }
    }

    pub(crate) fn forget(&self, id: u64) {
        self.0.lock().remove(&id);
    }

    /// Every connection as it is now, oldest first; `blocked` tells which
    /// wait in a command.
    pub(crate) fn views(&self, now: Millis, blocked: impl Fn(u64) -> bool) -> Vec<ClientView> {
        let all: Vec<Arc<Client>> = self.0.lock().values().cloned().collect();
        let mut views: Vec<ClientView> = all
            .iter()
            .map(|c| ClientView {
                id: c.id,
                addr: c.addr.clone(),
                name: c
                    .name
                    .lock()
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned()),
                age_seconds: now.saturating_sub(c.since) / 1000,
                idle_seconds: now.saturating_sub(c.last.load(Ordering::Relaxed)) / 1000,
                commands: c.commands.load(Ordering::Relaxed),
                blocked: blocked(c.id),
            })
            .collect();
        views.sort_unstable_by_key(|v| v.id);
        views
    }
}

/// TLS handshakes under way: each can be cut short, oldest first, to make
/// room for a newcomer.
#[derive(Default)]
pub(crate) struct Handshakes {
    pending: Mutex<std::collections::VecDeque<(u64, Arc<Notify>)>>,
    next: AtomicU64,
}

impl Handshakes {
    /// A handshake begins: its id, and what cuts it short. When `max` are
    /// under way already, the oldest is told to stop.
    pub(crate) fn begin(&self, max: usize) -> (u64, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = Arc::new(Notify::new());
        let mut pending = self.pending.lock();
        if pending.len() >= max.max(1)
            && let Some((_, oldest)) = pending.pop_front()
        {
            oldest.notify_one();
        }
        pending.push_back((id, Arc::clone(&cut)));
        (id, cut)
    }

    /// The handshake `id` ended (done, failed or cut short).
    pub(crate) fn end(&self, id: u64) {
        self.pending.lock().retain(|(i, _)| *i != id);
    }
}
