//! The broker's request parser: never panics, and gives the same requests
//! (and the same error) however the bytes are cut into reads — it resumes
//! where a read stopped.
#![no_main]

use bytes::BytesMut;
use ferry_proto::{Decoder, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the stream is cut in two.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut).min(data.len());
    let whole = decode(&[data]);
    let split = decode(&[&data[..at], &data[at..]]);
    assert_eq!(whole, split);
});

type Decoded = (Vec<Vec<Vec<u8>>>, Option<String>);

fn decode(reads: &[&[u8]]) -> Decoded {
    // Small bounds, so that the fuzzer reaches them.
    let mut d = Decoder::new(Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 256,
        ..Limits::default()
    });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let _ = d.wants(&buf);
            match d.request(&mut buf) {
                Ok(Some(req)) => out.push(req.iter().map(|a| a.to_vec()).collect()),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}
