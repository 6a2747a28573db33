//! Commands: each request is parsed into a typed [`Command`], then applied
//! to the client's [`Session`]; the reply goes into the session's output.
//! Nothing here knows of sockets, so every command can be run — and
//! tested — without one. docs/protocol.md documents every command.
//!
//! A command that must wait (a get on an empty queue, a put on a full one,
//! a join, a contended lock) registers its waiter and replies
//! [`Outcome::Wait`] with a [`Blocked`] state; the connection waits for its
//! wake-up (or the deadline, or the client leaving) and calls
//! [`Blocked::resume`] until it settles.
//!
//! One module per family: `put` (QPUT, QPUTMANY), `get` (QGET), `ack`
//! (QDONE, QNACK, QTOUCH, QJOIN), `admin` (QCREATE, QCONFIG, QLEN, QINFO,
//! QLIST, QPEEK, QPURGE, QDROP, QREOPEN, QSHUTDOWN), `locks` (LOCK, UNLOCK) and
//! `server` (PING, ECHO, HELLO, AUTH, CLIENT, SELECT, INFO, COMMAND,
//! CONFIG, QUIT).

mod ack;
mod admin;
mod barriers;
mod events;
mod get;
mod locks;
mod put;
mod server;

pub(crate) use server::credentials_in;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use ferry_proto::Request;
use tokio::sync::Notify;

use crate::acl::{Right, User};
use crate::session::Session;
use crate::store::valid_name;

/// An error reply: `-CODE message`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CmdError {
    pub(crate) code: &'static str,
    pub(crate) msg: String,
}

pub(crate) fn err(code: &'static str, msg: impl Into<String>) -> CmdError {
    CmdError {
        code,
        msg: msg.into(),
    }
}

impl From<crate::session::Refused> for CmdError {
    fn from(r: crate::session::Refused) -> CmdError {
        err("OOM", r.0)
    }
}

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Read the next command.
    Continue,
    /// Flush and close (QUIT, or the client is gone).
    Close,
}

/// How a command ended, or that it waits.
pub(crate) enum Outcome {
    /// Its reply is written (or it closes the connection).
    Done(Flow),
    /// It waits: the connection drives the state until it settles.
    Wait(Blocked),
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The waiter was (or may have been) settled: look again.
    Notified,
    /// The wake-up time passed.
    TimedOut,
    /// Another client sent CLIENT UNBLOCK: end as a timeout would, or
    /// (`true`) with -UNBLOCKED.
    Unblocked(bool),
    /// The client went away, or the server is stopping.
    Gone,
}

impl Woke {
    /// How a wait that ended empty-handed replies: its timeout reply
    /// (`Ok`), or -UNBLOCKED when CLIENT UNBLOCK asked for an error.
    fn empty_handed(
        self,
        timeout: impl FnOnce() -> Result<Flow, CmdError>,
    ) -> Result<Flow, CmdError> {
        match self {
            Woke::Unblocked(true) => Err(err("UNBLOCKED", "client unblocked via CLIENT UNBLOCK")),
            _ => timeout(),
        }
    }
}

/// A command waiting for its queue (or lock).
pub(crate) enum Blocked {
    Put(put::PutWait),
    Get(get::GetWait),
    Join(ack::JoinWait),
    Lock(locks::AcquireWait),
    Event(events::EventWaiting),
    Cond(events::CondWaiting),
    Barrier(barriers::BarWaiting),
}

impl Blocked {
    /// What wakes it.
    pub(crate) fn notify(&self) -> &Notify {
        match self {
            Blocked::Put(w) => &w.notify,
            Blocked::Get(w) => &w.notify,
            Blocked::Join(w) => &w.notify,
            Blocked::Lock(w) => &w.notify,
            Blocked::Event(w) => &w.notify,
            Blocked::Cond(w) => &w.notify,
            Blocked::Barrier(w) => &w.notify,
        }
    }

    /// When it wakes by itself: its deadline (a lock also at the holder's
    /// TTL); `None`: never.
    pub(crate) fn wake_at(&self) -> Option<tokio::time::Instant> {
        match self {
            Blocked::Put(w) => w.until,
            Blocked::Get(w) => w.until,
            Blocked::Join(w) => w.until,
            Blocked::Lock(w) => w.wake_at,
            Blocked::Event(w) => w.until,
            Blocked::Cond(w) => w.until,
            Blocked::Barrier(w) => w.until,
        }
    }

