//! Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`):
//! what a hostile client and a damaged disk can hand the broker. Not an
//! API; each call starts from nothing, so a crash replays from its input.

use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::{Decoder, Limits};

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
