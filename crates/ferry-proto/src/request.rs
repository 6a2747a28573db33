//! Request parsing: check, then split, over a buffer that may hold a partial
//! request, several requests, or garbage.

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

/// A request's arguments, the command name first.
///
/// A `Vec`, not a `SmallVec`: measured with bench/resp.sh, an inline array
/// of `Bytes` made every command's future hundreds of bytes larger and cost
/// a quarter of pipelined throughput in copies.
pub type Request = Vec<Bytes>;

/// Bounds on what one request may hold; beyond them the request is refused
/// and the connection closed, because the rest of its bytes cannot be
/// trusted to frame anything.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest bulk string (a payload), in bytes.
    pub max_bulk: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line, in bytes.
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 16 << 20,
            max_args: 1 << 20,
            max_inline: 64 << 10,
        }
    }
}

/// A request that cannot be framed. The connection that sent it gets the
/// error and is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Bad framing; the text is Redis's wording.
    #[error("Protocol error: {0}")]
    Invalid(&'static str),
    /// A bulk string longer than [`Limits::max_bulk`].
    #[error("payload of {len} bytes is over the limit of {max}")]
    TooBig {
        /// The declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl ProtoError {
    /// The error code a client acts on: `TOOBIG` or `ERR`.
    pub fn code(&self) -> &'static str {
        match self {
            ProtoError::Invalid(_) => "ERR",
            ProtoError::TooBig { .. } => "TOOBIG",
        }
    }
}

/// Finds the end of the line that starts at `from`; `None` if the buffer
/// holds no complete line yet.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', buf.get(from..)?).map(|i| from + i)
}

/// Parses the decimal number between `from` and a `\r\n` ending at `nl`.
fn number(buf: &[u8], from: usize, nl: usize) -> Option<i64> {
    if nl < from + 2 || buf[nl - 1] != b'\r' {
        return None;
    }
    let digits = &buf[from..nl - 1];
    let (neg, digits) = match digits.first() {
        Some(b'-') => (true, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

/// Takes one request off the front of `buf`: its arguments, `Ok(None)` if
/// the buffer holds only part of one (the buffer is left as it was), or an
/// error if the bytes cannot be a request. Empty inline lines are skipped.
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtoError> {
    loop {
        match buf.first() {
            None => return Ok(None),
            Some(b'*') => return parse_array(buf, limits),
            Some(_) => match parse_inline(buf, limits)? {
                Some(args) if args.is_empty() => continue,
                other => return Ok(other),
            },
        }
    }
}

fn parse_array(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtoError> {
    let Some(nl) = line_end(buf, 1) else {
        return if buf.len() > limits.max_inline {
            Err(ProtoError::Invalid("too big mbulk count string"))
        } else {
            Ok(None)
        };
    };
    let count = number(buf, 1, nl).ok_or(ProtoError::Invalid("invalid multibulk length"))?;
    if count > limits.max_args as i64 {
        return Err(ProtoError::Invalid("invalid multibulk length"));
    }
    if count <= 0 {
        buf.advance(nl + 1);
        return Ok(Some(Request::new()));
    }
    let count = count as usize;
    // First pass: check that every argument is here, noting where each is.
    // Nothing is consumed until the whole request is.
    let mut spans: SmallVec<[(usize, usize); 8]> = SmallVec::with_capacity(count.min(64));
    let mut pos = nl + 1;
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err(ProtoError::Invalid("expected '$'")),
        }
        let Some(nl) = line_end(buf, pos + 1) else {
            return if buf.len() - pos > 32 {
                Err(ProtoError::Invalid("invalid bulk length"))
            } else {
                Ok(None)
            };
        };
        let len = number(buf, pos + 1, nl).ok_or(ProtoError::Invalid("invalid bulk length"))?;
        if len < 0 {
            return Err(ProtoError::Invalid("invalid bulk length"));
        }
        let len = len as usize;
        if len > limits.max_bulk {
            return Err(ProtoError::TooBig {
                len,
                max: limits.max_bulk,
            });
        }
        let start = nl + 1;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtoError::Invalid("bulk string not terminated by CRLF"));
        }
        spans.push((start, end));
        pos = end + 2;
    }
    let frame = buf.split_to(pos).freeze();
    Ok(Some(
        spans.into_iter().map(|(s, e)| frame.slice(s..e)).collect(),
    ))
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtoError> {
    let Some(nl) = line_end(buf, 0) else {
        return if buf.len() > limits.max_inline {
            Err(ProtoError::Invalid("too big inline request"))
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(nl + 1).freeze();
    let text = line.slice(..nl);
    let text = text.strip_suffix(b"\r").unwrap_or(&text);
    let args = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| line.slice_ref(w))
        .collect::<Request>();
    if args.len() > limits.max_args {
        return Err(ProtoError::Invalid("too many arguments"));
    }
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtoError> {
        let mut buf = BytesMut::from(input);
        parse_request(&mut buf, &Limits::default())
            .map(|r| r.map(|a| a.iter().map(|b| b.to_vec()).collect()))
    }

    fn args(list: &[&str]) -> Option<Vec<Vec<u8>>> {
        Some(list.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    #[test]
    fn arrays_of_bulk_strings() {
        assert_eq!(
            parse(b"*2\r\n$4\r\nQLEN\r\n$1\r\nq\r\n"),
            Ok(args(&["QLEN", "q"]))
        );
        assert_eq!(parse(b"*1\r\n$0\r\n\r\n"), Ok(args(&[""])));
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let req = b"*3\r\n$4\r\nQPUT\r\n$1\r\nq\r\n$5\r\nhello\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse(&req[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(req), Ok(args(&["QPUT", "q", "hello"])));
    }

    #[test]
    fn pipelined_requests_come_off_one_at_a_time() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nPI"[..]);
        let l = Limits::default();
        assert_eq!(parse_request(&mut buf, &l).unwrap().unwrap().len(), 1);
        assert_eq!(parse_request(&mut buf, &l).unwrap().unwrap()[0], "PING");
        assert_eq!(parse_request(&mut buf, &l), Ok(None));
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
    }

    #[test]
    fn inline_commands() {
        assert_eq!(parse(b"PING\r\n"), Ok(args(&["PING"])));
        assert_eq!(parse(b"  QPUT  q  x \n"), Ok(args(&["QPUT", "q", "x"])));
        assert_eq!(parse(b"\r\n\r\nPING\r\n"), Ok(args(&["PING"])));
        assert_eq!(parse(b"\r\n"), Ok(None));
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*2\r\n:1\r\n",
            b"*1\r\n$-2\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*1\r\n$z\r\n",
        ] {
            assert!(matches!(parse(bad), Err(ProtoError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn oversize_payload_is_refused_before_it_arrives() {
        let mut buf = BytesMut::from(&b"*1\r\n$100\r\n"[..]);
        let limits = Limits {
            max_bulk: 10,
            ..Limits::default()
        };
        assert_eq!(
            parse_request(&mut buf, &limits),
            Err(ProtoError::TooBig { len: 100, max: 10 })
        );
    }

    #[test]
    fn endless_lines_are_refused() {
        let limits = Limits {
            max_inline: 16,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&[b'a'; 64][..]);
        assert!(parse_request(&mut buf, &limits).is_err());
        let mut buf = BytesMut::from(&b"*1\r\n$11111111111111111111111111111111111"[..]);
        assert!(parse_request(&mut buf, &limits).is_err());
    }

    #[test]
    fn empty_and_null_arrays_are_empty_requests() {
        assert_eq!(parse(b"*0\r\n"), Ok(Some(vec![])));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some(vec![])));
    }
}
