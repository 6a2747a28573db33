//! The queue's commands on PostgreSQL: each read as the broker reads it
//! (request.rs) and answered by queue.sql's functions; the commands that
//! wait (a put into a full queue, a get, a join) try, listen and try
//! again (`wait_for`).

use std::time::Duration;

use ferry_proto::Value;
use tokio::time::Instant;

use super::listen::Listener;
use super::{NAP, PgLink, db_error};
use crate::Error;
use crate::request::{Args, Get, Put, check_name, is, server, settings, unknown, wait_option};

/// What a wait waits for.
pub(super) enum Want<'a> {
    /// Room for a put.
    Room(&'a Put),
    /// Messages of a get, from the first of its queues that has some.
    Got(&'a Get),
    /// Nothing unfinished (QJOIN).
    Joined,
    /// A lock's grant (its TTL in ms, 0: none).
    Lock(&'a str, i64),
    /// An event set, or set since the generation first seen.
    Event(&'a str, Option<i64>),
}

impl Want<'_> {
    /// What its waiter is counted as.
    fn kind(&self) -> &'static str {
        match self {
            Want::Room(_) => "put",
            Want::Got(_) => "get",
            Want::Joined => "join",
            Want::Lock(..) => "lock",
            Want::Event(..) => "event",
        }
    }
}

/// One try's outcome.
enum Step {
    Done(Value),
    /// Not yet: try again when notified, or after this long at most (time
    /// alone may change something then).
    Later(Option<Duration>),
}

fn bulk(b: impl Into<Vec<u8>>) -> Value {
    Value::Bulk(b.into().into())
}

/// Entries: `[queue, id, payload, attempts]` each.
fn entries(q: &str, rows: &[tokio_postgres::Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                Value::Array(vec![
                    bulk(q.as_bytes()),
                    Value::Int(r.get(0)),
                    bulk(r.get::<_, Option<Vec<u8>>>(1).unwrap_or_default()),
                    Value::Int(i64::from(r.get::<_, i32>(2))),
                ])
            })
            .collect(),
    )
}

