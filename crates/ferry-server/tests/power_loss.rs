//! Power loss under load, through the log's I/O seam: the broker runs in
//! this process on a fault-injecting storage; at a random moment every log
//! file is cut back to its last synced length (what losing power does — a
//! kill -9 cannot show a missing fsync, since the page cache survives it);
//! the broker must stop acknowledging, and a restart on the same directory
//! must hold every acknowledged put that was not done, and no acknowledged
//! done may come back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ferry_server::{Config, Durability, Faults, LogStorage, Server, Stopped};
use rand::{Rng, SeedableRng};

type Entry = (String, u64, Vec<u8>, u32);

#[derive(Default)]
struct Ledger {
    sent: BTreeSet<String>,
    acked: BTreeSet<String>,
    done_sent: BTreeSet<String>,
    done_acked: BTreeSet<String>,
}

fn config(dir: &std::path::Path, storage: Option<Faults>) -> Config {
    Config {
        port: 0,
        data_dir: dir.to_path_buf(),
        durability: Durability::Sync,
        log_storage: storage.map(|f| LogStorage(Arc::new(f))),
        // Small checkpoints, so that power is also cut mid-compaction.
        checkpoint_bytes: 32 << 10,
        ..Config::default()
    }
}

/// Starts a server on its own runtime; replies the runtime, the port, a
/// stop switch and the server's task.
fn start(
    config: Config,
) -> (
    tokio::runtime::Runtime,
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Stopped>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(Server::bind(config)).unwrap();
    let port = server.bound().tcp.port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.run(async {
        let _ = rx.await;
    }));
    (rt, port, tx, task)
}

fn check(dir: &std::path::Path, l: &Ledger, cycle: usize) {
    let (rt, port, stop, task) = start(config(dir, None));
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<Entry> = redis::cmd("QPEEK")
        .arg("load")
        .arg("COUNT")
        .arg(1_000_000)
        .query(&mut c)
        .unwrap();
    let ready: BTreeSet<String> = entries
        .into_iter()
        .map(|e| String::from_utf8(e.2).unwrap())
        .collect();
    for p in &l.acked {
        assert!(
            ready.contains(p) || l.done_sent.contains(p),
            "cycle {cycle}: acknowledged put {p} lost"
        );
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
    drop(c);
    stop.send(()).unwrap();
    assert_eq!(rt.block_on(task).unwrap(), Stopped::Clean);
}

#[test]
fn power_loss_under_load_loses_nothing_acknowledged() {
    let seed: u64 = rand::rng().random();
    println!("power-loss seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut cuts = 0;
    for cycle in 0..10 {
        let faults = Faults::new();
        let (rt, port, _stop, task) = start(config(dir.path(), Some(faults.clone())));
        let url = format!("redis://127.0.0.1:{port}/");
        // The cut comes once this many more puts were acknowledged: a
        // random moment of the load, whatever the machine's speed.
        let cut_at = ledger.lock().unwrap().acked.len() + rng.random_range(50..1500);
        let mut workers = Vec::new();
        for p in 0..3 {
            let (url, ledger) = (url.clone(), Arc::clone(&ledger));
            workers.push(thread::spawn(move || {
                let Ok(mut c) = redis::Client::open(url).unwrap().get_connection() else {
                    return;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                // Until the cut stops the broker under it.
                for n in 0.. {
                    let payload = format!("c{cycle}-p{p}-{n}");
                    ledger.lock().unwrap().sent.insert(payload.clone());
                    match redis::cmd("QPUT")
                        .arg("load")
                        .arg(&payload)
                        .query::<u64>(&mut c)
                    {
                        Ok(_) => {
                            ledger.lock().unwrap().acked.insert(payload);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (url, ledger) = (url.clone(), Arc::clone(&ledger));
            workers.push(thread::spawn(move || {
                let Ok(mut c) = redis::Client::open(url).unwrap().get_connection() else {
                    return;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                loop {
                    let got: Option<Vec<Entry>> = match redis::cmd("QGET")
                        .arg("load")
                        .arg("TIMEOUT")
                        .arg(50)
                        .query(&mut c)
                    {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                    for e in got.unwrap_or_default() {
                        let payload = String::from_utf8(e.2).unwrap();
                        ledger.lock().unwrap().done_sent.insert(payload.clone());
                        match redis::cmd("QDONE")
                            .arg("load")
                            .arg(e.1)
                            .query::<u64>(&mut c)
                        {
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
        let give_up = Instant::now() + Duration::from_secs(60);
        while ledger.lock().unwrap().acked.len() < cut_at {
            assert!(Instant::now() < give_up, "the load stalled");
            thread::sleep(Duration::from_millis(5));
        }
        faults.power_cut().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        // The log failed under the server: it stops by itself.
        let stopped =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
        if let Ok(Ok(Stopped::LogFailed)) = stopped {
            cuts += 1;
        }
        drop(rt);
        check(dir.path(), &ledger.lock().unwrap(), cycle);
    }
    let l = ledger.lock().unwrap();
    assert!(
        l.acked.len() > 50,
        "the load did work ({} puts acknowledged)",
        l.acked.len()
    );
    assert!(
        cuts >= 5,
        "the cut stopped the server in only {cuts} of 10 cycles"
    );
}

/// A disk too full for the log's next segment is not a crash: once a
/// checkpoint cannot preallocate one, puts get -NOSPACE while gets and
/// dones go on, and everything acknowledged is there after a restart.
#[test]
fn a_disk_too_full_for_a_new_segment_refuses_puts_only() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (rt, port, stop, task) = start(config(dir.path(), Some(faults.clone())));
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    faults.fill_disk();
    // Puts until the log passes the checkpoint size; the checkpoint's new
    // segment finds the disk full.
    let payload = vec![b'x'; 512];
    let mut acked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        assert!(Instant::now() < deadline, "puts were never refused");
        match redis::cmd("QPUT")
            .arg("jobs")
            .arg(&payload)
            .query::<u64>(&mut c)
        {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), Some("NOSPACE"), "{refusal}");
    assert!(acked > 10, "{acked} puts before the refusal");
    // Gets and dones still work and are logged.
    let got: Vec<Entry> = redis::cmd("QGET")
        .arg("jobs")
        .arg("COUNT")
        .arg(5)
        .query(&mut c)
        .unwrap();
    assert_eq!(got.len(), 5);
    for e in &got {
        let n: u64 = redis::cmd("QDONE")
            .arg("jobs")
            .arg(e.1)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 1);
    }
    drop(c);
    stop.send(()).unwrap();
    assert_eq!(rt.block_on(task).unwrap(), Stopped::Clean);
    drop(rt);

    let (rt, port, stop, task) = start(config(dir.path(), None));
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let left: u64 = redis::cmd("QLEN").arg("jobs").query(&mut c).unwrap();
    assert_eq!(left, acked - 5);
    // With room again, puts are accepted.
    let _: u64 = redis::cmd("QPUT")
        .arg("jobs")
        .arg("again")
        .query(&mut c)
        .unwrap();
    drop(c);
    stop.send(()).unwrap();
    assert_eq!(rt.block_on(task).unwrap(), Stopped::Clean);
}
