//! ferry's commands read as the broker reads them, for the engines the
//! client answers itself (Redis, PostgreSQL): arguments left to right,
//! keywords case-insensitive, an unknown option an error naming it
//! (docs/protocol.md). One reading for every engine, so that a command
//! means the same wherever it goes.

use std::time::Duration;

use crate::Error;

/// Arguments, read left to right with keywords case-insensitive.
pub(crate) struct Args<'a> {
    pub(crate) rest: std::slice::Iter<'a, &'a [u8]>,
}

impl<'a> Args<'a> {
    /// A command's name, upper case, and what follows it.
    pub(crate) fn command(args: &'a [&'a [u8]]) -> Result<(String, Args<'a>), Error> {
        let Some((name, rest)) = args.split_first() else {
            return Err(server("ERR", "empty command"));
        };
        let cmd = String::from_utf8_lossy(name).to_ascii_uppercase();
        Ok((cmd, Args { rest: rest.iter() }))
    }
    pub(crate) fn next(&mut self) -> Option<&'a [u8]> {
        self.rest.next().copied()
    }
    pub(crate) fn require(&mut self, what: &str) -> Result<&'a [u8], Error> {
        self.next()
            .ok_or_else(|| server("ERR", &format!("missing {what}")))
    }
    pub(crate) fn number(&mut self, what: &str) -> Result<u64, Error> {
        let v = self.require(what)?;
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| server("ERR", &format!("{what} must be a whole number")))
    }
}

/// An error reply as the broker would give it.
pub(crate) fn server(code: &str, message: &str) -> Error {
    Error::Server {
        code: code.into(),
        message: message.into(),
    }
}

/// An error reply's code and message as the client's [`Error`], as the
/// broker's reply would be.
pub(crate) fn error_value(code: &str, message: &str) -> Error {
    match crate::reply_value(ferry_proto::Value::Error {
        code: code.to_string(),
        message: message.to_string(),
    }) {
        Err(e) => e,
        Ok(_) => Error::Protocol("an error reply was not an error".into()),
    }
}

/// Whether `word` is the keyword `kw` (any case).
pub(crate) fn is(word: &[u8], kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw.as_bytes())
}

pub(crate) fn unknown(opt: &[u8], cmd: &str) -> Error {
    server(
        "ERR",
        &format!(
            "unknown option '{}' for {cmd} (docs/protocol.md lists them)",
            String::from_utf8_lossy(opt)
        ),
    )
}

/// A queue or lock name as the protocol allows it (which also keeps it
/// inside a Redis hash tag).
pub(crate) fn check_name(name: &[u8]) -> Result<&str, Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(b));
    if !ok {
        return Err(server(
            "ERR",
            "a queue name is 1-200 bytes of A-Z a-z 0-9 _ . : -",
        ));
    }
    std::str::from_utf8(name).map_err(|_| server("ERR", "bad name"))
}

/// How long a command may wait: `None` forever, `Some(0)` not at all.
pub(crate) fn wait_option(
    word: &[u8],
    a: &mut Args<'_>,
    wait: &mut Option<Duration>,
) -> Result<bool, Error> {
    if is(word, "TIMEOUT") {
        let ms = a.number("TIMEOUT")?;
        *wait = if ms == 0 {
            None
        } else {
            Some(Duration::from_millis(ms))
        };
        Ok(true)
    } else if is(word, "NOWAIT") {
        *wait = Some(Duration::ZERO);
        Ok(true)
    } else {
        Ok(false)
    }
}

