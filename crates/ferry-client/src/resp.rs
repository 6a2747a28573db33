//! The client side of RESP: commands out as arrays of bulk strings, replies
//! in as values (RESP2 and RESP3).

use std::io;

/// A reply from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`-style status.
    Simple(String),
    /// `-CODE message`.
    Error {
        /// The code a client acts on: `FULL`, `SHUTDOWN`, `ERR`, ...
        code: String,
        /// The rest.
        message: String,
    },
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// Null (`$-1`, `*-1`, `_`).
    Nil,
    /// An array.
    Array(Vec<Value>),
    /// A RESP3 map, as pairs.
    Map(Vec<(Value, Value)>),
    /// A RESP3 boolean.
    Bool(bool),
}

/// Longest reply line or bulk string accepted; a server is trusted, but a
/// wrong peer must not make the client allocate without bound.
const MAX_REPLY: usize = 512 << 20;

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed reply: {what}"),
    )
}

/// Encodes one command.
pub(crate) fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

/// Parses one reply from the front of `buf`: the value and how many bytes
/// it took, or `None` if `buf` holds only part of it.
pub(crate) fn parse(buf: &[u8]) -> io::Result<Option<(Value, usize)>> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_REPLY {
            Err(bad("line"))
        } else {
            Ok(None)
        };
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(bad("line end"));
    }
    let line = std::str::from_utf8(&buf[1..nl - 1]).map_err(|_| bad("not UTF-8"))?;
    let mut at = nl + 1;
    let value = match buf[0] {
        b'+' => Value::Simple(line.to_string()),
        b'-' => {
            let (code, message) = line.split_once(' ').unwrap_or((line, ""));
            Value::Error {
                code: code.to_string(),
                message: message.to_string(),
            }
        }
        b':' => Value::Int(number(line)?),
        b'$' => {
            let n = number(line)?;
            if n < 0 {
                return Ok(Some((Value::Nil, at)));
            }
            let n = usize::try_from(n).map_err(|_| bad("length"))?;
            if n > MAX_REPLY {
                return Err(bad("length"));
            }
            if buf.len() < at + n + 2 {
                return Ok(None);
            }
            if &buf[at + n..at + n + 2] != b"\r\n" {
                return Err(bad("bulk string end"));
            }
            let data = buf[at..at + n].to_vec();
            at += n + 2;
            Value::Bulk(data)
        }
        b'*' | b'%' => {
            let n = number(line)?;
            if n < 0 {
                return Ok(Some((Value::Nil, at)));
            }
            let pairs = buf[0] == b'%';
            let count = if pairs { 2 * n } else { n } as usize;
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                let Some((v, used)) = parse(&buf[at..])? else {
                    return Ok(None);
                };
                items.push(v);
                at += used;
            }
            if pairs {
                let mut it = items.into_iter();
                let mut out = Vec::with_capacity(count / 2);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((k, v));
                }
                Value::Map(out)
            } else {
                Value::Array(items)
            }
        }
        b'_' => Value::Nil,
        b'#' => Value::Bool(line == "t"),
        _ => return Err(bad("type")),
    };
    Ok(Some((value, at)))
}

fn number(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| bad("number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> io::Result<Value> {
        match parse(bytes)? {
            Some((v, used)) if used == bytes.len() => Ok(v),
            Some(_) => Err(bad("trailing bytes")),
            None => Err(bad("incomplete")),
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let reply = b"*2\r\n:1\r\n*1\r\n$3\r\nxyz\r\n";
        for cut in 0..reply.len() {
            assert!(parse(&reply[..cut]).unwrap().is_none(), "cut {cut}");
        }
        assert!(whole(reply).is_ok());
    }

    #[test]
    fn reads_every_reply_type() {
        assert_eq!(whole(b"+OK\r\n").unwrap(), Value::Simple("OK".into()));
        assert_eq!(
            whole(b"-FULL queue is full\r\n").unwrap(),
            Value::Error {
                code: "FULL".into(),
                message: "queue is full".into()
            }
        );
        assert_eq!(whole(b":-7\r\n").unwrap(), Value::Int(-7));
        assert_eq!(
            whole(b"$3\r\na\r\n\r\n").unwrap(),
            Value::Bulk(b"a\r\n".to_vec())
        );
        assert_eq!(whole(b"$-1\r\n").unwrap(), Value::Nil);
        assert_eq!(whole(b"*-1\r\n").unwrap(), Value::Nil);
        assert_eq!(whole(b"_\r\n").unwrap(), Value::Nil);
        assert_eq!(
            whole(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n").unwrap(),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Bulk(b"x".to_vec())])
            ])
        );
        assert_eq!(
            whole(b"%1\r\n$1\r\nk\r\n#t\r\n").unwrap(),
            Value::Map(vec![(Value::Bulk(b"k".to_vec()), Value::Bool(true))])
        );
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$2\r\nabcd", b"+no end\n", b""] {
            assert!(whole(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_commands_as_arrays_of_bulk_strings() {
        let out = command(&[b"QPUT", b"q", b""]);
        assert_eq!(out, b"*3\r\n$4\r\nQPUT\r\n$1\r\nq\r\n$0\r\n\r\n");
    }
}
