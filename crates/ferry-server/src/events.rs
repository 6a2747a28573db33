//! Named events (EVSET, EVWAIT: multiprocessing.Event) and conditions'
//! lines of waiters (CONDWAIT, CONDNOTIFY: multiprocessing.Condition).
//!
//! An event is a flag: set wakes every waiter, and a waiter woken by a set
//! returns true even if the flag is cleared before it looks (as Python's
//! `wait()` does), which a generation count per event tells it. A
//! condition is a line of waiters, first come first served: a notify
//! marks the oldest ones notified and wakes them; each takes its
//! notification when it looks (a waiter that times out in the same moment
//! still counts as notified: the notification is not lost to nobody).
//! Both live in memory and are forgotten once they hold nothing: an
//! event not set with nobody waiting, a condition with nobody waiting.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
struct Event {
    set: bool,
    /// Sets so far: a waiter that saw another count was woken by one.
    generation: u64,
    waiters: HashMap<u64, Arc<Notify>>,
}

#[derive(Default)]
struct Condition {
    /// Waiting, oldest first.
    line: VecDeque<(u64, Arc<Notify>)>,
    /// Notified and not yet looked.
    notified: HashSet<u64>,
}

/// One event's or condition's state, for SYNCLIST and the dashboard.
pub(crate) struct EventView {
    pub(crate) name: Bytes,
    /// A condition's line (else an event).
    pub(crate) condition: bool,
    pub(crate) set: bool,
    pub(crate) waiters: usize,
}

#[derive(Default)]
struct Table {
    events: HashMap<Bytes, Event>,
    conditions: HashMap<Bytes, Condition>,
    next_ticket: u64,
}

/// The events and conditions of a broker.
#[derive(Default)]
pub(crate) struct Events {
    table: Mutex<Table>,
}

/// What a look at an event found.
pub(crate) enum EventWait {
    Set,
    /// Not set (and not waited for).
    Unset,
    /// Not set: waiting, with its ticket and the generation it saw.
    Waiting(u64, u64),
}

impl Events {
    /// Sets the event and wakes every waiter.
    pub(crate) fn set(&self, name: &Bytes) {
        let mut t = self.table.lock();
        let e = t.events.entry(name.clone()).or_default();
        if !e.set {
            e.set = true;
            e.generation += 1;
        }
        for n in e.waiters.values() {
            n.notify_one();
        }
    }

    /// Clears the event.
    pub(crate) fn clear(&self, name: &Bytes) {
        let mut t = self.table.lock();
        if let Some(e) = t.events.get_mut(name) {
            e.set = false;
            if e.waiters.is_empty() {
                t.events.remove(name);
            }
        }
    }

    pub(crate) fn is_set(&self, name: &Bytes) -> bool {
        self.table.lock().events.get(name).is_some_and(|e| e.set)
    }

    /// Looks at the flag: set, or (given `notify`) waits in the same
    /// moment, replying its ticket and the generation it saw.
    pub(crate) fn begin_wait(&self, name: &Bytes, notify: Option<&Arc<Notify>>) -> EventWait {
        let mut t = self.table.lock();
        if t.events.get(name).is_some_and(|e| e.set) {
            return EventWait::Set;
        }
        let Some(notify) = notify else {
            return EventWait::Unset;
        };
        t.next_ticket += 1;
        let ticket = t.next_ticket;
        let e = t.events.entry(name.clone()).or_default();
        e.waiters.insert(ticket, Arc::clone(notify));
        EventWait::Waiting(ticket, e.generation)
    }

    /// Whether the flag is set, or was set since a waiter saw generation
    /// `since` (it waits, so the event is kept).
    pub(crate) fn set_since(&self, name: &Bytes, since: u64) -> bool {
        let t = self.table.lock();
        t.events
            .get(name)
            .is_some_and(|e| e.set || e.generation != since)
    }

    /// Stops waiting for the event.
    pub(crate) fn leave_event(&self, name: &Bytes, ticket: u64) {
        let mut t = self.table.lock();
        if let Some(e) = t.events.get_mut(name) {
            e.waiters.remove(&ticket);
            if !e.set && e.waiters.is_empty() {
                t.events.remove(name);
            }
        }
    }

    /// Joins the condition's line: replies the ticket.
    pub(crate) fn enqueue_condition(&self, name: &Bytes, notify: &Arc<Notify>) -> u64 {
        let mut t = self.table.lock();
        t.next_ticket += 1;
        let ticket = t.next_ticket;
        t.conditions
            .entry(name.clone())
            .or_default()
            .line
            .push_back((ticket, Arc::clone(notify)));
        ticket
    }

    /// Notifies the `n` oldest waiters (`None`: all); replies how many.
    pub(crate) fn notify(&self, name: &Bytes, n: Option<u64>) -> u64 {
        let mut t = self.table.lock();
        let Some(c) = t.conditions.get_mut(name) else {
            return 0;
        };
        let mut woken = 0;
        while n.is_none_or(|n| woken < n) {
            let Some((ticket, notify)) = c.line.pop_front() else {
                break;
            };
            c.notified.insert(ticket);
            notify.notify_one();
            woken += 1;
        }
        woken
    }

    /// Whether waiter `ticket` was notified (taking the notification), and
    /// if it was not and `give_up`, takes it out of the line.
    pub(crate) fn take_notification(&self, name: &Bytes, ticket: u64, give_up: bool) -> bool {
        let mut t = self.table.lock();
        let Some(c) = t.conditions.get_mut(name) else {
            return false;
        };
        let notified = c.notified.remove(&ticket);
        if give_up && !notified {
            c.line.retain(|w| w.0 != ticket);
        }
        if c.line.is_empty() && c.notified.is_empty() {
            t.conditions.remove(name);
        }
        notified
    }

    /// Events and conditions known, and clients waiting on them, for INFO.
    /// Every event and condition known, by name.
    pub(crate) fn list(&self) -> Vec<EventView> {
        let t = self.table.lock();
        let events = t.events.iter().map(|(n, e)| EventView {
            name: n.clone(),
            condition: false,
            set: e.set,
            waiters: e.waiters.len(),
        });
        let conditions = t.conditions.iter().map(|(n, c)| EventView {
            name: n.clone(),
            condition: true,
            set: false,
            waiters: c.line.len(),
        });
        let mut v: Vec<_> = events.chain(conditions).collect();
        v.sort_by(|a, b| (a.condition, &a.name).cmp(&(b.condition, &b.name)));
        v
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize, usize) {
        let t = self.table.lock();
        (
            t.events.len(),
            t.events.values().map(|e| e.waiters.len()).sum(),
            t.conditions.len(),
            t.conditions.values().map(|c| c.line.len()).sum(),
        )
    }
}
