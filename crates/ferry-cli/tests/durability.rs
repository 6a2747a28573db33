//! Durability end to end: the real binary killed with SIGKILL (under load
//! and at rest), restarted on the same data directory, and checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{Entry, Server, ready_payloads};
use rand::{Rng, SeedableRng};
use redis::Value;

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

fn info(con: &mut redis::Connection, q: &str) -> HashMap<String, Value> {
    cmd("QINFO").arg(q).query(con).unwrap()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

#[test]
fn a_restart_after_sigkill_recovers_every_queue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        let _: () = cmd("QCREATE")
            .arg("jobs")
            .arg("MAXSIZE")
            .arg(10)
            .arg("MAXATTEMPTS")
            .arg(5)
            .query(&mut c)
            .unwrap();
        let _: () = cmd("QCREATE")
            .arg("pq")
            .arg("KIND")
            .arg("priority")
            .query(&mut c)
            .unwrap();
        for p in ["a", "b", "c", "d"] {
            let _: u64 = cmd("QPUT").arg("jobs").arg(p).query(&mut c).unwrap();
        }
        let _: u64 = cmd("QPUT")
            .arg("pq")
            .arg("low")
            .arg("PRIORITY")
            .arg(9)
            .query(&mut c)
            .unwrap();
        let _: u64 = cmd("QPUT")
            .arg("pq")
            .arg("high")
            .arg("PRIORITY")
            .arg(-9)
            .query(&mut c)
            .unwrap();
        let _: u64 = cmd("QPUT")
            .arg("later")
            .arg("x")
            .arg("DELAY")
            .arg(600_000)
            .query(&mut c)
            .unwrap();
        // a: done (must never return); b: leased at the crash (returns with
        // attempts 1); c: NOACK (gone); d: stays ready.
        let got: Vec<Entry> = cmd("QGET").arg("jobs").query(&mut c).unwrap();
        let _: u64 = cmd("QDONE")
            .arg("jobs")
            .arg(got[0].1)
            .query(&mut c)
            .unwrap();
        let _: Vec<Entry> = cmd("QGET").arg("jobs").query(&mut c).unwrap();
        let _: Vec<Entry> = cmd("QGET").arg("jobs").arg("NOACK").query(&mut c).unwrap();
        let _: () = cmd("QSHUTDOWN").arg("closed").query(&mut c).unwrap();
        let status = s.signal_and_wait("-KILL");
        assert!(!status.success());
    }
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    let i = info(&mut c, "jobs");
    assert_eq!((int(&i["maxsize"]), int(&i["max_attempts"])), (10, 5));
    assert_eq!((int(&i["qsize"]), int(&i["unfinished"])), (2, 2));
    let got: Vec<Entry> = cmd("QGET")
        .arg("jobs")
        .arg("COUNT")
        .arg(10)
        .arg("NOACK")
        .query(&mut c)
        .unwrap();
    let got: Vec<(&[u8], u32)> = got.iter().map(|e| (e.2.as_slice(), e.3)).collect();
    assert_eq!(got, vec![(&b"b"[..], 1), (&b"d"[..], 0)]);
    let first: Vec<Entry> = cmd("QGET").arg("pq").arg("NOACK").query(&mut c).unwrap();
    assert_eq!(first[0].2, b"high");
    let later = info(&mut c, "later");
    assert_eq!((int(&later["delayed"]), int(&later["qsize"])), (1, 0));
    let closed: redis::RedisResult<u64> = cmd("QPUT").arg("closed").arg("x").query(&mut c);
    assert_eq!(closed.unwrap_err().code(), Some("SHUTDOWN"));
    // Ids keep increasing across the restart.
    let id: u64 = cmd("QPUT").arg("jobs").arg("e").query(&mut c).unwrap();
    assert!(id > 4);
}

#[test]
fn a_second_broker_is_refused_on_a_locked_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start_at(dir.path(), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
}

