//! The Redis backend: ferry's commands, answered by a Redis server.
//!
//! The client speaks ferry's protocol to the rest of the program; this
//! module answers each command as ferry's broker would, with one atomic
//! Lua script per operation (`queue.lua`, `lock.lua`) over keys that share
//! the queue's hash tag. What Redis cannot do the way the broker does is
//! done here:
//!
//! - Leases: Redis cannot see a connection close, so a lease lives with
//!   its holder's heartbeat, which the process renews in the background
//!   (`renew.rs`, every third of `?lease=ms`, 5 s by default) with the
//!   locks it holds; a process that dies stops renewing, and its messages
//!   come back once its heartbeat is overdue. A client that is dropped
//!   gives back what it holds at once.
//! - Waiting: a get, put, join or lock that must wait registers as a
//!   waiter in the same script that found it must, then blocks on a
//!   wake-up list of its own (BLPOP, on a connection of its own). A
//!   script that ends a wait keeps the waiter's reply ("mail") in the
//!   queue's keys and names the list in its reply; the caller that ran it
//!   pushes the wake-up (a script touches only the keys it declares, as
//!   Cluster and proxies require). The waiter's next try reads the mail.
//!   A lost wake-up costs a nap, never mail; no loop polls: it tries again
//!   at the latest when time alone changes something (a delay comes due,
//!   a lease expires) or after 10 s.
//! - `?wait=N`: after a put or a lock's grant, WAIT for N replicas (and
//!   a put whose primary became a replica meanwhile is sent again, its
//!   DEDUP key making it go in once). Nothing else waits: a lost get,
//!   done or nack is a redelivery, which at-least-once allows.

mod conn;
mod renew;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::Value;
use tokio::time::Instant;

use self::conn::{Engine, Lib, RConn};
use crate::Error;

static QUEUE: LazyLock<Lib> = LazyLock::new(|| Lib::new("ferry_queue", include_str!("queue.lua")));
static LOCK: LazyLock<Lib> = LazyLock::new(|| Lib::new("ferry_lock", include_str!("lock.lua")));

/// How long a done is kept to be sent again after an upheaval: longer
/// than a failover takes (Redis's cluster-node-timeout is 15 s).
const RECENT_DONES: Duration = Duration::from_secs(60);

/// At most this many ids are kept (~40 bytes each): a consumer finishing
/// 10,000 a second keeps its last 20 s.
const RECENT_DONES_KEPT: usize = 200_000;

/// How long a DEDUP key counts, as on the broker (`DEDUPFOR` shortens it).
const DEDUP_WINDOW_MS: u64 = 600_000;

/// A default heartbeat on this backend (`?lease`): how long a dead
/// process's messages stay out before they come back. Its holders are
/// renewed every third of it.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// A Redis server and how to use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The URL as given, without its options (`redis://[:pw@]host:port/db`
    /// or `redis+cluster://[:pw@]host:port,host:port`).
    pub url: String,
    /// A cluster's seed nodes (`redis://[:pw@]host:port` each); `None` for
    /// one server.
    pub nodes: Option<Vec<String>>,
    /// Replicas a change must reach before it is acknowledged (WAIT).
    pub wait: u32,
    /// The lease of a message got here, renewed while its holder lives.
    pub lease: Duration,
}

impl Target {
    /// Parses `redis://[:password@]host[:port][/db][?wait=N&lease=ms]` and
    /// `redis+cluster://[:password@]host:port[,host:port...][?wait=N&lease=ms]`.
    pub(crate) fn parse(s: &str) -> Result<Target, Error> {
        let bad = |why: &str| Error::Url(format!("{s:?}: {why}"));
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let nodes = match base.strip_prefix("redis+cluster://") {
            None => {
                redis::Client::open(base).map_err(|e| bad(&e.to_string()))?;
                None
            }
            Some(rest) => {
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.contains('/') {
                    return Err(bad("a cluster has one database (0): no /db"));
                }
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((auth, hosts)) => (format!("{auth}@"), hosts),
                    None => (String::new(), rest),
                };
                let mut nodes = Vec::new();
                for host in hosts.split(',') {
                    if host.is_empty() {
                        return Err(bad("a cluster URL names host:port[,host:port...]"));
                    }
                    let node = format!("redis://{auth}{host}");
                    redis::Client::open(node.as_str()).map_err(|e| bad(&e.to_string()))?;
                    nodes.push(node);
                }
                Some(nodes)
            }
        };
        let mut target = Target {
            url: base.to_string(),
            nodes,
            wait: 0,
            lease: DEFAULT_LEASE,
        };
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("wait", n)) => {
                    target.wait = n
                        .parse()
                        .map_err(|_| bad("wait must be a number of replicas"))?
                }
                Some(("lease", ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| bad("lease must be milliseconds"))?;
                    if ms < 100 {
                        return Err(bad("lease must be at least 100 ms"));
                    }
                    target.lease = Duration::from_millis(ms);
                }
                _ => return Err(bad("the options are wait=N and lease=ms")),
            }
        }
        Ok(target)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One client's use of a Redis server.
