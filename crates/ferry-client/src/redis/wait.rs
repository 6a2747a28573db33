//! Waiting on Redis: a command that must wait joins its line in the
//! script that found it must, blocks on a list of its own (BLPOP, on a
//! connection of its own) until it is woken or its nap ends, and reads
//! its mail — its reply, kept in the queue's keys — in its next try. A
//! waiter leaves the line in one script, which replies the mail that came
//! first: nothing handed over is lost. The scripts' replies are read here.

use std::time::Duration;

use ferry_proto::Value;
use tokio::time::Instant;

use super::conn::{self, Lib, RConn};
use super::{QUEUE, RedisLink, from_redis, io, server};
use crate::Error;

/// A step of a command that may wait.
enum Step {
    Done(Value),
    Wait(u64),
    /// What a waiter was handed while in line.
    Mail(Vec<u8>),
    /// A put whose primary turned replica before WAIT confirmed it: sent
    /// again (its DEDUP key makes it go in once).
    Again,
}

/// What waits: how its mail reads, and what its timeout replies.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Get,
    Put,
    Join,
    /// A lock's or a semaphore's grant: its token, or null.
    Lock,
    /// An event's or a condition's wait: 1, or 0 on timeout.
    Flag,
    /// A barrier's wait: the place, or BROKEN (its timeout breaks it).
    Barrier,
}

/// A command that may wait, as the scripts take it.
pub(super) struct Waiting {
    pub(super) kind: Kind,
    pub(super) script: &'static Lib,
    pub(super) keys: Vec<Vec<u8>>,
    /// Its arguments; the waiter and its wait (ms) go in at 1 and 2.
    pub(super) args: Vec<Vec<u8>>,
    /// Its waiters' mail lists are this and the waiter's name.
    pub(super) inbox: Vec<u8>,
    /// The queue named in a get's entries (a barrier's name).
    pub(super) queue: String,
    /// A put with a DEDUP key: safe to send again.
    pub(super) resendable: bool,
}

