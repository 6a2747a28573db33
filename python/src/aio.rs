//! `ferry._ferry.AsyncPool`: what `ferry.aio` awaits. One per process and
//! broker, on the Rust `AsyncClient` and one tokio worker
//! thread — no thread per call.
//!
//! - Commands that never wait (QPUT/QGET NOWAIT, QDONE, QINFO, ...) share
//!   one connection: a task takes whatever coroutines sent since its last
//!   write and sends it as one pipeline, so many coroutines cost one round
//!   trip.
//! - A command that may wait (a get on an empty queue, a put on a full
//!   one, a join, a lock) takes a connection of its own from an idle pool
//!   for as long as it waits: a waiting coroutine costs one connection.
//! - Every connection joins the pool's holder group (CLIENT HOLDER), so a
//!   message got on one is finished on another, and what the process holds
//!   is released when its last connection closes.
//!
//! A reply is handed to Python through an [`Inbox`] (one per event loop)
//! with the future it settles, never dropped: a bridge such as
//! pyo3-async-runtimes' `future_into_py` drops a result whose Python
//! future was cancelled, and a cancelled get must give back the message
//! the broker delivered in that moment. `cancel` ends a wait (CLIENT
//! UNBLOCK); its reply still comes, and the orphan handler given with it
//! gives back what it holds.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::{AsyncClient, Error, Value};
use pyo3::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::convert::{to_object, to_py};

/// A command for the shared connection, and where its reply goes.
type Job = (Vec<Vec<u8>>, oneshot::Sender<Result<Value, Error>>);

struct Pool {
    url: String,
    holder: String,
    /// The shared connection's task, started by the first command.
    shared: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Connections free for a command that may wait.
    idle: Mutex<Vec<AsyncClient>>,
    /// How to end each wait under way, by ticket.
    cancels: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_ticket: AtomicU64,
    /// Commands `send` sent that are not done yet.
    detached: AtomicUsize,
}

/// The process's runtime for `ferry.aio`: one worker thread, made on
/// first use — and again in a child made by fork, where the parent's
/// threads do not exist.
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let mut slot = lock(&RUNTIME);
    let pid = std::process::id();
    if let Some((owner, rt)) = *slot
        && owner == pid
    {
        return Ok(rt);
    }
    // The parent's runtime (if any) is left as it is: its threads are not
    // here to stop.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ferry-aio")
        .on_thread_start(ferry_client::leave_signals_to_the_program)
        .enable_all()
        .build()?;
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_error(msg: &str) -> Error {
    Error::Io(std::io::Error::other(msg.to_string()))
}

impl Pool {
    async fn connect(&self) -> Result<AsyncClient, Error> {
        let mut c = AsyncClient::connect(&self.url).await?;
        c.set_holder(&self.holder).await?;
        Ok(c)
    }

    /// The shared connection's queue of commands (its task started on
    /// first use, and again after it stopped).
    fn shared(self: &Arc<Self>) -> std::io::Result<mpsc::UnboundedSender<Job>> {
        let mut shared = lock(&self.shared);
        if let Some(tx) = shared.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        runtime()?.spawn(mux(Arc::clone(self), rx));
        *shared = Some(tx.clone());
        Ok(tx)
    }

    /// A command on the shared connection.
    async fn call(self: &Arc<Self>, args: Vec<Vec<u8>>) -> Result<Value, Error> {
        let (tx, rx) = oneshot::channel();
        if self.shared()?.send((args, tx)).is_err() {
            return Err(io_error("the shared connection stopped"));
        }
        rx.await.unwrap_or_else(|_| Err(io_error("no reply")))
    }

    /// A command: on the shared connection, or with `cancel` (it may
    /// wait) on one of its own.
    async fn run(
        self: &Arc<Self>,
        args: Vec<Vec<u8>>,
        ticket: u64,
        cancel: Option<oneshot::Receiver<()>>,
    ) -> Result<Value, Error> {
        match cancel {
            Some(cancel) => {
                let r = self.call_waiting(args, cancel).await;
                lock(&self.cancels).remove(&ticket);
                r
            }
            None => self.call(args).await,
        }
    }

