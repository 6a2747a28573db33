//! The PostgreSQL engine (`postgres://`), each test on a server of its
//! own started here (scripts/postgres.sh: initdb as a non-root user, a
//! loopback port): the schema installed once by clients that start
//! together, the queue's core over the Rust client and the CLI, waits
//! woken by a put's notification, leases that come back when their holder
//! goes or dies (kill -9), DEDUP, and the commands not answered yet
//! refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;

use common::PgServer;
use ferry_client::{Client, Error, Value};

/// psql's one-line answer to `sql`.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-Atc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn int(v: Result<Value, Error>) -> i64 {
    match v.unwrap() {
        Value::Int(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// A QGET's entries as (id, payload, attempts).
fn entries(v: Value) -> Vec<(i64, Vec<u8>, i64)> {
    let Value::Array(items) = v else {
        panic!("not entries: {v:?}");
    };
    items
        .into_iter()
        .map(|e| match e {
            Value::Array(f) => match f.as_slice() {
                [
                    Value::Bulk(_),
                    Value::Int(id),
                    Value::Bulk(p),
                    Value::Int(a),
                ] => (*id, p.to_vec(), *a),
                other => panic!("not an entry: {other:?}"),
            },
            other => panic!("not an entry: {other:?}"),
        })
        .collect()
}

/// QINFO's field.
fn info(c: &mut Client, q: &str, field: &str) -> i64 {
    let Value::Map(pairs) = c.call(&[b"QINFO", q.as_bytes()]).unwrap() else {
        panic!("QINFO is a map");
    };
    pairs
        .into_iter()
        .find_map(|(k, v)| match (k, v) {
            (Value::Bulk(k), Value::Int(n)) if &k[..] == field.as_bytes() => Some(n),
            _ => None,
        })
        .unwrap_or_else(|| panic!("QINFO has no {field}"))
}

#[test]
fn clients_that_start_together_install_the_schema_once() {
    let pg = PgServer::start();
    let url = pg.url("");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || Client::connect(&url).map(|mut c| int(c.call(&[b"QLEN", b"q"]))))
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().unwrap(), 0);
    }
    assert_eq!(psql(&url, "SELECT count(*) FROM ferry.schema_version"), "1");
    // A schema newer than the client's is refused, not touched.
    psql(&url, "UPDATE ferry.schema_version SET version = 99");
    let Err(err) = Client::connect(&url) else {
        panic!("a newer schema was not refused");
    };
    assert!(err.to_string().contains("version 99, newer"), "{err}");
}

#[test]
fn puts_and_gets_keep_the_queue_s_order_and_counts() {
    let pg = PgServer::start();
    let mut c = Client::connect(&pg.url("")).unwrap();
    let first = int(c.call(&[b"QPUT", b"jobs", b"a"]));
    let Value::Array(ids) = c
        .call(&[b"QPUTMANY", b"jobs", b"PAYLOADS", b"b", b"c", b"d"])
        .unwrap()
    else {
        panic!("QPUTMANY replies ids");
    };
    let ids: Vec<i64> = ids
        .into_iter()
        .map(|v| match v {
            Value::Int(n) => n,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ids[0] > first, "increasing");
    assert_eq!(
        ids,
        [ids[0], ids[0] + 1, ids[0] + 2],
        "a batch's ids are consecutive"
    );
    int(c.call(&[b"QPUT", b"jobs", b"later", b"DELAY", b"60000"]));
    assert_eq!(
        int(c.call(&[b"QLEN", b"jobs"])),
        4,
        "delayed ones do not count"
    );
    assert_eq!(info(&mut c, "jobs", "unfinished"), 5);
    assert_eq!(info(&mut c, "jobs", "delayed"), 1);
    let got = entries(c.call(&[b"QGET", b"jobs", b"COUNT", b"3"]).unwrap());
    let payloads: Vec<&[u8]> = got.iter().map(|(_, p, _)| p.as_slice()).collect();
    assert_eq!(
        payloads,
        [b"a".as_slice(), b"b", b"c"],
        "first in, first out"
    );
    assert_eq!(info(&mut c, "jobs", "leased"), 3);
    assert_eq!(c.call(&[b"QJOIN", b"jobs", b"NOWAIT"]).unwrap(), Value::Nil);
    let (a, b) = (got[0].0.to_string(), got[1].0.to_string());
    assert_eq!(
        int(c.call(&[b"QDONE", b"jobs", a.as_bytes(), b.as_bytes()])),
        2
    );
    assert_eq!(
        int(c.call(&[b"QDONE", b"jobs", a.as_bytes()])),
        0,
        "done twice"
    );
    // NOACK: delivered and finished at once.
    let d = entries(c.call(&[b"QGET", b"jobs", b"NOACK"]).unwrap());
    assert_eq!(d[0].1, b"d");
    assert_eq!(info(&mut c, "jobs", "unfinished"), 2);
    // A nack serves it again, one attempt more; the delayed one goes.
    let cid = got[2].0.to_string();
    c.call(&[b"QNACK", b"jobs", cid.as_bytes()]).unwrap();
    let again = entries(c.call(&[b"QGET", b"jobs", b"TAKE"]).unwrap());
    assert_eq!((again[0].1.as_slice(), again[0].2), (b"c".as_slice(), 1));
    let refused = c.call(&[b"QNACK", b"jobs", cid.as_bytes()]);
    assert!(
        matches!(&refused, Err(Error::NotLeased)),
        "a taken message is not leased: {refused:?}"
    );
    assert_eq!(int(c.call(&[b"QDONE", b"jobs", cid.as_bytes()])), 1);
    // What this step does not answer yet is refused by name.
    let e = c
        .call(&[b"QCREATE", b"jobs", b"MAXSIZE", b"5"])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("QCREATE is not answered on postgres://"),
        "{e}"
    );
    assert_eq!(int(c.call(&[b"QDROP", b"jobs"])), 1);
    assert_eq!(c.call(&[b"QLIST"]).unwrap(), Value::Array(vec![]));
}