impl Waiting {
    /// A wait on queue `q` (its mail lists share the queue's hash tag).
    pub(super) fn on_queue(
        kind: Kind,
        q: String,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Waiting {
        Waiting {
            kind,
            script: &QUEUE,
            inbox: format!("ferry:{{{q}}}:w:").into_bytes(),
            queue: q,
            keys,
            args,
            resendable: false,
        }
    }

    /// Whether what it was handed must reach `?wait=N` replicas before it
    /// is acknowledged: a put, a lock's grant.
    fn confirmed(&self) -> bool {
        matches!(self.kind, Kind::Put | Kind::Lock)
    }

    /// What a wait that ended empty-handed replies.
    fn timed_out(&self) -> Result<Value, Error> {
        match self.kind {
            Kind::Put => Err(Error::Full),
            Kind::Flag => Ok(Value::Int(0)),
            Kind::Barrier => Err(self.broken()),
            _ => Ok(Value::Nil),
        }
    }

    fn broken(&self) -> Error {
        server("BROKEN", &format!("barrier '{}' is broken", self.queue))
    }

    /// A waiter's mail as the command's reply (`None`: it left the line
    /// before anything came).
    fn read_mail(&self, m: &[u8]) -> Option<Result<Value, Error>> {
        let bad = || Error::Protocol("malformed mail".into());
        let (&tag, body) = m.split_first()?;
        Some(match (tag, self.kind) {
            // An offer taken back before the claim.
            (b'O', _) => return None,
            (b'S', _) => Err(Error::ShutDown),
            (b'B', _) => Err(self.broken()),
            (b'J', _) => Ok(Value::Simple("OK".into())),
            (b'T', _) => std::str::from_utf8(body)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .map(Value::Int)
                .ok_or_else(bad),
            (b'I', _) => body
                .split(|&b| b == b',')
                .map(|id| {
                    std::str::from_utf8(id)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .map(Value::Int)
                        .ok_or_else(bad)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            (b'E', _) => read_entries(&self.queue, body).ok_or_else(bad),
            _ => Err(bad()),
        })
    }
}

/// 'E' mail's entries: "<id>,<attempts>,<len>:<payload>" each, or a
/// run's "R<first id>,<count>,<len>:<payloads>" (its payloads
/// "<len>:<payload>" each, their attempts 0; see queue.lua).
fn read_entries(queue: &str, mut body: &[u8]) -> Option<Value> {
    let mut entries = Vec::new();
    let entry = |id: i64, payload: &[u8], att: i64| {
        Value::Array(vec![
            Value::Bulk(queue.as_bytes().to_vec().into()),
            Value::Int(id),
            Value::Bulk(payload.to_vec().into()),
            Value::Int(att),
        ])
    };
    while !body.is_empty() {
        let run = body[0] == b'R';
        if run {
            body = &body[1..];
        }
        let (id, rest) = field(body, b',')?;
        let (n, rest) = field(rest, b',')?;
        let (payload, rest) = sized(rest)?;
        body = rest;
        if run {
            let mut packed = payload;
            for k in 0..n {
                let (p, rest) = sized(packed)?;
                entries.push(entry(id + k, p, 0));
                packed = rest;
            }
            if !packed.is_empty() {
                return None;
            }
        } else {
            entries.push(entry(id, payload, n));
        }
    }
    Some(Value::Array(entries))
}

/// A number ended by `end`, and what follows.
fn field(s: &[u8], end: u8) -> Option<(i64, &[u8])> {
    let at = s.iter().position(|&b| b == end)?;
    let n = std::str::from_utf8(&s[..at]).ok()?.parse::<i64>().ok()?;
    Some((n, &s[at + 1..]))
}

/// "<len>:<bytes>": the bytes, and what follows.
fn sized(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = field(s, b':')?;
    let len = usize::try_from(len).ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// A script's {"MAIL", mail}.
fn mail_of(v: &redis::Value) -> Option<Vec<u8>> {
    tagged(v, b"MAIL").map(<[u8]>::to_vec)
}

/// A script's {tag, bytes}.
fn tagged<'a>(v: &'a redis::Value, tag: &[u8]) -> Option<&'a [u8]> {
    if let redis::Value::Array(items) = v
        && let [redis::Value::BulkString(t), redis::Value::BulkString(m)] = items.as_slice()
        && t == tag
    {
        return Some(m);
    }
    None
}

/// A get's reply: {"ENTRIES", 'E' mail} as the protocol's entries.
pub(super) fn get_reply(queue: &str, v: redis::Value) -> Result<Value, Error> {
    match tagged(&v, b"ENTRIES") {
        Some(m) => m
            .strip_prefix(b"E")
            .and_then(|body| read_entries(queue, body))
            .ok_or_else(|| Error::Protocol("malformed entries".into())),
        None => from_redis(v),
    }
}

/// A script's {"WAIT", ms}.
fn wait_hint(v: &redis::Value) -> Option<u64> {
    if let redis::Value::Array(items) = v
        && let [redis::Value::BulkString(w), redis::Value::Int(ms)] = items.as_slice()
        && w == b"WAIT"
    {
        return Some((*ms).max(1) as u64);
    }
    None
}

impl RedisLink {
    /// A name for one wait, unique: the holder (a group's token is shared
    /// by its clients, so this client's number too) and a count.
    pub(super) fn waiter(&mut self) -> Vec<u8> {
        self.next_waiter += 1;
        format!("{}:{}:{}", self.holder, self.id, self.next_waiter).into_bytes()
    }

    /// One try of a waiting command: `waiter` empty means no wait.
    async fn try_once(&mut self, w: &Waiting, waiter: &[u8], wait_ms: u64) -> Result<Step, Error> {
        let mut args = w.args.clone();
        args.insert(1, waiter.to_vec());
        args.insert(2, wait_ms.to_string().into_bytes());
        let v = self.script(w.script, &w.keys, &args).await?;
        if let Some(hint) = wait_hint(&v) {
            return Ok(Step::Wait(hint));
        }
        if let Some(m) = mail_of(&v) {
            return Ok(Step::Mail(m));
        }
        let reply = get_reply(&w.queue, v)?;
        if w.confirmed() && !matches!(reply, Value::Nil) {
            if let Some(keys) = self.unconfirmed.as_mut() {
                // Confirmed once, at the pipeline's end.
                if !keys.contains(&w.keys[0]) {
                    keys.push(w.keys[0].clone());
                }
                return Ok(Step::Done(reply));
            }
            let mut conn = self.conn.clone();
            match self.replicate(&mut conn, &w.keys[0]).await {
                Err(e) if w.resendable && primary_moved(&e) => return Ok(Step::Again),
                r => r?,
            }
        }
        Ok(Step::Done(reply))
    }

    /// Mail handed to a put or a lock in line is confirmed as their own
    /// replies are: its write is the script's that handed it over, and the
    /// script that read it (and deleted it) came after, on this client's
    /// connection.
    async fn confirm_mail(&self, w: &Waiting, m: &[u8]) -> Result<(), Error> {
        if w.confirmed() && matches!(m.first(), Some(b'I' | b'T')) {
            let mut conn = self.conn.clone();
            self.replicate(&mut conn, &w.keys[0]).await?;
        }
        Ok(())
    }

    /// Leaves the line: the mail that came first, if any.
    async fn leave(&mut self, w: &Waiting, waiter: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let args = vec![b"unwait".to_vec(), waiter.to_vec()];
        let v = self.script(w.script, &w.keys, &args).await?;
        Ok(mail_of(&v))
    }

    /// Mail as the reply; the 'X' a leaving waiter left behind as its
    /// timeout's.
    fn reply_from(
        &self,
        w: &Waiting,
        m: Option<&[u8]>,
        cancelled: bool,
    ) -> Result<(Value, bool), Error> {
        match m.and_then(|m| w.read_mail(m)) {
            Some(r) => r.map(|v| (v, cancelled)),
            None => w.timed_out().map(|v| (v, cancelled)),
        }
    }

    /// A command that may wait, to its end: done, timed out (`wait`
    /// passed; `None` waits forever), or cancelled. While it waits it is
    /// in the line, blocked on its own list (BLPOP); whatever is handed to
    /// it there is its reply, even when it is leaving.
    pub(super) async fn wait(
        &mut self,
        w: Waiting,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let waiter = if wait == Some(Duration::ZERO) {
            Vec::new()
        } else {
            self.waiter()
        };
        self.wait_as(w, waiter, wait, cancel).await
    }

    /// `wait` as `waiter` (empty: no wait), which may be in line already
    /// (a condition's waiter joins before it gives its lock back).
    pub(super) async fn wait_as(
        &mut self,
        w: Waiting,
        waiter: Vec<u8>,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let mut resends = Resends::new();
        if waiter.is_empty() {
            loop {
                return match self.try_once(&w, b"", 0).await? {
                    Step::Done(v) => Ok((v, false)),
                    Step::Mail(m) => self.reply_from(&w, Some(&m), false),
                    Step::Wait(_) => w.timed_out().map(|v| (v, false)),
                    Step::Again => {
                        resends.pause().await?;
                        continue;
                    }
                };
            }
        }
        let mut inbox = w.inbox.clone();
        inbox.extend_from_slice(&waiter);
        let deadline = wait.map(|w| Instant::now() + w);
        tokio::pin!(cancel);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                let m = self.leave(&w, &waiter).await?;
                self.forget_inbox(&inbox).await;
                if let Some(m) = &m {
                    self.confirm_mail(&w, m).await?;
                }
                return self.reply_from(&w, m.as_deref(), false);
            }
            // Registered for a little longer than this nap: a waiter that
            // died leaves the line by itself.
            let nap = left
                .unwrap_or(Duration::from_secs(10))
                .min(Duration::from_secs(10));
            let step = match self.try_once(&w, &waiter, nap.as_millis() as u64).await {
                Ok(step) => step,
                Err(e) => {
                    let _ = self.leave(&w, &waiter).await;
                    self.forget_inbox(&inbox).await;
                    return Err(e);
                }
            };
            let hint = match step {
                Step::Done(v) => return Ok((v, false)),
                Step::Mail(m) => {
                    self.forget_inbox(&inbox).await;
                    self.confirm_mail(&w, &m).await?;
                    return self.reply_from(&w, Some(&m), false);
                }
                Step::Again => {
                    resends.pause().await?;
                    continue;
                }
                Step::Wait(hint) => hint,
            };
            let nap = nap.min(Duration::from_millis(hint));
            let blocking = match self.blocking.take() {
                Some(c) => c,
                None => self.engine.connect().await.map_err(io)?,
            };
            let mut pop = Box::pin(blpop(blocking.clone(), inbox.clone(), nap));
            let popped = tokio::select! {
                r = &mut pop => Ok(r),
                _ = &mut cancel => Err(pop),
            };
            match popped {
                // Woken, or the nap is over: the next try reads any mail.
                Ok(Ok(())) => self.blocking = Some(blocking),
                Ok(Err(e)) => {
                    // Out of the line before the error goes up: the caller
                    // may ask again, as another waiter.
                    let _ = self.leave(&w, &waiter).await;
                    return Err(e);
                }
                Err(pop) => {
                    // Cancelled: leave the line. Mail that came first is
                    // the reply. The BLPOP under way is woken to end, so
                    // that its connection serves again.
                    let args = vec![b"unwait".to_vec(), waiter.clone()];
                    let left_with: redis::Value = w
                        .script
                        .call(&mut self.conn, &w.keys, &args)
                        .await
                        .map_err(io)?;
                    conn::wake(&mut self.conn, &inbox).await;
                    if pop.await.is_ok() {
                        self.blocking = Some(blocking);
                    }
                    self.forget_inbox(&inbox).await;
                    let m = mail_of(&left_with);
                    if let Some(m) = &m {
                        self.confirm_mail(&w, m).await?;
                    }
                    return self.reply_from(&w, m.as_deref(), true);
                }
            }
        }
    }

