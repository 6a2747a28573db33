//! One client connection: read what it sent, answer every complete request
//! in the buffer on this same task, and write all the replies with one
//! write. A blocking command parks only this task, while it keeps watching
//! the socket so that a client that goes away is noticed at once.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_proto::{Decoder, Limits, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tracing::debug;

use crate::broker::{Broker, QueueCell};

/// What the connection does after a command.
pub(crate) enum Flow {
    Continue,
    Close,
}

/// How a blocking wait ended.
pub(crate) enum Woke {
    Notified,
    TimedOut,
    Gone,
}

/// Input a blocked client may pile up before the connection stops reading.
const MAX_PENDING_INPUT: usize = 64 << 20;

pub(crate) struct Conn<S> {
    stream: S,
    pub(crate) broker: Arc<Broker>,
    pub(crate) id: u64,
    pub(crate) name: Option<Bytes>,
    pub(crate) authed: bool,
    pub(crate) resp3: bool,
    inbuf: BytesMut,
    pub(crate) out: BytesMut,
    decoder: Decoder,
    /// Queues in which this connection holds bound leases or taken
    /// messages: released when it closes.
    pub(crate) holds: HashMap<Bytes, Arc<QueueCell>>,
    /// Locks this connection holds, by name, with their tokens.
    pub(crate) locks: Vec<(Bytes, u64)>,
    /// The queue this connection used last: most connections use one, and
    /// this spares the registry lookup per command.
    last: Option<Arc<QueueCell>>,
    pub(crate) get_scratch: crate::cmd::GetScratch,
    /// A command in this batch changed something the log records: replies
    /// wait until the log is durable (see `flush`).
    pub(crate) logged: bool,
    shutdown: watch::Receiver<bool>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(crate) fn new(stream: S, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) -> Self {
        let id = broker.next_client_id();
        let decoder = Decoder::new(Limits {
            max_bulk: broker.config.max_payload,
            ..Limits::default()
        });
        let authed = broker.config.requirepass.is_none();
        Conn {
            stream,
            broker,
            id,
            name: None,
            authed,
            resp3: false,
            inbuf: BytesMut::with_capacity(16 << 10),
            // Grown by the first reply: an idle connection holds no page
            // for replies it has not sent.
            out: BytesMut::new(),
            decoder,
            holds: HashMap::new(),
            locks: Vec::new(),
            last: None,
            get_scratch: Default::default(),
            logged: false,
            shutdown,
        }
    }

    /// The queue of that name, if it exists.
    pub(crate) fn find(&mut self, name: &Bytes) -> Option<Arc<QueueCell>> {
        if let Some(cell) = &self.last
            && cell.name == *name
            && !cell.removed()
        {
            return Some(Arc::clone(cell));
        }
        let cell = self.broker.queue(name)?;
        self.last = Some(Arc::clone(&cell));
        Some(cell)
    }

    /// The queue of that name, created by first use if need be.
    pub(crate) fn find_or_create(&mut self, name: &Bytes) -> Arc<QueueCell> {
        if let Some(cell) = self.find(name) {
            return cell;
        }
        let cell = self.broker.queue_or_create(name);
        self.last = Some(Arc::clone(&cell));
        cell
    }

    pub(crate) fn reply(&mut self) -> Reply<'_> {
        Reply::new(&mut self.out, self.resp3)
    }

    /// Serves the connection until the client leaves, breaks the protocol,
    /// or the server shuts down; then releases what it held. The caller
    /// counted the connection in `broker.clients`; this counts it out.
    pub(crate) async fn run(mut self) {
        let result = self.serve().await;
        if let Err(e) = result {
            debug!(client = self.id, error = %e, "connection ended");
        }
        self.release_all();
        // Counted out before the socket closes (when `self` drops), so a
        // client that saw the close may connect again at once.
        self.broker
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            loop {
                match self.decoder.request(&mut self.inbuf) {
                    Ok(Some(args)) => {
                        if args.is_empty() {
                            continue;
                        }
                        if let Flow::Close = self.execute(args).await {
                            return self.flush().await;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let code = e.code();
                        self.reply().error(code, &e.to_string());
                        return self.flush().await;
                    }
                }
            }
            self.flush().await?;
            if *self.shutdown.borrow() {
                return Ok(());
            }
            self.reserve_input();
            tokio::select! {
                n = self.stream.read_buf(&mut self.inbuf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                }
                _ = self.shutdown.changed() => return Ok(()),
            }
        }
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
    async fn flush(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.logged)
            && let Some(store) = &self.broker.store
        {
            let target = store.appended();
            if !store.wait_durable(target).await {
                return Err(std::io::Error::other("the log failed; replies withheld"));
            }
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Waits for `notify` until `deadline` (none: forever), watching the
    /// socket. Replies already written are sent first: a pipeline's earlier
    /// answers must not wait behind a blocked command.
    pub(crate) async fn wait(
        &mut self,
        notify: &Notify,
        deadline: Option<tokio::time::Instant>,
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
                r = self.stream.read_buf(&mut self.inbuf), if reading => match r {
                    Ok(0) | Err(_) => return Woke::Gone,
                    Ok(_) => {}
                },
                _ = self.shutdown.changed() => return Woke::Gone,
            }
        }
    }

    /// Gives back everything the connection held: bound leases return to
    /// their queues (attempt + 1), taken messages count as lost, locks are
    /// released.
    fn release_all(&mut self) {
        for cell in std::mem::take(&mut self.holds).into_values() {
            let id = self.id;
            cell.with(&self.broker, |st, now| st.q.release_holder(id, now));
        }
        for (name, token) in std::mem::take(&mut self.locks) {
            self.broker.locks.release(&name, token, Some(self.id));
        }
    }
}
