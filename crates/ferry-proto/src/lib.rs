//! RESP framing for ferry, with no I/O.
//!
//! # Layout
//!
//! - [`parse_request`]: takes one complete request (an array of bulk
//!   strings, or an inline command as telnet and `redis-cli` in pipe mode
//!   send) off the front of a buffer, without copying the arguments; an
//!   incomplete request is a normal answer (`Ok(None)`), not an error.
//! - [`Reply`]: writes RESP2 or RESP3 replies into an output buffer, so a
//!   connection can answer a whole pipeline with one write.

mod reply;
mod request;

pub use reply::Reply;
pub use request::{Limits, ProtoError, Request, parse_request};