    async fn forget_inbox(&mut self, inbox: &[u8]) {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(inbox)
            .query_async(&mut self.conn)
            .await;
    }
}

/// BLPOP on a waiter's list for at most `timeout`: until it is woken, or
/// the nap is over (the wake-up itself says nothing: the mail is read by
/// the next try).
async fn blpop(mut conn: RConn, list: Vec<u8>, timeout: Duration) -> Result<(), Error> {
    let secs = timeout.as_secs_f64().max(0.001);
    let mut pop = redis::cmd("BLPOP");
    pop.arg(list).arg(format!("{secs:.3}"));
    conn.run::<redis::Value>(&pop).await.map_err(io)?;
    Ok(())
}

/// Whether WAIT failed because the primary it asked became a replica (a
/// failover under way): what it was to confirm may be lost, and a put with
/// a DEDUP key is sent again to the new primary.
pub(super) fn primary_moved(e: &Error) -> bool {
    match e {
        Error::Server { code, message } => {
            code == "UNBLOCKED"
                || (code == "ERR" && message.starts_with("WAIT cannot be used with replica"))
        }
        _ => false,
    }
}

/// How often, and for how long, a put is sent again while a failover
/// settles (Redis's cluster-node-timeout is 15 s by default).
pub(super) struct Resends {
    give_up: Instant,
    pause: Duration,
}

impl Resends {
    pub(super) fn new() -> Resends {
        Resends {
            give_up: Instant::now() + Duration::from_secs(30),
            pause: Duration::from_millis(50),
        }
    }

    pub(super) async fn pause(&mut self) -> Result<(), Error> {
        if Instant::now() + self.pause > self.give_up {
            return Err(server(
                "NOREPLICAS",
                "the put's primary kept changing for 30 s; it may not have gone in",
            ));
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(())
    }
}
