//! ferry on a Redis Cluster of its own (`redis+cluster://`), started here
//! on loopback ports: queues spread over every primary, a slot moved
//! under load, a manual failover under a waiting get, a consumer killed
//! mid-task, an unreachable cluster. The semantics themselves are tested
//! on the cluster by backends.rs; a primary's faults under load by
//! faults.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::RedisCluster;
use ferry_client::{Client, Error, Value};

fn client(url: &str) -> Client {
    Client::connect(url).unwrap()
}

#[test]
fn queues_spread_over_every_primary_while_they_work() {
    let cluster = RedisCluster::start(3, 0);
    let url = format!("{}?lease=2000", cluster.url());
    let queues: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    let mut c = client(&url);
    for q in &queues {
        c.call(&[b"QCREATE", q.as_bytes()]).unwrap();
    }
    // Each queue's keys live with its hash tag's slot (CLUSTER KEYSLOT),
    // and the slots' primaries (CLUSTER SLOTS) are all three.
    let homes: BTreeSet<usize> = queues
        .iter()
        .map(|q| cluster.primary_of(&format!("ferry:{{{q}}}:m")))
        .collect();
    assert_eq!(homes.len(), 3, "12 queues on {homes:?}");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("ferry:{spread-*}:m")
            .query(&mut node.conn())
            .unwrap();
        let want = queues
            .iter()
            .filter(|q| cluster.primary_of(&format!("ferry:{{{q}}}:m")) == i)
            .count();
        assert_eq!(keys.len(), want, "node {i} holds its own queues only");
    }
    // Producers and consumers on all of them at once.
    let per_queue = 50;
    let got = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for q in queues.clone() {
        let (url_p, q_p) = (url.clone(), q.clone());
        threads.push(thread::spawn(move || {
            let (url, q) = (url_p, q_p);
            let mut c = client(&url);
            for j in 0..per_queue {
                c.put(&q, format!("{q}/{j}").as_bytes()).unwrap();
            }
        }));
        let (url, got) = (url.clone(), got.clone());
        threads.push(thread::spawn(move || {
            let mut c = client(&url);
            for _ in 0..per_queue {
                let m = c.get(&q).unwrap();
                assert!(String::from_utf8_lossy(&m.payload).starts_with(&format!("{q}/")));
                c.task_done(&q, m.id).unwrap();
                got.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(got.load(Ordering::Relaxed), 12 * per_queue);
    for q in &queues {
        c.join(q).unwrap();
        assert_eq!(c.counter(q, "done").unwrap(), per_queue as u64);
    }
    let Value::Array(listed) = c.call(&[b"QLIST"]).unwrap() else {
        panic!("QLIST")
    };
    assert_eq!(listed.len(), 12, "QLIST scans every primary");
}

/// A node's cluster id (CLUSTER MYID).
fn node_id(cluster: &RedisCluster, i: usize) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut cluster.nodes[i].conn())
        .unwrap()
}

#[test]
fn a_queue_whose_slot_moves_to_another_primary_keeps_working() {
    // The slot is moved by hand, as redis-cli --cluster reshard does it
    // (IMPORTING, MIGRATING, MIGRATE key by key, then the new owner), while
    // a producer and a consumer run: clients meet ASK and TRYAGAIN during
    // the move and MOVED after it.
    let cluster = RedisCluster::start(3, 0);
    let url = format!("{}?lease=2000", cluster.url());
    let q = "moving";
    let key = format!("ferry:{{{q}}}:m");
    let from = cluster.primary_of(&key);
    let to = (from + 1) % 3;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query(&mut cluster.nodes[from].conn())
        .unwrap();
    let n = 2000;
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (url, produced) = (url.clone(), produced.clone());
        thread::spawn(move || {
            let mut c = client(&url);
            for i in 0..n {
                c.put(q, format!("{i}").as_bytes()).unwrap();
                produced.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let consumer = {
        let url = url.clone();
        thread::spawn(move || {
            let mut c = client(&url);
            let mut seen = BTreeSet::new();
            while seen.len() < n {
                let m = c.get_timeout(q, Duration::from_secs(30)).unwrap();
                seen.insert(String::from_utf8(m.payload.to_vec()).unwrap());
                c.task_done(q, m.id).unwrap();
            }
            seen
        })
    };
    common::wait_until("a third put", || produced.load(Ordering::Relaxed) >= n / 3);
    let (from_id, to_id) = (node_id(&cluster, from), node_id(&cluster, to));
    let setslot = |i: usize, how: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(how)
            .arg(id)
            .query(&mut cluster.nodes[i].conn())
            .unwrap();
    };
    setslot(to, "IMPORTING", &from_id);
    setslot(from, "MIGRATING", &to_id);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(5)
            .query(&mut cluster.nodes[from].conn())
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(cluster.nodes[to].port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut cluster.nodes[from].conn())
            .unwrap();
    }
    for i in 0..3 {
        setslot(i, "NODE", &to_id);
    }
    common::wait_until("every node to see the slot moved", || {
        cluster.primary_of(&key) == to
    });
    let at_move = produced.load(Ordering::Relaxed);
    eprintln!("the slot moved with {at_move} of {n} put");
    assert!(at_move < n, "the move came while the producer ran");
    producer.join().unwrap();
    let seen = consumer.join().unwrap();
    assert_eq!(seen.len(), n, "every message, once at least");
    let mut c = client(&url);
    assert!(c.join_timeout(q, Duration::from_secs(30)).unwrap());
    assert_eq!(c.counter(q, "done").unwrap(), n as u64);
}

#[test]
fn a_waiting_get_carries_on_through_a_manual_failover() {
    let cluster = RedisCluster::start(3, 1);
    let url = format!("{}?lease=2000", cluster.url());
    let q = "handover";
    let home = cluster.primary_of(&format!("ferry:{{{q}}}:m"));
    let mut c = client(&url);
    c.call(&[b"QCREATE", q.as_bytes()]).unwrap();
    let getter = {
        let url = url.clone();
        thread::spawn(move || client(&url).get_timeout(q, Duration::from_secs(300)))
    };
    common::wait_until("the getter in line", || {
        c.counter(q, "waiting_getters").unwrap() == 1
    });
    // Its replica takes over (CLUSTER FAILOVER): the primary's blocked
    // clients are UNBLOCKED, and it becomes a replica (MOVED).
    let replica = cluster
        .nodes
        .iter()
        .position(|n| {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut n.conn()).unwrap();
            matches!(role.get(2), Some(redis::Value::Int(p)) if *p == i64::from(cluster.nodes[home].port))
        })
        .unwrap();
    cluster.failover(replica, &format!("ferry:{{{q}}}:m"));
    cluster.wait_ok();
    c.put(q, b"after the failover").unwrap();
    let m = getter.join().unwrap().unwrap();
    assert_eq!(&m.payload[..], b"after the failover");
}

#[test]
fn a_consumer_killed_mid_task_gives_its_message_back_after_the_lease() {
    let cluster = RedisCluster::start(3, 0);
    let url = format!("{}?lease=1000", cluster.url());
    let mut c = client(&url);
    c.put("sigkill", b"the task").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = format!("touch {}; sleep 60", started.display());
    let mut worker = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["worker", "sigkill", "--", "sh", "-c", &script])
        .env("FERRY_URL", &url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("the worker to start its task", || started.exists());
    assert_eq!(c.counter("sigkill", "leased").unwrap(), 1);
    let _ = Command::new("kill")
        .args(["-9", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    let killed = Instant::now();
    let m = c.get_timeout("sigkill", Duration::from_secs(10)).unwrap();
    let back = killed.elapsed();
    assert_eq!(
        (&m.payload[..], m.attempts),
        (&b"the task"[..], 1),
        "one attempt before"
    );
    assert!(back < Duration::from_secs(3), "back in {back:?}");
    c.task_done("sigkill", m.id).unwrap();
    assert!(c.join_timeout("sigkill", Duration::from_secs(5)).unwrap());
    // The dead worker's set of held ids went with its lease.
    for node in &cluster.nodes {
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("ferry:{sigkill}:h:*")
            .query(&mut node.conn())
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
    let _ = Command::new("pkill")
        .args(["-f", &started.display().to_string()])
        .status();
}

#[test]
fn a_cluster_with_a_password_takes_it_in_the_url() {
    let cluster = RedisCluster::start_with(3, 0, Some("s3cret-pw"));
    let seeds = cluster.url();
    let with = seeds.replace("redis+cluster://", "redis+cluster://:s3cret-pw@");
    let mut c = client(&with);
    c.put("guarded", b"in").unwrap();
    let m = c.get("guarded").unwrap();
    c.task_done("guarded", m.id).unwrap();
    assert!(c.join_timeout("guarded", Duration::from_secs(5)).unwrap());
    // Without it: a clear error, not a hang.
    let t = Instant::now();
    match Client::connect(&seeds) {
        Err(Error::Auth(why)) => eprintln!("without the password: {why}"),
        other => panic!("without the password: {:?}", other.err()),
    }
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_unreachable_cluster_is_a_clear_error_in_bounded_time() {
    let (a, b) = (common::free_port(), common::free_port());
    let url = format!("redis+cluster://127.0.0.1:{a},127.0.0.1:{b}");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["info", "jobs"])
        .env("FERRY_URL", &url)
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(3), "exit 3: cannot connect");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "says why: {err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    eprintln!("unreachable cluster: exit 3 after {took:?}: {err}");
}
