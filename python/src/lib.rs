//! `ferry._ferry`: a thin PyO3 layer over `ferry_client::Client`.
//!
//! One `Connection` is one broker connection; the Python package keeps one
//! per thread. Every call that may wait releases the GIL. Errors become the
//! Python exceptions the stdlib uses: `queue.Empty`, `queue.Full`, and
//! ferry's `ShutDown`, `NotLeased`, `LeaseLost`, `FerryError`.

mod aio;
mod convert;
mod wait;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_client::{Client, Error, Value};

use crate::convert::{
    AuthenticationError, FerryError, Interrupted, LeaseLost, NotLeased, PermissionDenied, entries,
    shutdown_type, timeout_arg, to_object, to_py,
};
use crate::wait::interrupted_get;
use pyo3::exceptions::{PyConnectionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyModule};

/// One connection to a broker.
#[pyclass(module = "ferry._ferry")]
struct Connection {
    client: Mutex<Option<Client>>,
    /// What the last get delivered, kept until the next one: if Python
    /// raises KeyboardInterrupt as the call returns (the eval loop checks
    /// for signals right after a call), the caller's handler takes them
    /// back with `take_pending` instead of losing them.
    pending: Mutex<Vec<(u64, Py<PyBytes>)>>,
    /// The process that opened it.
    pid: u32,
    /// Every put carries a DEDUP key of its own, so that a put whose
    /// connection was lost (a broker restart, a failover) is sent again
    /// safely: it goes in once.
    dedup_keys: ferry_client::ResendKeys,
    /// Set by `interrupt()`: every blocking call, under way or to come,
    /// ends with `Interrupted`.
    interrupted: AtomicBool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropped in a forked child: the socket and the runtime's epoll
        // instance are shared with the parent, and closing them here would
        // deregister the parent's socket from the parent's epoll (they are
        // one kernel object). Leak them instead; the child opens its own.
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if std::process::id() != self.pid {
            std::mem::forget(client);
        } else if let Some(client) = client {
            // Closed with the GIL released: on Redis the close tells the
            // process's heartbeat under a process-wide lock, which a thread
            // forking holds while it runs Python's at-fork hooks (that
            // thread waits for the GIL between them).
            Python::attach(|py| py.detach(move || drop(client)));
        }
    }
}

impl Connection {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Client) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        if std::process::id() != self.pid {
            return Err(FerryError::new_err(
                "this connection belongs to the parent process",
            ));
        }
        let result = py.detach(|| {
            let mut c = self.client.lock().unwrap_or_else(|e| e.into_inner());
            match c.as_mut() {
                Some(c) => f(c),
                None => Err(Error::Protocol("closed".into())),
            }
        });
        result.map_err(|e| to_py(py, e))
    }

    /// Refuses a payload over the broker's limit before sending it.
    fn check_size(&self, py: Python<'_>, size: usize) -> PyResult<()> {
        match self.with(py, |c| c.max_payload())? {
            Some(max) if size > max => Err(to_py(py, Error::TooBig { size, max })),
            _ => Ok(()),
        }
    }

    /// Delivered messages as Python values, kept as pending too (see
    /// `pending`).
    fn delivered<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(u64, Vec<u8>)>,
    ) -> Vec<(u64, Bound<'py, PyBytes>)> {
        let items: Vec<(u64, Bound<'py, PyBytes>)> = items
            .into_iter()
            .map(|(id, p)| (id, PyBytes::new(py, &p)))
            .collect();
        self.keep_pending(py, items.iter().map(|(id, p)| (*id, p.clone())).collect());
        items
    }

    fn keep_pending(&self, _py: Python<'_>, items: Vec<(u64, Bound<'_, PyBytes>)>) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) =
            items.into_iter().map(|(id, p)| (id, p.unbind())).collect();
    }
}

/// How long a feeder's batch may take to be confirmed, reconnects
/// included, before its producer is told it was not.
const FEEDER_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

#[pymethods]
impl Connection {
    #[new]
    fn new(py: Python<'_>, url: &str) -> PyResult<Self> {
        let target = url.to_string();
        let client = py
            .detach(move || Client::connect(&target))
            .map_err(|e| match e {
                Error::Io(e) if url.starts_with("redis") => {
                    PyConnectionError::new_err(format!("cannot reach Redis at {url}: {e}"))
                }
                Error::Io(e) => PyConnectionError::new_err(format!(
                    "cannot reach the ferry broker at {url}: {e}. Start one with `ferry serve` \
                     (or `python -m ferry serve`), or point FERRY_URL (or url=) at yours"
                )),
                e => to_py(py, e),
            })?;
        Ok(Connection {
            client: Mutex::new(Some(client)),
            pending: Mutex::new(Vec::new()),
            pid: std::process::id(),
            dedup_keys: ferry_client::ResendKeys::new("py"),
            interrupted: AtomicBool::new(false),
        })
    }