/// How many of the server's sessions listen for ferry's notifications.
fn listening(url: &str) -> String {
    psql(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN ferry_%'",
    )
}

#[test]
fn waits_are_woken_by_what_ends_them() {
    let pg = PgServer::start();
    let url = pg.url("");
    let mut getter = Client::connect(&url).unwrap();
    let got = thread::spawn(move || {
        let e = entries(getter.call(&[b"QGET", b"w", b"TIMEOUT", b"0"]).unwrap());
        // The getter's client goes with its thread, holding the lease.
        e
    });
    common::wait_until("the getter listening", || listening(&url) == "1");
    let mut c = Client::connect(&url).unwrap();
    int(c.call(&[b"QPUT", b"w", b"wake"]));
    assert_eq!(got.join().unwrap()[0].1, b"wake");
    // Its lease came back when it went: served again, one attempt more.
    let e = entries(c.call(&[b"QGET", b"w", b"TIMEOUT", b"30000"]).unwrap());
    assert_eq!((e[0].1.as_slice(), e[0].2), (b"wake".as_slice(), 1));
    // A join waits for the done.
    let mut joiner = Client::connect(&url).unwrap();
    let joined = thread::spawn(move || joiner.call(&[b"QJOIN", b"w"]));
    // The joiner's and `c`'s (its get listened before it tried): the
    // getter's went with its client.
    common::wait_until("the joiner listening", || listening(&url) == "2");
    let id = e[0].0.to_string();
    assert_eq!(int(c.call(&[b"QDONE", b"w", id.as_bytes()])), 1);
    assert_eq!(joined.join().unwrap().unwrap(), Value::Simple("OK".into()));
    // A wait times out, never early.
    let t = std::time::Instant::now();
    assert_eq!(
        c.call(&[b"QGET", b"w", b"TIMEOUT", b"100"]).unwrap(),
        Value::Nil
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn a_killed_holder_s_lease_comes_back_after_its_heartbeat() {
    let pg = PgServer::start();
    let url = pg.url("lease=500");
    let mut c = Client::connect(&url).unwrap();
    int(c.call(&[b"QPUT", b"work", b"task"]));
    // `ferry worker` holds it (a bound lease) while its command sleeps.
    let mut worker = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "worker", "work", "-j", "1", "--url", &url, "--", "sleep", "600",
        ])
        .spawn()
        .unwrap();
    common::wait_until("the worker's lease", || info(&mut c, "work", "leased") == 1);
    let refused = c.call(&[b"QDONE", b"work", b"1"]);
    assert_eq!(int(refused), 0, "another holder's lease");
    worker.kill().unwrap();
    worker.wait().unwrap();
    let e = entries(c.call(&[b"QGET", b"work", b"TIMEOUT", b"30000"]).unwrap());
    assert_eq!(
        (e[0].1.as_slice(), e[0].2),
        (b"task".as_slice(), 1),
        "back, one attempt more"
    );
    let _ = Command::new("pkill").args(["-f", "sleep 600"]).status();
}

#[test]
fn a_dedup_key_puts_once() {
    let pg = PgServer::start();
    let mut c = Client::connect(&pg.url("")).unwrap();
    let first = int(c.call(&[b"QPUT", b"d", b"x", b"DEDUP", b"k1"]));
    let again = int(c.call(&[b"QPUT", b"d", b"x", b"DEDUP", b"k1"]));
    assert_eq!(first, again);
    assert_eq!(int(c.call(&[b"QLEN", b"d"])), 1);
    let other = int(c.call(&[b"QPUT", b"d", b"x", b"DEDUP", b"k2", b"DEDUPFOR", b"1"]));
    assert!(other > first);
    assert_eq!(int(c.call(&[b"QLEN", b"d"])), 2);
    // The CLI puts with keys of its own, as on every engine.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["put", "d", "from-cli", "--url", &pg.url("")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(int(c.call(&[b"QLEN", b"d"])), 3);
}
