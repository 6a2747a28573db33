//! The Rust client against the real broker: Python's queue semantics over
//! the network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use ferry_client::{Client, Error};

fn client(s: &Server) -> Client {
    Client::connect(&format!("ferry://127.0.0.1:{}", s.port)).unwrap()
}

#[test]
fn put_get_task_done_as_python_counts() {
    let s = Server::start();
    let mut c = client(&s);
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
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(c.qsize("jobs").unwrap(), 2);
    let m = c.get("jobs").unwrap();
    assert_eq!(
        (m.queue.as_str(), m.id, m.payload.as_slice(), m.attempts),
        ("jobs", a, &b"a"[..], 0)
    );
    c.task_done("jobs", m.id).unwrap();
    assert!(
        matches!(c.task_done("jobs", m.id), Err(Error::NotLeased)),
        "task_done() called too many times"
    );
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
}

#[test]
fn a_dropped_consumer_s_message_goes_to_another_with_one_more_attempt() {
    let s = Server::start();
    let mut producer = client(&s);
    let id = producer.put("w", b"job").unwrap();
    {
        let mut dying = client(&s);
        assert_eq!(dying.get("w").unwrap().id, id);
    }
    let mut other = client(&s);
    let m = other.get_timeout("w", Duration::from_secs(5)).unwrap();
    assert_eq!((m.id, m.attempts), (id, 1));
    // The first consumer's late done could not finish the redelivered copy.
    assert!(matches!(producer.task_done("w", id), Err(Error::NotLeased)));
    other.task_done("w", id).unwrap();
}

