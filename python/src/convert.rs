//! Between ferry_client and Python: the client's errors as the
//! exceptions stdlib code expects (ferry's own are made here, in module
//! `ferry`), replies as Python values, and Python's timeouts as the
//! broker's.

use std::time::Duration;

use ferry_client::{Error, Message, Value};
use pyo3::exceptions::{PyConnectionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

// Created in module `ferry` (its public home; `ferry._ferry` is an
// implementation detail): tracebacks name `ferry.FerryError`.
pyo3::create_exception!(
    ferry,
    FerryError,
    pyo3::exceptions::PyException,
    "An error reply from the broker (its code first, e.g. 'NOQUEUE ...'): the base of ferry's errors."
);
pyo3::create_exception!(
    ferry,
    AuthenticationError,
    FerryError,
    "The broker wants a password (NOAUTH) or refused the one given (WRONGPASS): put it in the URL, ferry://user:password@host."
);
pyo3::create_exception!(
    ferry,
    PermissionDenied,
    FerryError,
    "The user has no right to that command on that queue (NOPERM; see the broker's --acl-file)."
);
/// `ferry.ShutDown`: a FerryError, and where the stdlib has one (3.13+)
/// a `queue.ShutDown` too, so `except queue.ShutDown` catches it. Made at
/// import, since its bases depend on the interpreter.
static SHUTDOWN: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

pub(crate) fn shutdown_type(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyType>> {
    SHUTDOWN
        .get_or_try_init(py, || {
            let ferry_error = py.get_type::<FerryError>().into_any();
            let bases = match py.import("queue").and_then(|q| q.getattr("ShutDown")) {
                Ok(stdlib) => pyo3::types::PyTuple::new(py, [ferry_error, stdlib])?,
                Err(_) => pyo3::types::PyTuple::new(py, [ferry_error])?,
            };
            let namespace = pyo3::types::PyDict::new(py);
            namespace.set_item("__module__", "ferry")?;
            namespace.set_item(
                "__doc__",
                "The queue was shut down (Python 3.13's queue.ShutDown).",
            )?;
            let cls = py
                .import("builtins")?
                .getattr("type")?
                .call1(("ShutDown", bases, namespace))?;
            Ok(cls.cast_into::<pyo3::types::PyType>()?.unbind())
        })
        .map(|t| t.bind(py).clone())
}
pyo3::create_exception!(
    ferry,
    Interrupted,
    pyo3::exceptions::PyBaseException,
    "A blocking call ended by `Connection.interrupt()` (a signal handler's way to end a wait without raising wherever it landed). A BaseException, as KeyboardInterrupt: `except Exception` does not swallow it."
);
pyo3::create_exception!(
    ferry,
    NotLeased,
    FerryError,
    "task_done() for an item this handle does not hold."
);
pyo3::create_exception!(
    ferry,
    LeaseLost,
    FerryError,
    "The connection that held the item was lost; it will be delivered again."
);

/// Maps a client error to the Python exception stdlib code expects.
pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let queue = py.import("queue");
    // As the stdlib raises them: `raise Empty`, no arguments.
    let stdlib = |name: &str| match queue.as_ref().ok().and_then(|q| q.getattr(name).ok()) {
        Some(cls) => PyErr::from_value(
            cls.call0()
                .unwrap_or_else(|e| e.into_value(py).into_bound(py).into_any()),
        ),
        None => FerryError::new_err(name.to_string()),
    };
    match e {
        Error::Empty => stdlib("Empty"),
        Error::Full => stdlib("Full"),
        Error::ShutDown => match shutdown_type(py) {
            Ok(t) => PyErr::from_type(t, "queue is shut down"),
            Err(e) => e,
        },
        Error::NotLeased => NotLeased::new_err("task_done() called too many times"),
        Error::LeaseLost => LeaseLost::new_err(e.to_string()),
        Error::Io(e) => PyConnectionError::new_err(e.to_string()),
        Error::Url(m) => PyValueError::new_err(m),
        // An item the queue's items could not be compared with, as the
        // stdlib's PriorityQueue would fail to.
        Error::Server { code, message } if code == "KEYTYPE" => {
            pyo3::exceptions::PyTypeError::new_err(message)
        }
        e @ Error::TooBig { .. } => PyValueError::new_err(e.to_string()),
        e @ Error::Auth(_) => AuthenticationError::new_err(e.to_string()),
        Error::Server { code, message } if code == "NOAUTH" || code == "WRONGPASS" => {
            AuthenticationError::new_err(format!("{code} {message}"))
        }
        // A broken barrier: the stdlib's exception, as threading raises it.
        Error::Server { code, .. } if code == "BROKEN" => {
            match py
                .import("threading")
                .and_then(|t| t.getattr("BrokenBarrierError"))
                .and_then(|cls| cls.call0())
            {
                Ok(exc) => PyErr::from_value(exc),
                Err(e) => e,
            }
        }
        // BoundedSemaphore.release() above its value, as the stdlib says it.
        Error::Server { code, .. } if code == "OVERRELEASED" => {
            PyValueError::new_err("Semaphore released too many times")
        }
        Error::Server { code, message } if code == "NOPERM" => {
            PermissionDenied::new_err(format!("{code} {message}"))
        }
        other => FerryError::new_err(other.to_string()),
    }
}

/// A Python timeout in seconds: `None` waits forever, and so does one too
/// large for a `Duration` (as it would in Python).
pub(crate) fn timeout(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) if s < 0.0 || s.is_nan() => Err(PyValueError::new_err(
            "'timeout' must be a non-negative number",
        )),
        Some(s) => Ok(Duration::try_from_secs_f64(s).ok()),
    }
}

/// A reply as Python values.
pub(crate) fn to_object(py: Python<'_>, v: Value) -> PyResult<Bound<'_, PyAny>> {
    use pyo3::IntoPyObjectExt;
    Ok(match v {
        Value::Simple(s) => s.into_bound_py_any(py)?,
        Value::Error { code, message } => {
            return Err(FerryError::new_err(format!("{code} {message}")));
        }
        Value::Int(n) => n.into_bound_py_any(py)?,
        Value::Bulk(b) => PyBytes::new(py, &b).into_any(),
        Value::Nil => py.None().into_bound(py),
        Value::Array(items) => {
            let list = pyo3::types::PyList::empty(py);
            for i in items {
                list.append(to_object(py, i)?)?;
            }
            list.into_any()
        }
        Value::Map(pairs) => {
            let dict = pyo3::types::PyDict::new(py);
            for (k, v) in pairs {
                dict.set_item(to_object(py, k)?, to_object(py, v)?)?;
            }
            dict.into_any()
        }
        Value::Bool(b) => b.into_bound_py_any(py)?,
    })
}

/// The entries of a QGET reply as `(id, payload)`. Nil (a timeout or
/// NOWAIT with nothing ready) is `Error::Empty`.
pub(crate) fn entries(reply: Value) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    Ok(Message::from_reply(reply)?
        .into_iter()
        .map(|m| (m.id, m.payload))
        .collect())
}

/// Python's (block, timeout) as a TIMEOUT argument: `None` for no wait,
/// "0" for forever, else whole milliseconds rounded up (never 0).
pub(crate) fn timeout_arg(block: bool, timeout: Option<f64>) -> PyResult<Option<String>> {
    if !block {
        return Ok(None);
    }
    match self::timeout(timeout)? {
        None => Ok(Some("0".into())),
        Some(d) if d.is_zero() => Ok(None),
        Some(d) => Ok(Some(d.as_nanos().div_ceil(1_000_000).max(1).to_string())),
    }
}
