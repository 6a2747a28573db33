//! LOCK, UNLOCK and LOCKED: mutexes with fencing tokens (the table is
//! `crate::locks`).

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::Millis;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Args, Blocked, CmdError, Flow, Outcome, Res, Wait, Woke, deadline, done, err, is, parse_u64,
};
use crate::locks::Releaser;
use crate::session::Session;

pub(crate) struct Lock {
    pub(super) name: Bytes,
    ttl: Option<Millis>,
    wait: Wait,
}

pub(crate) struct Unlock {
    pub(super) name: Bytes,
    token: u64,
}

/// LOCKED name token: whether `token` still holds the lock — what a holder
/// asks to learn that it lost it (a TTL that ran out, a broker restart).
pub(crate) struct Locked {
    pub(super) name: Bytes,
    token: u64,
}

impl Locked {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let token = parse_u64(&a.require()?)?;
        a.end()?;
        Ok(Locked { name, token })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let now = s.broker.now();
        let held = s.broker.locks.holds(&self.name, self.token, now);
        s.reply().int(i64::from(held));
        done()
    }
}

impl Lock {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let (mut ttl, mut wait) = (None, Wait::Until(None));
        while let Some(opt) = a.next() {
            if is(&opt, "TTL") {
                ttl = Some(a.u64_value(&opt)?).filter(|&t| t > 0);
            } else if is(&opt, "TIMEOUT") {
                wait = Wait::Until(deadline(a.u64_value(&opt)?));
            } else if is(&opt, "NOWAIT") {
                wait = Wait::No;
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(Lock { name, ttl, wait })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let now = s.broker.now();
        match s
            .broker
            .locks
            .try_acquire(&self.name, s.id, user_name(s), self.ttl, None, now)
        {
            Ok(token) => granted(s, self.name, token),
            Err(_) => match self.wait {
                Wait::No => s.reply().null(),
                Wait::Until(deadline) => {
                    let notify = Arc::new(Notify::new());
                    let ticket = s.broker.locks.enqueue(&self.name, &notify);
                    return Ok(Outcome::Wait(Blocked::Lock(LockWait {
                        name: self.name,
                        ttl: self.ttl,
                        ticket,
                        notify,
                        deadline,
                        wake_at: deadline,
                    })));
                }
            },
        }
        done()
    }
}

/// The user a session is logged in as, under an ACL file.
fn user_name(s: &Session) -> Option<&str> {
    s.user.as_deref().map(|u| u.name.as_str())
}

fn granted(s: &mut Session, name: Bytes, token: u64) {
    // A lock may be released from another connection (UNLOCK takes the
    // token from anyone, and ferry.aio releases on its shared one): forget
    // the ones released so, now and then, so the list stays short.
    if s.locks.len() >= 8 && s.locks.len().is_power_of_two() {
        let (locks, now) = (&s.broker.locks, s.broker.now());
        s.locks.retain(|(n, t)| locks.holds(n, *t, now));
    }
    s.locks.push((name, token));
    s.reply().uint(token);
}

/// A LOCK waiting in line.
pub(crate) struct LockWait {
    name: Bytes,
    ttl: Option<Millis>,
    ticket: u64,
    pub(super) notify: Arc<Notify>,
    deadline: Option<Instant>,
    /// The deadline, or the holder's TTL if it comes first.
    pub(super) wake_at: Option<Instant>,
}

impl LockWait {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let locks = &s.broker.locks;
        if woke == Woke::Gone {
            locks.leave(&self.name, self.ticket, s.broker.now());
            return Some(Ok(Flow::Close));
        }
        let now = s.broker.now();
        match locks.try_acquire(
            &self.name,
            s.id,
            user_name(s),
            self.ttl,
            Some(self.ticket),
            now,
        ) {
            Ok(token) => {
                granted(s, self.name.clone(), token);
                Some(Ok(Flow::Continue))
            }
            Err(_)
                if matches!(woke, Woke::Unblocked(_))
                    || self.deadline.is_some_and(|d| Instant::now() >= d) =>
            {
                locks.leave(&self.name, self.ticket, now);
                Some(woke.empty_handed(|| {
                    s.reply().null();
                    Ok(Flow::Continue)
                }))
            }
            Err(expires) => {
                // Wake at the holder's TTL, if it comes first.
                let expires = expires.map(|e| s.broker.instant_at(e));
                self.wake_at = match (expires, self.deadline) {
                    (Some(e), Some(d)) => Some(e.min(d)),
                    (e, d) => e.or(d),
                };
                None
            }
        }
    }
}

impl Unlock {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let token = parse_u64(&a.require()?)?;
        a.end()?;
        Ok(Unlock { name, token })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let by = match s.user.as_deref() {
            Some(u) => Releaser::User(u),
            None => Releaser::Anyone,
        };
        let released = s
            .broker
            .locks
            .release(&self.name, self.token, by)
            .map_err(|()| {
                err(
                    "NOPERM",
                    format!(
                        "lock '{}' is held by another user (only that user, or an operator, may UNLOCK it)",
                        String::from_utf8_lossy(&self.name)
                    ),
                )
            })?;
        s.locks
            .retain(|(n, t)| !(n == &self.name && *t == self.token));
        s.reply().int(i64::from(released));
        done()
    }
}