#[test]
fn join_waits_for_another_client_s_task_done() {
    let s = Server::start();
    let mut c = client(&s);
    let ids = c.put_many("j", &[&b"1"[..], b"2", b"3"]).unwrap();
    assert_eq!(ids.len(), 3);
    let port = s.port;
    let (got, finish) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let worker = thread::spawn(move || {
        let mut w = Client::connect(&format!("ferry://127.0.0.1:{port}")).unwrap();
        let batch = w.get_many("j", 10, Some(Duration::from_secs(5))).unwrap();
        got.0.send(batch.len()).unwrap();
        // Finishes only when the test says so.
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

#[test]
fn shutdown_as_python_3_13() {
    let s = Server::start();
    let mut c = client(&s);
    c.put("q", b"last").unwrap();
    c.shutdown("q", false).unwrap();
    assert!(matches!(c.put("q", b"late"), Err(Error::ShutDown)));
    assert_eq!(c.get("q").unwrap().payload, b"last");
    assert!(matches!(c.get("q"), Err(Error::ShutDown)));
}

#[test]
fn unix_socket_passwords_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.sock");
    let s = Server::start_with(&["--unix", path.to_str().unwrap(), "--requirepass", "pw"]);
    let mut c = Client::connect(&format!("unix://{}?password=pw", path.display())).unwrap();
    assert_eq!(c.put("u", b"x").unwrap(), 1);
    assert!(matches!(
        Client::connect(&format!("ferry://:nope@127.0.0.1:{}", s.port)),
        Err(Error::Auth(_))
    ));
    // Without the password a connection is refused at once, not at its
    // first command.
    assert!(matches!(
        Client::connect(&format!("ferry://127.0.0.1:{}", s.port)),
        Err(Error::Auth(_))
    ));
    assert!(matches!(
        Client::connect("ferry://127.0.0.1:1"),
        Err(Error::Io(_))
    ));
    assert!(matches!(Client::connect("http://x"), Err(Error::Url(_))));
}

/// The broker dies and comes back on the same address: the client
/// reconnects, retries the put safely (its DEDUP key survives the crash),
/// and reports the lease it held on the dead connection as lost.
#[test]
fn reconnects_and_retries_only_what_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let s = Server::start_at(dir.path(), &["--port", &port]);
    let mut c = Client::connect(&format!("ferry://127.0.0.1:{port}")).unwrap();
    c.put("r", b"before").unwrap();
    let leased = c.get("r").unwrap();
    s.signal_and_wait("-KILL");
    let (d, p) = (dir.path().to_path_buf(), port.clone());
    let restarter = thread::spawn(move || {
        // An outage of 300 ms, during which the client's put retries.
        thread::sleep(Duration::from_millis(300));
        Server::start_at(&d, &["--port", &p])
    });
    // Reconnects (with backoff) while the broker is down, then puts.
    let id = c.put("r", b"after").unwrap();
    let s = restarter.join().unwrap();
    assert!(id > leased.id);
    assert!(matches!(c.task_done("r", leased.id), Err(Error::LeaseLost)));
    // "before" was leased when the broker died: it is back, one attempt up.
    let again = c.get_nowait("r").unwrap();
    assert_eq!(
        (again.payload.as_slice(), again.attempts),
        (&b"before"[..], 1)
    );
    c.task_done("r", again.id).unwrap();
    assert_eq!(c.qsize("r").unwrap(), 1);

    // Batches carry no DEDUP key, so a lost connection is reported, not
    // retried.
    s.signal_and_wait("-KILL");
    c.set_reconnect(ferry_client::Reconnect {
        within: Duration::from_millis(200),
        first_backoff: Duration::from_millis(10),
    });
    assert!(matches!(c.put_many("r", &[&b"x"[..]]), Err(Error::Io(_))));
    assert!(
        matches!(c.qsize("r"), Err(Error::Io(_))),
        "gives up after `within`"
    );
}

#[test]
fn the_async_client_is_the_same_client() {
    let s = Server::start();
    let url = format!("ferry://127.0.0.1:{}", s.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ferry_client::AsyncClient::connect(&url).await.unwrap();
        let id = c.put("a", b"x").await.unwrap();
        let m = c.get("a").await.unwrap();
        assert_eq!((m.id, m.payload.as_slice()), (id, &b"x"[..]));
        c.task_done("a", m.id).await.unwrap();
        assert!(matches!(
            c.task_done("a", m.id).await,
            Err(Error::NotLeased)
        ));
        assert!(matches!(
            c.get_timeout("a", Duration::from_millis(20)).await,
            Err(Error::Empty)
        ));
        // Many clients at once on one thread: a blocked get does not block
        // the others.
        let mut getter = ferry_client::AsyncClient::connect(&url).await.unwrap();
        let waiting = tokio::spawn(async move { getter.get("a").await.map(|m| m.payload) });
        while c.counter("a", "waiting_getters").await.unwrap() == 0 {
            tokio::task::yield_now().await;
        }
        c.put("a", b"wake").await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), b"wake");
        // The getter never marked "wake" done.
        assert!(
            !c.join_timeout("a", Duration::from_millis(50))
                .await
                .unwrap()
        );
    });
}

