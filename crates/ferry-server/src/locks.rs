//! Named mutexes with fencing tokens: LOCK / UNLOCK.
//!
//! A lock is held by one connection at a time, until UNLOCK, the holder's
//! disconnect, or its TTL. Waiters queue first come, first served: a free
//! lock goes to the oldest waiter, and a newcomer never barges past one.
//! Every grant gets a new token, larger than any before it, so a resource
//! guarded by the lock can refuse writes from a holder whose TTL ran out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::Millis;
use parking_lot::Mutex;
use tokio::sync::Notify;

struct Holder {
    conn: u64,
    /// The user it is logged in as (under an ACL file): only that user, or
    /// an operator, may UNLOCK it by token — tokens are a counter, and
    /// the next one is easy to guess.
    user: Option<Arc<str>>,
    token: u64,
    expires: Option<Millis>,
}

#[derive(Default)]
struct LockState {
    holder: Option<Holder>,
    waiters: VecDeque<(u64, Arc<Notify>)>,
}

#[derive(Default)]
struct Table {
    locks: HashMap<Bytes, LockState>,
    next_token: u64,
    next_ticket: u64,
}

/// Who releases a lock.
#[derive(Clone, Copy)]
pub(crate) enum Releaser<'a> {
    /// Its holding connection, going away.
    Holder(u64),
    /// Any connection (no ACL file).
    Anyone,
    /// A connection of this user.
    User(&'a crate::acl::User),
}

/// The lock table.
#[derive(Default)]
pub(crate) struct Locks {
    table: Mutex<Table>,
}

impl LockState {
    fn expire(&mut self, now: Millis) {
        if self
            .holder
            .as_ref()
            .is_some_and(|h| h.expires.is_some_and(|e| e <= now))
        {
            self.holder = None;
        }
    }

    fn wake_front(&self) {
        if self.holder.is_none()
            && let Some((_, n)) = self.waiters.front()
        {
            n.notify_one();
        }
    }
}

impl Locks {
    /// Takes the lock if it is free and no earlier waiter is queued (or
    /// `ticket` is the first in line). `Ok(token)` on success; otherwise
    /// `Err` with when the current holder's TTL runs out, if it has one.
    pub(crate) fn try_acquire(
        &self,
        name: &Bytes,
        conn: u64,
        user: Option<&str>,
        ttl: Option<Millis>,
        ticket: Option<u64>,
        now: Millis,
    ) -> Result<u64, Option<Millis>> {
        let mut t = self.table.lock();
        let Table {
            locks, next_token, ..
        } = &mut *t;
        let lock = locks.entry(name.clone()).or_default();
        lock.expire(now);
        if let Some(h) = &lock.holder {
            return Err(h.expires);
        }
        let first = lock.waiters.front().map(|w| w.0);
        if first.is_some() && first != ticket {
            return Err(None);
        }
        if first.is_some() {
            lock.waiters.pop_front();
        }
        *next_token += 1;
        let token = *next_token;
        lock.holder = Some(Holder {
            conn,
            user: user.map(Arc::from),
            token,
            expires: ttl.map(|ms| now.saturating_add(ms)),
        });
        Ok(token)
    }

    /// Joins the queue of waiters; replies the ticket.
    pub(crate) fn enqueue(&self, name: &Bytes, notify: &Arc<Notify>) -> u64 {
        let mut t = self.table.lock();
        t.next_ticket += 1;
        let ticket = t.next_ticket;
        t.locks
            .entry(name.clone())
            .or_default()
            .waiters
            .push_back((ticket, Arc::clone(notify)));
        ticket
    }

    /// Leaves the queue of waiters (timeout, disconnect); the next in line
    /// is woken if the lock is free.
    pub(crate) fn leave(&self, name: &Bytes, ticket: u64, now: Millis) {
        let mut t = self.table.lock();
        if let Some(lock) = t.locks.get_mut(name) {
            lock.waiters.retain(|w| w.0 != ticket);
            lock.expire(now);
            lock.wake_front();
            if lock.holder.is_none() && lock.waiters.is_empty() {
                t.locks.remove(name);
            }
        }
    }

    /// Releases the lock if `token` is the current grant and `by` may
    /// release it: its holding connection, or (UNLOCK) a connection of the
    /// same user or an operator. `Ok(true)` if it did, `Ok(false)` if the
    /// token is not the grant, `Err(())` if it is, but another user's.
    pub(crate) fn release(&self, name: &Bytes, token: u64, by: Releaser<'_>) -> Result<bool, ()> {
        let mut t = self.table.lock();
        let Some(lock) = t.locks.get_mut(name) else {
            return Ok(false);
        };
        let Some(h) = lock.holder.as_ref().filter(|h| h.token == token) else {
            return Ok(false);
        };
        let held = match by {
            Releaser::Holder(conn) => conn == h.conn,
            Releaser::Anyone => true,
            Releaser::User(u) => u.operator() || h.user.as_deref() == Some(u.name.as_str()),
        };
        if !held {
            return if matches!(by, Releaser::User(_)) {
                Err(())
            } else {
                Ok(false)
            };
        }
        {
            lock.holder = None;
            lock.wake_front();
            if lock.waiters.is_empty() {
                t.locks.remove(name);
            }
        }
        Ok(true)
    }

    /// Whether `token` still holds lock `name` (its TTL, if any, not run
    /// out at `now`).
    pub(crate) fn holds(&self, name: &Bytes, token: u64, now: Millis) -> bool {
        let t = self.table.lock();
        t.locks
            .get(name)
            .and_then(|l| l.holder.as_ref())
            .is_some_and(|h| h.token == token && h.expires.is_none_or(|e| e > now))
    }

    /// Every lock held or waited for: its name, its holder's token (if
    /// held) and how many wait, by name.
    pub(crate) fn list(&self) -> Vec<(Bytes, Option<u64>, usize)> {
        let t = self.table.lock();
        let mut v: Vec<_> = t
            .locks
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    l.holder.as_ref().map(|h| h.token),
                    l.waiters.len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Locks held or waited for, and clients waiting in line, for INFO.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.table.lock();
        let waiting = t.locks.values().map(|l| l.waiters.len()).sum();
        (t.locks.len(), waiting)
    }
}
