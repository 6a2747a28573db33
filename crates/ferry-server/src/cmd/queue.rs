//! The queue commands (SPEC §2): each parses its arguments, runs engine
//! calls through the queue's cell, and writes the reply.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::engine::{self, Batch, GetSpec, Kind, Lease, Message, PutError, WaiterId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::{Args, Res, Wait, deadline, err, is, parse_i64, parse_u64, syntax};
use crate::broker::{Payload, QueueCell, priority_key, valid_name};
use crate::conn::{Conn, Flow, Woke};
use crate::store::MAX_KEY;

/// The order key of a put that names no priority: priority 0.
const DEFAULT_KEY: &[u8] = &[0x80, 0, 0, 0, 0, 0, 0, 0];

fn queue_name(name: &Bytes) -> Result<(), super::CmdError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(err(
            "ERR",
            "invalid queue name: 1 to 200 bytes of A-Z a-z 0-9 _ . : -",
        ))
    }
}

fn unknown_option(opt: &[u8], cmd: &str) -> super::CmdError {
    err(
        "ERR",
        format!(
            "unknown option '{}' for {cmd} (docs/protocol.md lists them)",
            String::from_utf8_lossy(opt)
        ),
    )
}

fn no_queue() -> super::CmdError {
    err("NOQUEUE", "no such queue")
}

fn nospace() -> super::CmdError {
    err(
        "NOSPACE",
        "disk space is low; puts are refused until it frees (gets and dones go on)",
    )
}

fn oom() -> super::CmdError {
    err("OOM", "command not allowed when used memory > 'max-memory'")
}

fn full() -> super::CmdError {
    err("FULL", "queue is full")
}

fn shut_down() -> super::CmdError {
    err("SHUTDOWN", "queue is shut down")
}

fn not_leased() -> super::CmdError {
    err("NOTLEASED", "message is not leased by this client")
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Fifo => "fifo",
        Kind::Lifo => "lifo",
        Kind::Priority => "priority",
    }
}

/// Settings named on QCREATE or QCONFIG; `None` where not named.
#[derive(Default)]
struct Settings {
    maxsize: Option<u64>,
    kind: Option<Kind>,
    lease: Option<Option<u64>>,
    max_attempts: Option<Option<u32>>,
    dead_letter: Option<Option<String>>,
}

fn parse_settings(a: &mut Args, allow_kind: bool) -> Result<Settings, super::CmdError> {
    let mut s = Settings::default();
    while let Some(opt) = a.next() {
        if is(&opt, "MAXSIZE") {
            s.maxsize = Some(a.u64_value()?);
        } else if is(&opt, "KIND") && allow_kind {
            let v = a.value()?;
            s.kind = Some(if is(&v, "fifo") {
                Kind::Fifo
            } else if is(&v, "lifo") {
                Kind::Lifo
            } else if is(&v, "priority") {
                Kind::Priority
            } else {
                return Err(err("ERR", "KIND must be fifo, lifo or priority"));
            });
        } else if is(&opt, "LEASE") {
            s.lease = Some(Some(a.u64_value()?).filter(|&ms| ms > 0));
        } else if is(&opt, "MAXATTEMPTS") {
            let n = a.u64_value()?;
            let n = u32::try_from(n).map_err(|_| err("ERR", "MAXATTEMPTS is out of range"))?;
            s.max_attempts = Some(Some(n).filter(|&n| n > 0));
        } else if is(&opt, "DEADLETTER") {
            let q = a.value()?;
            queue_name(&q)?;
            s.dead_letter = Some(Some(String::from_utf8_lossy(&q).into_owned()));
        } else {
            return Err(syntax());
        }
    }
    Ok(s)
}

impl Settings {
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
    }

    /// True when every setting named here matches `c`.
    fn matches(&self, c: &engine::Config) -> bool {
        let mut merged = c.clone();
        self.apply(&mut merged);
        &merged == c
    }
}

/// Put options shared by QPUT and QPUTMANY.
struct PutOpts {
    key: Bytes,
    delay: Option<u64>,
    wait: Wait,
    dedup: Option<Bytes>,
}

