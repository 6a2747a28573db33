//! Named mutexes (LOCK) and counting semaphores (SEMACQUIRE), with
//! fencing tokens: one table of permits for each.
//!
//! A semaphore is made with a value, its number of permits; a lock is a
//! semaphore of one permit. A grant takes a permit and gives its holder a
//! new token, larger than any before it, so a resource guarded by the
//! permit can refuse writes from a holder whose TTL ran out. The holder
//! gives the permit back by its token (UNLOCK, SEMRELEASE TOKEN); a
//! semaphore may also be released without one (multiprocessing's
//! `release()` from any process), which adds a permit — above the value it
//! was made with too, unless the semaphore is bounded (then, as Python's,
//! not past it).
//!
//! A release without a token when the free and held permits already make
//! the value retires the oldest holder: its permit counts as consumed (a
//! producer's acquire that a consumer's release answers, a signal taken),
//! so holders never outnumber the value and a semaphore used as a signal
//! or a bounded buffer holds no growing list. A token the table no longer
//! holds (retired, or lost with its connection) gives a permit back only
//! as far as the value.
//!
//! A holder that disconnects, or whose TTL runs out, gives its permit back
//! only as far as the value the semaphore was made with: a semaphore used
//! as a resource cap recovers its permits, one used as a signal (made with
//! 0, released by one process, acquired by another) does not hand the
//! consumed signal out again.
//!
//! Tokens start at the wall clock in microseconds, so that they keep
//! growing across a restart of the broker.
//!
//! Waiters queue first come, first served: a free permit goes to the
//! oldest waiter, and a newcomer never barges past one. A name is
//! forgotten once nobody holds or waits and its free permits equal its
//! value: it is then as a newcomer would make it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::Millis;
use parking_lot::Mutex;
use tokio::sync::Notify;

struct Holder {
    conn: u64,
    /// The user it is logged in as (under an ACL file): only that user, or
    /// an operator, may release it by token — tokens are a counter, and
    /// the next one is easy to guess.
    user: Option<Arc<str>>,
    expires: Option<Millis>,
}

struct Entry {
    /// The permits it was made with.
    value: u64,
    free: u64,
    /// Holders by token.
    holders: BTreeMap<u64, Holder>,
    waiters: VecDeque<(u64, Arc<Notify>)>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<Bytes, Entry>,
    next_token: u64,
    next_ticket: u64,
}

/// Who releases a permit by its token.
#[derive(Clone, Copy)]
pub(crate) enum Releaser<'a> {
    /// Its holding connection, going away.
    Holder(u64),
    /// Any connection (no ACL file).
    Anyone,
    /// A connection of this user.
    User(&'a crate::acl::User),
}

/// Why a permit was not granted.
#[derive(Debug, PartialEq)]
pub(crate) enum Refused {
    /// None is free (or earlier waiters come first); the earliest
    /// holder's TTL runs out then, if any has one.
    Busy(Option<Millis>),
    /// The name exists with another value.
    Value(u64),
}

/// Why a release without a token was refused.
#[derive(Debug, PartialEq)]
pub(crate) enum PostRefused {
    /// The name exists with another value.
    Value(u64),
    /// A bounded semaphore would exceed its value.
    OverReleased,
}

/// One name's state, for `/api` and `ferry top`.
pub(crate) struct PermitView {
    pub(crate) name: Bytes,
    pub(crate) value: u64,
    pub(crate) free: u64,
    /// Tokens held, oldest first.
    pub(crate) holders: Vec<u64>,
    pub(crate) waiters: usize,
}

/// A table of permits: the broker has one for locks, one for semaphores.
pub(crate) struct Permits {
    table: Mutex<Table>,
}

impl Entry {
    fn new(value: u64) -> Entry {
        Entry {
            value,
            free: value,
            holders: BTreeMap::new(),
            waiters: VecDeque::new(),
        }
    }

    /// As a newcomer would make it: nothing to remember.
    fn fresh(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.free == self.value
    }

