//! The PostgreSQL backend (`postgres://`, `postgresql://`): ferry's
//! commands answered by SQL functions in a schema of ferry's own
//! (schema.sql), one call per operation, claims with `FOR UPDATE SKIP
//! LOCKED`, waits on LISTEN/NOTIFY.
//!
//! Built in steps (issue 28); what this step answers is the queue's
//! commands (queue.rs, queue.sql), locks and events (lock.rs, lock.sql)
//! and the connection's (CLIENT, INFO, PING). Any other command is refused
//! with an error that names it — never answered half. docs/backends.md
//! keeps the list.
//!
//! - The schema is installed on first use, in one transaction under an
//!   advisory lock, and versioned (`ferry.schema_version`): a database
//!   whose schema is newer than this client's is refused, not touched.
//! - Leases: as on Redis, a get's lease is bound to its holder (this
//!   client), kept alive in `ferry.holders` by a heartbeat every third of
//!   `?lease=ms` (5 s by default); a client that is dropped gives back
//!   what it holds at once, one that dies once its heartbeat is overdue.
//! - Waiting: a command that must wait LISTENs on its queues' channels
//!   (a second connection, the client's listener) and tries again; every
//!   change that may end a wait notifies the channel when its transaction
//!   commits. Between notifications it sleeps until time alone may change
//!   something (a delay comes due, a lease runs out), at most 10 s.
//!   Waiters are not yet served first come, first served.

pub(crate) mod background;
mod listen;
mod lock;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::Value;
use tokio_postgres::NoTls;

use self::listen::Listener;
use crate::Error;
use crate::request::{Args, error_value, is, server};

/// The schema this client installs and speaks. While the engine is built
/// (issue 28) a change of the schema takes a new version and no
/// migration: a database an earlier build made is refused with a clear
/// error (drop its `ferry` schema to start afresh).
const SCHEMA_VERSION: i32 = 7;
const SCHEMA: &str = concat!(
    include_str!("schema.sql"),
    include_str!("queue.sql"),
    include_str!("lock.sql")
);

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

    /// The driver's settings: the URL's, and bounds on a connect and on
    /// a connection gone quiet (keepalives), so that no call waits for
    /// ever on a server that vanished.
    fn config(&self) -> Result<tokio_postgres::Config, Error> {
        let mut c: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Url(e.to_string()))?;
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(Duration::from_secs(10));
        }
        c.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        Ok(c)
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

/// One client's use of a PostgreSQL server.
pub(crate) struct PgLink {
    target: Target,
    db: Arc<tokio_postgres::Client>,
    /// Who holds what this client gets.
    holder: String,
    listener: Option<Listener>,
    /// This client's number (CLIENT ID's answer here).
    id: u64,
    pub(crate) max_payload: Option<usize>,
}

impl Drop for PgLink {
    fn drop(&mut self) {
        // With its holder's last client, what it holds goes back at once
        // (on the PostgreSQL thread: a blocking client's runtime goes with
        // it); if that fails, its heartbeat runs out instead.
        background::detach(&self.target, &self.holder);
    }
}

/// A driver's error as ferry's: a lost connection is `Io` (the client
/// reconnects), an error the functions raise is the broker's error.
fn db_error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let msg = db.message();
        // Connection exceptions (08) and a server that shuts down or
        // starts (57P): the connection is lost or unusable; the client
        // reconnects.
        let class = db.code().code();
        if class.starts_with("08") || class.starts_with("57P") {
            return Error::Io(std::io::Error::other(format!("PostgreSQL: {msg}")));
        }
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
            "the database's ferry schema is older than this client migrates from: while \
             the PostgreSQL engine is in progress, drop the schema `ferry` to start afresh",
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

