//! RESP for ferry — one codec for the broker and its clients, with no I/O.
//!
//! # Layout
//!
//! - `decode`: [`Decoder`], resumable over a buffer that may hold part of a
//!   frame: [`Decoder::request`] takes requests (arrays of bulk strings, or
//!   inline commands as telnet and `redis-cli` in pipe mode send) for the
//!   broker, [`Decoder::value`] replies for a client. An incomplete frame
//!   is a normal answer (`Ok(None)`), not an error; bulk strings are slices
//!   of the buffer, not copies; [`Limits`] bound every length before
//!   anything is allocated for it.
//! - `reply`: [`Reply`], which writes RESP2 or RESP3 replies into an output
//!   buffer, so a connection can answer a whole pipeline with one write.
//! - `value`: [`Value`], a decoded reply, its encoding (through `Reply`),
//!   and [`encode_command`] for clients.
//!
//! `tests/codec_props.rs` checks the two halves against each other: what
//! is encoded decodes to itself, however the stream is cut.

mod decode;
mod reply;
mod value;

pub use decode::{Decoder, Limits, ProtoError, Request};
pub use reply::Reply;
pub use value::{Value, encode_command};
