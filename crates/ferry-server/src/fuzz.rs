//! Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`):
//! what a hostile client and a damaged disk can hand the broker, and what
//! a hostile server can hand the client. Not an API; each call starts
//! from nothing, so a crash replays from its input (tests/fuzz_corpus.rs
//! replays every input of fuzz/corpus/ so).

use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::{Decoder, Limits, ProtoError, Value};

use crate::broker::Broker;
use crate::cmd::{Flow, Outcome, Woke, execute};
use crate::config::{Config, Durability};
use crate::session::Session;
use crate::store::replay::Replay;

/// Runs every request the RESP bytes hold, in order, as one
/// authenticated client of a fresh broker in memory; a command that waits
/// is ended by its wake-up time if that is close, else by its client
/// leaving.
pub fn commands(bytes: &[u8]) {
    // A runtime of its own, dropped with everything the broker spawned.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let _entered = rt.enter();
    let Ok((broker, _)) = Broker::open(
        Config {
            durability: Durability::Memory,
            ..Config::default()
        },
        None,
    ) else {
        return;
    };
    let mut s = Session::new(broker, "fuzz".into());
    let mut input = BytesMut::from(bytes);
    let mut decoder = Decoder::new(Limits::default());
    while let Ok(Some(req)) = decoder.request(&mut input) {
        if req.is_empty() {
            continue;
        }
        let flow = match execute(&mut s, req) {
            Outcome::Done(flow) => flow,
            Outcome::Wait(mut blocked) => {
                // A wake-up time close at hand is waited for, as the
                // connection would; then the client leaves, which must
                // settle any wait at once (else its connection hangs).
                let mut flow = None;
                for _ in 0..3 {
                    let now = tokio::time::Instant::now();
                    match blocked.wake_at() {
                        Some(at) if at <= now + Duration::from_millis(20) => {
                            std::thread::sleep(at.saturating_duration_since(now));
                            flow = blocked.resume(&mut s, Woke::TimedOut);
                        }
                        _ => break,
                    }
                    if flow.is_some() {
                        break;
                    }
                }
                match flow.or_else(|| blocked.resume(&mut s, Woke::Gone)) {
                    Some(flow) => flow,
                    None => panic!("a wait its client's leaving did not settle"),
                }
            }
        };
        s.out.clear();
        if flow == Flow::Close {
            break;
        }
    }
    s.release_all();
}

/// Replays bytes as the log's records: each piece (a u16 LE length, then
/// that many bytes) framed as the writer frames it, the segment checked
/// as recovery checks it, and every record it accepts applied as replay
/// applies it; then the bytes themselves as a segment's body.
pub fn log(bytes: &[u8]) {
    let mut body = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        ferry_log::fuzz::frame(&rest[2..2 + len], &mut body);
        rest = &rest[2 + len..];
    }
    for body in [&body[..], bytes] {
        let mut replay = Replay::default();
        for record in ferry_log::fuzz::records(body) {
            let _ = replay.apply(&record);
        }
        let _ = replay.finish();
    }
}

/// The broker's request parser: never panics, and gives the same requests
/// (and the same error) however the bytes are cut into reads — it resumes
/// where a read stopped. The first byte picks where the stream is cut.
pub fn requests(bytes: &[u8]) {
    let Some((&cut, data)) = bytes.split_first() else {
        return;
    };
    let at = usize::from(cut).min(data.len());
    assert_eq!(
        decode(&[data], Limits::default(), requests_in),
        decode(&[&data[..at], &data[at..]], Limits::default(), requests_in)
    );
}

/// The client's reply parser (RESP2 and RESP3): never panics, and gives
/// the same replies however the bytes are cut into reads.
pub fn replies(bytes: &[u8]) {
    let Some((&cut, data)) = bytes.split_first() else {
        return;
    };
    let at = usize::from(cut).min(data.len());
    assert_eq!(
        decode(&[data], Limits::client(), replies_in),
        decode(&[&data[..at], &data[at..]], Limits::client(), replies_in)
    );
}

/// What a parser makes of a stream of reads: its items, in order, and the
/// error that ended it, if any.
type Decoded<T> = (Vec<T>, Option<String>);

/// The next item of `buf`, or `Ok(None)` until more is read.
type Next<T> = fn(&mut Decoder, &mut BytesMut) -> Result<Option<T>, ProtoError>;

fn requests_in(d: &mut Decoder, buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtoError> {
    let _ = d.wants(buf);
    Ok(d.request(buf)?
        .map(|req| req.iter().map(|a| a.to_vec()).collect()))
}

fn replies_in(d: &mut Decoder, buf: &mut BytesMut) -> Result<Option<Value>, ProtoError> {
    d.value(buf)
}

fn decode<T>(reads: &[&[u8]], limits: Limits, next: Next<T>) -> Decoded<T> {
    // Small bounds, so that the fuzzer reaches them.
    let mut d = Decoder::new(Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 256,
        ..limits
    });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match next(&mut d, &mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}
