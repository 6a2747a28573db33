//! The async client: the one implementation of every operation. The
//! blocking [`Client`](crate::Client) runs it on a runtime of its own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::{Decoder, Limits, Value, encode_command};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::postgres::PgLink;
use crate::redis::RedisLink;
use crate::{Address, Error, Message, Reconnect, Url, reply_value};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One live connection.
struct Link {
    stream: Box<dyn Io>,
    /// Bytes read and not yet decoded, and the decoder that resumes on
    /// them: a large reply costs time in proportion to its size.
    buf: BytesMut,
    decoder: Decoder,
    /// Commands encoded for the next write.
    out: BytesMut,
    /// The broker's id for this connection (CLIENT ID): what CLIENT
    /// UNBLOCK names to end a wait this client gives up on.
    id: u64,
    /// The broker's largest payload (CONFIG GET proto-max-bulk-len), if
    /// it says.
    max_payload: Option<usize>,
}

impl Link {
    /// Connects, authenticates, joins `holder`'s group if given, and asks
    /// the broker who this connection is and how large a payload may be.
    async fn open(url: &Url, holder: Option<&str>) -> Result<Box<Link>, Error> {
        let stream: Box<dyn Io> = match &url.address {
            Address::Tcp(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Address::Unix(path) => Box::new(UnixStream::connect(path).await?),
            Address::Tls(target) => Box::new(crate::tls::connect(target).await?),
            Address::Redis(_) | Address::Postgres(_) => {
                return Err(Error::Url("not a ferry broker's URL".into()));
            }
        };
        let mut link = Box::new(Link {
            stream,
            buf: BytesMut::with_capacity(16 << 10),
            decoder: Decoder::new(Limits::client()),
            out: BytesMut::new(),
            id: 0,
            max_payload: None,
        });
        if let Some(p) = &url.password {
            let auth: Vec<&[u8]> = match &url.user {
                Some(u) => vec![b"AUTH", u.as_bytes(), p.as_bytes()],
                None => vec![b"AUTH", p.as_bytes()],
            };
            match link.call(&auth).await {
                Ok(_) => {}
                Err(Error::Server { code, message }) => {
                    return Err(Error::Auth(format!("{code} {message}")));
                }
                Err(e) => return Err(e),
            }
        }
        // Who this connection is, and how large a payload may be: one
        // round trip (with the group joined in it).
        let mut commands = vec![
            vec![&b"CLIENT"[..], b"ID"],
            vec![&b"CONFIG"[..], b"GET", b"proto-max-bulk-len"],
        ];
        if let Some(h) = holder {
            commands.push(vec![&b"CLIENT"[..], b"HOLDER", h.as_bytes()]);
        }
        let mut replies = link.pipeline(&commands).await?.into_iter();
        link.id = match replies.next() {
            Some(Ok(Value::Int(id))) => id as u64,
            Some(Err(e)) => return Err(e),
            other => return Err(Error::Protocol(format!("CLIENT ID replied {other:?}"))),
        };
        link.max_payload = match replies.next() {
            Some(Ok(Value::Map(pairs))) => pairs.into_iter().next().map(|(_, v)| v),
            Some(Ok(Value::Array(flat))) => flat.into_iter().nth(1),
            _ => None,
        }
        .and_then(|v| match v {
            Value::Bulk(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
            _ => None,
        });
        if let Some(Err(e)) = replies.next() {
            return Err(e);
        }
        Ok(link)
    }

    /// Sends a command that may block, and reads its reply; if `cancel`
    /// resolves first, asks the broker (CLIENT UNBLOCK, from a connection
    /// of its own) to end the wait as a timeout, and still reads the reply
    /// to its end — whatever the broker delivered meanwhile is in it, not
    /// lost. Replies the reply and whether `cancel` fired.
    async fn call_cancellable(
        &mut self,
        url: &Url,
        args: &[&[u8]],
        cancel: impl Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        encode_command(args, &mut self.out);
        self.send().await?;
        tokio::pin!(cancel);
        let id = self.id;
        let replied = AtomicBool::new(false);
        let unblocker = async {
            // The command may not have reached its wait yet (0): again,
            // until it replies.
            while !replied.load(Ordering::Relaxed) {
                if let Ok(true) = unblock(url, id).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(unblocker);
        let (mut cancelled, mut unblocked) = (false, false);
        loop {
            if let Some(v) = self.decoded()? {
                if cancelled && !unblocked {
                    // A CLIENT UNBLOCK still on its way would end the wait
                    // of the next command this connection sends: it lands
                    // (or is known to have missed) before the connection
                    // is used again.
                    replied.store(true, Ordering::Relaxed);
                    unblocker.as_mut().await;
                }
                return Ok((reply_value(v)?, cancelled));
            }
            self.reserve();
            tokio::select! {
                n = self.stream.read_buf(&mut self.buf) => {
                    if n? == 0 {
                        return Err(closed());
                    }
                }
                _ = &mut cancel, if !cancelled => cancelled = true,
                _ = &mut unblocker, if cancelled && !unblocked => unblocked = true,
            }
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        encode_command(args, &mut self.out);
        self.send().await?;
        self.read_reply().await
    }

    async fn send(&mut self) -> Result<(), Error> {
        let written = self.stream.write_all(&self.out).await;
        self.out.clear();
        Ok(written?)
    }

    /// Sends every command in one write, then reads every reply.
    async fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        for c in commands {
            encode_command(c, &mut self.out);
        }
        self.send().await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            match self.read_reply().await {
                Err(Error::Io(e)) => return Err(Error::Io(e)),
                r => replies.push(r),
            }
        }
        Ok(replies)
    }

    /// The next whole reply in the buffer, if there is one.
    fn decoded(&mut self) -> Result<Option<Value>, Error> {
        self.decoder.value(&mut self.buf).map_err(|e| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed reply: {e}"),
            ))
        })
    }

