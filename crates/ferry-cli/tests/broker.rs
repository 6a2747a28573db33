//! The broker end to end: the real `ferry serve` binary on port 0, driven
//! over real sockets by raw RESP, the `redis` crate and redis-cli.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{Entry, Server};
use rand::{Rng, SeedableRng};
use redis::Value;

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

/// Every command, its reply and its errors, as raw RESP.
#[test]
fn commands_and_errors() {
    let s = Server::start();
    let mut c = s.raw();
    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "+PONG\r\n"),
        (&["PING", "hi"], "$2\r\nhi\r\n"),
        (&["ECHO", "x"], "$1\r\nx\r\n"),
        (
            &["ECHO"],
            "-ERR wrong number of arguments for 'echo' command\r\n",
        ),
        (&["NOPE"], "-ERR unknown command 'NOPE'\r\n"),
        (&["CLIENT", "SETNAME", "worker-1"], "+OK\r\n"),
        (&["CLIENT", "GETNAME"], "$8\r\nworker-1\r\n"),
        (&["SELECT", "0"], "+OK\r\n"),
        (
            &["AUTH", "pw"],
            "-ERR AUTH <password> called without any password configured for the default user\r\n",
        ),
        (
            &["QCREATE", "jobs", "MAXSIZE", "2", "KIND", "fifo"],
            "+OK\r\n",
        ),
        (&["QCREATE", "jobs", "MAXSIZE", "2"], "+OK\r\n"),
        (
            &["QCREATE", "jobs", "MAXSIZE", "3"],
            "-EXISTS queue jobs exists with maxsize 2, not 3\r\n",
        ),
        (
            &["QCREATE", "jobs", "KIND", "heap"],
            "-ERR KIND must be fifo, lifo or priority\r\n",
        ),
        (
            &["QCREATE", "bad name"],
            "-ERR invalid queue name: 1 to 200 bytes of A-Z a-z 0-9 _ . : -\r\n",
        ),
        (&["QPUT", "jobs", "a"], ":1\r\n"),
        (&["QPUT", "jobs", "b", "NOWAIT"], ":2\r\n"),
        (&["QPUT", "jobs", "c", "NOWAIT"], "-FULL queue is full\r\n"),
        (
            &["QPUT", "jobs", "c", "TIMEOUT", "10"],
            "-FULL queue is full\r\n",
        ),
        (
            &["QPUT", "jobs", "c", "BOGUS"],
            "-ERR unknown option 'BOGUS' for QPUT (docs/protocol.md lists them)\r\n",
        ),
        (
            &["QPUT", "jobs"],
            "-ERR wrong number of arguments for 'qput' command\r\n",
        ),
        (&["QLEN", "jobs"], ":2\r\n"),
        (&["QLEN", "nothing"], ":0\r\n"),
        (
            &["QPEEK", "jobs", "COUNT", "1"],
            "*1\r\n*4\r\n$4\r\njobs\r\n:1\r\n$1\r\na\r\n:0\r\n",
        ),
        (
            &["QGET", "jobs", "NOWAIT"],
            "*1\r\n*4\r\n$4\r\njobs\r\n:1\r\n$1\r\na\r\n:0\r\n",
        ),
        (&["QTOUCH", "jobs", "1"], ":-1\r\n"),
        (&["QTOUCH", "jobs", "1", "LEASE", "5000"], ":5000\r\n"),
        (&["QNACK", "jobs", "1"], "+OK\r\n"),
        (
            &["QNACK", "jobs", "1"],
            "-NOTLEASED message is not leased by this client\r\n",
        ),
        (&["QNACK", "nothing", "1"], "-NOQUEUE no such queue\r\n"),
        (
            &["QGET", "jobs", "COUNT", "5", "NOWAIT"],
            "*2\r\n*4\r\n$4\r\njobs\r\n:1\r\n$1\r\na\r\n:1\r\n*4\r\n$4\r\njobs\r\n:2\r\n$1\r\nb\r\n:0\r\n",
        ),
        (&["QDONE", "jobs", "1", "2", "99"], ":2\r\n"),
        (&["QDONE", "jobs", "1"], ":0\r\n"),
        (
            &["QDONE", "jobs", "x"],
            "-ERR value is not an integer or out of range\r\n",
        ),
        (&["QGET", "jobs", "NOWAIT"], "*-1\r\n"),
        (
            &["QGET", "jobs", "TAKE", "NOACK"],
            "-ERR LEASE, TAKE and NOACK exclude each other\r\n",
        ),
        (&["QJOIN", "jobs", "TIMEOUT", "10"], "+OK\r\n"),
        (
            &["QPUTMANY", "jobs", "PAYLOADS", "x", "y"],
            "*2\r\n:3\r\n:4\r\n",
        ),
        (
            &["QPUTMANY", "jobs", "NOWAIT", "PAYLOADS", "z"],
            "-FULL queue is full\r\n",
        ),
        (&["QPURGE", "jobs"], ":2\r\n"),
        (
            &["QPUTMANY", "jobs", "NOWAIT", "PAYLOADS", "1", "2", "3"],
            "-ERR more payloads than the queue's maxsize\r\n",
        ),
        (&["QCONFIG", "jobs", "MAXSIZE", "0"], "+OK\r\n"),
        (
            &["QCONFIG", "jobs", "KIND", "lifo"],
            "-ERR a queue's KIND is set when it is made; QCONFIG cannot change it\r\n",
        ),
        (&["QLIST"], "*1\r\n$4\r\njobs\r\n"),
        (&["QSHUTDOWN", "jobs"], "+OK\r\n"),
        (
            &["QPUT", "jobs", "late"],
            "-SHUTDOWN queue is shut down\r\n",
        ),
        (&["QGET", "jobs"], "-SHUTDOWN queue is shut down\r\n"),
        (&["QDROP", "jobs"], ":1\r\n"),
        (&["QDROP", "jobs"], ":0\r\n"),
        (&["QINFO", "jobs"], "-NOQUEUE no such queue\r\n"),
        (&["UNLOCK", "m", "7"], ":0\r\n"),
        (&["COMMAND", "COUNT"], ":0\r\n"),
        (&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
    ];
    for (args, want) in cases {
        assert_eq!(&c.cmd(args), want, "reply to {args:?}");
    }
    let token = c.cmd(&["LOCK", "m", "NOWAIT"]);
    assert!(token.starts_with(':'), "{token}");
    assert_eq!(c.cmd(&["UNLOCK", "m", token[1..].trim_end()]), ":1\r\n");
    // QINFO is a map: RESP2 gives it flat, RESP3 as %.
    c.cmd(&["QPUT", "info", "x", "PRIORITY", "3"]);
    let info = c.cmd(&["QINFO", "info"]);
    assert!(
        info.starts_with("*58\r\n$4\r\nname\r\n$4\r\ninfo\r\n$4\r\nkind\r\n$4\r\nfifo\r\n"),
        "{info}"
    );
    assert!(info.contains("$10\r\nunfinished\r\n:1\r\n"), "{info}");
    let hello = c.cmd(&["HELLO", "3"]);
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nferry\r\n"),
        "{hello}"
    );
    assert_eq!(c.cmd(&["QGET", "empty", "NOWAIT"]), "_\r\n", "RESP3 null");
    assert!(c.cmd(&["QINFO", "info"]).starts_with("%29\r\n"));
    assert_eq!(c.cmd(&["QUIT"]), "+OK\r\n");
    assert!(c.closed());
}

