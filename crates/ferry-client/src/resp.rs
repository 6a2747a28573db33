//! The client side of RESP: commands out as arrays of bulk strings, replies
//! in as values (RESP2 and RESP3).

use std::io::{self, BufRead, Write};

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

/// Writes one command.
pub(crate) fn write_command(out: &mut impl Write, args: &[&[u8]]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    out.write_all(&buf)
}

fn line(input: &mut impl BufRead) -> io::Result<String> {
    let mut raw = Vec::new();
    let n = input.read_until(b'\n', &mut raw)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if raw.len() > MAX_REPLY || !raw.ends_with(b"\r\n") {
        return Err(bad("line"));
    }
    raw.truncate(raw.len() - 2);
    String::from_utf8(raw).map_err(|_| bad("not UTF-8"))
}

fn number(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| bad("number"))
}

/// Reads one reply.
pub(crate) fn read_value(input: &mut impl BufRead) -> io::Result<Value> {
    let l = line(input)?;
    let (kind, rest) = l.split_at(l.chars().next().map_or(0, char::len_utf8));
    Ok(match kind {
        "+" => Value::Simple(rest.to_string()),
        "-" => {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            Value::Error {
                code: code.to_string(),
                message: message.to_string(),
            }
        }
        ":" => Value::Int(number(rest)?),
        "$" => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let n = usize::try_from(n).map_err(|_| bad("length"))?;
            if n > MAX_REPLY {
                return Err(bad("length"));
            }
            let mut data = vec![0u8; n + 2];
            input.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(bad("bulk string end"));
            }
            data.truncate(n);
            Value::Bulk(data)
        }
        "*" => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                items.push(read_value(input)?);
            }
            Value::Array(items)
        }
        "%" => {
            let n = number(rest)?;
            let mut pairs = Vec::with_capacity((n.max(0) as usize).min(1024));
            for _ in 0..n {
                let k = read_value(input)?;
                let v = read_value(input)?;
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
        "_" => Value::Nil,
        "#" => Value::Bool(rest == "t"),
        _ => return Err(bad("type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Value> {
        read_value(&mut io::BufReader::new(bytes))
    }

    #[test]
    fn reads_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Value::Simple("OK".into()));
        assert_eq!(
            parse(b"-FULL queue is full\r\n").unwrap(),
            Value::Error {
                code: "FULL".into(),
                message: "queue is full".into()
            }
        );
        assert_eq!(parse(b":-7\r\n").unwrap(), Value::Int(-7));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").unwrap(),
            Value::Bulk(b"a\r\n".to_vec())
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Value::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Value::Nil);
        assert_eq!(parse(b"_\r\n").unwrap(), Value::Nil);
        assert_eq!(
            parse(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n").unwrap(),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Bulk(b"x".to_vec())])
            ])
        );
        assert_eq!(
            parse(b"%1\r\n$1\r\nk\r\n#t\r\n").unwrap(),
            Value::Map(vec![(Value::Bulk(b"k".to_vec()), Value::Bool(true))])
        );
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$5\r\nab\r\n", b"+no end", b""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"QPUT", b"q", b""]).unwrap();
        assert_eq!(out, b"*3\r\n$4\r\nQPUT\r\n$1\r\nq\r\n$0\r\n\r\n");
    }
}
