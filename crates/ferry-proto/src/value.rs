//! A RESP value as a client reads it, and its encoding.

use bytes::{Bytes, BytesMut};

use crate::Reply;

/// A reply from the server (RESP2 or RESP3).
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
    /// A bulk string: a slice of the buffer it arrived in.
    Bulk(Bytes),
    /// Null (`$-1`, `*-1`, `_`).
    Nil,
    /// An array.
    Array(Vec<Value>),
    /// A RESP3 map, as pairs.
    Map(Vec<(Value, Value)>),
    /// A RESP3 boolean.
    Bool(bool),
}

impl Value {
    /// Writes the value as RESP3 (`resp3`) or RESP2 — where a map becomes
    /// a flat array, a boolean an integer and every null `$-1`. Status
    /// and error text must not hold line breaks (they would end the line;
    /// [`Reply::error`] replaces them).
    pub fn encode(&self, out: &mut BytesMut, resp3: bool) {
        self.write(&mut Reply::new(out, resp3));
    }

    fn write(&self, r: &mut Reply<'_>) {
        match self {
            Value::Simple(s) => r.simple(s),
            Value::Error { code, message } => r.error(code, message),
            Value::Int(n) => r.int(*n),
            Value::Bulk(b) => r.bulk(b),
            Value::Nil => r.null(),
            Value::Array(items) => {
                r.array(items.len());
                items.iter().for_each(|v| v.write(r));
            }
            Value::Map(pairs) => {
                r.map(pairs.len());
                for (k, v) in pairs {
                    k.write(r);
                    v.write(r);
                }
            }
            Value::Bool(b) => r.boolean(*b),
        }
    }
}

/// Writes a command as an array of bulk strings, as clients send them.
pub fn encode_command(args: &[&[u8]], out: &mut BytesMut) {
    let mut r = Reply::new(out, false);
    r.array(args.len());
    for a in args {
        r.bulk(a);
    }
}