    /// A holder gone without giving its permit back: the permit returns
    /// as far as the value it was made with.
    fn lose(&mut self, token: u64) {
        if self.holders.remove(&token).is_some()
            && self.free.saturating_add(self.holders.len() as u64) < self.value
        {
            self.free += 1;
        }
    }

    fn expire(&mut self, now: Millis) {
        let expired: Vec<u64> = self
            .holders
            .iter()
            .filter(|(_, h)| h.expires.is_some_and(|e| e <= now))
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            self.lose(token);
        }
    }

    fn earliest_expiry(&self) -> Option<Millis> {
        self.holders.values().filter_map(|h| h.expires).min()
    }

    fn wake_front(&self) {
        if self.free > 0 {
            self.nudge_front();
        }
    }

    /// Wakes the first in line to look again (a permit, or a new holder's
    /// TTL to wake at).
    fn nudge_front(&self) {
        if let Some((_, n)) = self.waiters.front() {
            n.notify_one();
        }
    }

    /// Free and held permits together.
    fn total(&self) -> u64 {
        self.free.saturating_add(self.holders.len() as u64)
    }
}

impl Table {
    /// Forgets `name` if it is as a newcomer would make it.
    fn tidy(&mut self, name: &[u8]) {
        if self.entries.get(name).is_some_and(Entry::fresh) {
            self.entries.remove(name);
        }
    }
}

