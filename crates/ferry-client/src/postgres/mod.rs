//! The PostgreSQL backend (`postgres://`, `postgresql://`): ferry's
//! commands answered by SQL functions in a schema of ferry's own
//! (schema.sql), one call per operation, claims with `FOR UPDATE SKIP
//! LOCKED`, waits on LISTEN/NOTIFY.
//!
//! Built in steps (issue 28); what this step answers is the queue's core:
//! QPUT and QPUTMANY (unbounded queues: a queue is made by first use as a
//! fifo), QGET of one queue in every mode (waiting without polling),
//! QDONE, QNACK, QLEN, QJOIN, QINFO's counts, QDROP, QLIST, PING. Any
//! other command is refused with an error that names it — never answered
//! half. docs/backends.md keeps the list.
//!
//! - The schema is installed on first use, in one transaction under an
//!   advisory lock, and versioned (`ferry.schema_version`): a database
//!   whose schema is newer than this client's is refused, not touched.
//! - Leases: as on Redis, a get's lease is bound to its holder (this
//!   client), kept alive in `ferry.holders` by a heartbeat every third of
//!   `?lease=ms` (5 s by default); a client that is dropped gives back
//!   what it holds at once, one that dies once its heartbeat is overdue.
//! - Waiting: a second connection LISTENs on the queue's channel before
//!   the first try; every change that may end a wait notifies it when its
//!   transaction commits. Between notifications it sleeps until time alone
//!   may change something (a delay comes due, a lease runs out), at most
//!   10 s. Waiters are not yet served first come, first served.

pub(crate) mod background;
mod listen;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::Value;
use tokio::time::Instant;
use tokio_postgres::NoTls;

use self::listen::Listener;
use crate::Error;
use crate::request::{Args, Get, Put, check_name, error_value, is, server, unknown, wait_option};

/// The schema this client installs and speaks.
const SCHEMA_VERSION: i32 = 1;
const SCHEMA: &str = include_str!("schema.sql");

/// The default heartbeat (`?lease`), as on Redis.
const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// The longest a wait sleeps before it tries again unprompted (a lost
/// notification costs at most this).
const NAP: Duration = Duration::from_secs(10);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A PostgreSQL server and how to use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given, without ferry's options.
    pub url: String,
    /// The heartbeat of this client's holders (`?lease=ms`).
    pub lease: Duration,
}

impl Target {
    /// Parses `postgres://[user[:password]@]host[:port][/dbname][?param=value&...]`
    /// (libpq's URL, `postgresql://` too; `host=/dir` for a Unix socket)
    /// with ferry's own `lease=ms`.
    pub(crate) fn parse(s: &str) -> Result<Target, Error> {
        let bad = |why: &str| Error::Url(format!("{}: {why}", redact(s)));
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let mut lease = DEFAULT_LEASE;
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("lease", ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| bad("lease must be milliseconds"))?;
                    if ms < 100 {
                        return Err(bad("lease must be at least 100 ms"));
                    }
                    lease = Duration::from_millis(ms);
                }
                Some(("sslmode", mode)) if !matches!(mode, "disable" | "prefer" | "allow") => {
                    return Err(bad(
                        "TLS to PostgreSQL is not supported yet: sslmode=disable or prefer",
                    ));
                }
                _ => kept.push(kv),
            }
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        url.parse::<tokio_postgres::Config>()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Target { url, lease })
    }

    fn config(&self) -> Result<tokio_postgres::Config, Error> {
        self.url
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Url(e.to_string()))
    }
}

/// A URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// What a wait waits for.
enum Want<'a> {
    /// Messages of a get.
    Got(&'a Get),
    /// Nothing unfinished (QJOIN).
    Joined,
}

/// One client's use of a PostgreSQL server.
pub(crate) struct PgLink {
    target: Target,
    db: Arc<tokio_postgres::Client>,
    /// Who holds what this client gets.
    holder: String,
    listener: Option<Listener>,
    heartbeat: tokio::task::JoinHandle<()>,
    pub(crate) max_payload: Option<usize>,
}

impl Drop for PgLink {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // What it holds goes back at once, on the PostgreSQL thread (a
        // blocking client's runtime goes with it); if that fails, its
        // heartbeat runs out instead.
        if let Ok(rt) = background::handle() {
            let (db, holder) = (self.db.clone(), self.holder.clone());
            rt.spawn(async move {
                let _ = db.execute("SELECT ferry.release($1)", &[&holder]).await;
            });
        }
    }
}

