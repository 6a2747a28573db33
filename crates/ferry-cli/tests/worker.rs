//! `ferry worker` on every engine (ferry's broker, Redis, a Redis
//! Cluster): every task done once, retries and dead letters, timeouts,
//! kill -9 of the supervisor, and no zombie or orphan at any point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Engine;

fn worker(s: &Engine, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("worker")
        .args(args)
        .env("FERRY_URL", s.url())
        // One log line per task: kept out of the test output.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn client(s: &Engine) -> ferry_client::Client {
    s.client()
}

fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `sleep <marker>` processes (the worker's and the shim's own command
/// lines name the marker too, so only the sleeps count).
fn with_marker(marker: &str) -> Vec<u32> {
    let want = format!("sleep\0{marker}\0");
    all_pids()
        .into_iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .collect()
}

/// Polls every 100 ms for zombies among the supervisor's children and
/// grandchildren; fails if one lives longer than a second.
struct ZombieWatch {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<Duration>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ZombieWatch {
    fn start(supervisor: u32) -> ZombieWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let (s, w) = (Arc::clone(&stop), Arc::clone(&worst));
        let thread = thread::spawn(move || {
            let mut seen: HashMap<u32, Instant> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let mut now_zombies = Vec::new();
                for pid in all_pids() {
                    let Some((state, ppid)) = stat(pid) else {
                        continue;
                    };
                    let ours =
                        ppid == supervisor || stat(ppid).is_some_and(|(_, pp)| pp == supervisor);
                    if state == 'Z' && ours {
                        now_zombies.push(pid);
                    }
                }
                seen.retain(|pid, _| now_zombies.contains(pid));
                for pid in now_zombies {
                    let first = *seen.entry(pid).or_insert_with(Instant::now);
                    let mut worst = w.lock().unwrap();
                    *worst = (*worst).max(first.elapsed());
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        ZombieWatch {
            stop,
            worst,
            thread: Some(thread),
        }
    }

    fn check(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let worst = *self.worst.lock().unwrap();
        assert!(worst < Duration::from_secs(1), "a zombie lived {worst:?}");
    }
}

fn stop(mut w: Child) {
    Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status()
        .unwrap();
    let status = w.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the worker with 0, got {status:?}"
    );
}

on_every_engine!(
    two_hundred_tasks_through_four_workers_each_done_once,
    failing_tasks_are_retried_then_dead_lettered_with_their_attempts,
    a_hung_task_is_killed_with_everything_it_started,
    kill_9_of_the_supervisor_leaves_no_orphan_and_a_second_finishes,
    persistent_children_take_one_message_at_a_time_and_are_restarted,
);

fn two_hundred_tasks_through_four_workers_each_done_once(s: &Engine) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let mut c = client(s);
    for i in 0..200 {
        c.put("jobs", format!("m{i}").as_bytes()).unwrap();
    }
    // One write per line, so that concurrent tasks cannot interleave.
    let script = format!("x=$(cat); echo \"$x\" >> {}", out.display());
    let w = worker(s, &["jobs", "-j", "4", "--", "sh", "-c", &script]);
    let zombies = ZombieWatch::start(w.id());
    common::wait_until("all 200 done", || c.unfinished("jobs").unwrap() == 0);
    stop(w);
    zombies.check();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    want.sort_unstable();
    assert_eq!(lines, want, "every task ran exactly once");
}

fn failing_tasks_are_retried_then_dead_lettered_with_their_attempts(s: &Engine) {
    let mut c = client(s);
    c.call(&[
        b"QCREATE",
        b"flaky",
        b"MAXATTEMPTS",
        b"3",
        b"DEADLETTER",
        b"flaky-dlq",
    ])
    .unwrap();
    c.put("flaky", b"good").unwrap();
    c.put("flaky", b"bad").unwrap();
    let w = worker(
        s,
        &[
            "flaky",
            "-j",
            "2",
            "--",
            "sh",
            "-c",
            "read x; [ \"$x\" = good ]",
        ],
    );
    let zombies = ZombieWatch::start(w.id());
    common::wait_until("the bad one dead-lettered", || {
        c.qsize("flaky-dlq").unwrap() == 1
    });
    common::wait_until("nothing unfinished", || c.unfinished("flaky").unwrap() == 0);
    stop(w);
    zombies.check();
    let dead = c.get_nowait("flaky-dlq").unwrap();
    assert_eq!((dead.payload.as_slice(), dead.attempts), (&b"bad"[..], 3));
}

fn a_hung_task_is_killed_with_everything_it_started(s: &Engine) {
    let mut c = client(s);
    // One attempt only: the killed task is not started again, so its
    // processes must vanish and stay gone.
    c.call(&[b"QCREATE", b"hung", b"MAXATTEMPTS", b"1"])
        .unwrap();
    c.put("hung", b"x").unwrap();
    let marker = format!("1000.{}", std::process::id());
    let script = format!("sleep {marker} & sleep {marker}; wait");
    let t = Instant::now();
    let w = worker(
        s,
        &[
            "hung",
            "--timeout",
            "0.3",
            "--grace",
            "0.2",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let zombies = ZombieWatch::start(w.id());
    common::wait_until("the task started", || !with_marker(&marker).is_empty());
    common::wait_until("the hung task and its grandchild killed", || {
        with_marker(&marker).is_empty()
    });
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "not before its timeout"
    );
    common::wait_until("given back, then dead-lettered", || {
        c.unfinished("hung").unwrap() == 0
    });
    // Dead-lettered, so nothing is left that could start it again.
    assert_eq!(c.counter("hung", "dead_lettered").unwrap(), 1);
    assert_eq!(
        c.qsize("hung").unwrap() + c.counter("hung", "leased").unwrap(),
        0
    );
    assert!(with_marker(&marker).is_empty(), "nothing started again");
    stop(w);
    zombies.check();
}

fn kill_9_of_the_supervisor_leaves_no_orphan_and_a_second_finishes(s: &Engine) {
    let mut c = client(s);
    for i in 0..8 {
        c.put("k9", format!("{i}").as_bytes()).unwrap();
    }
    let marker = format!("30.{}", std::process::id());
    let script = format!("cat > /dev/null; sleep {marker} & wait");
    let mut w = worker(s, &["k9", "-j", "4", "--", "sh", "-c", &script]);
    common::wait_until("four tasks running", || with_marker(&marker).len() >= 4);
    w.kill().unwrap(); // SIGKILL
    w.wait().unwrap();
    common::wait_until("no orphan left", || with_marker(&marker).is_empty());
    // The dead supervisor's leases came back: a second one finishes all.
    let w = worker(s, &["k9", "-j", "4", "--", "sh", "-c", "cat > /dev/null"]);
    let zombies = ZombieWatch::start(w.id());
    common::wait_until("all finished by the second supervisor", || {
        c.unfinished("k9").unwrap() == 0
    });
    stop(w);
    zombies.check();
}

fn persistent_children_take_one_message_at_a_time_and_are_restarted(s: &Engine) {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut c = client(s);
    for i in 0..50 {
        c.put("p", format!("line {i}").as_bytes()).unwrap();
    }
    // Each child notes its pid per message and answers ok; two children
    // serve all fifty.
    let script = format!(
        "while read x; do echo $$ >> {}; echo ok; done",
        pids.display()
    );
    let w = worker(
        s,
        &["p", "-j", "2", "--persistent", "--", "sh", "-c", &script],
    );
    let zombies = ZombieWatch::start(w.id());
    common::wait_until("all 50 done", || c.unfinished("p").unwrap() == 0);
    let text = std::fs::read_to_string(&pids).unwrap();
    let distinct: std::collections::BTreeSet<&str> = text.lines().collect();
    assert_eq!(text.lines().count(), 50);
    assert!(distinct.len() <= 2, "long-lived children: {distinct:?}");

    // Length framing, and a child that dies on every message: restarted,
    // the message given back until it is dead-lettered.
    c.call(&[b"QCREATE", b"crash", b"MAXATTEMPTS", b"2"])
        .unwrap();
    c.put("crash", b"boom").unwrap();
    stop(w);
    zombies.check();
    let w = worker(
        s,
        &[
            "crash",
            "--persistent",
            "--framing",
            "length",
            "--",
            "sh",
            "-c",
            "read n; exit 3",
        ],
    );
    let zombies = ZombieWatch::start(w.id());
    common::wait_until("dead-lettered after two tries", || {
        c.unfinished("crash").unwrap() == 0
    });
    stop(w);
    zombies.check();
}
