//! Decoding RESP off a buffer that may hold part of a frame, several
//! frames, or garbage: requests (arrays of bulk strings, or inline
//! commands) for the broker, and any reply for a client.
//!
//! The [`Decoder`] is resumable. It keeps what it learnt of a partial
//! frame — for a request, where each argument read so far lies; for a
//! reply, the pieces consumed — so a frame that arrives over many reads is
//! scanned once: decoding costs time in proportion to the bytes, however
//! they are cut. A request comes out as one share of the buffer (`Bytes`)
//! and its arguments' places in it; a reply's bulk strings as slices of
//! the buffer; nothing is copied. Limits bound every length before
//! anything is allocated for it, so a hostile length costs nothing.

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::Value;

/// A request: its frame, one share of the read buffer, and where each
/// argument lies in it, the command name first.
///
/// One share per request, not one per argument: taking and dropping a
/// share is an atomic operation each, and per argument they were a tenth
/// of a pipelined get's time (measured with perf under redis-benchmark).
/// An argument is borrowed ([`Request::get`]) or shared as `Bytes`
/// ([`Request::bytes`]) only when a command keeps it.
#[derive(Clone, Default)]
pub struct Request {
    frame: Bytes,
    args: SmallVec<[(usize, usize); 5]>,
}

impl Request {
    /// A request of these arguments (for tests and tools; the decoder
    /// makes them from the wire).
    pub fn from_args<A: AsRef<[u8]>>(args: impl IntoIterator<Item = A>) -> Request {
        let mut frame = Vec::new();
        let mut ranges = SmallVec::new();
        for a in args {
            let a = a.as_ref();
            ranges.push((frame.len(), frame.len() + a.len()));
            frame.extend_from_slice(a);
        }
        Request {
            frame: Bytes::from(frame),
            args: ranges,
        }
    }

    /// How many arguments, the command name included.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// True for `*0` and `*-1`, which carry no command.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// Argument `i`, borrowed.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let &(start, end) = self.args.get(i)?;
        self.frame.get(start..end)
    }

    /// Argument `i` as a share of the frame, for a command that keeps it.
    pub fn bytes(&self, i: usize) -> Option<Bytes> {
        let &(start, end) = self.args.get(i)?;
        (end <= self.frame.len()).then(|| self.frame.slice(start..end))
    }

    /// Every argument, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.args
            .iter()
            .map(|&(start, end)| &self.frame[start..end])
    }
}

impl std::ops::Index<usize> for Request {
    type Output = [u8];

    fn index(&self, i: usize) -> &[u8] {
        let (start, end) = self.args[i];
        &self.frame[start..end]
    }
}

/// Equal when the arguments are, however the frames were laid out.
impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Request {}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|a| String::from_utf8_lossy(a)))
            .finish()
    }
}

