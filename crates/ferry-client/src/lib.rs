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
//! - [`Url`]: `ferry://[:password@]host[:port]` and
//!   `unix:///path[?password=...]`.
//! - [`Client`]: one blocking connection; every call sends one command and
//!   waits for its reply.
//! - `resp`: the client side of the wire protocol.
//!
//! What a get returns is leased to the connection: if the connection
//! closes (the client drops, or dies) before `task_done`, the broker
//! delivers the message again, with one more attempt. A lost connection is
//! reopened, and only what is safe is retried (see [`Client`]). Not built
//! yet: the async API and pipelining (issue 5).

mod resp;

use std::io::{self, BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

pub use resp::Value;

/// Where the broker is, and how to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// TCP host and port, or a Unix socket path.
    pub address: Address,
    /// The password to AUTH with, if any.
    pub password: Option<String>,
}

/// A broker's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String, u16),
    /// A Unix socket.
    Unix(PathBuf),
}

/// The default broker: `ferry://127.0.0.1:7878`.
pub const DEFAULT_URL: &str = "ferry://127.0.0.1:7878";

impl std::str::FromStr for Url {
    type Err = Error;

    fn from_str(s: &str) -> Result<Url, Error> {
        let bad = |why: &str| Error::Url(format!("{s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("unix://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            let password = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("password="))
                .map(str::to_string);
            return Ok(Url {
                address: Address::Unix(PathBuf::from(path)),
                password,
            });
        }
        let rest = s
            .strip_prefix("ferry://")
            .ok_or_else(|| bad("the scheme must be ferry:// or unix://"))?;
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hp)) => (Some(auth), hp),
            None => (None, rest),
        };
        let password = auth.map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_string());
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
        Ok(Url {
            address: Address::Tcp(host, port),
            password: password.filter(|p| !p.is_empty()),
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

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// One live connection.
struct Link {
    reader: BufReader<Stream>,
    writer: BufWriter<Stream>,
}

impl Link {
    fn open(url: &Url) -> Result<Link, Error> {
        let (r, w) = match &url.address {
            Address::Tcp(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port))?;
                s.set_nodelay(true)?;
                (Stream::Tcp(s.try_clone()?), Stream::Tcp(s))
            }
            Address::Unix(path) => {
                let s = UnixStream::connect(path)?;
                (Stream::Unix(s.try_clone()?), Stream::Unix(s))
            }
        };
        let mut link = Link {
            reader: BufReader::new(r),
            writer: BufWriter::new(w),
        };
        if let Some(p) = &url.password {
            match link.call(&[b"AUTH", p.as_bytes()]) {
                Ok(_) => {}
                Err(Error::Server { code, message }) => {
                    return Err(Error::Auth(format!("{code} {message}")));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(link)
    }

    fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        resp::write_command(&mut self.writer, args)?;
        self.writer.flush()?;
        match resp::read_value(&mut self.reader)? {
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
}

/// How hard the client tries to get a connection back.
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

/// A blocking client. It holds one connection and, when that connection
/// is lost, opens another (see [`Reconnect`]) and retries only what is
/// safe to retry:
///
/// - reads (`qsize`, `join`, ...), settings and shutdowns, which change
///   nothing twice;
/// - `put`, which carries a DEDUP key made by the client, so a put whose
///   reply was lost returns the first put's id instead of adding a copy;
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
    url: Url,
    link: Option<Link>,
    /// Bumped on every new connection; leases remember theirs.
    generation: u64,
    /// Messages got and not yet done: the connection generation that
    /// holds their lease.
    held: std::collections::HashMap<(String, u64), u64>,
    reconnect: Reconnect,
    /// Makes DEDUP keys unique: this client's identity and a counter.
    dedup_prefix: String,
    dedup_next: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// A timeout as a command's argument: whole milliseconds, rounded up so
/// that a wait is never shorter than asked; at least 1 (0 would mean
/// forever).
fn millis(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    ms.min(u128::from(u64::MAX)).to_string()
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
        let url: Url = url.parse()?;
        let link = Link::open(&url)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Client {
            url,
            link: Some(link),
            generation: 1,
            held: std::collections::HashMap::new(),
            reconnect: Reconnect::default(),
            dedup_prefix: format!("ferry-{:x}-{:x}-", std::process::id(), nanos),
            dedup_next: 0,
        })
    }

    /// Sets how hard to try to reconnect (`within: 0` never reconnects).
    pub fn set_reconnect(&mut self, reconnect: Reconnect) {
        self.reconnect = reconnect;
    }

    /// The live connection, reopened (with backoff) if it was lost.
    fn link(&mut self) -> Result<&mut Link, Error> {
        if self.link.is_none() {
            let deadline = std::time::Instant::now() + self.reconnect.within;
            let mut pause = self.reconnect.first_backoff;
            let link = loop {
                match Link::open(&self.url) {
                    Ok(link) => break link,
                    Err(Error::Io(e)) => {
                        if std::time::Instant::now() + pause > deadline {
                            return Err(Error::Io(e));
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                }
            };
            self.generation += 1;
            self.link = Some(link);
        }
        match &mut self.link {
            Some(link) => Ok(link),
            None => Err(Error::Protocol("no connection".into())),
        }
    }

    /// Sends a command; on a lost connection, reconnects and — if `safe` —
    /// sends it again.
    fn call_retrying(&mut self, args: &[&[u8]], safe: bool) -> Result<Value, Error> {
        loop {
            let result = self.link()?.call(args);
            match result {
                Err(Error::Io(e)) => {
                    self.link = None;
                    if !safe || self.reconnect.within.is_zero() {
                        return Err(Error::Io(e));
                    }
                }
                other => return other,
            }
        }
    }

    fn dedup_key(&mut self) -> String {
        self.dedup_next += 1;
        format!("{}{}", self.dedup_prefix, self.dedup_next)
    }

    /// Connects to `FERRY_URL`, or [`DEFAULT_URL`].
    pub fn from_env() -> Result<Client, Error> {
        let url = std::env::var("FERRY_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        Client::connect(&url)
    }

    /// Sends any command and returns its reply; an error reply becomes the
    /// matching [`Error`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let reply = c.call(&[b"PING"])?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    ///
    /// Never retried: after a lost connection it reconnects for the next
    /// call and returns the I/O error.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        self.call_retrying(args, false)
    }

    fn put_with(&mut self, queue: &str, payload: &[u8], wait: &[&[u8]]) -> Result<u64, Error> {
        let key = self.dedup_key();
        let mut args: Vec<&[u8]> =
            vec![b"QPUT", queue.as_bytes(), payload, b"DEDUP", key.as_bytes()];
        args.extend_from_slice(wait);
        match self.call_retrying(&args, true)? {
            Value::Int(id) => u64::try_from(id).map_err(|_| Error::Protocol("negative id".into())),
            other => Err(Error::Protocol(format!("QPUT replied {other:?}"))),
        }
    }

    /// Puts a message, waiting as long as the queue is full; replies its id.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let id = c.put("jobs", b"payload")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn put(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.put_with(queue, payload, &[b"TIMEOUT", b"0"])
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
        self.put_with(queue, payload, &[b"NOWAIT"])
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
        if timeout.is_zero() {
            return self.put_nowait(queue, payload);
        }
        let ms = millis(timeout);
        self.put_with(queue, payload, &[b"TIMEOUT", ms.as_bytes()])
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
        let mut args: Vec<&[u8]> =
            vec![b"QPUTMANY", queue.as_bytes(), b"TIMEOUT", b"0", b"PAYLOADS"];
        args.extend_from_slice(payloads);
        match self.call_retrying(&args, false)? {
            Value::Array(ids) => ids
                .into_iter()
                .map(|v| match v {
                    Value::Int(id) => {
                        u64::try_from(id).map_err(|_| Error::Protocol("negative id".into()))
                    }
                    other => Err(Error::Protocol(format!("QPUTMANY replied {other:?}"))),
                })
                .collect(),
            other => Err(Error::Protocol(format!("QPUTMANY replied {other:?}"))),
        }
    }

    fn get_with(
        &mut self,
        queue: &str,
        count: usize,
        wait: &[&[u8]],
    ) -> Result<Vec<Message>, Error> {
        let count = count.max(1).to_string();
        let mut args: Vec<&[u8]> = vec![b"QGET", queue.as_bytes(), b"COUNT", count.as_bytes()];
        args.extend_from_slice(wait);
        let msgs: Vec<Message> = match self.call_retrying(&args, true)? {
            Value::Nil => return Err(Error::Empty),
            Value::Array(entries) => entries.into_iter().map(entry).collect::<Result<_, _>>()?,
            other => return Err(Error::Protocol(format!("QGET replied {other:?}"))),
        };
        for m in &msgs {
            self.held.insert((m.queue.clone(), m.id), self.generation);
        }
        Ok(msgs)
    }

    fn one(mut msgs: Vec<Message>) -> Result<Message, Error> {
        msgs.pop().ok_or(Error::Empty)
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
        Self::one(self.get_with(queue, 1, &[b"TIMEOUT", b"0"])?)
    }

    /// Gets a message if one is ready now, else [`Error::Empty`].
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if let Ok(m) = c.get_nowait("jobs") { c.task_done("jobs", m.id)?; }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_nowait(&mut self, queue: &str) -> Result<Message, Error> {
        Self::one(self.get_with(queue, 1, &[b"NOWAIT"])?)
    }

    /// Gets a message, waiting at most `timeout`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get_timeout("jobs", std::time::Duration::from_secs(5))?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn get_timeout(&mut self, queue: &str, timeout: Duration) -> Result<Message, Error> {
        if timeout.is_zero() {
            return self.get_nowait(queue);
        }
        let ms = millis(timeout);
        Self::one(self.get_with(queue, 1, &[b"TIMEOUT", ms.as_bytes()])?)
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
        let ms = timeout.map_or_else(|| "0".to_string(), millis);
        self.get_with(queue, n, &[b"TIMEOUT", ms.as_bytes()])
    }

    /// Python's `task_done`: finishes a message this connection got.
    /// [`Error::NotLeased`] if it holds no such message (done already, or
    /// its lease was lost and it went to another consumer).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// let m = c.get("jobs")?;
    /// c.task_done("jobs", m.id)?;
    /// assert!(matches!(c.task_done("jobs", m.id), Err(ferry_client::Error::NotLeased)));
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn task_done(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.check_lease(queue, id)?;
        let id_s = id.to_string();
        match self.call_retrying(&[b"QDONE", queue.as_bytes(), id_s.as_bytes()], false) {
            Ok(Value::Int(1)) => Ok(()),
            Ok(Value::Int(0)) => Err(Error::NotLeased),
            Ok(other) => Err(Error::Protocol(format!("QDONE replied {other:?}"))),
            // The lease died with the connection, whether or not the done
            // got there first.
            Err(Error::Io(_)) => Err(Error::LeaseLost),
            Err(e) => Err(e),
        }
    }

    /// Fails with LeaseLost when the message was got on a connection that
    /// has since been lost; forgets the message either way.
    fn check_lease(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        match self.held.remove(&(queue.to_string(), id)) {
            Some(generation) if generation != self.generation => Err(Error::LeaseLost),
            _ => Ok(()),
        }
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
        self.check_lease(queue, id)?;
        let id_s = id.to_string();
        match self.call_retrying(&[b"QNACK", queue.as_bytes(), id_s.as_bytes()], false) {
            Ok(_) => Ok(()),
            Err(Error::Io(_)) => Err(Error::LeaseLost),
            Err(e) => Err(e),
        }
    }

    fn info_int(&mut self, queue: &str, field: &str) -> Result<u64, Error> {
        let fields = match self.call_retrying(&[b"QINFO", queue.as_bytes()], true) {
            Err(Error::Server { code, .. }) if code == "NOQUEUE" => return Ok(0),
            other => other?,
        };
        let pairs: Vec<(Value, Value)> = match fields {
            Value::Array(flat) => {
                let mut it = flat.into_iter();
                let mut out = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((k, v));
                }
                out
            }
            Value::Map(pairs) => pairs,
            other => return Err(Error::Protocol(format!("QINFO replied {other:?}"))),
        };
        pairs
            .into_iter()
            .find_map(|(k, v)| match (k, v) {
                (Value::Bulk(k), Value::Int(n)) if k == field.as_bytes() => u64::try_from(n).ok(),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol(format!("QINFO has no {field}")))
    }

    /// Ready messages (Python's `qsize()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} waiting", c.qsize("jobs")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn qsize(&mut self, queue: &str) -> Result<u64, Error> {
        match self.call_retrying(&[b"QLEN", queue.as_bytes()], true)? {
            Value::Int(n) => {
                u64::try_from(n).map_err(|_| Error::Protocol("negative length".into()))
            }
            other => Err(Error::Protocol(format!("QLEN replied {other:?}"))),
        }
    }

    /// True when no message is ready (Python's `empty()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if c.empty("jobs")? { println!("idle"); }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn empty(&mut self, queue: &str) -> Result<bool, Error> {
        Ok(self.qsize(queue)? == 0)
    }

    /// True when the queue is at its maxsize (Python's `full()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// if c.full("jobs")? { println!("back off"); }
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn full(&mut self, queue: &str) -> Result<bool, Error> {
        let maxsize = self.info_int(queue, "maxsize")?;
        Ok(maxsize > 0 && self.info_int(queue, "qsize")? >= maxsize)
    }

    /// Messages put and not yet done.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// println!("{} to go", c.unfinished("jobs")?);
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn unfinished(&mut self, queue: &str) -> Result<u64, Error> {
        self.info_int(queue, "unfinished")
    }

    /// Waits until every message put has been done (Python's `join()`).
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.join("jobs")?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn join(&mut self, queue: &str) -> Result<(), Error> {
        self.call_retrying(&[b"QJOIN", queue.as_bytes()], true)
            .map(drop)
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
        let ms = millis(timeout);
        match self.call_retrying(
            &[b"QJOIN", queue.as_bytes(), b"TIMEOUT", ms.as_bytes()],
            true,
        )? {
            Value::Nil => Ok(false),
            _ => Ok(true),
        }
    }

    /// Python 3.13's `shutdown(immediate)`.
    ///
    /// ```no_run
    /// # let mut c = ferry_client::Client::connect("ferry://127.0.0.1:7878")?;
    /// c.shutdown("jobs", false)?;
    /// # Ok::<(), ferry_client::Error>(())
    /// ```
    pub fn shutdown(&mut self, queue: &str, immediate: bool) -> Result<(), Error> {
        let mut args: Vec<&[u8]> = vec![b"QSHUTDOWN", queue.as_bytes()];
        if immediate {
            args.push(b"IMMEDIATE");
        }
        self.call_retrying(&args, true).map(drop)
    }
}

/// One `[queue, id, payload, attempts]` entry of a QGET reply.
fn entry(v: Value) -> Result<Message, Error> {
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
            queue: String::from_utf8(q).map_err(|_| bad())?,
            id: u64::try_from(id).map_err(|_| bad())?,
            payload,
            attempts: u32::try_from(attempts).map_err(|_| bad())?,
        }),
        _ => Err(bad()),
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
        assert_eq!(url("ferry://user:pw@h:1").password.as_deref(), Some("pw"));
        assert_eq!(
            url("ferry://[::1]:9").address,
            Address::Tcp("::1".into(), 9)
        );
        let u = url("unix:///run/f.sock?password=x");
        assert_eq!(
            (u.address, u.password.as_deref()),
            (Address::Unix("/run/f.sock".into()), Some("x"))
        );
        for bad in ["redis://h", "ferry://", "ferry://h:99999", "unix://"] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_round_up_and_never_mean_forever() {
        assert_eq!(millis(Duration::from_micros(1)), "1");
        assert_eq!(millis(Duration::from_micros(1500)), "2");
        assert_eq!(millis(Duration::from_secs(2)), "2000");
    }
}
