//! Property tests of the codec: what is encoded decodes to itself however
//! the stream is cut into reads, requests and replies alike, and no bytes
//! at all make the decoder panic.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ferry_proto::{Decoder, Limits, ProtoError, Request, Value, encode_command};
use proptest::prelude::*;

fn limits() -> Limits {
    Limits {
        max_bulk: 1 << 10,
        max_args: 64,
        max_inline: 1 << 10,
        max_depth: 8,
        max_request: 1 << 12,
    }
}

/// Splits `stream` at `cuts` and feeds the pieces to `step` in order, as
/// reads would arrive: everything it decodes, and the error it stopped at.
fn feed<T>(
    stream: &[u8],
    cuts: &[prop::sample::Index],
    mut step: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtoError>,
) -> (Vec<T>, Option<ProtoError>, BytesMut) {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for p in points {
        buf.extend_from_slice(&stream[from..p]);
        from = p;
        loop {
            match step(&mut buf) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(e) => return (out, Some(e), buf),
            }
        }
    }
    (out, None, buf)
}

fn line_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .:_-]{0,20}"
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        line_text().prop_map(Value::Simple),
        ("[A-Z]{1,8}", line_text()).prop_map(|(code, message)| Value::Error { code, message }),
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Bulk(Bytes::from(b))),
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut d = Decoder::new(limits());
        let _ = feed(&data, &[], |b| d.request(b));
        let mut d = Decoder::new(limits());
        let _ = feed(&data, &[], |b| d.value(b));
    }

    #[test]
    fn requests_come_back_whatever_the_cuts(
        reqs in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut stream = BytesMut::new();
        for r in &reqs {
            let args: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
            encode_command(&args, &mut stream);
        }
        let mut d = Decoder::new(limits());
        let (got, err, rest) = feed(&stream, &cuts, |b| d.request(b));
        prop_assert!(err.is_none());
        prop_assert!(rest.is_empty());
        let got: Vec<Vec<Vec<u8>>> = got
            .iter()
            .map(|r: &Request| r.iter().map(|a| a.to_vec()).collect())
            .collect();
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn replies_come_back_whatever_the_cuts(
        values in proptest::collection::vec(value(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut stream = BytesMut::new();
        for v in &values {
            v.encode(&mut stream, true);
        }
        let mut d = Decoder::new(limits());
        let (got, err, rest) = feed(&stream, &cuts, |b| d.value(b));
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(got, values);
    }

    #[test]
    fn garbage_cut_anywhere_decodes_the_same(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut whole = Decoder::new(limits());
        let (all, all_err, _) = feed(&data, &[], |b| whole.request(b));
        let mut cut = Decoder::new(limits());
        let (parts, err, _) = feed(&data, &cuts, |b| cut.request(b));
        if err.is_some() {
            // An error found early is found with all the bytes too.
            prop_assert!(all_err.is_some());
        } else {
            prop_assert_eq!(all_err, None);
            prop_assert_eq!(parts, all);
        }
    }
}
