//! Finishing work: QDONE (task_done), QNACK (give back), QTOUCH (extend a
//! lease) and QJOIN (wait until nothing is unfinished).

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::WaiterId;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Args, Blocked, CmdError, Flow, Outcome, Res, Woke, deadline, done, err, is, parse_u64,
};
use crate::broker::QueueCell;
use crate::session::Session;

pub(crate) struct Done {
    pub(super) queue: Bytes,
    ids: Vec<u64>,
}

pub(crate) struct Nack {
    pub(super) queue: Bytes,
    id: u64,
    delay: Option<u64>,
    /// UNSTARTED: the client never began it (prefetched, unused): no
    /// attempt is counted.
    unstarted: bool,
}

pub(crate) struct Touch {
    pub(super) queue: Bytes,
    id: u64,
    lease: Option<u64>,
}

pub(crate) struct Join {
    pub(super) queue: Bytes,
    until: Option<Instant>,
}

fn not_leased() -> CmdError {
    err("NOTLEASED", "message is not leased by this client")
}

fn existing(s: &mut Session, name: &Bytes) -> Result<Arc<QueueCell>, CmdError> {
    s.find(name).ok_or_else(|| err("NOQUEUE", "no such queue"))
}

/// A queue, an id, and at most one option with a value.
fn id_and_option(a: &mut Args, option: &str) -> Result<(Bytes, u64, Option<u64>), CmdError> {
    let queue = a.queue()?;
    let id = parse_u64(a.require_ref()?)?;
    let mut value = None;
    while let Some(opt) = a.next_ref() {
        if is(opt, option) {
            value = Some(a.u64_value(opt)?);
        } else {
            return Err(a.unknown(opt));
        }
    }
    Ok((queue, id, value))
}

impl Done {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let queue = a.queue()?;
        let mut ids = Vec::with_capacity(a.remaining());
        while let Some(id) = a.next_ref() {
            ids.push(parse_u64(id)?);
        }
        if ids.is_empty() {
            return Err(a.arity());
        }
        Ok(Done { queue, ids })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let holder = Some(s.holder());
        let n = match s.take_existing(&self.queue) {
            Some(cell) => {
                let now = s.now();
                let n = cell.with_at(&s.broker, now, |st, _| st.q.done(&self.ids, holder));
                s.keep_queue(cell);
                n
            }
            None => 0,
        };
        s.reply().uint(n as u64);
        done()
    }
}

impl Nack {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let queue = a.queue()?;
        let id = parse_u64(a.require_ref()?)?;
        let (mut delay, mut unstarted) = (None, false);
        while let Some(opt) = a.next_ref() {
            if is(opt, "DELAY") {
                delay = Some(a.u64_value(opt)?);
            } else if is(opt, "UNSTARTED") {
                unstarted = true;
            } else {
                return Err(a.unknown(opt));
            }
        }
        if unstarted && delay.is_some() {
            return Err(err("ERR", "QNACK takes UNSTARTED or DELAY, not both"));
        }
        Ok(Nack {
            queue,
            id,
            delay,
            unstarted,
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let holder = Some(s.holder());
        let cell = existing(s, &self.queue)?;
        if !cell.with(&s.broker, |st, now| {
            if self.unstarted {
                st.q.return_unstarted(self.id, holder, now)
            } else {
                st.q.nack(self.id, holder, self.delay, now)
            }
        }) {
            return Err(not_leased());
        }
        s.reply().simple("OK");
        done()
    }
}

impl Touch {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let (queue, id, lease) = id_and_option(a, "LEASE")?;
        Ok(Touch {
            queue,
            id,
            lease: lease.filter(|&ms| ms > 0),
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let holder = Some(s.holder());
        let cell = existing(s, &self.queue)?;
        match cell.with(&s.broker, |st, now| {
            st.q.touch(self.id, holder, self.lease, now)
                .map(|d| (d, now))
        }) {
            None => return Err(not_leased()),
            Some((Some(deadline), now)) => s.reply().uint(deadline - now),
            // A bound lease without a timeout lasts as long as the client.
            Some((None, _)) => s.reply().int(-1),
        }
        done()
    }
}

impl Join {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let queue = a.queue()?;
        let mut until = None;
        while let Some(opt) = a.next() {
            if is(&opt, "TIMEOUT") {
                until = deadline(a.u64_value(&opt)?);
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(Join { queue, until })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        // A queue that does not exist has nothing unfinished.
        let Some(cell) = s.find(&self.queue) else {
            s.reply().simple("OK");
            return done();
        };
        let notify = Arc::new(Notify::new());
        let waiter = cell.with(&s.broker, |st, _| {
            let w = st.q.wait_join();
            if let Some(w) = w {
                st.watch(w, &notify);
            }
            w
        });
        let Some(waiter) = waiter else {
            s.reply().simple("OK");
            return done();
        };
        Ok(Outcome::Wait(Blocked::Join(JoinWait {
            cell,
            waiter,
            notify,
            until: self.until,
        })))
    }
}

/// A join waiting for the unfinished count to reach 0.
pub(crate) struct JoinWait {
    cell: Arc<QueueCell>,
    waiter: WaiterId,
    pub(super) notify: Arc<Notify>,
    pub(super) until: Option<Instant>,
}

impl JoinWait {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let waiter = self.waiter;
        let joined = self.cell.with(&s.broker, |st, _| {
            let joined = st.q.poll_join(waiter);
            if joined || woke != Woke::Notified {
                st.unwatch(waiter);
                if !joined {
                    st.q.cancel_join(waiter);
                }
            }
            joined
        });
        match (joined, woke) {
            (_, Woke::Gone) => Some(Ok(Flow::Close)),
            (true, _) => {
                s.reply().simple("OK");
                Some(Ok(Flow::Continue))
            }
            (false, Woke::TimedOut | Woke::Unblocked(_)) => Some(woke.empty_handed(|| {
                s.reply().null();
                Ok(Flow::Continue)
            })),
            (false, Woke::Notified) => None,
        }
    }
}
