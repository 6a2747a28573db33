//! The same semantics on every engine: each test runs against ferry's
//! broker, a redis-server (the `redis://` backend) and a Redis Cluster of
//! three primaries (`redis+cluster://`), each started here on loopback
//! ports, the URL the only difference. The Rust client, the CLI verbs and `ferry worker`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Engine;
use ferry_client::{Client, Error};

on_every_engine!(
    put_get_task_done_as_python_counts,
    a_dropped_consumer_s_message_comes_back_with_one_more_attempt,
    a_living_holder_keeps_its_message_past_the_lease_time,
    a_waiting_get_is_handed_the_next_put_first_come_first_served,
    a_waiting_put_goes_in_when_room_comes,
    join_waits_for_another_client_s_task_done,
    shutdown_as_python_3_13,
    kinds_order_exactly,
    given_back_due_and_fresh_serve_in_order,
    a_get_on_several_queues_waits_without_polling,
    delays_nacks_touches_and_dead_letters,
    take_noack_and_dedup,
    a_batch_behaves_as_its_messages,
    locks_hand_over_with_larger_tokens,
    the_cli_verbs_work,
    ferry_worker_does_every_task_once,
    an_idle_queue_with_expire_goes,
);

fn put_get_task_done_as_python_counts(e: &Engine) {
    let mut c = e.client();
    c.call(&[b"QCREATE", b"jobs", b"MAXSIZE", b"2"]).unwrap();
    assert!(c.empty("jobs").unwrap());
    let a = c.put("jobs", b"a").unwrap();
    c.put_nowait("jobs", b"b").unwrap();
    assert!(c.full("jobs").unwrap());
    assert!(matches!(c.put_nowait("jobs", b"c"), Err(Error::Full)));
    let t = Instant::now();
    assert!(matches!(
        c.put_timeout("jobs", b"c", Duration::from_millis(50)),
        Err(Error::Full)
    ));
    assert!(t.elapsed() >= Duration::from_millis(50), "never early");
    assert_eq!(c.qsize("jobs").unwrap(), 2);
    let m = c.get("jobs").unwrap();
    assert_eq!(
        (m.queue.as_str(), m.id, m.payload.as_slice(), m.attempts),
        ("jobs", a, &b"a"[..], 0)
    );
    c.task_done("jobs", m.id).unwrap();
    assert!(matches!(c.task_done("jobs", m.id), Err(Error::NotLeased)));
    assert_eq!(c.unfinished("jobs").unwrap(), 1);
    let m = c.get_nowait("jobs").unwrap();
    c.task_done("jobs", m.id).unwrap();
    assert!(matches!(c.get_nowait("jobs"), Err(Error::Empty)));
    let t = Instant::now();
    assert!(matches!(
        c.get_timeout("jobs", Duration::from_millis(60)),
        Err(Error::Empty)
    ));
    assert!(t.elapsed() >= Duration::from_millis(60), "never early");
    c.join("jobs").unwrap();
    // QCREATE names what differs.
    match c.call(&[b"QCREATE", b"jobs", b"MAXSIZE", b"5"]) {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, "EXISTS");
            assert!(message.contains("maxsize 2, not 5"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

fn a_dropped_consumer_s_message_comes_back_with_one_more_attempt(e: &Engine) {
    let mut producer = e.client();
    let id = producer.put("w", b"job").unwrap();
    {
        let mut dying = e.client();
        assert_eq!(dying.get("w").unwrap().id, id);
    }
    let mut other = e.client();
    let m = other.get_timeout("w", Duration::from_secs(10)).unwrap();
    assert_eq!((m.id, m.attempts), (id, 1));
    assert!(matches!(producer.task_done("w", id), Err(Error::NotLeased)));
    other.task_done("w", id).unwrap();
    assert_eq!(e.info("w", "released") + e.info("w", "expired"), 1);
}

/// On Redis every lease is timed (1 s in these tests) and renewed by the
/// holder's process from its first get on: a message worked on for longer
/// stays its own, all the while.
fn a_living_holder_keeps_its_message_past_the_lease_time(e: &Engine) {
    let mut holder = e.client();
    let id = holder.put("slow", b"job").unwrap();
    assert_eq!(holder.get("slow").unwrap().id, id);
    let mut other = e.client();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        match other.get_timeout("slow", Duration::from_millis(100)) {
            Err(Error::Empty) => {}
            other => panic!("after {:?}: {other:?}", t.elapsed()),
        }
    }
    holder.task_done("slow", id).unwrap();
    assert_eq!(e.info("slow", "expired") + e.info("slow", "redelivered"), 0);
}

fn a_waiting_get_is_handed_the_next_put_first_come_first_served(e: &Engine) {
    let url = e.url();
    let mut getters = Vec::new();
    for i in 0..3 {
        let url = url.clone();
        getters.push(thread::spawn(move || {
            let mut c = Client::connect(&url).unwrap();
            let m = c.get_timeout("line", Duration::from_secs(30)).unwrap();
            c.task_done("line", m.id).unwrap();
            (i, m.payload)
        }));
        // In line one after the other.
        common::wait_until("the getter in line", || {
            e.info("line", "waiting_getters") == i + 1
        });
    }
    let mut p = e.client();
    for payload in [b"first", b"secon", b"third"] {
        p.put("line", payload).unwrap();
    }
    let got: Vec<(i64, Vec<u8>)> = getters.into_iter().map(|g| g.join().unwrap()).collect();
    assert_eq!(
        got,
        vec![
            (0, b"first".to_vec()),
            (1, b"secon".to_vec()),
            (2, b"third".to_vec())
        ],
        "the first in line gets the first message"
    );
    p.join("line").unwrap();
}

fn a_waiting_put_goes_in_when_room_comes(e: &Engine) {
    let mut c = e.client();
    c.call(&[b"QCREATE", b"room", b"MAXSIZE", b"1"]).unwrap();
    c.put("room", b"1").unwrap();
    let url = e.url();
    let putter = thread::spawn(move || Client::connect(&url).unwrap().put("room", b"2").unwrap());
    common::wait_until("the put waiting", || e.info("room", "waiting_putters") == 1);
    let m = c.get("room").unwrap();
    c.task_done("room", m.id).unwrap();
    // The get made room, and the waiting put took it in the same step.
    let id = putter.join().unwrap();
    assert_eq!(c.get_nowait("room").unwrap().id, id);
}

fn join_waits_for_another_client_s_task_done(e: &Engine) {
    let mut c = e.client();
    c.put_many("j", &[&b"1"[..], b"2", b"3"]).unwrap();
    let url = e.url();
    let (got, finish) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let worker = thread::spawn(move || {
        let mut w = Client::connect(&url).unwrap();
        let batch = w.get_many("j", 10, Some(Duration::from_secs(5))).unwrap();
        got.0.send(batch.len()).unwrap();
        finish.1.recv().unwrap();
        for m in &batch {
            w.task_done("j", m.id).unwrap();
        }
    });
    assert_eq!(got.1.recv().unwrap(), 3);
    assert!(!c.join_timeout("j", Duration::from_millis(20)).unwrap());
    assert_eq!(c.unfinished("j").unwrap(), 3);
    finish.0.send(()).unwrap();
    c.join("j").unwrap();
    worker.join().unwrap();
}

fn shutdown_as_python_3_13(e: &Engine) {
    let mut c = e.client();
    c.put("q", b"last").unwrap();
    let url = e.url();
    let waiting = thread::spawn(move || {
        let mut w = Client::connect(&url).unwrap();
        let first = w.get("q2");
        (first.map(|m| m.id), w)
    });
    common::wait_until("a getter waiting", || e.info("q2", "waiting_getters") == 1);
    c.shutdown("q2", false).unwrap();
    let (r, _w) = waiting.join().unwrap();
    assert!(matches!(r, Err(Error::ShutDown)), "a waiting get is told");
    c.shutdown("q", false).unwrap();
    assert!(matches!(c.put("q", b"late"), Err(Error::ShutDown)));
    let m = c.get("q").unwrap();
    assert_eq!(m.payload, b"last");
    assert!(matches!(c.get("q"), Err(Error::ShutDown)));
    c.task_done("q", m.id).unwrap();
    c.call(&[b"QREOPEN", b"q"]).unwrap();
    c.put("q", b"again").unwrap();
}

fn kinds_order_exactly(e: &Engine) {
    let mut c = e.client();
    c.call(&[b"QCREATE", b"pq", b"KIND", b"priority"]).unwrap();
    c.call(&[b"QCREATE", b"lq", b"KIND", b"lifo"]).unwrap();
    // Keys that differ only past a zero byte, and a prefix of another.
    let keys: [&[u8]; 5] = [b"b", b"a\x00\x01", b"a", b"a\x00", b"ab"];
    for (i, k) in keys.iter().enumerate() {
        c.call(&[b"QPUT", b"pq", format!("{i}").as_bytes(), b"PRIOKEY", k])
            .unwrap();
        c.put("lq", format!("{i}").as_bytes()).unwrap();
    }
    // Equal keys: first in, first out.
    c.call(&[b"QPUT", b"pq", b"5", b"PRIOKEY", b"a"]).unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        let m = c.get_nowait("pq").unwrap();
        order.push(String::from_utf8(m.payload).unwrap());
        c.task_done("pq", m.id).unwrap();
    }
    assert_eq!(order, ["2", "5", "3", "1", "4", "0"]);
    let mut order = Vec::new();
    for _ in 0..5 {
        let m = c.get_nowait("lq").unwrap();
        order.push(String::from_utf8(m.payload).unwrap());
        c.task_done("lq", m.id).unwrap();
    }
    assert_eq!(order, ["4", "3", "2", "1", "0"]);
}

/// Given back, come due and fresh messages in one fifo and one lifo
/// queue: the order they are served in, as ferry-core's Ready orders
/// them.
fn given_back_due_and_fresh_serve_in_order(e: &Engine) {
    let mut c = e.client();
    let mut orders = Vec::new();
    for kind in ["fifo", "lifo"] {
        let q = format!("mix-{kind}");
        c.call(&[b"QCREATE", q.as_bytes(), b"KIND", kind.as_bytes()])
            .unwrap();
        for p in ["1", "2", "3"] {
            c.put(&q, p.as_bytes()).unwrap();
        }
        c.call(&[b"QPUT", q.as_bytes(), b"4", b"DELAY", b"100"])
            .unwrap();
        let first = c.get_nowait(&q).unwrap();
        c.nack(&q, first.id).unwrap();
        common::wait_until("the delayed one due", || e.info(&q, "delayed") == 0);
        c.put(&q, b"5").unwrap();
        let peeked = match c.call(&[b"QPEEK", q.as_bytes(), b"COUNT", b"10"]).unwrap() {
            ferry_client::Value::Array(entries) => entries.len(),
            other => panic!("QPEEK replied {other:?}"),
        };
        assert_eq!(peeked, 5);
        let mut order = vec![String::from_utf8(first.payload).unwrap()];
        for _ in 0..5 {
            let m = c.get_nowait(&q).unwrap();
            order.push(String::from_utf8(m.payload).unwrap());
            c.task_done(&q, m.id).unwrap();
        }
        orders.push(order.join(""));
    }
    // As the broker's Ready: fifo serves one given back first, and a
    // message that became ready (a put, a delay run out) at the back;
    // lifo pushes both on the top of the stack.
    assert_eq!(orders, ["112345", "354321"]);
    // Delayed messages that come due together: in id order (ids 9 to 12,
    // whose text orders "10" < "9").
    c.call(&[b"QCREATE", b"mix-due", b"KIND", b"fifo"]).unwrap();
    for _ in 0..8 {
        c.put("mix-due", b"-").unwrap();
    }
    for _ in 0..8 {
        let m = c.get_nowait("mix-due").unwrap();
        c.task_done("mix-due", m.id).unwrap();
    }
    c.call(&[
        b"QPUTMANY",
        b"mix-due",
        b"DELAY",
        b"50",
        b"PAYLOADS",
        b"a",
        b"b",
        b"c",
        b"d",
    ])
    .unwrap();
    common::wait_until("all due", || e.info("mix-due", "delayed") == 0);
    let mut order = String::new();
    for _ in 0..4 {
        let m = c.get_nowait("mix-due").unwrap();
        order.push_str(std::str::from_utf8(&m.payload).unwrap());
        c.task_done("mix-due", m.id).unwrap();
    }
    assert_eq!(order, "abcd");
}

/// FCALLs the Redis servers behind an engine have run (None: the broker).
fn fcalls(e: &Engine) -> Option<u64> {
    let nodes: Vec<&common::RedisServer> = match e {
        Engine::Ferry(_) => return None,
        Engine::Redis(r) => vec![r],
        Engine::Cluster(c) => c.nodes.iter().collect(),
    };
    let mut n = 0;
    for node in nodes {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut node.conn())
            .unwrap();
        n += stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(n)
}

/// QGET a OR b: waits on both, is woken by a put into either, and does
/// not poll while it waits (Redis: a handful of calls in a 1.5 s wait).
fn a_get_on_several_queues_waits_without_polling(e: &Engine) {
    // A lease of 30 s: its renewals (every 10 s, two calls per queue held)
    // add at most one round to the calls counted, where the tests' 1 s
    // lease would renew every 333 ms.
    let mut c = Client::connect(&e.url().replace("lease=1000", "lease=30000")).unwrap();
    for q in ["or-a", "or-b"] {
        c.call(&[b"QCREATE", q.as_bytes()]).unwrap();
    }
    let before = fcalls(e);
    let t = Instant::now();
    let r = c
        .call(&[b"QGET", b"or-a", b"OR", b"or-b", b"TIMEOUT", b"1500"])
        .unwrap();
    assert_eq!(r, ferry_client::Value::Nil);
    assert!(t.elapsed() >= Duration::from_millis(1500), "never early");
    if let (Some(before), Some(after)) = (before, fcalls(e)) {
        assert!(after - before <= 12, "{} calls in one wait", after - before);
    }
    let url = e.url();
    let getter = thread::spawn(move || {
        Client::connect(&url)
            .unwrap()
            .call(&[b"QGET", b"or-a", b"OR", b"or-b", b"TIMEOUT", b"30000"])
            .unwrap()
    });
    // The put may come before the getter waits, or while it does: either
    // way it gets it.
    c.put("or-b", b"to b").unwrap();
    let got = ferry_client::Message::from_reply(getter.join().unwrap()).unwrap();
    assert_eq!(
        (got[0].queue.as_str(), &got[0].payload[..]),
        ("or-b", &b"to b"[..])
    );
}

fn delays_nacks_touches_and_dead_letters(e: &Engine) {
    let mut c = e.client();
    // A delay: not before it, and not counted in qsize.
    c.call(&[b"QPUT", b"d", b"later", b"DELAY", b"200"])
        .unwrap();
    assert!(matches!(c.get_nowait("d"), Err(Error::Empty)));
    assert_eq!(e.info("d", "delayed"), 1);
    let t = Instant::now();
    let m = c.get_timeout("d", Duration::from_secs(5)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    // A nack: back first, one attempt more.
    c.put("d", b"behind").unwrap();
    c.nack("d", m.id).unwrap();
    let again = c.get_nowait("d").unwrap();
    assert_eq!((again.id, again.attempts), (m.id, 1));
    assert_eq!(
        (e.info("d", "delivered"), e.info("d", "redelivered")),
        (2, 1)
    );
    assert!(
        c.touch("d", again.id, Some(Duration::from_secs(60)))
            .is_ok()
    );
    c.task_done("d", again.id).unwrap();
    let other = c.get_nowait("d").unwrap();
    c.task_done("d", other.id).unwrap();
    // At max_attempts, a message is dead-lettered (moved to its queue,
    // with its attempts) and counts as finished.
    c.call(&[
        b"QCREATE",
        b"dl",
        b"MAXATTEMPTS",
        b"2",
        b"DEADLETTER",
        b"graveyard",
    ])
    .unwrap();
    let id = c.put("dl", b"poison").unwrap();
    for _ in 0..2 {
        let m = c.get_nowait("dl").unwrap();
        assert_eq!(m.id, id);
        c.nack("dl", m.id).unwrap();
    }
    assert!(matches!(c.get_nowait("dl"), Err(Error::Empty)));
    assert_eq!(e.info("dl", "dead_lettered"), 1);
    c.join("dl").unwrap();
    let dead = c.get_timeout("graveyard", Duration::from_secs(10)).unwrap();
    assert_eq!(
        (dead.payload.as_slice(), dead.attempts),
        (&b"poison"[..], 2)
    );
    // A prefetched item given back unused (UNSTARTED) counts no attempt,
    // so it is never dead-lettered for it.
    c.call(&[b"QCREATE", b"dl3", b"MAXATTEMPTS", b"1"]).unwrap();
    let id = c.put("dl3", b"kept").unwrap();
    for _ in 0..3 {
        let m = c.get_nowait("dl3").unwrap();
        assert_eq!((m.id, m.attempts), (id, 0));
        let id_s = m.id.to_string();
        c.call(&[b"QNACK", b"dl3", id_s.as_bytes(), b"UNSTARTED"])
            .unwrap();
    }
    assert_eq!(e.info("dl3", "dead_lettered"), 0);
    let m = c.get_nowait("dl3").unwrap();
    let id_s = m.id.to_string();
    let both = c.call(&[
        b"QNACK",
        b"dl3",
        id_s.as_bytes(),
        b"UNSTARTED",
        b"DELAY",
        b"5",
    ]);
    assert!(
        matches!(&both, Err(Error::Server { message, .. }) if message.contains("not both")),
        "{both:?}"
    );
    c.task_done("dl3", m.id).unwrap();
    c.join("dl3").unwrap();
    // Without a dead-letter queue, dropped and counted.
    c.call(&[b"QCREATE", b"dl2", b"MAXATTEMPTS", b"1"]).unwrap();
    c.put("dl2", b"gone").unwrap();
    let m = c.get_nowait("dl2").unwrap();
    c.nack("dl2", m.id).unwrap();
    assert_eq!(e.info("dl2", "dead_lettered"), 1);
    c.join("dl2").unwrap();
}

fn take_noack_and_dedup(e: &Engine) {
    let mut c = e.client();
    c.put_many("t", &[&b"1"[..], b"2"]).unwrap();
    let taken = c.call(&[b"QGET", b"t", b"TAKE"]).unwrap();
    assert_eq!(e.info("t", "taken"), 1);
    assert_eq!(e.info("t", "unfinished"), 2);
    c.call(&[b"QGET", b"t", b"NOACK"]).unwrap();
    assert_eq!(e.info("t", "unfinished"), 1, "NOACK finishes at once");
    let id = ferry_client::Message::from_reply(taken).unwrap()[0].id;
    c.task_done("t", id).unwrap();
    c.join("t").unwrap();
    let a = c.call(&[b"QPUT", b"dd", b"x", b"DEDUP", b"k1"]).unwrap();
    let b = c.call(&[b"QPUT", b"dd", b"x", b"DEDUP", b"k1"]).unwrap();
    assert_eq!(a, b, "a retried put adds nothing");
    assert_eq!(c.qsize("dd").unwrap(), 1);
    // DEDUPFOR: a key's own, shorter window (the client's own puts).
    let put = |c: &mut Client| {
        c.call(&[b"QPUT", b"dd", b"y", b"DEDUP", b"k2", b"DEDUPFOR", b"200"])
            .unwrap()
    };
    let t = Instant::now();
    let first = put(&mut c);
    assert_eq!(put(&mut c), first, "within its window");
    common::wait_until("the key's window to end", || put(&mut c) != first);
    // (Engines count whole milliseconds.)
    assert!(
        t.elapsed() >= Duration::from_millis(199),
        "not before: {:?}",
        t.elapsed()
    );
    assert!(matches!(
        c.call(&[b"QPUT", b"dd", b"z", b"DEDUPFOR", b"200"]),
        Err(Error::Server { .. })
    ));
    // Every put of the client carries a key of its own, with a window.
    let n = c.qsize("dd").unwrap();
    c.put("dd", b"w").unwrap();
    assert_eq!(c.qsize("dd").unwrap(), n + 1);
}

/// (id, payload, attempts) of each message a QGET replied.
fn got(c: &mut Client, args: &[&[u8]]) -> Vec<(u64, String, u32)> {
    let reply = c.call(args).unwrap();
    ferry_client::Message::from_reply(reply)
        .unwrap()
        .into_iter()
        .map(|m| (m.id, String::from_utf8(m.payload).unwrap(), m.attempts))
        .collect()
}

fn payloads(ms: &[(u64, String, u32)]) -> String {
    ms.iter().map(|m| m.1.as_str()).collect()
}

/// A batch put (which queue.lua keeps as one unit while it can) split by
/// smaller gets, finished in part, nacked, touched, expired, released,
/// taken, peeked, purged and shut down: every message as if put alone.
fn a_batch_behaves_as_its_messages(e: &Engine) {
    let mut c = e.client();
    let q = "runs";
    let ten: Vec<Vec<u8>> = (0..10).map(|i| i.to_string().into_bytes()).collect();
    let ten: Vec<&[u8]> = ten.iter().map(Vec::as_slice).collect();
    let ids = c.put_many(q, &ten).unwrap();
    assert_eq!(ids.len(), 10);
    assert_eq!((c.qsize(q).unwrap(), e.info(q, "unfinished")), (10, 10));
    // Split by smaller gets, peeked across the split.
    let a = got(&mut c, &[b"QGET", q.as_bytes(), b"COUNT", b"3"]);
    assert_eq!(payloads(&a), "012");
    assert_eq!(a[0].0, ids[0]);
    assert_eq!(c.qsize(q).unwrap(), 7);
    assert_eq!(
        payloads(&got(&mut c, &[b"QPEEK", q.as_bytes(), b"COUNT", b"4"])),
        "3456"
    );
    let b = got(&mut c, &[b"QGET", q.as_bytes(), b"COUNT", b"4"]);
    assert_eq!(payloads(&b), "3456");
    assert_eq!(e.info(q, "leased"), 7);
    // One finished alone, one nacked, one touched, then the rest at once.
    c.task_done(q, b[1].0).unwrap();
    assert!(matches!(c.task_done(q, b[1].0), Err(Error::NotLeased)));
    c.nack(q, b[2].0).unwrap();
    c.call(&[b"QTOUCH", q.as_bytes(), b[3].0.to_string().as_bytes()])
        .unwrap();
    let done = c
        .call(&[
            b"QDONE",
            q.as_bytes(),
            b[0].0.to_string().as_bytes(),
            b[3].0.to_string().as_bytes(),
            b[3].0.to_string().as_bytes(),
        ])
        .unwrap();
    assert_eq!(done, ferry_client::Value::Int(2));
    assert_eq!((e.info(q, "unfinished"), e.info(q, "leased")), (7, 3));
    // The nacked one first, with its attempt; then the rest of the batch.
    let back = got(&mut c, &[b"QGET", q.as_bytes()]);
    assert_eq!(back, vec![(b[2].0, "5".to_string(), 1)]);
    c.task_done(q, back[0].0).unwrap();
    // The first three in one QDONE; the rest of the batch and a second
    // batch in one get.
    let mut cmd: Vec<Vec<u8>> = vec![b"QDONE".to_vec(), q.as_bytes().to_vec()];
    cmd.extend(a.iter().map(|m| m.0.to_string().into_bytes()));
    let cmd: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
    assert_eq!(c.call(&cmd).unwrap(), ferry_client::Value::Int(3));
    c.put_many(q, &[&b"a"[..], b"b", b"c"]).unwrap();
    let rest = got(&mut c, &[b"QGET", q.as_bytes(), b"COUNT", b"100"]);
    assert_eq!(payloads(&rest), "789abc");
    let mut cmd: Vec<Vec<u8>> = vec![b"QDONE".to_vec(), q.as_bytes().to_vec()];
    cmd.extend(rest.iter().map(|m| m.0.to_string().into_bytes()));
    let cmd: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
    assert_eq!(c.call(&cmd).unwrap(), ferry_client::Value::Int(6));
    assert_eq!(e.info(q, "unfinished"), 0);
    c.join(q).unwrap();

    // A timed lease on a batch runs out: every message back, attempts 1.
    c.put_many(q, &[&b"d"[..], b"e", b"f"]).unwrap();
    let t = got(
        &mut c,
        &[b"QGET", q.as_bytes(), b"COUNT", b"3", b"LEASE", b"50"],
    );
    assert_eq!(payloads(&t), "def");
    common::wait_until("the lease to run out", || e.info(q, "expired") == 3);
    // Each given back to the head in turn, as the broker does: the
    // last one first.
    let back = got(&mut c, &[b"QGET", q.as_bytes(), b"COUNT", b"3"]);
    assert_eq!(
        back,
        t.iter()
            .rev()
            .map(|m| (m.0, m.1.clone(), 1))
            .collect::<Vec<_>>()
    );
    for m in &back {
        c.task_done(q, m.0).unwrap();
    }
    // A holder that goes gives its batch back.
    c.put_many(q, &[&b"g"[..], b"h"]).unwrap();
    {
        let mut dying = e.client();
        assert_eq!(
            payloads(&got(&mut dying, &[b"QGET", q.as_bytes(), b"COUNT", b"2"])),
            "gh"
        );
    }
    let mut back = Vec::new();
    while back.len() < 2 {
        back.extend(got(
            &mut c,
            &[b"QGET", q.as_bytes(), b"COUNT", b"2", b"TIMEOUT", b"10000"],
        ));
    }
    // Given back by the holder's release, or (on Redis, where the release
    // is sent by a background thread that a loaded machine may delay past
    // the test's 1 s lease) by the lease running out: the two give back
    // in different orders, on the broker too.
    back.sort();
    assert_eq!(payloads(&back), "gh");
    assert!(back.iter().all(|m| m.2 == 1), "{back:?}");
    for m in &back {
        c.task_done(q, m.0).unwrap();
    }
    // Taken and NOACK batches.
    c.put_many(q, &[&b"i"[..], b"j", b"k", b"l"]).unwrap();
    let taken = got(&mut c, &[b"QGET", q.as_bytes(), b"COUNT", b"2", b"TAKE"]);
    assert_eq!((payloads(&taken).as_str(), e.info(q, "taken")), ("ij", 2));
    let gone = got(&mut c, &[b"QGET", q.as_bytes(), b"COUNT", b"2", b"NOACK"]);
    assert_eq!(
        (payloads(&gone).as_str(), e.info(q, "unfinished")),
        ("kl", 2)
    );
    for m in &taken {
        c.task_done(q, m.0).unwrap();
    }
    c.join(q).unwrap();
    // Purged and shut down.
    c.put_many(q, &[&b"m"[..], b"n", b"o"]).unwrap();
    let m = got(&mut c, &[b"QGET", q.as_bytes()]);
    assert_eq!(
        c.call(&[b"QPURGE", q.as_bytes()]).unwrap(),
        ferry_client::Value::Int(2)
    );
    assert_eq!((c.qsize(q).unwrap(), e.info(q, "unfinished")), (0, 1));
    c.task_done(q, m[0].0).unwrap();
    c.put_many(q, &[&b"p"[..], b"q"]).unwrap();
    c.call(&[b"QSHUTDOWN", q.as_bytes(), b"IMMEDIATE"]).unwrap();
    assert_eq!((c.qsize(q).unwrap(), e.info(q, "unfinished")), (0, 0));
    c.join(q).unwrap();
    // Room counts every message of a batch.
    c.call(&[b"QCREATE", b"runs-small", b"MAXSIZE", b"5"])
        .unwrap();
    c.put_many("runs-small", &[&b"1"[..], b"2", b"3", b"4"])
        .unwrap();
    assert!(matches!(
        c.call(&[
            b"QPUTMANY",
            b"runs-small",
            b"NOWAIT",
            b"PAYLOADS",
            b"5",
            b"6"
        ]),
        Err(Error::Full)
    ));
    c.put("runs-small", b"5").unwrap();
    assert!(c.full("runs-small").unwrap());
}

fn locks_hand_over_with_larger_tokens(e: &Engine) {
    let (mut a, mut b) = (e.client(), e.client());
    let t1 = a.lock("ledger", None, None).unwrap().unwrap();
    assert_eq!(b.lock("ledger", Some(Duration::ZERO), None).unwrap(), None);
    let t = Instant::now();
    assert_eq!(
        b.lock("ledger", Some(Duration::from_millis(100)), None)
            .unwrap(),
        None
    );
    assert!(t.elapsed() >= Duration::from_millis(100), "never early");
    let waiter = thread::spawn(move || (b.lock("ledger", None, None).unwrap(), b));
    let mut probe = e.client();
    common::wait_until("the waiter in line", || {
        let info = probe.call(&[b"INFO"]).unwrap();
        let ferry_client::Value::Bulk(text) = info else {
            return false;
        };
        String::from_utf8_lossy(&text).contains("lock_waiters:1")
    });
    assert!(a.unlock("ledger", t1).unwrap());
    assert!(
        !a.unlock("ledger", t1).unwrap(),
        "a stale token releases nothing"
    );
    let (t2, mut b) = waiter.join().unwrap();
    let t2 = t2.unwrap();
    assert!(t2 > t1);
    assert!(b.unlock("ledger", t2).unwrap());
    // A TTL frees the lock though its holder lives.
    let t3 = b
        .lock("ledger", None, Some(Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    let t4 = a
        .lock("ledger", Some(Duration::from_secs(5)), None)
        .unwrap()
        .unwrap();
    assert!(t4 > t3);
}

fn ferry(url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_URL", url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn the_cli_verbs_work(e: &Engine) {
    let url = e.url();
    assert_eq!(ferry(&url, &["put", "cli", "one"]).0, 0);
    assert_eq!(ferry(&url, &["put", "cli", "two"]).0, 0);
    let (code, out) = ferry(&url, &["get", "cli", "--count", "2"]);
    assert_eq!((code, out.as_str()), (0, "one\ntwo\n"));
    let (code, _) = ferry(&url, &["get", "cli", "--timeout", "0.05"]);
    assert_eq!(code, 4, "none came in time");
    let (code, out) = ferry(&url, &["info", "cli"]);
    assert_eq!(code, 0);
    assert!(out.contains("delivered: 2"), "{out}");
    assert_eq!(ferry(&url, &["join", "cli", "--timeout", "5"]).0, 0);
    let (code, out) = ferry(&url, &["top", "--iterations", "1", "--interval", "0.1"]);
    assert_eq!(code, 0);
    assert!(out.contains("ferry top — 1 queue(s)"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("cli ")), "{out}");
    let (code, out) = ferry(&url, &["lock", "cli-lock", "--", "echo", "held"]);
    assert_eq!((code, out.as_str()), (0, "held\n"));
}

fn ferry_worker_does_every_task_once(e: &Engine) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let mut c = e.client();
    for i in 0..50 {
        c.put("wjobs", format!("m{i}").as_bytes()).unwrap();
    }
    let script = format!("x=$(cat); echo \"$x\" >> {}", out.display());
    let mut w = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["worker", "wjobs", "-j", "4", "--", "sh", "-c", &script])
        .env("FERRY_URL", e.url())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("all 50 done", || c.unfinished("wjobs").unwrap() == 0);
    let _ = Command::new("kill").arg(w.id().to_string()).status();
    let _ = w.wait();
    let mut text = String::new();
    std::fs::File::open(&out)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    want.sort_unstable();
    assert_eq!(lines, want, "every task ran exactly once");
}

fn an_idle_queue_with_expire_goes(e: &Engine) {
    let mut c = e.client();
    c.call(&[b"QCREATE", b"private", b"EXPIRE", b"300"])
        .unwrap();
    c.put("private", b"left behind").unwrap();
    // Timed from before the last command that names the queue: its
    // expiry runs from that command, which a slow reply can outlast.
    let t = Instant::now();
    assert_eq!(e.info("private", "expire"), 300);
    // QLIST, which names no queue (a QINFO would keep it alive).
    common::wait_until("the idle queue to go", || {
        let list = c.call(&[b"QLIST"]).unwrap();
        !matches!(list, ferry_client::Value::Array(names)
            if names.contains(&ferry_client::Value::Bulk(b"private".to_vec().into())))
    });
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "not before its time"
    );
}