/// `holder` alive for a lease from now, and one more client of it.
async fn live(db: &tokio_postgres::Client, target: &Target, holder: &str) -> Result<(), Error> {
    db.execute("SELECT ferry.renew($1, $2)", &[&holder, &ms(target.lease)])
        .await
        .map_err(db_error)?;
    background::attach(target, holder)?;
    Ok(())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgLink {
    pub(crate) async fn open(target: &Target, holder: Option<&str>) -> Result<Box<PgLink>, Error> {
        let mut db = connect(target).await?;
        ensure_schema(&mut db).await?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let holder = holder.map_or_else(|| crate::holder_token(id), str::to_string);
        let db = Arc::new(db);
        // Alive before it holds anything; then renewed by the process's
        // heartbeat while any of its clients lives.
        live(&db, target, &holder).await?;
        Ok(Box::new(PgLink {
            target: target.clone(),
            db,
            holder,
            listener: None,
            id,
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
        if let Some(reply) = self.connection_command(&cmd, &mut a).await {
            return reply.map(|v| (v, false));
        }
        if matches!(
            cmd.as_str(),
            "LOCK" | "UNLOCK" | "LOCKED" | "EVSET" | "EVCLEAR" | "EVISSET" | "EVWAIT"
        ) {
            return self.lock_command(&cmd, &mut a, cancel).await;
        }
        match self.queue_command(&cmd, &mut a, cancel).await {
            Some(r) => r,
            None => Err(server(
                "ERR",
                &format!(
                    "{cmd} is not answered on postgres:// yet (docs/backends.md lists what is)"
                ),
            )),
        }
    }

    /// The commands about the connection rather than a queue, answered as
    /// the broker (and the Redis engine) answer them; `None` for others.
    async fn connection_command(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
    ) -> Option<Result<Value, Error>> {
        let ok = || Value::Simple("OK".into());
        Some(Ok(match cmd {
            "PING" => match a.next() {
                Some(m) => Value::Bulk(m.to_vec().into()),
                None => Value::Simple("PONG".into()),
            },
            "ECHO" => match a.require("message") {
                Ok(m) => Value::Bulk(m.to_vec().into()),
                Err(e) => return Some(Err(e)),
            },
            "SELECT" | "AUTH" => ok(),
            "CLIENT" => match a.next() {
                Some(sub) if is(sub, "ID") => Value::Int(self.id as i64),
                Some(sub) if is(sub, "HOLDER") => {
                    return Some(match a.require("token") {
                        Ok(token) => self.set_holder(token).await.map(|()| ok()),
                        Err(e) => Err(e),
                    });
                }
                // Waits here end from the waiting side (cancel).
                Some(sub) if is(sub, "UNBLOCK") => Value::Int(0),
                _ => ok(),
            },
            "CONFIG" => Value::Array(vec![
                Value::Bulk(b"proto-max-bulk-len".to_vec().into()),
                Value::Bulk(
                    self.max_payload
                        .unwrap_or(1 << 30)
                        .to_string()
                        .into_bytes()
                        .into(),
                ),
            ]),
            "INFO" => return Some(self.info_text().await),
            _ => return None,
        }))
    }

    /// CLIENT HOLDER: this client's gets are held by `token`, shared with
    /// the other clients that name it (a process's connections).
    async fn set_holder(&mut self, token: &[u8]) -> Result<(), Error> {
        let token = std::str::from_utf8(token).map_err(|_| server("ERR", "bad token"))?;
        if token.len() < 16 {
            return Err(server(
                "ERR",
                "a holder token must be at least 16 bytes (an unguessable one)",
            ));
        }
        live(&self.db, &self.target, token).await?;
        background::detach(&self.target, &self.holder);
        self.holder = token.to_string();
        Ok(())
    }

    /// INFO's text: the engine, its queues, who waits, and its server.
    async fn info_text(&self) -> Result<Value, Error> {
        let row = self
            .db
            .query_one(
                "SELECT (SELECT count(*) FROM ferry.queues), current_setting('server_version'), \
                 (SELECT count(*) FROM ferry.waiters WHERE kind = 'lock' AND until > now()), \
                 (SELECT count(*) FROM ferry.waiters WHERE kind = 'event' AND until > now())",
                &[],
            )
            .await
            .map_err(db_error)?;
        let (queues, version) = (row.get::<_, i64>(0), row.get::<_, String>(1));
        let (locks, events) = (row.get::<_, i64>(2), row.get::<_, i64>(3));
        Ok(Value::Bulk(
            format!(
                "# ferry\r\nbackend:postgres\r\nqueues:{queues}\r\nlock_waiters:{locks}\r\n\
                 event_waiters:{events}\r\npostgres_version:{version}\r\n"
            )
            .into_bytes()
            .into(),
        ))
    }
}
