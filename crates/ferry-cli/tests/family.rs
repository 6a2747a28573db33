//! The rest of multiprocessing's family — semaphores, events, conditions
//! and barriers — with the same semantics on every engine: ferry's
//! broker, a redis-server and a Redis Cluster of three primaries, each
//! started here on loopback ports, the URL the only difference (as
//! backends.rs does for queues and locks). The Rust client's calls, the
//! raw commands of docs/protocol.md, `ferry sem` and `ferry event`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use common::Engine;
use ferry_client::{Client, Error, Value};

on_every_engine!(
    semaphores_cap_hand_over_and_count,
    a_killed_holder_s_permit_comes_back,
    sem_runs_at_most_n_commands_at_once,
    events_wake_every_waiter,
    ferry_event_sets_clears_and_waits,
    a_condition_s_waiter_is_notified_and_gives_its_lock_back,
    barriers_let_rounds_through_and_break,
    a_barrier_s_action_runner_that_goes_breaks_the_round,
    synclist_and_top_show_holders_and_waiters,
);

/// A field of INFO's text.
fn info(c: &mut Client, field: &str) -> u64 {
    let Value::Bulk(text) = c.call(&[b"INFO"]).unwrap() else {
        panic!("INFO is text");
    };
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO has no {field}"))
}