#[test]
fn inline_commands_and_pipelines() {
    let s = Server::start();
    let mut c = s.raw();
    // Many commands in one write, answered in order.
    let mut batch = Vec::new();
    for i in 0..200 {
        write!(batch, "QPUT p m{i}\r\n").unwrap();
    }
    batch.extend_from_slice(b"*2\r\n$4\r\nQLEN\r\n$1\r\np\r\n");
    c.send(&batch);
    for i in 0..200 {
        assert_eq!(c.reply(), format!(":{}\r\n", i + 1));
    }
    assert_eq!(c.reply(), ":200\r\n");
}

#[test]
fn redis_crate_round_trip_with_typed_replies() {
    let s = Server::start();
    let mut con = s.conn();
    let id: u64 = cmd("QPUT")
        .arg("q")
        .arg(b"\x00\xffbinary")
        .query(&mut con)
        .unwrap();
    assert_eq!(id, 1);
    let got: Vec<Entry> = cmd("QGET").arg("q").arg("NOWAIT").query(&mut con).unwrap();
    assert_eq!(
        got,
        vec![("q".to_string(), 1, b"\x00\xffbinary".to_vec(), 0)]
    );
    let none: Option<Vec<Entry>> = cmd("QGET").arg("q").arg("NOWAIT").query(&mut con).unwrap();
    assert_eq!(none, None);
    let done: u64 = cmd("QDONE").arg("q").arg(1).query(&mut con).unwrap();
    assert_eq!(done, 1);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn redis_cli_starts_cleanly_and_drives_queues() {
    let s = Server::start();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &s.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools) is installed by scripts/test.sh");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["PING"]), "PONG\n");
    assert_eq!(cli(&["QPUT", "jobs", "hello"]), "1\n");
    assert_eq!(cli(&["QGET", "jobs", "NOACK"]), "jobs\n1\nhello\n0\n");
    assert_eq!(cli(&["QLEN", "jobs"]), "0\n");
    let info = cli(&["INFO"]);
    assert!(info.contains("ferry_version:"), "{info}");
    // Interactive mode (which asks COMMAND DOCS first) with input on stdin.
    let mut child = Command::new("redis-cli")
        .args(["-p", &s.port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"QPUT jobs again\nQLEN jobs\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "2\n1\n");
}

#[test]
fn blocking_put_is_released_by_a_get_on_another_connection() {
    let s = Server::start();
    let mut a = s.conn();
    let _: () = cmd("QCREATE")
        .arg("b")
        .arg("MAXSIZE")
        .arg(1)
        .query(&mut a)
        .unwrap();
    let _: u64 = cmd("QPUT").arg("b").arg("first").query(&mut a).unwrap();
    let url = s.url();
    let putter = thread::spawn(move || {
        let mut p = redis::Client::open(url).unwrap().get_connection().unwrap();
        let id: u64 = cmd("QPUT").arg("b").arg("second").query(&mut p).unwrap();
        id
    });
    common::wait_for_waiters(&mut a, "b", "waiting_putters", 1);
    assert!(
        !putter.is_finished(),
        "the put should block while the queue is full"
    );
    assert_eq!(common::qinfo(&mut a, "b", "qsize"), 1);
    let got: Vec<Entry> = cmd("QGET").arg("b").arg("NOACK").query(&mut a).unwrap();
    assert_eq!(got[0].2, b"first");
    assert_eq!(putter.join().unwrap(), 2);
}

#[test]
fn blocking_get_is_released_by_a_put() {
    let s = Server::start();
    let url = s.url();
    let getter = thread::spawn(move || {
        let mut g = redis::Client::open(url).unwrap().get_connection().unwrap();
        let got: Vec<Entry> = cmd("QGET")
            .arg("g")
            .arg("TIMEOUT")
            .arg(5000)
            .query(&mut g)
            .unwrap();
        got
    });
    let mut p = s.conn();
    common::wait_for_waiters(&mut p, "g", "waiting_getters", 1);
    let _: u64 = cmd("QPUT").arg("g").arg("wake").query(&mut p).unwrap();
    let got = getter.join().unwrap();
    assert_eq!(got[0].2, b"wake");
}

#[test]
fn timeouts_are_never_early() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = cmd("QCREATE")
        .arg("t")
        .arg("MAXSIZE")
        .arg(1)
        .query(&mut c)
        .unwrap();
    for ms in [50u64, 300] {
        let t = Instant::now();
        let got: Option<Vec<Entry>> = cmd("QGET")
            .arg("empty")
            .arg("TIMEOUT")
            .arg(ms)
            .query(&mut c)
            .unwrap();
        let took = t.elapsed();
        assert_eq!(got, None);
        assert!(
            took >= Duration::from_millis(ms),
            "get timed out early: {took:?} < {ms} ms"
        );
    }
    let _: u64 = cmd("QPUT").arg("t").arg("x").query(&mut c).unwrap();
    let t = Instant::now();
    let r: redis::RedisResult<u64> = cmd("QPUT")
        .arg("t")
        .arg("y")
        .arg("TIMEOUT")
        .arg(200)
        .query(&mut c);
    let took = t.elapsed();
    assert_eq!(r.unwrap_err().code(), Some("FULL"));
    assert!(took >= Duration::from_millis(200), "{took:?}");
    let t = Instant::now();
    let joined: Option<String> = cmd("QJOIN")
        .arg("t")
        .arg("TIMEOUT")
        .arg(100)
        .query(&mut c)
        .unwrap();
    assert_eq!(joined, None);
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn join_is_released_when_the_last_task_is_done() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = cmd("QPUTMANY")
        .arg("j")
        .arg("PAYLOADS")
        .arg("a")
        .arg("b")
        .query(&mut c)
        .unwrap();
    let url = s.url();
    let joiner = thread::spawn(move || {
        let mut j = redis::Client::open(url).unwrap().get_connection().unwrap();
        let ok: String = cmd("QJOIN").arg("j").query(&mut j).unwrap();
        ok
    });
    let got: Vec<Entry> = cmd("QGET")
        .arg("j")
        .arg("COUNT")
        .arg(2)
        .query(&mut c)
        .unwrap();
    common::wait_for_waiters(&mut c, "j", "waiting_joiners", 1);
    let _: u64 = cmd("QDONE").arg("j").arg(got[0].1).query(&mut c).unwrap();
    assert_eq!(
        common::qinfo(&mut c, "j", "waiting_joiners"),
        1,
        "join returned with a task unfinished"
    );
    let _: u64 = cmd("QDONE").arg("j").arg(got[1].1).query(&mut c).unwrap();
    assert_eq!(joiner.join().unwrap(), "OK");
}

#[test]
fn a_consumer_that_disconnects_mid_task_has_its_message_redelivered() {
    let s = Server::start();
    let mut producer = s.conn();
    let id: u64 = cmd("QPUT")
        .arg("w")
        .arg("job")
        .query(&mut producer)
        .unwrap();
    {
        let mut dying = s.conn();
        let got: Vec<Entry> = cmd("QGET").arg("w").query(&mut dying).unwrap();
        assert_eq!((got[0].1, got[0].3), (id, 0));
        // Another connection may not finish a lease bound to this one.
        let n: u64 = cmd("QDONE").arg("w").arg(id).query(&mut producer).unwrap();
        assert_eq!(n, 0);
    }
    let mut other = s.conn();
    let got: Vec<Entry> = cmd("QGET")
        .arg("w")
        .arg("TIMEOUT")
        .arg(5000)
        .query(&mut other)
        .unwrap();
    assert_eq!(
        (got[0].1, got[0].2.as_slice(), got[0].3),
        (id, &b"job"[..], 1)
    );
}

#[test]
fn a_getter_that_disconnects_while_blocked_leaves_nothing_behind() {
    let s = Server::start();
    let mut c = s.conn();
    {
        let mut raw = s.raw();
        raw.send(b"QGET gone TIMEOUT 0\r\n");
        common::wait_for_waiters(&mut c, "gone", "waiting_getters", 1);
    }
    common::wait_for_waiters(&mut c, "gone", "waiting_getters", 0);
    let _: u64 = cmd("QPUT").arg("gone").arg("kept").query(&mut c).unwrap();
    let got: Vec<Entry> = cmd("QGET").arg("gone").arg("NOWAIT").query(&mut c).unwrap();
    assert_eq!((got[0].2.as_slice(), got[0].3), (&b"kept"[..], 0));
}

#[test]
fn take_noack_and_timed_leases() {
    let s = Server::start();
    let mut a = s.conn();
    // TAKE: never redelivered; counted lost if the taker goes away.
    let _: u64 = cmd("QPUT").arg("k").arg("t").query(&mut a).unwrap();
    {
        let mut taker = s.conn();
        let _: Vec<Entry> = cmd("QGET").arg("k").arg("TAKE").query(&mut taker).unwrap();
    }
    let joined: String = cmd("QJOIN")
        .arg("k")
        .arg("TIMEOUT")
        .arg(2000)
        .query(&mut a)
        .unwrap();
    assert_eq!(joined, "OK");
    let info: std::collections::HashMap<String, Value> =
        cmd("QINFO").arg("k").query(&mut a).unwrap();
    assert_eq!(info["lost"], Value::Int(1));
    assert_eq!(info["qsize"], Value::Int(0));
    // A timed lease survives its connection and anyone may finish it.
    let id: u64 = cmd("QPUT").arg("k").arg("timed").query(&mut a).unwrap();
    {
        let mut g = s.conn();
        let _: Vec<Entry> = cmd("QGET")
            .arg("k")
            .arg("LEASE")
            .arg(60_000)
            .query(&mut g)
            .unwrap();
    }
    let n: u64 = cmd("QDONE").arg("k").arg(id).query(&mut a).unwrap();
    assert_eq!(n, 1);
    // And it expires.
    let id: u64 = cmd("QPUT").arg("k").arg("expires").query(&mut a).unwrap();
    let _: Vec<Entry> = cmd("QGET")
        .arg("k")
        .arg("LEASE")
        .arg(100)
        .query(&mut a)
        .unwrap();
    let again: Vec<Entry> = cmd("QGET")
        .arg("k")
        .arg("TIMEOUT")
        .arg(3000)
        .arg("NOACK")
        .query(&mut a)
        .unwrap();
    assert_eq!((again[0].1, again[0].3), (id, 1));
}

#[test]
fn max_attempts_moves_a_message_to_its_dead_letter_queue() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = cmd("QCREATE")
        .arg("src")
        .arg("MAXATTEMPTS")
        .arg(2)
        .arg("DEADLETTER")
        .arg("dlq")
        .query(&mut c)
        .unwrap();
    let id: u64 = cmd("QPUT").arg("src").arg("poison").query(&mut c).unwrap();
    for _ in 0..2 {
        let _: Vec<Entry> = cmd("QGET").arg("src").arg("NOWAIT").query(&mut c).unwrap();
        let _: () = cmd("QNACK").arg("src").arg(id).query(&mut c).unwrap();
    }
    let dead: Vec<Entry> = cmd("QGET")
        .arg("dlq")
        .arg("TIMEOUT")
        .arg(2000)
        .query(&mut c)
        .unwrap();
    assert_eq!((dead[0].2.as_slice(), dead[0].3), (&b"poison"[..], 2));
    let unfinished: std::collections::HashMap<String, Value> =
        cmd("QINFO").arg("src").query(&mut c).unwrap();
    assert_eq!(unfinished["unfinished"], Value::Int(0));
}

