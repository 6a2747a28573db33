//! Barriers (the table is `crate::barriers`): BARWAIT, BARPASS, BARABORT,
//! BARRESET, BARINFO.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Args, Blocked, CmdError, Flow, Outcome, Res, Wait, Woke, deadline, done, err, is};
use crate::barriers::{Arrival, Passage};
use crate::session::Session;

/// BARWAIT name PARTIES n [ACTION] [TIMEOUT ms | NOWAIT]: the waiter's
/// place in the round once it is let through; -BROKEN if the barrier is
/// or becomes broken (its timeout passing breaks it).
pub(crate) struct BarWait {
    pub(super) name: Bytes,
    parties: u64,
    action: bool,
    wait: Wait,
}

/// BARPASS name, BARRESET name, BARINFO name, BARABORT name [PARTIES n].
pub(crate) enum BarOp {
    Pass(Bytes),
    Reset(Bytes),
    Info(Bytes),
    Abort(Bytes, u64),
}

fn broken(name: &[u8]) -> CmdError {
    err(
        "BROKEN",
        format!("barrier '{}' is broken", String::from_utf8_lossy(name)),
    )
}

impl BarWait {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let name = a.require()?;
        let (mut parties, mut action, mut wait) = (None, false, Wait::Until(None));
        while let Some(opt) = a.next() {
            if is(&opt, "PARTIES") {
                parties = Some(a.u64_value(&opt)?);
            } else if is(&opt, "ACTION") {
                action = true;
            } else if is(&opt, "TIMEOUT") {
                wait = Wait::Until(deadline(a.u64_value(&opt)?));
            } else if is(&opt, "NOWAIT") {
                wait = Wait::No;
            } else {
                return Err(a.unknown(&opt));
            }
        }
        let parties = parties
            .filter(|&p| p > 0)
            .ok_or_else(|| err("ERR", "BARWAIT needs PARTIES n, at least 1"))?;
        Ok(BarWait {
            name,
            parties,
            action,
            wait,
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let notify = Arc::new(Notify::new());
        let until = match self.wait {
            Wait::No => None,
            Wait::Until(d) => Some(d),
        };
        let arrival = s.broker.barriers.arrive(
            &self.name,
            self.parties,
            self.action,
            s.id,
            until.map(|_| &notify),
        );
        match arrival {
            Arrival::Last(place) => s.reply().uint(place),
            Arrival::Waiting(ticket) => {
                return Ok(Outcome::Wait(Blocked::Barrier(BarWaiting {
                    name: self.name,
                    ticket,
                    notify,
                    until: until.flatten(),
                })));
            }
            Arrival::Broken => return Err(broken(&self.name)),
            Arrival::Parties(p) => {
                return Err(err(
                    "ERR",
                    format!(
                        "barrier '{}' exists with PARTIES {p}",
                        String::from_utf8_lossy(&self.name)
                    ),
                ));
            }
        }
        done()
    }
}

/// A BARWAIT waiting.
pub(crate) struct BarWaiting {
    name: Bytes,
    ticket: u64,
    pub(super) notify: Arc<Notify>,
    pub(super) until: Option<Instant>,
}

impl BarWaiting {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let barriers = &s.broker.barriers;
        if woke == Woke::Gone {
            // A party that left never arrives: the others are told.
            barriers.look(&self.name, self.ticket, true);
            return Some(Ok(Flow::Close));
        }
        let give_up =
            matches!(woke, Woke::Unblocked(_)) || self.until.is_some_and(|d| Instant::now() >= d);
        match barriers.look(&self.name, self.ticket, give_up)? {
            Passage::Passed(place) => {
                s.reply().uint(place);
                Some(Ok(Flow::Continue))
            }
            Passage::Broken if give_up => Some(woke.empty_handed(|| Err(broken(&self.name)))),
            Passage::Broken => Some(Err(broken(&self.name))),
        }
    }
}

impl BarOp {
    pub(super) fn parse(a: &mut Args, command: &str) -> Result<Self, CmdError> {
        let name = a.require()?;
        if command == "BARABORT" {
            let mut parties = 1;
            while let Some(opt) = a.next() {
                if is(&opt, "PARTIES") {
                    parties = a.u64_value(&opt)?.max(1);
                } else {
                    return Err(a.unknown(&opt));
                }
            }
            return Ok(BarOp::Abort(name, parties));
        }
        a.end()?;
        Ok(match command {
            "BARPASS" => BarOp::Pass(name),
            "BARRESET" => BarOp::Reset(name),
            _ => BarOp::Info(name),
        })
    }

    pub(super) fn name(&self) -> &[u8] {
        match self {
            BarOp::Pass(n) | BarOp::Reset(n) | BarOp::Info(n) | BarOp::Abort(n, _) => n,
        }
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let barriers = &s.broker.barriers;
        match &self {
            BarOp::Pass(n) => {
                let passed = barriers.pass(n);
                s.reply().int(i64::from(passed));
            }
            BarOp::Reset(n) => {
                barriers.reset(n);
                s.reply().int(1);
            }
            BarOp::Abort(n, parties) => {
                barriers.abort(n, *parties);
                s.reply().int(1);
            }
            BarOp::Info(n) => {
                let (waiting, broken) = barriers.info(n);
                let mut r = s.reply();
                r.array(2);
                r.uint(waiting);
                r.int(i64::from(broken));
            }
        }
        done()
    }
}
