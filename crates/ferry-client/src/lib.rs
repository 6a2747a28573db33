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
mod redis;
mod tls;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use aio::{AsyncClient, resendable};
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

pub use redis::Target as RedisTarget;

/// The default broker: `ferry://127.0.0.1:7878`.
pub const DEFAULT_URL: &str = "ferry://127.0.0.1:7878";

/// The heartbeat of a Redis URL's holders (`?lease`, 5 s by default): a
/// lock or lease they stop renewing is gone that long after. `None` for
/// ferry's broker (its locks live with their connection) or a bad URL.
pub fn heartbeat_of(url: &str) -> Option<std::time::Duration> {
    if !url.starts_with("redis") {
        return None;
    }
    redis::Target::parse(url).ok().map(|t| t.lease)
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

/// A blocking client: [`AsyncClient`] run on a small runtime of its own,
/// so every operation exists once.
///
/// It holds one connection and, when that connection is lost, opens
/// another (see [`Reconnect`]) and retries only what is safe to retry:
///
/// - reads (`qsize`, `join`, ...), settings and shutdowns, which change
///   nothing twice;
/// - `put`, which carries a DEDUP key made by the client, so a put whose
///   reply was lost returns the first put's id instead of adding a copy
///   (keys are durable: this holds across a broker crash);
/// - gets, which are leased: a get whose reply was lost left its messages
///   leased to the dead connection, and the broker gives them back.
///
/// Not retried: `put_many` (no DEDUP for batches), raw [`Client::call`]s,
/// and `task_done` / `nack` of a message got on a connection that was lost
/// — its lease went with that connection, so they fail with
/// [`Error::LeaseLost`] and the message is delivered again.
///
/// A [`Message`] dropped without `task_done` stays leased until this
/// client's connection closes; then the broker delivers it again (with
/// one more attempt). That is the safe thing: work is never lost, only
/// repeated.
pub struct Client {
    rt: tokio::runtime::Runtime,
    inner: AsyncClient,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Client {
    /// Connects to a URL (see [`Url`]) and authenticates if it has a
    /// password.
    ///
    /// ```no_run
    /// let c = ferry_client::Client::connect("unix:///run/ferry.sock?password=s3cret")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn connect(url: &str) -> Result<Client, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(leave_signals_to_the_program)
            .build()?;
        let inner = rt.block_on(AsyncClient::connect(url))?;
        Ok(Client { rt, inner })
    }

    /// Connects to `FERRY_URL`, or [`DEFAULT_URL`].
    ///
    /// ```no_run
    /// let c = ferry_client::Client::from_env()?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn from_env() -> Result<Client, Error> {
        let url = std::env::var("FERRY_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        Client::connect(&url)
    }

    /// Sets how hard to try to reconnect (`within: 0` never reconnects).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.set_reconnect(ferry_client::Reconnect { within: std::time::Duration::from_secs(60), ..Default::default() });
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn set_reconnect(&mut self, reconnect: Reconnect) {
        self.inner.set_reconnect(reconnect);
    }

    /// Sends any command and returns its reply; an error reply becomes the
    /// matching [`Error`]. Never retried: after a lost connection it
    /// reconnects for the next call and returns the I/O error.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let reply = c.call(&[b"PING"])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        self.rt.block_on(self.inner.call(args))
    }

    /// Sends several commands in one write and reads their replies, in
    /// order: one round trip for all. Each reply is its own result; a lost
    /// connection fails the whole pipeline (not retried).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let replies = c.pipeline(&[vec![&b"QLEN"[..], b"a"], vec![&b"QLEN"[..], b"b"]])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        self.rt.block_on(self.inner.pipeline(commands))
    }

    /// [`pipeline`](Self::pipeline), given up after `within`
    /// ([`Error::Io`], `TimedOut`: the commands may or may not have run).
    pub fn pipeline_within(
        &mut self,
        commands: &[Vec<&[u8]>],
        within: Duration,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        self.rt
            .block_on(self.inner.pipeline_within(commands, within))
    }

    /// Puts a message, waiting as long as the queue is full; replies its id.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let id = c.put("jobs", b"payload")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.rt.block_on(self.inner.put(queue, payload))
    }

    /// Puts a message if there is room now, else [`Error::Full`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// match c.put_nowait("jobs", b"payload") {
    ///     Err(ferry_client::Error::Full) => println!("try later"),
    ///     other => { other?; }
    /// }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put_nowait(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.rt.block_on(self.inner.put_nowait(queue, payload))
    }

    /// Puts a message, waiting at most `timeout` for room.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.put_timeout("jobs", b"payload", std::time::Duration::from_secs(1))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put_timeout(
        &mut self,
        queue: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, Error> {
        self.rt
            .block_on(self.inner.put_timeout(queue, payload, timeout))
    }

    /// Puts several messages, all or nothing, waiting for room for all of
    /// them; replies their ids.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let ids = c.put_many("jobs", &[&b"a"[..], b"b"])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put_many(&mut self, queue: &str, payloads: &[&[u8]]) -> Result<Vec<u64>, Error> {
        self.rt.block_on(self.inner.put_many(queue, payloads))
    }

    /// Gets a message, waiting as long as the queue is empty. It is leased
    /// to this connection until [`Client::task_done`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.task_done("jobs", m.id)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get(&mut self, queue: &str) -> Result<Message, Error> {
        self.rt.block_on(self.inner.get(queue))
    }

    /// Gets a message if one is ready now, else [`Error::Empty`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if let Ok(m) = c.get_nowait("jobs") { c.task_done("jobs", m.id)?; }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_nowait(&mut self, queue: &str) -> Result<Message, Error> {
        self.rt.block_on(self.inner.get_nowait(queue))
    }

    /// Gets a message, waiting at most `timeout`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get_timeout("jobs", std::time::Duration::from_secs(5))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_timeout(&mut self, queue: &str, timeout: Duration) -> Result<Message, Error> {
        self.rt.block_on(self.inner.get_timeout(queue, timeout))
    }

    /// Gets up to `n` messages, waiting at most `timeout` (`None`: as long
    /// as it takes) for the first.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let batch = c.get_many("jobs", 100, Some(std::time::Duration::from_secs(1)))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_many(
        &mut self,
        queue: &str,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Message>, Error> {
        self.rt.block_on(self.inner.get_many(queue, n, timeout))
    }

    /// Python's `task_done`: finishes a message this connection got.
    /// [`Error::NotLeased`] if it holds no such message (done already);
    /// [`Error::LeaseLost`] if the connection that got it was lost.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.task_done("jobs", m.id)?;
    /// assert!(matches!(c.task_done("jobs", m.id), Err(ferry_client::Error::NotLeased)));
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn task_done(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.rt.block_on(self.inner.task_done(queue, id))
    }

    /// Gives a message back for another try (attempt + 1).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.nack("jobs", m.id)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn nack(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.rt.block_on(self.inner.nack(queue, id))
    }

    /// Extends the lease of a message this connection got, to `lease` from
    /// now (or its own length again); replies the time left, `None` for a
    /// lease that lasts as long as the connection.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.touch("jobs", m.id, Some(std::time::Duration::from_secs(30)))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn touch(
        &mut self,
        queue: &str,
        id: u64,
        lease: Option<Duration>,
    ) -> Result<Option<Duration>, Error> {
        self.rt.block_on(self.inner.touch(queue, id, lease))
    }

    /// Ready messages (Python's `qsize()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} waiting", c.qsize("jobs")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn qsize(&mut self, queue: &str) -> Result<u64, Error> {
        self.rt.block_on(self.inner.qsize(queue))
    }

    /// True when no message is ready (Python's `empty()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if c.empty("jobs")? { println!("idle"); }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn empty(&mut self, queue: &str) -> Result<bool, Error> {
        self.rt.block_on(self.inner.empty(queue))
    }

    /// True when the queue is at its maxsize (Python's `full()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if c.full("jobs")? { println!("back off"); }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn full(&mut self, queue: &str) -> Result<bool, Error> {
        self.rt.block_on(self.inner.full(queue))
    }

    /// [`AsyncClient::call_cancellable`]: a command that may block, given
    /// up when `cancel` resolves (it runs on this client's runtime), with
    /// nothing the broker delivered meanwhile lost.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let give_up = tokio::time::sleep(std::time::Duration::from_secs(1));
    /// let (reply, cancelled) = c.call_cancellable(&[b"QGET", b"jobs"], give_up)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn call_cancellable(
        &mut self,
        args: &[&[u8]],
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        self.rt.block_on(self.inner.call_cancellable(args, cancel))
    }

    /// [`AsyncClient::set_holder`]: this client's connections join the
    /// holder group `token`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.set_holder("a-random-token-of-this-process")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn set_holder(&mut self, token: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.set_holder(token))
    }

    /// The largest payload the broker takes, as it said at connect
    /// (`None`: it did not say).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let limit = c.max_payload()?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn max_payload(&mut self) -> Result<Option<usize>, Error> {
        self.rt.block_on(self.inner.max_payload())
    }

    /// One of QINFO's counters (`qsize`, `leased`, `waiting_getters`, ...
    /// — docs/protocol.md lists them); 0 for a queue that does not exist.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} consumers waiting", c.counter("jobs", "waiting_getters")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn counter(&mut self, queue: &str, field: &str) -> Result<u64, Error> {
        self.rt.block_on(self.inner.counter(queue, field))
    }

    /// Messages put and not yet done.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} to go", c.unfinished("jobs")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn unfinished(&mut self, queue: &str) -> Result<u64, Error> {
        self.rt.block_on(self.inner.unfinished(queue))
    }

    /// Waits until every message put has been done (Python's `join()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.join("jobs")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn join(&mut self, queue: &str) -> Result<(), Error> {
        self.rt.block_on(self.inner.join(queue))
    }

    /// Waits at most `timeout` for every message to be done; false if some
    /// were not.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let finished = c.join_timeout("jobs", std::time::Duration::from_secs(60))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn join_timeout(&mut self, queue: &str, timeout: Duration) -> Result<bool, Error> {
        self.rt.block_on(self.inner.join_timeout(queue, timeout))
    }

    /// Python 3.13's `shutdown(immediate)`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.shutdown("jobs", false)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn shutdown(&mut self, queue: &str, immediate: bool) -> Result<(), Error> {
        self.rt.block_on(self.inner.shutdown(queue, immediate))
    }

    /// Takes the mutex `name` (`multiprocessing.Lock.acquire`): waits up to
    /// `timeout` (`None`: forever; zero: not at all). Replies its fencing
    /// token, or `None` if it was not acquired in time. Released by
    /// [`unlock`](Self::unlock), when `ttl` passes, or when this
    /// connection closes (see [`AsyncClient::lock`]).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if let Some(token) = c.lock("ledger", None, None)? {
    ///     // ... the critical section ...
    ///     c.unlock("ledger", token)?;
    /// }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn lock(
        &mut self,
        name: &str,
        timeout: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, Error> {
        self.rt.block_on(self.inner.lock(name, timeout, ttl))
    }

    /// Releases the mutex `name` if `token` is its current grant. Replies
    /// whether it was.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let released = c.unlock("ledger", 1)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn unlock(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        self.rt.block_on(self.inner.unlock(name, token))
    }

    /// Whether `token` still holds the mutex `name`: false once it was
    /// released, its TTL ran out, or its holder's connection (on Redis,
    /// its process's heartbeat) was lost.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let still_mine = c.lock_held("ledger", 1)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn lock_held(&mut self, name: &str, token: u64) -> Result<bool, Error> {
        self.rt.block_on(self.inner.lock_held(name, token))
    }
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
