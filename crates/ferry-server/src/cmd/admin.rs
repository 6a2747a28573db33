//! Queue administration: QCREATE and QCONFIG (settings), QLEN, QINFO,
//! QLIST and QPEEK (inspection), QPURGE, QDROP and QSHUTDOWN (management).

use bytes::Bytes;
use ferry_core::engine::{self, Kind, Message};

use super::get::entries;
use super::{Args, CmdError, Res, check_queue_name, done, err, is};
use crate::broker::{QueueCell, QueueState};
use crate::payload::Payload;
use crate::session::Session;

/// Settings named on QCREATE or QCONFIG; `None` where not named.
#[derive(Default)]
struct Settings {
    maxsize: Option<u64>,
    kind: Option<Kind>,
    lease: Option<Option<u64>>,
    max_attempts: Option<Option<u32>>,
    dead_letter: Option<Option<String>>,
    expire: Option<Option<u64>>,
    paused: Option<bool>,
}

impl Settings {
    fn parse(a: &mut Args, allow_kind: bool) -> Result<Settings, CmdError> {
        let mut s = Settings::default();
        while let Some(opt) = a.next() {
            if is(&opt, "MAXSIZE") {
                s.maxsize = Some(a.u64_value(&opt)?);
            } else if is(&opt, "KIND") {
                if !allow_kind {
                    return Err(err(
                        "ERR",
                        "a queue's KIND is set when it is made; QCONFIG cannot change it",
                    ));
                }
                let v = a.value(&opt)?;
                s.kind = Some(
                    Kind::from_name(&v)
                        .ok_or_else(|| err("ERR", "KIND must be fifo, lifo or priority"))?,
                );
            } else if is(&opt, "LEASE") {
                s.lease = Some(Some(a.u64_value(&opt)?).filter(|&ms| ms > 0));
            } else if is(&opt, "MAXATTEMPTS") {
                let n = u32::try_from(a.u64_value(&opt)?)
                    .map_err(|_| err("ERR", "MAXATTEMPTS is out of range"))?;
                s.max_attempts = Some(Some(n).filter(|&n| n > 0));
            } else if is(&opt, "EXPIRE") {
                s.expire = Some(Some(a.u64_value(&opt)?).filter(|&ms| ms > 0));
            } else if is(&opt, "PAUSED") {
                let v = a.value(&opt)?;
                s.paused = Some(if is(&v, "yes") || &v[..] == b"1" {
                    true
                } else if is(&v, "no") || &v[..] == b"0" {
                    false
                } else {
                    return Err(err("ERR", "PAUSED must be yes or no"));
                });
            } else if is(&opt, "DEADLETTER") {
                let q = a.value(&opt)?;
                check_queue_name(&q)?;
                s.dead_letter = Some(Some(String::from_utf8_lossy(&q).into_owned()));
            } else {
                return Err(a.unknown(&opt));
            }
        }
        Ok(s)
    }

    fn apply(&self, c: &mut engine::Config) {
        if let Some(v) = self.maxsize {
            c.maxsize = v;
        }
        if let Some(v) = self.kind {
            c.kind = v;
        }
        if let Some(v) = self.lease {
            c.lease_timeout = v;
        }
        if let Some(v) = self.max_attempts {
            c.max_attempts = v;
        }
        if let Some(v) = &self.dead_letter {
            c.dead_letter = v.clone();
        }
        if let Some(v) = self.paused {
            c.paused = v;
        }
    }

