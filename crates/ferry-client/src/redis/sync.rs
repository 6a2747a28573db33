//! Semaphores, events, conditions and barriers on Redis: their commands
//! read as the broker reads them (docs/protocol.md) and answered with
//! sync.lua's operations. A semaphore's permit and a barrier's held round
//! are grants kept alive by the holder's heartbeat (renew.rs), as a
//! lock's are: a holder that dies gives them back.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_proto::Value;

use super::commands::{Args, unknown, wait_option};
use super::renew::{self, Grant};
use super::wait::{Kind, Waiting};
use super::{LOCK, RedisLink, SYNC, check_name, is, lock_keys, server, sync_keys};
use crate::Error;

/// Commands of this file.
pub(super) const COMMANDS: [&str; 15] = [
    "SEMACQUIRE",
    "SEMRELEASE",
    "SEMHELD",
    "SEMVALUE",
    "EVSET",
    "EVCLEAR",
    "EVISSET",
    "EVWAIT",
    "CONDWAIT",
    "CONDNOTIFY",
    "BARWAIT",
    "BARPASS",
    "BARABORT",
    "BARRESET",
    "BARINFO",
];

fn bytes(n: impl ToString) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// A semaphore's VALUE, at most i64::MAX as on the broker.
fn value(a: &mut Args<'_>) -> Result<u64, Error> {
    let v = a.number("VALUE")?;
    if v > i64::MAX as u64 {
        return Err(server("ERR", "VALUE is at most 9223372036854775807"));
    }
    Ok(v)
}

impl RedisLink {
    /// Answers one of `COMMANDS`.
    pub(super) async fn sync_call(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let name = check_name(a.require("name")?)?.to_string();
        let done = |v: Value| Ok((v, false));
        match cmd {
            "SEMACQUIRE" => self.sem_acquire(name, a, cancel).await,
            "SEMRELEASE" => {
                let (mut token, mut value_n, mut bounded) = (None, 1, false);
                while let Some(opt) = a.next() {
                    if is(opt, "TOKEN") {
                        token = Some(a.number("TOKEN")?);
                    } else if is(opt, "VALUE") {
                        value_n = value(a)?;
                    } else if is(opt, "BOUNDED") {
                        bounded = true;
                    } else {
                        return Err(unknown(opt, cmd));
                    }
                }
                if let Some(t) = token {
                    renew::drop(&self.target, &self.holder, Grant::Semaphore, &name, t);
                }
                let args = [
                    b"release".to_vec(),
                    token.map(bytes).unwrap_or_default(),
                    bytes(value_n),
                    bytes(u8::from(bounded)),
                ];
                done(self.change(&SYNC, &sync_keys("sem", &name), &args).await?)
            }
            "SEMHELD" => {
                let args = [b"held".to_vec(), bytes(a.number("token")?)];
                done(self.change(&SYNC, &sync_keys("sem", &name), &args).await?)
            }
            "SEMVALUE" => {
                let mut value_n = 1;
                while let Some(opt) = a.next() {
                    if is(opt, "VALUE") {
                        value_n = value(a)?;
                    } else {
                        return Err(unknown(opt, cmd));
                    }
                }
                let args = [b"value".to_vec(), bytes(value_n)];
                done(self.change(&SYNC, &sync_keys("sem", &name), &args).await?)
            }
            "EVSET" | "EVCLEAR" | "EVISSET" => {
                let op = cmd.strip_prefix("EV").unwrap_or(cmd).to_ascii_lowercase();
                let args = [op.into_bytes()];
                done(self.change(&SYNC, &sync_keys("ev", &name), &args).await?)
            }
            "EVWAIT" => {
                let mut wait = None;
                while let Some(opt) = a.next() {
                    if !wait_option(opt, a, &mut wait)? {
                        return Err(unknown(opt, cmd));
                    }
                }
                let w = waiting(Kind::Flag, "ev", &name, vec![b"wait".to_vec()]);
                self.wait(w, wait, cancel).await
            }
            "CONDWAIT" => self.cond_wait(name, a, cancel).await,
            "CONDNOTIFY" => {
                let mut count = Some(1);
                while let Some(opt) = a.next() {
                    if is(opt, "COUNT") {
                        count = Some(a.number("COUNT")?);
                    } else if is(opt, "ALL") {
                        count = None;
                    } else {
                        return Err(unknown(opt, cmd));
                    }
                }
                let args = [b"notify".to_vec(), count.map(bytes).unwrap_or_default()];
                done(self.change(&SYNC, &sync_keys("cond", &name), &args).await?)
            }
            "BARWAIT" => self.bar_wait(name, a, cancel).await,
            "BARINFO" => done(
                self.change(&SYNC, &sync_keys("bar", &name), &[b"info".to_vec()])
                    .await?,
            ),
            _ => {
                // BARPASS, BARABORT, BARRESET: the held round's grant, if
                // any, is no longer kept alive.
                let mut args = vec![
                    cmd.strip_prefix("BAR")
                        .unwrap_or(cmd)
                        .to_ascii_lowercase()
                        .into_bytes(),
                ];
                if cmd == "BARABORT" {
                    let mut parties = 1;
                    while let Some(opt) = a.next() {
                        if is(opt, "PARTIES") {
                            parties = a.number("PARTIES")?.max(1);
                        } else {
                            return Err(unknown(opt, cmd));
                        }
                    }
                    args.push(bytes(parties));
                }
                let v = self.change(&SYNC, &sync_keys("bar", &name), &args).await?;
                let token = match v {
                    Value::Int(t) if t > 0 => t as u64,
                    _ => 0,
                };
                if token > 0 {
                    renew::drop(&self.target, &self.holder, Grant::Barrier, &name, token);
                }
                done(Value::Int(i64::from(token > 0 || cmd != "BARPASS")))
            }
        }
    }