impl Permits {
    /// An empty table whose first token is above every token a broker
    /// on this machine granted before: the wall clock in microseconds
    /// (the table lives in memory; a restart must not hand out a token
    /// that an old holder's fenced resource has already seen).
    pub(crate) fn new() -> Permits {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1));
        Permits {
            table: Mutex::new(Table {
                next_token: micros,
                ..Table::default()
            }),
        }
    }

    /// Takes a permit of `name` (made with `value` if new) if one is free
    /// and no earlier waiter is queued (or `ticket` is the first in line).
    /// Replies the grant's token.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn try_acquire(
        &self,
        name: &Bytes,
        value: u64,
        conn: u64,
        user: Option<&str>,
        ttl: Option<Millis>,
        ticket: Option<u64>,
        now: Millis,
    ) -> Result<u64, Refused> {
        let mut t = self.table.lock();
        let granted = {
            let Table {
                entries,
                next_token,
                ..
            } = &mut *t;
            let e = entries
                .entry(name.clone())
                .or_insert_with(|| Entry::new(value));
            if e.value != value {
                return Err(Refused::Value(e.value));
            }
            e.expire(now);
            let first = e.waiters.front().map(|w| w.0);
            if e.free == 0 || (first.is_some() && first != ticket) {
                // A permit a TTL freed goes to the first in line.
                e.wake_front();
                Err(Refused::Busy(e.earliest_expiry()))
            } else {
                if first.is_some() {
                    e.waiters.pop_front();
                }
                e.free -= 1;
                *next_token += 1;
                e.holders.insert(
                    *next_token,
                    Holder {
                        conn,
                        user: user.map(Arc::from),
                        expires: ttl.map(|ms| now.saturating_add(ms)),
                    },
                );
                // The next in line looks again: another permit may be free,
                // or this grant's TTL is when to look next.
                e.nudge_front();
                Ok(*next_token)
            }
        };
        t.tidy(name);
        granted
    }

    /// Joins the queue of waiters; replies the ticket.
    pub(crate) fn enqueue(&self, name: &Bytes, value: u64, notify: &Arc<Notify>) -> u64 {
        let mut t = self.table.lock();
        t.next_ticket += 1;
        let ticket = t.next_ticket;
        t.entries
            .entry(name.clone())
            .or_insert_with(|| Entry::new(value))
            .waiters
            .push_back((ticket, Arc::clone(notify)));
        ticket
    }

    /// Leaves the queue of waiters (timeout, disconnect); the next in line
    /// is woken if a permit is free.
    pub(crate) fn leave(&self, name: &Bytes, ticket: u64, now: Millis) {
        let mut t = self.table.lock();
        if let Some(e) = t.entries.get_mut(name) {
            e.waiters.retain(|w| w.0 != ticket);
            e.expire(now);
            e.wake_front();
        }
        t.tidy(name);
    }

    /// Gives back the permit `token` holds if `by` may: its holding
    /// connection (which gives it back only as far as the value: it is
    /// gone, not releasing), or a connection of the same user or an
    /// operator. `Ok(true)` if it did, `Ok(false)` if the token holds
    /// nothing, `Err(())` if it does, but another user's.
    pub(crate) fn release(&self, name: &Bytes, token: u64, by: Releaser<'_>) -> Result<bool, ()> {
        let mut t = self.table.lock();
        let Some(e) = t.entries.get_mut(name) else {
            return Ok(false);
        };
        let Some(h) = e.holders.get(&token) else {
            // Retired or lost with its connection: its permit comes back
            // only as far as the value (a lost one's came back already).
            if !matches!(by, Releaser::Holder(_)) && e.total() < e.value {
                e.free += 1;
                e.wake_front();
            }
            t.tidy(name);
            return Ok(false);
        };
        let allowed = match by {
            Releaser::Holder(conn) => conn == h.conn,
            Releaser::Anyone => true,
            Releaser::User(u) => u.operator() || h.user.as_deref() == Some(u.name.as_str()),
        };
        if !allowed {
            return if matches!(by, Releaser::User(_)) {
                Err(())
            } else {
                Ok(false)
            };
        }
        if matches!(by, Releaser::Holder(_)) {
            e.lose(token);
        } else {
            e.holders.remove(&token);
            e.free += 1;
        }
        e.wake_front();
        t.tidy(name);
        Ok(true)
    }

    /// Adds a permit to `name` (made with `value` if new): a release
    /// without a token. A `bounded` semaphore refuses when its free
    /// permits already make its value, as Python's does.
    pub(crate) fn post(
        &self,
        name: &Bytes,
        value: u64,
        bounded: bool,
        now: Millis,
    ) -> Result<(), PostRefused> {
        let mut t = self.table.lock();
        let e = t
            .entries
            .entry(name.clone())
            .or_insert_with(|| Entry::new(value));
        let result = if e.value != value {
            Err(PostRefused::Value(e.value))
        } else {
            e.expire(now);
            if bounded && e.free >= e.value {
                Err(PostRefused::OverReleased)
            } else {
                if e.total() >= e.value
                    && let Some(oldest) = e.holders.keys().next().copied()
                {
                    // Its permit was consumed: this release answers it.
                    e.holders.remove(&oldest);
                }
                e.free = e.free.saturating_add(1);
                e.wake_front();
                Ok(())
            }
        };
        t.tidy(name);
        result
    }

    /// The free permits of `name` (`value` if it is not known); `Err`
    /// with its value if it exists with another.
    pub(crate) fn free(&self, name: &Bytes, value: u64, now: Millis) -> Result<u64, u64> {
        let mut t = self.table.lock();
        let free = match t.entries.get_mut(name) {
            None => Ok(value),
            Some(e) if e.value != value => Err(e.value),
            Some(e) => {
                e.expire(now);
                e.wake_front();
                Ok(e.free)
            }
        };
        t.tidy(name);
        free
    }

    /// Whether `token` still holds a permit of `name` (its TTL, if any,
    /// not run out at `now`).
    pub(crate) fn holds(&self, name: &Bytes, token: u64, now: Millis) -> bool {
        let t = self.table.lock();
        t.entries
            .get(name)
            .and_then(|e| e.holders.get(&token))
            .is_some_and(|h| h.expires.is_none_or(|e| e > now))
    }

    /// Every name held, waited for or released above its value, by name.
    pub(crate) fn list(&self) -> Vec<PermitView> {
        let t = self.table.lock();
        let mut v: Vec<_> = t
            .entries
            .iter()
            .map(|(n, e)| PermitView {
                name: n.clone(),
                value: e.value,
                free: e.free,
                holders: e.holders.keys().copied().collect(),
                waiters: e.waiters.len(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Names known, and clients waiting in line, for INFO.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.table.lock();
        let waiting = t.entries.values().map(|e| e.waiters.len()).sum();
        (t.entries.len(), waiting)
    }
}
