//! Mutexes and semaphores with fencing tokens (the tables are
//! `crate::locks`): LOCK, UNLOCK, LOCKED; SEMACQUIRE, SEMRELEASE,
//! SEMHELD, SEMVALUE.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::Millis;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Args, Blocked, CmdError, Flow, Outcome, Res, Wait, Woke, deadline, done, err, is, parse_u64,
};
use crate::locks::{Permits, PostRefused, Refused, Releaser};
use crate::session::Session;

/// Which table a command works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Lock,
    Semaphore,
}

impl Kind {
    fn table(self, s: &Session) -> &Permits {
        match self {
            Kind::Lock => &s.broker.locks,
            Kind::Semaphore => &s.broker.semaphores,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Semaphore => "semaphore",
        }
    }
}

/// LOCK name [TTL ms] [TIMEOUT ms | NOWAIT], and SEMACQUIRE name [VALUE n]
/// with the same options: a permit, and its token.
pub(crate) struct Acquire {
    kind: Kind,
    pub(super) name: Bytes,
    value: u64,
    ttl: Option<Millis>,
    wait: Wait,
}

/// UNLOCK name token.
pub(crate) struct Unlock {
    pub(super) name: Bytes,
    token: u64,
}

/// LOCKED name token, SEMHELD name token: whether `token` still holds
/// the lock (the permit) — what a holder asks to learn that it lost it (a
/// TTL that ran out, a broker restart).
pub(crate) struct Held {
    kind: Kind,
    pub(super) name: Bytes,
    token: u64,
}

/// SEMRELEASE name [VALUE n] [TOKEN t] [BOUNDED]: gives back the permit
/// `t` holds, or (without a token) adds one.
pub(crate) struct SemRelease {
    pub(super) name: Bytes,
    value: u64,
    token: Option<u64>,
    bounded: bool,
}

/// SEMVALUE name [VALUE n]: the free permits.
pub(crate) struct SemValue {
    pub(super) name: Bytes,
    value: u64,
}

/// A semaphore's value: at most i64::MAX, so that every reply holds it.
fn parse_value(a: &mut Args, opt: &[u8]) -> Result<u64, CmdError> {
    let v = a.u64_value(opt)?;
    if v > i64::MAX as u64 {
        return Err(err("ERR", "VALUE is at most 9223372036854775807"));
    }
    Ok(v)
}

fn wrong_value(kind: Kind, name: &[u8], value: u64) -> CmdError {
    err(
        "ERR",
        format!(
            "{} '{}' exists with VALUE {value}",
            kind.word(),
            String::from_utf8_lossy(name)
        ),
    )
}