    /// Looks again after a wake-up: `Some(flow)` once it settled (its reply
    /// is written), `None` to go on waiting. Called first with
    /// [`Woke::Notified`], before any wait.
    pub(crate) fn resume(&mut self, s: &mut Session, woke: Woke) -> Option<Flow> {
        let r = match self {
            Blocked::Put(w) => w.resume(s, woke),
            Blocked::Get(w) => w.resume(s, woke),
            Blocked::Join(w) => w.resume(s, woke),
            Blocked::Lock(w) => w.resume(s, woke),
            Blocked::Event(w) => w.resume(s, woke),
            Blocked::Cond(w) => w.resume(s, woke),
            Blocked::Barrier(w) => w.resume(s, woke),
        };
        r.map(|r| s.settle(r))
    }
}

type Res = Result<Outcome, CmdError>;

/// The usual successful outcome: reply written, carry on.
fn done() -> Res {
    Ok(Outcome::Done(Flow::Continue))
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    No,
    Until(Option<tokio::time::Instant>),
}

/// A request's arguments, consumed front to back, with the errors every
/// command gives for what it does not expect.
pub(crate) struct Args<'r> {
    args: &'r Request,
    pos: usize,
    /// The command's name, upper case, for error messages.
    command: &'static str,
}

impl<'r> Args<'r> {
    fn arity(&self) -> CmdError {
        err(
            "ERR",
            format!(
                "wrong number of arguments for '{}' command",
                self.command.to_lowercase()
            ),
        )
    }

    fn remaining(&self) -> usize {
        self.args.len() - self.pos
    }

    /// The next argument, as a share of the request's frame: for what a
    /// command keeps (a queue name, a payload).
    fn next(&mut self) -> Option<Bytes> {
        let arg = self.args.bytes(self.pos);
        if arg.is_some() {
            self.pos += 1;
        }
        arg
    }

    /// The next argument, borrowed: for options and numbers, which are
    /// read and dropped (no share of the frame taken).
    fn next_ref(&mut self) -> Option<&'r [u8]> {
        let args: &'r Request = self.args;
        let arg = args.get(self.pos);
        if arg.is_some() {
            self.pos += 1;
        }
        arg
    }

    /// The next argument, or the arity error.
    fn require(&mut self) -> Result<Bytes, CmdError> {
        self.next().ok_or_else(|| self.arity())
    }

    /// The next argument, borrowed, or the arity error.
    fn require_ref(&mut self) -> Result<&'r [u8], CmdError> {
        self.next_ref().ok_or_else(|| self.arity())
    }

    /// The value after option `opt`.
    fn value(&mut self, opt: &[u8]) -> Result<Bytes, CmdError> {
        self.next().ok_or_else(|| self.needs_value(opt))
    }

    /// The value after option `opt`, borrowed.
    fn value_ref(&mut self, opt: &[u8]) -> Result<&'r [u8], CmdError> {
        self.next_ref().ok_or_else(|| self.needs_value(opt))
    }

    fn needs_value(&self, opt: &[u8]) -> CmdError {
        err(
            "ERR",
            format!(
                "option '{}' of {} needs a value",
                String::from_utf8_lossy(opt),
                self.command
            ),
        )
    }

    fn u64_value(&mut self, opt: &[u8]) -> Result<u64, CmdError> {
        parse_u64(self.value_ref(opt)?)
    }

    /// A queue name: the next argument, checked.
    fn queue(&mut self) -> Result<Bytes, CmdError> {
        let name = self.require()?;
        check_queue_name(&name)?;
        Ok(name)
    }

    /// The error for an option this command does not know.
    fn unknown(&self, opt: &[u8]) -> CmdError {
        err(
            "ERR",
            format!(
                "unknown option '{}' for {} (docs/protocol.md lists them)",
                String::from_utf8_lossy(opt),
                self.command
            ),
        )
    }

    /// Nothing may follow.
    fn end(&mut self) -> Result<(), CmdError> {
        match self.next_ref() {
            None => Ok(()),
            Some(extra) => Err(self.unknown(extra)),
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

fn check_queue_name(name: &[u8]) -> Result<(), CmdError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(err(
            "ERR",
            "invalid queue name: 1 to 200 bytes of A-Z a-z 0-9 _ . : -",
        ))
    }
}

