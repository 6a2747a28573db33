//! Property tests of the request parser: it never panics on any bytes, and
//! how a stream is cut into reads never changes what it parses.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferry_proto::{Limits, ProtoError, parse_request};
use proptest::prelude::*;

fn limits() -> Limits {
    Limits {
        max_bulk: 1 << 10,
        max_args: 64,
        max_inline: 1 << 10,
    }
}

/// Parses everything in `buf`: the requests, then how it stopped.
fn parse_all(buf: &mut BytesMut) -> (Vec<Vec<Bytes>>, Option<ProtoError>) {
    let mut out = Vec::new();
    loop {
        match parse_request(buf, &limits()) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&data[..]);
        let _ = parse_all(&mut buf);
    }

    #[test]
    fn well_formed_requests_come_back_whatever_the_cuts(
        reqs in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(|r| encode(r)).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for p in points {
            buf.extend_from_slice(&stream[from..p]);
            from = p;
            let (reqs, err) = parse_all(&mut buf);
            prop_assert!(err.is_none());
            got.extend(reqs);
        }
        prop_assert!(buf.is_empty());
        let got: Vec<Vec<Vec<u8>>> = got.iter().map(|r| r.iter().map(|a| a.to_vec()).collect()).collect();
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn garbage_cut_anywhere_fails_or_waits_the_same(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut whole = BytesMut::from(&data[..]);
        let (all, all_err) = parse_all(&mut whole);
        let at = cut.index(data.len() + 1);
        let mut buf = BytesMut::from(&data[..at]);
        let (mut parts, first_err) = parse_all(&mut buf);
        if first_err.is_none() {
            buf.extend_from_slice(&data[at..]);
            let (more, err) = parse_all(&mut buf);
            parts.extend(more);
            prop_assert_eq!(err.is_some(), all_err.is_some());
            prop_assert_eq!(parts, all);
        } else {
            // An error found early is the same error found later.
            prop_assert!(all_err.is_some());
        }
    }
}