/// A driver's error as ferry's: a lost connection is `Io` (the client
/// reconnects), an error the functions raise is the broker's error.
fn db_error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let msg = db.message();
        if db.code() == &tokio_postgres::error::SqlState::RAISE_EXCEPTION
            && let Some((code, rest)) = msg.split_once(' ')
            && code.bytes().all(|b| b.is_ascii_uppercase())
        {
            return error_value(code, rest);
        }
        if db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD
            || db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return Error::Auth(msg.to_string());
        }
        return server("ERR", &format!("PostgreSQL: {msg}"));
    }
    Error::Io(std::io::Error::other(e.to_string()))
}

/// Connects; the connection is driven on the process's PostgreSQL
/// thread (background.rs).
async fn connect(target: &Target) -> Result<tokio_postgres::Client, Error> {
    let (client, conn) = target.config()?.connect(NoTls).await.map_err(db_error)?;
    background::handle()?.spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Installs or checks the schema: its version read without a lock when
/// it is current, else under an advisory lock in one transaction.
async fn ensure_schema(db: &mut tokio_postgres::Client) -> Result<(), Error> {
    let current = |v: Option<i32>| -> Result<bool, Error> {
        match v {
            Some(v) if v == SCHEMA_VERSION => Ok(true),
            Some(v) if v > SCHEMA_VERSION => Err(server(
                "ERR",
                &format!(
                    "the database's ferry schema is version {v}, newer than this client's \
                     ({SCHEMA_VERSION}): upgrade the client"
                ),
            )),
            _ => Ok(false),
        }
    };
    const VERSION: &str = "SELECT max(version) FROM ferry.schema_version";
    if let Ok(row) = db.query_one(VERSION, &[]).await
        && current(row.get(0))?
    {
        return Ok(());
    }
    let tx = db.transaction().await.map_err(db_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('ferry.schema'))",
        &[],
    )
    .await
    .map_err(db_error)?;
    let installed = tx
        .query_one(
            "SELECT to_regclass('ferry.schema_version') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_error)?
        .get::<_, bool>(0);
    if installed {
        let row = tx.query_one(VERSION, &[]).await.map_err(db_error)?;
        if current(row.get(0))? {
            return Ok(());
        }
        return Err(server(
            "ERR",
            "the database's ferry schema is older than this client knows how to migrate",
        ));
    }
    tx.batch_execute(SCHEMA).await.map_err(db_error)?;
    tx.execute(
        "INSERT INTO ferry.schema_version (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgLink {
    pub(crate) async fn open(target: &Target, holder: Option<&str>) -> Result<Box<PgLink>, Error> {
        let mut db = connect(target).await?;
        ensure_schema(&mut db).await?;
        let holder = holder.map_or_else(
            || crate::holder_token(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            str::to_string,
        );
        let db = Arc::new(db);
        // Alive before it holds anything, then every third of the lease.
        let lease = ms(target.lease);
        db.execute("SELECT ferry.renew($1, $2)", &[&holder, &lease])
            .await
            .map_err(db_error)?;
        let heartbeat = {
            let (db, holder, every) = (Arc::downgrade(&db), holder.clone(), target.lease / 3);
            background::handle()?.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(db) = db.upgrade() else { return };
                    let _ = db
                        .execute("SELECT ferry.renew($1, $2)", &[&holder, &lease])
                        .await;
                }
            })
        };
        Ok(Box::new(PgLink {
            target: target.clone(),
            db,
            holder,
            listener: None,
            heartbeat,
            // bytea's limit.
            max_payload: Some((1 << 30) - 1),
        }))
    }

    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        let never = std::future::pending::<()>();
        self.call_cancellable(args, never).await.map(|(v, _)| v)
    }

    /// Each command in turn (a pipeline's replies, in order).
    pub(crate) async fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        let mut replies = Vec::with_capacity(commands.len());
        for c in commands {
            match self.call(c).await {
                Err(Error::Io(e)) => return Err(Error::Io(e)),
                r => replies.push(r),
            }
        }
        Ok(replies)
    }

    /// Answers one ferry command; a command that waits gives up when
    /// `cancel` resolves, as a timeout would (each try is one call in a
    /// transaction of its own: nothing half done is left).
    pub(crate) async fn call_cancellable(
        &mut self,
        args: &[&[u8]],
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let (cmd, mut a) = Args::command(args)?;
        let done = |v: Value| Ok((v, false));
        match cmd.as_str() {
            "PING" => done(match a.next() {
                Some(m) => Value::Bulk(m.to_vec().into()),
                None => Value::Simple("PONG".into()),
            }),
            "QPUT" | "QPUTMANY" => done(self.put(&cmd, &mut a).await?),
            "QGET" => self.get(&mut a, cancel).await,
            "QDONE" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut ids = Vec::new();
                while let Some(id) = a.next() {
                    ids.push(
                        std::str::from_utf8(id)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                            .ok_or_else(|| server("ERR", "an id is a whole number"))?,
                    );
                }
                let row = self
                    .db
                    .query_one("SELECT ferry.done($1, $2, $3)", &[&q, &ids, &self.holder])
                    .await
                    .map_err(db_error)?;
                done(Value::Int(i64::from(row.get::<_, i32>(0))))
            }
            "QNACK" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let id = a.number("id")? as i64;
                let (mut delay, mut unstarted) = (0u64, false);
                while let Some(opt) = a.next() {
                    if is(opt, "DELAY") {
                        delay = a.number("DELAY")?;
                    } else if is(opt, "UNSTARTED") {
                        unstarted = true;
                    } else {
                        return Err(unknown(opt, "QNACK"));
                    }
                }
                let delay = delay as i64;
                self.db
                    .execute(
                        "SELECT ferry.nack($1, $2, $3, $4, $5)",
                        &[&q, &id, &self.holder, &delay, &unstarted],
                    )
                    .await
                    .map_err(db_error)?;
                done(Value::Simple("OK".into()))
            }
            "QLEN" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let row = self
                    .db
                    .query_one("SELECT qsize FROM ferry.info($1)", &[&q])
                    .await
                    .map_err(db_error)?;
                done(Value::Int(row.get(0)))
            }
            "QINFO" => done(self.info(check_name(a.require("queue")?)?).await?),
            "QJOIN" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut wait = None;
                while let Some(opt) = a.next() {
                    if !wait_option(opt, &mut a, &mut wait)? {
                        return Err(unknown(opt, "QJOIN"));
                    }
                }
                self.join(&q, wait, cancel).await
            }
            "QDROP" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let row = self
                    .db
                    .query_one(
                        "WITH m AS (DELETE FROM ferry.messages WHERE queue = $1), \
                         q AS (DELETE FROM ferry.queues WHERE name = $1 RETURNING 1) \
                         SELECT count(*) FROM q",
                        &[&q],
                    )
                    .await
                    .map_err(db_error)?;
                done(Value::Int(row.get(0)))
            }
            "QLIST" => {
                let rows = self
                    .db
                    .query(
                        "SELECT name FROM ferry.queues ORDER BY name COLLATE \"C\"",
                        &[],
                    )
                    .await
                    .map_err(db_error)?;
                done(Value::Array(
                    rows.iter()
                        .map(|r| Value::Bulk(r.get::<_, String>(0).into_bytes().into()))
                        .collect(),
                ))
            }
            _ => Err(server(
                "ERR",
                &format!(
                    "{cmd} is not answered on postgres:// yet (docs/backends.md lists what is)"
                ),
            )),
        }
    }

    async fn put(&mut self, cmd: &str, a: &mut Args<'_>) -> Result<Value, Error> {
        let p = Put::parse(cmd, a)?;
        let (delay, dedup_ms) = (p.delay_ms as i64, p.dedup_ms as i64);
        let rows = self
            .db
            .query(
                "SELECT ferry.put($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &p.queue,
                    &p.payloads,
                    &p.key,
                    &delay,
                    &p.keytype,
                    &p.dedup,
                    &dedup_ms,
                ],
            )
            .await
            .map_err(db_error)?;
        let mut ids: Vec<Value> = rows.iter().map(|r| Value::Int(r.get(0))).collect();
        Ok(if cmd == "QPUT" && ids.len() == 1 {
            ids.remove(0)
        } else {
            Value::Array(ids)
        })
    }

    /// One try of a get: its entries, if any.
    async fn try_get(&self, q: &str, g: &Get) -> Result<Option<Value>, Error> {
        let n = i32::try_from(g.count).unwrap_or(i32::MAX);
        let lease = g.lease_ms as i64;
        let rows = self
            .db
            .query(
                "SELECT id, payload, attempts FROM ferry.get($1, $2, $3, $4, $5)",
                &[&q, &n, &g.mode, &self.holder, &lease],
            )
            .await
            .map_err(db_error)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let queue = Value::Bulk(q.as_bytes().to_vec().into());
        Ok(Some(Value::Array(
            rows.iter()
                .map(|r| {
                    Value::Array(vec![
                        queue.clone(),
                        Value::Int(r.get(0)),
                        Value::Bulk(r.get::<_, Vec<u8>>(1).into()),
                        Value::Int(i64::from(r.get::<_, i32>(2))),
                    ])
                })
                .collect(),
        )))
    }

    async fn get(
        &mut self,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let g = Get::parse(a, self.target.lease)?;
        let [q] = g.queues.as_slice() else {
            return Err(server(
                "ERR",
                "QGET of several queues (OR) is not answered on postgres:// yet",
            ));
        };
        let q = q.clone();
        let (found, cancelled) = self.wait_for(&q, g.wait, cancel, Want::Got(&g)).await?;
        Ok((found.unwrap_or(Value::Nil), cancelled))
    }

    async fn join(
        &mut self,
        q: &str,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let (joined, cancelled) = self.wait_for(q, wait, cancel, Want::Joined).await?;
        Ok((joined.unwrap_or(Value::Nil), cancelled))
    }

    /// One try at what a wait wants: its reply once it has it.
    async fn attempt(&self, q: &str, want: &Want<'_>) -> Result<Option<Value>, Error> {
        match want {
            Want::Got(g) => self.try_get(q, g).await,
            Want::Joined => {
                let row = self
                    .db
                    .query_one("SELECT unfinished FROM ferry.info($1)", &[&q])
                    .await
                    .map_err(db_error)?;
                Ok((row.get::<_, i64>(0) == 0).then(|| Value::Simple("OK".into())))
            }
        }
    }

    /// Tries until it has what it wants, `wait` passes (`None`: never,
    /// zero: one try) or `cancel` resolves (then true): listening on `q`'s
    /// channel before each try, so that a change committed after the try
    /// wakes it.
    async fn wait_for(
        &mut self,
        q: &str,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
        want: Want<'_>,
    ) -> Result<(Option<Value>, bool), Error> {
        let deadline = wait.map(|w| Instant::now() + w);
        tokio::pin!(cancel);
        loop {
            let may_wait = deadline.is_none_or(|d| d > Instant::now());
            let mut woken = match (may_wait, &mut self.listener) {
                (false, _) => None,
                (true, Some(l)) if l.alive() => Some(l.listen(q).await?),
                (true, _) => {
                    let mut l = Listener::open(&self.target).await?;
                    let w = l.listen(q).await?;
                    self.listener = Some(l);
                    Some(w)
                }
            };
            if let Some(reply) = self.attempt(q, &want).await? {
                return Ok((Some(reply), false));
            }
            let Some(woken) = woken.as_mut() else {
                return Ok((None, false));
            };
            let row = self
                .db
                .query_one("SELECT ferry.next_change_ms($1)", &[&q])
                .await
                .map_err(db_error)?;
            let mut nap = row
                .get::<_, Option<i64>>(0)
                .map_or(NAP, |ms| Duration::from_millis(ms.max(1) as u64))
                .min(NAP);
            if let Some(d) = deadline {
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = woken.changed() => {}
                _ = tokio::time::sleep(nap) => {}
                _ = &mut cancel => return Ok((None, true)),
            }
        }
    }

    async fn info(&self, q: &str) -> Result<Value, Error> {
        let kind = self
            .db
            .query_opt("SELECT kind FROM ferry.queues WHERE name = $1", &[&q])
            .await
            .map_err(db_error)?
            .ok_or_else(|| server("NOQUEUE", &format!("no queue {q}")))?
            .get::<_, String>(0);
        let row = self
            .db
            .query_one("SELECT * FROM ferry.info($1)", &[&q])
            .await
            .map_err(db_error)?;
        let field = |name: &str, v: Value| (Value::Bulk(name.as_bytes().to_vec().into()), v);
        let (qsize, unfinished) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        Ok(Value::Map(vec![
            field("name", Value::Bulk(q.as_bytes().to_vec().into())),
            field("kind", Value::Bulk(kind.into_bytes().into())),
            field("maxsize", Value::Int(0)),
            field("qsize", Value::Int(qsize)),
            field("unfinished", Value::Int(unfinished)),
            field("leased", Value::Int(row.get(2))),
            field("taken", Value::Int(row.get(3))),
            field("delayed", Value::Int(row.get(4))),
            field("full", Value::Bool(false)),
            field("empty", Value::Bool(qsize == 0)),
            field("shutdown", Value::Bulk(b"no".to_vec().into())),
        ]))
    }
}
