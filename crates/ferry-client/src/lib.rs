//! A Rust client for ferry, with the method names of Python's `queue`.
//!
//! ```no_run
//! use ferry_client::Client;
//! use std::time::Duration;
//!
//! let mut c = Client::connect("ferry://127.0.0.1:7878")?;
//! c.put("jobs", b"resize photo 1")?;               // waits while the queue is full
//! let job = c.get("jobs")?;                         // leased to this connection
//! println!("{}", String::from_utf8_lossy(&job.payload));
//! c.task_done("jobs", job.id)?;                     // finished; never redelivered
//! assert!(c.get_timeout("jobs", Duration::from_millis(10)).is_err()); // Error::Empty
//! c.join("jobs")?;
//! # Ok::<(), ferry_client::Error>(())
//! ```
//!
//! # Layout
//!
//! - [`Url`], parsed from `ferry://[:password@]host[:port]`,
//!   `ferrys://[:password@]host[:port][?ca=&cert=&key=]` (TLS, `tls.rs`)
//!   or `unix:///path[?password=...]`.
//! - [`AsyncClient`] (`aio.rs`): the one implementation of every
//!   operation, on tokio.
//! - [`Client`]: the blocking API — the async client run on a
//!   current-thread runtime of its own (the mini-redis pattern).
//! - The wire protocol is ferry-proto's codec, the broker's own: commands
//!   encoded with `encode_command`, replies decoded by a resumable
//!   `Decoder` (a large reply costs time in proportion to its size).
//!
//! What a get returns is leased to the connection: if the connection
//! closes (the client drops, or dies) before `task_done`, the broker
//! delivers the message again, with one more attempt. A lost connection is
//! reopened, and only what is safe is retried (see [`Client`]). Batches
//! (`put_many`, `get_many`) are the way to amortise round trips; general
//! pipelining is not offered yet.

mod aio;
mod blocking;
mod postgres;
mod redis;
mod request;
mod synchronize;
mod tls;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use aio::{AsyncClient, resendable};
pub use blocking::Client;
pub use ferry_proto::Value;

/// Where the broker is, and how to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// TCP host and port, or a Unix socket path.
    pub address: Address,
    /// The password to AUTH with, if any.
    pub password: Option<String>,
    /// The user it belongs to (`ferry://user:password@host`, for a broker
    /// with an ACL file); none: the default user.
    pub user: Option<String>,
}

/// A broker's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String, u16),
    /// A Unix socket.
    Unix(PathBuf),
    /// A Redis server (`redis://`): ferry's semantics in Lua scripts.
    Redis(RedisTarget),
    /// A broker that speaks TLS (`ferrys://`).
    Tls(TlsTarget),
    /// A PostgreSQL server (`postgres://`): ferry's semantics in SQL
    /// functions.
    Postgres(PostgresTarget),
}

/// A TLS broker: `ferrys://[:password@]host[:port][?ca=PEM&cert=PEM&key=PEM]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsTarget {
    /// The host, also the name its certificate must carry (a DNS name or
    /// an IP address).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The CA that signed the broker's certificate (PEM); without it, the
    /// public CAs of the Mozilla list.
    pub ca: Option<PathBuf>,
    /// This client's certificate and key (PEM), for a broker that requires
    /// them (`--tls-ca`).
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    pub key: Option<PathBuf>,
}

pub use postgres::Target as PostgresTarget;
pub use redis::Target as RedisTarget;

/// A client's own holder token (who holds what it gets, on the engines
/// the client answers itself): unguessable enough, and unique.
pub(crate) fn holder_token(id: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("c-{:x}-{:x}-{id:x}", std::process::id(), nanos)
}

/// The default broker: `ferry://127.0.0.1:7878`.
pub const DEFAULT_URL: &str = "ferry://127.0.0.1:7878";

/// The heartbeat of a Redis or PostgreSQL URL's holders (`?lease`, 5 s
/// by default): a lock or lease they stop renewing is gone that long
/// after. `None` for ferry's broker (its locks live with their
/// connection) or a bad URL.
pub fn heartbeat_of(url: &str) -> Option<std::time::Duration> {
    match url.parse::<Url>().ok()?.address {
        Address::Redis(t) => Some(t.lease),
        Address::Postgres(t) => Some(t.lease),
        _ => None,
    }
}