#[test]
fn priority_delay_dedup_and_several_queues() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = cmd("QCREATE")
        .arg("pq")
        .arg("KIND")
        .arg("priority")
        .query(&mut c)
        .unwrap();
    for (p, v) in [(5, "five"), (-1, "minus"), (3, "three")] {
        let _: u64 = cmd("QPUT")
            .arg("pq")
            .arg(v)
            .arg("PRIORITY")
            .arg(p)
            .query(&mut c)
            .unwrap();
    }
    let got: Vec<Entry> = cmd("QGET")
        .arg("pq")
        .arg("COUNT")
        .arg(3)
        .arg("NOACK")
        .query(&mut c)
        .unwrap();
    let order: Vec<&[u8]> = got.iter().map(|e| e.2.as_slice()).collect();
    assert_eq!(order, vec![&b"minus"[..], b"three", b"five"]);

    let _: u64 = cmd("QPUT")
        .arg("d")
        .arg("later")
        .arg("DELAY")
        .arg(200)
        .query(&mut c)
        .unwrap();
    let none: Option<Vec<Entry>> = cmd("QGET").arg("d").arg("NOWAIT").query(&mut c).unwrap();
    assert_eq!(none, None);
    let t = Instant::now();
    let got: Vec<Entry> = cmd("QGET")
        .arg("d")
        .arg("TIMEOUT")
        .arg(3000)
        .query(&mut c)
        .unwrap();
    assert_eq!(got[0].2, b"later");
    assert!(t.elapsed() >= Duration::from_millis(150));

    let a: u64 = cmd("QPUT")
        .arg("dd")
        .arg("x")
        .arg("DEDUP")
        .arg("k1")
        .query(&mut c)
        .unwrap();
    let b: u64 = cmd("QPUT")
        .arg("dd")
        .arg("x")
        .arg("DEDUP")
        .arg("k1")
        .query(&mut c)
        .unwrap();
    assert_eq!(a, b);
    let n: u64 = cmd("QLEN").arg("dd").query(&mut c).unwrap();
    assert_eq!(n, 1);

    let url = s.url();
    let getter = thread::spawn(move || {
        let mut g = redis::Client::open(url).unwrap().get_connection().unwrap();
        let got: Vec<Entry> = cmd("QGET")
            .arg("m1")
            .arg("OR")
            .arg("m2")
            .arg("TIMEOUT")
            .arg(5000)
            .query(&mut g)
            .unwrap();
        got
    });
    common::wait_for_waiters(&mut c, "m2", "waiting_getters", 1);
    let _: u64 = cmd("QPUT").arg("m2").arg("from-two").query(&mut c).unwrap();
    let got = getter.join().unwrap();
    assert_eq!(
        (got[0].0.as_str(), got[0].2.as_slice()),
        ("m2", &b"from-two"[..])
    );
}

