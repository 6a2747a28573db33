//! QGET: leased, timed-lease, TAKE and NOACK gets from one queue or
//! several, waiting first come first served.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::{self, GetSpec, Lease, Message, WaiterId};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::put::shut_down;
use super::{Args, Blocked, CmdError, Flow, Outcome, Res, Wait, Woke, deadline, done, err, is};
use crate::broker::QueueCell;
use crate::payload::Payload;
use crate::session::{GetScratch, Session};

/// How the messages are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Leased, bound to this client (the default).
    Bound,
    /// Leased for this many ms, to anyone who finishes it by id.
    Timed(u64),
    /// Never redelivered; unfinished until QDONE.
    Take,
    /// Delivered and finished at once.
    NoAck,
}

pub(crate) struct Get {
    pub(super) first: Bytes,
    /// Queues named with OR, in order.
    pub(super) more: Vec<Bytes>,
    count: usize,
    wait: Wait,
    mode: Mode,
}

impl Get {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let first = a.queue()?;
        let mut g = Get {
            first,
            more: Vec::new(),
            count: 1,
            wait: Wait::Until(None),
            mode: Mode::Bound,
        };
        let mut modes = 0;
        while let Some(opt) = a.next_ref() {
            if is(opt, "COUNT") {
                g.count = usize::try_from(a.u64_value(opt)?)
                    .unwrap_or(usize::MAX)
                    .max(1);
            } else if is(opt, "TIMEOUT") {
                g.wait = Wait::Until(deadline(a.u64_value(opt)?));
            } else if is(opt, "NOWAIT") {
                g.wait = Wait::No;
            } else if is(opt, "OR") {
                g.more.push(a.queue()?);
            } else if is(opt, "LEASE") {
                let ms = a.u64_value(opt)?;
                if ms == 0 {
                    return Err(err("ERR", "LEASE must be a positive number of ms"));
                }
                g.mode = Mode::Timed(ms);
                modes += 1;
            } else if is(opt, "TAKE") {
                g.mode = Mode::Take;
                modes += 1;
            } else if is(opt, "NOACK") {
                g.mode = Mode::NoAck;
                modes += 1;
            } else {
                return Err(a.unknown(opt));
            }
        }
        if modes > 1 {
            return Err(err("ERR", "LEASE, TAKE and NOACK exclude each other"));
        }
        Ok(g)
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let holder = s.holder();
        let spec: GetSpec<Payload> = match self.mode {
            Mode::Bound => GetSpec::lease(Lease::Bound(holder)),
            Mode::Timed(ms) => GetSpec::lease(Lease::Timed(ms)),
            Mode::Take => GetSpec::Take {
                holder: Some(holder),
            },
            Mode::NoAck => GetSpec::NoAck,
        };
        // What this client then holds, released when it goes.
        let holds = matches!(self.mode, Mode::Bound | Mode::Take);
        let count = self.count;
        let mut scratch = std::mem::take(&mut s.scratch);
        scratch.clear();
        let GetScratch {
            cells,
            open,
            got,
            buf,
        } = &mut scratch;
        // The first queue is the session's current one, taken out of it
        // and given back after: no reference count is touched (a shared
        // count is a cache line two cores fight over).
        cells.push(s.take_queue_to_get(&self.first)?);
        for n in &self.more {
            let cell = s.take_queue_to_get(n)?;
            s.keep_queue(Arc::clone(&cell));
            cells.push(cell);
        }
        // First, whatever is ready now, queue by queue in the order named.
        for (i, cell) in cells.iter().enumerate() {
            let want = count - got.len();
            if want == 0 {
                open.push(i);
                continue;
            }
            let now = s.now();
            let ready = cell.with_at(&s.broker, now, |st, now| {
                st.q.get_many(spec, want, now, buf)
            });
            // A queue shut down and drained is left out of the wait.
            if ready.is_ok() {
                open.push(i);
            }
            if !buf.is_empty() {
                if holds {
                    s.hold(cell);
                }
                got.extend(buf.drain(..).map(|m| (i, m)));
            }
        }
        let result = if !got.is_empty() {
            entries(
                s,
                got.len(),
                got.iter().map(|(i, m)| (&cells[*i].name[..], m)),
            );
            done()
        } else if open.is_empty() {
            Err(shut_down())
        } else if let Wait::Until(until) = self.wait {
            let notify = Arc::new(Notify::new());
            let waiting = open
                .drain(..)
                .map(|i| Arc::clone(&cells[i]))
                .map(|cell| {
                    let w = cell.with(&s.broker, |st, now| {
                        let w = st.q.wait_get(spec, count, now);
                        st.watch(w, &notify);
                        w
                    });
                    (cell, w)
                })
                .collect();
            Ok(Outcome::Wait(Blocked::Get(GetWait {
                waiting,
                holds,
                notify,
                until,
            })))
        } else {
            s.reply().null_array();
            done()
        };
        got.clear();
        let mut cells = std::mem::take(cells);
        if !cells.is_empty() {
            s.keep_queue(cells.swap_remove(0));
        }
        scratch.cells = cells;
        scratch.clear();
        s.scratch = scratch;
        result
    }
}

/// Writes `n` messages as entries: `[queue, id, payload, attempts]` each.
pub(super) fn entries<'a>(
    s: &mut Session,
    n: usize,
    entries: impl Iterator<Item = (&'a [u8], &'a Message<Payload>)>,
) {
    let mut r = s.reply();
    r.array(n);
    for (queue, m) in entries {
        r.array(4);
        r.bulk(queue);
        r.uint(m.id);
        r.bulk(&m.item.data);
        r.uint(u64::from(m.attempts));
    }
}

/// A get waiting in every queue it named at once; the first to hand over
/// wins and the others give back anything they reserved.
pub(crate) struct GetWait {
    waiting: Vec<(Arc<QueueCell>, WaiterId)>,
    holds: bool,
    pub(super) notify: Arc<Notify>,
    pub(super) until: Option<Instant>,
}

impl GetWait {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let mut found = None;
        if woke == Woke::Notified {
            let mut i = 0;
            while i < self.waiting.len() {
                let (cell, w) = &self.waiting[i];
                let w = *w;
                let r = cell.with(&s.broker, |st, now| {
                    let r = st.q.poll_get(w, now);
                    if r.is_some() {
                        st.unwatch(w);
                    }
                    r
                });
                match r {
                    None => i += 1,
                    Some(Ok(msgs)) => {
                        let (cell, _) = self.waiting.swap_remove(i);
                        found = Some((cell, msgs));
                        break;
                    }
                    Some(Err(engine::ShutDown)) => {
                        self.waiting.swap_remove(i);
                    }
                }
            }
            if found.is_none() && !self.waiting.is_empty() {
                return None;
            }
        }
        for (cell, w) in self.waiting.drain(..) {
            cell.with(&s.broker, |st, _| {
                st.unwatch(w);
                st.q.cancel_get(w);
            });
        }
        Some(match (woke, found) {
            (Woke::Gone, _) => Ok(Flow::Close),
            (_, Some((cell, msgs))) => {
                if self.holds {
                    s.hold(&cell);
                }
                entries(s, msgs.len(), msgs.iter().map(|m| (&cell.name[..], m)));
                Ok(Flow::Continue)
            }
            (Woke::TimedOut | Woke::Unblocked(_), None) => woke.empty_handed(|| {
                s.reply().null_array();
                Ok(Flow::Continue)
            }),
            // Every queue was shut down while waiting.
            (Woke::Notified, None) => Err(shut_down()),
        })
    }
}