/// How long the DEDUP key a client puts on its own puts must count
/// (`DEDUPFOR`), for a put that waits at most `timeout` (`None`: not at
/// all, or forever): a put is sent again only within the reconnect
/// window after its connection was lost, or within its own wait, so two
/// minutes past the wait is ample — where the broker's 10 minutes would
/// keep ~6 million keys for a program that puts 10,000 a second.
pub fn resend_dedup_window(timeout: Option<std::time::Duration>) -> u64 {
    let wait = timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    wait.saturating_add(120_000)
}

/// The DEDUP keys a client puts on its own puts, so that one whose
/// connection was lost is sent again safely: this process, the moment the
/// keys were made, and a count — unique across processes and clients.
#[derive(Debug)]
pub struct ResendKeys {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl ResendKeys {
    /// Keys starting with `tag` (which client made them).
    pub fn new(tag: &str) -> ResendKeys {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        ResendKeys {
            prefix: format!("{tag}-{:x}-{nanos:x}-", std::process::id()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The next key.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n}", self.prefix)
    }
}

impl std::str::FromStr for Url {
    type Err = Error;

    fn from_str(s: &str) -> Result<Url, Error> {
        let bad = |why: &str| Error::Url(format!("{s:?}: {why}"));
        if s.starts_with("redis://") || s.starts_with("redis+cluster://") {
            return Ok(Url {
                address: Address::Redis(RedisTarget::parse(s)?),
                password: None,
                user: None,
            });
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Url {
                address: Address::Postgres(PostgresTarget::parse(s)?),
                password: None,
                user: None,
            });
        }
        if let Some(rest) = s.strip_prefix("unix://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            let password = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("password="))
                .map(str::to_string);
            let user = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("user="))
                .map(str::to_string);
            return Ok(Url {
                address: Address::Unix(PathBuf::from(path)),
                password,
                user,
            });
        }
        let (rest, tls) = match (s.strip_prefix("ferry://"), s.strip_prefix("ferrys://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => {
                return Err(bad(
                    "the scheme must be ferry://, ferrys://, unix://, redis:// or redis+cluster://",
                ));
            }
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hp)) => (Some(auth), hp),
            None => (None, rest),
        };
        let password = auth.map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_string());
        let user = auth
            .and_then(|a| a.split_once(':'))
            .map(|(u, _)| u.to_string())
            .filter(|u| !u.is_empty());
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number up to 65535"))?,
            ),
            _ => (hostport, 7878),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut files = [("ca", None), ("cert", None), ("key", None)];
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match files.iter_mut().find(|(name, _)| *name == k) {
                Some((_, slot)) if tls && !v.is_empty() => *slot = Some(PathBuf::from(v)),
                _ => {
                    return Err(bad(&format!(
                        "unknown option {k:?} (ferrys:// takes ca, cert and key)"
                    )));
                }
            }
        }
        let [(_, ca), (_, cert), (_, key)] = files;
        if cert.is_some() != key.is_some() {
            return Err(bad("cert and key go together"));
        }
        let address = if tls {
            Address::Tls(TlsTarget {
                host,
                port,
                ca,
                cert,
                key,
            })
        } else {
            Address::Tcp(host, port)
        };
        Ok(Url {
            address,
            password: password.filter(|p| !p.is_empty()),
            user,
        })
    }
}