pub(crate) struct RedisLink {
    target: Target,
    engine: Engine,
    conn: RConn,
    /// For BLPOP: a blocking command holds its connection.
    blocking: Option<RConn>,
    /// Who holds what this client gets (its own token, or its group's).
    holder: String,
    /// This client's number (CLIENT ID's answer here).
    pub(crate) id: u64,
    next_waiter: u64,
    pub(crate) max_payload: Option<usize>,
    /// In a pipeline under `?wait=N`: the queues whose puts await one
    /// WAIT at its end (rather than one each: a feeder's batch of 1,000
    /// puts on a primary that lost its replicas took 1,000 × 5 s).
    unconfirmed: Option<Vec<Vec<u8>>>,
    /// Until when WAIT after a done is skipped: a primary here had fewer
    /// replicas than `?wait` asks (a done never waits for them long).
    degraded_until: Option<Instant>,
    /// Dones of the last minute (queue, ids), and the upheavals seen when
    /// they were last checked: a done a primary acknowledged just before a
    /// failover replaced it is lost, and the message would stay leased to
    /// this holder, which lives on (its heartbeat renewed) — so after an
    /// upheaval they are sent again (finishing what is still held, and
    /// nothing twice).
    recent_dones: std::collections::VecDeque<(Instant, std::sync::Arc<str>, u64)>,
    upheavals: u64,
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        renew::detach(&self.target, &self.holder);
    }
}

/// A function call's keys and arguments.
type Call = (Vec<Vec<u8>>, Vec<Vec<u8>>);

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
enum Kind {
    Get,
    Put,
    Join,
    Lock,
}

/// A command that may wait, as the scripts take it.
struct Waiting {
    kind: Kind,
    script: &'static Lib,
    keys: Vec<Vec<u8>>,
    /// Its arguments; the waiter and its wait (ms) go in at 1 and 2.
    args: Vec<Vec<u8>>,
    /// Its waiters' mail lists are this and the waiter's name.
    inbox: Vec<u8>,
    /// The queue named in a get's entries.
    queue: String,
    /// A put with a DEDUP key: safe to send again.
    resendable: bool,
}

impl Waiting {
    /// A wait on queue `q` (its mail lists share the queue's hash tag).
    fn on_queue(kind: Kind, q: String, keys: Vec<Vec<u8>>, args: Vec<Vec<u8>>) -> Waiting {
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
            _ => Ok(Value::Nil),
        }
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
fn get_reply(queue: &str, v: redis::Value) -> Result<Value, Error> {
    match tagged(&v, b"ENTRIES") {
        Some(m) => m
            .strip_prefix(b"E")
            .and_then(|body| read_entries(queue, body))
            .ok_or_else(|| Error::Protocol("malformed entries".into())),
        None => from_redis(v),
    }
}

fn queue_keys(q: &str, own: &[u8]) -> Vec<Vec<u8>> {
    let p = format!("ferry:{{{q}}}:");
    let mut keys: Vec<Vec<u8>> = [
        "m", "ready", "msg", "att", "sk", "out", "holder", "delayed", "dead", "gline", "pline",
        "joiners", "greq", "preq", "x", "offers", "offerx", "live", "byholder", "runs", "watch",
    ]
    .iter()
    .map(|k| format!("{p}{k}").into_bytes())
    .collect();
    let mut o = p.clone().into_bytes();
    o.extend_from_slice(own);
    keys.push(o);
    keys.push(format!("{p}mail").into_bytes());
    keys.push(format!("{p}mailx").into_bytes());
    keys
}

fn lock_keys(name: &str) -> Vec<Vec<u8>> {
    let p = format!("ferry:lock:{{{name}}}");
    ["", ":seq", ":line", ":req", ":mail", ":mailx"]
        .iter()
        .map(|s| format!("{p}{s}").into_bytes())
        .collect()
}

/// A queue or lock name as the protocol allows it: it also cannot escape
/// its hash tag.
fn check_name(name: &[u8]) -> Result<&str, Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(b));
    if !ok {
        return Err(server(
            "ERR",
            "a queue name is 1-200 bytes of A-Z a-z 0-9 _ . : -",
        ));
    }
    std::str::from_utf8(name).map_err(|_| server("ERR", "bad name"))
}

fn server(code: &str, message: &str) -> Error {
    Error::Server {
        code: code.into(),
        message: message.into(),
    }
}

fn io(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return Error::Io(std::io::Error::other(e.to_string()));
    }
    match e.code() {
        Some(code) => error_value(code, e.detail().unwrap_or("")),
        None => Error::Protocol(e.to_string()),
    }
}

/// An error reply as the broker's client maps it.
fn error_value(code: &str, message: &str) -> Error {
    match crate::aio::reply_value(Value::Error {
        code: code.to_string(),
        message: message.to_string(),
    }) {
        Err(e) => e,
        Ok(_) => Error::Protocol("an error reply was not an error".into()),
    }
}

/// A Redis reply as ferry's; an error reply as the broker's error.
fn from_redis(v: redis::Value) -> Result<Value, Error> {
    Ok(match v {
        redis::Value::Nil => Value::Nil,
        redis::Value::Int(n) => Value::Int(n),
        redis::Value::BulkString(b) => Value::Bulk(b.into()),
        redis::Value::Array(items) | redis::Value::Set(items) => Value::Array(
            items
                .into_iter()
                .map(from_redis)
                .collect::<Result<_, _>>()?,
        ),
        redis::Value::SimpleString(s) => Value::Simple(s),
        redis::Value::Okay => Value::Simple("OK".into()),
        redis::Value::Map(pairs) => Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| Ok((from_redis(k)?, from_redis(v)?)))
                .collect::<Result<_, Error>>()?,
        ),
        redis::Value::Boolean(b) => Value::Bool(b),
        redis::Value::Double(d) => Value::Bulk(d.to_string().into_bytes().into()),
        redis::Value::ServerError(e) => {
            return Err(error_value(e.code(), e.details().unwrap_or("")));
        }
        other => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    })
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