    /// Room for what the reply being read still needs, reserved once.
    fn reserve(&mut self) {
        let want = self.decoder.wants(&self.buf).max(4096);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want.max(16 << 10));
        }
    }

    async fn read_reply(&mut self) -> Result<Value, Error> {
        loop {
            if let Some(v) = self.decoded()? {
                return reply_value(v);
            }
            self.reserve();
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(closed());
            }
        }
    }
}

/// A connection to the engine behind the URL: ferry's broker, or Redis
/// answering ferry's commands (crate::redis). Nothing above it knows
/// which.
enum Conn {
    Ferry(Box<Link>),
    Redis(Box<RedisLink>),
    Postgres(Box<PgLink>),
}

impl Conn {
    async fn open(url: &Url, holder: Option<&str>) -> Result<Conn, Error> {
        Ok(match &url.address {
            Address::Redis(target) => Conn::Redis(RedisLink::open(target, holder).await?),
            Address::Postgres(target) => Conn::Postgres(PgLink::open(target, holder).await?),
            _ => Conn::Ferry(Link::open(url, holder).await?),
        })
    }

    fn max_payload(&self) -> Option<usize> {
        match self {
            Conn::Ferry(l) => l.max_payload,
            Conn::Redis(r) => r.max_payload,
            Conn::Postgres(p) => p.max_payload,
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        match self {
            Conn::Ferry(l) => l.call(args).await,
            Conn::Redis(r) => r.call(args).await,
            Conn::Postgres(p) => p.call(args).await,
        }
    }

    async fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        match self {
            Conn::Ferry(l) => l.pipeline(commands).await,
            Conn::Redis(r) => r.pipeline(commands).await,
            Conn::Postgres(p) => p.pipeline(commands).await,
        }
    }

    async fn call_cancellable(
        &mut self,
        url: &Url,
        args: &[&[u8]],
        cancel: impl Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        match self {
            Conn::Ferry(l) => l.call_cancellable(url, args, cancel).await,
            Conn::Redis(r) => r.call_cancellable(args, cancel).await,
            Conn::Postgres(p) => p.call_cancellable(args, cancel).await,
        }
    }
}

fn closed() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    ))
}

/// CLIENT UNBLOCK `id` from a connection of its own: whether it was
/// blocked.
async fn unblock(url: &Url, id: u64) -> Result<bool, Error> {
    let mut control = Link::open(url, None).await?;
    let id = id.to_string();
    let r = control
        .call(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"TIMEOUT"])
        .await?;
    Ok(r == Value::Int(1))
}