/// What went wrong. Nothing is hidden: a server error the client has no
/// variant for comes back as [`Error::Server`] with its code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue stayed full (Python's `queue.Full`).
    #[error("queue is full")]
    Full,
    /// The queue stayed empty (Python's `queue.Empty`).
    #[error("queue is empty")]
    Empty,
    /// The queue is shut down (Python 3.13's `ShutDown`).
    #[error("queue is shut down")]
    ShutDown,
    /// `task_done`, `nack` or `touch` on a message this connection does not
    /// hold (Python's "task_done() called too many times").
    #[error("message is not leased by this client")]
    NotLeased,
    /// The connection that held this message's lease was lost; the broker
    /// delivers the message again (to this client or another), so this
    /// `task_done` did not and cannot finish it.
    #[error("the lease was lost with its connection; the message will be delivered again")]
    LeaseLost,
    /// A payload over the broker's `--max-payload`, refused before it was
    /// sent.
    #[error("a payload of {size} bytes is over the broker's limit of {max} bytes (--max-payload)")]
    TooBig {
        /// The payload's size.
        size: usize,
        /// The broker's limit.
        max: usize,
    },
    /// Authentication was refused or is required.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Another error reply from the broker.
    #[error("{code} {message}")]
    Server {
        /// Its code (`OOM`, `NOSPACE`, `TOOBIG`, `ERR`, ...).
        code: String,
        /// Its message.
        message: String,
    },
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The broker's reply made no sense for the command.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A URL that cannot be used.
    #[error("bad URL {0}")]
    Url(String),
}

/// A message got from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The queue it came from.
    pub queue: String,
    /// Its id (pass it to [`Client::task_done`]).
    pub id: u64,
    /// The payload.
    pub payload: Vec<u8>,
    /// Earlier deliveries that did not finish (0 the first time).
    pub attempts: u32,
}

