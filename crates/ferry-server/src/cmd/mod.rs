//! Command dispatch, argument parsing, and the commands that are not about
//! queues: connection, server and lock commands. Queue commands are in
//! `queue.rs`. docs/protocol.md documents every one.

mod queue;

pub(crate) use queue::GetScratch;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use ferry_proto::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::conn::{Conn, Flow, Woke};

/// An error reply: `-CODE message`.
#[derive(Debug)]
pub(crate) struct CmdError {
    code: &'static str,
    msg: String,
}

pub(crate) type Res = Result<Flow, CmdError>;

pub(crate) fn err(code: &'static str, msg: impl Into<String>) -> CmdError {
    CmdError {
        code,
        msg: msg.into(),
    }
}

fn syntax() -> CmdError {
    err("ERR", "syntax error")
}

/// A command's arguments, consumed front to back.
pub(crate) struct Args {
    args: Request,
    pos: usize,
}

impl Args {
    fn new(args: Request) -> Self {
        Args { args, pos: 1 }
    }

    fn command(&self) -> String {
        String::from_utf8_lossy(&self.args[0]).to_lowercase()
    }

    fn arity(&self) -> CmdError {
        err(
            "ERR",
            format!("wrong number of arguments for '{}' command", self.command()),
        )
    }

    fn remaining(&self) -> usize {
        self.args.len() - self.pos
    }

    fn next(&mut self) -> Option<Bytes> {
        // Taken, not cloned: a clone would touch the shared read buffer's
        // reference count once more per argument.
        let arg = self.args.get_mut(self.pos).map(std::mem::take);
        if arg.is_some() {
            self.pos += 1;
        }
        arg
    }

    /// The next argument, or the arity error.
    fn require(&mut self) -> Result<Bytes, CmdError> {
        self.next().ok_or_else(|| self.arity())
    }

    /// The value after an option keyword.
    fn value(&mut self) -> Result<Bytes, CmdError> {
        self.next().ok_or_else(syntax)
    }

    fn u64_value(&mut self) -> Result<u64, CmdError> {
        let v = self.value()?;
        parse_u64(&v)
    }

    fn end(&self) -> Result<(), CmdError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(syntax())
        }
    }
}

pub(crate) fn parse_u64(b: &[u8]) -> Result<u64, CmdError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| err("ERR", "value is not an integer or out of range"))
}

pub(crate) fn parse_i64(b: &[u8]) -> Result<i64, CmdError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| err("ERR", "value is not an integer or out of range"))
}

pub(crate) fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// A timeout in ms where 0 means forever (Redis's convention), as a
/// deadline; `None` waits forever.
pub(crate) fn deadline(ms: u64) -> Option<tokio::time::Instant> {
    if ms == 0 {
        return None;
    }
    tokio::time::Instant::now().checked_add(std::time::Duration::from_millis(ms))
}