    /// A command that may wait, on a connection of its own; `cancel` ends
    /// the wait.
    async fn call_waiting(
        &self,
        args: Vec<Vec<u8>>,
        cancel: oneshot::Receiver<()>,
    ) -> Result<Value, Error> {
        let idle = lock(&self.idle).pop();
        let mut c = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let cancelled = async {
            let _ = cancel.await;
        };
        let result = c.call_cancellable(&refs, cancelled).await;
        if !matches!(result, Err(Error::Io(_))) {
            lock(&self.idle).push(c);
        }
        result.map(|(v, _)| v)
    }
}

/// The shared connection: sends whatever is queued as one pipeline, hands
/// each reply to its caller.
async fn mux(pool: Arc<Pool>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut client: Option<AsyncClient> = None;
    let mut batch: Vec<Job> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 512
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        if client.is_none() {
            match pool.connect().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    let msg = e.to_string();
                    for (_, reply) in batch.drain(..) {
                        let _ = reply.send(Err(io_error(&msg)));
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let commands: Vec<Vec<&[u8]>> = batch
            .iter()
            .map(|(args, _)| args.iter().map(Vec::as_slice).collect())
            .collect();
        match c.pipeline(&commands).await {
            Ok(replies) => {
                for ((_, reply), r) in batch.drain(..).zip(replies) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                // The connection is gone (a broker restart): what is safe
                // to send again is, one by one on a new connection (the
                // client reconnects with backoff); the rest fails.
                let msg = e.to_string();
                for (args, reply) in batch.drain(..) {
                    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    let r = if ferry_client::resendable(&refs) {
                        c.call(&refs).await
                    } else {
                        Err(io_error(&msg))
                    };
                    let _ = reply.send(r);
                }
            }
        }
    }
}

/// Where one event loop's replies wait for it. The pool's thread pushes
/// each reply here and, for the first of a batch, writes a byte to a
/// socket the loop watches (`loop.add_reader(inbox.fileno(), drain)`): a
/// burst of replies costs the loop one wakeup, and the pool's thread never
/// takes the GIL — so it cannot be caught in Python's exit (a thread that
/// asks for the GIL then is ended where it stands).
#[pyclass(module = "ferry._ferry", frozen)]
pub(crate) struct Inbox {
    replies: Mutex<Vec<Reply>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    /// Commands sent whose replies have not come yet.
    outstanding: AtomicUsize,
}

/// A reply and what it settles: the future and its orphan handler.
type Reply = (Py<PyAny>, Py<PyAny>, Result<Value, Error>);

impl Inbox {
    fn push(&self, reply: Reply) {
        let first = {
            let mut replies = lock(&self.replies);
            replies.push(reply);
            replies.len() == 1
        };
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        if first {
            // Full (WouldBlock): the loop has a wakeup waiting already.
            let _ = (&self.wake_tx).write(&[1]);
        }
    }
}

#[pymethods]
impl Inbox {
    #[new]
    fn new() -> PyResult<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Inbox {
            replies: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx,
            outstanding: AtomicUsize::new(0),
        })
    }

    /// The socket to watch for replies.
    fn fileno(&self) -> i32 {
        self.wake_rx.as_raw_fd()
    }

    /// The replies come so far, as `(future, orphan, value, error)`.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, pyo3::types::PyTuple>>> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        let replies = std::mem::take(&mut *lock(&self.replies));
        let none = || py.None().into_bound(py);
        replies
            .into_iter()
            .map(|(fut, orphan, result)| {
                let converted = result
                    .map_err(|e| to_py(py, e))
                    .and_then(|v| to_object(py, v));
                let (value, error) = match converted {
                    Ok(v) => (v, none()),
                    Err(e) => (none(), e.into_value(py).into_bound(py).into_any()),
                };
                pyo3::types::PyTuple::new(
                    py,
                    [fut.into_bound(py), orphan.into_bound(py), value, error],
                )
            })
            .collect()
    }

    /// Waits (at most `timeout` seconds) until every reply has come;
    /// whether they all did.
    fn wait_idle(&self, py: Python<'_>, timeout: f64) -> bool {
        py.detach(|| wait_until(timeout, || self.outstanding.load(Ordering::Acquire) == 0))
    }
}