/// Every command, parsed.
pub(crate) enum Command {
    Server(server::Server),
    Lock(locks::Acquire),
    Unlock(locks::Unlock),
    Locked(locks::Held),
    SemAcquire(locks::Acquire),
    SemRelease(locks::SemRelease),
    SemValue(locks::SemValue),
    SemHeld(locks::Held),
    Event(events::EventOp),
    EvWait(events::EvWait),
    CondWait(events::CondWait),
    CondNotify(events::CondNotify),
    BarWait(barriers::BarWait),
    Barrier(barriers::BarOp),
    Create(admin::Create),
    Config(admin::ConfigQueue),
    Put(put::Put),
    PutMany(put::PutMany),
    Get(get::Get),
    Done(ack::Done),
    Nack(ack::Nack),
    Touch(ack::Touch),
    Join(ack::Join),
    Inspect(admin::Inspect),
    Manage(admin::Manage),
}

/// Every command name, upper case.
pub(crate) const NAMES: [&str; 47] = [
    "QPUT",
    "QGET",
    "QDONE",
    "QPUTMANY",
    "QNACK",
    "QTOUCH",
    "QJOIN",
    "QLEN",
    "QINFO",
    "QLIST",
    "QPEEK",
    "QCREATE",
    "QCONFIG",
    "QPURGE",
    "QDROP",
    "QREOPEN",
    "QSHUTDOWN",
    "LOCK",
    "UNLOCK",
    "LOCKED",
    "SEMACQUIRE",
    "SEMRELEASE",
    "SEMVALUE",
    "SEMHELD",
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
    "SYNCLIST",
    "PING",
    "ECHO",
    "QUIT",
    "HELLO",
    "AUTH",
    "CLIENT",
    "SELECT",
    "INFO",
    "COMMAND",
    "CONFIG",
    "ACL",
];

/// The command's name as [`NAMES`] spells it, in any case.
fn command_name(name: &[u8]) -> Option<&'static str> {
    // Upper-cased in a small buffer: no allocation, then one comparison
    // per candidate of the same length.
    let mut upper = [0u8; 10];
    let bytes = upper.get_mut(..name.len())?;
    bytes.copy_from_slice(name);
    bytes.make_ascii_uppercase();
    NAMES.into_iter().find(|n| n.as_bytes() == bytes)
}

impl Command {
    /// Parses a request (not empty) into a command, or the error to reply.
    /// `command` is its name as [`command_name`] found it.
    pub(crate) fn parse(command: Option<&'static str>, req: &Request) -> Result<Command, CmdError> {
        let Some(command) = command else {
            return Err(err(
                "ERR",
                format!("unknown command '{}'", String::from_utf8_lossy(&req[0])),
            ));
        };
        let mut a = Args {
            args: req,
            pos: 1,
            command,
        };
        let a = &mut a;
        Ok(match command {
            "LOCK" => Command::Lock(locks::Acquire::parse(a, locks::Kind::Lock)?),
            "SEMACQUIRE" => Command::SemAcquire(locks::Acquire::parse(a, locks::Kind::Semaphore)?),
            "SEMRELEASE" => Command::SemRelease(locks::SemRelease::parse(a)?),
            "SEMVALUE" => Command::SemValue(locks::SemValue::parse(a)?),
            "UNLOCK" => Command::Unlock(locks::Unlock::parse(a)?),
            "LOCKED" => Command::Locked(locks::Held::parse(a, locks::Kind::Lock)?),
            "SEMHELD" => Command::SemHeld(locks::Held::parse(a, locks::Kind::Semaphore)?),
            "EVSET" | "EVCLEAR" | "EVISSET" => Command::Event(events::EventOp::parse(a, command)?),
            "EVWAIT" => Command::EvWait(events::EvWait::parse(a)?),
            "CONDWAIT" => Command::CondWait(events::CondWait::parse(a)?),
            "CONDNOTIFY" => Command::CondNotify(events::CondNotify::parse(a)?),
            "BARWAIT" => Command::BarWait(barriers::BarWait::parse(a)?),
            "BARPASS" | "BARABORT" | "BARRESET" | "BARINFO" => {
                Command::Barrier(barriers::BarOp::parse(a, command)?)
            }
            "QCREATE" => Command::Create(admin::Create::parse(a)?),
            "QCONFIG" => Command::Config(admin::ConfigQueue::parse(a)?),
            "QPUT" => Command::Put(put::Put::parse(a)?),
            "QPUTMANY" => Command::PutMany(put::PutMany::parse(a)?),
            "QGET" => Command::Get(get::Get::parse(a)?),
            "QDONE" => Command::Done(ack::Done::parse(a)?),
            "QNACK" => Command::Nack(ack::Nack::parse(a)?),
            "QTOUCH" => Command::Touch(ack::Touch::parse(a)?),
            "QJOIN" => Command::Join(ack::Join::parse(a)?),
            "QLEN" | "QINFO" | "QLIST" | "QPEEK" | "SYNCLIST" => {
                Command::Inspect(admin::Inspect::parse(a)?)
            }
            "QPURGE" | "QDROP" | "QREOPEN" | "QSHUTDOWN" => {
                Command::Manage(admin::Manage::parse(a)?)
            }
            _ => Command::Server(server::Server::parse(a)?),
        })
    }