impl Message {
    /// The messages of a QGET reply — for replies got through
    /// [`Client::call`] or [`Client::pipeline`]. Null (a timeout, or
    /// NOWAIT with nothing ready) is [`Error::Empty`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let reply = c.call(&[b"QGET", b"jobs", b"COUNT", b"10", b"NOWAIT"])?;
    /// let batch = ferry_client::Message::from_reply(reply)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn from_reply(reply: Value) -> Result<Vec<Message>, Error> {
        match reply {
            Value::Nil => Err(Error::Empty),
            Value::Array(entries) => entries.into_iter().map(Message::from_entry).collect(),
            Value::Error { code, message } => Err(Error::Server { code, message }),
            other => Err(Error::Protocol(format!("QGET replied {other:?}"))),
        }
    }

    /// One `[queue, id, payload, attempts]` entry of a QGET reply.
    fn from_entry(v: Value) -> Result<Message, Error> {
        let bad = || Error::Protocol("a QGET entry is not [queue, id, payload, attempts]".into());
        let Value::Array(parts) = v else {
            return Err(bad());
        };
        let mut it = parts.into_iter();
        match (it.next(), it.next(), it.next(), it.next()) {
            (
                Some(Value::Bulk(q)),
                Some(Value::Int(id)),
                Some(Value::Bulk(payload)),
                Some(Value::Int(attempts)),
            ) => Ok(Message {
                queue: String::from_utf8(q.to_vec()).map_err(|_| bad())?,
                id: u64::try_from(id).map_err(|_| bad())?,
                payload: payload.into(),
                attempts: u32::try_from(attempts).map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

/// How hard a client tries to get a connection back.
#[derive(Clone, Copy, Debug)]
pub struct Reconnect {
    /// Give up after trying this long.
    pub within: Duration,
    /// The first pause between tries; it doubles up to a second.
    pub first_backoff: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            within: Duration::from_secs(10),
            first_backoff: Duration::from_millis(25),
        }
    }
}

/// Call before a fork whose child goes on without exec (Python's
/// `os.register_at_fork`), then `after_fork` in both processes: the
/// client's process-wide locks are free in the child.
pub fn before_fork() {
    redis::renew::before_fork();
    postgres::background::before_fork();
}

/// See `before_fork`.
pub fn after_fork() {
    postgres::background::after_fork();
    redis::renew::after_fork();
}

/// Blocks, in the calling thread, the signals a program handles itself
/// (Ctrl-C's SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2, SIGCHLD,
/// SIGALRM, SIGWINCH), so that the kernel delivers them to the program's
/// own threads. Every thread ferry starts calls it first: Python, for one,
/// runs its signal handlers only on its main thread, and notices a signal
/// that landed on another thread only at its next check — a Ctrl-C could
/// wait out a `time.sleep` (tokio's blocking pool, which resolves host
/// names, lingers for seconds after a connect).
pub fn leave_signals_to_the_program() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
        Signal::SIGALRM,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    // Cannot fail with a valid `how`; a thread that kept them would only
    // make a signal's delivery slower, as before.
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}

/// A reply as the caller sees it: an error reply becomes its [`Error`].
pub(crate) fn reply_value(value: Value) -> Result<Value, Error> {
    match value {
        Value::Error { code, message } => Err(match code.as_str() {
            "FULL" => Error::Full,
            "SHUTDOWN" => Error::ShutDown,
            "NOTLEASED" => Error::NotLeased,
            "NOAUTH" | "WRONGPASS" => Error::Auth(format!("{code} {message}")),
            _ => Error::Server { code, message },
        }),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn postgres_urls() {
        let Address::Postgres(t) =
            url("postgres://u:pw@h:5433/db?lease=2000&sslmode=disable").address
        else {
            panic!("not postgres");
        };
        assert_eq!(
            t.url, "postgres://u:pw@h:5433/db?sslmode=disable",
            "lease is ferry's"
        );
        assert_eq!(t.lease, Duration::from_millis(2000));
        let Address::Postgres(t) = url("postgresql:///db?host=/run/postgresql").address else {
            panic!("not postgres");
        };
        assert_eq!(t.lease, Duration::from_secs(5));
        assert_eq!(
            heartbeat_of("postgres://h/db?lease=900"),
            Some(Duration::from_millis(900))
        );
        for (bad, why) in [
            (
                "postgres://u:secret@h/db?sslmode=require",
                "not supported yet",
            ),
            ("postgres://u:secret@h/db?lease=50", "at least 100 ms"),
            ("postgres://u:secret@h/db?nonsense=1", "nonsense"),
        ] {
            let e = bad.parse::<Url>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(
                !e.contains("secret"),
                "the password stays out of messages: {e}"
            );
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            url("ferry://127.0.0.1:7878").address,
            Address::Tcp("127.0.0.1".into(), 7878)
        );
        assert_eq!(
            url("ferry://example.org").address,
            Address::Tcp("example.org".into(), 7878)
        );
        assert_eq!(url("ferry://:pw@h:1/").password.as_deref(), Some("pw"));
        let u = url("ferry://user:pw@h:1");
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref()),
            (Some("user"), Some("pw"))
        );
        assert_eq!(url("ferry://:pw@h:1").user, None);
        assert_eq!(
            url("ferry://[::1]:9").address,
            Address::Tcp("::1".into(), 9)
        );
        assert_eq!(
            url("ferrys://:pw@h:9?ca=/c.pem&cert=/a.pem&key=/a.key").address,
            Address::Tls(TlsTarget {
                host: "h".into(),
                port: 9,
                ca: Some("/c.pem".into()),
                cert: Some("/a.pem".into()),
                key: Some("/a.key".into()),
            })
        );
        for bad in [
            "ferrys://h?cert=/a.pem",
            "ferrys://h?pem=/x",
            "ferry://h?ca=/c.pem",
            "ferrys://h?ca=",
        ] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
        let u = url("unix:///run/f.sock?password=x");
        assert_eq!(
            (u.address, u.password.as_deref()),
            (Address::Unix("/run/f.sock".into()), Some("x"))
        );
        let r = url("redis://:pw@h:6390/2?wait=1&lease=5000");
        let Address::Redis(t) = r.address else {
            panic!("not redis: {r:?}")
        };
        assert_eq!(
            (t.url.as_str(), t.wait, t.lease),
            ("redis://:pw@h:6390/2", 1, Duration::from_millis(5000))
        );
        assert_eq!(t.nodes, None);
        let r = url("redis+cluster://:pw@a:7001,b:7002/?wait=1");
        let Address::Redis(t) = r.address else {
            panic!("not redis: {r:?}")
        };
        assert_eq!(
            t.nodes,
            Some(vec![
                "redis://:pw@a:7001".into(),
                "redis://:pw@b:7002".into()
            ])
        );
        assert_eq!(t.wait, 1);
        for bad in [
            "http://h",
            "ferry://",
            "ferry://h:99999",
            "unix://",
            "redis://h?lease=5",
            "redis://h?wait=x",
            "redis://h?what=1",
            "redis+cluster://",
            "redis+cluster://h:1/2",
            "redis+cluster://h:1,?wait=1",
        ] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
    }
}
