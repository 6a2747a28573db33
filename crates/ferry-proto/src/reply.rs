//! Reply encoding, RESP2 or RESP3 as the connection negotiated.

use bytes::{BufMut, BytesMut};

/// Writes replies into a connection's output buffer.
#[derive(Debug)]
pub struct Reply<'a> {
    out: &'a mut BytesMut,
    resp3: bool,
}

impl<'a> Reply<'a> {
    /// Replies into `out`, in RESP3 if `resp3`.
    pub fn new(out: &'a mut BytesMut, resp3: bool) -> Self {
        Reply { out, resp3 }
    }

    /// True when the connection speaks RESP3.
    pub fn resp3(&self) -> bool {
        self.resp3
    }

    fn number(&mut self, prefix: u8, n: i64) {
        let mut b = itoa::Buffer::new();
        self.out.put_u8(prefix);
        self.out.put_slice(b.format(n).as_bytes());
        self.out.put_slice(b"\r\n");
    }

    /// `+OK`-style status.
    pub fn simple(&mut self, s: &str) {
        self.out.put_u8(b'+');
        self.out.put_slice(s.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    /// `-CODE message`. Line breaks in the message are replaced, since
    /// they would end the reply early.
    pub fn error(&mut self, code: &str, msg: &str) {
        self.out.put_u8(b'-');
        self.out.put_slice(code.as_bytes());
        self.out.put_u8(b' ');
        for &b in msg.as_bytes() {
            self.out
                .put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.out.put_slice(b"\r\n");
    }

    /// An integer.
    pub fn int(&mut self, n: i64) {
        self.number(b':', n);
    }

    /// An unsigned integer (ids, counters); saturates at i64::MAX.
    pub fn uint(&mut self, n: u64) {
        self.number(b':', i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A bulk string.
    pub fn bulk(&mut self, b: &[u8]) {
        self.number(b'$', b.len() as i64);
        self.out.put_slice(b);
        self.out.put_slice(b"\r\n");
    }

    /// A missing bulk string: `$-1` (RESP2) or `_` (RESP3).
    pub fn null(&mut self) {
        if self.resp3 {
            self.out.put_slice(b"_\r\n");
        } else {
            self.out.put_slice(b"$-1\r\n");
        }
    }

    /// A missing array: `*-1` (RESP2) or `_` (RESP3).
    pub fn null_array(&mut self) {
        if self.resp3 {
            self.out.put_slice(b"_\r\n");
        } else {
            self.out.put_slice(b"*-1\r\n");
        }
    }

    /// The header of an array of `n` replies, which follow.
    pub fn array(&mut self, n: usize) {
        self.number(b'*', n as i64);
    }

    /// The header of a map of `n` key–value pairs, which follow: `%n` in
    /// RESP3, a flat array of 2n in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.number(b'%', n as i64);
        } else {
            self.number(b'*', 2 * n as i64);
        }
    }

    /// A boolean: `#t`/`#f` in RESP3, 1/0 in RESP2.
    pub fn boolean(&mut self, b: bool) {
        if self.resp3 {
            self.out.put_slice(if b { b"#t\r\n" } else { b"#f\r\n" });
        } else {
            self.int(i64::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(resp3: bool, f: impl FnOnce(&mut Reply<'_>)) -> String {
        let mut out = BytesMut::new();
        f(&mut Reply::new(&mut out, resp3));
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn encodes_both_protocols() {
        assert_eq!(enc(false, |r| r.simple("OK")), "+OK\r\n");
        assert_eq!(
            enc(false, |r| r.error("FULL", "queue\r\nis full")),
            "-FULL queue  is full\r\n"
        );
        assert_eq!(enc(false, |r| r.int(-3)), ":-3\r\n");
        assert_eq!(enc(false, |r| r.bulk(b"hi")), "$2\r\nhi\r\n");
        assert_eq!(enc(false, |r| r.null()), "$-1\r\n");
        assert_eq!(enc(true, |r| r.null()), "_\r\n");
        assert_eq!(enc(false, |r| r.null_array()), "*-1\r\n");
        assert_eq!(enc(false, |r| r.map(2)), "*4\r\n");
        assert_eq!(enc(true, |r| r.map(2)), "%2\r\n");
        assert_eq!(enc(true, |r| r.boolean(true)), "#t\r\n");
        assert_eq!(enc(false, |r| r.boolean(true)), ":1\r\n");
    }
}
