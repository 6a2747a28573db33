//! Decoding RESP off a buffer that may hold part of a frame, several
//! frames, or garbage: requests (arrays of bulk strings, or inline
//! commands) for the broker, and any reply for a client.
//!
//! The [`Decoder`] is resumable. It consumes each piece of a frame from the
//! buffer as soon as the piece is whole — a header line, a bulk string's
//! body — and keeps what it built so far, so a frame that arrives over many
//! reads is scanned once: decoding costs time in proportion to the bytes,
//! however they are cut. Bulk strings come out as slices of the buffer
//! (`Bytes`), never copied. Limits bound every length before anything is
//! allocated for it, so a hostile length costs nothing.

use bytes::{Buf, Bytes, BytesMut};

use crate::Value;

/// A request's arguments, the command name first.
///
/// A `Vec`, not a `SmallVec`: measured with bench/resp.sh, an inline array
/// of `Bytes` made every command's future hundreds of bytes larger and cost
/// a quarter of pipelined throughput in copies.
pub type Request = Vec<Bytes>;

/// Bounds on what one frame may hold; beyond them decoding fails, because
/// the rest of the bytes cannot be trusted to frame anything.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest bulk string (a payload), in bytes.
    pub max_bulk: usize,
    /// Most elements in one array (arguments of one request).
    pub max_args: usize,
    /// Longest line (an inline command, a status or error reply), in bytes.
    pub max_inline: usize,
    /// Deepest nesting of arrays and maps in a reply.
    pub max_depth: usize,
    /// Most bytes one request's arguments may hold in all.
    pub max_request: usize,
}

impl Default for Limits {
    /// The broker's bounds on a request.
    fn default() -> Self {
        Limits {
            max_bulk: 16 << 20,
            max_args: 1 << 20,
            max_inline: 64 << 10,
            max_depth: 32,
            max_request: 256 << 20,
        }
    }
}

impl Limits {
    /// A client's bounds on a reply: a broker is trusted more than a
    /// client, but a wrong peer must not make it allocate without bound.
    pub fn client() -> Self {
        Limits {
            max_bulk: 1 << 30,
            max_args: u32::MAX as usize,
            max_inline: 1 << 20,
            max_depth: 32,
            max_request: usize::MAX,
        }
    }

    /// The broker's bounds on a client that has not authenticated yet
    /// (as Redis's): enough for AUTH and HELLO, so that a stranger cannot
    /// make it buffer much.
    pub fn unauthenticated() -> Self {
        Limits {
            max_bulk: 16 << 10,
            max_args: 10,
            max_inline: 16 << 10,
            max_depth: 32,
            max_request: 64 << 10,
        }
    }
}

/// Bytes that cannot be framed. The connection that sent them gets the
/// error and is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Bad framing; the text is Redis's wording where Redis has one.
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
    /// A request whose arguments hold more than [`Limits::max_request`].
    #[error("request of {len} bytes or more is over the limit of {max}")]
    RequestTooBig {
        /// Its arguments' bytes so far, with the one that went over.
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
            ProtoError::TooBig { .. } | ProtoError::RequestTooBig { .. } => "TOOBIG",
        }
    }
}

/// The kinds of aggregate a reply may open.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Array,
    Map,
}

/// An aggregate being filled.
#[derive(Debug)]
struct Open {
    kind: Kind,
    want: usize,
    items: Vec<Value>,
}

impl Open {
    fn finish(self) -> Value {
        match self.kind {
            Kind::Array => Value::Array(self.items),
            Kind::Map => {
                let mut it = self.items.into_iter();
                let mut pairs = Vec::with_capacity(it.len() / 2);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            }
        }
    }
}

/// One piece of a reply: a whole value, or the header of an aggregate
/// whose elements follow.
enum Piece {
    Value(Value),
    Open(Kind, usize),
}

/// A resumable RESP decoder. Keep one per connection, and feed it the
/// connection's read buffer: each call consumes what it can and replies
/// the next whole request or reply, or `None` until more bytes arrive.
/// After an error the connection's bytes cannot be trusted; drop both.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    /// A bulk string whose header was consumed: its length, while its body
    /// is awaited.
    bulk: Option<usize>,
    /// A request's declared argument count, the arguments so far, and
    /// their bytes.
    request: Option<(usize, Request, usize)>,
    /// A reply's open aggregates, outermost first.
    stack: Vec<Open>,
}