    /// Ends this connection's blocking calls (get, QJOIN, LOCK, ...) with
    /// `Interrupted`, the one under way within 50 ms and every later one
    /// at once, before it is sent; other calls go on. Safe in a signal
    /// handler: it takes no lock, so the handler ends the wait instead of
    /// raising wherever it landed.
    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }

    /// What the last get delivered (and forgets it): for a caller that was
    /// interrupted as the get returned.
    fn take_pending(&self) -> Vec<(u64, Py<PyBytes>)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Joins the holder group `token` (CLIENT HOLDER), on this connection
    /// and any it reconnects: what it gets may be finished by the group's
    /// other connections (`ferry.aio` joins its process's group).
    fn set_holder(&self, py: Python<'_>, token: &str) -> PyResult<()> {
        let token = token.to_string();
        self.with(py, move |c| c.set_holder(&token))
    }

    /// The largest payload the broker takes (None: it did not say).
    fn max_payload(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        self.with(py, |c| c.max_payload())
    }

    /// Any command, its reply as Python values: int, bytes, str (a status),
    /// None, list, dict, bool; an error reply raises.
    fn call<'py>(&self, py: Python<'py>, args: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with(py, move |c| {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            c.call(&refs)
        })?;
        to_object(py, v)
    }

    /// A command that waits (EVWAIT, CONDWAIT), with `block` and `timeout`
    /// as Python takes them (TIMEOUT or NOWAIT is added), given up when a
    /// signal handler raises (the broker ends the wait); its reply as
    /// Python values.
    #[pyo3(signature = (args, block=true, timeout=None))]
    fn wait_call<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Vec<u8>>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_arg(block, timeout)?;
        let mut refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        match t.as_deref() {
            None => refs.push(b"NOWAIT"),
            Some(ms) => refs.extend_from_slice(&[b"TIMEOUT", ms.as_bytes()]),
        }
        match self.blocking(py, &refs) {
            (_, Some(interrupt)) => Err(interrupt),
            (reply, None) => to_object(py, reply?),
        }
    }

    /// QCREATE queue KIND k [MAXSIZE n]: made if missing; an existing
    /// queue with other settings than those named is a ValueError that
    /// names them.
    /// `expire` (ms): the broker drops the queue once unused that long.
    #[pyo3(signature = (queue, maxsize, kind, expire=None))]
    fn create(
        &self,
        py: Python<'_>,
        queue: &str,
        maxsize: Option<u64>,
        kind: &str,
        expire: Option<u64>,
    ) -> PyResult<()> {
        let (q, m, k) = (
            queue.to_string(),
            maxsize.map(|m| m.to_string()),
            kind.to_string(),
        );
        let e = expire.map(|e| e.to_string());
        let r = self.with(py, move |c| {
            let mut args: Vec<&[u8]> = vec![b"QCREATE", q.as_bytes(), b"KIND", k.as_bytes()];
            if let Some(m) = &m {
                args.extend_from_slice(&[b"MAXSIZE", m.as_bytes()]);
            }
            if let Some(e) = &e {
                args.extend_from_slice(&[b"EXPIRE", e.as_bytes()]);
            }
            c.call(&args).map(drop)
        });
        match r {
            Err(e) if e.is_instance_of::<FerryError>(py) && e.to_string().contains("EXISTS") => {
                let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
                Err(PyValueError::new_err(msg.replacen("EXISTS ", "", 1)))
            }
            other => other,
        }
    }

    /// QCONFIG queue MAXSIZE n.
    fn set_maxsize(&self, py: Python<'_>, queue: &str, maxsize: u64) -> PyResult<()> {
        let (q, m) = (queue.to_string(), maxsize.to_string());
        self.with(py, move |c| {
            c.call(&[b"QCONFIG", q.as_bytes(), b"MAXSIZE", m.as_bytes()])
                .map(drop)
        })
    }

    /// Puts; `block=False` fails at once when full, `timeout=None` waits
    /// forever. `priority` is a raw order key.
    // Python's own signature (put(item, block, timeout)) plus the key: the
    // arguments are what they are.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (queue, payload, block=true, timeout=None, priority=None, keytype=None))]
    fn put(
        &self,
        py: Python<'_>,
        queue: &str,
        payload: Vec<u8>,
        block: bool,
        timeout: Option<f64>,
        priority: Option<Vec<u8>>,
        keytype: Option<Vec<u8>>,
    ) -> PyResult<u64> {
        let t = timeout_arg(block, timeout)?;
        self.check_size(py, payload.len())?;
        let key = self.dedup_keys.next();
        let mut args: Vec<&[u8]> = vec![b"QPUT", queue.as_bytes(), &payload];
        // `t` is the validated wait (whole ms; "0" forever, None no wait).
        let waits = t.as_deref().and_then(|ms| ms.parse::<u64>().ok());
        let window =
            ferry_client::resend_dedup_window(waits.map(Duration::from_millis)).to_string();
        args.extend_from_slice(&[b"DEDUP", key.as_bytes(), b"DEDUPFOR", window.as_bytes()]);
        if let Some(k) = &priority {
            args.extend_from_slice(&[b"PRIOKEY", k]);
        }
        if let Some(t) = &keytype {
            args.extend_from_slice(&[b"KEYTYPE", t]);
        }
        match t.as_deref() {
            None => args.push(b"NOWAIT"),
            Some(ms) => args.extend_from_slice(&[b"TIMEOUT", ms.as_bytes()]),
        }
        match self.blocking(py, &args) {
            // Interrupted: the put may have been admitted in the same
            // moment; its id rides on the exception.
            (reply, Some(interrupt)) => {
                if let Ok(Value::Int(id)) = reply {
                    let _ = interrupt.value(py).setattr("ferry_put_id", id);
                }
                Err(interrupt)
            }
            (reply, None) => match reply? {
                Value::Int(id) => Ok(id as u64),
                other => Err(FerryError::new_err(format!("QPUT replied {other:?}"))),
            },
        }
    }

    /// Gets one item: `(id, payload)`. `take=True` never redelivers
    /// (queue.Queue); otherwise leased to this connection (JoinableQueue).
    #[pyo3(signature = (queue, block=true, timeout=None, take=false))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        block: bool,
        timeout: Option<f64>,
        take: bool,
    ) -> PyResult<(u64, Bound<'py, PyBytes>)> {
        let t = timeout_arg(block, timeout)?;
        let mut args: Vec<&[u8]> = vec![b"QGET", queue.as_bytes()];
        match t.as_deref() {
            None => args.push(b"NOWAIT"),
            Some(ms) => args.extend_from_slice(&[b"TIMEOUT", ms.as_bytes()]),
        }
        if take {
            args.push(b"TAKE");
        }
        self.take_pending();
        let reply = match self.blocking(py, &args) {
            (reply, Some(interrupt)) => return Err(interrupted_get(py, interrupt, reply)),
            (reply, None) => reply?,
        };
        let (id, payload) = entries(reply)
            .and_then(|e| {
                e.into_iter()
                    .next()
                    .ok_or_else(|| Error::Protocol("QGET replied no entry".into()))
            })
            .map_err(|e| to_py(py, e))?;
        let payload = PyBytes::new(py, &payload);
        self.keep_pending(py, vec![(id, payload.clone())]);
        Ok((id, payload))
    }

    /// Write-behind puts (a feeder's batch), within FEEDER_BOUND: a QPUT each, with a DEDUP key
    /// of its own, waiting for room, all in one write. A connection lost
    /// meanwhile (a broker restart) sends them all again on a new one,
    /// where the keys make each go in once — as `put` is sent again.
    /// Raises the first refusal (a queue shut down, ...).
    fn put_behind(&self, py: Python<'_>, queue: &str, payloads: Vec<Vec<u8>>) -> PyResult<()> {
        let keys: Vec<String> = payloads.iter().map(|_| self.dedup_keys.next()).collect();
        let window = ferry_client::resend_dedup_window(None).to_string();
        let q = queue.to_string();
        self.with(py, move |c| {
            let commands: Vec<Vec<&[u8]>> = payloads
                .iter()
                .zip(&keys)
                .map(|(p, k)| {
                    vec![
                        &b"QPUT"[..],
                        q.as_bytes(),
                        p,
                        b"DEDUP",
                        k.as_bytes(),
                        b"DEDUPFOR",
                        window.as_bytes(),
                        b"TIMEOUT",
                        b"0",
                    ]
                })
                .collect();
            // Each try reconnects with the client's backoff first; all of
            // them within FEEDER_BOUND, so that a feeder never waits for
            // ever on an engine that stopped answering (its producer is
            // told how many puts were not confirmed).
            let give_up = std::time::Instant::now() + FEEDER_BOUND;
            loop {
                let left = give_up.saturating_duration_since(std::time::Instant::now());
                match c.pipeline_within(&commands, left) {
                    Err(Error::Io(_)) if std::time::Instant::now() < give_up => {}
                    Err(e) => return Err(e),
                    Ok(replies) => return replies.into_iter().try_for_each(|r| r.map(drop)),
                }
            }
        })
    }

    /// QPUTMANY: all or nothing, waiting for room for all.
    fn put_many(&self, py: Python<'_>, queue: &str, payloads: Vec<Vec<u8>>) -> PyResult<Vec<u64>> {
        let q = queue.to_string();
        self.with(py, move |c| {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            c.put_many(&q, &refs)
        })
    }

    /// Up to `n` items `(id, payload)`, waiting at most `timeout` (None:
    /// forever) for the first; `take` as for `get`. `done` ids are finished
    /// first, in the same write (one round trip for both).
    #[pyo3(signature = (queue, n, timeout=None, take=false, done=Vec::new()))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        n: usize,
        timeout: Option<f64>,
        take: bool,
        done: Vec<u64>,
    ) -> PyResult<Vec<(u64, Bound<'py, PyBytes>)>> {
        let t = timeout_arg(true, timeout)?.unwrap_or_else(|| "0".into());
        // A zero timeout means "do not wait" here, as for get().
        let nowait = timeout == Some(0.0);
        let count = n.max(1).to_string();
        let mut args: Vec<&[u8]> = vec![b"QGET", queue.as_bytes(), b"COUNT", count.as_bytes()];
        if nowait {
            args.push(b"NOWAIT");
        } else {
            args.extend_from_slice(&[b"TIMEOUT", t.as_bytes()]);
        }
        if take {
            args.push(b"TAKE");
        }
        self.take_pending();
        if !done.is_empty() {
            // The dones go first, in the same write as the get when it may
            // not wait; a get that may wait is sent once they are
            // answered, so that it alone can be interrupted. The dones were
            // checked against what this handle holds; a lease lost
            // meanwhile is redelivered, which is what it means.
            let ids: Vec<String> = done.iter().map(u64::to_string).collect();
            let mut finish: Vec<&[u8]> = vec![b"QDONE", queue.as_bytes()];
            finish.extend(ids.iter().map(|i| i.as_bytes()));
            if nowait {
                let (finish, get) = (finish.clone(), args.clone());
                let items = self.with(py, move |c| {
                    let mut replies = c.pipeline(&[finish, get])?.into_iter();
                    let _ = replies.next();
                    match replies.next() {
                        Some(reply) => entries(reply?),
                        None => Err(Error::Protocol("QGET got no reply".into())),
                    }
                })?;
                return Ok(self.delivered(py, items));
            }
            self.with(py, move |c| c.call(&finish).map(drop))?;
        }
        let reply = match self.blocking(py, &args) {
            (reply, Some(interrupt)) => return Err(interrupted_get(py, interrupt, reply)),
            (reply, None) => reply?,
        };
        let items = entries(reply).map_err(|e| to_py(py, e))?;
        Ok(self.delivered(py, items))
    }

    /// QDONE queue id: raises NotLeased if it finished nothing.
    fn done(&self, py: Python<'_>, queue: &str, id: u64) -> PyResult<()> {
        let q = queue.to_string();
        self.with(py, move |c| c.task_done(&q, id))
    }

    /// QDONE queue id id ...: finishes many in one round trip; replies how
    /// many it finished (LeaseLost if the connection was lost).
    fn done_many(&self, py: Python<'_>, queue: &str, ids: Vec<u64>) -> PyResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let q = queue.to_string();
        self.with(py, move |c| {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            let mut args: Vec<&[u8]> = vec![b"QDONE", q.as_bytes()];
            args.extend(ids.iter().map(|i| i.as_bytes()));
            match c.call(&args) {
                Ok(Value::Int(n)) => Ok(n.max(0) as u64),
                Ok(other) => Err(Error::Protocol(format!("QDONE replied {other:?}"))),
                // The leases died with the connection, whether or not the
                // done got there first: the items are delivered again.
                Err(Error::Io(_)) => Err(Error::LeaseLost),
                Err(e) => Err(e),
            }
        })
    }

    /// Finishes `done` (QDONE) and gives `back` back unstarted (a QNACK
    /// UNSTARTED each: items fetched ahead and never handed out), in one
    /// write. With `wait` false it runs only if the connection is
    /// idle, and replies False, doing nothing, if another call holds it:
    /// the prefetch reaper must never queue behind a blocking get. Ids no
    /// longer leased (a lost connection: redelivered anyway) are skipped.
    #[pyo3(signature = (queue, done, back, wait=true))]
    fn settle(
        &self,
        py: Python<'_>,
        queue: &str,
        done: Vec<u64>,
        back: Vec<u64>,
        wait: bool,
    ) -> PyResult<bool> {
        if std::process::id() != self.pid {
            return Err(FerryError::new_err(
                "this connection belongs to the parent process",
            ));
        }
        let ids: Vec<String> = done.iter().chain(&back).map(u64::to_string).collect();
        let (done_ids, back_ids) = ids.split_at(done.len());
        let mut commands: Vec<Vec<&[u8]>> = Vec::new();
        if !done_ids.is_empty() {
            let mut finish: Vec<&[u8]> = vec![b"QDONE", queue.as_bytes()];
            finish.extend(done_ids.iter().map(|i| i.as_bytes()));
            commands.push(finish);
        }
        for id in back_ids {
            // Never handed out: no attempt counted (nor a dead letter).
            commands.push(vec![
                b"QNACK",
                queue.as_bytes(),
                id.as_bytes(),
                b"UNSTARTED",
            ]);
        }
        if commands.is_empty() {
            return Ok(true);
        }
        let result = py.detach(|| {
            let mut guard = match self.client.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if !wait => return Ok(false),
                Err(std::sync::TryLockError::WouldBlock) => {
                    self.client.lock().unwrap_or_else(|e| e.into_inner())
                }
            };
            let Some(c) = guard.as_mut() else {
                return Err(Error::Protocol("closed".into()));
            };
            let replies = match c.pipeline(&commands) {
                Ok(replies) => replies,
                // Lost with the connection: the broker gives them back itself.
                Err(Error::Io(_)) => return Ok(true),
                Err(e) => return Err(e),
            };
            for reply in replies {
                match reply {
                    Ok(_) | Err(Error::NotLeased | Error::LeaseLost) => {}
                    // No longer leased here, or the queue was dropped
                    // meanwhile: nothing is left to finish or give back.
                    Err(Error::Server { code, .. }) if code == "NOTLEASED" || code == "NOQUEUE" => {
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        });
        result.map_err(|e| to_py(py, e))
    }

    /// Ready items.
    fn qsize(&self, py: Python<'_>, queue: &str) -> PyResult<u64> {
        let q = queue.to_string();
        self.with(py, move |c| c.qsize(&q))
    }

    /// Whether the queue is at maxsize.
    fn full(&self, py: Python<'_>, queue: &str) -> PyResult<bool> {
        let q = queue.to_string();
        self.with(py, move |c| c.full(&q))
    }

    /// QINFO as a dict of the integer fields and `shutdown`.
    fn info(&self, py: Python<'_>, queue: &str) -> PyResult<Vec<(String, i64)>> {
        let q = queue.to_string();
        self.with(py, move |c| {
            let v = match c.call(&[b"QINFO", q.as_bytes()]) {
                Err(Error::Server { code, .. }) if code == "NOQUEUE" => return Ok(Vec::new()),
                other => other?,
            };
            let flat = match v {
                Value::Array(flat) => flat,
                Value::Map(p) => p.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let mut out = Vec::new();
            let mut it = flat.into_iter();
            while let (Some(Value::Bulk(k)), Some(v)) = (it.next(), it.next()) {
                let key = String::from_utf8_lossy(&k).into_owned();
                match v {
                    Value::Int(n) => out.push((key, n)),
                    Value::Bulk(b) if key == "shutdown" => {
                        out.push((key, i64::from(b[..] != b"no"[..])))
                    }
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    /// Waits until nothing is unfinished.
    fn join(&self, py: Python<'_>, queue: &str) -> PyResult<()> {
        match self.blocking(py, &[b"QJOIN", queue.as_bytes()]) {
            (_, Some(interrupt)) => Err(interrupt),
            (reply, None) => reply.map(drop),
        }
    }

    /// Python 3.13's shutdown.
    #[pyo3(signature = (queue, immediate=false))]
    fn shutdown(&self, py: Python<'_>, queue: &str, immediate: bool) -> PyResult<()> {
        let q = queue.to_string();
        self.with(py, move |c| c.shutdown(&q, immediate))
    }

    /// LOCK name: the fencing token, or None if not acquired in time.
    #[pyo3(signature = (name, block=true, timeout=None))]
    fn lock(
        &self,
        py: Python<'_>,
        name: &str,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<u64>> {
        let n = name.to_string();
        self.acquire(
            py,
            vec![b"LOCK", name.as_bytes()],
            block,
            timeout,
            move |c, token| c.unlock(&n, token).map(drop),
        )
    }

    /// SEMACQUIRE name VALUE value: the fencing token, or None if not
    /// acquired in time.
    #[pyo3(signature = (name, value, block=true, timeout=None))]
    fn sem_acquire(
        &self,
        py: Python<'_>,
        name: &str,
        value: u64,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<u64>> {
        let (n, v) = (name.to_string(), value.to_string());
        let args: Vec<&[u8]> = vec![b"SEMACQUIRE", name.as_bytes(), b"VALUE", v.as_bytes()];
        self.acquire(py, args, block, timeout, move |c, token| {
            c.sem_release(&n, value, Some(token), false).map(drop)
        })
    }

    /// SEMRELEASE: gives back `token`'s permit (whether it held one), or
    /// without a token adds one; a bounded semaphore at its value raises
    /// ValueError.
    #[pyo3(signature = (name, value, token=None, bounded=false))]
    fn sem_release(
        &self,
        py: Python<'_>,
        name: &str,
        value: u64,
        token: Option<u64>,
        bounded: bool,
    ) -> PyResult<bool> {
        let n = name.to_string();
        self.with(py, move |c| c.sem_release(&n, value, token, bounded))
    }

    /// SEMVALUE name VALUE value: the free permits.
    fn sem_value(&self, py: Python<'_>, name: &str, value: u64) -> PyResult<u64> {
        let n = name.to_string();
        self.with(py, move |c| c.sem_value(&n, value))
    }

    /// UNLOCK name token: whether it was held.
    fn unlock(&self, py: Python<'_>, name: &str, token: u64) -> PyResult<bool> {
        let n = name.to_string();
        self.with(py, move |c| c.unlock(&n, token))
    }

    /// LOCKED name token: whether the token still holds the lock.
    fn lock_held(&self, py: Python<'_>, name: &str, token: u64) -> PyResult<bool> {
        let n = name.to_string();
        self.with(py, move |c| c.lock_held(&n, token))
    }
}

/// Before a fork (os.register_at_fork): the client's process-wide locks
/// are taken here, so that no other thread holds one as it is copied.
#[pyfunction]
fn before_fork() {
    ferry_client::before_fork();
}

/// After a fork, in the parent and in the child: they are let go.
#[pyfunction]
fn after_fork() {
    ferry_client::after_fork();
}

/// The whole `ferry` command line in this process (the GIL released):
/// `python -m ferry <verb>` and the wheel's `ferry` command, so a pip user
/// needs no Rust toolchain — the same program, flags and help as the
/// `ferry` binary. `argv` is what follows the program's name; `program`
/// starts this command line again (`ferry worker` runs each task under
/// it). Replies the exit status.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<std::ffi::OsString>, program: Vec<std::ffi::OsString>) -> i32 {
    let args = std::iter::once(std::ffi::OsString::from("ferry")).chain(argv);
    let host = ferry_cli::Host {
        this_program: program,
    };
    py.detach(move || ferry_cli::run(args, host))
}

#[pymodule]
fn _ferry(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Connection>()?;
    m.add_class::<aio::AsyncPool>()?;
    m.add_class::<aio::Inbox>()?;
    m.add_function(pyo3::wrap_pyfunction!(main, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(before_fork, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(after_fork, m)?)?;
    m.add("FerryError", m.py().get_type::<FerryError>())?;
    // How long a put's own DEDUP key counts when it waits for room forever
    // (ferry.aio's puts): the Rust clients' window.
    m.add("RESEND_WINDOW_MS", ferry_client::resend_dedup_window(None))?;
    m.add("ShutDown", shutdown_type(m.py())?)?;
    m.add("NotLeased", m.py().get_type::<NotLeased>())?;
    m.add("LeaseLost", m.py().get_type::<LeaseLost>())?;
    m.add("Interrupted", m.py().get_type::<Interrupted>())?;
    m.add(
        "AuthenticationError",
        m.py().get_type::<AuthenticationError>(),
    )?;
    m.add("PermissionDenied", m.py().get_type::<PermissionDenied>())?;
    Ok(())
}
