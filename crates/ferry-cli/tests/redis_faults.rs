//! The Redis engine when Redis misbehaves: a primary without replicas
//! under `?wait=N`, waiters that die, holders that stop. Each test starts
//! its own redis-server (or cluster) on loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};

use common::{Engine, RedisCluster, RedisServer};
use std::time::Duration;

use ferry_client::{Client, Error, Message, Value};

/// `ferry get` on `url`, waiting up to a minute, its output piped.
fn getter(url: &str, queue: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["get", queue, "--timeout", "60", "--url", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A getter killed (-9) while it waits, then a live one waits, then one
/// put: the live getter gets it, delivered once, no attempt counted — a
/// getter in line is offered what comes, and a dead one never claims it
/// (before: the dead getter's place swallowed the message, counted as
/// delivered; with MAXATTEMPTS 1 it went to the dead-letter queue never
/// delivered, and the live getter waited on).
fn a_killed_waiter_swallows_nothing(e: &Engine) {
    // The default lease (30 s): a swallowed message would not come back
    // within the live getter's minute... but its dead letter would.
    let url = e.url().replace("lease=1000", "lease=30000");
    let mut c = Client::connect(&url).unwrap();
    c.call(&[b"QCREATE", b"q", b"MAXATTEMPTS", b"1", b"DEADLETTER", b"q2"])
        .unwrap();
    let mut dead = getter(&url, "q");
    common::wait_until("the first getter in line", || {
        e.info("q", "waiting_getters") == 1
    });
    dead.kill().unwrap();
    dead.wait().unwrap();
    let live = getter(&url, "q");
    // The dead getter's place lasts until its renewal is overdue: both
    // count until then.
    common::wait_until("the second getter in line", || {
        e.info("q", "waiting_getters") == 2
    });
    c.put("q", b"the one message").unwrap();
    let out = live.wait_with_output().unwrap();
    assert!(out.status.success(), "the live getter got nothing");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the one message\n");
    assert_eq!(e.info("q", "delivered"), 1);
    assert_eq!(e.info("q", "redelivered"), 0);
    assert_eq!(e.info("q", "dead_lettered"), 0);
    assert_eq!(e.info("q2", "qsize"), 0);
}

#[test]
fn on_redis_a_killed_waiter_swallows_nothing() {
    a_killed_waiter_swallows_nothing(&Engine::Redis(RedisServer::start()));
}

#[test]
fn on_cluster_a_killed_waiter_swallows_nothing() {
    a_killed_waiter_swallows_nothing(&Engine::Cluster(RedisCluster::start(3, 0)));
}

/// `?wait=1` on a server with no replica (a promoted replica whose own
/// replica is gone): puts fail with NOREPLICAS — their loss in a failover
/// is what the caller asked to be told of — but every other command
/// serves, so consumers drain what is already stored.
#[test]
fn with_wait_a_primary_without_replicas_still_serves_gets_and_dones() {
    let r = RedisServer::start();
    let plain = format!("redis://127.0.0.1:{}?lease=5000", r.port);
    let mut p = Client::connect(&plain).unwrap();
    for i in 0..3 {
        p.put("stored", format!("m{i}").as_bytes()).unwrap();
    }
    let mut c = Client::connect(&format!("{plain}&wait=1")).unwrap();
    // Python's Queue() opens with QCREATE.
    c.call(&[b"QCREATE", b"stored"]).unwrap();
    let m = c.get("stored").unwrap();
    assert_eq!(m.payload, b"m0");
    c.task_done("stored", m.id).unwrap();
    let m = c.get("stored").unwrap();
    c.nack("stored", m.id).unwrap();
    let m = c.get("stored").unwrap();
    assert_eq!((m.payload.as_slice(), m.attempts), (&b"m1"[..], 1));
    c.task_done("stored", m.id).unwrap();
    assert_eq!(c.qsize("stored").unwrap(), 1);
    match c.put("stored", b"unconfirmed") {
        Err(Error::Server { code, .. }) => assert_eq!(code, "NOREPLICAS"),
        other => panic!("a put no replica confirmed: {other:?}"),
    }
}

/// A consumer killed (-9) mid-task: its message comes back when its
/// process's heartbeat is overdue — 5 s at the defaults, where it was the
/// 30 s lease — with one more attempt. (A live slow consumer keeps it:
/// backends.rs `a_living_holder_keeps_its_message_past_the_lease_time`.)
#[test]
fn a_dead_consumer_s_message_comes_back_after_its_heartbeat() {
    let r = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", r.port);
    let mut c = Client::connect(&url).unwrap();
    let id = c.put("work", b"long task").unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["worker", "work", "--", "sleep", "600"])
        .env("FERRY_URL", &url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let e = Engine::Redis(r);
    common::wait_until("the worker to hold it", || e.info("work", "leased") == 1);
    worker.kill().unwrap();
    worker.wait().unwrap();
    let killed = std::time::Instant::now();
    let m = c
        .get_timeout("work", std::time::Duration::from_secs(20))
        .unwrap();
    eprintln!("came back {:?} after the kill", killed.elapsed());
    assert_eq!((m.id, m.attempts), (id, 1));
    c.task_done("work", m.id).unwrap();
    assert_eq!(e.info("work", "expired"), 1);
}

/// A lock holder whose Redis stops answering (SIGSTOP) cannot renew: once
/// the lock could have run out (its heartbeat, 1 s here), `ferry lock`
/// ends its command and exits 5 — before, it ran on, unaware, while the
/// next `ferry lock` acquired the same lock (two holders).
#[test]
fn a_lock_holder_whose_redis_stops_is_told() {
    let r = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}?lease=1000", r.port);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let work = format!(
        "echo start >> {0}; sleep 60; echo finished >> {0}",
        log.display()
    );
    let first = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["lock", "L1", "--url", &url, "--", "sh", "-c", &work])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until("the holder to start", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("start"))
    });
    r.signal("-STOP");
    let o = first.wait_with_output().unwrap();
    r.signal("-CONT");
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The lock ran out on the server; the next holder gets it.
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["lock", "L1", "--timeout", "30", "--url", &url, "--"])
        .args(["sh", "-c", &format!("echo second >> {}", log.display())])
        .output()
        .unwrap();
    assert!(o.status.success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log, "start\nsecond\n",
        "the first never finished beside the second"
    );
}