/// Finds the `\n` of the line at the front of `buf` and checks its `\r`;
/// `None` if the line is not whole yet. A line longer than `max` without
/// an end is refused with `what`.
fn line(buf: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, ProtoError> {
    match memchr::memchr(b'\n', buf) {
        Some(nl) if nl > max => Err(ProtoError::Invalid(what)),
        Some(nl) if nl == 0 || buf[nl - 1] != b'\r' => {
            Err(ProtoError::Invalid("line not terminated by CRLF"))
        }
        Some(nl) => Ok(Some(nl)),
        None if buf.len() > max => Err(ProtoError::Invalid(what)),
        None => Ok(None),
    }
}

/// A decimal i64 (optionally negative), refusing anything else — including
/// values that overflow.
fn number(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10).and_then(|n| {
            if neg {
                n.checked_sub(d)
            } else {
                n.checked_add(d)
            }
        })?;
    }
    Some(n)
}

fn text(line: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(line.to_vec()).map_err(|_| ProtoError::Invalid("a status line is not UTF-8"))
}

impl Decoder {
    /// A decoder that holds frames to these limits.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            ..Decoder::default()
        }
    }

    /// Holds the frames that follow to other limits (a client that
    /// authenticated gets the full ones).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes the frame being decoded still needs, at least, before the
    /// next call can make progress: a reader reserves that much room once
    /// rather than growing its buffer read by read.
    pub fn wants(&self, buf: &[u8]) -> usize {
        self.bulk
            .map_or(0, |len| (len + 2).saturating_sub(buf.len()))
    }

    /// The body of a bulk string of `len` bytes whose header is consumed.
    fn body(&mut self, buf: &mut BytesMut, len: usize) -> Result<Option<Bytes>, ProtoError> {
        if buf.len() < len + 2 {
            return Ok(None);
        }
        if &buf[len..len + 2] != b"\r\n" {
            return Err(ProtoError::Invalid("bulk string not terminated by CRLF"));
        }
        let body = buf.split_to(len).freeze();
        buf.advance(2);
        self.bulk = None;
        Ok(Some(body))
    }

    /// A bulk string's length from its header line (`nl` ends it), checked
    /// against the limit; negative lengths are the caller's to read.
    fn bulk_len(&self, buf: &[u8], nl: usize) -> Result<i64, ProtoError> {
        let n = number(&buf[1..nl - 1]).ok_or(ProtoError::Invalid("invalid bulk length"))?;
        if n > 0 && n as u64 > self.limits.max_bulk as u64 {
            return Err(ProtoError::TooBig {
                len: usize::try_from(n).unwrap_or(usize::MAX),
                max: self.limits.max_bulk,
            });
        }
        Ok(n)
    }

    /// An aggregate's element count from its header line, checked against
    /// the limit.
    fn count(&self, buf: &[u8], nl: usize) -> Result<i64, ProtoError> {
        let n = number(&buf[1..nl - 1]).ok_or(ProtoError::Invalid("invalid multibulk length"))?;
        if n > 0 && n as u64 > self.limits.max_args as u64 {
            return Err(ProtoError::Invalid("invalid multibulk length"));
        }
        Ok(n)
    }

    // ----- requests ---------------------------------------------------------

    /// Takes the next request off `buf`: its arguments (empty for `*0` and
    /// `*-1`, which the caller skips), `None` until it is whole, or an
    /// error. Empty inline lines are skipped.
    pub fn request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtoError> {
        if self.request.is_none() {
            loop {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => break,
                    Some(_) => match self.inline(buf)? {
                        Some(args) if args.is_empty() => continue,
                        other => return Ok(other),
                    },
                }
            }
            let Some(nl) = line(buf, self.limits.max_inline, "too big mbulk count string")? else {
                return Ok(None);
            };
            let n = self.count(buf, nl)?;
            buf.advance(nl + 1);
            if n <= 0 {
                return Ok(Some(Request::new()));
            }
            let n = n as usize;
            self.request = Some((n, Request::with_capacity(n.min(64)), 0));
        }
        while let Some((want, args, _)) = &self.request
            && args.len() < *want
        {
            let Some(arg) = self.request_arg(buf)? else {
                return Ok(None);
            };
            if let Some((_, args, _)) = &mut self.request {
                args.push(arg);
            }
        }
        Ok(self.request.take().map(|(_, args, _)| args))
    }

    /// One argument of a request: a bulk string.
    fn request_arg(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtoError> {
        if let Some(len) = self.bulk {
            return self.body(buf, len);
        }
        match buf.first() {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err(ProtoError::Invalid("expected '$'")),
        }
        let Some(nl) = line(buf, 32, "invalid bulk length")? else {
            return Ok(None);
        };
        let len = self.bulk_len(buf, nl)?;
        if len < 0 {
            return Err(ProtoError::Invalid("invalid bulk length"));
        }
        if let Some((_, _, total)) = &mut self.request {
            // Counted as declared, before its bytes are awaited.
            *total = total.saturating_add(len as usize);
            if *total > self.limits.max_request {
                return Err(ProtoError::RequestTooBig {
                    len: *total,
                    max: self.limits.max_request,
                });
            }
        }
        buf.advance(nl + 1);
        self.bulk = Some(len as usize);
        self.body(buf, len as usize)
    }

    /// An inline command, as telnet and `redis-cli` in pipe mode send:
    /// words separated by whitespace, up to a line end.
    fn inline(&self, buf: &mut BytesMut) -> Result<Option<Request>, ProtoError> {
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            return if buf.len() > self.limits.max_inline {
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
        if args.len() > self.limits.max_args {
            return Err(ProtoError::Invalid("too many arguments"));
        }
        if text.len() > self.limits.max_request {
            return Err(ProtoError::RequestTooBig {
                len: text.len(),
                max: self.limits.max_request,
            });
        }
        Ok(Some(args))
    }

    // ----- replies ----------------------------------------------------------

    /// Takes the next reply off `buf`: the whole value, `None` until it is
    /// whole, or an error.
    pub fn value(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, ProtoError> {
        loop {
            let Some(piece) = self.piece(buf)? else {
                return Ok(None);
            };
            let mut value = match piece {
                Piece::Value(v) => v,
                Piece::Open(kind, 0) => Open {
                    kind,
                    want: 0,
                    items: Vec::new(),
                }
                .finish(),
                Piece::Open(kind, n) => {
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(ProtoError::Invalid("replies nested too deep"));
                    }
                    let want = match kind {
                        Kind::Array => n,
                        Kind::Map => n
                            .checked_mul(2)
                            .ok_or(ProtoError::Invalid("invalid multibulk length"))?,
                    };
                    self.stack.push(Open {
                        kind,
                        want,
                        items: Vec::with_capacity(want.min(1024)),
                    });
                    continue;
                }
            };
            // A whole value: it completes the aggregates it closes.
            loop {
                let Some(top) = self.stack.last_mut() else {
                    return Ok(Some(value));
                };
                top.items.push(value);
                if top.items.len() < top.want {
                    break;
                }
                match self.stack.pop() {
                    Some(open) => value = open.finish(),
                    None => break,
                }
            }
        }
    }

    /// The next piece of a reply.
    fn piece(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, ProtoError> {
        if let Some(len) = self.bulk {
            return Ok(self.body(buf, len)?.map(|b| Piece::Value(Value::Bulk(b))));
        }
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        let Some(nl) = line(buf, self.limits.max_inline, "reply line too long")? else {
            return Ok(None);
        };
        // A bare "\r\n" has no type byte: a reply, unlike a request, is
        // never empty.
        let body = buf
            .get(1..nl.saturating_sub(1))
            .ok_or(ProtoError::Invalid("empty reply line"))?;
        let piece = match kind {
            b'+' => Piece::Value(Value::Simple(text(body)?)),
            b'-' => {
                let line = text(body)?;
                let (code, message) = line.split_once(' ').unwrap_or((&line, ""));
                Piece::Value(Value::Error {
                    code: code.to_string(),
                    message: message.to_string(),
                })
            }
            b':' => Piece::Value(Value::Int(
                number(body).ok_or(ProtoError::Invalid("invalid integer"))?,
            )),
            b'_' if body.is_empty() => Piece::Value(Value::Nil),
            b'#' => Piece::Value(Value::Bool(match body {
                b"t" => true,
                b"f" => false,
                _ => return Err(ProtoError::Invalid("invalid boolean")),
            })),
            b'$' => {
                let len = self.bulk_len(buf, nl)?;
                buf.advance(nl + 1);
                if len < 0 {
                    return Ok(Some(Piece::Value(Value::Nil)));
                }
                self.bulk = Some(len as usize);
                return Ok(self
                    .body(buf, len as usize)?
                    .map(|b| Piece::Value(Value::Bulk(b))));
            }
            b'*' | b'%' => {
                let n = self.count(buf, nl)?;
                let kind = if kind == b'*' { Kind::Array } else { Kind::Map };
                if n < 0 {
                    Piece::Value(Value::Nil)
                } else {
                    Piece::Open(kind, n as usize)
                }
            }
            _ => return Err(ProtoError::Invalid("unknown reply type")),
        };
        buf.advance(nl + 1);
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtoError> {
        let mut buf = BytesMut::from(input);
        Decoder::default()
            .request(&mut buf)
            .map(|r| r.map(|a| a.iter().map(|b| b.to_vec()).collect()))
    }

    fn args(list: &[&str]) -> Option<Vec<Vec<u8>>> {
        Some(list.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    fn value(input: &[u8]) -> Result<Option<Value>, ProtoError> {
        Decoder::new(Limits::client()).value(&mut BytesMut::from(input))
    }

    #[test]
    fn arrays_of_bulk_strings() {
        assert_eq!(
            request(b"*2\r\n$4\r\nQLEN\r\n$1\r\nq\r\n"),
            Ok(args(&["QLEN", "q"]))
        );
        assert_eq!(request(b"*1\r\n$0\r\n\r\n"), Ok(args(&[""])));
    }

    #[test]
    fn a_request_over_its_total_is_refused_as_its_header_arrives() {
        let mut d = Decoder::new(Limits {
            max_request: 10,
            ..Limits::default()
        });
        // The third argument's header is enough: its body never has to come.
        let mut buf = BytesMut::from(&b"*3\r\n$4\r\nQPUT\r\n$1\r\nq\r\n$6\r\n"[..]);
        assert_eq!(
            d.request(&mut buf),
            Err(ProtoError::RequestTooBig { len: 11, max: 10 })
        );
        let inline = b"QPUT q 123456\r\n";
        let mut d = Decoder::new(Limits {
            max_request: 10,
            ..Limits::default()
        });
        assert!(matches!(
            d.request(&mut BytesMut::from(&inline[..])),
            Err(ProtoError::RequestTooBig { .. })
        ));
        // Before AUTH: ten arguments and 16 KiB each at most.
        let mut d = Decoder::new(Limits::unauthenticated());
        let mut huge = BytesMut::from(&b"*1048576\r\n"[..]);
        assert!(d.request(&mut huge).is_err());
        d.set_limits(Limits::default());
        assert!(
            d.request(&mut BytesMut::from(&b"*11\r\n"[..]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let req = b"*3\r\n$4\r\nQPUT\r\n$1\r\nq\r\n$5\r\nhello\r\n";
        for cut in 0..req.len() {
            assert_eq!(request(&req[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(request(req), Ok(args(&["QPUT", "q", "hello"])));
    }

    #[test]
    fn pipelined_requests_come_off_one_at_a_time() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nPI"[..]);
        let mut d = Decoder::default();
        assert_eq!(d.request(&mut buf).unwrap().unwrap().len(), 1);
        assert_eq!(d.request(&mut buf).unwrap().unwrap()[0], "PING");
        assert_eq!(d.request(&mut buf), Ok(None));
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(d.request(&mut buf).unwrap().unwrap()[0], "PING");
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands() {
        assert_eq!(request(b"PING\r\n"), Ok(args(&["PING"])));
        assert_eq!(request(b"  QPUT  q  x \n"), Ok(args(&["QPUT", "q", "x"])));
        assert_eq!(request(b"\r\n\r\nPING\r\n"), Ok(args(&["PING"])));
        assert_eq!(request(b"\r\n"), Ok(None));
    }

    /// Found by codec_props' random bytes: "\r\n" as a reply sliced
    /// [1..0] and panicked.
    #[test]
    fn an_empty_reply_line_is_an_error() {
        assert!(value(b"\r\n").is_err());
        assert!(value(b"\r\n+OK\r\n").is_err());
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*2\r\n:1\r\n",
            b"*1\r\n$-2\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*1\r\n$z\r\n",
            b"*1\n",
        ] {
            assert!(
                matches!(request(bad), Err(ProtoError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn oversize_payload_is_refused_before_it_arrives() {
        let mut buf = BytesMut::from(&b"*1\r\n$100\r\n"[..]);
        let mut d = Decoder::new(Limits {
            max_bulk: 10,
            ..Limits::default()
        });
        assert_eq!(
            d.request(&mut buf),
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
        assert!(Decoder::new(limits).request(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"*1\r\n$11111111111111111111111111111111111"[..]);
        assert!(Decoder::new(limits).request(&mut buf).is_err());
    }

    #[test]
    fn empty_and_null_arrays_are_empty_requests() {
        assert_eq!(request(b"*0\r\n"), Ok(Some(vec![])));
        assert_eq!(request(b"*-1\r\n"), Ok(Some(vec![])));
    }

    #[test]
    fn reads_every_reply_type() {
        let bulk = |b: &[u8]| Value::Bulk(Bytes::copy_from_slice(b));
        assert_eq!(value(b"+OK\r\n"), Ok(Some(Value::Simple("OK".into()))));
        assert_eq!(
            value(b"-FULL queue is full\r\n"),
            Ok(Some(Value::Error {
                code: "FULL".into(),
                message: "queue is full".into()
            }))
        );
        assert_eq!(value(b":-7\r\n"), Ok(Some(Value::Int(-7))));
        assert_eq!(
            value(b":-9223372036854775808\r\n"),
            Ok(Some(Value::Int(i64::MIN)))
        );
        assert_eq!(value(b"$3\r\na\r\n\r\n"), Ok(Some(bulk(b"a\r\n"))));
        assert_eq!(value(b"$-1\r\n"), Ok(Some(Value::Nil)));
        assert_eq!(value(b"*-1\r\n"), Ok(Some(Value::Nil)));
        assert_eq!(value(b"_\r\n"), Ok(Some(Value::Nil)));
        assert_eq!(
            value(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n"),
            Ok(Some(Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![bulk(b"x")])
            ])))
        );
        assert_eq!(
            value(b"%1\r\n$1\r\nk\r\n#t\r\n"),
            Ok(Some(Value::Map(vec![(bulk(b"k"), Value::Bool(true))])))
        );
        assert_eq!(value(b"*0\r\n"), Ok(Some(Value::Array(vec![]))));
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [
            &b"?x\r\n"[..],
            b":x\r\n",
            b":99999999999999999999\r\n",
            b"$2\r\nabcd",
            b"+no end\n",
            b"#x\r\n",
        ] {
            assert!(value(bad).is_err(), "{bad:?}");
        }
        assert_eq!(value(b""), Ok(None));
    }

    #[test]
    fn hostile_lengths_cost_nothing() {
        // Counts that would overflow when doubled for a map, or ask for more
        // memory than exists, are refused or wait for elements that never
        // come — without allocating for them.
        for hostile in [
            &b"%4611686018427387904\r\n"[..],
            b"*9223372036854775807\r\n",
            b"$9223372036854775807\r\n",
            b"%9223372036854775807\r\n",
        ] {
            assert!(value(hostile).is_err(), "{hostile:?}");
        }
        let mut d = Decoder::new(Limits::client());
        let mut buf = BytesMut::from(&b"*4294967295\r\n"[..]);
        assert_eq!(d.value(&mut buf), Ok(None));
        assert!(d.stack[0].items.capacity() <= 1024);
        let nested = b"*1\r\n".repeat(64);
        assert!(value(&nested).is_err(), "nesting is bounded");
    }

    /// The decoder resumes where it stopped: a reply fed a byte at a time
    /// is scanned once, not once per read (a 10 MB entry used to be copied
    /// again on every read, making large replies quadratic).
    #[test]
    fn a_reply_fed_in_pieces_is_consumed_as_it_arrives() {
        let payload = vec![b'x'; 100_000];
        let mut reply = b"*2\r\n*4\r\n$1\r\nq\r\n:1\r\n".to_vec();
        reply.extend_from_slice(format!("${}\r\n", payload.len()).as_bytes());
        reply.extend_from_slice(&payload);
        reply.extend_from_slice(b"\r\n:0\r\n*4\r\n$1\r\nq\r\n:2\r\n$1\r\ny\r\n:0\r\n");
        let mut d = Decoder::new(Limits::client());
        let mut buf = BytesMut::new();
        let mut got = None;
        for chunk in reply.chunks(1000) {
            buf.extend_from_slice(chunk);
            if let Some(v) = d.value(&mut buf).unwrap() {
                got = Some(v);
            }
            // Whole pieces are taken at once: what is left is at most a
            // line or a bulk body still arriving.
            assert!(buf.len() <= 1000 || d.wants(&buf) > 0, "{} left", buf.len());
        }
        let Some(Value::Array(entries)) = got else {
            panic!("no reply");
        };
        assert_eq!(entries.len(), 2);
        assert!(buf.is_empty());
    }
}
