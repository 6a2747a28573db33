//! Events and conditions (the table is `crate::events`): EVSET, EVCLEAR,
//! EVISSET, EVWAIT; CONDWAIT, CONDNOTIFY.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::locks::{Kind, give_back};
use super::{Args, Blocked, CmdError, Flow, Outcome, Res, Wait, Woke, deadline, done, err, is};
use crate::events::EventWait;
use crate::session::Session;

/// EVSET name, EVCLEAR name, EVISSET name.
pub(crate) enum EventOp {
    Set(Bytes),
    Clear(Bytes),
    IsSet(Bytes),
}

impl EventOp {
    pub(super) fn parse(a: &mut Args, command: &str) -> Result<Self, CmdError> {
        let name = a.require()?;
        a.end()?;
        Ok(match command {
            "EVSET" => EventOp::Set(name),
            "EVCLEAR" => EventOp::Clear(name),
            _ => EventOp::IsSet(name),
        })
    }

    pub(super) fn name(&self) -> &[u8] {
        match self {
            EventOp::Set(n) | EventOp::Clear(n) | EventOp::IsSet(n) => n,
        }
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let events = &s.broker.events;
        let reply = match &self {
            EventOp::Set(n) => {
                events.set(n);
                true
            }
            EventOp::Clear(n) => {
                events.clear(n);
                true
            }
            EventOp::IsSet(n) => events.is_set(n),
        };
        s.reply().int(i64::from(reply));
        done()
    }
}

/// EVWAIT name [TIMEOUT ms | NOWAIT]: 1 once the event is set, 0 on
/// timeout.
pub(crate) struct EvWait {
    pub(super) name: Bytes,
    wait: Wait,
}

impl EvWait {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let wait = parse_wait(a)?;
        Ok(EvWait { name, wait })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let deadline = match self.wait {
            Wait::No => None,
            Wait::Until(d) => Some(d),
        };
        let notify = Arc::new(Notify::new());
        let begun = s
            .broker
            .events
            .begin_wait(&self.name, deadline.map(|_| &notify));
        match (begun, deadline) {
            (EventWait::Set, _) => s.reply().int(1),
            (EventWait::Waiting(ticket, generation), Some(deadline)) => {
                return Ok(Outcome::Wait(Blocked::Event(EventWaiting {
                    name: self.name,
                    ticket,
                    generation,
                    notify,
                    until: deadline,
                })));
            }
            _ => s.reply().int(0),
        }
        done()
    }
}

/// The options of a wait: TIMEOUT ms (0: forever) or NOWAIT; forever if
/// neither.
fn parse_wait(a: &mut Args) -> Result<Wait, CmdError> {
    let mut wait = Wait::Until(None);
    while let Some(opt) = a.next() {
        if is(&opt, "TIMEOUT") {
            wait = Wait::Until(deadline(a.u64_value(&opt)?));
        } else if is(&opt, "NOWAIT") {
            wait = Wait::No;
        } else {
            return Err(a.unknown(&opt));
        }
    }
    Ok(wait)
}

/// An EVWAIT waiting.
pub(crate) struct EventWaiting {
    name: Bytes,
    ticket: u64,
    generation: u64,
    pub(super) notify: Arc<Notify>,
    pub(super) until: Option<Instant>,
}

impl EventWaiting {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let events = &s.broker.events;
        if woke == Woke::Gone {
            events.leave_event(&self.name, self.ticket);
            return Some(Ok(Flow::Close));
        }
        if events.set_since(&self.name, self.generation) {
            events.leave_event(&self.name, self.ticket);
            s.reply().int(1);
            return Some(Ok(Flow::Continue));
        }
        if matches!(woke, Woke::Unblocked(_)) || self.until.is_some_and(|d| Instant::now() >= d) {
            events.leave_event(&self.name, self.ticket);
            return Some(woke.empty_handed(|| {
                s.reply().int(0);
                Ok(Flow::Continue)
            }));
        }
        None
    }
}

/// CONDWAIT cond LOCK name TOKEN t [TIMEOUT ms | NOWAIT]: releases the lock `name`
/// that `t` holds and waits in the condition's line, in one step (no
/// notify falls between); 1 once notified, 0 on timeout. The caller takes
/// the lock again itself, as Python's `Condition.wait` does.
pub(crate) struct CondWait {
    pub(super) cond: Bytes,
    pub(super) lock: Bytes,
    token: u64,
    wait: Option<Instant>,
}

impl CondWait {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let cond = a.require()?;
        let (mut lock, mut token, mut wait) = (None, None, None);
        while let Some(opt) = a.next() {
            if is(&opt, "LOCK") {
                lock = Some(a.require()?);
            } else if is(&opt, "TOKEN") {
                token = Some(a.u64_value(&opt)?);
            } else if is(&opt, "TIMEOUT") {
                wait = deadline(a.u64_value(&opt)?);
            } else if is(&opt, "NOWAIT") {
                // Gives the lock back, takes a notification already due
                // (none can be: it was not in line), and returns.
                wait = Some(Instant::now());
            } else {
                return Err(a.unknown(&opt));
            }
        }
        let (Some(lock), Some(token)) = (lock, token) else {
            return Err(err("ERR", "CONDWAIT needs LOCK name and TOKEN t"));
        };
        Ok(CondWait {
            cond,
            lock,
            token,
            wait,
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let notify = Arc::new(Notify::new());
        let ticket = s.broker.events.enqueue_condition(&self.cond, &notify);
        match give_back(s, Kind::Lock, &self.lock, self.token) {
            Ok(true) => {}
            refused => {
                s.broker.events.take_notification(&self.cond, ticket, true);
                refused?;
                return Err(err(
                    "ERR",
                    format!(
                        "cannot wait on un-acquired lock: token {} does not hold lock '{}'",
                        self.token,
                        String::from_utf8_lossy(&self.lock)
                    ),
                ));
            }
        }
        Ok(Outcome::Wait(Blocked::Cond(CondWaiting {
            cond: self.cond,
            ticket,
            notify,
            until: self.wait,
        })))
    }
}

/// A CONDWAIT waiting.
pub(crate) struct CondWaiting {
    cond: Bytes,
    ticket: u64,
    pub(super) notify: Arc<Notify>,
    pub(super) until: Option<Instant>,
}

impl CondWaiting {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let events = &s.broker.events;
        if woke == Woke::Gone {
            // A notification it took goes with it, as a thread's would.
            events.take_notification(&self.cond, self.ticket, true);
            return Some(Ok(Flow::Close));
        }
        let give_up =
            matches!(woke, Woke::Unblocked(_)) || self.until.is_some_and(|d| Instant::now() >= d);
        if events.take_notification(&self.cond, self.ticket, give_up) {
            s.reply().int(1);
            return Some(Ok(Flow::Continue));
        }
        if give_up {
            return Some(woke.empty_handed(|| {
                s.reply().int(0);
                Ok(Flow::Continue)
            }));
        }
        None
    }
}

/// CONDNOTIFY cond [COUNT n | ALL]: wakes the `n` (default 1) oldest
/// waiters, or all; replies how many.
pub(crate) struct CondNotify {
    pub(super) cond: Bytes,
    count: Option<u64>,
}

impl CondNotify {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let cond = a.require()?;
        let mut count = Some(1);
        while let Some(opt) = a.next() {
            if is(&opt, "COUNT") {
                count = Some(a.u64_value(&opt)?);
            } else if is(&opt, "ALL") {
                count = None;
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(CondNotify { cond, count })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let woken = s.broker.events.notify(&self.cond, self.count);
        s.reply().uint(woken);
        done()
    }
}