    /// SEMACQUIRE name [VALUE n] [TTL ms] [TIMEOUT ms | NOWAIT]: a permit
    /// without a TTL lives as long as its holder's heartbeat.
    async fn sem_acquire(
        &mut self,
        name: String,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let (mut ttl, mut wait, mut value_n) = (None, None, 1);
        while let Some(opt) = a.next() {
            if is(opt, "TTL") {
                ttl = Some(a.number("TTL")?).filter(|&t| t > 0);
            } else if is(opt, "VALUE") {
                value_n = value(a)?;
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, "SEMACQUIRE"));
            }
        }
        let bound = ttl.is_none();
        let ttl = ttl.unwrap_or(self.target.lease.as_millis() as u64);
        let args = vec![
            b"acquire".to_vec(),
            self.holder.as_bytes().to_vec(),
            bytes(ttl),
            bytes(value_n),
        ];
        let w = waiting(Kind::Lock, "sem", &name, args);
        let (v, cancelled) = self.wait(w, wait, cancel).await?;
        if bound && let Value::Int(token) = v {
            let (t, h) = (&self.target, &self.holder);
            renew::hold(t, h, Grant::Semaphore, &name, token as u64);
        }
        Ok((v, cancelled))
    }

    /// CONDWAIT cond LOCK name TOKEN t [TIMEOUT ms | NOWAIT]: in the
    /// condition's line first, then the lock given back — a CONDNOTIFY in
    /// between finds it in line, as on the broker, though the two keys
    /// may live on different shards.
    async fn cond_wait(
        &mut self,
        cond: String,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let (mut lock, mut token, mut wait) = (None, None, None);
        while let Some(opt) = a.next() {
            if is(opt, "LOCK") {
                lock = Some(check_name(a.require("LOCK")?)?.to_string());
            } else if is(opt, "TOKEN") {
                token = Some(a.number("TOKEN")?);
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, "CONDWAIT"));
            }
        }
        let (Some(lock), Some(token)) = (lock, token) else {
            return Err(server("ERR", "CONDWAIT needs LOCK name and TOKEN t"));
        };
        let keys = sync_keys("cond", &cond);
        let nowait = wait == Some(Duration::ZERO);
        let waiter = if nowait { Vec::new() } else { self.waiter() };
        let nap = wait
            .unwrap_or(Duration::from_secs(10))
            .min(Duration::from_secs(10));
        if !nowait {
            let args = [b"enter".to_vec(), waiter.clone(), bytes(nap.as_millis())];
            self.change(&SYNC, &keys, &args).await?;
        }
        renew::drop(&self.target, &self.holder, Grant::Lock, &lock, token);
        let args = [b"release".to_vec(), bytes(token)];
        let released = self.change(&LOCK, &lock_keys(&lock), &args).await;
        if !matches!(released, Ok(Value::Int(1))) {
            if !nowait {
                let _ = self
                    .change(&SYNC, &keys, &[b"unwait".to_vec(), waiter])
                    .await;
            }
            released?;
            return Err(server(
                "ERR",
                &format!(
                    "cannot wait on un-acquired lock: token {token} does not hold lock '{lock}'"
                ),
            ));
        }
        if nowait {
            return Ok((Value::Int(0), false));
        }
        let w = waiting(Kind::Flag, "cond", &cond, vec![b"wait".to_vec()]);
        self.wait_as(w, waiter, wait, cancel).await
    }

    /// BARWAIT name PARTIES n [ACTION] [TIMEOUT ms | NOWAIT]: the last
    /// arriver of a barrier with an action holds the round (a grant) until
    /// BARPASS or BARABORT.
    async fn bar_wait(
        &mut self,
        name: String,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let (mut parties, mut action, mut wait) = (None, false, None);
        while let Some(opt) = a.next() {
            if is(opt, "PARTIES") {
                parties = Some(a.number("PARTIES")?);
            } else if is(opt, "ACTION") {
                action = true;
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, "BARWAIT"));
            }
        }
        let parties = parties
            .filter(|&p| p > 0)
            .ok_or_else(|| server("ERR", "BARWAIT needs PARTIES n, at least 1"))?;
        let args = vec![
            b"arrive".to_vec(),
            bytes(parties),
            bytes(u8::from(action)),
            bytes(self.target.lease.as_millis()),
        ];
        let w = waiting(Kind::Barrier, "bar", &name, args);
        let (v, cancelled) = self.wait(w, wait, cancel).await?;
        if let Value::Array(items) = &v
            && let [Value::Bulk(tag), Value::Int(place), Value::Int(token)] = items.as_slice()
            && &tag[..] == b"ACT"
        {
            let (t, h) = (&self.target, &self.holder);
            renew::hold(t, h, Grant::Barrier, &name, *token as u64);
            return Ok((Value::Int(*place), cancelled));
        }
        Ok((v, cancelled))
    }
}