/// How long a blocking command may wait.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    No,
    Until(Option<tokio::time::Instant>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Runs one command and writes its reply.
    pub(crate) async fn execute(&mut self, args: Request) -> Flow {
        self.broker.commands.fetch_add(1, Ordering::Relaxed);
        let args = Args::new(args);
        let mut name = [0u8; 16];
        let cmd = &args.args[0];
        let len = cmd.len().min(16);
        name[..len].copy_from_slice(&cmd[..len]);
        name.make_ascii_uppercase();
        let name = if cmd.len() > 16 {
            &b"?"[..]
        } else {
            &name[..len]
        };
        if !self.authed && !matches!(name, b"AUTH" | b"HELLO" | b"QUIT") {
            self.reply().error("NOAUTH", "Authentication required.");
            return Flow::Continue;
        }
        // Commands that may change what the log records make this batch's
        // replies wait for durability.
        if name.first() == Some(&b'Q')
            && !matches!(
                name,
                b"QLEN" | b"QINFO" | b"QLIST" | b"QPEEK" | b"QJOIN" | b"QTOUCH"
            )
        {
            self.logged = true;
        }
        let result = match name {
            b"PING" => self.ping(args),
            b"ECHO" => self.echo(args),
            b"QUIT" => {
                self.reply().simple("OK");
                return Flow::Close;
            }
            b"HELLO" => self.hello(args),
            b"AUTH" => self.auth(args),
            b"CLIENT" => self.client(args),
            b"SELECT" => self.select(args),
            b"INFO" => self.info(args),
            b"COMMAND" => self.command(args),
            b"CONFIG" => self.config(args),
            b"LOCK" => self.lock(args).await,
            b"UNLOCK" => self.unlock(args),
            b"QCREATE" => self.qcreate(args),
            b"QCONFIG" => self.qconfig(args),
            b"QPUT" => self.qput(args).await,
            b"QPUTMANY" => self.qputmany(args).await,
            b"QGET" => self.qget(args).await,
            b"QDONE" => self.qdone(args),
            b"QNACK" => self.qnack(args),
            b"QTOUCH" => self.qtouch(args),
            b"QJOIN" => self.qjoin(args).await,
            b"QLEN" => self.qlen(args),
            b"QINFO" => self.qinfo(args),
            b"QLIST" => self.qlist(args),
            b"QPEEK" => self.qpeek(args),
            b"QPURGE" => self.qpurge(args),
            b"QDROP" => self.qdrop(args),
            b"QSHUTDOWN" => self.qshutdown(args),
            _ => Err(err(
                "ERR",
                format!("unknown command '{}'", String::from_utf8_lossy(cmd)),
            )),
        };
        match result {
            Ok(flow) => flow,
            Err(e) => {
                self.reply().error(e.code, &e.msg);
                Flow::Continue
            }
        }
    }

    fn ping(&mut self, mut a: Args) -> Res {
        match (a.next(), a.remaining()) {
            (None, _) => self.reply().simple("PONG"),
            (Some(msg), 0) => self.reply().bulk(&msg),
            _ => return Err(a.arity()),
        }
        Ok(Flow::Continue)
    }

    fn echo(&mut self, mut a: Args) -> Res {
        let msg = a.require()?;
        if a.remaining() > 0 {
            return Err(a.arity());
        }
        self.reply().bulk(&msg);
        Ok(Flow::Continue)
    }

    fn check_password(&self, user: Option<&[u8]>, pass: &[u8]) -> Result<(), CmdError> {
        let Some(want) = &self.broker.config.requirepass else {
            return Err(err(
                "ERR",
                "AUTH <password> called without any password configured for the default user",
            ));
        };
        if user.is_some_and(|u| u != b"default") || pass != want.as_bytes() {
            return Err(err(
                "WRONGPASS",
                "invalid username-password pair or user is disabled.",
            ));
        }
        Ok(())
    }

    fn auth(&mut self, mut a: Args) -> Res {
        let (user, pass) = match a.remaining() {
            1 => (None, a.require()?),
            2 => (Some(a.require()?), a.require()?),
            _ => return Err(a.arity()),
        };
        self.check_password(user.as_deref(), &pass)?;
        self.authed = true;
        self.reply().simple("OK");
        Ok(Flow::Continue)
    }

    fn hello(&mut self, mut a: Args) -> Res {
        let mut proto = if self.resp3 { 3 } else { 2 };
        if let Some(v) = a.next() {
            proto = match parse_u64(&v) {
                Ok(p @ (2 | 3)) => p,
                _ => return Err(err("NOPROTO", "unsupported protocol version")),
            };
        }
        let mut setname = None;
        while let Some(opt) = a.next() {
            if is(&opt, "AUTH") {
                let user = a.value()?;
                let pass = a.value()?;
                self.check_password(Some(&user), &pass)?;
                self.authed = true;
            } else if is(&opt, "SETNAME") {
                setname = Some(a.value()?);
            } else {
                return Err(syntax());
            }
        }
        if !self.authed {
            return Err(err(
                "NOAUTH",
                "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        if setname.is_some() {
            self.name = setname;
        }
        self.resp3 = proto == 3;
        let id = self.id;
        let mut r = self.reply();
        r.map(7);
        r.bulk(b"server");
        r.bulk(b"ferry");
        r.bulk(b"version");
        r.bulk(env!("CARGO_PKG_VERSION").as_bytes());
        r.bulk(b"proto");
        r.uint(proto);
        r.bulk(b"id");
        r.uint(id);
        r.bulk(b"mode");
        r.bulk(b"standalone");
        r.bulk(b"role");
        r.bulk(b"master");
        r.bulk(b"modules");
        r.array(0);
        Ok(Flow::Continue)
    }

    fn client(&mut self, mut a: Args) -> Res {
        let sub = a.require()?;
        if is(&sub, "SETNAME") {
            let name = a.require()?;
            if name.iter().any(|&b| b <= b' ' || b > b'~') {
                return Err(err(
                    "ERR",
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            self.name = (!name.is_empty()).then_some(name);
            self.reply().simple("OK");
        } else if is(&sub, "GETNAME") {
            match self.name.clone() {
                Some(n) => self.reply().bulk(&n),
                None => self.reply().null(),
            }
        } else if is(&sub, "ID") {
            let id = self.id;
            self.reply().uint(id);
        } else if is(&sub, "SETINFO") {
            // Client libraries announce themselves; nothing to keep.
            self.reply().simple("OK");
        } else {
            return Err(err(
                "ERR",
                format!("unknown subcommand '{}'", String::from_utf8_lossy(&sub)),
            ));
        }
        Ok(Flow::Continue)
    }

    fn select(&mut self, mut a: Args) -> Res {
        let db = a.require()?;
        if parse_u64(&db)? != 0 {
            return Err(err("ERR", "DB index is out of range"));
        }
        self.reply().simple("OK");
        Ok(Flow::Continue)
    }

    fn info(&mut self, _a: Args) -> Res {
        let b = &self.broker;
        let (records, syncs, bytes) = b
            .store
            .as_ref()
            .map_or((0, 0, 0), |s| (s.appended(), s.syncs(), s.log().bytes()));
        let text = format!(
            "# Server\r\nferry_version:{}\r\nredis_version:7.0.0\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\nthreads:{}\r\ndurability:{}\r\n\r\n# Persistence\r\nlog_records:{}\r\nlog_syncs:{}\r\nlog_bytes:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n# Stats\r\ntotal_commands_processed:{}\r\n\r\n# Memory\r\nqueued_memory:{}\r\nmax_memory:{}\r\n\r\n# Queues\r\nqueues:{}\r\nlocks:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            b.uptime().as_secs(),
            b.config.threads.unwrap_or(0),
            format!("{:?}", b.config.durability).to_lowercase(),
            records,
            syncs,
            bytes,
            b.clients.load(Ordering::Relaxed),
            b.config.max_clients,
            b.commands.load(Ordering::Relaxed),
            b.memory(),
            b.config.max_memory,
            b.queue_count(),
            b.locks.count(),
        );
        self.reply().bulk(text.as_bytes());
        Ok(Flow::Continue)
    }

    /// Enough of COMMAND for redis-cli and client libraries to start:
    /// they cope with an empty command table.
    fn command(&mut self, mut a: Args) -> Res {
        match a.next() {
            Some(sub) if is(&sub, "COUNT") => self.reply().int(0),
            Some(sub) if is(&sub, "DOCS") => self.reply().map(0),
            _ => self.reply().array(0),
        }
        Ok(Flow::Continue)
    }

    /// CONFIG GET answers with no parameters (redis-benchmark asks for
    /// some at start); settings are fixed at start-up.
    fn config(&mut self, mut a: Args) -> Res {
        let sub = a.require()?;
        if is(&sub, "GET") {
            self.reply().map(0);
            Ok(Flow::Continue)
        } else {
            Err(err(
                "ERR",
                "CONFIG supports only GET; settings are fixed at start-up",
            ))
        }
    }

    async fn lock(&mut self, mut a: Args) -> Res {
        let name = a.require()?;
        let (mut ttl, mut wait) = (None, Wait::Until(None));
        while let Some(opt) = a.next() {
            if is(&opt, "TTL") {
                ttl = Some(a.u64_value()?).filter(|&t| t > 0);
            } else if is(&opt, "TIMEOUT") {
                wait = Wait::Until(deadline(a.u64_value()?));
            } else if is(&opt, "NOWAIT") {
                wait = Wait::No;
            } else {
                return Err(syntax());
            }
        }
        let locks = &self.broker.locks;
        let acquired = match locks.try_acquire(&name, self.id, ttl, None, self.broker.now()) {
            Ok(token) => Some(token),
            Err(_) => match wait {
                Wait::No => None,
                Wait::Until(deadline) => {
                    let notify = Arc::new(Notify::new());
                    let ticket = self.broker.locks.enqueue(&name, &notify);
                    loop {
                        let now = self.broker.now();
                        match self
                            .broker
                            .locks
                            .try_acquire(&name, self.id, ttl, Some(ticket), now)
                        {
                            Ok(token) => break Some(token),
                            Err(expires) => {
                                // Wake at the holder's TTL, if it comes first.
                                let until =
                                    match (expires.map(|e| self.broker.instant_at(e)), deadline) {
                                        (Some(e), Some(d)) => Some(e.min(d)),
                                        (e, d) => e.or(d),
                                    };
                                match self.wait(&notify, until).await {
                                    Woke::Notified => {}
                                    Woke::TimedOut
                                        if deadline
                                            .is_some_and(|d| tokio::time::Instant::now() >= d) =>
                                    {
                                        self.broker.locks.leave(&name, ticket, self.broker.now());
                                        break None;
                                    }
                                    Woke::TimedOut => {}
                                    Woke::Gone => {
                                        self.broker.locks.leave(&name, ticket, self.broker.now());
                                        return Ok(Flow::Close);
                                    }
                                }
                            }
                        }
                    }
                }
            },
        };
        match acquired {
            Some(token) => {
                self.locks.push((name, token));
                self.reply().uint(token);
            }
            None => self.reply().null(),
        }
        Ok(Flow::Continue)
    }

    fn unlock(&mut self, mut a: Args) -> Res {
        let name = a.require()?;
        let token = parse_u64(&a.require()?)?;
        a.end()?;
        let released = self.broker.locks.release(&name, token, None);
        self.locks.retain(|(n, t)| !(n == &name && *t == token));
        self.reply().int(i64::from(released));
        Ok(Flow::Continue)
    }
}