fn int(v: Result<Value, Error>) -> i64 {
    match v.unwrap() {
        Value::Int(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn server_error(r: Result<Value, Error>) -> (String, String) {
    match r {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("not refused: {other:?}"),
    }
}

fn semaphores_cap_hand_over_and_count(e: &Engine) {
    let (mut a, mut b, mut probe) = (e.client(), e.client(), e.client());
    let t1 = a.sem_acquire("api", 2, None, None).unwrap().unwrap();
    let t2 = a.sem_acquire("api", 2, None, None).unwrap().unwrap();
    assert!(t2 > t1);
    assert_eq!(a.sem_value("api", 2).unwrap(), 0);
    assert_eq!(
        b.sem_acquire("api", 2, Some(Duration::ZERO), None).unwrap(),
        None
    );
    let t = Instant::now();
    assert_eq!(
        b.sem_acquire("api", 2, Some(Duration::from_millis(80)), None)
            .unwrap(),
        None
    );
    assert!(t.elapsed() >= Duration::from_millis(80), "never early");
    let (code, message) = server_error(probe.call(&[b"SEMACQUIRE", b"api", b"VALUE", b"3"]));
    assert_eq!(code, "ERR");
    assert!(message.contains("exists with VALUE 2"), "{message}");
    // A waiter in line is handed the permit given back, with a larger token.
    let waiter = thread::spawn(move || (b.sem_acquire("api", 2, None, None).unwrap(), b));
    common::wait_until("the waiter in line", || {
        info(&mut probe, "semaphore_waiters") == 1
    });
    assert_eq!(info(&mut probe, "semaphores"), 1);
    assert!(a.sem_release("api", 2, Some(t1), false).unwrap());
    assert!(
        !a.sem_release("api", 2, Some(t1), false).unwrap(),
        "a stale token gives nothing back"
    );
    let (t3, mut b) = waiter.join().unwrap();
    let t3 = t3.unwrap();
    assert!(t3 > t2);
    assert!(b.sem_held("api", t3).unwrap());
    assert!(!b.sem_held("api", t1).unwrap());
    assert!(b.sem_release("api", 2, Some(t3), false).unwrap());
    assert!(a.sem_release("api", 2, Some(t2), false).unwrap());
    assert_eq!(a.sem_value("api", 2).unwrap(), 2);
    // Bounded refuses past the value; unbounded adds above it.
    let (code, _) = server_error(a.call(&[b"SEMRELEASE", b"api", b"VALUE", b"2", b"BOUNDED"]));
    assert_eq!(code, "OVERRELEASED");
    assert!(a.sem_release("api", 2, None, false).unwrap());
    assert_eq!(a.sem_value("api", 2).unwrap(), 3);
    // A signal: made with 0, released by one, taken by another — a taker
    // that goes does not hand the consumed signal out again.
    let mut taker = e.client();
    assert!(a.sem_release("ready", 0, None, false).unwrap());
    assert!(
        taker
            .sem_acquire("ready", 0, Some(Duration::ZERO), None)
            .unwrap()
            .is_some()
    );
    drop(taker);
    let t = Instant::now();
    assert_eq!(
        a.sem_acquire("ready", 0, Some(Duration::from_millis(1500)), None)
            .unwrap(),
        None,
        "the signal was consumed"
    );
    assert!(t.elapsed() >= Duration::from_millis(1500));
    // A TTL frees a permit though its holder lives.
    let t4 = a
        .sem_acquire("ttl", 1, None, Some(Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    let t5 = probe
        .sem_acquire("ttl", 1, Some(Duration::from_secs(10)), None)
        .unwrap()
        .unwrap();
    assert!(t5 > t4);
    assert!(!a.sem_held("ttl", t4).unwrap());
}

fn ferry_sem(url: &str, name: &str, n: &str, shell: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sem", name, "-n", n, "--url", url, "--", "sh", "-c", shell])
        .spawn()
        .unwrap()
}

/// `ferry sem` killed with SIGKILL mid-command: its permit comes back (on
/// the broker when its connection closes, on Redis once its heartbeat is
/// overdue) and the next in line runs.
fn a_killed_holder_s_permit_comes_back(e: &Engine) {
    let url = e.url();
    let mut probe = e.client();
    let mut holder = ferry_sem(&url, "box", "1", "sleep 600");
    common::wait_until("the holder", || probe.sem_value("box", 1).unwrap() == 0);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let t = Instant::now();
    let token = probe
        .sem_acquire("box", 1, Some(Duration::from_secs(30)), None)
        .unwrap();
    assert!(token.is_some(), "the dead holder's permit came back");
    eprintln!("permit back {:?} after the kill", t.elapsed());
}

fn sem_runs_at_most_n_commands_at_once(e: &Engine) {
    let url = e.url();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let ran = dir.path().join("third-ran");
    let hold = format!("while [ ! -e {} ]; do sleep 0.01; done", go.display());
    let holders: Vec<_> = (0..2).map(|_| ferry_sem(&url, "S", "2", &hold)).collect();
    let c = &mut e.client();
    common::wait_until("both holders", || c.sem_value("S", 2).unwrap() == 0);
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "sem",
            "S",
            "-n",
            "2",
            "--timeout",
            "0.1",
            "--url",
            &url,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "none came in time");
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sem", "S", "-n", "3", "--url", &url, "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "another value: {err}");
    assert!(err.contains("exists with VALUE 2"), "{err}");
    let mut third = ferry_sem(&url, "S", "2", &format!("touch {}; exit 7", ran.display()));
    common::wait_until("the third in line", || info(c, "semaphore_waiters") == 1);
    assert!(!ran.exists(), "the third waits its turn");
    std::fs::write(&go, b"").unwrap();
    for mut h in holders {
        assert!(h.wait().unwrap().success());
    }
    assert_eq!(third.wait().unwrap().code(), Some(7));
    assert!(ran.exists());
    common::wait_until("every permit back: the name forgotten", || {
        info(c, "semaphores") == 0
    });
}

fn events_wake_every_waiter(e: &Engine) {
    let mut c = e.client();
    assert_eq!(int(c.call(&[b"EVISSET", b"go"])), 0);
    assert_eq!(int(c.call(&[b"EVWAIT", b"go", b"NOWAIT"])), 0);
    let t = Instant::now();
    assert_eq!(int(c.call(&[b"EVWAIT", b"go", b"TIMEOUT", b"60"])), 0);
    assert!(t.elapsed() >= Duration::from_millis(60), "never early");
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let mut w = e.client();
            thread::spawn(move || int(w.call(&[b"EVWAIT", b"go"])))
        })
        .collect();
    common::wait_until("three waiters", || info(&mut c, "event_waiters") == 3);
    assert_eq!(int(c.call(&[b"EVSET", b"go"])), 1);
    // Cleared at once: the waiters were woken by the set all the same.
    assert_eq!(int(c.call(&[b"EVCLEAR", b"go"])), 1);
    for w in waiters {
        assert_eq!(w.join().unwrap(), 1);
    }
    assert_eq!(info(&mut c, "event_waiters"), 0);
    assert_eq!(int(c.call(&[b"EVSET", b"go"])), 1);
    assert_eq!(int(c.call(&[b"EVISSET", b"go"])), 1);
    assert_eq!(int(c.call(&[b"EVWAIT", b"go", b"NOWAIT"])), 1);
}

/// `ferry event ARGS... --url URL`: its exit code and stdout, stderr.
fn ferry_event(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("event")
        .args(args)
        .args(["--url", url])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (o.status.code(), text(&o.stdout), text(&o.stderr))
}

/// `ferry event`: scripts on many machines start together — each waits
/// (`ferry event wait start`) until one sets the event; is-set and a
/// --timeout answer with exit 4, as the other verbs' "nothing happened".
fn ferry_event_sets_clears_and_waits(e: &Engine) {
    let url = e.url();
    let mut c = e.client();
    assert_eq!(
        ferry_event(&url, &["is-set", "start"]),
        (Some(4), "clear".into(), String::new())
    );
    let (code, _, err) = ferry_event(&url, &["wait", "start", "--timeout", "0"]);
    assert_eq!(code, Some(4), "0 only looks");
    assert!(err.contains("event \"start\" was not set in time"), "{err}");
    let t = Instant::now();
    assert_eq!(
        ferry_event(&url, &["wait", "start", "--timeout", "0.05"]).0,
        Some(4)
    );
    assert!(t.elapsed() >= Duration::from_millis(50), "never early");
    assert!(!c.event_wait("start", Some(Duration::ZERO)).unwrap());
    let mut waiters: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["event", "wait", "start", "--url", &url])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut in_client = e.client();
    let waiter = thread::spawn(move || in_client.event_wait("start", None));
    common::wait_until("three waiters", || info(&mut c, "event_waiters") == 3);
    for w in &mut waiters {
        assert!(w.try_wait().unwrap().is_none(), "still waiting");
    }
    assert_eq!(ferry_event(&url, &["set", "start"]).0, Some(0));
    for mut w in waiters {
        assert_eq!(w.wait().unwrap().code(), Some(0));
    }
    assert!(waiter.join().unwrap().unwrap(), "the client's wait too");
    assert!(c.event_is_set("start").unwrap());
    assert_eq!(
        ferry_event(&url, &["is-set", "start"]),
        (Some(0), "set".into(), String::new())
    );
    assert_eq!(
        ferry_event(&url, &["wait", "start"]).0,
        Some(0),
        "set: at once"
    );
    c.event_clear("start").unwrap();
    assert_eq!(ferry_event(&url, &["is-set", "start"]).0, Some(4));
    c.event_set("start").unwrap();
    assert_eq!(ferry_event(&url, &["clear", "start"]).0, Some(0));
    assert!(!c.event_is_set("start").unwrap());
    let (code, _, err) = ferry_event("ferry://127.0.0.1:1", &["set", "start"]);
    assert_eq!(code, Some(3), "unreachable: {err}");
}

