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
    let e = c.call(&[b"SEMACQUIRE", b"s", b"NOWAIT"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("SEMACQUIRE is not answered on postgres://"),
        "{e}"
    );
    assert_eq!(int(c.call(&[b"QDROP", b"jobs"])), 1);
    assert_eq!(c.call(&[b"QLIST"]).unwrap(), Value::Array(vec![]));
}

/// `url` for a client named `app` (its sessions' application_name).
fn named(url: &str, app: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}application_name={app}")
}

/// Whether the client named `app` listens (a waiter listens before its
/// last try, so then it waits).
fn listening(url: &str, app: &str) -> bool {
    psql(
        url,
        &format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = '{app}' AND query LIKE 'LISTEN %'"
        ),
    ) == "1"
}

#[test]
fn waits_are_woken_by_what_ends_them() {
    let pg = PgServer::start();
    let url = pg.url("");
    let mut getter = Client::connect(&named(&url, "getter")).unwrap();
    let got = thread::spawn(move || {
        let e = entries(getter.call(&[b"QGET", b"w", b"TIMEOUT", b"0"]).unwrap());
        // The getter's client goes with its thread, holding the lease.
        e
    });
    common::wait_until("the getter listening", || listening(&url, "getter"));
    let mut c = Client::connect(&url).unwrap();
    int(c.call(&[b"QPUT", b"w", b"wake"]));
    assert_eq!(got.join().unwrap()[0].1, b"wake");
    // Its lease came back when it went: served again, one attempt more.
    let e = entries(c.call(&[b"QGET", b"w", b"TIMEOUT", b"30000"]).unwrap());
    assert_eq!((e[0].1.as_slice(), e[0].2), (b"wake".as_slice(), 1));
    // A join waits for the done.
    let mut joiner = Client::connect(&named(&url, "joiner")).unwrap();
    let joined = thread::spawn(move || joiner.call(&[b"QJOIN", b"w"]));
    common::wait_until("the joiner listening", || listening(&url, "joiner"));
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
    // A put sent again after its reply was lost is answered by its key,
    // even once the queue is full.
    ok(c.call(&[b"QCREATE", b"one", b"MAXSIZE", b"1"]));
    let first = int(c.call(&[b"QPUT", b"one", b"x", b"DEDUP", b"k3"]));
    let again = int(c.call(&[b"QPUT", b"one", b"x", b"DEDUP", b"k3", b"NOWAIT"]));
    assert_eq!(first, again, "not FULL: it went in");
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

fn ok(v: Result<Value, Error>) {
    assert_eq!(v.unwrap(), Value::Simple("OK".into()));
}

fn payloads(v: Value) -> Vec<Vec<u8>> {
    entries(v).into_iter().map(|(_, p, _)| p).collect()
}

#[test]
fn settings_order_bound_and_bury() {
    let pg = PgServer::start();
    let url = pg.url("");
    let mut c = Client::connect(&url).unwrap();
    // Kinds: lifo, and priority by the broker's order keys.
    ok(c.call(&[b"QCREATE", b"stack", b"KIND", b"lifo"]));
    ok(c.call(&[b"QCREATE", b"stack", b"KIND", b"lifo"]));
    let e = c.call(&[b"QCREATE", b"stack", b"KIND", b"fifo", b"MAXSIZE", b"3"]);
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("exists with maxsize 0, not 3, kind lifo, not fifo"),
        "{e}"
    );
    for p in [b"1", b"2", b"3"] {
        int(c.call(&[b"QPUT", b"stack", p]));
    }
    let got = payloads(
        c.call(&[b"QGET", b"stack", b"COUNT", b"3", b"NOACK"])
            .unwrap(),
    );
    assert_eq!(got, [b"3".to_vec(), b"2".to_vec(), b"1".to_vec()]);
    ok(c.call(&[b"QCREATE", b"prio", b"KIND", b"priority"]));
    for (p, n) in [("low", "5"), ("top", "-1"), ("mid", "0")] {
        int(c.call(&[b"QPUT", b"prio", p.as_bytes(), b"PRIORITY", n.as_bytes()]));
    }
    let peeked = payloads(c.call(&[b"QPEEK", b"prio", b"COUNT", b"2"]).unwrap());
    assert_eq!(peeked, [b"top".to_vec(), b"mid".to_vec()], "lower first");
    assert_eq!(int(c.call(&[b"QPURGE", b"prio"])), 3);
    // A bounded queue: a put waits for room, first refused at once.
    ok(c.call(&[b"QCREATE", b"box", b"MAXSIZE", b"2"]));
    c.call(&[b"QPUTMANY", b"box", b"PAYLOADS", b"a", b"b"])
        .unwrap();
    assert!(matches!(
        c.call(&[b"QPUT", b"box", b"c", b"NOWAIT"]),
        Err(Error::Full)
    ));
    let t = std::time::Instant::now();
    assert!(matches!(
        c.call(&[b"QPUT", b"box", b"c", b"TIMEOUT", b"100"]),
        Err(Error::Full)
    ));
    assert!(t.elapsed() >= Duration::from_millis(100), "never early");
    let mut putter = Client::connect(&named(&url, "putter")).unwrap();
    let put = thread::spawn(move || putter.call(&[b"QPUT", b"box", b"c", b"TIMEOUT", b"0"]));
    common::wait_until("the putter listening", || listening(&url, "putter"));
    assert_eq!(
        info(&mut c, "box", "waiting_putters"),
        1,
        "counted while it waits"
    );
    assert_eq!(
        payloads(c.call(&[b"QGET", b"box", b"NOACK"]).unwrap()),
        [b"a".to_vec()]
    );
    int(put.join().unwrap());
    assert_eq!(int(c.call(&[b"QLEN", b"box"])), 2);
    // Max attempts: the second return goes to the dead letters.
    ok(c.call(&[
        b"QCREATE",
        b"try",
        b"MAXATTEMPTS",
        b"2",
        b"DEADLETTER",
        b"dead",
    ]));
    int(c.call(&[b"QPUT", b"try", b"flaky"]));
    for _ in 0..2 {
        let e = entries(c.call(&[b"QGET", b"try"]).unwrap());
        let id = e[0].0.to_string();
        ok(c.call(&[b"QNACK", b"try", id.as_bytes()]));
    }
    assert_eq!(int(c.call(&[b"QLEN", b"try"])), 0);
    let dead = entries(c.call(&[b"QGET", b"dead", b"NOACK"]).unwrap());
    assert_eq!((dead[0].1.as_slice(), dead[0].2), (b"flaky".as_slice(), 2));
    // A timed lease: touched, and finished by anyone.
    int(c.call(&[b"QPUT", b"try", b"slow"]));
    let e = entries(c.call(&[b"QGET", b"try", b"LEASE", b"60000"]).unwrap());
    let id = e[0].0.to_string();
    assert_eq!(
        int(c.call(&[b"QTOUCH", b"try", id.as_bytes(), b"LEASE", b"90000"])),
        90000
    );
    let mut other = Client::connect(&url).unwrap();
    assert_eq!(int(other.call(&[b"QDONE", b"try", id.as_bytes()])), 1);
    // QGET ... OR: the first queue that has one.
    int(c.call(&[b"QPUT", b"b", b"from-b"]));
    let e = c.call(&[b"QGET", b"a", b"OR", b"b", b"NOACK"]).unwrap();
    assert_eq!(payloads(e), [b"from-b".to_vec()]);
}

