//! QPUT and QPUTMANY: bounded puts, waiting for room first come first
//! served.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::{Batch, PutError, WaiterId};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Args, Blocked, CmdError, Flow, Outcome, Res, Wait, Woke, deadline, done, err, is, parse_i64,
};
use crate::broker::QueueCell;
use crate::payload::{DEFAULT_KEY, Payload, priority_key};
use crate::session::Session;
use crate::store::MAX_KEY;

/// Put options shared by QPUT and QPUTMANY.
struct PutOpts {
    key: Bytes,
    /// The type of the key, for clients whose keys are typed (a Python
    /// PriorityQueue): puts of another type than the queue holds are
    /// refused.
    keytype: Option<Bytes>,
    delay: Option<u64>,
    wait: Wait,
}

impl Default for PutOpts {
    fn default() -> Self {
        PutOpts {
            key: Bytes::from_static(DEFAULT_KEY),
            keytype: None,
            delay: None,
            wait: Wait::Until(None),
        }
    }
}

impl PutOpts {
    /// Takes `opt` (and its value) if it is a put option; false if not.
    fn parse(&mut self, opt: &[u8], a: &mut Args) -> Result<bool, CmdError> {
        if is(opt, "PRIORITY") {
            self.key = priority_key(parse_i64(a.value_ref(opt)?)?);
        } else if is(opt, "PRIOKEY") {
            self.key = a.value(opt)?;
            if self.key.len() > MAX_KEY {
                return Err(err(
                    "ERR",
                    format!(
                        "PRIOKEY of {} bytes is over the limit of {MAX_KEY} bytes",
                        self.key.len()
                    ),
                ));
            }
        } else if is(opt, "KEYTYPE") {
            self.keytype = Some(a.value(opt)?);
        } else if is(opt, "DELAY") {
            self.delay = Some(a.u64_value(opt)?);
        } else if is(opt, "TIMEOUT") {
            self.wait = Wait::Until(deadline(a.u64_value(opt)?));
        } else if is(opt, "NOWAIT") {
            self.wait = Wait::No;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

pub(crate) struct Put {
    pub(super) queue: Bytes,
    data: Bytes,
    opts: PutOpts,
    dedup: Option<Bytes>,
    /// DEDUPFOR ms: this key's window, if shorter than the broker's.
    dedup_for: Option<u64>,
}

pub(crate) struct PutMany {
    pub(super) queue: Bytes,
    data: Vec<Bytes>,
    opts: PutOpts,
}

/// A put whose key type differs from that of the messages the queue holds.
fn keytype_error(held: &[u8], put: &[u8]) -> CmdError {
    err(
        "KEYTYPE",
        format!(
            "the queue holds items ordered as {}; this one is {}",
            String::from_utf8_lossy(held),
            String::from_utf8_lossy(put)
        ),
    )
}

fn full() -> CmdError {
    err("FULL", "queue is full")
}

pub(super) fn shut_down() -> CmdError {
    err("SHUTDOWN", "queue is shut down")
}

/// Puts are refused while memory or disk is short; gets and dones go on.
/// `adds`: what the put would hold (payloads, keys, overhead), checked
/// with it, so that one large request cannot overshoot a limit.
fn admit(s: &Session, adds: u64) -> Result<(), CmdError> {
    if s.broker.over_memory_with(adds) {
        return Err(err("OOM", crate::broker::OVER_MEMORY));
    }
    if let Some(why) = s.user.as_ref().and_then(|u| u.over_bytes(adds)) {
        return Err(err("OOM", why));
    }
    if s.broker.low_on_disk() {
        return Err(err(
            "NOSPACE",
            "disk space is low; puts are refused until it frees (gets and dones go on)",
        ));
    }
    Ok(())
}

impl Put {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let queue = a.queue()?;
        let data = a.require()?;
        let (mut opts, mut dedup, mut dedup_for) = (PutOpts::default(), None, None);
        while let Some(opt) = a.next_ref() {
            if opts.parse(opt, a)? {
                continue;
            }
            if is(opt, "DEDUP") {
                let key = a.value(opt)?;
                if key.len() > crate::broker::MAX_DEDUP_KEY {
                    return Err(err(
                        "ERR",
                        format!(
                            "a DEDUP key may hold at most {} bytes, not {}",
                            crate::broker::MAX_DEDUP_KEY,
                            key.len()
                        ),
                    ));
                }
                dedup = Some(key);
            } else if is(opt, "DEDUPFOR") {
                dedup_for = Some(a.u64_value(opt)?);
            } else {
                return Err(a.unknown(opt));
            }
        }
        if dedup_for.is_some() && dedup.is_none() {
            return Err(err("ERR", "DEDUPFOR needs a DEDUP key"));
        }
        Ok(Put {
            queue,
            data,
            opts,
            dedup,
            dedup_for,
        })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        admit(s, crate::payload::weight(&self.data, &self.opts.key))?;
        let Put {
            queue,
            data,
            opts,
            dedup,
            dedup_for,
        } = self;
        let cell = s.take_queue(&queue)?;
        // A key's own window may be shorter than the broker's, not longer.
        let window = s.broker.config.dedup_window_ms;
        let window = dedup_for.map_or(window, |w| w.clamp(1, window));
        let now = s.now();
        let store = s.broker.store.as_deref();
        let item = Payload {
            data,
            key: opts.key.clone(),
        };
        let first = cell.with_at(&s.broker, now, |st, now| {
            if let Some(id) = dedup.as_ref().and_then(|k| st.dedup(k, now)) {
                return Ok(Ok(id));
            }
            if let Some(t) = &opts.keytype
                && let Err(held) = st.check_keytype(&queue, t, store)
            {
                return Err(keytype_error(&held, t));
            }
            let r = st.q.put(item, opts.delay, now);
            if let (Ok(id), Some(k)) = (&r, &dedup) {
                st.remember(&queue, k.clone(), *id, now, window, store);
            }
            Ok(r)
        });
        match first {
            Ok(Ok(id)) => {
                s.keep_queue(cell);
                s.reply().uint(id);
                done()
            }
            Err(e) => {
                s.keep_queue(cell);
                Err(e)
            }
            Ok(Err(PutError::ShutDown(_))) => {
                s.keep_queue(cell);
                Err(shut_down())
            }
            Ok(Err(PutError::Full(item) | PutError::TooMany(item))) => {
                s.keep_queue(Arc::clone(&cell));
                wait(
                    s,
                    cell,
                    Batch::One(item),
                    &opts,
                    dedup.map(|k| (queue, k, window)),
                )
            }
        }
    }
}

impl PutMany {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let queue = a.queue()?;
        let mut opts = PutOpts::default();
        loop {
            let opt = a.require_ref()?;
            if is(opt, "PAYLOADS") {
                break;
            }
            if !opts.parse(opt, a)? {
                return Err(a.unknown(opt));
            }
        }
        let mut data = Vec::with_capacity(a.remaining());
        while let Some(d) = a.next() {
            data.push(d);
        }
        if data.is_empty() {
            return Err(a.arity());
        }
        Ok(PutMany { queue, data, opts })
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        let adds = self
            .data
            .iter()
            .map(|d| crate::payload::weight(d, &self.opts.key))
            .sum();
        admit(s, adds)?;
        let PutMany { queue, data, opts } = self;
        let items: Vec<Payload> = data
            .into_iter()
            .map(|data| Payload {
                data,
                key: opts.key.clone(),
            })
            .collect();
        let cell = s.find_or_create(&queue)?;
        let now = s.now();
        let store = s.broker.store.as_deref();
        let put = cell.with_at(&s.broker, now, |st, now| {
            if let Some(t) = &opts.keytype {
                st.check_keytype(&queue, t, store)
                    .map_err(|held| keytype_error(&held, t))?;
            }
            Ok::<_, CmdError>(st.q.put_many(items, opts.delay, now))
        })?;
        match put {
            Ok(ids) => {
                reply_ids(s, ids, true);
                done()
            }
            Err(PutError::ShutDown(_)) => Err(shut_down()),
            Err(PutError::TooMany(_)) => Err(err("ERR", "more payloads than the queue's maxsize")),
            Err(PutError::Full(items)) => wait(s, cell, Batch::Many(items), &opts, None),
        }
    }
}

/// The ids a put got: one integer (QPUT), or an array (QPUTMANY).
fn reply_ids(s: &mut Session, ids: Range<u64>, many: bool) {
    let mut r = s.reply();
    if !many {
        r.uint(ids.start);
        return;
    }
    r.array((ids.end - ids.start) as usize);
    for id in ids {
        r.uint(id);
    }
}

/// Registers a put that found no room as a waiting putter, unless it may
/// not wait.
fn wait(
    s: &mut Session,
    cell: Arc<QueueCell>,
    batch: Batch<Payload>,
    opts: &PutOpts,
    dedup: Option<(Bytes, Bytes, u64)>,
) -> Res {
    let Wait::Until(until) = opts.wait else {
        return Err(full());
    };
    let many = matches!(batch, Batch::Many(_));
    let notify = Arc::new(Notify::new());
    let waiter = cell.with(&s.broker, |st, now| {
        let w = st.q.wait_put(batch, opts.delay, now);
        st.watch(w, &notify);
        w
    });
    Ok(Outcome::Wait(Blocked::Put(PutWait {
        cell,
        waiter,
        notify,
        until,
        many,
        dedup,
    })))
}

/// A put waiting for room.
pub(crate) struct PutWait {
    cell: Arc<QueueCell>,
    waiter: WaiterId,
    pub(super) notify: Arc<Notify>,
    pub(super) until: Option<Instant>,
    many: bool,
    /// A QPUT's queue, DEDUP key and its window, remembered once the put
    /// is admitted.
    dedup: Option<(Bytes, Bytes, u64)>,
}

impl PutWait {
    pub(super) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Result<Flow, CmdError>> {
        let waiter = self.waiter;
        let outcome = match woke {
            Woke::Notified => {
                let polled = self.cell.with(&s.broker, |st, _| {
                    let r = st.q.poll_put(waiter);
                    if r.is_some() {
                        st.unwatch(waiter);
                    }
                    r
                });
                polled?
            }
            // Timed out, unblocked or gone: an admission that won the
            // race stands.
            Woke::TimedOut | Woke::Unblocked(_) | Woke::Gone => {
                let settled = self.cell.with(&s.broker, |st, _| {
                    st.unwatch(waiter);
                    let r = st.q.poll_put(waiter);
                    if r.is_none() {
                        st.q.cancel_put(waiter);
                    }
                    r
                });
                if woke == Woke::Gone {
                    return Some(Ok(Flow::Close));
                }
                match settled {
                    Some(r) => r,
                    None => return Some(woke.empty_handed(|| Err(full()))),
                }
            }
        };
        Some(match outcome {
            Ok(ids) => {
                if let Some((queue, key, window)) = self.dedup.take() {
                    let store = s.broker.store.clone();
                    self.cell.with(&s.broker, |st, now| {
                        st.remember(&queue, key, ids.start, now, window, store.as_deref())
                    });
                }
                reply_ids(s, ids, self.many);
                Ok(Flow::Continue)
            }
            Err(_) => Err(shut_down()),
        })
    }
}