impl PgLink {
    /// Answers the queue's commands; `None` for any other.
    pub(super) async fn queue_command(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Option<Result<(Value, bool), Error>> {
        let done = |r: Result<Value, Error>| Some(r.map(|v| (v, false)));
        match cmd {
            "QPUT" | "QPUTMANY" => Some(self.put(cmd, a, cancel).await),
            "QGET" => Some(self.get(a, cancel).await),
            "QJOIN" => Some(self.join(a, cancel).await),
            "QCREATE" | "QCONFIG" => done(self.create(cmd, a).await),
            "QDONE" => done(self.done(a).await),
            "QNACK" | "QTOUCH" => done(self.nack_or_touch(cmd, a).await),
            "QLEN" | "QINFO" | "QPEEK" | "QPURGE" | "QSHUTDOWN" | "QREOPEN" | "QDROP" => {
                done(self.on_queue(cmd, a).await)
            }
            "QLIST" => done(self.list().await),
            _ => None,
        }
    }

    async fn create(&mut self, cmd: &str, a: &mut Args<'_>) -> Result<Value, Error> {
        let q = check_name(a.require("queue")?)?.to_string();
        let (fields, values): (Vec<&str>, Vec<String>) = settings(cmd, a)?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .unzip();
        let by_create = cmd == "QCREATE";
        self.db
            .execute(
                "SELECT ferry.create($1, $2, jsonb_object($3::text[], $4::text[]))",
                &[&q, &by_create, &fields, &values],
            )
            .await
            .map_err(db_error)?;
        Ok(Value::Simple("OK".into()))
    }

    async fn done(&mut self, a: &mut Args<'_>) -> Result<Value, Error> {
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
        Ok(Value::Int(i64::from(row.get::<_, i32>(0))))
    }

    async fn nack_or_touch(&mut self, cmd: &str, a: &mut Args<'_>) -> Result<Value, Error> {
        let q = check_name(a.require("queue")?)?.to_string();
        let id = i64::try_from(a.number("id")?).map_err(|_| server("ERR", "no such id"))?;
        let (mut ms, mut unstarted) = (None, false);
        while let Some(opt) = a.next() {
            if (is(opt, "DELAY") && cmd == "QNACK") || (is(opt, "LEASE") && cmd == "QTOUCH") {
                ms = Some(a.number("ms")? as i64);
            } else if is(opt, "UNSTARTED") && cmd == "QNACK" {
                unstarted = true;
            } else {
                return Err(unknown(opt, cmd));
            }
        }
        if cmd == "QTOUCH" {
            let row = self
                .db
                .query_one(
                    "SELECT ferry.touch($1, $2, $3, $4)",
                    &[&q, &id, &self.holder, &ms],
                )
                .await
                .map_err(db_error)?;
            return Ok(Value::Int(row.get(0)));
        }
        if unstarted && ms.is_some_and(|ms| ms > 0) {
            return Err(server("ERR", "QNACK takes UNSTARTED or DELAY, not both"));
        }
        let delay = ms.unwrap_or(0);
        self.db
            .execute(
                "SELECT ferry.nack($1, $2, $3, $4, $5)",
                &[&q, &id, &self.holder, &delay, &unstarted],
            )
            .await
            .map_err(db_error)?;
        Ok(Value::Simple("OK".into()))
    }

    /// The commands that name one queue and do not wait.
    async fn on_queue(&mut self, cmd: &str, a: &mut Args<'_>) -> Result<Value, Error> {
        let q = check_name(a.require("queue")?)?.to_string();
        let mut count: i32 = 1;
        let mut immediate = false;
        while let Some(opt) = a.next() {
            if is(opt, "COUNT") && cmd == "QPEEK" {
                count = i32::try_from(a.number("COUNT")?).unwrap_or(i32::MAX);
            } else if is(opt, "IMMEDIATE") && cmd == "QSHUTDOWN" {
                immediate = true;
            } else {
                return Err(unknown(opt, cmd));
            }
        }
        let db = &self.db;
        if matches!(cmd, "QLEN" | "QINFO" | "QPEEK") {
            // What time alone gave back (a delay come due, a lease run
            // out) is counted and shown, whether or not a get ran since.
            db.execute("SELECT ferry.reclaim($1)", &[&q])
                .await
                .map_err(db_error)?;
        }
        let one = async |sql: &str| {
            db.query_one(sql, &[&q])
                .await
                .map_err(db_error)
                .map(|row| row.get::<_, i64>(0))
        };
        Ok(match cmd {
            "QLEN" => Value::Int(one("SELECT ferry.qsize($1, NULL)").await?),
            "QINFO" => self.info(&q).await?,
            "QPEEK" => {
                let rows = db
                    .query(
                        "SELECT id, payload, attempts FROM ferry.peek($1, $2)",
                        &[&q, &count],
                    )
                    .await
                    .map_err(db_error)?;
                entries(&q, &rows)
            }
            "QPURGE" => Value::Int(one("SELECT ferry.purge($1)").await?),
            "QDROP" => Value::Int(one("SELECT ferry.drop($1)::bigint").await?),
            "QREOPEN" => {
                one("SELECT 0::bigint FROM ferry.reopen($1)").await?;
                Value::Simple("OK".into())
            }
            _ => {
                db.execute("SELECT ferry.shutdown($1, $2)", &[&q, &immediate])
                    .await
                    .map_err(db_error)?;
                Value::Simple("OK".into())
            }
        })
    }

    async fn list(&mut self) -> Result<Value, Error> {
        let rows = self
            .db
            .query(
                "SELECT name FROM ferry.queues ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(Value::Array(
            rows.iter().map(|r| bulk(r.get::<_, String>(0))).collect(),
        ))
    }

    async fn put(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let p = Put::parse(cmd, a)?;
        let q = p.queue.clone();
        let (ids, cancelled) = self.wait_for(&[q], p.wait, cancel, Want::Room(&p)).await?;
        let ids = match ids {
            Some(ids) => ids,
            None if cancelled => return Ok((Value::Nil, true)),
            None => return Err(Error::Full),
        };
        Ok(match (cmd, ids) {
            ("QPUT", Value::Array(mut ids)) if ids.len() == 1 => (ids.remove(0), false),
            (_, ids) => (ids, false),
        })
    }

    async fn get(
        &mut self,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let g = Get::parse(a, self.target.lease)?;
        let (found, cancelled) = self
            .wait_for(&g.queues, g.wait, cancel, Want::Got(&g))
            .await?;
        Ok((found.unwrap_or(Value::Nil), cancelled))
    }