#[test]
fn a_shut_down_queue_refuses_puts_and_drains() {
    let pg = PgServer::start();
    let url = pg.url("");
    let mut c = Client::connect(&url).unwrap();
    int(c.call(&[b"QPUT", b"s", b"left"]));
    int(c.call(&[b"QPUT", b"s", b"later", b"DELAY", b"600000"]));
    let mut getter = Client::connect(&named(&url, "getter")).unwrap();
    int(getter.call(&[b"QPUT", b"idle", b"x"]));
    getter.call(&[b"QGET", b"idle", b"NOACK"]).unwrap();
    let waiting = thread::spawn(move || getter.call(&[b"QGET", b"idle", b"TIMEOUT", b"0"]));
    common::wait_until("the getter listening", || listening(&url, "getter"));
    assert_eq!(info(&mut c, "idle", "waiting_getters"), 1);
    ok(c.call(&[b"QSHUTDOWN", b"idle"]));
    assert!(matches!(waiting.join().unwrap(), Err(Error::ShutDown)));
    assert_eq!(
        info(&mut c, "idle", "waiting_getters"),
        0,
        "no longer once it ended"
    );
    ok(c.call(&[b"QSHUTDOWN", b"s"]));
    assert!(matches!(
        c.call(&[b"QPUT", b"s", b"no"]),
        Err(Error::ShutDown)
    ));
    let drained = payloads(c.call(&[b"QGET", b"s", b"COUNT", b"5", b"NOACK"]).unwrap());
    assert_eq!(
        drained,
        [b"left".to_vec(), b"later".to_vec()],
        "delayed ones ready now"
    );
    assert!(matches!(
        c.call(&[b"QGET", b"s", b"TIMEOUT", b"0"]),
        Err(Error::ShutDown)
    ));
    ok(c.call(&[b"QREOPEN", b"s"]));
    int(c.call(&[b"QPUT", b"s", b"again"]));
    int(c.call(&[b"QPUT", b"s", b"out"]));
    let out = entries(c.call(&[b"QGET", b"s"]).unwrap());
    ok(c.call(&[b"QSHUTDOWN", b"s", b"IMMEDIATE"]));
    assert_eq!(
        int(c.call(&[b"QLEN", b"s"])),
        0,
        "immediate drops what is ready"
    );
    // And what comes back after it.
    let id = out[0].0.to_string();
    ok(c.call(&[b"QNACK", b"s", id.as_bytes()]));
    assert_eq!(int(c.call(&[b"QLEN", b"s"])), 0, "given back: dropped too");
    assert_eq!(
        c.call(&[b"QJOIN", b"s", b"NOWAIT"]).unwrap(),
        Value::Simple("OK".into())
    );
}

