//! Commands run against a broker in memory, with no socket: a request in,
//! the reply bytes out, and blocked commands resumed by hand.

use std::sync::Arc;

use ferry_proto::Request;

use super::{Blocked, Flow, NAMES, Outcome, Woke, execute};
use crate::broker::Broker;
use crate::config::{Config, Durability};
use crate::session::Session;

fn broker(config: Config) -> Arc<Broker> {
    let (broker, _) = Broker::open(
        Config {
            durability: Durability::Memory,
            ..config
        },
        None,
    )
    .unwrap();
    broker
}

fn request(args: &[&str]) -> Request {
    Request::from_args(args)
}

/// Runs a command that does not wait; replies what it wrote.
fn run(s: &mut Session, args: &[&str]) -> String {
    match execute(s, request(args)) {
        Outcome::Done(_) => take(s),
        Outcome::Wait(_) => panic!("{args:?} waits"),
    }
}

/// Runs a command that must wait.
fn blocked(s: &mut Session, args: &[&str]) -> Blocked {
    match execute(s, request(args)) {
        Outcome::Done(_) => panic!("{args:?} did not wait: {}", take(s)),
        Outcome::Wait(b) => b,
    }
}

/// The token of a grant's reply.
fn token(reply: &str) -> u64 {
    reply
        .strip_prefix(':')
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not a token: {reply:?}"))
}

fn take(s: &mut Session) -> String {
    let text = String::from_utf8_lossy(&s.out).into_owned();
    s.out.clear();
    text
}

#[tokio::test]
async fn a_put_and_a_get_reply_as_documented() {
    let b = broker(Config::default());
    let mut s = Session::new(b, "test".into());
    assert_eq!(run(&mut s, &["QPUT", "q", "hello"]), ":1\r\n");
    assert_eq!(
        run(&mut s, &["qget", "q", "NOACK"]),
        "*1\r\n*4\r\n$1\r\nq\r\n:1\r\n$5\r\nhello\r\n:0\r\n"
    );
    assert_eq!(run(&mut s, &["QGET", "q", "NOWAIT"]), "*-1\r\n");
}

#[tokio::test]
async fn unknown_options_and_commands_are_errors_that_name_them() {
    let b = broker(Config::default());
    let mut s = Session::new(Arc::clone(&b), "test".into());
    let reply = run(&mut s, &["QGET", "jobs", "NOWAIIT"]);
    assert!(
        reply.starts_with("-ERR unknown option 'NOWAIIT' for QGET"),
        "{reply}"
    );
    assert!(b.queue(b"NOWAIIT").is_none());
    assert!(
        b.queue(b"jobs").is_none(),
        "a refused command creates nothing"
    );
    let reply = run(&mut s, &["QPUT", "q", "x", "PRIORTY", "1"]);
    assert!(reply.contains("'PRIORTY' for QPUT"), "{reply}");
    let reply = run(&mut s, &["QLEN", "q", "extra"]);
    assert!(reply.contains("'extra' for QLEN"), "{reply}");
    let reply = run(&mut s, &["NOSUCH"]);
    assert_eq!(reply, "-ERR unknown command 'NOSUCH'\r\n");
}

#[tokio::test]
async fn every_command_without_arguments_answers_without_panicking() {
    let b = broker(Config::default());
    for name in NAMES {
        let mut s = Session::new(Arc::clone(&b), "test".into());
        match execute(&mut s, request(&[name])) {
            Outcome::Done(_) => assert!(!s.out.is_empty(), "{name} wrote nothing"),
            Outcome::Wait(_) => panic!("{name} waits with no arguments"),
        }
    }
}

#[tokio::test]
async fn a_blocked_get_is_served_by_a_later_put() {
    let b = broker(Config::default());
    let (mut getter, mut putter) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(b, "test".into()),
    );
    let mut wait = blocked(&mut getter, &["QGET", "q", "OR", "r", "TIMEOUT", "5000"]);
    assert_eq!(
        wait.resume(&mut getter, Woke::Notified),
        None,
        "nothing yet"
    );
    assert_eq!(run(&mut putter, &["QPUT", "r", "x"]), ":1\r\n");
    assert_eq!(
        wait.resume(&mut getter, Woke::Notified),
        Some(Flow::Continue)
    );
    assert_eq!(
        take(&mut getter),
        "*1\r\n*4\r\n$1\r\nr\r\n:1\r\n$1\r\nx\r\n:0\r\n"
    );
    // Leased to the getter, bound to it: released when it goes.
    assert_eq!(run(&mut putter, &["QLEN", "r"]), ":0\r\n");
    getter.release_all();
    assert_eq!(run(&mut putter, &["QLEN", "r"]), ":1\r\n");
}