    /// What it needs of its user: a right on each queue (or lock) it
    /// names. Connection and server commands need none. Exhaustive: a new
    /// command must say.
    fn needs(&self) -> Vec<(Right, &[u8])> {
        match self {
            Command::Put(c) => vec![(Right::Put, &c.queue)],
            Command::PutMany(c) => vec![(Right::Put, &c.queue)],
            Command::Get(c) => std::iter::once(&c.first)
                .chain(&c.more)
                .map(|q| (Right::Get, &q[..]))
                .collect(),
            Command::Done(c) => vec![(Right::Get, &c.queue)],
            Command::Nack(c) => vec![(Right::Get, &c.queue)],
            Command::Touch(c) => vec![(Right::Get, &c.queue)],
            Command::Join(c) => vec![(Right::See, &c.queue)],
            // Making a queue is a first use, as a put's or a get's is (and
            // Python's classes QCREATE to attach): any right on it, with a
            // KIND and a MAXSIZE. Settings that decide what becomes of its
            // messages need admin, new queue or not; changing the settings
            // of one that exists needs admin too (checked as it applies:
            // only then is it known). A dead-letter target will be put to:
            // the put right on it.
            Command::Create(c) => std::iter::once((Right::See, &c.queue()[..]))
                .chain(c.controls().then(|| (Right::Admin, &c.queue()[..])))
                .chain(c.dead_letter().map(|d| (Right::Put, d)))
                .collect(),
            Command::Config(c) => std::iter::once((Right::Admin, &c.queue()[..]))
                .chain(c.dead_letter().map(|d| (Right::Put, d)))
                .collect(),
            Command::Inspect(admin::Inspect::Len(q) | admin::Inspect::Info(q)) => {
                vec![(Right::See, q)]
            }
            // Payloads: for those who may get them.
            Command::Inspect(admin::Inspect::Peek(q, _)) => vec![(Right::Get, q)],
            // Lists only what the user may see.
            Command::Inspect(admin::Inspect::List | admin::Inspect::SyncList) => Vec::new(),
            Command::Manage(
                admin::Manage::Purge(q)
                | admin::Manage::Drop(q)
                | admin::Manage::Reopen(q)
                | admin::Manage::Shutdown { queue: q, .. },
            ) => vec![(Right::Admin, q)],
            Command::Lock(c) => vec![(Right::Lock, &c.name)],
            Command::Unlock(c) => vec![(Right::Lock, &c.name)],
            Command::Locked(c) => vec![(Right::Lock, &c.name)],
            Command::SemAcquire(c) => vec![(Right::Lock, &c.name)],
            Command::SemRelease(c) => vec![(Right::Lock, &c.name)],
            Command::SemValue(c) => vec![(Right::Lock, &c.name)],
            Command::SemHeld(c) => vec![(Right::Lock, &c.name)],
            Command::Event(c) => vec![(Right::Lock, c.name())],
            Command::EvWait(c) => vec![(Right::Lock, &c.name)],
            Command::CondWait(c) => vec![(Right::Lock, &c.cond), (Right::Lock, &c.lock)],
            Command::CondNotify(c) => vec![(Right::Lock, &c.cond)],
            Command::BarWait(c) => vec![(Right::Lock, &c.name)],
            Command::Barrier(c) => vec![(Right::Lock, c.name())],
            Command::Server(_) => Vec::new(),
        }
    }