/// The keys of `queue` on `r`, and each one's PTTL (-1: none).
fn keys_of(r: &RedisServer, queue: &str) -> Vec<(String, i64)> {
    let mut c = r.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("ferry:{{{queue}}}:*"))
        .query(&mut c)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
            (k, ttl)
        })
        .collect()
}

/// Keys that go away: getters killed in line leave no entries once their
/// wait could have ended (before: `gline`/`greq` kept them, with no TTL);
/// a queue made by first use and left empty has a TTL on every key (10
/// minutes) — before, 4 keys for good per queue ever named — while one
/// made by QCREATE stays, as on the broker.
#[test]
fn dead_waiters_and_idle_queues_leave_no_keys() {
    let r = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", r.port);
    let mut c = Client::connect(&url).unwrap();
    c.call(&[b"QCREATE", b"made"]).unwrap();
    let e = Engine::Redis(r);
    let mut getters: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["get", "made", "--timeout", "2", "--url", &url])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    common::wait_until("three getters in line", || {
        e.info("made", "waiting_getters") == 3
    });
    for g in &mut getters {
        g.kill().unwrap();
        g.wait().unwrap();
    }
    let Engine::Redis(r) = &e else { unreachable!() };
    common::wait_until("the dead getters' entries to go", || {
        keys_of(r, "made")
            .iter()
            .all(|(k, _)| !k.ends_with(":gline") && !k.ends_with(":greq"))
    });
    // Made by QCREATE: its keys stay.
    assert!(
        keys_of(r, "made")
            .iter()
            .any(|(k, ttl)| k.ends_with(":m") && *ttl == -1)
    );

    // Made by first use, used once, left empty: every key goes by itself.
    let id = c.put("once", b"x").unwrap();
    let m = c.get("once").unwrap();
    assert_eq!(m.id, id);
    c.task_done("once", id).unwrap();
    let keys = keys_of(r, "once");
    assert!(!keys.is_empty());
    for (k, ttl) in &keys {
        assert!(*ttl > 0 && *ttl <= 600_000, "{k} has PTTL {ttl}");
    }
    // Named again with a message in it: it stays while it holds one.
    c.put("once", b"y").unwrap();
    for (k, ttl) in keys_of(r, "once") {
        assert!(
            ttl == -1 || !k.ends_with(":m"),
            "{k} would expire holding a message"
        );
    }
}

/// One line of MONITOR's output: who ran it ("lua" for a script's own
/// commands) and its arguments, unquoted.
fn monitored(line: &str) -> Option<(String, Vec<String>)> {
    let start = line.find(" [")?;
    let end = start + line[start..].find("] ")?;
    let who = line[start + 2..end].split(' ').nth(1)?.to_string();
    let mut args = Vec::new();
    let mut chars = line[end + 2..].chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next()? {
                    'x' => {
                        let hex: String = chars.by_ref().take(2).collect();
                        arg.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                    }
                    'n' => arg.push('\n'),
                    'r' => arg.push('\r'),
                    't' => arg.push('\t'),
                    c => arg.push(c),
                },
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    Some((who, args))
}

