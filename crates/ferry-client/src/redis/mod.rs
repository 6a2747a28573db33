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

mod commands;
mod conn;
pub(crate) mod renew;
mod sync;
mod wait;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::Value;
use tokio::time::Instant;

use self::conn::{Engine, Lib, RConn};
use self::wait::primary_moved;
use crate::Error;

/// The queue library's code: one library in three files (queue.lua).
const QUEUE_CODE: &str = concat!(
    include_str!("queue.lua"),
    include_str!("queue_flow.lua"),
    include_str!("queue_ops.lua")
);
static QUEUE: LazyLock<Lib> = LazyLock::new(|| Lib::new("ferry_queue", QUEUE_CODE));
static LOCK: LazyLock<Lib> = LazyLock::new(|| Lib::new("ferry_lock", include_str!("lock.lua")));
static SYNC: LazyLock<Lib> = LazyLock::new(|| Lib::new("ferry_sync", include_str!("sync.lua")));

/// How long a done is kept to be sent again after an upheaval: longer
/// than a failover takes (Redis's cluster-node-timeout is 15 s).
const RECENT_DONES: Duration = Duration::from_secs(60);

/// At most this many ids are kept (~40 bytes each): a consumer finishing
/// 10,000 a second keeps its last 20 s.
const RECENT_DONES_KEPT: usize = 200_000;

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

/// The keys of semaphore, event, condition or barrier `name` (`kind`
/// sem, ev, cond or bar; see sync.lua).
fn sync_keys(kind: &str, name: &str) -> Vec<Vec<u8>> {
    let p = format!("ferry:{kind}:{{{name}}}");
    [
        "", ":seq", ":line", ":req", ":mail", ":mailx", ":held", ":order",
    ]
    .iter()
    .map(|s| format!("{p}{s}").into_bytes())
    .collect()
}

use crate::request::{check_name, error_value, is, server};

fn io(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return Error::Io(std::io::Error::other(e.to_string()));
    }
    match e.code() {
        Some(code) => error_value(code, e.detail().unwrap_or("")),
        None => Error::Protocol(e.to_string()),
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
            None => crate::holder_token(id),
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