/// A PRIORITY n as an order key: bytes that sort as the numbers do.
pub(crate) fn priority_key(n: i64) -> Vec<u8> {
    ((n as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

/// How long a DEDUP key counts, as on the broker (`DEDUPFOR` shortens it).
pub(crate) const DEDUP_WINDOW_MS: u64 = 600_000;

/// QPUT q payload [options] or QPUTMANY q [options] PAYLOADS p1 ... pn.
pub(crate) struct Put {
    pub(crate) queue: String,
    pub(crate) payloads: Vec<Vec<u8>>,
    /// The order key (PRIORITY's bytes, or PRIOKEY's); empty: priority 0.
    pub(crate) key: Vec<u8>,
    pub(crate) keytype: Vec<u8>,
    pub(crate) delay_ms: u64,
    pub(crate) wait: Option<Duration>,
    pub(crate) dedup: Option<Vec<u8>>,
    /// The DEDUP key's window (DEDUPFOR, else the broker's).
    pub(crate) dedup_ms: u64,
}

impl Put {
    /// `cmd` is QPUT or QPUTMANY; `a` what follows it.
    pub(crate) fn parse(cmd: &str, a: &mut Args<'_>) -> Result<Put, Error> {
        let queue = check_name(a.require("queue")?)?.to_string();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        if cmd == "QPUT" {
            payloads.push(a.require("payload")?.to_vec());
        }
        let (mut key, mut keytype, mut delay_ms, mut wait, mut dedup) =
            (Vec::new(), Vec::new(), 0u64, None, None);
        // A key's own window, shorter than the broker's.
        let mut dedup_for = None;
        while let Some(opt) = a.next() {
            if is(opt, "PRIORITY") {
                let v = a.require("PRIORITY")?;
                let n: i64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| server("ERR", "PRIORITY must be an integer"))?;
                key = priority_key(n);
            } else if is(opt, "PRIOKEY") {
                key = a.require("PRIOKEY")?.to_vec();
            } else if is(opt, "KEYTYPE") {
                keytype = a.require("KEYTYPE")?.to_vec();
            } else if is(opt, "DELAY") {
                delay_ms = a.number("DELAY")?;
            } else if is(opt, "DEDUP") && cmd == "QPUT" {
                dedup = Some(a.require("DEDUP")?.to_vec());
            } else if is(opt, "DEDUPFOR") && cmd == "QPUT" {
                dedup_for = Some(a.number("DEDUPFOR")?.clamp(1, DEDUP_WINDOW_MS));
            } else if is(opt, "PAYLOADS") && cmd == "QPUTMANY" {
                while let Some(p) = a.next() {
                    payloads.push(p.to_vec());
                }
            } else if !wait_option(opt, a, &mut wait)? {
                return Err(unknown(opt, cmd));
            }
        }
        if payloads.is_empty() {
            return Err(server("ERR", "no payloads"));
        }
        if dedup_for.is_some() && dedup.is_none() {
            return Err(server("ERR", "DEDUPFOR needs a DEDUP key"));
        }
        Ok(Put {
            queue,
            payloads,
            key,
            keytype,
            delay_ms,
            wait,
            dedup,
            dedup_ms: dedup_for.unwrap_or(DEDUP_WINDOW_MS),
        })
    }
}

/// QGET q [OR q2 ...] [COUNT n] [TIMEOUT ms | NOWAIT] [LEASE ms | TAKE | NOACK].
pub(crate) struct Get {
    pub(crate) queues: Vec<String>,
    pub(crate) count: u64,
    /// "lease" (bound to its holder), "timed" (LEASE ms), "take" or
    /// "noack".
    pub(crate) mode: &'static str,
    /// A timed lease's length; for a bound one, the engine's default.
    pub(crate) lease_ms: u64,
    pub(crate) wait: Option<Duration>,
}

impl Get {
    pub(crate) fn parse(a: &mut Args<'_>, default_lease: Duration) -> Result<Get, Error> {
        let mut queues = vec![check_name(a.require("queue")?)?.to_string()];
        let mut get = Get {
            queues: Vec::new(),
            count: 1,
            mode: "lease",
            lease_ms: u64::try_from(default_lease.as_millis()).unwrap_or(u64::MAX),
            wait: None,
        };
        while let Some(opt) = a.next() {
            if is(opt, "OR") {
                queues.push(check_name(a.require("queue")?)?.to_string());
            } else if is(opt, "COUNT") {
                get.count = a.number("COUNT")?.max(1);
            } else if is(opt, "LEASE") {
                get.mode = "timed";
                get.lease_ms = a.number("LEASE")?;
            } else if is(opt, "TAKE") {
                get.mode = "take";
            } else if is(opt, "NOACK") {
                get.mode = "noack";
            } else if !wait_option(opt, a, &mut get.wait)? {
                return Err(unknown(opt, "QGET"));
            }
        }
        get.queues = queues;
        Ok(get)
    }
}

/// QCREATE's and QCONFIG's settings, as (field, value) in the order
/// named; `cmd` is QCREATE or QCONFIG (KIND only at creation).
pub(crate) fn settings(cmd: &str, a: &mut Args<'_>) -> Result<Vec<(&'static str, Vec<u8>)>, Error> {
    let mut named = Vec::new();
    while let Some(opt) = a.next() {
        let field = if is(opt, "MAXSIZE") {
            "maxsize"
        } else if is(opt, "KIND") && cmd == "QCREATE" {
            "kind"
        } else if is(opt, "LEASE") {
            "lease_timeout"
        } else if is(opt, "MAXATTEMPTS") {
            "max_attempts"
        } else if is(opt, "DEADLETTER") {
            "dead_letter"
        } else if is(opt, "EXPIRE") {
            "expire"
        } else {
            return Err(unknown(opt, cmd));
        };
        let value = a.require(field)?.to_vec();
        if field == "kind" && !matches!(value.as_slice(), b"fifo" | b"lifo" | b"priority") {
            return Err(server("ERR", "KIND is fifo, lifo or priority"));
        }
        if !matches!(field, "kind" | "dead_letter")
            && !std::str::from_utf8(&value).is_ok_and(|v| v.parse::<u64>().is_ok())
        {
            return Err(server("ERR", &format!("{field} must be a whole number")));
        }
        if field == "dead_letter" {
            check_name(&value)?;
        }
        named.push((field, value));
    }
    Ok(named)
}