    /// The settings named here that differ from `c`, as "maxsize 100,
    /// not 5" (the queue's value first); empty when all match.
    fn differences(&self, c: &engine::Config, expire: Option<u64>) -> Vec<String> {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "none".to_string(), T::to_string)
        }
        let mut out = Vec::new();
        if let Some(v) = self.maxsize.filter(|&v| v != c.maxsize) {
            out.push(format!("maxsize {}, not {v}", c.maxsize));
        }
        if let Some(v) = self.kind.filter(|&v| v != c.kind) {
            out.push(format!("kind {}, not {}", c.kind.name(), v.name()));
        }
        if let Some(v) = self.lease.filter(|v| *v != c.lease_timeout) {
            out.push(format!("lease {}, not {}", opt(&c.lease_timeout), opt(&v)));
        }
        if let Some(v) = self.max_attempts.filter(|v| *v != c.max_attempts) {
            out.push(format!(
                "maxattempts {}, not {}",
                opt(&c.max_attempts),
                opt(&v)
            ));
        }
        if let Some(v) = self.dead_letter.as_ref().filter(|v| **v != c.dead_letter) {
            out.push(format!(
                "deadletter {}, not {}",
                opt(&c.dead_letter),
                opt(v)
            ));
        }
        if let Some(v) = self.paused.filter(|&v| v != c.paused) {
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            out.push(format!("paused {}, not {}", yes_no(c.paused), yes_no(v)));
        }
        if let Some(v) = self.expire.filter(|v| *v != expire) {
            out.push(format!("expire {}, not {}", opt(&expire), opt(&v)));
        }
        out
    }

    /// Applies the settings to a live queue. The kind is never changed
    /// here.
    fn apply_live(&self, cell: &QueueCell, st: &mut QueueState) {
        if let Some(v) = self.expire {
            cell.set_expire(v);
        }
        if let Some(v) = self.maxsize {
            st.q.set_maxsize(v);
        }
        if let Some(v) = self.lease {
            st.q.set_lease_timeout(v);
        }
        if let Some(v) = self.max_attempts {
            st.q.set_max_attempts(v);
        }
        if let Some(v) = &self.dead_letter {
            st.q.set_dead_letter(v.clone());
        }
        if let Some(v) = self.paused {
            st.q.set_paused(v);
        }
    }
}

/// A queue and the settings named for it.
struct Named {
    queue: Bytes,
    settings: Settings,
}

impl Named {
    /// Does it name a setting that decides what becomes of the queue's
    /// messages — LEASE, MAXATTEMPTS, DEADLETTER, PAUSED? Only an admin
    /// may, even on a queue it makes: whoever names a queue first would
    /// otherwise choose where others' messages go (a dead-letter queue of
    /// its own, with a lease of 1 ms). (EXPIRE on a queue it makes is
    /// anyone's, but then drops the queue only while it holds nothing.)
    fn controls(&self) -> bool {
        let s = &self.settings;
        s.lease.is_some()
            || s.max_attempts.is_some()
            || s.dead_letter.is_some()
            || s.paused.is_some()
    }

    /// The dead-letter queue it names, if any: naming one needs the put
    /// right on it (its messages will be put there).
    fn dead_letter(&self) -> Option<&[u8]> {
        self.settings
            .dead_letter
            .as_ref()
            .and_then(|d| d.as_deref())
            .map(str::as_bytes)
    }

    /// Makes the dead-letter queue it names, if it does not exist: now,
    /// so that the limits that hold for making a queue (`--max-memory`,
    /// the user's `max_queues`) hold for it too — a dead letter's move
    /// later makes it unchecked (its messages must go somewhere).
    fn make_dead_letter(&self, s: &Session) -> Result<(), CmdError> {
        let Some(dl) = self.dead_letter() else {
            return Ok(());
        };
        let name = Bytes::copy_from_slice(dl);
        s.broker
            .create(
                &name,
                engine::Config::default(),
                false,
                None,
                s.user.as_deref(),
            )
            .map(drop)
            .map_err(|why| err("OOM", why))
    }

    fn parse(a: &mut Args, allow_kind: bool) -> Result<Named, CmdError> {
        let queue = a.queue()?;
        let settings = Settings::parse(a, allow_kind)?;
        Ok(Named { queue, settings })
    }
}

/// QCREATE.
pub(crate) struct Create(Named);

/// QCONFIG.
pub(crate) struct ConfigQueue(Named);

impl Create {
    pub(super) fn queue(&self) -> &Bytes {
        &self.0.queue
    }

    pub(super) fn dead_letter(&self) -> Option<&[u8]> {
        self.0.dead_letter()
    }