/// Every command a script runs touches only keys its FCALL declared
/// (Redis asks it of scripts, Cluster relies on it, and proxies such as
/// Dragonfly refuse the rest), through every path that ends a wait: a
/// getter offered a put, a putter let in from a full queue's line (with a
/// DEDUP key, which still holds after), a joiner, a lock's next holder, a
/// queue dropped under its waiters, a wait that times out. Read from
/// MONITOR. Before: mail went to each waiter's own list, and a put let in
/// from the line wrote its DEDUP key, neither of them declared.
#[test]
fn every_script_touches_only_the_keys_it_declares() {
    use std::io::{BufRead, BufReader, Write};
    let r = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", r.port);
    let mut mon = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    mon.write_all(b"MONITOR\r\n").unwrap();
    let reader = BufReader::new(mon.try_clone().unwrap());
    let lines = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in reader.lines() {
            let line = line.unwrap();
            let end = line.contains("\"ferry-monitor-end\"");
            lines.push(line);
            if end {
                break;
            }
        }
        lines
    });
    let e = Engine::Redis(r);
    let mut c = Client::connect(&url).unwrap();
    let waiting = |args: Vec<&'static str>| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&url).unwrap();
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            c.call(&args)
        })
    };

    // A getter in line, offered a put.
    let getter = waiting(vec!["QGET", "g", "TIMEOUT", "20000"]);
    common::wait_until("a getter in line", || e.info("g", "waiting_getters") == 1);
    let id = c.put("g", b"m").unwrap();
    let got = Message::from_reply(getter.join().unwrap().unwrap()).unwrap();
    assert_eq!(got[0].id, id);

    // A joiner, told once the message is done.
    let joiner = waiting(vec!["QJOIN", "g", "TIMEOUT", "20000"]);
    common::wait_until("a joiner", || e.info("g", "waiting_joiners") == 1);
    let mut holder = Client::connect(&url).unwrap();
    // (The getter's client is gone: its lease came back; finish it here.)
    let m = holder.get_timeout("g", Duration::from_secs(20)).unwrap();
    holder.task_done("g", m.id).unwrap();
    assert_eq!(joiner.join().unwrap().unwrap(), Value::Simple("OK".into()));

    // A putter in a full queue's line, let in by a get; its DEDUP key
    // holds after.
    c.call(&[b"QCREATE", b"p", b"MAXSIZE", b"1"]).unwrap();
    c.put("p", b"first").unwrap();
    let putter = waiting(vec![
        "QPUT", "p", "second", "DEDUP", "k1", "TIMEOUT", "20000",
    ]);
    common::wait_until("a putter in line", || e.info("p", "waiting_putters") == 1);
    let first = c.get("p").unwrap();
    let Value::Int(second) = putter.join().unwrap().unwrap() else {
        panic!("a put replies its id")
    };
    c.task_done("p", first.id).unwrap();
    let again = c.call(&[b"QPUT", b"p", b"second", b"DEDUP", b"k1", b"NOWAIT"]);
    assert_eq!(again.unwrap(), Value::Int(second), "its DEDUP key holds");

    // A lock's next holder.
    let token = c
        .lock("L", Some(Duration::from_secs(30)), None)
        .unwrap()
        .unwrap();
    let locker = waiting(vec!["LOCK", "L", "TIMEOUT", "20000"]);
    common::wait_until("a locker in line", || {
        let Ok(Value::Bulk(info)) = c.call(&[b"INFO"]) else {
            return false;
        };
        String::from_utf8_lossy(&info).contains("lock_waiters:1")
    });
    assert!(c.unlock("L", token).unwrap());
    assert!(matches!(locker.join().unwrap().unwrap(), Value::Int(t) if t as u64 > token));

    // A queue dropped under its getter; a wait that times out.
    let dropped = waiting(vec!["QGET", "d", "TIMEOUT", "20000"]);
    common::wait_until("a getter of d", || e.info("d", "waiting_getters") == 1);
    c.call(&[b"QDROP", b"d"]).unwrap();
    assert!(matches!(dropped.join().unwrap(), Err(Error::ShutDown)));
    assert_eq!(
        c.call(&[b"QGET", b"t", b"TIMEOUT", b"50"]).unwrap(),
        Value::Nil
    );

    let Engine::Redis(r) = &e else { unreachable!() };
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    raw.write_all(b"ECHO ferry-monitor-end\r\n").unwrap();
    let lines = lines.join().unwrap();
    let mut declared: Vec<String> = Vec::new();
    let (mut scripts, mut checked) = (0, 0);
    for line in &lines {
        let Some((who, args)) = monitored(line) else {
            continue;
        };
        let Some(cmd) = args.first().map(|a| a.to_ascii_uppercase()) else {
            continue;
        };
        if who != "lua" {
            if cmd == "FCALL" {
                let n: usize = args[2].parse().unwrap();
                declared = args[3..3 + n].to_vec();
                scripts += 1;
            }
            continue;
        }
        let keys = match cmd.as_str() {
            "TIME" | "PUBLISH" => continue,
            "DEL" | "EXISTS" => &args[1..],
            _ => &args[1..2],
        };
        for k in keys {
            assert!(
                declared.contains(k),
                "a script touched {k} undeclared: {line}\n(declared {declared:?})"
            );
            checked += 1;
        }
    }
    assert!(
        scripts > 20 && checked > 200,
        "{scripts} scripts, {checked} keys"
    );
}