fn a_condition_s_waiter_is_notified_and_gives_its_lock_back(e: &Engine) {
    let (mut a, mut b) = (e.client(), e.client());
    let (code, message) = server_error(a.call(&[b"CONDWAIT", b"c", b"LOCK", b"m", b"TOKEN", b"7"]));
    assert_eq!(code, "ERR");
    assert!(message.contains("un-acquired lock"), "{message}");
    // A wait that times out gives the lock back all the same.
    let t1 = a.lock("m", None, None).unwrap().unwrap();
    let t1s = t1.to_string();
    assert_eq!(
        int(a.call(&[
            b"CONDWAIT",
            b"c",
            b"LOCK",
            b"m",
            b"TOKEN",
            t1s.as_bytes(),
            b"TIMEOUT",
            b"50"
        ])),
        0
    );
    assert!(!a.lock_held("m", t1).unwrap());
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let mut w = e.client();
            thread::spawn(move || {
                let t = w.lock("m", None, None).unwrap().unwrap().to_string();
                let woke = int(w.call(&[b"CONDWAIT", b"c", b"LOCK", b"m", b"TOKEN", t.as_bytes()]));
                (woke, w)
            })
        })
        .collect();
    common::wait_until("both in the condition's line", || {
        info(&mut b, "condition_waiters") == 2
    });
    // Both gave the lock back: it is free.
    let t2 = b.lock("m", Some(Duration::ZERO), None).unwrap().unwrap();
    assert!(b.unlock("m", t2).unwrap());
    assert_eq!(int(b.call(&[b"CONDNOTIFY", b"c"])), 1);
    common::wait_until("one left in line", || {
        info(&mut b, "condition_waiters") == 1
    });
    assert_eq!(int(b.call(&[b"CONDNOTIFY", b"c", b"ALL"])), 1);
    for w in waiters {
        assert_eq!(w.join().unwrap().0, 1);
    }
    assert_eq!(int(b.call(&[b"CONDNOTIFY", b"c", b"COUNT", b"5"])), 0);
    assert_eq!(info(&mut b, "conditions"), 0);
}