#[test]
fn lock_contention_and_release_on_disconnect() {
    let s = Server::start();
    let mut a = s.conn();
    let token: u64 = cmd("LOCK").arg("res").query(&mut a).unwrap();
    let mut b = s.conn();
    let none: Option<u64> = cmd("LOCK")
        .arg("res")
        .arg("TIMEOUT")
        .arg(100)
        .query(&mut b)
        .unwrap();
    assert_eq!(none, None, "a second holder must wait");
    let url = s.url();
    let waiter = thread::spawn(move || {
        let mut w = redis::Client::open(url).unwrap().get_connection().unwrap();
        let t: u64 = cmd("LOCK")
            .arg("res")
            .arg("TIMEOUT")
            .arg(5000)
            .query(&mut w)
            .unwrap();
        t
    });
    common::wait_until("the waiter in line", || {
        common::info_field(&mut b, "lock_waiters") == 1
    });
    drop(a); // disconnect releases the lock
    let next = waiter.join().unwrap();
    assert!(next > token, "fencing tokens increase");
    // TTL: a lock whose holder forgot it comes free.
    let mut c = s.conn();
    let _: u64 = cmd("LOCK")
        .arg("ttl")
        .arg("TTL")
        .arg(100)
        .query(&mut c)
        .unwrap();
    let t = Instant::now();
    let _: u64 = cmd("LOCK")
        .arg("ttl")
        .arg("TIMEOUT")
        .arg(3000)
        .query(&mut b)
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
}