/// Whether a command may be sent again on a new connection after its own
/// was lost — `None` if it may not (it may have happened, and twice would
/// differ: a done, a nack, a put without a DEDUP key) — and where its
/// TIMEOUT's value is, so that only what remains of the wait is asked for.
/// Waits are safe: a lost get's messages were leased (they come back) or
/// taken (gone either way); a lost lock is released with its connection.
fn repeatable(args: &[&[u8]]) -> Option<Option<usize>> {
    let name = args.first()?;
    let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    // Options start after the name and its operands (a QPUT's payload
    // could spell TIMEOUT).
    let timeout_after = |from: usize| {
        (from..args.len())
            .find(|&i| is(args[i], "TIMEOUT"))
            .map(|i| i + 1)
            .filter(|&i| i < args.len())
    };
    if is(name, "QGET") || is(name, "QJOIN") || is(name, "LOCK") {
        return Some(timeout_after(2));
    }
    if is(name, "QPUT") && args.iter().skip(3).any(|w| is(w, "DEDUP")) {
        return Some(timeout_after(3));
    }
    let reads = [
        "PING", "ECHO", "QLEN", "QINFO", "QPEEK", "QLIST", "INFO", "CONFIG", "LOCKED",
    ];
    reads.iter().any(|r| is(name, r)).then_some(None)
}

/// Whether a command may be sent again after its connection was lost (see
/// [`AsyncClient::call`]): for a caller that pipelined it and lost the
/// pipeline.
pub fn resendable(args: &[&[u8]]) -> bool {
    repeatable(args).is_some()
}

/// What a wait replies when it runs out: null, or FULL for a put.
fn timed_out(args: &[&[u8]]) -> Result<Value, Error> {
    match args.first() {
        Some(name) if name.eq_ignore_ascii_case(b"QPUT") => Err(Error::Full),
        _ => Ok(Value::Nil),
    }
}

/// A timeout as a command's argument: whole milliseconds, rounded up so
/// that a wait is never shorter than asked; at least 1 (0 would mean
/// forever).
pub(crate) fn millis(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    ms.min(u128::from(u64::MAX)).to_string()
}

/// The async client. See [`Client`](crate::Client) for what is retried
/// after a lost connection; the two behave the same.
///
/// ```no_run
/// # async fn demo() -> Result<(), ferry_client::Error> {
/// let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
/// c.put("jobs", b"payload").await?;
/// let m = c.get("jobs").await?;
/// c.task_done("jobs", m.id).await?;
/// # Ok(()) }
/// ```
pub struct AsyncClient {
    url: Url,
    /// Boxed inside: an idle client stays small.
    link: Option<Conn>,
    /// Bumped on every new connection; leases remember theirs.
    generation: u64,
    /// Messages got and not yet done: the connection generation that
    /// holds their lease.
    held: HashMap<(String, u64), u64>,
    reconnect: Reconnect,
    /// The DEDUP keys of its own puts.
    dedup_keys: crate::ResendKeys,
    /// The holder group this client's connections join (CLIENT HOLDER).
    holder: Option<String>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AsyncClient {
    /// Connects to a URL (see [`Url`]) and authenticates if it has a
    /// password.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// let c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<AsyncClient, Error> {
        let url: Url = url.parse()?;
        let link = Conn::open(&url, None).await?;
        Ok(AsyncClient {
            url,
            link: Some(link),
            generation: 1,
            held: HashMap::new(),
            reconnect: Reconnect::default(),
            dedup_keys: crate::ResendKeys::new("ferry"),
            holder: None,
        })
    }

