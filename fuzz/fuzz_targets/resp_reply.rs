//! The client's reply parser (RESP2 and RESP3): never panics, and gives
//! the same replies however the bytes are cut into reads.
#![no_main]

use bytes::BytesMut;
use ferry_proto::{Decoder, Limits, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut).min(data.len());
    assert_eq!(decode(&[data]), decode(&[&data[..at], &data[at..]]));
});

fn decode(reads: &[&[u8]]) -> (Vec<Value>, Option<String>) {
    let mut d = Decoder::new(Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 256,
        ..Limits::client()
    });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match d.value(&mut buf) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}