#[test]
fn auth_is_required_when_a_password_is_set() {
    let s = Server::start_with(&["--requirepass", "s3cret"]);
    let mut c = s.raw();
    assert_eq!(
        c.cmd(&["QLEN", "q"]),
        "-NOAUTH Authentication required.\r\n"
    );
    assert!(c.cmd(&["AUTH", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), "+OK\r\n");
    assert_eq!(c.cmd(&["QLEN", "q"]), ":0\r\n");
    let client = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/", s.port)).unwrap();
    let mut con = client.get_connection().unwrap();
    let n: u64 = cmd("QLEN").arg("q").query(&mut con).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn limits_give_clear_errors() {
    let s = Server::start_with(&["--max-payload", "1024", "--max-clients", "3"]);
    let mut c = s.raw();
    let big = "x".repeat(2048);
    assert_eq!(
        c.cmd(&["QPUT", "q", &big]),
        "-TOOBIG payload of 2048 bytes is over the limit of 1024\r\n"
    );
    assert!(c.closed(), "an oversize frame closes its connection");
    let mut keep: Vec<_> = (0..3).map(|_| s.raw()).collect();
    for k in &mut keep {
        assert_eq!(k.cmd(&["PING"]), "+PONG\r\n");
    }
    let mut extra = s.raw();
    assert_eq!(extra.reply(), "-ERR max number of clients reached\r\n");
    drop(keep);
}

#[test]
fn unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.sock");
    let s = Server::start_with(&["--unix", path.to_str().unwrap()]);
    assert_eq!(s.unix.as_deref(), Some(path.as_path()));
    let client = redis::Client::open(format!("unix://{}", path.display())).unwrap();
    let mut con = client.get_connection().unwrap();
    let id: u64 = cmd("QPUT").arg("u").arg("x").query(&mut con).unwrap();
    assert_eq!(id, 1);
}

/// Random bytes and truncated frames, sent for a bounded time on many
/// connections, while a well-behaved client keeps working unaffected.
#[test]
fn garbage_closes_only_its_own_connection() {
    let s = Server::start();
    let seed: u64 = rand::rng().random();
    println!("garbage seed {seed}");
    let port = s.port;
    let fuzzer = thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut sent = 0;
        while Instant::now() < deadline && sent < 2_000 {
            let Ok(mut sock) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let len = rng.random_range(1..512);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                // A truncated but well-started frame.
                let mut frame = b"*3\r\n$4\r\nQPUT\r\n$1\r\nz\r\n$100\r\nabc".to_vec();
                frame.truncate(rng.random_range(1..frame.len()));
                junk = frame;
            }
            let _ = sock.write_all(&junk);
            sent += 1;
        }
        sent
    });
    let mut c = s.conn();
    let mut n = 0u64;
    while !fuzzer.is_finished() {
        n += 1;
        let id: u64 = cmd("QPUT").arg("steady").arg(n).query(&mut c).unwrap();
        assert_eq!(id, n);
        let got: Vec<Entry> = cmd("QGET")
            .arg("steady")
            .arg("NOACK")
            .query(&mut c)
            .unwrap();
        assert_eq!(got[0].2, n.to_string().into_bytes());
    }
    assert!(fuzzer.join().unwrap() > 0);
    assert!(n > 10, "the steady client made progress ({n} round trips)");
    let pong: String = redis::cmd("PING").query(&mut s.conn()).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let s = Server::start();
    let mut c = s.conn();
    let _: u64 = cmd("QPUT").arg("q").arg("x").query(&mut c).unwrap();
    let status = s.signal_and_wait("-TERM");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn puts_over_max_memory_get_oom_while_gets_and_dones_work() {
    let s = Server::start_with(&["--max-memory", "64kb"]);
    let mut c = s.conn();
    let payload = vec![b'x'; 1000];
    let mut admitted = 0u64;
    let err = loop {
        match cmd("QPUT").arg("m").arg(&payload[..]).query::<u64>(&mut c) {
            Ok(_) => admitted += 1,
            Err(e) => break e,
        }
        assert!(admitted < 1000, "the limit never applied");
    };
    assert_eq!(err.code(), Some("OOM"));
    assert!(
        (55..=66).contains(&admitted),
        "{admitted} puts of ~1.1 kB under 64 kB"
    );
    // Nothing admitted was lost, and consuming frees room again.
    let got: Vec<Entry> = cmd("QGET")
        .arg("m")
        .arg("COUNT")
        .arg(10)
        .query(&mut c)
        .unwrap();
    let ids: Vec<u64> = got.iter().map(|e| e.1).collect();
    let done: u64 = cmd("QDONE").arg("m").arg(&ids).query(&mut c).unwrap();
    assert_eq!(done, 10);
    let _: u64 = cmd("QPUT")
        .arg("m")
        .arg(&payload[..])
        .query(&mut c)
        .unwrap();
    let len: u64 = cmd("QLEN").arg("m").query(&mut c).unwrap();
    assert_eq!(len, admitted - 10 + 1);
}