/// Arguments, read left to right with keywords case-insensitive.
struct Args<'a> {
    rest: std::slice::Iter<'a, &'a [u8]>,
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        self.rest.next().copied()
    }
    fn require(&mut self, what: &str) -> Result<&'a [u8], Error> {
        self.next()
            .ok_or_else(|| server("ERR", &format!("missing {what}")))
    }
    fn number(&mut self, what: &str) -> Result<u64, Error> {
        let v = self.require(what)?;
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| server("ERR", &format!("{what} must be a whole number")))
    }
}

fn is(word: &[u8], kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw.as_bytes())
}

fn unknown(opt: &[u8], cmd: &str) -> Error {
    server(
        "ERR",
        &format!(
            "unknown option '{}' for {cmd} (docs/protocol.md lists them)",
            String::from_utf8_lossy(opt)
        ),
    )
}

/// How long a command may wait: `None` forever, `Some(0)` not at all.
fn wait_option(word: &[u8], a: &mut Args<'_>, wait: &mut Option<Duration>) -> Result<bool, Error> {
    if is(word, "TIMEOUT") {
        let ms = a.number("TIMEOUT")?;
        *wait = if ms == 0 {
            None
        } else {
            Some(Duration::from_millis(ms))
        };
        Ok(true)
    } else if is(word, "NOWAIT") {
        *wait = Some(Duration::ZERO);
        Ok(true)
    } else {
        Ok(false)
    }
}