impl RedisLink {
    /// The names of `kind` in use: with a state key, or waiters' requests.
    async fn names_of(&mut self, kind: &str) -> Result<BTreeSet<String>, Error> {
        let prefix = format!("ferry:{kind}:{{");
        let mut names = BTreeSet::new();
        for (pattern, suffix) in [("*}", "}"), ("*}:req", "}:req")] {
            for key in self.scan(&format!("{prefix}{pattern}")).await? {
                if let Some(name) = key
                    .strip_prefix(prefix.as_str())
                    .and_then(|r| r.strip_suffix(suffix))
                {
                    names.insert(name.to_string());
                }
            }
        }
        Ok(names)
    }

    /// `op` of the script of `kind`'s `name` (lock.lua for locks).
    async fn op_of(&mut self, kind: &str, name: &str, op: &[u8]) -> Result<redis::Value, Error> {
        let (script, keys) = if kind == "lock" {
            (&LOCK, lock_keys(name))
        } else {
            (&SYNC, sync_keys(kind, name))
        };
        self.script(script, &keys, &[op.to_vec()]).await
    }

    /// INFO's lines for locks, semaphores, events, conditions and
    /// barriers: how many are in use, and their live waiters.
    pub(super) async fn primitives_info(&mut self) -> Result<String, Error> {
        let mut out = String::new();
        for (kind, _, names_field, waiters_field) in KINDS {
            let (mut count, mut waiters) = (0, 0);
            for name in self.names_of(kind).await? {
                let (h, w, state) = view(self.op_of(kind, &name, b"view").await?)?;
                waiters += w;
                count += usize::from(in_use(h, w, &state));
            }
            out.push_str(&format!(
                "{names_field}:{count}\r\n{waiters_field}:{waiters}\r\n"
            ));
        }
        Ok(out)
    }

    /// SYNCLIST: every lock, semaphore, event, condition and barrier in
    /// use, `[kind, name, holders, waiters, state]` each.
    pub(super) async fn sync_list(&mut self) -> Result<Value, Error> {
        let mut all = Vec::new();
        for (kind, label, _, _) in KINDS {
            for name in self.names_of(kind).await? {
                let (h, w, state) = view(self.op_of(kind, &name, b"view").await?)?;
                if in_use(h, w, &state) {
                    all.push(Value::Array(vec![
                        Value::Bulk(label.as_bytes().to_vec().into()),
                        Value::Bulk(name.into_bytes().into()),
                        Value::Int(h),
                        Value::Int(w),
                        Value::Bulk(state.into_bytes().into()),
                    ]));
                }
            }
        }
        Ok(Value::Array(all))
    }
}

/// Each kind: its key prefix, SYNCLIST's name for it, INFO's fields.
const KINDS: [(&str, &str, &str, &str); 5] = [
    ("lock", "lock", "locks", "lock_waiters"),
    ("sem", "semaphore", "semaphores", "semaphore_waiters"),
    ("ev", "event", "events", "event_waiters"),
    ("cond", "condition", "conditions", "condition_waiters"),
    ("bar", "barrier", "barriers", "barrier_waiters"),
];

/// A script's `view`: holders, waiters, state.
fn view(v: redis::Value) -> Result<(i64, i64, String), Error> {
    if let redis::Value::Array(items) = &v
        && let [
            redis::Value::Int(h),
            redis::Value::Int(w),
            redis::Value::BulkString(s),
        ] = items.as_slice()
    {
        return Ok((*h, *w, String::from_utf8_lossy(s).into_owned()));
    }
    Err(Error::Protocol(format!("unexpected view {v:?}")))
}

/// Whether the broker would keep it in its tables: held, waited for,
/// set, or (a semaphore's, a barrier's) with a state of its own.
fn in_use(holders: i64, waiters: i64, state: &str) -> bool {
    holders > 0 || waiters > 0 || !(state.is_empty() || state == "clear")
}

/// A wait on primitive `name` of `kind` (sem, ev, cond, bar).
fn waiting(kind: Kind, prefix: &str, name: &str, args: Vec<Vec<u8>>) -> Waiting {
    Waiting {
        kind,
        script: &SYNC,
        keys: sync_keys(prefix, name),
        inbox: format!("ferry:{prefix}:{{{name}}}:w:").into_bytes(),
        queue: name.to_string(),
        resendable: false,
        args,
    }
}
