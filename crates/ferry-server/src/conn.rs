//! One client connection, as transport only: read what the client sent,
//! run every complete request in the buffer on this same task (`cmd`,
//! against the client's `Session`), and write all the replies with one
//! write. A command that waits parks only this task, which keeps watching
//! the socket meanwhile, so that a client that goes away is noticed at
//! once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::BytesMut;
use ferry_proto::{Decoder, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::broker::{Broker, Unblock};
use crate::cmd::{self, Flow, Outcome, Woke};
use crate::session::Session;

/// Input a blocked client may pile up before the connection stops reading.
const MAX_PENDING_INPUT: usize = 64 << 20;

/// Replies a connection gathers before it sends them, at most (beyond
/// one reply larger than this).
const OUT_HIGH_WATER: usize = 1 << 20;

/// A client's socket: TCP or Unix. One type, so that the connection's code
/// is compiled once.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            // Encrypted first: the timed path writes it all.
            Stream::Tls(_) => Ok(0),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) struct Conn {
    stream: Stream,
    /// Who the client is, for the log: its address, or `unix`.
    peer: String,
    session: Session,
    inbuf: BytesMut,
    decoder: Decoder,
    /// The decoder holds requests to the full limits (the client may run
    /// commands), not those of a stranger.
    full_limits: bool,
    /// When it must have authenticated (`--auth-timeout`), if it must.
    auth_deadline: Option<tokio::time::Instant>,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    pub(crate) fn new(
        stream: Stream,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let decoder = Decoder::new(Limits::unauthenticated());
        let peer = match &stream {
            Stream::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Stream::Unix(_) => "unix".into(),
            Stream::Tls(s) => s
                .get_ref()
                .0
                .peer_addr()
                .map_or_else(|_| "tls".into(), |a| a.to_string()),
        };
        let session = Session::new(broker, peer.clone());
        let auth_deadline = match session.broker.config.auth_timeout {
            Some(d) if !session.authed => Some(tokio::time::Instant::now() + d),
            _ => None,
        };
        Conn {
            stream,
            auth_deadline,
            session,
            peer,
            inbuf: BytesMut::with_capacity(16 << 10),
            decoder,
            full_limits: false,
            shutdown,
        }
    }

    /// Serves the connection until the client leaves, breaks the protocol,
    /// or the server shuts down; then releases what it held. The caller
    /// counted the connection in `broker.clients`; this counts it out.
    pub(crate) async fn run(mut self) {
        if let Err(e) = self.serve().await {
            debug!(client = self.session.id, error = %e, "connection ended");
        }
        self.session.release_all();
        // Counted out before the socket closes (when `self` drops), so a
        // client that saw the close may connect again at once.
        self.session
            .broker
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The limits the next request is held to: a stranger's until the
    /// client authenticates (at once when no password is set).
    fn limit_requests(&mut self) {
        if self.session.authed && !self.full_limits {
            let config = &self.session.broker.config;
            self.decoder.set_limits(Limits {
                max_bulk: config.max_payload,
                max_request: config.max_request,
                ..Limits::default()
            });
            self.full_limits = true;
        }
    }

    async fn serve(&mut self) -> io::Result<()> {
        loop {
            // A new batch: the clock is read again.
            self.session.tick();
            loop {
                self.limit_requests();
                // Replies due beyond a page go out before more requests
                // are run: a client's unsent replies stay bounded.
                if self.session.out.len() > OUT_HIGH_WATER {
                    self.flush().await?;
                }
                match self.decoder.request(&mut self.inbuf) {
                    Ok(Some(req)) if req.is_empty() => {}
                    Ok(Some(req)) => {
                        if self.run_command(req).await == Flow::Close {
                            return self.flush().await;
                        }
                    }
                    Ok(None) => {
                        self.session.seen_active();
                        break;
                    }
                    Err(e) => {
                        // Said in the log as well as to the client: a client
                        // that does not read its error sees only a closed
                        // connection.
                        self.session
                            .broker
                            .refused_requests
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(client = self.session.id, peer = %self.peer, error = %e, "refused a request; closing the connection");
                        self.session.reply().error(e.code(), &e.to_string());
                        return self.flush().await;
                    }
                }
            }
            if crate::broker::take_woke() {
                // The batch handed messages to waiting clients: let their
                // tasks (queued on this thread) write first, so a getter's
                // reply does not wait behind this client's.
                tokio::task::yield_now().await;
            }
            self.flush().await?;
            if *self.shutdown.borrow() {
                return Ok(());
            }
            self.reserve_input();
            let idle = self.session.broker.config.idle_timeout;
            let idle_out = async {
                match idle {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // A stranger (not yet authenticated) leaves at its deadline,
            // or when a newcomer takes its place in a full broker.
            let stranger = !self.session.authed;
            let seen = Arc::clone(&self.session.seen);
            let deadline = self.auth_deadline;
            let stranger_out = async {
                tokio::select! {
                    () = async {
                        match deadline {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => "did not authenticate within --auth-timeout",
                    () = seen.evict.notified() => "made room, not yet authenticated, for a newcomer to a full broker",
                }
            };
            // The read first: while a client is busy it is usually ready,
            // and then the other branches are never polled (a shutdown
            // watch registers a waiter under a shared lock when polled).
            tokio::select! {
                biased;
                n = self.stream.read_buf(&mut self.inbuf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                }
                _ = idle_out => {
                    self.session.broker.idle_closed.fetch_add(1, Ordering::Relaxed);
                    debug!(client = self.session.id, peer = %self.peer, "idle past --idle-timeout; closing");
                    return Ok(());
                }
                why = stranger_out, if stranger => {
                    self.session.broker.unauthenticated_closed.fetch_add(1, Ordering::Relaxed);
                    debug!(client = self.session.id, peer = %self.peer, why, "closing a connection that never authenticated");
                    return Ok(());
                }
                _ = self.shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Runs one command; if it waits, waits on its behalf until it settles.
    async fn run_command(&mut self, req: ferry_proto::Request) -> Flow {
        // A password argon2 must check is checked before the command runs,
        // off this worker; the command finds the answer in the ACL's cache.
        // (Not for a connection at its limits: the command closes it.)
        if let Some((user, password)) = cmd::credentials_in(&req)
            && !cmd::at_limits(&self.session)
        {
            let broker = Arc::clone(&self.session.broker);
            if !broker.check_password(user, password).await {
                if !self.session.authed {
                    self.session.stranger_commands += 1;
                }
                self.session
                    .reply()
                    .error("ERR", "too many password checks are waiting; try again");
                return Flow::Continue;
            }
        }
        let mut blocked = match cmd::execute(&mut self.session, req) {
            Outcome::Done(flow) => return flow,
            Outcome::Wait(blocked) => blocked,
        };
        self.session.seen_active();
        let (broker, id) = (Arc::clone(&self.session.broker), self.session.id);
        let user = self.session.user.as_ref().map(|u| u.name.clone());
        let unblock = broker.block(id, user);
        let mut woke = Woke::Notified;
        let flow = loop {
            if let Some(flow) = blocked.resume(&mut self.session, woke) {
                break flow;
            }
            woke = self
                .wait(blocked.notify(), blocked.wake_at(), &unblock)
                .await;
            self.session.tick();
        };
        broker.unblocked(id);
        flow
    }

    /// Makes room for the next read: what the request being decoded still
    /// needs (a large payload's room is reserved once), and at least 4 kB.
    fn reserve_input(&mut self) {
        let want = self.decoder.wants(&self.inbuf).max(4096);
        if self.inbuf.capacity() - self.inbuf.len() < want {
            self.inbuf.reserve(want.max(16 << 10));
        }
    }

    /// Writes the replies due. If a command among them changed something,
    /// first waits until the log is durable up to everything appended so
    /// far — one wait per batch, and one fsync shared by every connection
    /// waiting with it.
    async fn flush(&mut self) -> io::Result<()> {
        let s = &mut self.session;
        if std::mem::take(&mut s.logged)
            && let Some(store) = &s.broker.store
        {
            let target = store.log().appended();
            if !store.wait_durable(target).await {
                return Err(io::Error::other("the log failed; replies withheld"));
            }
        }
        if !s.out.is_empty() {
            // At once if the socket takes it all (no timer on the usual
            // path); else the rest, within --write-timeout.
            let sent = match self.stream.try_write(&s.out) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if sent < s.out.len() {
                // Flushed too: TLS keeps what the socket did not take.
                let stream = &mut self.stream;
                let rest = async {
                    stream.write_all(&s.out[sent..]).await?;
                    stream.flush().await
                };
                match s.broker.config.write_timeout {
                    None => rest.await?,
                    Some(limit) => match tokio::time::timeout(limit, rest).await {
                        Ok(written) => written?,
                        Err(_) => {
                            s.broker.slow_closed.fetch_add(1, Ordering::Relaxed);
                            warn!(client = s.id, peer = %self.peer, "replies not read within --write-timeout; closing the connection");
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "replies not read within --write-timeout",
                            ));
                        }
                    },
                }
            }
            s.out.clear();
        }
        Ok(())
    }

    /// Waits for `notify` until `deadline` (none: forever) or CLIENT
    /// UNBLOCK, watching the socket. Replies already written are sent first: a pipeline's earlier
    /// answers must not wait behind a blocked command.
    async fn wait(
        &mut self,
        notify: &Notify,
        deadline: Option<tokio::time::Instant>,
        unblock: &Unblock,
    ) -> Woke {
        if self.flush().await.is_err() {
            return Woke::Gone;
        }
        loop {
            self.reserve_input();
            let reading = self.inbuf.len() < MAX_PENDING_INPUT;
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notify.notified() => return Woke::Notified,
                _ = sleep => return Woke::TimedOut,
                _ = unblock.notify.notified() => {
                    return Woke::Unblocked(unblock.error.load(std::sync::atomic::Ordering::Acquire));
                }
                r = self.stream.read_buf(&mut self.inbuf), if reading => match r {
                    Ok(0) | Err(_) => return Woke::Gone,
                    Ok(_) => {}
                },
                _ = self.shutdown.changed() => return Woke::Gone,
            }
        }
    }
}