    async fn join(
        &mut self,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let q = check_name(a.require("queue")?)?.to_string();
        let mut wait = None;
        while let Some(opt) = a.next() {
            if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, "QJOIN"));
            }
        }
        let (joined, cancelled) = self.wait_for(&[q], wait, cancel, Want::Joined).await?;
        Ok((joined.unwrap_or(Value::Nil), cancelled))
    }

    /// One try at what a wait wants.
    async fn attempt(&self, queues: &[String], want: &mut Want<'_>) -> Result<Step, Error> {
        match want {
            Want::Event(name, since) => {
                let row = self
                    .db
                    .query_one(
                        "SELECT is_set, generation FROM ferry.event_state($1, $2)",
                        &[name, since],
                    )
                    .await
                    .map_err(db_error)?;
                if row.get::<_, bool>(0) {
                    return Ok(Step::Done(Value::Int(1)));
                }
                since.get_or_insert(row.get::<_, i64>(1));
                Ok(Step::Later(None))
            }
            Want::Room(p) => {
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
                if rows.is_empty() {
                    return Ok(Step::Later(None));
                }
                Ok(Step::Done(Value::Array(
                    rows.iter().map(|r| Value::Int(r.get(0))).collect(),
                )))
            }
            Want::Got(g) => {
                let n = i32::try_from(g.count).unwrap_or(i32::MAX);
                let lease = g.lease_ms as i64;
                for q in queues {
                    let rows = self
                        .db
                        .query(
                            "SELECT id, payload, attempts FROM ferry.get($1, $2, $3, $4, $5)",
                            &[q, &n, &g.mode, &self.holder, &lease],
                        )
                        .await
                        .map_err(db_error)?;
                    if !rows.is_empty() {
                        return Ok(Step::Done(entries(q, &rows)));
                    }
                }
                // Nothing: every queue shut down fails the get; else it
                // waits, at most until time alone changes one of them.
                let (mut shut, mut next) = (0, None::<Duration>);
                for q in queues {
                    let row = self
                        .db
                        .query_one("SELECT shut, next_ms FROM ferry.idle($1)", &[q])
                        .await
                        .map_err(db_error)?;
                    if row.get::<_, bool>(0) {
                        shut += 1;
                    }
                    if let Some(ms) = row.get::<_, Option<i64>>(1) {
                        let d = Duration::from_millis(ms.max(1) as u64);
                        next = Some(next.map_or(d, |n| n.min(d)));
                    }
                }
                if shut == queues.len() {
                    return Err(Error::ShutDown);
                }
                Ok(Step::Later(next))
            }
            Want::Lock(name, ttl) => {
                let row = self
                    .db
                    .query_one(
                        "SELECT ferry.lock($1, $2, $3)",
                        &[&*name, &self.holder, &*ttl],
                    )
                    .await
                    .map_err(db_error)?;
                if let Some(token) = row.get::<_, Option<i64>>(0) {
                    return Ok(Step::Done(Value::Int(token)));
                }
                let row = self
                    .db
                    .query_one("SELECT ferry.lock_next_ms($1)", &[&*name])
                    .await
                    .map_err(db_error)?;
                let next = row.get::<_, Option<i64>>(0);
                Ok(Step::Later(
                    next.map(|ms| Duration::from_millis(ms.max(1) as u64)),
                ))
            }
            Want::Joined => {
                let row = self
                    .db
                    .query_one("SELECT ferry.unfinished($1)", &[&queues[0]])
                    .await
                    .map_err(db_error)?;
                if row.get::<_, i64>(0) == 0 {
                    return Ok(Step::Done(Value::Simple("OK".into())));
                }
                // Time alone may finish what is out (a taker that died).
                let row = self
                    .db
                    .query_one("SELECT next_ms FROM ferry.idle($1)", &[&queues[0]])
                    .await
                    .map_err(db_error)?;
                let next = row.get::<_, Option<i64>>(0);
                Ok(Step::Later(
                    next.map(|ms| Duration::from_millis(ms.max(1) as u64)),
                ))
            }
        }
    }

    /// Tries until it has what it wants, `wait` passes (`None`: never,
    /// zero: one try) or `cancel` resolves (then true). A try that must
    /// wait listens on the queues' channels and tries again at once, so
    /// that a change committed after that try wakes it; a command that
    /// has what it wants at the first try listens to nothing.
    pub(super) async fn wait_for(
        &mut self,
        queues: &[String],
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
        mut want: Want<'_>,
    ) -> Result<(Option<Value>, bool), Error> {
        // While it waits, it is counted (QINFO's waiting_*, INFO's
        // *_waiters): rows renewed at each try, which outlive the longest
        // nap a little and are dropped when the wait ends.
        let mut rows: Option<Vec<i64>> = None;
        let outcome = self
            .wait_counted(queues, wait, cancel, &mut want, &mut rows)
            .await;
        if let Some(ids) = rows {
            let _ = self.db.execute("SELECT ferry.wait_end($1)", &[&ids]).await;
        }
        outcome
    }

    async fn wait_counted(
        &mut self,
        queues: &[String],
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
        want: &mut Want<'_>,
        rows: &mut Option<Vec<i64>>,
    ) -> Result<(Option<Value>, bool), Error> {
        let row_ms = super::ms(NAP + Duration::from_secs(5));
        let deadline = wait.map(|w| Instant::now() + w);
        tokio::pin!(cancel);
        let mut woken = None;
        loop {
            let hint = match self.attempt(queues, want).await? {
                Step::Done(reply) => return Ok((Some(reply), false)),
                Step::Later(hint) => hint,
            };
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Ok((None, false));
            }
            match rows {
                Some(ids) => {
                    self.db
                        .execute("SELECT ferry.wait_renew($1, $2)", &[&*ids, &row_ms])
                        .await
                        .map_err(db_error)?;
                }
                None => {
                    let row = self
                        .db
                        .query_one(
                            "SELECT ferry.wait_begin($1, $2, $3)",
                            &[&want.kind(), &queues, &row_ms],
                        )
                        .await
                        .map_err(db_error)?;
                    *rows = Some(row.get::<_, Option<Vec<i64>>>(0).unwrap_or_default());
                }
            }
            let listening = self.listener.as_ref().is_some_and(Listener::alive);
            let Some(woken) = woken.as_mut().filter(|_| listening) else {
                if !listening {
                    self.listener = Some(Listener::open(&self.target).await?);
                }
                if let Some(l) = self.listener.as_mut() {
                    woken = Some(l.listen(queues).await?);
                }
                continue;
            };
            let mut nap = hint.unwrap_or(NAP).min(NAP);
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
        let row = self
            .db
            .query_opt("SELECT * FROM ferry.info($1)", &[&q])
            .await
            .map_err(db_error)?
            .ok_or_else(|| server("NOQUEUE", &format!("no queue {q}")))?;
        let field = |name: &str, v: Value| (bulk(name.as_bytes()), v);
        let none = |n: i64| Value::Int(if n == 0 { -1 } else { n });
        let (maxsize, qsize) = (row.get::<_, i64>(1), row.get::<_, i64>(7));
        let waiting = self
            .db
            .query_one(
                "SELECT ferry.waiting('get', $1), ferry.waiting('put', $1), ferry.waiting('join', $1)",
                &[&q],
            )
            .await
            .map_err(db_error)?;
        Ok(Value::Map(vec![
            field("name", bulk(q.as_bytes())),
            field("kind", bulk(row.get::<_, String>(0))),
            field("maxsize", Value::Int(maxsize)),
            field("qsize", Value::Int(qsize)),
            field("unfinished", Value::Int(row.get(8))),
            field("leased", Value::Int(row.get(9))),
            field("taken", Value::Int(row.get(10))),
            field("delayed", Value::Int(row.get(11))),
            field("waiting_getters", Value::Int(waiting.get(0))),
            field("waiting_putters", Value::Int(waiting.get(1))),
            field("waiting_joiners", Value::Int(waiting.get(2))),
            field("full", Value::Bool(maxsize > 0 && qsize >= maxsize)),
            field("empty", Value::Bool(qsize == 0)),
            field("shutdown", bulk(row.get::<_, String>(2))),
            field("lease_timeout", none(row.get(3))),
            field("max_attempts", none(row.get(4))),
            field(
                "dead_letter",
                row.get::<_, Option<String>>(5).map_or(Value::Nil, bulk),
            ),
            field("expire", none(row.get(6))),
        ]))
    }
}
