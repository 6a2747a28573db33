//! The Redis engine when Redis misbehaves: a primary without replicas
//! under `?wait=N`, waiters that die, holders that stop. Each test starts
//! its own redis-server (or cluster) on loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};

use common::{Engine, RedisCluster, RedisServer};
use ferry_client::{Client, Error};

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