/// What a put counts toward `--max-memory` its get counts out again,
/// whatever order key it carries: a fifo keeps none (the count once
/// climbed by the key's length with every message, up to 64 KiB each).
#[test]
fn the_memory_count_comes_back_after_puts_and_gets() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = cmd("QCREATE").arg("f").query(&mut c).unwrap();
    let _: () = cmd("QCREATE")
        .arg("p")
        .arg("KIND")
        .arg("priority")
        .query(&mut c)
        .unwrap();
    let before = common::info_field(&mut c, "queued_memory");
    let key = vec![b'k'; 60_000];
    for q in ["f", "p"] {
        for i in 0..50 {
            let _: u64 = cmd("QPUT")
                .arg(q)
                .arg("x")
                .arg("PRIOKEY")
                .arg(&key)
                .query(&mut c)
                .unwrap();
            let _: u64 = cmd("QPUT").arg(q).arg(i).query(&mut c).unwrap();
        }
        let _: Vec<Entry> = cmd("QGET")
            .arg(q)
            .arg("COUNT")
            .arg(100)
            .arg("NOACK")
            .query(&mut c)
            .unwrap();
        assert_eq!(common::qinfo(&mut c, q, "qsize"), 0);
    }
    assert_eq!(common::info_field(&mut c, "queued_memory"), before);
}