#[tokio::test]
async fn a_blocked_get_times_out_or_leaves_with_nothing_lost() {
    let b = broker(Config::default());
    let (mut getter, mut putter) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(b, "test".into()),
    );
    let mut wait = blocked(&mut getter, &["QGET", "q", "TIMEOUT", "5000"]);
    assert_eq!(
        wait.resume(&mut getter, Woke::TimedOut),
        Some(Flow::Continue)
    );
    assert_eq!(take(&mut getter), "*-1\r\n");

    // A getter that goes away after the message was handed to it gives it
    // back untouched.
    let mut wait = blocked(&mut getter, &["QGET", "q"]);
    run(&mut putter, &["QPUT", "q", "x"]);
    assert_eq!(wait.resume(&mut getter, Woke::Gone), Some(Flow::Close));
    assert_eq!(
        run(&mut putter, &["QGET", "q", "NOACK", "NOWAIT"]),
        "*1\r\n*4\r\n$1\r\nq\r\n:1\r\n$1\r\nx\r\n:0\r\n"
    );
}

#[tokio::test]
async fn a_blocked_put_waits_for_room_and_a_join_for_the_work() {
    let b = broker(Config::default());
    let (mut a, mut c) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(b, "test".into()),
    );
    run(&mut a, &["QCREATE", "q", "MAXSIZE", "1"]);
    run(&mut a, &["QPUT", "q", "1"]);
    let mut put = blocked(&mut a, &["QPUT", "q", "2"]);
    let mut join = blocked(&mut c, &["QJOIN", "q"]);
    assert_eq!(put.resume(&mut a, Woke::Notified), None);
    run(&mut c, &["QGET", "q", "NOACK"]);
    assert_eq!(put.resume(&mut a, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(&mut a), ":2\r\n");
    assert_eq!(join.resume(&mut c, Woke::Notified), None);
    run(&mut c, &["QGET", "q", "NOACK"]);
    assert_eq!(join.resume(&mut c, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(&mut c), "+OK\r\n");
    // A full queue and no time to wait: FULL.
    run(&mut a, &["QPUT", "q", "3"]);
    let mut put = blocked(&mut a, &["QPUT", "q", "4", "TIMEOUT", "10"]);
    assert_eq!(put.resume(&mut a, Woke::TimedOut), Some(Flow::Continue));
    assert_eq!(take(&mut a), "-FULL queue is full\r\n");
}

#[tokio::test]
async fn only_auth_hello_and_quit_before_authenticating() {
    let b = broker(Config {
        requirepass: Some("secret".into()),
        ..Config::default()
    });
    for name in NAMES {
        if matches!(name, "AUTH" | "HELLO" | "QUIT") {
            continue;
        }
        // A connection of its own each: a stranger is closed after 16.
        let mut s = Session::new(Arc::clone(&b), "test".into());
        let reply = run(&mut s, &[name, "q"]);
        assert!(reply.starts_with("-NOAUTH"), "{name}: {reply}");
    }
    let mut s = Session::new(b, "test".into());
    assert!(run(&mut s, &["AUTH", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(run(&mut s, &["AUTH", "secret"]), "+OK\r\n");
    assert_eq!(run(&mut s, &["QLEN", "q"]), ":0\r\n");
}

#[tokio::test]
async fn a_contended_lock_is_granted_in_line() {
    let b = broker(Config::default());
    let (mut a, mut c) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(b, "test".into()),
    );
    let first = token(&run(&mut a, &["LOCK", "L"]));
    assert_eq!(run(&mut c, &["LOCK", "L", "NOWAIT"]), "$-1\r\n");
    let mut wait = blocked(&mut c, &["LOCK", "L", "TIMEOUT", "5000"]);
    assert_eq!(wait.resume(&mut c, Woke::Notified), None);
    assert_eq!(run(&mut a, &["UNLOCK", "L", &first.to_string()]), ":1\r\n");
    assert_eq!(wait.resume(&mut c, Woke::Notified), Some(Flow::Continue));
    assert_eq!(token(&take(&mut c)), first + 1);
}

#[tokio::test]
async fn a_semaphore_grants_its_value_in_line_and_a_dead_holder_gives_back_only_up_to_it() {
    let b = broker(Config::default());
    let (mut a, mut c) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(Arc::clone(&b), "test".into()),
    );
    let sem = |v: &str| -> Vec<String> {
        ["SEMACQUIRE", "S", "VALUE", v, "NOWAIT"]
            .map(String::from)
            .to_vec()
    };
    let t1 = token(&reply_of(&mut a, &sem("2")));
    assert_eq!(token(&reply_of(&mut a, &sem("2"))), t1 + 1);
    assert_eq!(reply_of(&mut c, &sem("2")), "$-1\r\n");
    assert!(
        reply_of(&mut c, &sem("3")).starts_with("-ERR semaphore 'S' exists with VALUE 2"),
        "another value is refused"
    );
    let mut wait = blocked(&mut c, &["SEMACQUIRE", "S", "VALUE", "2"]);
    assert_eq!(wait.resume(&mut c, Woke::Notified), None);
    assert_eq!(run(&mut a, &["SEMVALUE", "S", "VALUE", "2"]), ":0\r\n");
    // A holder's release by token goes to the one in line.
    let t1s = t1.to_string();
    assert_eq!(
        run(&mut a, &["SEMRELEASE", "S", "VALUE", "2", "TOKEN", &t1s]),
        ":1\r\n"
    );
    assert_eq!(wait.resume(&mut c, Woke::Notified), Some(Flow::Continue));
    assert_eq!(token(&take(&mut c)), t1 + 2);
    // A release without a token adds a permit, above the value too...
    assert_eq!(run(&mut c, &["SEMRELEASE", "S", "VALUE", "2"]), ":1\r\n");
    assert_eq!(run(&mut c, &["SEMRELEASE", "S", "VALUE", "2"]), ":1\r\n");
    assert_eq!(run(&mut c, &["SEMVALUE", "S", "VALUE", "2"]), ":2\r\n");
    // ...unless bounded.
    assert!(
        run(&mut c, &["SEMRELEASE", "S", "VALUE", "2", "BOUNDED"]).starts_with("-OVERRELEASED"),
        "a bounded semaphore refuses to exceed its value"
    );
    // Those two releases answered the holders' permits (retired, oldest
    // first): no holder is left to give one back when it dies.
    a.release_all();
    assert_eq!(run(&mut c, &["SEMVALUE", "S", "VALUE", "2"]), ":2\r\n");
    // Two taken: none free; `c` dies holding them, and they come back
    // only up to the value.
    assert_eq!(token(&reply_of(&mut c, &sem("2"))), t1 + 3);
    assert_eq!(token(&reply_of(&mut c, &sem("2"))), t1 + 4);
    assert_eq!(run(&mut a, &["SEMVALUE", "S", "VALUE", "2"]), ":0\r\n");
    c.release_all();
    assert_eq!(run(&mut a, &["SEMVALUE", "S", "VALUE", "2"]), ":2\r\n");
    // At its value with nobody in it, the name is forgotten.
    assert_eq!(b.semaphores.counts(), (0, 0));
    // A signal: made with 0, released by one, taken by another that dies.
    assert_eq!(run(&mut a, &["SEMRELEASE", "sig", "VALUE", "0"]), ":1\r\n");
    let mut d = Session::new(Arc::clone(&b), "test".into());
    assert_eq!(
        token(&reply_of(
            &mut d,
            &["SEMACQUIRE", "sig", "VALUE", "0", "NOWAIT"].map(String::from)
        )),
        t1 + 5
    );
    d.release_all();
    assert_eq!(run(&mut a, &["SEMVALUE", "sig", "VALUE", "0"]), ":0\r\n");
    // A bounded buffer: a producer takes a slot, a consumer's release
    // answers it. However long it runs, nobody is left holding.
    let slots = ["SEMACQUIRE", "slots", "VALUE", "2", "NOWAIT"].map(String::from);
    for _ in 0..1000 {
        assert!(reply_of(&mut d, &slots).starts_with(':'));
        assert_eq!(
            run(&mut a, &["SEMRELEASE", "slots", "VALUE", "2", "BOUNDED"]),
            ":1\r\n"
        );
    }
    let held: usize = b.semaphores.list().iter().map(|v| v.holders.len()).sum();
    assert_eq!(held, 0, "no holder piles up");
    assert_eq!(b.semaphores.counts(), (0, 0));
}

#[tokio::test]
async fn an_event_wakes_every_waiter_and_a_condition_its_oldest_first() {
    let b = broker(Config::default());
    let mut s: Vec<Session> = (0..4)
        .map(|_| Session::new(Arc::clone(&b), "test".into()))
        .collect();
    let [a, c, d, e] = &mut s[..] else {
        unreachable!()
    };
    assert_eq!(run(a, &["EVISSET", "e"]), ":0\r\n");
    assert_eq!(run(a, &["EVWAIT", "e", "NOWAIT"]), ":0\r\n");
    let mut w1 = blocked(c, &["EVWAIT", "e"]);
    let mut w2 = blocked(d, &["EVWAIT", "e", "TIMEOUT", "5000"]);
    assert_eq!(w1.resume(c, Woke::Notified), None);
    // Set and cleared before they look: each was woken by the set.
    assert_eq!(run(a, &["EVSET", "e"]), ":1\r\n");
    assert_eq!(run(a, &["EVCLEAR", "e"]), ":1\r\n");
    assert_eq!(w1.resume(c, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(c), ":1\r\n");
    assert_eq!(w2.resume(d, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(d), ":1\r\n");
    assert_eq!(run(a, &["EVWAIT", "e", "NOWAIT"]), ":0\r\n");
    let mut w3 = blocked(c, &["EVWAIT", "e", "TIMEOUT", "5000"]);
    assert_eq!(w3.resume(c, Woke::Unblocked(false)), Some(Flow::Continue));
    assert_eq!(take(c), ":0\r\n", "a wait that ends unset replies 0");
    run(a, &["EVSET", "e"]);
    assert_eq!(run(c, &["EVWAIT", "e"]), ":1\r\n", "set: at once");
    assert_eq!(run(c, &["EVISSET", "e"]), ":1\r\n");
    run(a, &["EVCLEAR", "e"]);

    // A condition: CONDWAIT gives the lock back and waits in line.
    let t1 = token(&run(a, &["LOCK", "m"]));
    let mut cw1 = blocked(
        a,
        &["CONDWAIT", "cv", "LOCK", "m", "TOKEN", &t1.to_string()],
    );
    let t2 = token(&run(c, &["LOCK", "m", "NOWAIT"]));
    let mut cw2 = blocked(
        c,
        &["CONDWAIT", "cv", "LOCK", "m", "TOKEN", &t2.to_string()],
    );
    assert_eq!(cw1.resume(a, Woke::Notified), None);
    assert_eq!(run(e, &["CONDNOTIFY", "cv"]), ":1\r\n");
    assert_eq!(cw2.resume(c, Woke::Notified), None, "the oldest goes first");
    assert_eq!(cw1.resume(a, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(a), ":1\r\n");
    assert_eq!(run(e, &["CONDNOTIFY", "cv", "ALL"]), ":1\r\n");
    // Notified as its timeout came: it counts as notified.
    assert_eq!(cw2.resume(c, Woke::Unblocked(false)), Some(Flow::Continue));
    assert_eq!(take(c), ":1\r\n");
    assert_eq!(run(e, &["CONDNOTIFY", "cv"]), ":0\r\n");
    let refused = run(d, &["CONDWAIT", "cv", "LOCK", "m", "TOKEN", "1"]);
    assert!(
        refused.starts_with("-ERR cannot wait on un-acquired lock"),
        "{refused}"
    );
    assert_eq!(b.events.counts(), (0, 0, 0, 0), "nothing left behind");
}

#[tokio::test]
async fn a_barrier_lets_a_full_round_through_and_breaks_for_a_party_that_leaves() {
    let b = broker(Config::default());
    let mut s: Vec<Session> = (0..3)
        .map(|_| Session::new(Arc::clone(&b), "test".into()))
        .collect();
    let [a, c, d] = &mut s[..] else {
        unreachable!()
    };
    let wait = ["BARWAIT", "B", "PARTIES", "3"];
    let mut w0 = blocked(a, &wait);
    let mut w1 = blocked(c, &wait);
    assert_eq!(run(d, &["BARINFO", "B"]), "*2\r\n:2\r\n:0\r\n");
    assert!(run(d, &["BARWAIT", "B", "PARTIES", "4"]).contains("exists with PARTIES 3"));
    assert_eq!(run(d, &wait), ":2\r\n", "the last arriver passes at once");
    assert_eq!(w1.resume(c, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(c), ":1\r\n");
    assert_eq!(w0.resume(a, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(a), ":0\r\n");
    assert_eq!(b.barriers.counts(), (0, 0), "an ended round leaves nothing");

    // With an action: the round is held until its last arriver says so.
    let act = ["BARWAIT", "A", "PARTIES", "2", "ACTION"];
    let mut w0 = blocked(a, &act);
    assert_eq!(run(c, &act), ":1\r\n");
    assert_eq!(w0.resume(a, Woke::Notified), None, "held for the action");
    assert_eq!(run(c, &["BARPASS", "A"]), ":1\r\n");
    assert_eq!(w0.resume(a, Woke::Notified), Some(Flow::Continue));
    assert_eq!(take(a), ":0\r\n");
    // The action's runner leaves before BARPASS: the round breaks.
    let mut w0 = blocked(a, &act);
    assert_eq!(run(c, &act), ":1\r\n");
    c.release_all();
    assert_eq!(w0.resume(a, Woke::Notified), Some(Flow::Continue));
    assert!(take(a).starts_with("-BROKEN"));
    assert!(run(d, &act).starts_with("-BROKEN"), "broken until reset");
    assert_eq!(run(d, &["BARRESET", "A"]), ":1\r\n");

    // A waiter that leaves (or times out) breaks the barrier for the rest.
    let mut w0 = blocked(a, &wait);
    let mut w1 = blocked(c, &wait);
    assert_eq!(w0.resume(a, Woke::Gone), Some(Flow::Close));
    assert_eq!(w1.resume(c, Woke::Notified), Some(Flow::Continue));
    assert!(take(c).starts_with("-BROKEN"));
    assert_eq!(run(d, &["BARINFO", "B"]), "*2\r\n:0\r\n:1\r\n");
    // Reset ends the round in progress broken, and starts afresh.
    assert_eq!(run(d, &["BARRESET", "B"]), ":1\r\n");
    let mut w1 = blocked(c, &wait);
    assert_eq!(run(d, &["BARRESET", "B"]), ":1\r\n");
    assert_eq!(w1.resume(c, Woke::Notified), Some(Flow::Continue));
    assert!(take(c).starts_with("-BROKEN"));
    assert_eq!(run(d, &["BARINFO", "B"]), "*2\r\n:0\r\n:0\r\n");
    // NOWAIT short of a full round breaks it, as a timeout would.
    assert!(run(d, &["BARWAIT", "B", "PARTIES", "3", "NOWAIT"]).starts_with("-BROKEN"));
    assert_eq!(run(d, &["BARABORT", "B", "PARTIES", "3"]), ":1\r\n");
    assert_eq!(run(d, &["BARRESET", "B"]), ":1\r\n");
    assert_eq!(b.barriers.counts(), (0, 0));
}

#[tokio::test]
async fn a_waiter_behind_a_grant_with_a_ttl_wakes_when_that_ttl_runs_out() {
    let b = broker(Config::default());
    let mut s: Vec<Session> = (0..4)
        .map(|_| Session::new(Arc::clone(&b), "test".into()))
        .collect();
    let [h, a, w, late] = &mut s[..] else {
        unreachable!()
    };
    let first = token(&run(h, &["LOCK", "L"]));
    let mut with_ttl = blocked(a, &["LOCK", "L", "TTL", "100"]);
    let mut next = blocked(w, &["LOCK", "L"]);
    assert_eq!(with_ttl.resume(a, Woke::Notified), None);
    assert_eq!(next.resume(w, Woke::Notified), None);
    assert_eq!(next.wake_at(), None, "no TTL to wake at yet");
    run(h, &["UNLOCK", "L", &first.to_string()]);
    assert_eq!(with_ttl.resume(a, Woke::Notified), Some(Flow::Continue));
    // The grant woke the next in line to learn when to look again.
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, next.notify().notified())
            .await
            .is_ok(),
        "the next in line was told of the new holder"
    );
    assert_eq!(next.resume(w, Woke::Notified), None);
    assert!(next.wake_at().is_some(), "it wakes at the holder's TTL");
    // Once the TTL ran out, a newcomer is refused (the next waits first)
    // and wakes the one in line, which takes it.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(run(late, &["LOCK", "L", "NOWAIT"]), "$-1\r\n");
    assert_eq!(next.resume(w, Woke::Notified), Some(Flow::Continue));
    assert!(take(w).starts_with(':'));
}

#[tokio::test]
async fn an_unblocked_wait_ends_as_a_timeout_or_an_error() {
    let b = broker(Config::default());
    let mut s = Session::new(b, "test".into());
    let mut get = blocked(&mut s, &["QGET", "q"]);
    assert_eq!(
        get.resume(&mut s, Woke::Unblocked(false)),
        Some(Flow::Continue)
    );
    assert_eq!(take(&mut s), "*-1\r\n");
    run(&mut s, &["QPUT", "q", "x"]);
    let mut join = blocked(&mut s, &["QJOIN", "q"]);
    assert_eq!(
        join.resume(&mut s, Woke::Unblocked(true)),
        Some(Flow::Continue)
    );
    assert_eq!(
        take(&mut s),
        "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
    run(&mut s, &["QCREATE", "full", "MAXSIZE", "1"]);
    run(&mut s, &["QPUT", "full", "1"]);
    let mut put = blocked(&mut s, &["QPUT", "full", "2"]);
    assert_eq!(
        put.resume(&mut s, Woke::Unblocked(false)),
        Some(Flow::Continue)
    );
    assert_eq!(take(&mut s), "-FULL queue is full\r\n");
    assert_eq!(
        run(&mut s, &["QLEN", "full"]),
        ":1\r\n",
        "the put did not happen"
    );
}

#[tokio::test]
async fn a_put_of_another_key_type_than_the_queue_holds_is_refused() {
    let b = broker(Config::default());
    let mut s = Session::new(b, "test".into());
    run(&mut s, &["QCREATE", "p", "KIND", "priority"]);
    assert_eq!(
        run(
            &mut s,
            &["QPUT", "p", "a", "PRIOKEY", "k1", "KEYTYPE", "(ns)"]
        ),
        ":1\r\n"
    );
    let refused = run(
        &mut s,
        &["QPUT", "p", "b", "PRIOKEY", "k2", "KEYTYPE", "(ss)"],
    );
    assert_eq!(
        refused,
        "-KEYTYPE the queue holds items ordered as (ns); this one is (ss)\r\n"
    );
    let refused = run(
        &mut s,
        &["QPUTMANY", "p", "KEYTYPE", "(ss)", "PAYLOADS", "c"],
    );
    assert!(refused.starts_with("-KEYTYPE"), "{refused}");
    assert_eq!(
        run(&mut s, &["QLEN", "p"]),
        ":1\r\n",
        "nothing else went in"
    );
    // Leased, it is still held: still refused.
    run(&mut s, &["QGET", "p"]);
    assert!(run(&mut s, &["QPUT", "p", "b", "KEYTYPE", "(ss)"]).starts_with("-KEYTYPE"));
    // Empty, the queue takes any type again, as the stdlib's does.
    run(&mut s, &["QDONE", "p", "1"]);
    assert_eq!(
        run(&mut s, &["QPUT", "p", "b", "KEYTYPE", "(ss)"]),
        ":2\r\n"
    );
}

#[tokio::test]
async fn a_holder_group_holds_for_all_its_connections_until_the_last_goes() {
    let b = broker(Config::default());
    let token = "0123456789abcdef-group";
    let (mut a, mut c, mut other) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(b, "test".into()),
    );
    for s in [&mut a, &mut c] {
        assert_eq!(run(s, &["CLIENT", "HOLDER", token]), "+OK\r\n");
    }
    assert!(run(&mut other, &["CLIENT", "HOLDER", "short"]).starts_with("-ERR"));
    run(&mut other, &["QPUTMANY", "q", "PAYLOADS", "1", "2"]);
    // Got on one connection of the group, finished on another.
    run(&mut a, &["QGET", "q"]);
    assert_eq!(run(&mut c, &["QDONE", "q", "1"]), ":1\r\n");
    assert_eq!(
        run(&mut other, &["QDONE", "q", "2"]),
        ":0\r\n",
        "not a member"
    );
    run(&mut a, &["QGET", "q"]);
    // The member that got it leaves: the group still holds it.
    a.release_all();
    assert_eq!(run(&mut other, &["QLEN", "q"]), ":0\r\n");
    // The last leaves: it comes back.
    c.release_all();
    assert_eq!(run(&mut other, &["QLEN", "q"]), ":1\r\n");
}

#[tokio::test]
async fn locks_released_from_another_connection_are_forgotten_by_the_holder() {
    let b = broker(Config::default());
    let (mut a, mut other) = (
        Session::new(Arc::clone(&b), "test".into()),
        Session::new(b, "test".into()),
    );
    for _ in 0..100 {
        let token = run(&mut a, &["LOCK", "l", "NOWAIT"]);
        let token = token.trim_start_matches(':').trim_end();
        assert_eq!(run(&mut other, &["UNLOCK", "l", token]), ":1\r\n");
    }
    assert!(a.locks.len() < 16, "{} stale entries", a.locks.len());
    // What it still holds is still released with it.
    run(&mut a, &["LOCK", "kept", "NOWAIT"]);
    a.release_all();
    assert!(run(&mut other, &["LOCK", "kept", "NOWAIT"]).starts_with(':'));
}

/// What a command must refuse a user without rights on its queue or lock.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    /// A right on the queue or lock it names: -NOPERM without it.
    Right,
    /// Nothing: a connection or server command.
    Nothing,
    /// An operator (admin on every queue).
    Operator,
}

/// Runs a command; one that waits is ended as if its client left.
fn reply_of(s: &mut Session, args: &[String]) -> String {
    if let Outcome::Wait(mut b) = execute(s, Request::from_args(args)) {
        let _ = b.resume(s, Woke::Gone);
    }
    take(s)
}

#[tokio::test]
async fn every_command_checks_its_user_s_rights() {
    let hash = crate::acl::hash_password(b"pw").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.toml");
    std::fs::write(
        &path,
        format!(
            "[users.narrow]\npassword_hash = \"{hash}\"\nput = [\"jobs*\"]\nget = [\"jobs*\"]\n\
             admin = [\"jobs*\"]\nlocks = [\"jobs*\"]\n\
             [users.ops]\npassword_hash = \"{hash}\"\nadmin = [\"*\"]\nlocks = [\"*\"]\n"
        ),
    )
    .unwrap();
    let b = broker(Config {
        acl_file: Some(path.clone()),
        ..Config::default()
    });
    assert!(b.acl.set(crate::acl::Acl::load(&path).unwrap()).is_ok());
    use Needs::*;
    // Every command, with `{q}` for the queue or lock it names. A command
    // added to NAMES without a row here fails this test: say what it needs.
    let table: &[(&str, &[&str], Needs)] = &[
        ("QPUT", &["QPUT", "{q}", "x", "NOWAIT"], Right),
        ("QGET", &["QGET", "jobs0", "OR", "{q}", "NOWAIT"], Right),
        ("QDONE", &["QDONE", "{q}", "1"], Right),
        (
            "QPUTMANY",
            &["QPUTMANY", "{q}", "PAYLOADS", "a", "b"],
            Right,
        ),
        ("QNACK", &["QNACK", "{q}", "1"], Right),
        ("QTOUCH", &["QTOUCH", "{q}", "1"], Right),
        ("QJOIN", &["QJOIN", "{q}", "TIMEOUT", "1"], Right),
        ("QLEN", &["QLEN", "{q}"], Right),
        ("QINFO", &["QINFO", "{q}"], Right),
        ("QLIST", &["QLIST"], Nothing),
        ("QPEEK", &["QPEEK", "{q}"], Right),
        ("QCREATE", &["QCREATE", "{q}"], Right),
        ("QCONFIG", &["QCONFIG", "{q}", "MAXSIZE", "5"], Right),
        ("QPURGE", &["QPURGE", "{q}"], Right),
        ("QREOPEN", &["QREOPEN", "{q}"], Right),
        ("QSHUTDOWN", &["QSHUTDOWN", "{q}"], Right),
        ("QDROP", &["QDROP", "{q}"], Right),
        ("LOCK", &["LOCK", "{q}", "NOWAIT"], Right),
        ("UNLOCK", &["UNLOCK", "{q}", "1"], Right),
        ("LOCKED", &["LOCKED", "{q}", "1"], Right),
        (
            "SEMACQUIRE",
            &["SEMACQUIRE", "{q}", "VALUE", "2", "NOWAIT"],
            Right,
        ),
        ("SEMRELEASE", &["SEMRELEASE", "{q}", "VALUE", "2"], Right),
        ("SEMVALUE", &["SEMVALUE", "{q}", "VALUE", "2"], Right),
        ("SEMHELD", &["SEMHELD", "{q}", "1"], Right),
        ("EVSET", &["EVSET", "{q}"], Right),
        ("EVCLEAR", &["EVCLEAR", "{q}"], Right),
        ("EVISSET", &["EVISSET", "{q}"], Right),
        ("EVWAIT", &["EVWAIT", "{q}", "NOWAIT"], Right),
        (
            "CONDWAIT",
            &[
                "CONDWAIT", "{q}", "LOCK", "{q}", "TOKEN", "1", "TIMEOUT", "1",
            ],
            Right,
        ),
        ("CONDNOTIFY", &["CONDNOTIFY", "{q}"], Right),
        (
            "BARWAIT",
            &["BARWAIT", "{q}", "PARTIES", "2", "NOWAIT"],
            Right,
        ),
        ("BARPASS", &["BARPASS", "{q}"], Right),
        ("BARABORT", &["BARABORT", "{q}", "PARTIES", "2"], Right),
        ("BARRESET", &["BARRESET", "{q}"], Right),
        ("BARINFO", &["BARINFO", "{q}"], Right),
        ("SYNCLIST", &["SYNCLIST"], Nothing),
        ("PING", &["PING"], Nothing),
        ("ECHO", &["ECHO", "e"], Nothing),
        ("HELLO", &["HELLO", "2"], Nothing),
        ("AUTH", &["AUTH", "narrow", "pw"], Nothing),
        ("CLIENT", &["CLIENT", "ID"], Nothing),
        ("SELECT", &["SELECT", "0"], Nothing),
        ("INFO", &["INFO"], Nothing),
        ("COMMAND", &["COMMAND", "COUNT"], Nothing),
        ("CONFIG", &["CONFIG", "GET", "maxclients"], Nothing),
        ("ACL", &["ACL", "LIST"], Operator),
        ("QUIT", &["QUIT"], Nothing),
    ];
    for name in NAMES {
        assert!(
            table.iter().any(|(n, ..)| *n == name),
            "{name} has no row: say which right it needs"
        );
    }
    let mut s = Session::new(Arc::clone(&b), "test".into());
    assert!(run(&mut s, &["QLEN", "jobs1"]).starts_with("-NOAUTH"));
    assert_eq!(run(&mut s, &["AUTH", "narrow", "pw"]), "+OK\r\n");
    assert_eq!(run(&mut s, &["ACL", "WHOAMI"]), "$6\r\nnarrow\r\n");
    for (name, args, needs) in table {
        let on = |q: &str| -> Vec<String> { args.iter().map(|a| a.replace("{q}", q)).collect() };
        let allowed = reply_of(&mut s, &on("jobs1"));
        let denied = reply_of(&mut s, &on("other"));
        match needs {
            Right => {
                assert!(
                    !allowed.starts_with("-NOPERM"),
                    "{name} on jobs1: {allowed}"
                );
                assert!(
                    denied.starts_with("-NOPERM")
                        && denied.contains(name)
                        && denied.contains("'other'"),
                    "{name} on other: {denied}"
                );
            }
            Nothing => {
                assert!(!allowed.starts_with("-NOPERM"), "{name}: {allowed}");
                assert!(!denied.starts_with("-NOPERM"), "{name}: {denied}");
            }
            Operator => {
                assert!(allowed.starts_with("-NOPERM"), "{name}: {allowed}");
            }
        }
    }
    // QLIST shows only what the user may see.
    run(&mut s, &["QPUT", "jobs9", "x"]);
    let mut ops = Session::new(Arc::clone(&b), "test".into());
    assert!(run(&mut ops, &["AUTH", "narrow", "wrong"]).starts_with("-WRONGPASS"));
    assert!(run(&mut ops, &["AUTH", "nobody", "pw"]).starts_with("-WRONGPASS"));
    let listed = run(&mut s, &["QLIST"]);
    assert!(
        listed.contains("jobs9") && !listed.contains("other"),
        "{listed}"
    );
    // SYNCLIST too: a lock the user may not take is not listed.
    let mut admin = Session::new(Arc::clone(&b), "test".into());
    assert_eq!(run(&mut admin, &["AUTH", "ops", "pw"]), "+OK\r\n");
    run(&mut admin, &["LOCK", "other", "NOWAIT"]);
    run(&mut s, &["LOCK", "jobs1", "NOWAIT"]);
    let listed = run(&mut s, &["SYNCLIST"]);
    assert!(
        listed.contains("jobs1") && !listed.contains("other"),
        "{listed}"
    );
    assert!(run(&mut admin, &["SYNCLIST"]).contains("other"));
}