impl Acquire {
    pub(super) fn parse(a: &mut Args, kind: Kind) -> Result<Self, CmdError> {
        let name = a.require()?;
        let (mut value, mut ttl, mut wait) = (1, None, Wait::Until(None));
        while let Some(opt) = a.next() {
            if is(&opt, "TTL") {
                ttl = Some(a.u64_value(&opt)?).filter(|&t| t > 0);
            } else if is(&opt, "TIMEOUT") {
                wait = Wait::Until(deadline(a.u64_value(&opt)?));
            } else if is(&opt, "NOWAIT") {
                wait = Wait::No;
            } else if kind == Kind::Semaphore && is(&opt, "VALUE") {
                value = parse_value(a, &opt)?;
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(Acquire {
            kind,
            name,
            value,
            ttl,
            wait,
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let now = s.broker.now();
        let tried = self.kind.table(s).try_acquire(
            &self.name,
            self.value,
            s.id,
            user_name(s),
            self.ttl,
            None,
            now,
        );
        match tried {
            Ok(token) => granted(s, self.kind, self.name, token),
            Err(Refused::Value(v)) => return Err(wrong_value(self.kind, &self.name, v)),
            Err(Refused::Busy(_)) => match self.wait {
                Wait::No => s.reply().null(),
                Wait::Until(deadline) => {
                    let notify = Arc::new(Notify::new());
                    let ticket = self.kind.table(s).enqueue(&self.name, self.value, &notify);
                    return Ok(Outcome::Wait(Blocked::Lock(AcquireWait {
                        kind: self.kind,
                        name: self.name,
                        value: self.value,
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

/// What this connection holds of a table: released when it goes away.
fn held(s: &mut Session, kind: Kind) -> &mut Vec<(Bytes, u64)> {
    match kind {
        Kind::Lock => &mut s.locks,
        Kind::Semaphore => &mut s.semaphores,
    }
}

fn granted(s: &mut Session, kind: Kind, name: Bytes, token: u64) {
    // A permit may be released from another connection (by its token from
    // anyone, and ferry.aio releases on its shared one): forget the ones
    // released so, now and then, so the list stays short.
    let now = s.broker.now();
    let mut list = std::mem::take(held(s, kind));
    if list.len() >= 8 && list.len().is_power_of_two() {
        list.retain(|(n, t)| kind.table(s).holds(n, *t, now));
    }
    list.push((name, token));
    *held(s, kind) = list;
    s.reply().uint(token);
}

/// A LOCK or SEMACQUIRE waiting in line.
pub(crate) struct AcquireWait {
    kind: Kind,
    name: Bytes,
    value: u64,
    ttl: Option<Millis>,
    ticket: u64,
    pub(super) notify: Arc<Notify>,
    deadline: Option<Instant>,
    /// The deadline, or the earliest holder's TTL if it comes first.
    pub(super) wake_at: Option<Instant>,
}

impl AcquireWait {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        if woke == Woke::Gone {
            self.kind
                .table(s)
                .leave(&self.name, self.ticket, s.broker.now());
            return Some(Ok(Flow::Close));
        }
        let now = s.broker.now();
        match self.kind.table(s).try_acquire(
            &self.name,
            self.value,
            s.id,
            user_name(s),
            self.ttl,
            Some(self.ticket),
            now,
        ) {
            Ok(token) => {
                granted(s, self.kind, self.name.clone(), token);
                Some(Ok(Flow::Continue))
            }
            Err(Refused::Value(v)) => {
                self.kind.table(s).leave(&self.name, self.ticket, now);
                Some(Err(wrong_value(self.kind, &self.name, v)))
            }
            Err(_)
                if matches!(woke, Woke::Unblocked(_))
                    || self.deadline.is_some_and(|d| Instant::now() >= d) =>
            {
                self.kind.table(s).leave(&self.name, self.ticket, now);
                Some(woke.empty_handed(|| {
                    s.reply().null();
                    Ok(Flow::Continue)
                }))
            }
            Err(Refused::Busy(expires)) => {
                // Wake at the earliest holder's TTL, if it comes first.
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

/// Gives back the permit `token` holds (UNLOCK, SEMRELEASE TOKEN): under
/// an ACL file only its user's connections, or an operator's, may.
fn release_by_token(s: &mut Session, kind: Kind, name: &Bytes, token: u64) -> Res {
    let released = give_back(s, kind, name, token)?;
    s.reply().int(i64::from(released));
    done()
}

/// Gives back the permit `token` holds, if this connection's user may:
/// whether it held one.
pub(super) fn give_back(
    s: &mut Session,
    kind: Kind,
    name: &Bytes,
    token: u64,
) -> Result<bool, CmdError> {
    let by = match s.user.as_deref() {
        Some(u) => Releaser::User(u),
        None => Releaser::Anyone,
    };
    let released = kind.table(s).release(name, token, by).map_err(|()| {
        err(
            "NOPERM",
            format!(
                "{} '{}' is held by another user (only that user, or an operator, may release it)",
                kind.word(),
                String::from_utf8_lossy(name)
            ),
        )
    })?;
    held(s, kind).retain(|(n, t)| !(n == name && *t == token));
    Ok(released)
}

impl Unlock {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let token = parse_u64(&a.require()?)?;
        a.end()?;
        Ok(Unlock { name, token })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        release_by_token(s, Kind::Lock, &self.name, self.token)
    }
}

impl Held {
    pub(super) fn parse(a: &mut Args, kind: Kind) -> Result<Self, CmdError> {
        let name = a.require()?;
        let token = parse_u64(&a.require()?)?;
        a.end()?;
        Ok(Held { kind, name, token })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let now = s.broker.now();
        let held = self.kind.table(s).holds(&self.name, self.token, now);
        s.reply().int(i64::from(held));
        done()
    }
}

impl SemRelease {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let (mut value, mut token, mut bounded) = (1, None, false);
        while let Some(opt) = a.next() {
            if is(&opt, "VALUE") {
                value = parse_value(a, &opt)?;
            } else if is(&opt, "TOKEN") {
                token = Some(a.u64_value(&opt)?);
            } else if is(&opt, "BOUNDED") {
                bounded = true;
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(SemRelease {
            name,
            value,
            token,
            bounded,
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        if let Some(token) = self.token {
            return release_by_token(s, Kind::Semaphore, &self.name, token);
        }
        let now = s.broker.now();
        match s
            .broker
            .semaphores
            .post(&self.name, self.value, self.bounded, now)
        {
            Ok(()) => s.reply().int(1),
            Err(PostRefused::Value(v)) => {
                return Err(wrong_value(Kind::Semaphore, &self.name, v));
            }
            Err(PostRefused::OverReleased) => {
                return Err(err(
                    "OVERRELEASED",
                    format!(
                        "bounded semaphore '{}' released too many times",
                        String::from_utf8_lossy(&self.name)
                    ),
                ));
            }
        }
        done()
    }
}

impl SemValue {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let mut value = 1;
        while let Some(opt) = a.next() {
            if is(&opt, "VALUE") {
                value = parse_value(a, &opt)?;
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(SemValue { name, value })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let now = s.broker.now();
        match s.broker.semaphores.free(&self.name, self.value, now) {
            Ok(free) => s.reply().uint(free),
            Err(v) => return Err(wrong_value(Kind::Semaphore, &self.name, v)),
        }
        done()
    }
}