#[test]
fn a_holder_shared_by_clients_lives_while_one_of_them_does() {
    let pg = PgServer::start();
    let url = pg.url("");
    let token = b"a-process-token-of-32-bytes-long";
    let (mut a, mut b) = (
        Client::connect(&url).unwrap(),
        Client::connect(&url).unwrap(),
    );
    for c in [&mut a, &mut b] {
        ok(c.call(&[b"CLIENT", b"HOLDER", token]));
    }
    let e = b.call(&[b"CLIENT", b"HOLDER", b"short"]).unwrap_err();
    assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    a.call(&[b"QPUTMANY", b"h", b"PAYLOADS", b"1", b"2"])
        .unwrap();
    let got = entries(a.call(&[b"QGET", b"h", b"COUNT", b"2"]).unwrap());
    let first = got[0].0.to_string();
    assert_eq!(
        int(b.call(&[b"QDONE", b"h", first.as_bytes()])),
        1,
        "the holder's"
    );
    // `a` goes: `b` still holds for their holder.
    drop(a);
    let mut c = Client::connect(&url).unwrap();
    assert_eq!(c.call(&[b"QGET", b"h", b"NOWAIT"]).unwrap(), Value::Nil);
    assert_eq!(info(&mut c, "h", "leased"), 1);
    // With `b`, the holder's last client, it comes back.
    drop(b);
    let e = entries(c.call(&[b"QGET", b"h", b"TIMEOUT", b"30000"]).unwrap());
    assert_eq!((e[0].1.as_slice(), e[0].2), (b"2".as_slice(), 1));
    let text = match c.call(&[b"INFO"]).unwrap() {
        Value::Bulk(t) => String::from_utf8_lossy(&t).into_owned(),
        other => panic!("{other:?}"),
    };
    assert!(
        text.contains("backend:postgres") && text.contains("queues:1"),
        "{text}"
    );
}

#[test]
fn locks_fence_wait_and_go_with_their_holder() {
    let pg = PgServer::start();
    let (url, plain) = (pg.url("lease=500"), pg.url(""));
    let (mut a, mut b) = (
        Client::connect(&url).unwrap(),
        Client::connect(&url).unwrap(),
    );
    let t1 = int(a.call(&[b"LOCK", b"L", b"NOWAIT"]));
    assert_eq!(b.call(&[b"LOCK", b"L", b"NOWAIT"]).unwrap(), Value::Nil);
    assert_eq!(
        int(b.call(&[b"LOCKED", b"L", t1.to_string().as_bytes()])),
        1
    );
    // A waiter gets it when it is released (from any client), with a
    // larger token.
    let mut w = Client::connect(&named(&url, "waiter")).unwrap();
    let waiting = thread::spawn(move || int(w.call(&[b"LOCK", b"L", b"TIMEOUT", b"0"])));
    common::wait_until("the waiter listening", || listening(&plain, "waiter"));
    assert_eq!(
        int(b.call(&[b"UNLOCK", b"L", t1.to_string().as_bytes()])),
        1
    );
    let t2 = waiting.join().unwrap();
    assert!(t2 > t1, "fencing tokens grow");
    assert_eq!(
        int(b.call(&[b"LOCKED", b"L", t1.to_string().as_bytes()])),
        0
    );
    // The waiter's client went with its thread: the lock with it.
    let t3 = int(a.call(&[b"LOCK", b"L", b"TIMEOUT", b"30000"]));
    assert!(t3 > t2);
    // A TTL frees it without its holder.
    int(b.call(&[b"LOCK", b"T", b"TTL", b"1"]));
    let t = int(a.call(&[b"LOCK", b"T", b"TIMEOUT", b"30000"]));
    assert!(t > t3);
    // A `ferry lock` killed with SIGKILL: free once its heartbeat is
    // overdue.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["lock", "K", "--url", &url, "--", "sleep", "600"])
        .spawn()
        .unwrap();
    common::wait_until("the command's lock", || {
        psql(&plain, "SELECT count(*) FROM ferry.locks WHERE name = 'K'") == "1"
    });
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(int(b.call(&[b"LOCK", b"K", b"TIMEOUT", b"30000"])) > t);
    let _ = Command::new("pkill").args(["-f", "sleep 600"]).status();
}