fn barriers_let_rounds_through_and_break(e: &Engine) {
    let mut c = e.client();
    // Two rounds of three: places 0, 1, 2 in order of arrival.
    for _round in 0..2 {
        let mut first = e.client();
        let w1 = thread::spawn(move || int(first.call(&[b"BARWAIT", b"b", b"PARTIES", b"3"])));
        common::wait_until("the first", || info(&mut c, "barrier_waiters") == 1);
        let mut second = e.client();
        let w2 = thread::spawn(move || int(second.call(&[b"BARWAIT", b"b", b"PARTIES", b"3"])));
        common::wait_until("the second", || info(&mut c, "barrier_waiters") == 2);
        assert_eq!(
            c.call(&[b"BARINFO", b"b"]).unwrap(),
            Value::Array(vec![Value::Int(2), Value::Int(0)])
        );
        assert_eq!(int(c.call(&[b"BARWAIT", b"b", b"PARTIES", b"3"])), 2);
        assert_eq!((w1.join().unwrap(), w2.join().unwrap()), (0, 1));
    }
    // A waiter whose timeout passes breaks the barrier for the others.
    let mut other = e.client();
    let w =
        thread::spawn(move || server_error(other.call(&[b"BARWAIT", b"x", b"PARTIES", b"3"])).0);
    common::wait_until("one waiting", || info(&mut c, "barrier_waiters") == 1);
    let (code, message) = server_error(c.call(&[b"BARWAIT", b"x", b"PARTIES", b"2", b"NOWAIT"]));
    assert_eq!(code, "ERR");
    assert!(message.contains("exists with PARTIES 3"), "{message}");
    let (code, _) = server_error(c.call(&[b"BARWAIT", b"x", b"PARTIES", b"3", b"TIMEOUT", b"50"]));
    assert_eq!(code, "BROKEN");
    assert_eq!(w.join().unwrap(), "BROKEN");
    assert_eq!(
        c.call(&[b"BARINFO", b"x"]).unwrap(),
        Value::Array(vec![Value::Int(0), Value::Int(1)])
    );
    let (code, _) = server_error(c.call(&[b"BARWAIT", b"x", b"PARTIES", b"3"]));
    assert_eq!(code, "BROKEN", "broken until reset");
    assert_eq!(int(c.call(&[b"BARRESET", b"x"])), 1);
    assert_eq!(int(c.call(&[b"BARWAIT", b"x", b"PARTIES", b"1"])), 0);
    // ABORT breaks a waiter too.
    let mut other = e.client();
    let w =
        thread::spawn(move || server_error(other.call(&[b"BARWAIT", b"y", b"PARTIES", b"2"])).0);
    common::wait_until("one at y", || info(&mut c, "barrier_waiters") == 1);
    assert_eq!(int(c.call(&[b"BARABORT", b"y"])), 1);
    assert_eq!(w.join().unwrap(), "BROKEN");
    assert_eq!(int(c.call(&[b"BARRESET", b"y"])), 1);
    assert_eq!(info(&mut c, "barriers"), 0);
}