/// A request being decoded: its frame starts at the front of the buffer
/// and stays there until the request is whole.
#[derive(Debug)]
struct Partial {
    /// Arguments declared.
    want: usize,
    /// Where those decoded so far lie.
    args: SmallVec<[(usize, usize); 5]>,
    /// Their bytes, as declared.
    total: usize,
    /// Where the next piece starts.
    pos: usize,
    /// The length of the bulk string at `pos`, once its header is read.
    bulk: Option<usize>,
}

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
    /// A reply's bulk string whose header was consumed: its length, while
    /// its body is awaited (a request's is in [`Partial`]).
    bulk: Option<usize>,
    /// The request being decoded, if one is begun.
    request: Option<Partial>,
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
        if let Some(p) = &self.request {
            return p
                .bulk
                .map_or(0, |len| (p.pos + len + 2).saturating_sub(buf.len()));
        }
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
    /// error. Empty inline lines are skipped. A request's bytes stay in
    /// `buf` until it is whole; what was read of them is not read again.
    pub fn request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtoError> {
        let mut p = match self.request.take() {
            Some(p) => p,
            None => {
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
                let Some(nl) = line(buf, self.limits.max_inline, "too big mbulk count string")?
                else {
                    return Ok(None);
                };
                let n = self.count(buf, nl)?;
                if n <= 0 {
                    buf.advance(nl + 1);
                    return Ok(Some(Request::default()));
                }
                Partial {
                    want: n as usize,
                    args: SmallVec::new(),
                    total: 0,
                    pos: nl + 1,
                    bulk: None,
                }
            }
        };
        if !self.request_args(buf, &mut p)? {
            self.request = Some(p);
            return Ok(None);
        }
        let frame = buf.split_to(p.pos).freeze();
        Ok(Some(Request {
            frame,
            args: p.args,
        }))
    }

    /// Reads the arguments of `p` that `buf` holds whole; true once all
    /// are.
    fn request_args(&self, buf: &[u8], p: &mut Partial) -> Result<bool, ProtoError> {
        while p.args.len() < p.want {
            let len = match p.bulk {
                Some(len) => len,
                None => {
                    let rest = &buf[p.pos..];
                    match rest.first() {
                        None => return Ok(false),
                        Some(b'$') => {}
                        Some(_) => return Err(ProtoError::Invalid("expected '$'")),
                    }
                    let Some(nl) = line(rest, 32, "invalid bulk length")? else {
                        return Ok(false);
                    };
                    let len = self.bulk_len(rest, nl)?;
                    if len < 0 {
                        return Err(ProtoError::Invalid("invalid bulk length"));
                    }
                    let len = len as usize;
                    // Counted as declared, before its bytes are awaited.
                    p.total = p.total.saturating_add(len);
                    if p.total > self.limits.max_request {
                        return Err(ProtoError::RequestTooBig {
                            len: p.total,
                            max: self.limits.max_request,
                        });
                    }
                    p.pos += nl + 1;
                    p.bulk = Some(len);
                    len
                }
            };
            let end = p.pos + len;
            if buf.len() < end + 2 {
                return Ok(false);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtoError::Invalid("bulk string not terminated by CRLF"));
            }
            p.args.push((p.pos, end));
            p.pos = end + 2;
            p.bulk = None;
        }
        Ok(true)
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
        let frame = buf.split_to(nl + 1).freeze();
        let text = &frame[..nl];
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        // Each word's place in the frame (which `text` starts).
        let base = text.as_ptr() as usize;
        let ranges = text
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| {
                let start = w.as_ptr() as usize - base;
                (start, start + w.len())
            })
            .collect::<SmallVec<_>>();
        if ranges.len() > self.limits.max_args {
            return Err(ProtoError::Invalid("too many arguments"));
        }
        if text.len() > self.limits.max_request {
            return Err(ProtoError::RequestTooBig {
                len: text.len(),
                max: self.limits.max_request,
            });
        }
        Ok(Some(Request {
            args: ranges,
            frame,
        }))
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
    fn a_request_is_its_arguments_however_its_frame_is_laid_out() {
        let mut buf = BytesMut::from(&b"*3\r\n$4\r\nQPUT\r\n$1\r\nq\r\n$2\r\nhi\r\n"[..]);
        let wire = Decoder::default().request(&mut buf).unwrap().unwrap();
        let made = Request::from_args(["QPUT", "q", "hi"]);
        assert_eq!(wire, made);
        assert_eq!(
            (wire.len(), &wire[0], wire.get(2)),
            (3, &b"QPUT"[..], Some(&b"hi"[..]))
        );
        assert_eq!(wire.get(3), None);
        assert_eq!(wire.bytes(1).as_deref(), Some(&b"q"[..]));
        assert_eq!(wire.bytes(3), None);
        assert_ne!(wire, Request::from_args(["QPUT", "q"]));
        assert!(Request::default().is_empty());
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
        assert_eq!(d.request(&mut buf).unwrap().unwrap()[0], b"PING"[..]);
        assert_eq!(d.request(&mut buf), Ok(None));
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(d.request(&mut buf).unwrap().unwrap()[0], b"PING"[..]);
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