/// kill -9 of the PostgreSQL server under two producers, then a restart
/// (its crash recovery, default `synchronous_commit`): every put that was
/// acknowledged is there once — the producers reconnect and send again
/// what was in flight, its DEDUP key making it go in once.
#[test]
fn a_kill_9_of_the_server_under_load_loses_no_acknowledged_put() {
    const PER_PRODUCER: usize = 1500;
    let pg = PgServer::start();
    let url = pg.url("");
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let url = url.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&url).unwrap();
                let mut acked = Vec::new();
                for i in 0..PER_PRODUCER {
                    let payload = format!("{p}-{i}");
                    match c.put("load", payload.as_bytes()) {
                        Ok(_) => acked.push(payload),
                        Err(e) => panic!("put {payload} failed across the crash: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut probe = Client::connect(&url).unwrap();
    common::wait_until("puts under way", || {
        int(probe.call(&[b"QLEN", b"load"])) >= 300
    });
    drop(probe);
    pg.kill9();
    pg.restart();
    let acked: Vec<String> = producers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let mut c = Client::connect(&url).unwrap();
    let mut seen = std::collections::HashMap::<Vec<u8>, usize>::new();
    loop {
        match c
            .call(&[b"QGET", b"load", b"COUNT", b"500", b"NOACK", b"NOWAIT"])
            .unwrap()
        {
            Value::Nil => break,
            v => {
                for (_, p, _) in entries(v) {
                    *seen.entry(p).or_default() += 1;
                }
            }
        }
    }
    let lost = acked
        .iter()
        .filter(|p| !seen.contains_key(p.as_bytes()))
        .count();
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "acknowledged {}, delivered {}, lost {lost}, duplicated {duplicated}",
        acked.len(),
        seen.values().sum::<usize>()
    );
    assert_eq!((acked.len(), lost, duplicated), (2 * PER_PRODUCER, 0, 0));
}

#[test]
fn events_wake_every_waiter_even_if_cleared_at_once() {
    let pg = PgServer::start();
    let url = pg.url("");
    let mut c = Client::connect(&url).unwrap();
    assert_eq!(int(c.call(&[b"EVISSET", b"go"])), 0);
    assert_eq!(int(c.call(&[b"EVWAIT", b"go", b"NOWAIT"])), 0);
    let t = std::time::Instant::now();
    assert_eq!(int(c.call(&[b"EVWAIT", b"go", b"TIMEOUT", b"60"])), 0);
    assert!(t.elapsed() >= Duration::from_millis(60), "never early");
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let mut w = Client::connect(&named(&url, &format!("w{i}"))).unwrap();
            thread::spawn(move || int(w.call(&[b"EVWAIT", b"go"])))
        })
        .collect();
    for i in 0..3 {
        common::wait_until("a waiter listening", || listening(&url, &format!("w{i}")));
    }
    assert_eq!(int(c.call(&[b"EVSET", b"go"])), 1);
    // Cleared at once: the waiters were woken by the set all the same.
    assert_eq!(int(c.call(&[b"EVCLEAR", b"go"])), 1);
    for w in waiters {
        assert_eq!(w.join().unwrap(), 1);
    }
    // `ferry event` from a shell, on this engine too.
    let status = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["event", "set", "go", "--url", &url])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(int(c.call(&[b"EVWAIT", b"go", b"NOWAIT"])), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["event", "is-set", "go", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "set");
}