/// With ACTION the round is held until its last arriver says BARPASS; one
/// that goes without saying it (its client dropped: on Redis, its grant
/// is no longer renewed) breaks the round.
fn a_barrier_s_action_runner_that_goes_breaks_the_round(e: &Engine) {
    let mut c = e.client();
    let mut first = e.client();
    let w =
        thread::spawn(move || int(first.call(&[b"BARWAIT", b"act", b"PARTIES", b"2", b"ACTION"])));
    common::wait_until("the first", || info(&mut c, "barrier_waiters") == 1);
    assert_eq!(
        int(c.call(&[b"BARWAIT", b"act", b"PARTIES", b"2", b"ACTION"])),
        1
    );
    assert!(!w.is_finished(), "held while the action runs");
    assert_eq!(int(c.call(&[b"BARPASS", b"act"])), 1);
    assert_eq!(w.join().unwrap(), 0);
    assert_eq!(int(c.call(&[b"BARPASS", b"act"])), 0, "no round held");

    let mut first = e.client();
    let w = thread::spawn(move || {
        server_error(first.call(&[b"BARWAIT", b"act", b"PARTIES", b"2", b"ACTION"])).0
    });
    common::wait_until("the first again", || info(&mut c, "barrier_waiters") == 1);
    let mut runner = e.client();
    assert_eq!(
        int(runner.call(&[b"BARWAIT", b"act", b"PARTIES", b"2", b"ACTION"])),
        1
    );
    drop(runner);
    assert_eq!(w.join().unwrap(), "BROKEN");
    assert_eq!(int(c.call(&[b"BARRESET", b"act"])), 1);
}

/// SYNCLIST's rows (kind, name, holders, waiters, state), as `ferry top`
/// prints them under its queues.
fn synclist_and_top_show_holders_and_waiters(e: &Engine) {
    let mut c = e.client();
    let token = c.lock("ledger", None, None).unwrap().unwrap();
    c.sem_acquire("api", 2, None, None).unwrap().unwrap();
    c.call(&[b"EVSET", b"go"]).unwrap();
    let mut x = e.client();
    x.sem_acquire("api", 2, None, None).unwrap().unwrap();
    let mut w = e.client();
    let waiter = thread::spawn(move || {
        let got = w.sem_acquire("api", 2, Some(Duration::from_secs(60)), None);
        (got, w)
    });
    let mut b = e.client();
    let at_barrier =
        thread::spawn(move || server_error(b.call(&[b"BARWAIT", b"gate", b"PARTIES", b"3"])).0);
    common::wait_until("a semaphore waiter and a barrier waiter", || {
        info(&mut c, "semaphore_waiters") == 1 && info(&mut c, "barrier_waiters") == 1
    });
    let rows = match c.call(&[b"SYNCLIST"]).unwrap() {
        Value::Array(rows) => rows,
        other => panic!("{other:?}"),
    };
    let text = |v: &Value| match v {
        Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(n) => n.to_string(),
        other => panic!("{other:?}"),
    };
    let rows: Vec<String> = rows
        .iter()
        .map(|r| match r {
            Value::Array(f) => f.iter().map(text).collect::<Vec<_>>().join("|"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rows,
        [
            format!("lock|ledger|1|0|token {token}"),
            "semaphore|api|2|1|0 of 2 free".to_string(),
            "event|go|0|0|set".to_string(),
            "barrier|gate|0|1|3 parties".to_string(),
        ],
        "by kind, then name"
    );
    let top = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["top", "--iterations", "1", "--url", &e.url()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{out}");
    let table: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("kind "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table[0],
        ["kind", "name", "holders", "waiters", "state"],
        "{out}"
    );
    assert_eq!(
        table[2],
        ["semaphore", "api", "2", "1", "0", "of", "2", "free"],
        "{out}"
    );
    assert_eq!(
        table[4],
        ["barrier", "gate", "0", "1", "3", "parties"],
        "{out}"
    );
    // The waiters go: the barrier breaks, the semaphore's waiter is served.
    assert_eq!(int(c.call(&[b"BARABORT", b"gate"])), 1);
    assert_eq!(at_barrier.join().unwrap(), "BROKEN");
    drop(x);
    let (got, _w) = waiter.join().unwrap();
    assert!(got.unwrap().is_some());
}