#[derive(Default)]
struct Ledger {
    /// Puts sent, and puts acknowledged (payloads).
    sent: BTreeSet<String>,
    acked: BTreeSet<String>,
    /// Dones sent, and dones acknowledged as finishing a message.
    done_sent: BTreeSet<String>,
    done_acked: BTreeSet<String>,
}

/// SIGKILL under load, 20 times: several producers record the puts the
/// broker acknowledged, several consumers record the dones it
/// acknowledged; after each restart every acknowledged put is there or was
/// done, no acknowledged done comes back, and the unfinished count lies
/// between the bounds the ledgers allow.
#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    crash_loop("sync", 20);
}

/// The same with `--durability async`: a kill -9 leaves the page cache, so
/// every acknowledged (written) change must survive it too.
#[test]
fn kill_9_under_load_loses_nothing_acknowledged_in_async_mode() {
    crash_loop("async", 8);
}

fn crash_loop(durability: &str, cycles: usize) {
    let seed: u64 = rand::rng().random();
    println!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for cycle in 0..cycles {
        // Small checkpoints, so that compaction runs (and is killed) too.
        let s = Server::start_at(
            dir.path(),
            &["--checkpoint-bytes", "32kb", "--durability", durability],
        );
        check(&s, &ledger.lock().unwrap(), cycle);
        // The kill comes once this many more puts were acknowledged: a
        // random moment of the load, whatever the machine's speed.
        let kill_at = ledger.lock().unwrap().acked.len() + rng.random_range(50..2000);
        let mut workers = Vec::new();
        for p in 0..3 {
            let (url, ledger) = (s.url(), Arc::clone(&ledger));
            workers.push(thread::spawn(move || {
                let Ok(mut c) = redis::Client::open(url).unwrap().get_connection() else {
                    return;
                };
                // Until the broker is killed under it.
                for n in 0.. {
                    let payload = format!("c{cycle}-p{p}-{n}");
                    ledger.lock().unwrap().sent.insert(payload.clone());
                    match cmd("QPUT").arg("load").arg(&payload).query::<u64>(&mut c) {
                        Ok(_) => {
                            ledger.lock().unwrap().acked.insert(payload);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (url, ledger) = (s.url(), Arc::clone(&ledger));
            workers.push(thread::spawn(move || {
                let Ok(mut c) = redis::Client::open(url).unwrap().get_connection() else {
                    return;
                };
                loop {
                    let got: Option<Vec<Entry>> =
                        match cmd("QGET").arg("load").arg("TIMEOUT").arg(50).query(&mut c) {
                            Ok(g) => g,
                            Err(_) => return,
                        };
                    for e in got.unwrap_or_default() {
                        let payload = String::from_utf8(e.2).unwrap();
                        ledger.lock().unwrap().done_sent.insert(payload.clone());
                        match cmd("QDONE").arg("load").arg(e.1).query::<u64>(&mut c) {
                            Ok(1) => {
                                ledger.lock().unwrap().done_acked.insert(payload);
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        common::wait_until("the load to reach its kill point", || {
            ledger.lock().unwrap().acked.len() >= kill_at
        });
        s.signal_and_wait("-KILL");
        for w in workers {
            w.join().unwrap();
        }
    }
    let s = Server::start_at(dir.path(), &["--durability", durability]);
    check(&s, &ledger.lock().unwrap(), cycles);
    let l = ledger.lock().unwrap();
    assert!(
        l.acked.len() > 100,
        "the load did work ({} puts acknowledged)",
        l.acked.len()
    );
    assert!(!l.done_acked.is_empty(), "consumers finished messages");
}

fn check(s: &Server, l: &Ledger, cycle: usize) {
    let mut c = s.conn();
    let ready: BTreeSet<String> = ready_payloads(&mut c, "load").into_iter().collect();
    for p in &l.acked {
        if !(ready.contains(p) || l.done_sent.contains(p)) {
            let i = info(&mut c, "load");
            // FERRY_KEEP=1 keeps a copy of the failing data directory in
            // /tmp/ferry-fail, for `ferry check` and a closer look.
            if std::env::var("FERRY_KEEP").is_ok() {
                let d = std::path::PathBuf::from("/tmp/ferry-fail");
                let _ = std::fs::remove_dir_all(&d);
                std::fs::create_dir_all(&d).unwrap();
                for e in std::fs::read_dir(s.data_dir()).unwrap() {
                    let e = e.unwrap();
                    std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
                }
            }
            panic!(
                "cycle {cycle}: acknowledged put {p} is missing (ready {}, qsize {:?}, unfinished {:?}, leased {:?})",
                ready.len(),
                i["qsize"],
                i["unfinished"],
                i["leased"]
            );
        }
    }
    for p in &l.done_acked {
        assert!(
            !ready.contains(p),
            "cycle {cycle}: {p} came back after its done was acknowledged"
        );
    }
    for p in &ready {
        assert!(l.sent.contains(p), "cycle {cycle}: {p} was never sent");
    }
    let unfinished = if ready.is_empty() && l.sent.is_empty() {
        0
    } else {
        int(&info(&mut c, "load")["unfinished"]) as usize
    };
    let low = l.acked.len().saturating_sub(l.done_sent.len());
    let high = l.sent.len() - l.done_acked.len();
    assert!(
        (low..=high).contains(&unfinished),
        "cycle {cycle}: unfinished {unfinished} not in {low}..={high}"
    );
}

/// Compaction: after megabytes of traffic with a small live backlog, the
/// log shrinks to about the backlog, and a restart still finds exactly it.
#[test]
fn compaction_keeps_the_log_to_the_live_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let payload = vec![b'p'; 1000];
    let mut last_id = 0;
    {
        let s = Server::start_at(dir.path(), &["--checkpoint-bytes", "64kb"]);
        let mut c = s.conn();
        let _: () = cmd("QCREATE")
            .arg("c")
            .arg("MAXSIZE")
            .arg(100_000)
            .query(&mut c)
            .unwrap();
        for round in 0..40 {
            let ids: Vec<u64> = cmd("QPUTMANY")
                .arg("c")
                .arg("PAYLOADS")
                .arg(vec![&payload[..]; 100])
                .query(&mut c)
                .unwrap();
            last_id = *ids.last().unwrap();
            let keep = usize::from(round == 39) * 10;
            let got: Vec<Entry> = cmd("QGET")
                .arg("c")
                .arg("COUNT")
                .arg(100 - keep)
                .query(&mut c)
                .unwrap();
            let done: Vec<u64> = got.iter().map(|e| e.1).collect();
            let _: u64 = cmd("QDONE").arg("c").arg(&done).query(&mut c).unwrap();
        }
        let _: u64 = cmd("QPUT").arg("c").arg("tail").query(&mut c).unwrap();
        last_id += 1;
        // ~8 MB went through; wait for the compactor (it looks every 200 ms).
        common::wait_until("the log to be compacted", || {
            common::info_field(&mut c, "log_bytes") <= 200_000
        });
        let segments = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        });
        assert!(segments.count() <= 3);
        s.signal_and_wait("-KILL");
    }
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    let i = info(&mut c, "c");
    assert_eq!((int(&i["qsize"]), int(&i["maxsize"])), (11, 100_000));
    let ready = ready_payloads(&mut c, "c");
    assert_eq!(ready.iter().filter(|p| p.len() == 1000).count(), 10);
    assert_eq!(ready.last().map(String::as_str), Some("tail"));
    let id: u64 = cmd("QPUT").arg("c").arg("after").query(&mut c).unwrap();
    assert!(id > last_id, "ids are never reused ({id} after {last_id})");
}

/// A client retries a put whose reply it lost when the broker crashed: the
/// DEDUP key must survive the crash (and a compaction), or the retry makes
/// a copy.
#[test]
fn dedup_keys_survive_a_crash_and_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let first: u64;
    {
        let s = Server::start_at(dir.path(), &["--checkpoint-bytes", "16kb"]);
        let mut c = s.conn();
        first = cmd("QPUT")
            .arg("d")
            .arg("order-42")
            .arg("DEDUP")
            .arg("k-42")
            .query(&mut c)
            .unwrap();
        // Enough traffic for a compaction to snapshot the key and delete
        // the segment its put was logged in.
        let compactions = common::info_field(&mut c, "log_compactions");
        let payload = vec![b'x'; 500];
        for _ in 0..80 {
            let got: Vec<u64> = cmd("QPUTMANY")
                .arg("other")
                .arg("PAYLOADS")
                .arg(&payload[..])
                .query(&mut c)
                .unwrap();
            let _: Vec<Entry> = cmd("QGET").arg("other").arg("NOACK").query(&mut c).unwrap();
            assert_eq!(got.len(), 1);
        }
        common::wait_until("a compaction", || {
            common::info_field(&mut c, "log_compactions") > compactions
        });
        s.signal_and_wait("-KILL");
    }
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    let again: u64 = cmd("QPUT")
        .arg("d")
        .arg("order-42")
        .arg("DEDUP")
        .arg("k-42")
        .query(&mut c)
        .unwrap();
    assert_eq!(again, first, "the retried put was deduplicated");
    let len: u64 = cmd("QLEN").arg("d").query(&mut c).unwrap();
    assert_eq!(len, 1);
}

/// A batch's finishes are logged as one record: a QDONE of many ids and a
/// QGET COUNT with NOACK or TAKE survive a kill -9 exactly.
#[test]
fn batched_finishes_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        for q in ["done", "noack", "take"] {
            let payloads: Vec<String> = (0..10).map(|i| format!("{q}{i}")).collect();
            let mut put = cmd("QPUTMANY");
            put.arg(q).arg("PAYLOADS").arg(&payloads);
            let _: Vec<u64> = put.query(&mut c).unwrap();
        }
        let got: Vec<(String, u64, Vec<u8>, u32)> = cmd("QGET")
            .arg("done")
            .arg("COUNT")
            .arg(6)
            .query(&mut c)
            .unwrap();
        let mut done = cmd("QDONE");
        done.arg("done");
        for e in &got {
            done.arg(e.1);
        }
        let n: u64 = done.query(&mut c).unwrap();
        assert_eq!(n, 6);
        for (q, mode) in [("noack", "NOACK"), ("take", "TAKE")] {
            let got: Vec<(String, u64, Vec<u8>, u32)> = cmd("QGET")
                .arg(q)
                .arg("COUNT")
                .arg(4)
                .arg(mode)
                .query(&mut c)
                .unwrap();
            assert_eq!(got.len(), 4);
        }
        s.signal_and_wait("-KILL");
    }
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    assert_eq!(
        ready_payloads(&mut c, "done"),
        (6..10).map(|i| format!("done{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        ready_payloads(&mut c, "noack"),
        (4..10).map(|i| format!("noack{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        ready_payloads(&mut c, "take"),
        (4..10).map(|i| format!("take{i}")).collect::<Vec<_>>()
    );
}

/// An idle expiry and a reopened shutdown are logged like any setting.
#[test]
fn expiry_and_reopen_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        let _: () = cmd("QCREATE")
            .arg("e")
            .arg("EXPIRE")
            .arg(600_000)
            .query(&mut c)
            .unwrap();
        let _: () = cmd("QSHUTDOWN").arg("e").query(&mut c).unwrap();
        let _: () = cmd("QREOPEN").arg("e").query(&mut c).unwrap();
        let _: () = cmd("QSHUTDOWN").arg("closed").query(&mut c).unwrap();
        s.signal_and_wait("-KILL");
    }
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    assert_eq!(common::qinfo(&mut c, "e", "expire"), 600_000);
    let _: u64 = cmd("QPUT").arg("e").arg("accepted").query(&mut c).unwrap();
    let refused: redis::RedisResult<u64> = cmd("QPUT").arg("closed").arg("x").query(&mut c);
    assert_eq!(refused.unwrap_err().code(), Some("SHUTDOWN"));
}