#[test]
fn touch_extends_a_lease() {
    let s = Server::start();
    let mut c = client(&s);
    c.call(&[b"QCREATE", b"t", b"LEASE", b"200"]).unwrap();
    c.put_many("t", &[&b"slow job"[..], b"untouched"]).unwrap();
    let m = c.get("t").unwrap();
    let left = c.touch("t", m.id, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(left, Some(Duration::from_secs(5)));
    let other = c.get("t").unwrap();
    // The untouched 200 ms lease runs out; the touched one does not.
    common::wait_until("the untouched lease to expire", || {
        c.counter("t", "expired").unwrap() == 1
    });
    c.task_done("t", m.id).unwrap();
    assert!(matches!(c.task_done("t", other.id), Err(Error::NotLeased)));
    c.put("u", b"x").unwrap();
    let m = c.get("u").unwrap();
    assert_eq!(
        c.touch("u", m.id, None).unwrap(),
        None,
        "a lease as long as the connection"
    );
    assert!(matches!(c.touch("u", 999, None), Err(Error::NotLeased)));
}

#[test]
fn a_broker_restart_is_invisible_to_waiting_calls() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let flags = ["--port", port.as_str()];
    let s = Server::start_at(dir.path(), &flags);
    let url = format!("ferry://127.0.0.1:{port}");
    let mut c = Client::connect(&url).unwrap();
    c.put("r", b"unfinished").unwrap();
    // A get, a join and a lock wait while the broker goes away and comes back.
    let waiting_get = {
        let url = url.clone();
        thread::spawn(move || {
            let mut w = Client::connect(&url).unwrap();
            let m = w.get_timeout("r2", Duration::from_secs(60)).unwrap();
            w.task_done("r2", m.id).unwrap();
            m.payload
        })
    };
    let waiting_join = {
        let url = url.clone();
        thread::spawn(move || {
            Client::connect(&url)
                .unwrap()
                .join_timeout("r", Duration::from_secs(60))
                .unwrap()
        })
    };
    let mut probe = s.conn();
    common::wait_for_waiters(&mut probe, "r2", "waiting_getters", 1);
    common::wait_for_waiters(&mut probe, "r", "waiting_joiners", 1);
    drop(probe);
    assert!(s.signal_and_wait("-TERM").success());
    let s = Server::start_at(dir.path(), &flags);
    // The producer's put (with its DEDUP key) goes in once.
    let mut p = Client::connect(&url).unwrap();
    p.put("r2", b"after the restart").unwrap();
    assert_eq!(waiting_get.join().unwrap(), b"after the restart");
    let m = p.get("r").unwrap();
    p.task_done("r", m.id).unwrap();
    assert!(waiting_join.join().unwrap(), "the join saw the done");
    // The client that was connected before the restart goes on.
    c.put("r3", b"x").unwrap();
    assert_eq!(c.qsize("r3").unwrap(), 1);
    // A waited get that runs out while the broker is away times out, not
    // errs.
    let mut w = Client::connect(&url).unwrap();
    let short = thread::spawn(move || w.get_timeout("r4", Duration::from_millis(1500)));
    let mut probe = s.conn();
    common::wait_for_waiters(&mut probe, "r4", "waiting_getters", 1);
    drop(probe);
    let stopped = Instant::now();
    assert!(s.signal_and_wait("-TERM").success());
    // Down past the get's deadline, then back.
    while stopped.elapsed() < Duration::from_millis(1600) {
        thread::sleep(Duration::from_millis(50));
    }
    let _s = Server::start_at(dir.path(), &flags);
    assert!(matches!(short.join().unwrap(), Err(Error::Empty)));
}

/// `ferry put` carries a DEDUP key of its own, as the client's puts do:
/// one waiting for room while the broker restarts is sent again when it
/// comes back, and goes in once (a plain QPUT would fail: it may have
/// happened).
#[test]
fn a_cli_put_waiting_across_a_restart_goes_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let flags = ["--port", port.as_str()];
    let s = Server::start_at(dir.path(), &flags);
    let url = format!("ferry://127.0.0.1:{port}");
    let mut c = Client::connect(&url).unwrap();
    c.call(&[b"QCREATE", b"full", b"MAXSIZE", b"1"]).unwrap();
    c.put("full", b"first").unwrap();
    let put = {
        let url = url.clone();
        thread::spawn(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["put", "full", "second", "--url", &url])
                .output()
        })
    };
    let mut probe = s.conn();
    common::wait_for_waiters(&mut probe, "full", "waiting_putters", 1);
    drop(probe);
    assert!(s.signal_and_wait("-TERM").success());
    let s = Server::start_at(dir.path(), &flags);
    let m = c.get("full").unwrap();
    assert_eq!(m.payload, b"first");
    c.task_done("full", m.id).unwrap();
    let out = put.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = c.get("full").unwrap();
    assert_eq!(m.payload, b"second");
    c.task_done("full", m.id).unwrap();
    assert_eq!(c.qsize("full").unwrap(), 0, "it went in once");
    drop(s);
}