    /// Refuses, with -NOPERM naming the command, the right and the queue,
    /// what `user` may not do.
    fn permitted(&self, user: &User, command: &str) -> Result<(), CmdError> {
        for (right, name) in self.needs() {
            if !user.may(right, name) {
                let what = if right == Right::Lock {
                    "lock"
                } else {
                    "queue"
                };
                return Err(err(
                    "NOPERM",
                    format!(
                        "user '{}' has no '{}' right on {what} '{}' ({command})",
                        user.name,
                        right.name(),
                        String::from_utf8_lossy(name)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// True when it may change what the log records: its reply then
    /// waits until the log is durable.
    fn changes_log(&self) -> bool {
        matches!(
            self,
            Command::Create(_)
                | Command::Config(_)
                | Command::Put(_)
                | Command::PutMany(_)
                | Command::Get(_)
                | Command::Done(_)
                | Command::Nack(_)
                | Command::Manage(_)
        )
    }

    fn apply(self, s: &mut Session) -> Res {
        match self {
            Command::Server(c) => c.apply(s),
            Command::Lock(c) => c.apply(s),
            Command::Unlock(c) => c.apply(s),
            Command::Locked(c) => c.apply(s),
            Command::SemAcquire(c) => c.apply(s),
            Command::SemRelease(c) => c.apply(s),
            Command::SemValue(c) => c.apply(s),
            Command::SemHeld(c) => c.apply(s),
            Command::Event(c) => c.apply(s),
            Command::EvWait(c) => c.apply(s),
            Command::CondWait(c) => c.apply(s),
            Command::CondNotify(c) => c.apply(s),
            Command::BarWait(c) => c.apply(s),
            Command::Barrier(c) => c.apply(s),
            Command::Create(c) => c.apply(s),
            Command::Config(c) => c.apply(s),
            Command::Put(c) => c.apply(s),
            Command::PutMany(c) => c.apply(s),
            Command::Get(c) => c.apply(s),
            Command::Done(c) => c.apply(s),
            Command::Nack(c) => c.apply(s),
            Command::Touch(c) => c.apply(s),
            Command::Join(c) => c.apply(s),
            Command::Inspect(c) => c.apply(s),
            Command::Manage(c) => c.apply(s),
        }
    }
}

impl Session {
    /// Writes an error reply, or passes a flow on.
    fn settle(&mut self, r: Result<Flow, CmdError>) -> Flow {
        r.unwrap_or_else(|e| {
            self.reply().error(e.code, &e.msg);
            Flow::Continue
        })
    }
}

/// Commands a connection may send before it authenticates (each but
/// AUTH, HELLO and QUIT answered -NOAUTH); the next closes it.
pub(crate) const STRANGER_COMMANDS: u32 = 16;

/// Wrong passwords a connection may send; the next command closes it.
pub(crate) const WRONG_PASSWORDS: u32 = 3;

/// True when the connection's next command closes it: too many commands
/// before it authenticated, or too many wrong passwords.
pub(crate) fn at_limits(s: &Session) -> bool {
    (!s.authed && s.stranger_commands >= STRANGER_COMMANDS) || s.wrong_passwords >= WRONG_PASSWORDS
}

/// Answers, then closes, a connection that sent too much without
/// authenticating (or too many wrong passwords).
fn close_stranger(s: &mut Session, why: &str) -> Outcome {
    s.reply().error(
        "NOAUTH",
        &format!("Authentication required; closing: {why}."),
    );
    s.broker
        .unauthenticated_closed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Outcome::Done(Flow::Close)
}

/// Runs one request: parses it, checks the client may run it, applies it.
/// Its reply (or error) is in the session's output unless it waits.
pub(crate) fn execute(s: &mut Session, req: Request) -> Outcome {
    s.broker.commands.add(1);
    s.commands += 1;
    // Before anything else is read of it: a client that has not
    // authenticated may only authenticate, or leave.
    let command = command_name(&req[0]);
    if !s.authed {
        // A stranger that keeps sending commands without authenticating
        // is closed: a pipeline of them would cost the broker a reply each.
        s.stranger_commands += 1;
        if s.stranger_commands > STRANGER_COMMANDS || s.wrong_passwords >= WRONG_PASSWORDS {
            return close_stranger(s, "too many commands without authenticating");
        }
        if !matches!(command, Some("AUTH" | "HELLO" | "QUIT")) {
            return Outcome::Done(s.settle(Err(err("NOAUTH", "Authentication required."))));
        }
    } else if s.wrong_passwords >= WRONG_PASSWORDS {
        return close_stranger(s, "too many wrong passwords");
    }
    let outcome = Command::parse(command, &req).and_then(|cmd| {
        if let Some(user) = &s.user {
            cmd.permitted(user, command.unwrap_or("?"))?;
        }
        if cmd.changes_log() {
            s.logged = true;
        }
        cmd.apply(s)
    });
    match outcome {
        Ok(o) => o,
        Err(e) => Outcome::Done(s.settle(Err(e))),
    }
}