/// DEDUP keys and puts waiting for room are memory too: a DEDUP key is at
/// most 256 bytes and counts while it is kept, a waiting put counts while
/// it waits, and a put is checked with its own size.
#[test]
fn dedup_keys_and_waiting_puts_count_toward_max_memory() {
    let s = Server::start_with(&["--max-memory", "256kb"]);
    let mut c = s.conn();
    let long: redis::RedisResult<u64> = cmd("QPUT")
        .arg("d")
        .arg("x")
        .arg("DEDUP")
        .arg(vec![b'k'; 257])
        .query(&mut c);
    assert!(long.unwrap_err().to_string().contains("at most 256"));
    let _: () = cmd("QCREATE").arg("d").query(&mut c).unwrap();
    let _: () = cmd("QCREATE")
        .arg("w")
        .arg("MAXSIZE")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let before = common::info_field(&mut c, "queued_memory");
    let _: u64 = cmd("QPUT")
        .arg("d")
        .arg("x")
        .arg("DEDUP")
        .arg(vec![b'k'; 200])
        .query(&mut c)
        .unwrap();
    let _: Vec<Entry> = cmd("QGET").arg("d").arg("NOACK").query(&mut c).unwrap();
    let kept = common::info_field(&mut c, "queued_memory");
    assert!(
        kept >= before + 200,
        "a DEDUP key counts while kept: {before} -> {kept}"
    );

    // A put waits for room in `w`; its 100 KB count while it waits.
    let _: u64 = cmd("QPUT").arg("w").arg("first").query(&mut c).unwrap();
    let mut waiter = s.raw();
    let mut put = b"*3\r\n$4\r\nQPUT\r\n$1\r\nw\r\n$100000\r\n".to_vec();
    put.extend_from_slice(&[b'p'; 100_000]);
    put.extend_from_slice(b"\r\n");
    waiter.send(&put);
    common::wait_for_waiters(&mut c, "w", "waiting_putters", 1);
    assert!(common::info_field(&mut c, "queued_memory") >= kept + 100_000);
    // 160 KB more would pass 256 KB with the waiting put's 100 KB; and
    // one request cannot overshoot the limit by its own size.
    let refused: redis::RedisResult<u64> =
        cmd("QPUT").arg("d").arg(vec![b'p'; 160_000]).query(&mut c);
    assert_eq!(refused.unwrap_err().code(), Some("OOM"));
    let _: Vec<Entry> = cmd("QGET").arg("w").arg("NOACK").query(&mut c).unwrap();
    assert!(waiter.reply().starts_with(':'));
    let _: Vec<Entry> = cmd("QGET").arg("w").arg("NOACK").query(&mut c).unwrap();
    let big: redis::RedisResult<u64> = cmd("QPUT").arg("d").arg(vec![b'p'; 300_000]).query(&mut c);
    assert_eq!(
        big.unwrap_err().code(),
        Some("OOM"),
        "one put past the limit"
    );
    let _: u64 = cmd("QPUT")
        .arg("d")
        .arg(vec![b'p'; 100_000])
        .query(&mut c)
        .unwrap();
}

/// A queue costs memory too: under `--max-memory`, a client cannot make
/// queues without end (200,000 QCREATEs of long names took 360 MB); the
/// ones made go on working, and a drop makes room.
#[test]
fn queues_count_toward_max_memory() {
    let s = Server::start_with(&["--max-memory", "64kb"]);
    let mut c = s.conn();
    let mut made = 0u64;
    let err = loop {
        match cmd("QCREATE").arg(format!("q{made}")).query::<()>(&mut c) {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 1000, "the limit never applied");
    };
    assert_eq!(err.code(), Some("OOM"), "{err}");
    assert!((20..=32).contains(&made), "{made} queues under 64 kB");
    let refused: redis::RedisResult<Option<Vec<Entry>>> =
        cmd("QGET").arg("another").arg("NOWAIT").query(&mut c);
    assert_eq!(refused.unwrap_err().code(), Some("OOM"));
    let len: u64 = cmd("QLEN").arg("q0").query(&mut c).unwrap();
    assert_eq!(len, 0);
    let _: () = cmd("QDROP").arg("q0").query(&mut c).unwrap();
    let _: () = cmd("QCREATE").arg("another").query(&mut c).unwrap();

    // Without the flag, half the machine's memory (or its cgroup's).
    let total: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let d = Server::start();
    let mut c = d.conn();
    assert_eq!(
        common::info_field(&mut c, "max_memory"),
        total.min(cgroup) / 2
    );
}