/// Polls `done` every millisecond for at most `timeout` seconds.
fn wait_until(timeout: f64, done: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
    while !done() {
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// One process's connections to one broker, for `ferry.aio`.
#[pyclass(module = "ferry._ferry")]
pub(crate) struct AsyncPool {
    inner: Arc<Pool>,
}

impl AsyncPool {
    /// A ticket, and for a command that may wait, how to end the wait.
    fn ticket(&self, wait: bool) -> (u64, Option<oneshot::Receiver<()>>) {
        let ticket = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        let cancel = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            lock(&self.inner.cancels).insert(ticket, tx);
            rx
        });
        (ticket, cancel)
    }
}

#[pymethods]
impl AsyncPool {
    #[new]
    fn new(url: &str, holder: &str) -> Self {
        AsyncPool {
            inner: Arc::new(Pool {
                url: url.to_string(),
                holder: holder.to_string(),
                shared: Mutex::new(None),
                idle: Mutex::new(Vec::new()),
                cancels: Mutex::new(HashMap::new()),
                next_ticket: AtomicU64::new(1),
                detached: AtomicUsize::new(0),
            }),
        }
    }

    /// Sends a command — on the shared connection, or (`wait`) on one of
    /// its own — and hands its reply to `inbox` with `future` and `orphan`:
    /// exactly once, whatever happened meanwhile. Replies a ticket for
    /// `cancel`.
    fn submit(
        &self,
        args: Vec<Vec<u8>>,
        wait: bool,
        inbox: Py<Inbox>,
        future: Py<PyAny>,
        orphan: Py<PyAny>,
    ) -> PyResult<u64> {
        let rt = runtime()?;
        let (ticket, cancel) = self.ticket(wait);
        let pool = Arc::clone(&self.inner);
        inbox.get().outstanding.fetch_add(1, Ordering::AcqRel);
        rt.spawn(async move {
            let result = pool.run(args, ticket, cancel).await;
            inbox.get().push((future, orphan, result));
        });
        Ok(ticket)
    }

    /// Sends a command nobody awaits — and, if it succeeds, `then` after
    /// it: how a message got but not handed out goes back (a put again,
    /// then its take finished) from any thread, even a loop's that ended.
    #[pyo3(signature = (args, wait=false, then=None))]
    fn send(&self, args: Vec<Vec<u8>>, wait: bool, then: Option<Vec<Vec<u8>>>) -> PyResult<()> {
        let rt = runtime()?;
        let (ticket, cancel) = self.ticket(wait);
        let pool = Arc::clone(&self.inner);
        pool.detached.fetch_add(1, Ordering::AcqRel);
        rt.spawn(async move {
            if pool.run(args, ticket, cancel).await.is_ok()
                && let Some(then) = then
            {
                let _ = pool.call(then).await;
            }
            pool.detached.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }

    /// Ends the wait of `ticket` (CLIENT UNBLOCK): its reply — a timeout's,
    /// or what the broker delivered in that moment — still comes.
    fn cancel(&self, ticket: u64) {
        if let Some(tx) = lock(&self.inner.cancels).remove(&ticket) {
            let _ = tx.send(());
        }
    }

    /// Ends every wait under way (the program is ending).
    fn cancel_all(&self) {
        for (_, tx) in lock(&self.inner.cancels).drain() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most `timeout` seconds) until every command `send` sent
    /// is done; whether they all are.
    fn wait_sent(&self, py: Python<'_>, timeout: f64) -> bool {
        let pool = &self.inner;
        py.detach(|| wait_until(timeout, || pool.detached.load(Ordering::Acquire) == 0))
    }

    /// The holder group its connections join.
    #[getter]
    fn holder(&self) -> String {
        self.inner.holder.clone()
    }
}