    /// It names a setting only an admin may (see [`Named::controls`]).
    pub(super) fn controls(&self) -> bool {
        self.0.controls()
    }

    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        Named::parse(a, true).map(Create)
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        self.0.make_dead_letter(s)?;
        let Named { queue, settings } = self.0;
        let mut config = engine::Config::default();
        settings.apply(&mut config);
        let expire = settings.expire.flatten();
        let (cell, created) = s
            .broker
            .create(&queue, config, true, expire, s.user.as_deref())
            .map_err(|why| err("OOM", why))?;
        if !created {
            let broker = std::sync::Arc::clone(&s.broker);
            // Changing a queue's settings is an admin's (as QCONFIG is):
            // the right to make a queue is not the right to change one.
            let admin = s
                .user
                .as_ref()
                .is_none_or(|u| u.may(crate::acl::Right::Admin, &queue));
            let differences = cell.with(&s.broker, |st, _| {
                let differences = settings.differences(st.q.config(), cell.expire());
                if st.explicit {
                    return Ok(differences);
                }
                if !differences.is_empty() && !admin {
                    return Err(());
                }
                // Made by first use: QCREATE applies its settings, except a
                // kind, which cannot change once messages are ordered.
                if settings.kind.is_some_and(|k| !st.q.set_kind(k)) {
                    return Ok(settings.differences(st.q.config(), cell.expire()));
                }
                st.explicit = true;
                settings.apply_live(&cell, st);
                broker.log_settings(&cell, st);
                Ok(Vec::new())
            });
            let differences = differences.map_err(|()| {
                err(
                    "NOPERM",
                    format!(
                        "user '{}' has no 'admin' right on queue '{}' (QCREATE of a queue that exists, with other settings, changes them)",
                        s.user.as_ref().map_or("", |u| u.name.as_str()),
                        String::from_utf8_lossy(&queue)
                    ),
                )
            })?;
            if !differences.is_empty() {
                return Err(err(
                    "EXISTS",
                    format!(
                        "queue {} exists with {}",
                        String::from_utf8_lossy(&queue),
                        differences.join("; ")
                    ),
                ));
            }
        }
        s.reply().simple("OK");
        done()
    }
}

impl ConfigQueue {
    pub(super) fn queue(&self) -> &Bytes {
        &self.0.queue
    }

    pub(super) fn dead_letter(&self) -> Option<&[u8]> {
        self.0.dead_letter()
    }

    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        Named::parse(a, false).map(ConfigQueue)
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        self.0.make_dead_letter(s)?;
        let Named { queue, settings } = self.0;
        let cell = s.find_or_create(&queue)?;
        let broker = std::sync::Arc::clone(&s.broker);
        cell.with(&s.broker, |st, _| {
            settings.apply_live(&cell, st);
            broker.log_settings(&cell, st);
        });
        s.reply().simple("OK");
        done()
    }
}

/// Commands that read a queue (or the lock-like tables) and change
/// nothing.
pub(crate) enum Inspect {
    Len(Bytes),
    Info(Bytes),
    List,
    /// SYNCLIST: every lock, semaphore, event, condition and barrier in
    /// use, `[kind, name, holders, waiters, state]` each.
    SyncList,
    Peek(Bytes, usize),
}

impl Inspect {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let cmd = match a.command {
            "QLIST" => Inspect::List,
            "SYNCLIST" => Inspect::SyncList,
            "QLEN" => Inspect::Len(a.queue()?),
            "QINFO" => Inspect::Info(a.queue()?),
            _ => {
                let queue = a.queue()?;
                let mut count = 1;
                while let Some(opt) = a.next() {
                    if is(&opt, "COUNT") {
                        count = usize::try_from(a.u64_value(&opt)?).unwrap_or(usize::MAX);
                    } else {
                        return Err(a.unknown(&opt));
                    }
                }
                return Ok(Inspect::Peek(queue, count));
            }
        };
        a.end()?;
        Ok(cmd)
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        match self {
            Inspect::Len(queue) => {
                let n = s
                    .broker
                    .queue(&queue)
                    .map_or(0, |cell| cell.with(&s.broker, |st, _| st.q.qsize()));
                s.reply().uint(n);
            }
            Inspect::Info(queue) => info(s, &queue)?,
            Inspect::List => {
                let mut names = s.broker.names();
                if let Some(user) = &s.user {
                    names.retain(|n| user.may(crate::acl::Right::See, n));
                }
                let mut r = s.reply();
                r.array(names.len());
                for n in names {
                    r.bulk(&n);
                }
            }
            Inspect::SyncList => {
                let mut all = s.broker.sync_views();
                if let Some(user) = &s.user {
                    all.retain(|v| user.may(crate::acl::Right::Lock, &v.name));
                }
                let mut r = s.reply();
                r.array(all.len());
                for v in all {
                    r.array(5);
                    r.bulk(v.kind.as_bytes());
                    r.bulk(&v.name);
                    r.uint(v.holders);
                    r.uint(v.waiters);
                    r.bulk(v.state.as_bytes());
                }
            }
            Inspect::Peek(queue, count) => {
                let got: Vec<Message<Payload>> = match s.find(&queue) {
                    Some(cell) => cell.with(&s.broker, |st, _| st.q.peek(count)),
                    None => Vec::new(),
                };
                entries(s, got.len(), got.iter().map(|m| (&queue[..], m)));
            }
        }
        done()
    }
}