#[test]
fn settings_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, "requirepass = \"from-file\"\nmax_clients = 50\n").unwrap();
    let start = |env: &[(&str, &str)], extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--port", "0", "--config", file.to_str().unwrap()])
            .args(extra)
            .envs(env.iter().copied())
            // Its default data directory, ./ferry-data, in the temp dir.
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        (child, port)
    };
    let auth = |port: u16, pass: &str| {
        let mut raw = common::Raw(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        raw.cmd(&["AUTH", pass])
    };
    for (env, extra, want) in [
        (vec![], vec![], "from-file"),
        (vec![("FERRY_REQUIREPASS", "from-env")], vec![], "from-env"),
        (
            vec![("FERRY_REQUIREPASS", "from-env")],
            vec!["--requirepass", "from-flag"],
            "from-flag",
        ),
    ] {
        let (mut child, port) = start(&env, &extra);
        assert_eq!(auth(port, want), "+OK\r\n", "{env:?} {extra:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--port", "0", "--durability", "eventually"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--durability must be async, sync or memory")
    );
}

/// CLIENT UNBLOCK (as Redis has it) ends another client's blocking
/// command: as a timeout, or with -UNBLOCKED.
#[test]
fn client_unblock_ends_a_wait_from_another_connection() {
    let s = Server::start();
    let mut waiter = s.raw();
    let id = waiter.cmd(&["CLIENT", "ID"]);
    let id = id.trim().trim_start_matches(':').to_string();
    let mut c = s.conn();
    for (how, want) in [
        ("TIMEOUT", "*-1\r\n"),
        (
            "ERROR",
            "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
        ),
    ] {
        waiter.send(b"QGET q TIMEOUT 0\r\n");
        common::wait_for_waiters(&mut c, "q", "waiting_getters", 1);
        let n: i64 = cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(&id)
            .arg(how)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(waiter.reply(), want);
        assert_eq!(common::qinfo(&mut c, "q", "waiting_getters"), 0);
    }
    let n: i64 = cmd("CLIENT").arg("UNBLOCK").arg(&id).query(&mut c).unwrap();
    assert_eq!(n, 0, "a client that is not blocked");
    // Its connection is as good as before.
    assert_eq!(waiter.cmd(&["PING"]), "+PONG\r\n");
}

/// A queue made with EXPIRE goes away once nobody used it for that long —
/// unless someone waits in it or holds its messages. QREOPEN undoes a
/// shutdown.
#[test]
fn idle_queues_expire_and_shut_down_queues_reopen() {
    let s = Server::start();
    let mut c = s.conn();
    for q in ["idle", "busy"] {
        let _: () = cmd("QCREATE")
            .arg(q)
            .arg("EXPIRE")
            .arg(200)
            .query(&mut c)
            .unwrap();
        let _: u64 = cmd("QPUT").arg(q).arg("left over").query(&mut c).unwrap();
    }
    assert_eq!(common::qinfo(&mut c, "idle", "expire"), 200);
    // Someone holds busy's message (and waits for more).
    let mut holder = s.conn();
    let _: Vec<Entry> = cmd("QGET").arg("busy").query(&mut holder).unwrap();
    common::wait_until("the idle queue to expire", || {
        let names: Vec<String> = cmd("QLIST").query(&mut c).unwrap();
        !names.contains(&"idle".to_string())
    });
    let names: Vec<String> = cmd("QLIST").query(&mut c).unwrap();
    assert!(
        names.contains(&"busy".to_string()),
        "busy is held: {names:?}"
    );

    let _: () = cmd("QSHUTDOWN").arg("r").query(&mut c).unwrap();
    let refused: redis::RedisResult<u64> = cmd("QPUT").arg("r").arg("x").query(&mut c);
    assert_eq!(refused.unwrap_err().code(), Some("SHUTDOWN"));
    let _: () = cmd("QREOPEN").arg("r").query(&mut c).unwrap();
    let _: u64 = cmd("QPUT").arg("r").arg("x").query(&mut c).unwrap();
    let missing: redis::RedisResult<()> = cmd("QREOPEN").arg("nope").query(&mut c);
    assert_eq!(missing.unwrap_err().code(), Some("NOQUEUE"));
}

#[test]
fn protected_mode_refuses_to_listen_beyond_loopback_without_a_password() {
    // Refused before anything listens: nothing binds beyond loopback here.
    for flags in [
        &["--bind", "0.0.0.0"][..],
        &["--bind", "::"],
        &["--http", "0.0.0.0:0"],
        &["--bind", "0.0.0.0", "--requirepass", ""],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--port", "0", "--data-dir"])
            .arg(dir.path())
            .args(flags)
            .env_remove("FERRY_REQUIREPASS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains("protected mode"), "{err}");
        assert!(err.contains("--requirepass"), "{err}");
        assert!(o.stdout.is_empty(), "nothing listened");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the data directory is untouched"
        );
    }
}

/// A dropped queue's memory is let go of at once, even for messages still
/// out on timed leases (no QDONE can reach them by name any more).
#[test]
fn a_drop_lets_go_of_timed_leases_memory() {
    let s = Server::start();
    let mut c = s.conn();
    let before = common::info_field(&mut c, "queued_memory");
    for i in 0..10 {
        let _: u64 = cmd("QPUT")
            .arg("gone")
            .arg(vec![b'x'; 10_000 + i])
            .query(&mut c)
            .unwrap();
    }
    let _: Vec<Entry> = cmd("QGET")
        .arg("gone")
        .arg("COUNT")
        .arg(5)
        .arg("LEASE")
        .arg(60_000)
        .query(&mut c)
        .unwrap();
    assert!(common::info_field(&mut c, "queued_memory") > before + 100_000);
    let _: () = cmd("QDROP").arg("gone").query(&mut c).unwrap();
    assert_eq!(common::info_field(&mut c, "queued_memory"), before);
}

/// Fencing tokens keep growing across a restart (the lock table lives in
/// memory): a resource that saw a holder's token before the restart must
/// not see a smaller one from the next holder.
#[test]
fn lock_and_semaphore_tokens_grow_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let grant = |s: &Server, cmd: &[&str]| -> u64 {
        let reply = s.raw().cmd(cmd);
        reply[1..]
            .trim_end()
            .parse()
            .unwrap_or_else(|_| panic!("{reply}"))
    };
    let before = {
        let s = Server::start_at(dir.path(), &[]);
        (
            grant(&s, &["LOCK", "l", "NOWAIT"]),
            grant(&s, &["SEMACQUIRE", "s", "NOWAIT"]),
        )
    };
    let s = Server::start_at(dir.path(), &[]);
    let after = (
        grant(&s, &["LOCK", "l", "NOWAIT"]),
        grant(&s, &["SEMACQUIRE", "s", "NOWAIT"]),
    );
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} then {after:?}"
    );
}
