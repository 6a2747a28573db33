//! Waiting on the broker with Python's signals live: a call that may
//! block releases the GIL, and a signal handler that raises (Ctrl-C) or
//! `Connection.interrupt()` ends it — the broker ends the wait and what
//! it delivered is kept, never half-taken.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_client::{Client, Error, Value};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::Connection;
use crate::convert::{FerryError, Interrupted, entries, timeout_arg};

impl Connection {
    /// Runs a command that may block, with the GIL released, and gives up
    /// when a Python signal handler raises (Ctrl-C's KeyboardInterrupt, or
    /// any handler's exception): the broker ends the wait (CLIENT UNBLOCK)
    /// and the reply is still read whole, so nothing it delivered is lost.
    /// Replies the reply and the handler's exception, if one was raised.
    /// `interrupt()` ends it the same way, and a call made after it is
    /// not sent at all.
    pub(crate) fn blocking(
        &self,
        py: Python<'_>,
        args: &[&[u8]],
    ) -> (PyResult<Value>, Option<PyErr>) {
        if self.interrupted.load(Ordering::SeqCst) {
            return (Ok(Value::Nil), Some(interrupted()));
        }
        let raised: Mutex<Option<PyErr>> = Mutex::new(None);
        let stop = &self.interrupted;
        let reply = self.with(py, |c| {
            c.call_cancellable(args, signals(&raised, stop))
                .map(|(value, _)| value)
        });
        let raised = raised.into_inner().unwrap_or_else(|e| e.into_inner());
        (reply, raised)
    }

    /// Runs an acquisition (LOCK, SEMACQUIRE) with `block` and `timeout`
    /// as multiprocessing takes them: the fencing token, or None. A grant
    /// that arrives as a signal handler raises is given back by `release`:
    /// never half-taken.
    pub(crate) fn acquire(
        &self,
        py: Python<'_>,
        args: Vec<&[u8]>,
        block: bool,
        timeout: Option<f64>,
        release: impl FnOnce(&mut Client, u64) -> Result<(), Error> + Send,
    ) -> PyResult<Option<u64>> {
        let t = timeout_arg(block, timeout)?;
        let mut args = args;
        match t.as_deref() {
            None => args.push(b"NOWAIT"),
            Some(ms) => args.extend_from_slice(&[b"TIMEOUT", ms.as_bytes()]),
        }
        match self.blocking(py, &args) {
            (reply, Some(interrupt)) => {
                if let Ok(Value::Int(token)) = reply {
                    let _ = self.with(py, move |c| release(c, token as u64));
                }
                Err(interrupt)
            }
            (reply, None) => match reply? {
                Value::Int(token) => Ok(Some(token as u64)),
                Value::Nil => Ok(None),
                other => Err(FerryError::new_err(format!(
                    "{} replied {other:?}",
                    String::from_utf8_lossy(args[0])
                ))),
            },
        }
    }
}

/// Resolves once a Python signal handler raises, keeping its exception,
/// or once `stop` is set (`Connection.interrupt()`, from a handler or
/// another thread): signals are checked every 50 ms, as Python itself
/// would between bytecodes (only the main thread runs handlers).
async fn signals(raised: &Mutex<Option<PyErr>>, stop: &AtomicBool) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = Python::attach(|py| py.check_signals());
        let err = match outcome {
            Err(e) => e,
            Ok(()) if stop.load(Ordering::SeqCst) => interrupted(),
            Ok(()) => continue,
        };
        *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
        return;
    }
}

fn interrupted() -> PyErr {
    Interrupted::new_err("interrupted: Connection.interrupt() was called")
}

/// An interrupted get's messages, attached to the exception as
/// `ferry_items` [(id, payload)]: the Python side keeps them for the next
/// get, or gives them back.
pub(crate) fn interrupted_get(py: Python<'_>, interrupt: PyErr, reply: PyResult<Value>) -> PyErr {
    if let Ok(v) = reply
        && let Ok(got) = entries(v)
        && !got.is_empty()
    {
        let items: Vec<(u64, Bound<'_, PyBytes>)> = got
            .into_iter()
            .map(|(id, p)| (id, PyBytes::new(py, &p)))
            .collect();
        let _ = interrupt.value(py).setattr("ferry_items", items);
    }
    interrupt
}