fn info(s: &mut Session, name: &Bytes) -> Result<(), CmdError> {
    let cell = s
        .find(name)
        .ok_or_else(|| err("NOQUEUE", "no such queue"))?;
    let v = cell.view(&s.broker);
    let mut r = s.reply();
    r.map(29);
    r.bulk(b"name");
    r.bulk(name);
    r.bulk(b"kind");
    r.bulk(v.kind.as_bytes());
    for (label, n) in [
        ("maxsize", v.maxsize),
        ("qsize", v.qsize),
        ("unfinished", v.unfinished),
        ("leased", v.leased),
        ("taken", v.taken),
        ("delayed", v.delayed),
        ("waiting_getters", v.waiting_getters),
        ("waiting_putters", v.waiting_putters),
        ("waiting_joiners", v.waiting_joiners),
    ] {
        r.bulk(label.as_bytes());
        r.uint(n);
    }
    r.bulk(b"full");
    r.boolean(v.full());
    r.bulk(b"empty");
    r.boolean(v.qsize == 0);
    r.bulk(b"shutdown");
    r.bulk(v.shutdown.as_bytes());
    r.bulk(b"paused");
    r.boolean(v.paused);
    r.bulk(b"lease_timeout");
    r.int(v.lease_timeout.map_or(-1, |n| n as i64));
    r.bulk(b"max_attempts");
    r.int(v.max_attempts.map_or(-1, i64::from));
    r.bulk(b"dead_letter");
    match &v.dead_letter {
        Some(q) => r.bulk(q.as_bytes()),
        None => r.null(),
    }
    r.bulk(b"expire");
    r.int(v.expire.map_or(-1, |n| n as i64));
    for (label, n) in v.counters() {
        r.bulk(label.as_bytes());
        r.uint(n);
    }
    Ok(())
}

/// Commands that drop messages or a queue, or shut it down.
pub(crate) enum Manage {
    Purge(Bytes),
    Drop(Bytes),
    Reopen(Bytes),
    Shutdown { queue: Bytes, immediate: bool },
}

impl Manage {
    pub(super) fn parse(a: &mut Args) -> Result<Self, CmdError> {
        let queue = a.queue()?;
        let cmd = match a.command {
            "QPURGE" => Manage::Purge(queue),
            "QDROP" => Manage::Drop(queue),
            "QREOPEN" => Manage::Reopen(queue),
            _ => {
                let immediate = match a.next() {
                    None => false,
                    Some(opt) if is(&opt, "IMMEDIATE") => true,
                    Some(opt) => return Err(a.unknown(&opt)),
                };
                Manage::Shutdown { queue, immediate }
            }
        };
        a.end()?;
        Ok(cmd)
    }

    pub(super) fn apply(self, s: &mut Session) -> Res {
        match self {
            Manage::Purge(queue) => {
                let n = match s.find(&queue) {
                    Some(cell) => cell.with(&s.broker, |st, now| st.q.purge(now)),
                    None => 0,
                };
                s.reply().uint(n);
            }
            Manage::Drop(queue) => {
                let dropped = s.broker.drop_queue(&queue);
                s.holds.remove(&queue);
                s.reply().int(i64::from(dropped));
            }
            Manage::Reopen(queue) => {
                let cell = s
                    .find(&queue)
                    .ok_or_else(|| err("NOQUEUE", "no such queue"))?;
                let store = s.broker.store.clone();
                cell.with(&s.broker, |st, _| {
                    st.q.reopen();
                    if let Some(store) = &store {
                        store.reopened(&queue);
                    }
                });
                s.reply().simple("OK");
            }
            Manage::Shutdown { queue, immediate } => {
                let cell = s.find_or_create(&queue)?;
                let store = s.broker.store.clone();
                cell.with(&s.broker, |st, now| {
                    st.q.shutdown(immediate, now);
                    if let Some(store) = &store {
                        store.shutdown(&queue, immediate);
                    }
                });
                s.reply().simple("OK");
            }
        }
        done()
    }
}
