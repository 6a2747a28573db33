//! The `ferry` client verbs against the real broker: output, exit codes,
//! errors for bad arguments and an unreachable broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Server;

fn ferry(s: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_URL", s.url().replace("redis://", "ferry://"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn put_get_done_nack() {
    let s = Server::start();
    let o = ferry(&s, &["put", "jobs", "hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["put", "jobs", "--lines"])
        .env("FERRY_URL", s.url().replace("redis://", "ferry://"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a\nb\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "2\n3\n");

    let o = ferry(&s, &["get", "jobs", "--count", "2"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "hello\na\n");
    let o = ferry(&s, &["get", "jobs", "--lease", "60000"]);
    assert_eq!(stdout(&o), "3\tb\n");
    // The timed lease outlived that process; another finishes it.
    let o = ferry(&s, &["done", "jobs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ferry(&s, &["done", "jobs", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not leased"), "{}", stderr(&o));
    let o = ferry(&s, &["info", "jobs", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (info["qsize"].as_i64(), info["unfinished"].as_i64()),
        (Some(0), Some(0))
    );

    ferry(&s, &["put", "jobs", "again"]);
    let o = ferry(&s, &["get", "jobs", "--lease", "60000"]);
    let id = stdout(&o).split('\t').next().unwrap().to_string();
    assert!(ferry(&s, &["nack", "jobs", &id]).status.success());
    let o = ferry(&s, &["info"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("jobs ") && l.contains("fifo")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn exit_codes() {
    let s = Server::start();
    let o = ferry(&s, &["get", "empty", "--timeout", "0.1"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stderr(&o), "ferry: queue \"empty\" stayed empty\n");
    ferry(&s, &["put", "full", "x"]);
    let c = &mut redis::Client::open(s.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("QCONFIG")
        .arg("full")
        .arg("MAXSIZE")
        .arg(1)
        .query(c)
        .unwrap();
    let o = ferry(&s, &["put", "full", "y", "--nowait"]);
    assert_eq!(o.status.code(), Some(4));
    let t = Instant::now();
    let o = ferry(&s, &["put", "full", "y", "--timeout", "0.2"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(t.elapsed() >= Duration::from_millis(200));
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["put", "q", "x", "--url", "ferry://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with("ferry: cannot reach ferry://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1, "one line");
    let o = ferry(&s, &["get"]);
    assert_eq!(o.status.code(), Some(2), "bad arguments");
    let o = ferry(&s, &["put", "bad name", "x"]);
    assert_eq!(o.status.code(), Some(2), "a bad argument");
    assert_eq!(
        stderr(&o),
        "ferry: \"bad name\" is not a valid queue name: 1 to 200 bytes of A-Z a-z 0-9 _ . : -\n"
    );
    // One style: the queue's name, what happened, what to do.
    let o = ferry(&s, &["nack", "nosuch", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "ferry: queue \"nosuch\" does not exist (`ferry info` lists the queues)\n"
    );
    let o = ferry(&s, &["info", "nosuch"]);
    assert!(
        stderr(&o).contains("queue \"nosuch\" does not exist"),
        "{}",
        stderr(&o)
    );
    let _: () = redis::cmd("QSHUTDOWN").arg("full").query(c).unwrap();
    let o = ferry(&s, &["put", "full", "z"]);
    assert_eq!(
        stderr(&o),
        "ferry: queue \"full\" is shut down (`ferry reopen full` takes puts again)\n"
    );
    let help = stdout(&ferry(&s, &["--help"]));
    assert!(
        help.contains("$FERRY_URL") && help.contains("Exit codes: 0 done"),
        "{help}"
    );
    let help = stdout(&ferry(&s, &["get", "--help"]));
    for scheme in ["ferrys://", "redis+cluster://", "user:password@"] {
        assert!(help.contains(scheme), "{help}");
    }
}

#[test]
fn join_returns_when_consumers_finish_and_times_out_otherwise() {
    let s = Server::start();
    ferry(&s, &["put", "j", "1"]);
    ferry(&s, &["put", "j", "2"]);
    let o = ferry(&s, &["join", "j", "--timeout", "0.2"]);
    assert_eq!(o.status.code(), Some(4));
    let url = s.url().replace("redis://", "ferry://");
    let join = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["join", "j", "--url", &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = &mut s.conn();
    common::wait_for_waiters(c, "j", "waiting_joiners", 1);
    for left in [1, 0] {
        let o = ferry(&s, &["get", "j"]);
        assert!(o.status.success());
        assert_eq!(common::qinfo(c, "j", "unfinished"), left);
    }
    let o = join.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("finished"),
        "progress lines: {}",
        stderr(&o)
    );
}

#[test]
fn lock_keeps_a_second_holder_out_and_passes_the_exit_code() {
    let s = Server::start();
    let url = s.url().replace("redis://", "ferry://");
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // The first holder runs until the test lets it finish.
    let hold = format!("while [ ! -e {} ]; do sleep 0.01; done", go.display());
    let mut first = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["lock", "L", "--url", &url, "--", "sh", "-c", &hold])
        .spawn()
        .unwrap();
    let c = &mut s.conn();
    common::wait_until("the first holder", || common::info_field(c, "locks") == 1);
    let o = ferry(&s, &["lock", "L", "--timeout", "0.1", "--", "true"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let mut second = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["lock", "L", "--url", &url, "--timeout", "60", "--"])
        .args(["sh", "-c", "exit 7"])
        .spawn()
        .unwrap();
    common::wait_until("the second in line", || {
        common::info_field(c, "lock_waiters") == 1
    });
    assert!(second.try_wait().unwrap().is_none(), "it waits its turn");
    std::fs::write(&go, b"").unwrap();
    assert!(first.wait().unwrap().success());
    assert_eq!(second.wait().unwrap().code(), Some(7));
}

/// A holder whose lock runs out (its TTL) or goes with the broker (a
/// restart) is told: `ferry lock` ends its command (SIGTERM) and exits 5,
/// rather than running on beside the next holder.
#[test]
fn a_lock_lost_ends_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let flags = ["--port", port.as_str()];
    let s = Server::start_at(dir.path(), &flags);
    let url = format!("ferry://127.0.0.1:{port}");
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "lock", "ttl", "--ttl", "0.5", "--url", &url, "--", "sleep", "60",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("TTL ran out"), "{}", stderr(&o));

    let first = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["lock", "L", "--url", &url, "--", "sleep", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let c = &mut s.conn();
    common::wait_until("the holder", || common::info_field(c, "locks") == 1);
    assert!(s.signal_and_wait("-TERM").success());
    let _s = Server::start_at(dir.path(), &flags);
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("no longer held"), "{}", stderr(&o));
}

#[test]
fn bench_quick_reports_throughput_and_latency() {
    let s = Server::start();
    let o = ferry(&s, &["bench", "--quick", "-p", "2", "-c", "2", "-b", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("1000 messages of 16 B, 2 producer(s), 2 consumer(s), batch 10"),
        "{out}"
    );
    assert!(out.contains("msg/s end to end"), "{out}");
    assert!(
        out.contains("p99.9") && out.contains("(1000 samples)"),
        "{out}"
    );
    // The bench queue is dropped afterwards.
    let o = ferry(&s, &["info", "--json"]);
    assert_eq!(stdout(&o).trim(), "{}");
    // Paced: 1000 messages at 5000/s take at least 0.2 s.
    let t = Instant::now();
    let o = ferry(&s, &["bench", "--quick", "--rate", "5000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn completions_and_help() {
    let s = Server::start();
    let o = ferry(&s, &["completions", "bash"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("_ferry()"));
    let o = ferry(&s, &["put", "--help"]);
    assert!(stdout(&o).contains("--priority") && stdout(&o).contains("FERRY_URL"));
}

#[test]
fn top_shows_queues_and_rates() {
    let s = Server::start();
    ferry(&s, &["put", "t1", "x"]);
    ferry(&s, &["put", "t2", "y"]);
    let o = ferry(&s, &["top", "--iterations", "2", "--interval", "0.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("ferry top — 2 queue(s)").count(), 2, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("t1 ") && l.split_whitespace().nth(1) == Some("1")),
        "{out}"
    );
}

#[test]
fn pipelines_are_one_round_trip_in_order() {
    let s = Server::start();
    let mut c = ferry_client::Client::connect(&s.url().replace("redis://", "ferry://")).unwrap();
    let replies = c
        .pipeline(&[
            vec![&b"QPUT"[..], b"p", b"a"],
            vec![&b"QPUT"[..], b"p", b"b"],
            vec![&b"QNACK"[..], b"p", b"99"],
            vec![&b"QLEN"[..], b"p"],
        ])
        .unwrap();
    assert!(matches!(replies[0], Ok(ferry_client::Value::Int(1))));
    assert!(matches!(replies[1], Ok(ferry_client::Value::Int(2))));
    assert!(matches!(replies[2], Err(ferry_client::Error::NotLeased)));
    assert!(matches!(replies[3], Ok(ferry_client::Value::Int(2))));
}

#[test]
fn drop_purge_and_reopen_queues() {
    let s = Server::start();
    for i in 0..3 {
        ferry(&s, &["put", "old", &i.to_string()]);
    }
    let o = ferry(&s, &["purge", "old"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "old: 3 message(s) purged");
    let c = &mut s.conn();
    assert_eq!(common::qinfo(c, "old", "qsize"), 0);
    let _: () = redis::cmd("QSHUTDOWN").arg("old").query(c).unwrap();
    assert_eq!(ferry(&s, &["put", "old", "x"]).status.code(), Some(1));
    assert!(ferry(&s, &["reopen", "old"]).status.success());
    assert!(ferry(&s, &["put", "old", "x"]).status.success());
    let o = ferry(&s, &["drop", "old"]);
    assert_eq!(stdout(&o).trim(), "old: dropped");
    let o = ferry(&s, &["drop", "old"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("queue \"old\" does not exist"));
}

/// `ferry put` on a full queue does not wait in silence: after a second
/// it says so on stderr, with the queue's fill; `ferry info` and `ferry
/// top` show the waiting putter; room lets it in.
#[test]
fn a_put_waiting_on_a_full_queue_says_so() {
    use std::io::BufRead;
    let s = Server::start();
    let mut c = s.conn();
    redis::cmd("QCREATE")
        .arg("full")
        .arg("MAXSIZE")
        .arg(1)
        .query::<()>(&mut c)
        .unwrap();
    assert!(ferry(&s, &["put", "full", "first"]).status.success());
    let mut putter = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["put", "full", "second"])
        .env("FERRY_URL", s.url().replace("redis://", "ferry://"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::io::BufReader::new(putter.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let notice = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(
        notice.contains("queue \"full\" is full (1 of 1): waiting for room"),
        "{notice}"
    );
    common::wait_for_waiters(&mut c, "full", "waiting_putters", 1);
    let putters_column = |out: &str, column: usize| {
        out.lines()
            .find(|l| l.starts_with("full "))
            .and_then(|l| l.split_whitespace().nth(column).map(str::to_string))
    };
    let header = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("queue"))
            .map(str::to_string)
    };
    let info = stdout(&ferry(&s, &["info"]));
    assert!(header(&info).unwrap().ends_with("putters"), "{info}");
    assert_eq!(putters_column(&info, 8).as_deref(), Some("1"), "{info}");
    let top = stdout(&ferry(&s, &["top", "--iterations", "1"]));
    assert!(header(&top).unwrap().contains("getters  putters"), "{top}");
    assert_eq!(putters_column(&top, 6).as_deref(), Some("1"), "{top}");
    assert_eq!(stdout(&ferry(&s, &["get", "full"])), "first\n");
    let o = putter.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "2\n");
}

/// docs/configuration.md's tables and `ferry serve --help` name the same
/// flags: a flag added to one and not the other fails here.
#[test]
fn docs_configuration_names_every_serve_flag() {
    use std::collections::BTreeSet;
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help: BTreeSet<String> = stdout(&o)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '<']).next().unwrap_or_default().to_string())
        .filter(|f| f != "help")
        .collect();
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or_default().to_string();
            first
                .split('`')
                .filter_map(|w| w.strip_prefix("--").map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(help.len() > 20, "{help:?}");
    assert_eq!(help, documented);
}