    /// Makes this client's connections (this one, and every one it opens
    /// after a loss) members of the holder group `token` (CLIENT HOLDER,
    /// at least 16 bytes): what any member gets, any member may finish,
    /// and it is released when the group's last connection closes — how
    /// one process's many connections act as one consumer. Call it before
    /// getting anything.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.set_holder("a-random-token-of-this-process").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_holder(&mut self, token: &str) -> Result<(), Error> {
        self.holder = Some(token.to_string());
        if let Some(link) = &mut self.link {
            link.call(&[b"CLIENT", b"HOLDER", token.as_bytes()]).await?;
        }
        Ok(())
    }

    /// Sets how hard to try to reconnect (`within: 0` never reconnects).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.set_reconnect(ferry_client::Reconnect::default());
    /// # Ok(()) }
    /// ```
    pub fn set_reconnect(&mut self, reconnect: Reconnect) {
        self.reconnect = reconnect;
    }

    /// The live connection, reopened (with backoff) if it was lost.
    async fn link(&mut self) -> Result<&mut Conn, Error> {
        if self.link.is_none() {
            let deadline = tokio::time::Instant::now() + self.reconnect.within;
            let mut pause = self.reconnect.first_backoff;
            let link = loop {
                match Conn::open(&self.url, self.holder.as_deref()).await {
                    Ok(link) => break link,
                    Err(Error::Io(e)) => {
                        if tokio::time::Instant::now() + pause > deadline {
                            return Err(Error::Io(e));
                        }
                        tokio::time::sleep(pause).await;
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
    pub(crate) async fn call_retrying(
        &mut self,
        args: &[&[u8]],
        safe: bool,
    ) -> Result<Value, Error> {
        loop {
            let result = self.link().await?.call(args).await;
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

    /// Sends any command and returns its reply; an error reply becomes the
    /// matching [`Error`]. After a lost connection it is sent again on a
    /// new one only if that is safe (see [`AsyncClient::call_cancellable`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let pong = c.call(&[b"PING"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, Error> {
        self.call_cancellable(args, std::future::pending())
            .await
            .map(|(v, _)| v)
    }

    /// Sends a command that may block (QGET, QPUT, QJOIN, LOCK, ...) and
    /// gives up waiting when `cancel` resolves: the broker ends the wait as
    /// a timeout (CLIENT UNBLOCK, sent from a connection of its own), and
    /// the reply is read to its end, so nothing the broker delivered in the
    /// meantime is lost — a get that raced the cancel replies its messages.
    /// Replies the reply and whether `cancel` fired.
    ///
    /// A broker that restarts (or a failover) while a command waits is
    /// invisible to it when the command is safe to send again: the client
    /// reconnects with backoff and asks again for what remains of the
    /// wait — gets (their lost messages were leased, or taken and gone
    /// either way), joins, locks (a lost one is released with its
    /// connection), puts that carry a DEDUP key, and reads. Anything else
    /// (a done, a nack, a put without DEDUP) fails with [`Error::Io`]: it
    /// may have happened.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let ctrl_c = async { let _ = tokio::signal::ctrl_c().await; };
    /// let (reply, cancelled) = c.call_cancellable(&[b"QGET", b"jobs"], ctrl_c).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_cancellable(
        &mut self,
        args: &[&[u8]],
        cancel: impl Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let url = self.url.clone();
        let policy = repeatable(args);
        let start = tokio::time::Instant::now();
        // The caller's own wait, if it named one (TIMEOUT 0 is forever).
        let total = policy
            .flatten()
            .and_then(|i| std::str::from_utf8(args[i]).ok()?.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        let mut again: Option<Vec<Vec<u8>>> = None;
        tokio::pin!(cancel);
        loop {
            let owned: Vec<&[u8]>;
            let current = match &again {
                Some(a) => {
                    owned = a.iter().map(Vec::as_slice).collect();
                    &owned[..]
                }
                None => args,
            };
            let link = match self.link().await {
                Ok(link) => link,
                // Still unreachable after the reconnect window: within the
                // caller's own wait, keep trying.
                Err(Error::Io(_))
                    if again.is_some() && total.is_some_and(|t| start.elapsed() < t) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match link.call_cancellable(&url, current, cancel.as_mut()).await {
                Err(Error::Io(e)) => {
                    self.link = None;
                    let Some(timeout_at) = policy else {
                        return Err(Error::Io(e));
                    };
                    if self.reconnect.within.is_zero() {
                        return Err(Error::Io(e));
                    }
                    let mut next: Vec<Vec<u8>> = current.iter().map(|a| a.to_vec()).collect();
                    if let (Some(total), Some(i)) = (total, timeout_at) {
                        let left = total.saturating_sub(start.elapsed());
                        if left.is_zero() {
                            // The wait ran out while the broker was away.
                            return timed_out(args).map(|v| (v, false));
                        }
                        next[i] = millis(left).into_bytes();
                    }
                    again = Some(next);
                }
                other => return other,
            }
        }
    }

    /// Sends several commands in one write and reads their replies, in
    /// order: one round trip for all. Each reply is its own result; a lost
    /// connection fails the whole pipeline (not retried: some commands may
    /// have run).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let r = c.pipeline(&[vec![&b"QLEN"[..], b"a"], vec![&b"QLEN"[..], b"b"]]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn pipeline(
        &mut self,
        commands: &[Vec<&[u8]>],
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        let result = self.link().await?.pipeline(commands).await;
        if let Err(Error::Io(_)) = &result {
            self.link = None;
        }
        result
    }

    /// [`pipeline`](Self::pipeline), given up after `within`: then
    /// [`Error::Io`] (`TimedOut`), its connection dropped — the commands
    /// may or may not have run.
    pub async fn pipeline_within(
        &mut self,
        commands: &[Vec<&[u8]>],
        within: Duration,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        match tokio::time::timeout(within, self.pipeline(commands)).await {
            Ok(result) => result,
            Err(_) => {
                self.link = None;
                Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply in {:.1} s", within.as_secs_f64()),
                )))
            }
        }
    }

    /// The largest payload the broker takes, as it said at connect
    /// (`None`: it did not say).
    pub async fn max_payload(&mut self) -> Result<Option<usize>, Error> {
        Ok(self.link().await?.max_payload())
    }

    /// Refuses a payload over the broker's limit before sending it (the
    /// broker would close the connection on it).
    async fn check_size(&mut self, size: usize) -> Result<(), Error> {
        match self.max_payload().await? {
            Some(max) if size > max => Err(Error::TooBig { size, max }),
            _ => Ok(()),
        }
    }

    async fn put_with(
        &mut self,
        queue: &str,
        payload: &[u8],
        wait: &[&[u8]],
    ) -> Result<u64, Error> {
        self.check_size(payload.len()).await?;
        let key = self.dedup_keys.next();
        let timeout = match wait {
            [_, ms] => std::str::from_utf8(ms)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            _ => None,
        };
        let window = crate::resend_dedup_window(timeout).to_string();
        let mut args: Vec<&[u8]> = vec![
            b"QPUT",
            queue.as_bytes(),
            payload,
            b"DEDUP",
            key.as_bytes(),
            b"DEDUPFOR",
            window.as_bytes(),
        ];
        args.extend_from_slice(wait);
        match self.call_retrying(&args, true).await? {
            Value::Int(id) => u64::try_from(id).map_err(|_| Error::Protocol("negative id".into())),
            other => Err(Error::Protocol(format!("QPUT replied {other:?}"))),
        }
    }

    /// Puts a message, waiting as long as the queue is full; replies its id.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let id = c.put("jobs", b"payload").await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.put_with(queue, payload, &[b"TIMEOUT", b"0"]).await
    }

    /// Puts a message if there is room now, else [`Error::Full`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let id = c.put_nowait("jobs", b"payload").await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_nowait(&mut self, queue: &str, payload: &[u8]) -> Result<u64, Error> {
        self.put_with(queue, payload, &[b"NOWAIT"]).await
    }

    /// Puts a message, waiting at most `timeout` for room.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.put_timeout("jobs", b"payload", std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_timeout(
        &mut self,
        queue: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, Error> {
        if timeout.is_zero() {
            return self.put_nowait(queue, payload).await;
        }
        let ms = millis(timeout);
        self.put_with(queue, payload, &[b"TIMEOUT", ms.as_bytes()])
            .await
    }

    /// Puts several messages, all or nothing; replies their ids. Not
    /// retried after a lost connection (batches carry no DEDUP key).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let ids = c.put_many("jobs", &[&b"a"[..], b"b"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_many(&mut self, queue: &str, payloads: &[&[u8]]) -> Result<Vec<u64>, Error> {
        let largest = payloads.iter().map(|p| p.len()).max().unwrap_or(0);
        self.check_size(largest).await?;
        let mut args: Vec<&[u8]> =
            vec![b"QPUTMANY", queue.as_bytes(), b"TIMEOUT", b"0", b"PAYLOADS"];
        args.extend_from_slice(payloads);
        match self.call_retrying(&args, false).await? {
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

    async fn get_with(
        &mut self,
        queue: &str,
        count: usize,
        wait: &[&[u8]],
    ) -> Result<Vec<Message>, Error> {
        let count = count.max(1).to_string();
        let mut args: Vec<&[u8]> = vec![b"QGET", queue.as_bytes(), b"COUNT", count.as_bytes()];
        args.extend_from_slice(wait);
        let msgs = Message::from_reply(self.call_retrying(&args, true).await?)?;
        for m in &msgs {
            self.held.insert((m.queue.clone(), m.id), self.generation);
        }
        Ok(msgs)
    }

    fn one(mut msgs: Vec<Message>) -> Result<Message, Error> {
        msgs.pop().ok_or(Error::Empty)
    }

    /// Gets a message, waiting as long as the queue is empty; leased to
    /// this connection until `task_done`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let m = c.get("jobs").await?;
    /// c.task_done("jobs", m.id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&mut self, queue: &str) -> Result<Message, Error> {
        Self::one(self.get_with(queue, 1, &[b"TIMEOUT", b"0"]).await?)
    }

    /// Gets a message if one is ready now, else [`Error::Empty`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// if let Ok(m) = c.get_nowait("jobs").await { c.task_done("jobs", m.id).await?; }
    /// # Ok(()) }
    /// ```
    pub async fn get_nowait(&mut self, queue: &str) -> Result<Message, Error> {
        Self::one(self.get_with(queue, 1, &[b"NOWAIT"]).await?)
    }

    /// Gets a message, waiting at most `timeout`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let m = c.get_timeout("jobs", std::time::Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_timeout(&mut self, queue: &str, timeout: Duration) -> Result<Message, Error> {
        if timeout.is_zero() {
            return self.get_nowait(queue).await;
        }
        let ms = millis(timeout);
        Self::one(
            self.get_with(queue, 1, &[b"TIMEOUT", ms.as_bytes()])
                .await?,
        )
    }

    /// Gets up to `n` messages, waiting at most `timeout` (`None`: as long
    /// as it takes) for the first.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let batch = c.get_many("jobs", 100, None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_many(
        &mut self,
        queue: &str,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Message>, Error> {
        let ms = timeout.map_or_else(|| "0".to_string(), millis);
        self.get_with(queue, n, &[b"TIMEOUT", ms.as_bytes()]).await
    }

    /// Fails with LeaseLost when the message was got on a connection that
    /// has since been lost; forgets the message either way.
    fn check_lease(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        match self.held.remove(&(queue.to_string(), id)) {
            Some(generation) if generation != self.generation => Err(Error::LeaseLost),
            _ => Ok(()),
        }
    }

    /// Python's `task_done`: finishes a message this connection got.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let m = c.get("jobs").await?;
    /// c.task_done("jobs", m.id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn task_done(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.check_lease(queue, id)?;
        let id_s = id.to_string();
        match self
            .call_retrying(&[b"QDONE", queue.as_bytes(), id_s.as_bytes()], false)
            .await
        {
            Ok(Value::Int(1)) => Ok(()),
            Ok(Value::Int(0)) => Err(Error::NotLeased),
            Ok(other) => Err(Error::Protocol(format!("QDONE replied {other:?}"))),
            // The lease died with the connection, whether or not the done
            // got there first.
            Err(Error::Io(_)) => Err(Error::LeaseLost),
            Err(e) => Err(e),
        }
    }

    /// Gives a message back for another try (attempt + 1).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let m = c.get("jobs").await?;
    /// c.nack("jobs", m.id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn nack(&mut self, queue: &str, id: u64) -> Result<(), Error> {
        self.check_lease(queue, id)?;
        let id_s = id.to_string();
        match self
            .call_retrying(&[b"QNACK", queue.as_bytes(), id_s.as_bytes()], false)
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Io(_)) => Err(Error::LeaseLost),
            Err(e) => Err(e),
        }
    }

    /// Extends the lease of a message this connection got, to `lease` from
    /// now (or its own length again); replies the time left, `None` for a
    /// lease that lasts as long as the connection.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let m = c.get("jobs").await?;
    /// c.touch("jobs", m.id, Some(std::time::Duration::from_secs(30))).await?;
    /// # Ok(()) }
    /// ```
    pub async fn touch(
        &mut self,
        queue: &str,
        id: u64,
        lease: Option<Duration>,
    ) -> Result<Option<Duration>, Error> {
        if self
            .held
            .get(&(queue.to_string(), id))
            .is_some_and(|&g| g != self.generation)
        {
            return Err(Error::LeaseLost);
        }
        let id_s = id.to_string();
        let ms = lease.map(millis);
        let mut args: Vec<&[u8]> = vec![b"QTOUCH", queue.as_bytes(), id_s.as_bytes()];
        if let Some(ms) = &ms {
            args.extend_from_slice(&[b"LEASE", ms.as_bytes()]);
        }
        match self.call_retrying(&args, false).await {
            Ok(Value::Int(n)) if n >= 0 => Ok(Some(Duration::from_millis(n as u64))),
            Ok(Value::Int(_)) => Ok(None),
            Ok(other) => Err(Error::Protocol(format!("QTOUCH replied {other:?}"))),
            Err(Error::Io(_)) => Err(Error::LeaseLost),
            Err(e) => Err(e),
        }
    }

    /// One of QINFO's counters (`qsize`, `leased`, `waiting_getters`, ...
    /// — docs/protocol.md lists them); 0 for a queue that does not exist.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let consumers = c.counter("jobs", "waiting_getters").await?;
    /// # Ok(()) }
    /// ```
    pub async fn counter(&mut self, queue: &str, field: &str) -> Result<u64, Error> {
        let fields = match self
            .call_retrying(&[b"QINFO", queue.as_bytes()], true)
            .await
        {
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
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let n = c.qsize("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn qsize(&mut self, queue: &str) -> Result<u64, Error> {
        match self
            .call_retrying(&[b"QLEN", queue.as_bytes()], true)
            .await?
        {
            Value::Int(n) => {
                u64::try_from(n).map_err(|_| Error::Protocol("negative length".into()))
            }
            other => Err(Error::Protocol(format!("QLEN replied {other:?}"))),
        }
    }

    /// True when no message is ready (Python's `empty()`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let idle = c.empty("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn empty(&mut self, queue: &str) -> Result<bool, Error> {
        Ok(self.qsize(queue).await? == 0)
    }

    /// True when the queue is at its maxsize (Python's `full()`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let busy = c.full("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn full(&mut self, queue: &str) -> Result<bool, Error> {
        let maxsize = self.counter(queue, "maxsize").await?;
        Ok(maxsize > 0 && self.counter(queue, "qsize").await? >= maxsize)
    }

    /// Messages put and not yet done.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let left = c.unfinished("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unfinished(&mut self, queue: &str) -> Result<u64, Error> {
        self.counter(queue, "unfinished").await
    }

    /// Waits until every message put has been done (Python's `join()`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.join("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn join(&mut self, queue: &str) -> Result<(), Error> {
        self.call_retrying(&[b"QJOIN", queue.as_bytes()], true)
            .await
            .map(drop)
    }

    /// Waits at most `timeout` for every message to be done; false if some
    /// were not.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// let done = c.join_timeout("jobs", std::time::Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn join_timeout(&mut self, queue: &str, timeout: Duration) -> Result<bool, Error> {
        let ms = millis(timeout);
        match self
            .call_retrying(
                &[b"QJOIN", queue.as_bytes(), b"TIMEOUT", ms.as_bytes()],
                true,
            )
            .await?
        {
            Value::Nil => Ok(false),
            _ => Ok(true),
        }
    }

    /// Python 3.13's `shutdown(immediate)`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferry_client::Error> {
    /// # let mut c = ferry_client::AsyncClient::connect("ferry://127.0.0.1:7878").await?;
    /// c.shutdown("jobs", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&mut self, queue: &str, immediate: bool) -> Result<(), Error> {
        let mut args: Vec<&[u8]> = vec![b"QSHUTDOWN", queue.as_bytes()];
        if immediate {
            args.push(b"IMMEDIATE");
        }
        self.call_retrying(&args, true).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::millis;
    use std::time::Duration;

    #[test]
    fn timeouts_round_up_and_never_mean_forever() {
        assert_eq!(millis(Duration::from_micros(1)), "1");
        assert_eq!(millis(Duration::from_micros(1500)), "2");
        assert_eq!(millis(Duration::from_secs(2)), "2000");
    }
}
