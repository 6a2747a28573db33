//! Regression tests, each named for the bug it pins down, against the real
//! binary over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::Server;
use redis::cmd;

fn ferry_serve(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A payload limit beyond what one log record can hold would acknowledge
/// puts that are never logged: such settings are refused at start.
#[test]
fn a_max_payload_the_log_cannot_hold_is_refused_at_start() {
    let out = ferry_serve(&["--max-payload", "300mb"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-payload"), "{err}");
    assert!(err.contains("at most"), "{err}");
}

/// A priority key the log cannot hold whole was cut silently, and the
/// order changed after a restart: it is refused instead, and the longest
/// key that can be logged keeps its order across a restart.
#[test]
fn a_priority_key_too_long_to_log_is_refused_and_long_keys_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let long_a = [vec![b'k'; 65_534], vec![b'a']].concat();
    let long_b = [vec![b'k'; 65_534], vec![b'b']].concat();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        let _: () = cmd("QCREATE")
            .arg("p")
            .arg("KIND")
            .arg("priority")
            .query(&mut c)
            .unwrap();
        let too_long = vec![b'k'; 65_536];
        let refused: redis::RedisResult<u64> = cmd("QPUT")
            .arg("p")
            .arg("x")
            .arg("PRIOKEY")
            .arg(&too_long[..])
            .query(&mut c);
        let e = refused.unwrap_err();
        assert_eq!(e.code(), Some("ERR"), "{e}");
        assert!(e.to_string().contains("PRIOKEY"), "{e}");
        for (payload, key) in [("second", &long_b), ("first", &long_a)] {
            let _: u64 = cmd("QPUT")
                .arg("p")
                .arg(payload)
                .arg("PRIOKEY")
                .arg(&key[..])
                .query(&mut c)
                .unwrap();
        }
        let len: u64 = cmd("QLEN").arg("p").query(&mut c).unwrap();
        assert_eq!(len, 2, "the refused put left nothing behind");
        s.signal_and_wait("-KILL");
    }
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    let got: Vec<common::Entry> = cmd("QGET")
        .arg("p")
        .arg("COUNT")
        .arg(2)
        .arg("NOACK")
        .query(&mut c)
        .unwrap();
    let order: Vec<&[u8]> = got.iter().map(|e| &e.2[..]).collect();
    assert_eq!(order, [&b"first"[..], b"second"]);
}

/// `QGET jobs NOWAIIT` took the typo for a second queue, created and
/// logged a queue named NOWAIIT, and blocked forever.
#[test]
fn an_unknown_qget_option_is_an_error_not_a_queue() {
    let s = Server::start();
    let mut raw = s.raw();
    let reply = raw.cmd(&["QGET", "jobs", "NOWAIIT"]);
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(reply.contains("NOWAIIT"), "{reply}");
    let list = raw.cmd(&["QLIST"]);
    assert!(!list.contains("NOWAIIT"), "{list}");
    // Several queues are named with OR, one each.
    raw.cmd(&["QPUT", "low", "x"]);
    let reply = raw.cmd(&["QGET", "high", "OR", "low", "NOWAIT", "NOACK"]);
    assert!(reply.contains("$3\r\nlow\r\n"), "{reply}");
    let reply = raw.cmd(&["QGET", "high", "OR"]);
    assert!(reply.starts_with("-ERR"), "{reply}");
}

/// A second `ferry serve --unix PATH` on a data directory in use unlinked
/// the running broker's socket before the lock refused it, and said
/// "cannot listen" though the cause was the lock.
#[test]
fn a_refused_second_broker_leaves_the_first_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ferry.sock");
    let data = dir.path().join("data");
    let first = Server::start_at(&data, &["--unix", sock.to_str().unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--port", "0", "--unix"])
        .arg(&sock)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(!err.contains("cannot listen"), "{err}");
    // The first broker is still there on its socket.
    let client = redis::Client::open(format!("unix://{}", sock.display())).unwrap();
    let mut c = client.get_connection().unwrap();
    let pong: String = cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");

    // In memory mode there is no lock: a live socket is refused too.
    let other = dir.path().join("other");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--port", "0", "--durability", "memory", "--unix"])
        .arg(&sock)
        .arg("--data-dir")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    let pong: String = cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    drop(first);
}

/// The README says every flag can come from the TOML file; `threads`
/// could not.
#[test]
fn every_flag_can_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        "threads = 7\nmax_payload = \"1kb\"\ndurability = \"memory\"\n",
    )
    .unwrap();
    let s = Server::start_with(&["--config", file.to_str().unwrap()]);
    let mut c = s.conn();
    let info: String = cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("threads:7\r\n"), "{info}");
    assert!(info.contains("durability:memory\r\n"), "{info}");
    let big = vec![b'x'; 2048];
    let refused: redis::RedisResult<u64> = cmd("QPUT").arg("q").arg(&big[..]).query(&mut c);
    assert!(refused.is_err());
}