fn parse_put_opts(opt: &Bytes, a: &mut Args, o: &mut PutOpts) -> Result<bool, super::CmdError> {
    if is(opt, "PRIORITY") {
        o.key = priority_key(parse_i64(&a.value()?)?);
    } else if is(opt, "PRIOKEY") {
        o.key = a.value()?;
        if o.key.len() > MAX_KEY {
            return Err(err(
                "ERR",
                format!(
                    "PRIOKEY of {} bytes is over the limit of {MAX_KEY} bytes",
                    o.key.len()
                ),
            ));
        }
    } else if is(opt, "DELAY") {
        o.delay = Some(a.u64_value()?);
    } else if is(opt, "TIMEOUT") {
        o.wait = Wait::Until(deadline(a.u64_value()?));
    } else if is(opt, "NOWAIT") {
        o.wait = Wait::No;
    } else {
        return Ok(false);
    }
    Ok(true)
}

impl Default for PutOpts {
    fn default() -> Self {
        PutOpts {
            key: Bytes::from_static(DEFAULT_KEY),
            delay: None,
            wait: Wait::Until(None),
            dedup: None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn named_queue(&self, a: &mut Args) -> Result<Bytes, super::CmdError> {
        let name = a.require()?;
        queue_name(&name)?;
        Ok(name)
    }

    fn existing(&mut self, name: &Bytes) -> Result<Arc<QueueCell>, super::CmdError> {
        self.find(name).ok_or_else(no_queue)
    }

    fn entries(&mut self, entries: &[(Bytes, Message<Payload>)]) {
        let mut r = self.reply();
        r.array(entries.len());
        for (queue, m) in entries {
            r.array(4);
            r.bulk(queue);
            r.uint(m.id);
            r.bulk(&m.item.data);
            r.uint(u64::from(m.attempts));
        }
    }

    pub(super) fn qcreate(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let settings = parse_settings(&mut a, true)?;
        let mut config = engine::Config::default();
        settings.apply(&mut config);
        let (cell, created) = self.broker.create(&name, config, true);
        if !created {
            let ok = cell.with(&self.broker, |st, _| {
                if st.explicit {
                    return settings.matches(st.q.config());
                }
                // Made by first use: QCREATE applies its settings, except a
                // kind, which cannot change once messages are ordered.
                if settings.kind.is_some_and(|k| !st.q.set_kind(k)) {
                    return false;
                }
                st.explicit = true;
                apply_live(st, &settings);
                self.broker.log_settings(&name, st);
                true
            });
            if !ok {
                return Err(err("EXISTS", "queue exists with different settings"));
            }
        }
        self.reply().simple("OK");
        Ok(Flow::Continue)
    }

    pub(super) fn qconfig(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let settings = parse_settings(&mut a, false)?;
        let cell = self.find_or_create(&name);
        let broker = Arc::clone(&self.broker);
        cell.with(&self.broker, |st, _| {
            apply_live(st, &settings);
            broker.log_settings(&name, st);
        });
        self.reply().simple("OK");
        Ok(Flow::Continue)
    }

    pub(super) async fn qput(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let data = a.require()?;
        let mut o = PutOpts::default();
        while let Some(opt) = a.next() {
            if !parse_put_opts(&opt, &mut a, &mut o)? {
                if is(&opt, "DEDUP") {
                    o.dedup = Some(a.value()?);
                } else {
                    return Err(syntax());
                }
            }
        }
        if self.broker.over_memory() {
            return Err(oom());
        }
        if self.broker.low_on_disk() {
            return Err(nospace());
        }
        let cell = self.find_or_create(&name);
        let window = self.broker.config.dedup_window_ms;
        let item = Payload { data, key: o.key };
        let dedup = o.dedup;
        let store = self.broker.store.clone();
        let first = cell.with(&self.broker, |st, now| {
            if let Some(id) = dedup.as_ref().and_then(|k| st.dedup(k, now)) {
                return Ok(id);
            }
            let r = st.q.put(item, o.delay, now);
            if let (Ok(id), Some(k)) = (&r, &dedup) {
                st.remember(&name, k.clone(), *id, now, window, store.as_deref());
            }
            r
        });
        let item = match first {
            Ok(id) => {
                self.reply().uint(id);
                return Ok(Flow::Continue);
            }
            Err(PutError::ShutDown(_)) => return Err(shut_down()),
            Err(PutError::Full(item) | PutError::TooMany(item)) => item,
        };
        let Wait::Until(until) = o.wait else {
            return Err(full());
        };
        // Boxed, so that the common put that need not wait does not carry
        // the waiting state machine in its future (measured: large futures
        // cost pipelined throughput in copies).
        match Box::pin(self.wait_put(&cell, Batch::One(item), o.delay, until)).await {
            PutWait::Admitted(ids) => {
                if let Some(k) = dedup {
                    cell.with(&self.broker, |st, now| {
                        st.remember(&name, k, ids.start, now, window, store.as_deref())
                    });
                }
                self.reply().uint(ids.start);
                Ok(Flow::Continue)
            }
            PutWait::Failed(e) => Err(e),
            PutWait::Gone => Ok(Flow::Close),
        }
    }

    pub(super) async fn qputmany(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let mut o = PutOpts::default();
        loop {
            let opt = a.next().ok_or_else(|| a.arity())?;
            if is(&opt, "PAYLOADS") {
                break;
            }
            if !parse_put_opts(&opt, &mut a, &mut o)? {
                return Err(syntax());
            }
        }
        let mut items = Vec::with_capacity(a.remaining());
        while let Some(data) = a.next() {
            items.push(Payload {
                data,
                key: o.key.clone(),
            });
        }
        if items.is_empty() {
            return Err(a.arity());
        }
        if self.broker.over_memory() {
            return Err(oom());
        }
        if self.broker.low_on_disk() {
            return Err(nospace());
        }
        let cell = self.find_or_create(&name);
        let items = match cell.with(&self.broker, |st, now| st.q.put_many(items, o.delay, now)) {
            Ok(ids) => {
                self.ids(ids);
                return Ok(Flow::Continue);
            }
            Err(PutError::ShutDown(_)) => return Err(shut_down()),
            Err(PutError::TooMany(_)) => {
                return Err(err("ERR", "more payloads than the queue's maxsize"));
            }
            Err(PutError::Full(items)) => items,
        };
        let Wait::Until(until) = o.wait else {
            return Err(full());
        };
        match self
            .wait_put(&cell, Batch::Many(items), o.delay, until)
            .await
        {
            PutWait::Admitted(ids) => {
                self.ids(ids);
                Ok(Flow::Continue)
            }
            PutWait::Failed(e) => Err(e),
            PutWait::Gone => Ok(Flow::Close),
        }
    }

    fn ids(&mut self, ids: std::ops::Range<u64>) {
        let mut r = self.reply();
        r.array((ids.end - ids.start) as usize);
        for id in ids {
            r.uint(id);
        }
    }

    /// Waits for room as a registered putter, first come first served.
    async fn wait_put(
        &mut self,
        cell: &Arc<QueueCell>,
        batch: Batch<Payload>,
        delay: Option<u64>,
        until: Option<tokio::time::Instant>,
    ) -> PutWait {
        let notify = Arc::new(Notify::new());
        let waiter = cell.with(&self.broker, |st, now| {
            let w = st.q.wait_put(batch, delay, now);
            st.watch(w, &notify);
            w
        });
        loop {
            let polled = cell.with(&self.broker, |st, _| st.q.poll_put(waiter));
            if let Some(outcome) = polled {
                cell.with(&self.broker, |st, _| st.unwatch(waiter));
                return match outcome {
                    Ok(ids) => PutWait::Admitted(ids),
                    Err(_) => PutWait::Failed(shut_down()),
                };
            }
            let woke = self.wait(&notify, until).await;
            if let Woke::Notified = woke {
                continue;
            }
            // Timed out or gone: an admission that won the race stands.
            let outcome = cell.with(&self.broker, |st, _| {
                st.unwatch(waiter);
                match st.q.poll_put(waiter) {
                    Some(r) => Some(r),
                    None => {
                        st.q.cancel_put(waiter);
                        None
                    }
                }
            });
            return match (woke, outcome) {
                (Woke::Gone, _) => PutWait::Gone,
                (_, Some(Ok(ids))) => PutWait::Admitted(ids),
                (_, Some(Err(_))) => PutWait::Failed(shut_down()),
                (_, None) => PutWait::Failed(full()),
            };
        }
    }

    pub(super) async fn qget(&mut self, mut a: Args) -> Res {
        let mut names = Vec::with_capacity(1);
        names.push(self.named_queue(&mut a)?);
        let (mut count, mut wait, mut lease, mut take, mut noack) =
            (1usize, Wait::Until(None), None, false, false);
        while let Some(opt) = a.next() {
            if is(&opt, "COUNT") {
                count = usize::try_from(a.u64_value()?).unwrap_or(usize::MAX).max(1);
            } else if is(&opt, "TIMEOUT") {
                wait = Wait::Until(deadline(a.u64_value()?));
            } else if is(&opt, "NOWAIT") {
                wait = Wait::No;
            } else if is(&opt, "LEASE") {
                lease = Some(a.u64_value()?).filter(|&ms| ms > 0);
                if lease.is_none() {
                    return Err(err("ERR", "LEASE must be a positive number of ms"));
                }
            } else if is(&opt, "TAKE") {
                take = true;
            } else if is(&opt, "NOACK") {
                noack = true;
            } else if is(&opt, "OR") {
                let q = a.value()?;
                queue_name(&q)?;
                names.push(q);
            } else {
                return Err(unknown_option(&opt, "QGET"));
            }
        }
        if usize::from(take) + usize::from(noack) + usize::from(lease.is_some()) > 1 {
            return Err(err("ERR", "LEASE, TAKE and NOACK exclude each other"));
        }
        let holder = self.id;
        let spec: GetSpec<Payload> = match (lease, take, noack) {
            (Some(ms), _, _) => GetSpec::lease(Lease::Timed(ms)),
            (_, true, _) => GetSpec::Take {
                holder: Some(holder),
            },
            (_, _, true) => GetSpec::NoAck,
            _ => GetSpec::lease(Lease::Bound(holder)),
        };
        let holds = matches!(
            spec,
            GetSpec::Take { .. }
                | GetSpec::Lease {
                    lease: Lease::Bound(_),
                    ..
                }
        );
        // Buffers kept from the connection's last QGET: a get should not
        // cost four allocations.
        let mut scratch = std::mem::take(&mut self.get_scratch);
        scratch.clear();
        let GetScratch {
            cells,
            open,
            got,
            buf,
        } = &mut scratch;
        for n in &names {
            cells.push(self.find_or_create(n));
        }

        // First, whatever is ready now, queue by queue in the order named.
        for cell in cells.iter() {
            let want = count - got.len();
            if want == 0 {
                open.push(Arc::clone(cell));
                continue;
            }
            let ready = cell.with(&self.broker, |st, now| st.q.get_many(spec, want, now, buf));
            // A queue shut down and drained is left out of the wait.
            if ready.is_ok() {
                open.push(Arc::clone(cell));
            }
            if !buf.is_empty() {
                if holds && !self.holds.contains_key(&cell.name) {
                    self.holds.insert(cell.name.clone(), Arc::clone(cell));
                }
                got.extend(buf.drain(..).map(|m| (cell.name.clone(), m)));
            }
        }
        if !got.is_empty() {
            self.entries(got);
            // Emptied before it is kept, so no payload outlives its reply.
            scratch.clear();
            self.get_scratch = scratch;
            return Ok(Flow::Continue);
        }
        if open.is_empty() {
            return Err(shut_down());
        }
        let open = std::mem::take(open);
        scratch.clear();
        self.get_scratch = scratch;
        let Wait::Until(until) = wait else {
            self.reply().null_array();
            return Ok(Flow::Continue);
        };
        // Boxed: the waiting state machine is large, and only a get that
        // must wait should pay for it (see `wait_put`).
        Box::pin(self.qget_wait(spec, count, holds, open, until)).await
    }

    /// Waits in every queue at once; the first to hand over wins and the
    /// others give back anything they reserved.
    async fn qget_wait(
        &mut self,
        spec: GetSpec<Payload>,
        count: usize,
        holds: bool,
        open: Vec<Arc<QueueCell>>,
        until: Option<tokio::time::Instant>,
    ) -> Res {
        let notify = Arc::new(Notify::new());
        let mut waiting: Vec<(Arc<QueueCell>, WaiterId)> = open
            .into_iter()
            .map(|cell| {
                let w = cell.with(&self.broker, |st, now| {
                    let w = st.q.wait_get(spec, count, now);
                    st.watch(w, &notify);
                    w
                });
                (cell, w)
            })
            .collect();
        let mut gone = false;
        let outcome = loop {
            let mut found = None;
            let mut i = 0;
            while i < waiting.len() {
                let (cell, w) = &waiting[i];
                let w = *w;
                let r = cell.with(&self.broker, |st, now| {
                    let r = st.q.poll_get(w, now);
                    if r.is_some() {
                        st.unwatch(w);
                    }
                    r
                });
                match r {
                    None => i += 1,
                    Some(Ok(msgs)) => {
                        let (cell, _) = waiting.swap_remove(i);
                        found = Some((cell, msgs));
                        break;
                    }
                    Some(Err(engine::ShutDown)) => {
                        waiting.swap_remove(i);
                    }
                }
            }
            if found.is_some() || waiting.is_empty() {
                break found;
            }
            match self.wait(&notify, until).await {
                Woke::Notified => {}
                Woke::TimedOut => break None,
                Woke::Gone => {
                    gone = true;
                    break None;
                }
            }
        };
        for (cell, w) in waiting.drain(..) {
            cell.with(&self.broker, |st, _| {
                st.unwatch(w);
                st.q.cancel_get(w);
            });
        }
        if gone {
            return Ok(Flow::Close);
        }
        match outcome {
            Some((cell, msgs)) => {
                if holds && !self.holds.contains_key(&cell.name) {
                    self.holds.insert(cell.name.clone(), Arc::clone(&cell));
                }
                let entries: Vec<_> = msgs.into_iter().map(|m| (cell.name.clone(), m)).collect();
                self.entries(&entries);
            }
            None if until.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                self.reply().null_array()
            }
            // Every queue was shut down while waiting.
            None => return Err(shut_down()),
        }
        Ok(Flow::Continue)
    }

    fn ids_arg(a: &mut Args) -> Result<Vec<u64>, super::CmdError> {
        let mut ids = Vec::with_capacity(a.remaining());
        while let Some(id) = a.next() {
            ids.push(parse_u64(&id)?);
        }
        if ids.is_empty() {
            return Err(a.arity());
        }
        Ok(ids)
    }

    pub(super) fn qdone(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let ids = Self::ids_arg(&mut a)?;
        let holder = Some(self.id);
        let n = match self.find(&name) {
            Some(cell) => cell.with(&self.broker, |st, _| st.q.done(&ids, holder)),
            None => 0,
        };
        self.reply().uint(n as u64);
        Ok(Flow::Continue)
    }

    pub(super) fn qnack(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let id = parse_u64(&a.require()?)?;
        let mut delay = None;
        while let Some(opt) = a.next() {
            if is(&opt, "DELAY") {
                delay = Some(a.u64_value()?);
            } else {
                return Err(syntax());
            }
        }
        let holder = Some(self.id);
        let cell = self.existing(&name)?;
        if !cell.with(&self.broker, |st, now| st.q.nack(id, holder, delay, now)) {
            return Err(not_leased());
        }
        self.reply().simple("OK");
        Ok(Flow::Continue)
    }

    pub(super) fn qtouch(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let id = parse_u64(&a.require()?)?;
        let mut lease = None;
        while let Some(opt) = a.next() {
            if is(&opt, "LEASE") {
                lease = Some(a.u64_value()?).filter(|&ms| ms > 0);
            } else {
                return Err(syntax());
            }
        }
        let holder = Some(self.id);
        let cell = self.existing(&name)?;
        match cell.with(&self.broker, |st, now| {
            st.q.touch(id, holder, lease, now).map(|d| (d, now))
        }) {
            None => return Err(not_leased()),
            Some((Some(deadline), now)) => self.reply().uint(deadline - now),
            // A bound lease without a timeout lasts as long as the client.
            Some((None, _)) => self.reply().int(-1),
        }
        Ok(Flow::Continue)
    }

    pub(super) async fn qjoin(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let mut until = None;
        while let Some(opt) = a.next() {
            if is(&opt, "TIMEOUT") {
                until = deadline(a.u64_value()?);
            } else {
                return Err(syntax());
            }
        }
        let Some(cell) = self.find(&name) else {
            // Nothing was ever put there: nothing is unfinished.
            self.reply().simple("OK");
            return Ok(Flow::Continue);
        };
        let notify = Arc::new(Notify::new());
        let waiter = cell.with(&self.broker, |st, _| {
            let w = st.q.wait_join();
            if let Some(w) = w {
                st.watch(w, &notify);
            }
            w
        });
        let Some(waiter) = waiter else {
            self.reply().simple("OK");
            return Ok(Flow::Continue);
        };
        loop {
            if cell.with(&self.broker, |st, _| st.q.poll_join(waiter)) {
                cell.with(&self.broker, |st, _| st.unwatch(waiter));
                self.reply().simple("OK");
                return Ok(Flow::Continue);
            }
            match self.wait(&notify, until).await {
                Woke::Notified => {}
                woke => {
                    let joined = cell.with(&self.broker, |st, _| {
                        st.unwatch(waiter);
                        let joined = st.q.poll_join(waiter);
                        st.q.cancel_join(waiter);
                        joined
                    });
                    if let Woke::Gone = woke {
                        return Ok(Flow::Close);
                    }
                    if joined {
                        self.reply().simple("OK");
                    } else {
                        self.reply().null();
                    }
                    return Ok(Flow::Continue);
                }
            }
        }
    }

    pub(super) fn qlen(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        a.end()?;
        let n = self
            .broker
            .queue(&name)
            .map_or(0, |cell| cell.with(&self.broker, |st, _| st.q.qsize()));
        self.reply().uint(n);
        Ok(Flow::Continue)
    }

    pub(super) fn qinfo(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        a.end()?;
        let cell = self.existing(&name)?;
        let (config, counters, stats, shutdown) = cell.with(&self.broker, |st, _| {
            let q = &st.q;
            (
                q.config().clone(),
                [
                    q.qsize(),
                    q.unfinished(),
                    q.leased(),
                    q.taken(),
                    q.delayed(),
                    q.waiting_getters() as u64,
                    q.waiting_putters() as u64,
                ],
                q.stats().clone(),
                q.shutdown_state(),
            )
        });
        let mut r = self.reply();
        r.map(25);
        r.bulk(b"name");
        r.bulk(&name);
        r.bulk(b"kind");
        r.bulk(kind_name(config.kind).as_bytes());
        r.bulk(b"maxsize");
        r.uint(config.maxsize);
        for (label, v) in [
            ("qsize", counters[0]),
            ("unfinished", counters[1]),
            ("leased", counters[2]),
            ("taken", counters[3]),
            ("delayed", counters[4]),
            ("waiting_getters", counters[5]),
            ("waiting_putters", counters[6]),
        ] {
            r.bulk(label.as_bytes());
            r.uint(v);
        }
        r.bulk(b"full");
        r.boolean(config.maxsize > 0 && counters[0] >= config.maxsize);
        r.bulk(b"empty");
        r.boolean(counters[0] == 0);
        r.bulk(b"shutdown");
        r.bulk(match shutdown {
            None => b"no",
            Some(engine::Shutdown::Graceful) => b"graceful",
            Some(engine::Shutdown::Immediate) => b"immediate",
        });
        r.bulk(b"lease_timeout");
        r.int(config.lease_timeout.map_or(-1, |v| v as i64));
        r.bulk(b"max_attempts");
        r.int(config.max_attempts.map_or(-1, i64::from));
        r.bulk(b"dead_letter");
        match &config.dead_letter {
            Some(q) => r.bulk(q.as_bytes()),
            None => r.null(),
        }
        for (label, v) in [
            ("put", stats.put),
            ("delivered", stats.delivered),
            ("done", stats.done),
            ("nacked", stats.nacked),
            ("expired", stats.expired),
            ("released", stats.released),
            ("dead_lettered", stats.dead_lettered),
            ("lost", stats.lost),
            ("dropped", stats.dropped),
        ] {
            r.bulk(label.as_bytes());
            r.uint(v);
        }
        Ok(Flow::Continue)
    }

    pub(super) fn qlist(&mut self, a: Args) -> Res {
        a.end()?;
        let names = self.broker.names();
        let mut r = self.reply();
        r.array(names.len());
        for n in names {
            r.bulk(&n);
        }
        Ok(Flow::Continue)
    }

    pub(super) fn qpeek(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let mut count = 1;
        while let Some(opt) = a.next() {
            if is(&opt, "COUNT") {
                count = usize::try_from(a.u64_value()?).unwrap_or(usize::MAX);
            } else {
                return Err(syntax());
            }
        }
        let entries: Vec<(Bytes, Message<Payload>)> = match self.find(&name) {
            Some(cell) => cell.with(&self.broker, |st, _| {
                st.q.peek(count)
                    .into_iter()
                    .map(|m| (name.clone(), m.clone()))
                    .collect()
            }),
            None => Vec::new(),
        };
        self.entries(&entries);
        Ok(Flow::Continue)
    }

    pub(super) fn qpurge(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        a.end()?;
        let n = match self.find(&name) {
            Some(cell) => cell.with(&self.broker, |st, now| st.q.purge(now)),
            None => 0,
        };
        self.reply().uint(n);
        Ok(Flow::Continue)
    }

    pub(super) fn qdrop(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        a.end()?;
        let dropped = self.broker.drop_queue(&name);
        self.holds.remove(&name);
        self.reply().int(i64::from(dropped));
        Ok(Flow::Continue)
    }

    pub(super) fn qshutdown(&mut self, mut a: Args) -> Res {
        let name = self.named_queue(&mut a)?;
        let immediate = match a.next() {
            None => false,
            Some(opt) if is(&opt, "IMMEDIATE") => true,
            Some(_) => return Err(syntax()),
        };
        a.end()?;
        let cell = self.find_or_create(&name);
        let store = self.broker.store.clone();
        cell.with(&self.broker, |st, now| {
            st.q.shutdown(immediate, now);
            if let Some(store) = &store {
                store.shutdown(&name, immediate);
            }
        });
        self.reply().simple("OK");
        Ok(Flow::Continue)
    }
}

/// Applies settings to a live queue. The kind is never changed here.
fn apply_live(st: &mut crate::broker::QueueState, s: &Settings) {
    if let Some(v) = s.maxsize {
        st.q.set_maxsize(v);
    }
    if let Some(v) = s.lease {
        st.q.set_lease_timeout(v);
    }
    if let Some(v) = s.max_attempts {
        st.q.set_max_attempts(v);
    }
    if let Some(v) = &s.dead_letter {
        st.q.set_dead_letter(v.clone());
    }
}

/// QGET's working buffers, kept by the connection between calls.
#[derive(Default)]
pub(crate) struct GetScratch {
    cells: Vec<Arc<QueueCell>>,
    open: Vec<Arc<QueueCell>>,
    got: Vec<(Bytes, Message<Payload>)>,
    buf: Vec<Message<Payload>>,
}

impl GetScratch {
    fn clear(&mut self) {
        self.cells.clear();
        self.open.clear();
        self.got.clear();
        self.buf.clear();
    }
}

enum PutWait {
    Admitted(std::ops::Range<u64>),
    Failed(super::CmdError),
    Gone,
}
