//! The HTTP admin port (`--http`): /metrics and the JSON API against a
//! real broker under load, its password, and its refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use ferry_client::Client;

fn get(url: &str) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let mut r = agent.get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send_empty().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// A sample's value in OpenMetrics text: `name{queue="q"} value`.
fn sample(text: &str, name: &str, queue: Option<&str>) -> Option<u64> {
    let prefix = match queue {
        Some(q) => format!("{name}{{queue=\"{q}\"}} "),
        None => format!("{name} "),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn metrics_and_the_api_move_with_the_load() {
    let s = Server::start();
    let http = s.http.clone().unwrap();
    let url = format!("ferry://127.0.0.1:{}", s.port);
    let (status, text) = get(&format!("{http}/metrics"));
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "ferry_queues", None), Some(0));
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );

    // A producer and a consumer, bounded in count.
    let n = 2_000;
    let producer = {
        let url = url.clone();
        thread::spawn(move || {
            let mut c = Client::connect(&url).unwrap();
            for i in 0..n {
                c.put("work", format!("job {i}").as_bytes()).unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let text = get(&format!("{http}/metrics")).1;
        let puts = sample(&text, "ferry_queue_puts_total", Some("work")).unwrap_or(0);
        seen.push(puts);
        if puts == n || Instant::now() > give_up {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    producer.join().unwrap();
    assert_eq!(*seen.last().unwrap(), n, "puts reach {n}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "a counter never goes down"
    );

    let mut c = Client::connect(&url).unwrap();
    for _ in 0..10 {
        let m = c.get("work").unwrap();
        c.task_done("work", m.id).unwrap();
    }
    let _held = c.get("work").unwrap();
    let text = get(&format!("{http}/metrics")).1;
    assert_eq!(
        sample(&text, "ferry_queue_dones_total", Some("work")),
        Some(10)
    );
    assert_eq!(
        sample(&text, "ferry_queue_leased_messages", Some("work")),
        Some(1)
    );
    assert_eq!(
        sample(&text, "ferry_queue_ready_messages", Some("work")),
        Some(n - 11)
    );
    assert_eq!(
        sample(&text, "ferry_queue_unfinished_messages", Some("work")),
        Some(n - 10)
    );
    assert!(sample(&text, "ferry_connected_clients", None).unwrap() >= 1);
    assert!(sample(&text, "ferry_log_records_total", None).unwrap() > 0);
    // Every family is described once.
    let mut names = HashSet::new();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).unwrap();
        assert!(names.insert(name.to_string()), "{name} twice");
    }

    // The JSON API says the same.
    let (status, body) = get(&format!("{http}/api/queues/work?peek=3"));
    assert_eq!(status, 200);
    let q: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(q["qsize"], n - 11);
    assert_eq!(q["leased"], 1);
    assert_eq!(q["done"], 10);
    let next: Vec<&str> = q["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["preview"].as_str().unwrap())
        .collect();
    assert_eq!(next, ["job 11", "job 12", "job 13"]);
    let list: serde_json::Value =
        serde_json::from_str(&get(&format!("{http}/api/queues")).1).unwrap();
    assert_eq!(list[0]["name"], "work");
    let server: serde_json::Value =
        serde_json::from_str(&get(&format!("{http}/api/server")).1).unwrap();
    assert_eq!(server["queues"], 1);
    assert_eq!(get(&format!("{http}/api/queues/nope")).0, 404);

    // A lock shows with its token.
    let token = c.lock("nightly", None, None).unwrap().unwrap();
    let locks: serde_json::Value =
        serde_json::from_str(&get(&format!("{http}/api/locks")).1).unwrap();
    assert_eq!(locks[0]["name"], "nightly");
    assert_eq!(locks[0]["token"], token);

    // Purge through the API: the ready messages go, the leased one stays.
    let (status, body) = post(&format!("{http}/api/queues/work/purge"), &[]);
    assert_eq!(
        (status, body.as_str()),
        (200, format!("{{\"purged\":{}}}", n - 11).as_str())
    );
    assert_eq!(c.qsize("work").unwrap(), 0);
    assert_eq!(c.unfinished("work").unwrap(), 1);
}

#[test]
fn the_oldest_message_s_age_grows_until_it_is_done() {
    let s = Server::start();
    let http = s.http.clone().unwrap();
    let mut c = Client::connect(&format!("ferry://127.0.0.1:{}", s.port)).unwrap();
    let age = || {
        let q: serde_json::Value =
            serde_json::from_str(&get(&format!("{http}/api/queues/aging")).1).unwrap();
        q["oldest_age_seconds"].as_u64()
    };
    c.put("aging", b"old").unwrap();
    assert!(age().unwrap() <= 1);
    common::wait_until("the oldest message to be 2 s old", || age().unwrap() >= 2);
    let text = get(&format!("{http}/metrics")).1;
    assert!(
        sample(
            &text,
            "ferry_queue_oldest_message_age_seconds",
            Some("aging")
        )
        .unwrap()
            >= 2
    );
    // A leased message is still held; a newer one does not make it younger.
    let m = c.get("aging").unwrap();
    c.put("aging", b"new").unwrap();
    assert!(age().unwrap() >= 2);
    c.task_done("aging", m.id).unwrap();
    assert!(age().unwrap() <= 1);
    let n = c.get("aging").unwrap();
    c.task_done("aging", n.id).unwrap();
    assert_eq!(age(), None);
}

#[test]
fn the_log_s_fsyncs_and_group_commits_are_histograms() {
    let s = Server::start_with(&["--durability", "sync"]);
    let http = s.http.clone().unwrap();
    let url = format!("ferry://127.0.0.1:{}", s.port);
    // Four producers at once, so that commits group records.
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let url = url.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&url).unwrap();
                for i in 0..50 {
                    c.put("logged", format!("{p}-{i}").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let text = get(&format!("{http}/metrics")).1;
    let fsyncs = sample(&text, "ferry_log_fsyncs_total", None).unwrap();
    let records = sample(&text, "ferry_log_records_total", None).unwrap();
    assert!(fsyncs > 0 && records >= 200, "{fsyncs} {records}");
    assert_eq!(
        sample(&text, "ferry_log_fsync_seconds_count", None),
        Some(fsyncs)
    );
    let inf = |name: &str| {
        let prefix = format!("{name}_bucket{{le=\"+Inf\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse::<u64>().unwrap())
    };
    assert_eq!(inf("ferry_log_fsync_seconds"), Some(fsyncs));
    // Every record was in exactly one write.
    let batch_sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ferry_log_write_batch_records_sum "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(batch_sum as u64, records);
    assert!(sample(&text, "ferry_log_segments", None).unwrap() >= 1);
}

#[test]
fn clients_show_who_they_are_what_they_did_and_who_waits() {
    let s = Server::start();
    let http = s.http.clone().unwrap();
    let clients = || -> Vec<serde_json::Value> {
        serde_json::from_str(&get(&format!("{http}/api/clients")).1).unwrap()
    };
    let mut named = s.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("producer-1")
        .query(&mut named)
        .unwrap();
    let _: () = redis::cmd("QPUT")
        .arg("jobs")
        .arg("x")
        .query(&mut named)
        .unwrap();
    // A consumer with the message in hand, and another waiting for more.
    let mut holder = s.conn();
    let _: redis::Value = redis::cmd("QGET").arg("jobs").query(&mut holder).unwrap();
    let waiter = {
        let mut w = s.conn();
        thread::spawn(move || {
            let _: redis::Value = redis::cmd("QGET")
                .arg("jobs")
                .arg("TIMEOUT")
                .arg("20000")
                .query(&mut w)
                .unwrap();
        })
    };
    common::wait_for_waiters(&mut named, "jobs", "waiting_getters", 1);
    let q: serde_json::Value =
        serde_json::from_str(&get(&format!("{http}/api/queues/jobs")).1).unwrap();
    assert_eq!(
        (q["holders"].as_u64(), q["waiting_getters"].as_u64()),
        (Some(1), Some(1))
    );
    let all = clients();
    assert_eq!(all.len(), 3, "{all:?}");
    let producer = all.iter().find(|c| c["name"] == "producer-1").unwrap();
    assert!(producer["commands"].as_u64().unwrap() >= 2, "{producer}");
    assert!(producer["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(all.iter().filter(|c| c["blocked"] == true).count(), 1);
    // The waiter gets its message; a client that leaves is gone.
    let _: () = redis::cmd("QPUT")
        .arg("jobs")
        .arg("y")
        .query(&mut named)
        .unwrap();
    waiter.join().unwrap();
    drop(holder);
    common::wait_until("the departed clients to go from the list", || {
        clients().len() == 1
    });
    assert_eq!(clients()[0]["name"], "producer-1");
}

#[test]
fn a_change_from_another_origin_is_refused() {
    let s = Server::start();
    let http = s.http.clone().unwrap();
    let mut c = Client::connect(&format!("ferry://127.0.0.1:{}", s.port)).unwrap();
    c.put("keep", b"x").unwrap();
    let (status, _) = post(
        &format!("{http}/api/queues/keep/purge"),
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403);
    assert_eq!(c.qsize("keep").unwrap(), 1);
    let own = http.clone();
    let (status, _) = post(
        &format!("{http}/api/queues/keep/purge"),
        &[("Origin", &own)],
    );
    assert_eq!(status, 200);
    assert_eq!(c.qsize("keep").unwrap(), 0);
}

#[test]
fn the_http_port_wants_the_password_when_one_is_set() {
    let s = Server::start_with(&["--requirepass", "s3cret"]);
    let http = s.http.clone().unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .build(),
    );
    for path in [
        "/",
        "/metrics",
        "/api/server",
        "/api/queues",
        "/api/queues/q",
        "/api/locks",
        "/api/sync",
        "/api/clients",
    ] {
        let r = agent.get(&format!("{http}{path}")).call().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        assert!(r.headers().get("www-authenticate").is_some());
        let wrong = agent
            .get(&format!("{http}{path}"))
            .header("Authorization", "Bearer nope")
            .call()
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path}");
    }
    for change in ["purge", "pause", "resume", "redrive"] {
        let r = agent
            .post(&format!("{http}/api/queues/q/{change}"))
            .send_empty()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{change}");
    }
    let bearer = agent
        .get(&format!("{http}/metrics"))
        .header("Authorization", "Bearer s3cret")
        .call()
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 200);
    // Basic, any user name: "admin:s3cret".
    let basic = agent
        .get(&format!("{http}/api/server"))
        .header("Authorization", "Basic YWRtaW46czNjcmV0")
        .call()
        .unwrap();
    assert_eq!(basic.status().as_u16(), 200);
}

#[test]
fn http_off_serves_no_port_and_info_says_where_it_is() {
    let s = Server::start_with(&["--http", "off"]);
    assert!(s.http.is_none());
    let mut c = Client::connect(&format!("ferry://127.0.0.1:{}", s.port)).unwrap();
    let info = c.call(&[b"INFO"]).unwrap();
    assert!(format!("{info:?}").contains("http_addr:\\r\\n"), "{info:?}");
    let s = Server::start();
    let mut c = Client::connect(&format!("ferry://127.0.0.1:{}", s.port)).unwrap();
    let info = format!("{:?}", c.call(&[b"INFO"]).unwrap());
    let http = s.http.clone().unwrap();
    let addr = http.strip_prefix("http://").unwrap();
    assert!(info.contains(&format!("http_addr:{addr}")), "{info}");
}

/// A QGET's entries as (payload, attempts).
fn entries(v: redis::Value) -> Vec<(String, i64)> {
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .map(|e| {
            let (_, _, payload, attempts): (String, u64, String, i64) =
                redis::from_redis_value(&e).unwrap();
            (payload, attempts)
        })
        .collect()
}

#[test]
fn deliveries_pause_resume_and_stay_paused_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_at(dir.path(), &[]);
    let http = s.http.clone().unwrap();
    let mut r = s.conn();
    let _: () = redis::cmd("QPUT")
        .arg("jobs")
        .arg("one")
        .query(&mut r)
        .unwrap();
    assert_eq!(post(&format!("{http}/api/queues/nope/pause"), &[]).0, 404);
    let (status, body) = post(&format!("{http}/api/queues/jobs/pause"), &[]);
    assert_eq!((status, body.as_str()), (200, r#"{"paused":true}"#));
    assert_eq!(common::qinfo(&mut r, "jobs", "paused"), 1);

    // Nothing is delivered: a get without waiting finds nothing, a blocked
    // get waits (puts still go in), until deliveries resume.
    let none: redis::Value = redis::cmd("QGET")
        .arg("jobs")
        .arg("NOWAIT")
        .query(&mut r)
        .unwrap();
    assert_eq!(none, redis::Value::Nil);
    let getter = {
        let mut g = s.conn();
        thread::spawn(move || {
            entries(
                redis::cmd("QGET")
                    .arg("jobs")
                    .arg("TIMEOUT")
                    .arg("10000")
                    .arg("TAKE")
                    .query(&mut g)
                    .unwrap(),
            )
        })
    };
    common::wait_for_waiters(&mut r, "jobs", "waiting_getters", 1);
    let _: () = redis::cmd("QPUT")
        .arg("jobs")
        .arg("two")
        .query(&mut r)
        .unwrap();
    assert_eq!(common::qinfo(&mut r, "jobs", "qsize"), 2);
    assert_eq!(common::qinfo(&mut r, "jobs", "waiting_getters"), 1);
    let listed: serde_json::Value =
        serde_json::from_str(&get(&format!("{http}/api/queues/jobs")).1).unwrap();
    assert_eq!(listed["paused"], true);
    let (status, body) = post(&format!("{http}/api/queues/jobs/resume"), &[]);
    assert_eq!((status, body.as_str()), (200, r#"{"paused":false}"#));
    assert_eq!(getter.join().unwrap(), [("one".to_string(), 0)]);

    // QCONFIG pauses too, and a pause is logged: it outlives a restart.
    let _: () = redis::cmd("QCONFIG")
        .arg("jobs")
        .arg("PAUSED")
        .arg("yes")
        .query(&mut r)
        .unwrap();
    let bad: redis::RedisResult<()> = redis::cmd("QCONFIG")
        .arg("jobs")
        .arg("PAUSED")
        .arg("maybe")
        .query(&mut r);
    assert!(format!("{:?}", bad.unwrap_err()).contains("PAUSED must be yes or no"));
    drop(r);
    assert!(s.signal_and_wait("-TERM").success());
    let s = Server::start_at(dir.path(), &[]);
    let mut r = s.conn();
    assert_eq!(common::qinfo(&mut r, "jobs", "paused"), 1);
    let none: redis::Value = redis::cmd("QGET")
        .arg("jobs")
        .arg("NOWAIT")
        .query(&mut r)
        .unwrap();
    assert_eq!(none, redis::Value::Nil);
    let _: () = redis::cmd("QCONFIG")
        .arg("jobs")
        .arg("PAUSED")
        .arg("no")
        .query(&mut r)
        .unwrap();
    let got = entries(
        redis::cmd("QGET")
            .arg("jobs")
            .arg("NOWAIT")
            .query(&mut r)
            .unwrap(),
    );
    assert_eq!(got, [("two".to_string(), 0)]);
}

#[test]
fn dead_letters_are_redriven_back_to_their_queue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_at(dir.path(), &[]);
    let http = s.http.clone().unwrap();
    let mut r = s.conn();
    let _: () = redis::cmd("QCREATE")
        .arg("orders")
        .arg("MAXATTEMPTS")
        .arg("1")
        .arg("DEADLETTER")
        .arg("orders.dead")
        .query(&mut r)
        .unwrap();
    for p in ["a", "b", "c"] {
        let _: () = redis::cmd("QPUT")
            .arg("orders")
            .arg(p)
            .query(&mut r)
            .unwrap();
    }
    let got: redis::Value = redis::cmd("QGET")
        .arg("orders")
        .arg("COUNT")
        .arg("3")
        .query(&mut r)
        .unwrap();
    let redis::Value::Array(got) = got else {
        panic!("{got:?}")
    };
    for e in got {
        let (_, id, _, _): (String, u64, String, i64) = redis::from_redis_value(&e).unwrap();
        let _: () = redis::cmd("QNACK")
            .arg("orders")
            .arg(id)
            .query(&mut r)
            .unwrap();
    }
    assert_eq!(common::qinfo(&mut r, "orders.dead", "qsize"), 3);

    // Two of them back; they start over at attempt 0.
    let (status, body) = post(
        &format!("{http}/api/queues/orders.dead/redrive?count=2"),
        &[],
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"redriven":2,"to":"orders"}"#)
    );
    assert_eq!(common::qinfo(&mut r, "orders.dead", "qsize"), 1);
    assert_eq!(common::qinfo(&mut r, "orders.dead", "unfinished"), 1);
    let back = entries(
        redis::cmd("QGET")
            .arg("orders")
            .arg("COUNT")
            .arg("5")
            .arg("TAKE")
            .query(&mut r)
            .unwrap(),
    );
    assert_eq!(back, [("a".to_string(), 0), ("b".to_string(), 0)]);

    // With two queues sending their dead letters there, the target must
    // be named; a wrong one is refused.
    let _: () = redis::cmd("QCONFIG")
        .arg("refunds")
        .arg("DEADLETTER")
        .arg("orders.dead")
        .query(&mut r)
        .unwrap();
    let (status, body) = post(&format!("{http}/api/queues/orders.dead/redrive"), &[]);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("orders, refunds"), "{body}");
    let redrive_to = |to: &str| {
        post(
            &format!("{http}/api/queues/orders.dead/redrive?to={to}"),
            &[],
        )
    };
    assert_eq!(redrive_to("nope").0, 404);
    assert_eq!(redrive_to("orders.dead").0, 400);
    assert_eq!(common::qinfo(&mut r, "orders.dead", "qsize"), 1);
    let (status, body) = redrive_to("orders");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"redriven":1,"to":"orders"}"#)
    );

    // The move is logged: after a restart "c" is in orders, once.
    drop(r);
    assert!(s.signal_and_wait("-TERM").success());
    let s = Server::start_at(dir.path(), &[]);
    let mut r = s.conn();
    assert_eq!(common::qinfo(&mut r, "orders.dead", "qsize"), 0);
    assert_eq!(common::qinfo(&mut r, "orders.dead", "unfinished"), 0);
    let left = entries(
        redis::cmd("QGET")
            .arg("orders")
            .arg("COUNT")
            .arg("5")
            .arg("NOWAIT")
            .query(&mut r)
            .unwrap(),
    );
    assert_eq!(left, [("c".to_string(), 0)]);
}

#[test]
fn the_dashboard_is_served_from_the_binary() {
    let s = Server::start();
    let http = s.http.clone().unwrap();
    let (status, page) = get(&format!("{http}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<title>ferry</title>"));
    // It reads the API it documents.
    for path in ["/api/server", "/api/queues", "/redrive", "/pause"] {
        assert!(page.contains(path), "{path}");
    }
}

/// An HTTP/1.1 request over a raw socket, with the Host and headers given
/// (a client library sets its own Host); replies the status.
fn raw_http(addr: &str, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// DNS rebinding: a page whose own name now resolves to 127.0.0.1 sends
/// its Host (and, for a change, its Origin to match). Refused with 421,
/// reading nothing and changing nothing; loopback names, IP addresses and
/// `--http-host` names are served.
#[test]
fn a_host_the_port_does_not_answer_to_is_refused() {
    let s = Server::start_with(&["--http-host", "ferry.internal"]);
    let http = s.http.clone().unwrap();
    let addr = http.strip_prefix("http://").unwrap().to_string();
    let port = addr.rsplit(':').next().unwrap();
    let mut c = Client::connect(&format!("ferry://127.0.0.1:{}", s.port)).unwrap();
    c.put("victim", b"secret").unwrap();
    let evil = format!("rebind.evil.example:{port}");
    let origin = format!("http://{evil}");
    assert_eq!(
        raw_http(&addr, "GET", "/api/queues/victim?peek=10", &evil, &[]),
        421
    );
    assert_eq!(
        raw_http(
            &addr,
            "POST",
            "/api/queues/victim/purge",
            &evil,
            &[("Origin", &origin)]
        ),
        421
    );
    assert_eq!(c.qsize("victim").unwrap(), 1, "nothing purged");
    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("ferry.internal:{port}"),
        "FERRY.INTERNAL".to_string(),
    ] {
        assert_eq!(
            raw_http(&addr, "GET", "/api/queues/victim", &host, &[]),
            200,
            "{host}"
        );
    }
    let own = format!("http://localhost:{port}");
    assert_eq!(
        raw_http(
            &addr,
            "POST",
            "/api/queues/victim/pause",
            &format!("localhost:{port}"),
            &[("Origin", &own)]
        ),
        200
    );
}