/// `async` is the default: a reply waits for the write, not the fsync.
#[test]
fn the_default_durability_is_async() {
    let s = Server::start();
    let mut c = s.conn();
    let info: String = cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("durability:async\r\n"), "{info}");
}

/// `ferry get nosuchq --timeout 1` left a durable queue `nosuchq` behind.
/// A get of a queue that does not exist waits in one made for its wait
/// alone: gone soon after the get ends, never in the log; a put while it
/// waits makes it a queue like any other, which a restart keeps.
#[test]
fn a_get_of_a_queue_that_does_not_exist_leaves_none_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_at(dir.path(), &[]);
    let url = s.url().replace("redis://", "ferry://");
    let ferry = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--url", &url])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let o = ferry(&["get", "nosuchq", "--timeout", "1"])
        .wait_with_output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    let mut raw = s.raw();
    common::wait_until("the get's queue to go", || {
        !raw.cmd(&["QLIST"]).contains("nosuchq")
    });
    // QGET a OR b: each made for the wait alone.
    assert!(
        raw.cmd(&["QGET", "high", "OR", "low", "NOWAIT"])
            .starts_with("*-1")
    );
    common::wait_until("high and low to go", || {
        let list = raw.cmd(&["QLIST"]);
        !list.contains("high") && !list.contains("low")
    });
    // A put while a get waits: the queue is the log's from then on.
    let getter = ferry(&["get", "later", "--timeout", "60"]);
    common::wait_for_waiters(&mut s.conn(), "later", "waiting_getters", 1);
    assert!(raw.cmd(&["QPUT", "later", "x"]).starts_with(':'));
    let o = getter.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "x\n");
    assert!(s.signal_and_wait("-TERM").success());
    let s = Server::start_at(dir.path(), &[]);
    let list = s.raw().cmd(&["QLIST"]);
    assert!(list.contains("later"), "{list}");
    for gone in ["nosuchq", "high", "low"] {
        assert!(!list.contains(gone), "{list}");
    }
}

/// INFO's `queued_memory` stayed up once puts with DEDUP keys (every
/// client's own puts carry one) stopped: their keys were let go of only
/// when the table doubled, so an idle broker counted them toward
/// `--max-memory` for good. Now they go when their window ends.
#[test]
fn queued_memory_comes_back_down_when_dedup_windows_end() {
    let s = Server::start();
    let mut c = s.conn();
    let queued = |c: &mut redis::Connection| common::info_field(c, "queued_memory");
    // An empty queue costs its overhead.
    let _: () = cmd("QCREATE").arg("dd").query(&mut c).unwrap();
    let empty = queued(&mut c);
    for i in 0..200 {
        let _: i64 = cmd("QPUT")
            .arg("dd")
            .arg(vec![b'x'; 500])
            .arg("DEDUP")
            .arg(format!("key-{i}"))
            .arg("DEDUPFOR")
            .arg(1000)
            .query(&mut c)
            .unwrap();
    }
    assert!(queued(&mut c) > 200 * 500);
    let _: redis::Value = cmd("QGET")
        .arg("dd")
        .arg("COUNT")
        .arg(200)
        .arg("NOACK")
        .query(&mut c)
        .unwrap();
    common::wait_until("the keys to go with their window", || {
        queued(&mut c) == empty
    });
    // Put and dropped: nothing stays counted either.
    for _ in 0..200 {
        let _: i64 = cmd("QPUT")
            .arg("gone")
            .arg(vec![b'x'; 500])
            .query(&mut c)
            .unwrap();
    }
    let _: i64 = cmd("QDROP").arg("gone").query(&mut c).unwrap();
    assert_eq!(queued(&mut c), empty);
}
