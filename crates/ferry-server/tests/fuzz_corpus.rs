//! Every input of the fuzz targets' corpus (fuzz/corpus/<target>/: the
//! seeds, and what earlier fuzzing found worth keeping, crashes included
//! once fixed) replayed through the same entry points the targets call,
//! on stable Rust: what once broke stays fixed, without a fuzzing run.
//! scripts/fuzz.sh is the search for new inputs (nightly, timed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// Runs `target`'s every corpus input through `f`; replies how many.
fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    for path in &inputs {
        let bytes = std::fs::read(path).unwrap();
        // A panic names the input that caused it.
        let outcome = std::panic::catch_unwind(|| f(&bytes));
        assert!(outcome.is_ok(), "{target}: {} broke it", path.display());
    }
    assert!(!inputs.is_empty(), "{target}: an empty corpus");
    inputs.len()
}

#[test]
fn the_request_parser_corpus() {
    eprintln!(
        "{} inputs",
        replay("resp_request", ferry_server::fuzz::requests)
    );
}

#[test]
fn the_reply_parser_corpus() {
    eprintln!(
        "{} inputs",
        replay("resp_reply", ferry_server::fuzz::replies)
    );
}

#[test]
fn the_command_corpus() {
    eprintln!("{} inputs", replay("command", ferry_server::fuzz::commands));
}

#[test]
fn the_log_record_corpus() {
    eprintln!("{} inputs", replay("log_record", ferry_server::fuzz::log));
}