/// A PRIORITY n as an order key: bytes that sort as the numbers do.
fn priority_key(n: i64) -> Vec<u8> {
    ((n as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

impl RedisLink {
    pub(crate) async fn open(
        target: &Target,
        holder: Option<&str>,
    ) -> Result<Box<RedisLink>, Error> {
        let engine = Engine::new(target).map_err(|e| Error::Url(e.to_string()))?;
        let mut conn = engine.connect().await.map_err(|e| match e.kind() {
            redis::ErrorKind::AuthenticationFailed => Error::Auth(e.to_string()),
            _ => io(e),
        })?;
        let max_payload: Option<usize> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("proto-max-bulk-len")
            .query_async::<Vec<String>>(&mut conn)
            .await
            .ok()
            .and_then(|v| v.get(1).and_then(|n| n.parse().ok()));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let holder = match holder {
            Some(h) => h.to_string(),
            None => own_token(id),
        };
        renew::attach(target, &holder);
        Ok(Box::new(RedisLink {
            target: target.clone(),
            engine,
            conn,
            blocking: None,
            holder,
            id,
            next_waiter: 0,
            max_payload,
            unconfirmed: None,
            degraded_until: None,
            recent_dones: std::collections::VecDeque::new(),
            upheavals: conn::UPHEAVALS.load(Ordering::Relaxed),
        }))
    }

    /// Joins a holder group: what this client gets from now on, the
    /// group holds.
    fn set_holder(&mut self, token: &[u8]) -> Result<Value, Error> {
        let token = std::str::from_utf8(token).map_err(|_| server("ERR", "bad token"))?;
        if token.len() < 16 {
            return Err(server(
                "ERR",
                "a holder token must be at least 16 bytes (an unguessable one)",
            ));
        }
        renew::attach(&self.target, token);
        renew::detach(&self.target, &self.holder);
        self.holder = token.to_string();
        Ok(Value::Simple("OK".into()))
    }

    async fn script(
        &mut self,
        script: &Lib,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> Result<redis::Value, Error> {
        script.call(&mut self.conn, keys, args).await.map_err(io)
    }

    /// A command that changes nothing `?wait=N` protects: a done, a nack,
    /// a queue's settings, a read.
    async fn change(
        &mut self,
        script: &Lib,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> Result<Value, Error> {
        let v = self.script(script, keys, args).await?;
        from_redis(v)
    }

    /// Keeps a done's ids for a minute, at most RECENT_DONES_KEPT of them
    /// (see `recent_dones`).
    fn remember_done(&mut self, rest: &[&[u8]]) {
        let Some((q, ids)) = rest.split_first() else {
            return;
        };
        let now = Instant::now();
        while self.recent_dones.front().is_some_and(|(t, ..)| {
            now.duration_since(*t) > RECENT_DONES || self.recent_dones.len() >= RECENT_DONES_KEPT
        }) {
            self.recent_dones.pop_front();
        }
        let q: std::sync::Arc<str> = match self.recent_dones.back() {
            Some((_, last, _)) if last.as_bytes() == *q => last.clone(),
            _ => String::from_utf8_lossy(q).into(),
        };
        for id in ids {
            if let Some(id) = std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()) {
                self.recent_dones.push_back((now, q.clone(), id));
            }
        }
    }

    /// After an upheaval (a redirect, a failover, a lost connection), the
    /// dones of the last minute again: those a replaced primary lost.
    async fn redo_dones_after_upheaval(&mut self) {
        let now = conn::UPHEAVALS.load(Ordering::Relaxed);
        if now == self.upheavals || self.recent_dones.is_empty() {
            self.upheavals = now;
            return;
        }
        self.upheavals = now;
        let mut by_queue: std::collections::BTreeMap<std::sync::Arc<str>, Vec<Vec<u8>>> =
            std::collections::BTreeMap::new();
        for (_, q, id) in &self.recent_dones {
            by_queue
                .entry(q.clone())
                .or_default()
                .push(id.to_string().into_bytes());
        }
        for (q, ids) in by_queue {
            for chunk in ids.chunks(1000) {
                let mut sargs = vec![b"done".to_vec(), self.holder.as_bytes().to_vec()];
                sargs.extend(chunk.iter().cloned());
                let _ = self.script(&QUEUE, &queue_keys(&q, b"-"), &sargs).await;
            }
        }
    }

    /// Under `?wait=N`, whether a done stands: WAIT for the replicas a
    /// short while — a primary that turned replica meanwhile (a failover
    /// under way) may have lost it, so false: send it again; too few
    /// replicas is no failure (a done never fails, nor waits long, for
    /// want of them: for 10 s after, it does not wait at all).
    async fn settled(&mut self, key: &[u8]) -> bool {
        if self.target.wait == 0 || self.degraded_until.is_some_and(|t| Instant::now() < t) {
            return true;
        }
        let mut conn = self.conn.clone();
        match conn.wait_replicas(key, self.target.wait, 1000).await {
            Ok(reached) => {
                if reached < i64::from(self.target.wait) {
                    self.degraded_until = Some(Instant::now() + Duration::from_secs(10));
                }
                true
            }
            Err(e) => !primary_moved(&io(e)),
        }
    }

    /// With `?wait=N`: WAIT for N replicas of the primary that holds `key`,
    /// of what `conn` (this client's, or its blocking one) wrote there.
    async fn replicate(&self, conn: &mut RConn, key: &[u8]) -> Result<(), Error> {
        if self.target.wait == 0 {
            return Ok(());
        }
        let reached = conn
            .wait_replicas(key, self.target.wait, 5000)
            .await
            .map_err(io)?;
        if reached < i64::from(self.target.wait) {
            return Err(server(
                "NOREPLICAS",
                &format!(
                    "the change reached {reached} of the {} replicas asked for (?wait) in 5 s; it may be lost in a failover",
                    self.target.wait
                ),
            ));
        }
        Ok(())
    }

    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        let never = std::future::pending::<()>();
        self.call_cancellable(args, never).await.map(|(v, _)| v)
    }

    /// QDONE's keys and arguments (`rest`: the queue, then the ids).
    fn done_call(&self, rest: &[&[u8]]) -> Result<Call, Error> {
        let (q, ids) = rest
            .split_first()
            .ok_or_else(|| server("ERR", "missing queue"))?;
        let q = check_name(q)?;
        let mut sargs = vec![b"done".to_vec(), self.holder.as_bytes().to_vec()];
        sargs.extend(ids.iter().map(|id| id.to_vec()));
        Ok((queue_keys(q, b"-"), sargs))
    }

    /// Commands one after the other, each answered as `call` would; a QDONE
    /// followed by another command goes out with it (a consumer's done and
    /// next get: one round trip, as on the broker). Sent on one connection
    /// in order, they run in order.
    pub(crate) async fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        if self.target.wait == 0 {
            return self.pipeline_unconfirmed(commands).await;
        }
        self.unconfirmed = Some(Vec::new());
        let replies = self.pipeline_unconfirmed(commands).await;
        let keys = self.unconfirmed.take().unwrap_or_default();
        let mut replies = replies?;
        let mut conn = self.conn.clone();
        for key in keys {
            if let Err(e) = self.replicate(&mut conn, &key).await {
                // What WAIT did not confirm is not acknowledged.
                let message = e.to_string();
                for (c, r) in commands.iter().zip(replies.iter_mut()) {
                    let put = c
                        .first()
                        .is_some_and(|n| is(n, "QPUT") || is(n, "QPUTMANY") || is(n, "LOCK"));
                    if put && r.is_ok() {
                        *r = Err(server("NOREPLICAS", &message));
                    }
                }
                break;
            }
        }
        Ok(replies)
    }

    async fn pipeline_unconfirmed(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        let mut replies = Vec::with_capacity(commands.len());
        let mut i = 0;
        while i < commands.len() {
            let c = &commands[i];
            // (Under `?wait=N` a done is confirmed on its own: `settled`.)
            let done_first = i + 1 < commands.len()
                && self.target.wait == 0
                && c.first().is_some_and(|n| is(n, "QDONE"));
            if done_first && let Ok((keys, sargs)) = self.done_call(&c[1..]) {
                let mut conn = self.conn.clone();
                let done = async move {
                    QUEUE
                        .call::<redis::Value>(&mut conn, &keys, &sargs)
                        .await
                        .map_err(io)
                        .and_then(from_redis)
                };
                self.remember_done(&c[1..]);
                let (d, next) = tokio::join!(done, self.call(&commands[i + 1]));
                for r in [d, next] {
                    match r {
                        Err(Error::Io(e)) => return Err(Error::Io(e)),
                        r => replies.push(r),
                    }
                }
                i += 2;
                continue;
            }
            match self.call(c).await {
                Err(Error::Io(e)) => return Err(Error::Io(e)),
                r => replies.push(r),
            }
            i += 1;
        }
        Ok(replies)
    }

    /// Answers one ferry command; a command that waits gives up when
    /// `cancel` resolves, as a timeout would (nothing it got is lost: every
    /// try is one whole script).
    pub(crate) async fn call_cancellable(
        &mut self,
        args: &[&[u8]],
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let Some((name, rest)) = args.split_first() else {
            return Err(server("ERR", "empty command"));
        };
        self.redo_dones_after_upheaval().await;
        let mut a = Args { rest: rest.iter() };
        let cmd = String::from_utf8_lossy(name).to_ascii_uppercase();
        let done = |v: Value| Ok((v, false));
        match cmd.as_str() {
            "PING" => done(match a.next() {
                Some(m) => Value::Bulk(m.to_vec().into()),
                None => Value::Simple("PONG".into()),
            }),
            "ECHO" => done(Value::Bulk(a.require("message")?.to_vec().into())),
            "SELECT" | "AUTH" => done(Value::Simple("OK".into())),
            "CLIENT" => {
                let sub = a.require("subcommand")?;
                if is(sub, "ID") {
                    done(Value::Int(self.id as i64))
                } else if is(sub, "HOLDER") {
                    let token = a.require("token")?;
                    done(self.set_holder(token)?)
                } else if is(sub, "UNBLOCK") {
                    // Waits here end from the waiting side (cancel).
                    done(Value::Int(0))
                } else {
                    done(Value::Simple("OK".into()))
                }
            }
            "CONFIG" => done(Value::Array(vec![
                Value::Bulk(b"proto-max-bulk-len".to_vec().into()),
                Value::Bulk(
                    self.max_payload
                        .unwrap_or(512 << 20)
                        .to_string()
                        .into_bytes()
                        .into(),
                ),
            ])),
            "INFO" => {
                let info = self.conn.info("server").await.map_err(io)?;
                let queues = self.scan("ferry:{*}:m").await?.len();
                let lines = self.scan("ferry:lock:{*}:req").await?;
                let locks = self.scan("ferry:lock:{*}").await?.len();
                let mut waiters = 0i64;
                for line in &lines {
                    let Some(name) = line
                        .strip_prefix("ferry:lock:{")
                        .and_then(|r| r.strip_suffix("}:req"))
                    else {
                        continue;
                    };
                    let keys = lock_keys(name);
                    if let redis::Value::Int(n) =
                        self.script(&LOCK, &keys, &[b"waiters".to_vec()]).await?
                    {
                        waiters += n;
                    }
                }
                done(Value::Bulk(
                    format!(
                        "# ferry\r\nbackend:{}\r\nqueues:{queues}\r\nlocks:{locks}\r\nlock_waiters:{waiters}\r\n{info}",
                        if self.target.nodes.is_some() {
                            "redis-cluster"
                        } else {
                            "redis"
                        }
                    )
                    .into_bytes()
                    .into(),
                ))
            }
            "QCREATE" | "QCONFIG" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut sargs: Vec<Vec<u8>> = if cmd == "QCREATE" {
                    vec![b"create".to_vec(), b"1".to_vec(), q.as_bytes().to_vec()]
                } else {
                    vec![b"config".to_vec()]
                };
                while let Some(opt) = a.next() {
                    let field = if is(opt, "MAXSIZE") {
                        "maxsize"
                    } else if is(opt, "KIND") && cmd == "QCREATE" {
                        "kind"
                    } else if is(opt, "LEASE") {
                        "lease_timeout"
                    } else if is(opt, "MAXATTEMPTS") {
                        "max_attempts"
                    } else if is(opt, "DEADLETTER") {
                        "dead_letter"
                    } else if is(opt, "EXPIRE") {
                        "expire"
                    } else {
                        return Err(unknown(opt, &cmd));
                    };
                    let value = a.require(field)?.to_vec();
                    if field == "kind"
                        && !matches!(value.as_slice(), b"fifo" | b"lifo" | b"priority")
                    {
                        return Err(server("ERR", "KIND is fifo, lifo or priority"));
                    }
                    sargs.push(field.as_bytes().to_vec());
                    sargs.push(value);
                }
                let keys = queue_keys(&q, b"-");
                done(self.change(&QUEUE, &keys, &sargs).await?)
            }
            "QPUT" | "QPUTMANY" => self.put(&cmd, &mut a, cancel).await,
            "QGET" => self.get(&mut a, cancel).await,
            "QDONE" => {
                let (keys, sargs) = self.done_call(rest)?;
                let mut resends = Resends::new();
                loop {
                    let v = self.change(&QUEUE, &keys, &sargs).await?;
                    if self.settled(&keys[0]).await {
                        self.remember_done(rest);
                        return done(v);
                    }
                    // Its primary turned replica: the done may be lost
                    // with it (and the message stay leased to a holder
                    // that lives on). Sent again, it finishes what is
                    // still held, and nothing twice.
                    resends.pause().await?;
                }
            }
            "QNACK" | "QTOUCH" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let id = a.number("id")?;
                let mut ms = if cmd == "QTOUCH" {
                    self.target.lease.as_millis() as u64
                } else {
                    0
                };
                let mut unstarted = false;
                while let Some(opt) = a.next() {
                    if (is(opt, "DELAY") && cmd == "QNACK") || (is(opt, "LEASE") && cmd == "QTOUCH")
                    {
                        ms = a.number("ms")?;
                    } else if is(opt, "UNSTARTED") && cmd == "QNACK" {
                        unstarted = true;
                    } else {
                        return Err(unknown(opt, &cmd));
                    }
                }
                if unstarted && ms > 0 {
                    return Err(server("ERR", "QNACK takes UNSTARTED or DELAY, not both"));
                }
                let op: &[u8] = if cmd == "QNACK" { b"nack" } else { b"touch" };
                let mut sargs = vec![
                    op.to_vec(),
                    self.holder.as_bytes().to_vec(),
                    id.to_string().into_bytes(),
                    ms.to_string().into_bytes(),
                ];
                if unstarted {
                    sargs.push(b"unstarted".to_vec());
                }
                let keys = queue_keys(&q, b"-");
                let v = self.change(&QUEUE, &keys, &sargs).await?;
                if cmd == "QNACK" {
                    move_dead_letters(&mut self.conn, &q).await.map_err(io)?;
                }
                done(v)
            }
            "QJOIN" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut wait = None;
                while let Some(opt) = a.next() {
                    if !wait_option(opt, &mut a, &mut wait)? {
                        return Err(unknown(opt, &cmd));
                    }
                }
                let keys = queue_keys(&q, b"-");
                let w = Waiting::on_queue(Kind::Join, q, keys, vec![b"join".to_vec()]);
                self.wait(w, wait, cancel).await
            }
            "QLEN" | "QINFO" | "QPURGE" | "QDROP" | "QREOPEN" | "QSHUTDOWN" | "QPEEK" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut sargs: Vec<Vec<u8>> = vec![match cmd.as_str() {
                    "QLEN" => b"len".to_vec(),
                    "QINFO" => b"info".to_vec(),
                    "QPURGE" => b"purge".to_vec(),
                    "QDROP" => b"drop".to_vec(),
                    "QREOPEN" => b"reopen".to_vec(),
                    "QPEEK" => b"peek".to_vec(),
                    _ => b"shutdown".to_vec(),
                }];
                match cmd.as_str() {
                    "QSHUTDOWN" => {
                        let immediate = match a.next() {
                            None => false,
                            Some(w) if is(w, "IMMEDIATE") => true,
                            Some(w) => return Err(unknown(w, &cmd)),
                        };
                        sargs.push(if immediate {
                            b"1".to_vec()
                        } else {
                            b"0".to_vec()
                        });
                    }
                    "QPEEK" => {
                        let mut count = 1;
                        while let Some(opt) = a.next() {
                            if is(opt, "COUNT") {
                                count = a.number("COUNT")?;
                            } else {
                                return Err(unknown(opt, &cmd));
                            }
                        }
                        sargs.push(count.to_string().into_bytes());
                        sargs.push(q.as_bytes().to_vec());
                    }
                    "QINFO" => sargs.push(q.as_bytes().to_vec()),
                    _ => {}
                }
                let keys = queue_keys(&q, b"-");
                let v = self.change(&QUEUE, &keys, &sargs).await?;
                done(match (cmd.as_str(), v) {
                    ("QINFO", Value::Array(flat)) => info_map(flat),
                    (_, v) => v,
                })
            }
            "QLIST" => {
                let mut names: Vec<String> = self
                    .scan("ferry:{*}:m")
                    .await?
                    .iter()
                    .filter_map(|k| {
                        k.strip_prefix("ferry:{")?
                            .strip_suffix("}:m")
                            .map(str::to_string)
                    })
                    .collect();
                names.sort();
                done(Value::Array(
                    names
                        .into_iter()
                        .map(|n| Value::Bulk(n.into_bytes().into()))
                        .collect(),
                ))
            }
            "LOCK" => {
                let name = check_name(a.require("lock name")?)?.to_string();
                let mut ttl = None;
                let mut wait = None;
                while let Some(opt) = a.next() {
                    if is(opt, "TTL") {
                        ttl = Some(a.number("TTL")?).filter(|&t| t > 0);
                    } else if !wait_option(opt, &mut a, &mut wait)? {
                        return Err(unknown(opt, &cmd));
                    }
                }
                let keys = lock_keys(&name);
                let bound = ttl.is_none();
                let ttl = ttl.unwrap_or(self.target.lease.as_millis() as u64);
                let w = Waiting {
                    kind: Kind::Lock,
                    script: &LOCK,
                    inbox: format!("ferry:lock:{{{name}}}:w:").into_bytes(),
                    queue: String::new(),
                    resendable: false,
                    keys,
                    args: vec![
                        b"acquire".to_vec(),
                        self.holder.as_bytes().to_vec(),
                        ttl.to_string().into_bytes(),
                    ],
                };
                let (v, cancelled) = self.wait(w, wait, cancel).await?;
                if bound && let Value::Int(token) = v {
                    renew::hold_lock(&self.target, &self.holder, &name, token as u64);
                }
                Ok((v, cancelled))
            }
            "LOCKED" => {
                let name = check_name(a.require("lock name")?)?.to_string();
                let token = a.number("token")?;
                let sargs = vec![b"held".to_vec(), token.to_string().into_bytes()];
                done(self.change(&LOCK, &lock_keys(&name), &sargs).await?)
            }
            "UNLOCK" => {
                let name = check_name(a.require("lock name")?)?.to_string();
                let token = a.number("token")?;
                let keys = lock_keys(&name);
                renew::drop_lock(&self.target, &self.holder, &name, token);
                let sargs = vec![b"release".to_vec(), token.to_string().into_bytes()];
                done(self.change(&LOCK, &keys, &sargs).await?)
            }
            _ => Err(server(
                "ERR",
                &format!("unknown command '{cmd}' on the Redis backend"),
            )),
        }
    }

    /// Every key matching `pattern` (SCAN; braces are not special in
    /// its glob).
    async fn scan(&mut self, pattern: &str) -> Result<Vec<String>, Error> {
        self.conn.scan(pattern).await.map_err(io)
    }

    async fn put(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let q = check_name(a.require("queue")?)?.to_string();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        if cmd == "QPUT" {
            payloads.push(a.require("payload")?.to_vec());
        }
        let (mut key, mut keytype, mut delay, mut wait, mut dedup) =
            (Vec::new(), Vec::new(), 0u64, None, None);
        // A key's own window, shorter than the broker's.
        let mut dedup_for = None;
        while let Some(opt) = a.next() {
            if is(opt, "PRIORITY") {
                let v = a.require("PRIORITY")?;
                let n: i64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| server("ERR", "PRIORITY must be an integer"))?;
                key = priority_key(n);
            } else if is(opt, "PRIOKEY") {
                key = a.require("PRIOKEY")?.to_vec();
            } else if is(opt, "KEYTYPE") {
                keytype = a.require("KEYTYPE")?.to_vec();
            } else if is(opt, "DELAY") {
                delay = a.number("DELAY")?;
            } else if is(opt, "DEDUP") && cmd == "QPUT" {
                dedup = Some(a.require("DEDUP")?.to_vec());
            } else if is(opt, "DEDUPFOR") && cmd == "QPUT" {
                dedup_for = Some(a.number("DEDUPFOR")?.clamp(1, DEDUP_WINDOW_MS));
            } else if is(opt, "PAYLOADS") && cmd == "QPUTMANY" {
                while let Some(p) = a.next() {
                    payloads.push(p.to_vec());
                }
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, cmd));
            }
        }
        if payloads.is_empty() {
            return Err(server("ERR", "no payloads"));
        }
        if dedup_for.is_some() && dedup.is_none() {
            return Err(server("ERR", "DEDUPFOR needs a DEDUP key"));
        }
        let own = match &dedup {
            Some(k) => {
                let mut o = b"dd:".to_vec();
                o.extend_from_slice(k);
                o
            }
            None => b"-".to_vec(),
        };
        let keys = queue_keys(&q, &own);
        let mut args = vec![
            b"put".to_vec(),
            key,
            keytype,
            delay.to_string().into_bytes(),
            if dedup.is_some() {
                dedup_for
                    .unwrap_or(DEDUP_WINDOW_MS)
                    .to_string()
                    .into_bytes()
            } else {
                b"0".to_vec()
            },
        ];
        args.extend(payloads);
        let mut w = Waiting::on_queue(Kind::Put, q, keys, args);
        w.resendable = dedup.is_some();
        let (v, cancelled) = self.wait(w, wait, cancel).await?;
        // QPUT replies one id; QPUTMANY the array.
        let v = match (cmd, v) {
            ("QPUT", Value::Array(mut ids)) if ids.len() == 1 => ids.remove(0),
            (_, v) => v,
        };
        Ok((v, cancelled))
    }

    async fn get(
        &mut self,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let mut queues = vec![check_name(a.require("queue")?)?.to_string()];
        let (mut count, mut wait, mut mode, mut lease) =
            (1u64, None, "lease", self.target.lease.as_millis() as u64);
        while let Some(opt) = a.next() {
            if is(opt, "OR") {
                queues.push(check_name(a.require("queue")?)?.to_string());
            } else if is(opt, "COUNT") {
                count = a.number("COUNT")?.max(1);
            } else if is(opt, "LEASE") {
                mode = "timed";
                lease = a.number("LEASE")?;
            } else if is(opt, "TAKE") {
                mode = "take";
            } else if is(opt, "NOACK") {
                mode = "noack";
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, "QGET"));
            }
        }
        if queues.len() > 1 {
            return self.get_any(queues, count, mode, lease, wait, cancel).await;
        }
        let q = queues.remove(0);
        // Renewed while it holds or waits here: its heartbeat.
        renew::hold_queue(&self.target, &self.holder, &q);
        let keys = queue_keys(&q, b"-");
        let args = vec![
            b"get".to_vec(),
            count.to_string().into_bytes(),
            mode.as_bytes().to_vec(),
            self.holder.as_bytes().to_vec(),
            lease.to_string().into_bytes(),
            q.as_bytes().to_vec(),
            self.heartbeat(),
        ];
        let w = Waiting::on_queue(Kind::Get, q, keys, args);
        self.wait(w, wait, cancel).await
    }

    /// QGET a OR b ...: each queue in turn, first to last. To wait it
    /// watches every queue (not in their lines: it could be handed two
    /// messages) and sleeps until one publishes a wake-up (something became
    /// ready, or a shutdown), until time alone may change something, or
    /// until its wait ends; then it tries again.
    async fn get_any(
        &mut self,
        queues: Vec<String>,
        count: u64,
        mode: &str,
        lease: u64,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        use futures_util::StreamExt;
        let deadline = wait.map(|w| Instant::now() + w);
        tokio::pin!(cancel);
        let mut cancelled = false;
        let waiter = self.waiter();
        let mut sub: Option<redis::aio::PubSub> = None;
        let result = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let may_wait = !cancelled && left != Some(Duration::ZERO);
            let nap = left
                .unwrap_or(Duration::from_secs(10))
                .min(Duration::from_secs(10));
            // Subscribed and watching before the tries: a put between a try
            // and the sleep still wakes it.
            let mut hint = u64::MAX;
            if may_wait {
                if sub.is_none() {
                    let mut p = self.engine.pubsub(&self.target).await.map_err(io)?;
                    p.subscribe(format!("ferry:wake:{}", String::from_utf8_lossy(&waiter)))
                        .await
                        .map_err(io)?;
                    sub = Some(p);
                }
                for q in &queues {
                    let args = [
                        b"watch".to_vec(),
                        waiter.clone(),
                        nap.as_millis().to_string().into_bytes(),
                    ];
                    if let redis::Value::Int(ms) =
                        self.script(&QUEUE, &queue_keys(q, b"-"), &args).await?
                    {
                        hint = hint.min(ms.max(1) as u64);
                    }
                }
            }
            let mut shut = 0;
            let mut got = None;
            for q in &queues {
                renew::hold_queue(&self.target, &self.holder, q);
                let keys = queue_keys(q, b"-");
                let args = vec![
                    b"get".to_vec(),
                    Vec::new(),
                    b"0".to_vec(),
                    count.to_string().into_bytes(),
                    mode.as_bytes().to_vec(),
                    self.holder.as_bytes().to_vec(),
                    lease.to_string().into_bytes(),
                    q.as_bytes().to_vec(),
                    self.heartbeat(),
                ];
                match self
                    .script(&QUEUE, &keys, &args)
                    .await
                    .and_then(|v| get_reply(q, v))
                {
                    Ok(Value::Nil) => {}
                    Err(Error::ShutDown) => shut += 1,
                    other => {
                        got = Some(other);
                        break;
                    }
                }
            }
            if let Some(r) = got {
                break r.map(|v| (v, cancelled));
            }
            if shut == queues.len() {
                break Err(Error::ShutDown);
            }
            let Some(p) = sub.as_mut().filter(|_| may_wait) else {
                break Ok((Value::Nil, cancelled));
            };
            let sleep = nap.min(Duration::from_millis(hint));
            let mut wakes = p.on_message();
            tokio::select! {
                _ = wakes.next() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = &mut cancel, if !cancelled => cancelled = true,
            }
        };
        if sub.is_some() {
            for q in &queues {
                let args = [b"unwatch".to_vec(), waiter.clone()];
                let _ = self.script(&QUEUE, &queue_keys(q, b"-"), &args).await;
            }
        }
        result
    }

    /// How long this process's holders live unrenewed (`?lease`).
    fn heartbeat(&self) -> Vec<u8> {
        self.target.lease.as_millis().to_string().into_bytes()
    }

    /// A name for one wait, unique: the holder (a group's token is shared
    /// by its clients, so this client's number too) and a count.
    fn waiter(&mut self) -> Vec<u8> {
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
    async fn wait(
        &mut self,
        w: Waiting,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let mut resends = Resends::new();
        if wait == Some(Duration::ZERO) {
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
        let waiter = self.waiter();
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

/// Moves queue `q`'s dead letters into its dead-letter queue (another
/// queue, maybe on another shard: two scripts, made safe to repeat by a
/// DEDUP key per letter). Run after a nack, and by the renewer for the
/// queues its process holds messages of (for leases that ran out).
pub(crate) async fn move_dead_letters(conn: &mut RConn, q: &str) -> Result<(), redis::RedisError> {
    loop {
        let popped: Vec<Vec<u8>> = QUEUE
            .call(
                conn,
                &queue_keys(q, b"-"),
                &[b"dead_pop".to_vec(), b"100".to_vec()],
            )
            .await?;
        let Some((dlq, rest)) = popped.split_first() else {
            return Ok(());
        };
        if rest.is_empty() {
            return Ok(());
        }
        let dlq = String::from_utf8_lossy(dlq).into_owned();
        for letter in rest.chunks(3) {
            let [id, attempts, payload] = letter else {
                continue;
            };
            let mut own = b"dd:dl:".to_vec();
            own.extend_from_slice(q.as_bytes());
            own.push(b':');
            own.extend_from_slice(id);
            QUEUE
                .call::<i64>(
                    conn,
                    &queue_keys(&dlq, &own),
                    &[b"put_dead".to_vec(), attempts.clone(), payload.clone()],
                )
                .await?;
        }
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
fn primary_moved(e: &Error) -> bool {
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
struct Resends {
    give_up: Instant,
    pause: Duration,
}

impl Resends {
    fn new() -> Resends {
        Resends {
            give_up: Instant::now() + Duration::from_secs(30),
            pause: Duration::from_millis(50),
        }
    }

    async fn pause(&mut self) -> Result<(), Error> {
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

/// This client's own holder token: unguessable enough, and unique.
fn own_token(id: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("c-{:x}-{:x}-{id:x}", std::process::id(), nanos)
}

/// QINFO's flat array as the broker's map.
fn info_map(flat: Vec<Value>) -> Value {
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let v = match (&k, v) {
            (Value::Bulk(k), Value::Int(n)) if &k[..] == b"full" || &k[..] == b"empty" => {
                Value::Bool(n != 0)
            }
            (_, v) => v,
        };
        pairs.push((k, v));
    }
    Value::Map(pairs)
}
