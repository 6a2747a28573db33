//! Users and their rights (`--acl-file`) through the real binary: hashes
//! made by `ferry hash-password`, credentials from the URL in the Rust
//! client and the CLI, redis-cli's --user, and the HTTP port's operators;
//! and docs/protocol.md's rights table, walked row by row. (Every
//! command's check against a name it may use: ferry-server's cmd/tests.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Server;
use ferry_client::{Client, Error};

fn hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

#[test]
fn users_do_what_their_rights_allow_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        format!(
            "[users.ops]\npassword_hash = \"{}\"\nput = [\"*\"]\nget = [\"*\"]\nadmin = [\"*\"]\nlocks = [\"*\"]\n\n\
             [users.producer]\npassword_hash = \"{}\"\nput = [\"jobs.*\"]\n\n\
             [users.worker]\npassword_hash = \"{}\"\nget = [\"jobs.*\"]\n",
            hash("ops-pw"),
            hash("producer-pw"),
            hash("worker-pw")
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--acl-file", acl.to_str().unwrap()]);
    let at = |user: &str, pw: &str| format!("ferry://{user}:{pw}@127.0.0.1:{}", s.port);

    let mut producer = Client::connect(&at("producer", "producer-pw")).unwrap();
    producer.put("jobs.mail", b"hello").unwrap();
    match producer.put("billing", b"no") {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, "NOPERM");
            assert!(
                message.contains("'put'")
                    && message.contains("'billing'")
                    && message.contains("QPUT"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(producer.get_nowait("jobs.mail"), Err(Error::Server { code, .. }) if code == "NOPERM")
    );
    let mut worker = Client::connect(&at("worker", "worker-pw")).unwrap();
    let m = worker.get("jobs.mail").unwrap();
    worker.task_done("jobs.mail", m.id).unwrap();
    assert!(Client::connect(&at("worker", "wrong")).is_err());

    // The CLI takes the same URL.
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["put", "jobs.cli", "x"])
        .env("FERRY_URL", at("producer", "producer-pw"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // redis-cli --user --pass; ACL WHOAMI and, for operators, ACL LIST.
    let redis_cli = |user: &str, pw: &str, args: &[&str]| {
        let o = Command::new("redis-cli")
            .args([
                "-p",
                &s.port.to_string(),
                "--user",
                user,
                "--pass",
                pw,
                "--no-auth-warning",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(
        redis_cli("worker", "worker-pw", &["ACL", "WHOAMI"]),
        "worker"
    );
    assert!(redis_cli("worker", "worker-pw", &["ACL", "LIST"]).contains("NOPERM"));
    let list = redis_cli("ops", "ops-pw", &["ACL", "LIST"]);
    assert!(
        list.contains("user producer on #<argon2id> put:jobs.*"),
        "{list}"
    );
    assert!(!list.contains("$argon2"), "hashes are not shown: {list}");

    // The HTTP port: operators only.
    let http = s.http.clone().unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .build(),
    );
    let basic = |user: &str, pw: &str| {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        format!("Basic {pair}")
    };
    let status = |auth: Option<String>| {
        let mut req = agent.get(&format!("{http}/api/queues"));
        if let Some(a) = auth {
            req = req.header("Authorization", &a);
        }
        req.call().unwrap().status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some(basic("worker", "worker-pw"))), 403);
    assert_eq!(status(Some(basic("ops", "wrong"))), 401);
    assert_eq!(status(Some(basic("ops", "ops-pw"))), 200);
}

#[test]
fn an_acl_file_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, "[users.bob]\npassword_hash = \"plaintext\"\n").unwrap();
    for (flags, says) in [
        (vec!["--acl-file", acl.to_str().unwrap()], "not a PHC hash"),
        (
            vec!["--acl-file", acl.to_str().unwrap(), "--requirepass", "x"],
            "use one",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--port", "0", "--http", "off", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

/// The rights table of docs/protocol.md ("### Rights"): each row's
/// command names and refused examples.
fn rights_table() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    let section = doc
        .split("### Rights")
        .nth(1)
        .expect("docs/protocol.md has a Rights table");
    section
        .lines()
        .skip_while(|l| !l.starts_with("| command"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 4, "a row of four cells: {row}");
            let examples = cells[3]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            (cells[0].to_string(), examples)
        })
        .collect()
}

/// Everything a refused command must leave as it was: every queue's
/// settings, counters and waiters, its messages, and the lock table.
fn snapshot(ops: &mut redis::Connection, http: &str, auth: &str) -> String {
    let mut names: Vec<String> = redis::cmd("QLIST").query(ops).unwrap();
    names.sort();
    let mut out = String::new();
    for q in names {
        let info: Vec<redis::Value> = redis::cmd("QINFO").arg(&q).query(ops).unwrap();
        let fields: Vec<String> = info
            .chunks(2)
            .map(|kv| format!("{:?}={:?}", kv[0], kv[1]))
            .filter(|f| !f.contains("oldest_age_seconds"))
            .collect();
        let peek: Vec<common::Entry> = redis::cmd("QPEEK")
            .arg(&q)
            .arg("COUNT")
            .arg(100)
            .query(ops)
            .unwrap();
        out.push_str(&format!("{q}: {fields:?} {peek:?}\n"));
    }
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .build(),
    );
    let locks = agent
        .get(&format!("{http}/api/locks"))
        .header("Authorization", auth)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let semaphores = agent
        .get(&format!("{http}/api/semaphores"))
        .header("Authorization", auth)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    out + &locks + &semaphores
}

/// Walks the rights table of docs/protocol.md against the real binary:
/// every refused example, run as the table's user, gets -NOPERM (403 on
/// the HTTP port) and changes nothing.
#[test]
fn every_row_of_the_rights_table_is_refused_and_changes_nothing() {
    let table = rights_table();
    let commands: String = table.iter().map(|(c, _)| c.as_str()).collect();
    for name in [
        "QPUT",
        "QGET",
        "QDONE",
        "QPUTMANY",
        "QNACK",
        "QTOUCH",
        "QJOIN",
        "QLEN",
        "QINFO",
        "QLIST",
        "QPEEK",
        "QCREATE",
        "QCONFIG",
        "QPURGE",
        "QDROP",
        "QREOPEN",
        "QSHUTDOWN",
        "LOCK",
        "UNLOCK",
        "LOCKED",
        "SEMACQUIRE",
        "SEMRELEASE",
        "SEMVALUE",
        "SEMHELD",
        "EVSET",
        "EVCLEAR",
        "EVISSET",
        "EVWAIT",
        "CONDWAIT",
        "CONDNOTIFY",
        "BARWAIT",
        "BARPASS",
        "BARABORT",
        "BARRESET",
        "BARINFO",
        "SYNCLIST",
        "PING",
        "ECHO",
        "QUIT",
        "HELLO",
        "AUTH",
        "CLIENT",
        "SELECT",
        "INFO",
        "COMMAND",
        "CONFIG",
        "ACL",
    ] {
        assert!(
            commands.contains(&format!("`{name}")),
            "{name} has no row in the rights table"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        format!(
            "[users.ops]\npassword_hash = \"{}\"\nput = [\"*\"]\nget = [\"*\"]\nadmin = [\"*\"]\nlocks = [\"*\"]\n\n\
             [users.limited]\npassword_hash = \"{}\"\nput = [\"pub.*\", \"drop.*\"]\nget = [\"pub.*\"]\n\
             locks = [\"pub.*\"]\nadmin = [\"own.*\"]\n",
            hash("ops-pw"),
            hash("limited-pw")
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--acl-file", acl.to_str().unwrap()]);
    let http = s.http.clone().unwrap();
    let basic = |user: &str, pw: &str| {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        format!("Basic {pair}")
    };
    let login = |user: &str, pw: &str| {
        let mut c = s.conn();
        let _: () = redis::cmd("AUTH").arg(user).arg(pw).query(&mut c).unwrap();
        c
    };
    let mut ops = login("ops", "ops-pw");
    for q in ["vault", "pub.made", "drop.box"] {
        let _: u64 = redis::cmd("QPUT").arg(q).arg("m1").query(&mut ops).unwrap();
    }
    let _: () = redis::cmd("QCREATE").arg("own.q").query(&mut ops).unwrap();
    let _: u64 = redis::cmd("LOCK").arg("vault").query(&mut ops).unwrap();
    let token: u64 = redis::cmd("LOCK").arg("pub.held").query(&mut ops).unwrap();
    let semtoken: u64 = redis::cmd("SEMACQUIRE")
        .arg("pub.sem")
        .query(&mut ops)
        .unwrap();
    // Another user's client, waiting.
    let mut waiter = s.raw();
    waiter.cmd(&["AUTH", "ops", "ops-pw"]);
    let blocked = waiter.cmd(&["CLIENT", "ID"]);
    let blocked = blocked.trim().trim_start_matches(':').to_string();
    waiter.send(b"*4\r\n$4\r\nQGET\r\n$6\r\nwaitq1\r\n$7\r\nTIMEOUT\r\n$1\r\n0\r\n");
    common::wait_for_waiters(&mut ops, "waitq1", "waiting_getters", 1);

    let mut limited = login("limited", "limited-pw");
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .build(),
    );
    let ops_auth = basic("ops", "ops-pw");
    let mut walked = 0;
    for (command, examples) in &table {
        for example in examples {
            let before = snapshot(&mut ops, &http, &ops_auth);
            let example = example
                .replace("{blocked}", &blocked)
                .replace("{token}", &token.to_string())
                .replace("{semtoken}", &semtoken.to_string());
            let words: Vec<&str> = example.split_whitespace().collect();
            match words[0] {
                "GET" | "POST" => {
                    let url = format!("{http}{}", words[1]);
                    let auth = basic("limited", "limited-pw");
                    let status = if words[0] == "GET" {
                        agent.get(&url).header("Authorization", &auth).call()
                    } else {
                        agent.post(&url).header("Authorization", &auth).send_empty()
                    }
                    .unwrap()
                    .status()
                    .as_u16();
                    assert_eq!(status, 403, "{command}: {example}");
                }
                _ => {
                    let r: redis::RedisResult<redis::Value> =
                        redis::cmd(words[0]).arg(&words[1..]).query(&mut limited);
                    let e = r.expect_err(&format!("{command}: {example} was not refused"));
                    assert_eq!(e.code(), Some("NOPERM"), "{command}: {example}: {e}");
                }
            }
            assert_eq!(
                snapshot(&mut ops, &http, &ops_auth),
                before,
                "{command}: {example} changed something"
            );
            walked += 1;
        }
    }
    assert!(walked >= 25, "{walked} examples");
    // The same user may unblock its own client, and an operator anyone's.
    let id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut limited).unwrap();
    assert!(id > 0);
    let unblocked: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(&blocked)
        .query(&mut ops)
        .unwrap();
    assert_eq!(unblocked, 1);
    assert_eq!(waiter.reply().trim(), "*-1");
}

/// Per-user limits (`max_bytes`, `max_queues`): a user that fills the
/// queues it may put to is refused with -OOM until they drain, while an
/// operator's puts go on; a user at its queue count may make no more
/// until one is dropped; both hold across a restart.
#[test]
fn a_user_s_limits_hold_its_bytes_and_its_queues() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        format!(
            "[users.ops]\npassword_hash = \"{}\"\nput = [\"*\"]\nget = [\"*\"]\nadmin = [\"*\"]\n\n\
             [users.public]\npassword_hash = \"{}\"\nput = [\"pub.*\"]\nget = [\"pub.*\"]\n\
             max_bytes = \"1mb\"\nmax_queues = 3\n\n\
             [users.tenant]\npassword_hash = \"{}\"\nput = [\"t.*\"]\nget = [\"t.*\"]\nadmin = [\"t.*\"]\n\
             max_queues = 3\n",
            hash("ops-pw"),
            hash("public-pw"),
            hash("tenant-pw")
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let flags = ["--acl-file", acl.to_str().unwrap()];
    let s = Server::start_at(&data, &flags);
    let at = |user: &str, pw: &str, port: u16| format!("ferry://{user}:{pw}@127.0.0.1:{port}");
    let mut public = Client::connect(&at("public", "public-pw", s.port)).unwrap();
    let mut ops = Client::connect(&at("ops", "ops-pw", s.port)).unwrap();
    let chunk = vec![b'x'; 100 << 10];
    let mut accepted = 0;
    let refusal = loop {
        match public.put("pub.a", &chunk) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "max_bytes never refused a put");
    };
    assert!(
        (9..=11).contains(&accepted),
        "{accepted} puts of 100 KiB under 1 MiB"
    );
    match refusal {
        Error::Server { code, message } => {
            assert_eq!(code, "OOM");
            assert!(message.contains("max_bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    ops.put("pub.a", b"an operator is not held to public's limit")
        .unwrap();
    // Drained, it may put again.
    for _ in 0..3 {
        let m = public.get("pub.a").unwrap();
        public.task_done("pub.a", m.id).unwrap();
    }
    public.put("pub.a", &chunk).unwrap();
    // One request may not overshoot what is left (about 300 KB).
    let many: Vec<&[u8]> = vec![&chunk[..]; 5];
    assert!(matches!(
        public.put_many("pub.a", &many),
        Err(Error::Server { code, .. }) if code == "OOM"
    ));

    public.put("pub.b", b"x").unwrap();
    public.put("pub.c", b"x").unwrap();
    match public.put("pub.d", b"x") {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, "OOM");
            assert!(message.contains("max_queues"), "{message}");
        }
        other => panic!("a fourth queue was made: {other:?}"),
    }
    assert_eq!(ops.qsize("pub.d").unwrap(), 0);
    // A dead-letter queue is made when it is named, within the limit too
    // (a dead letter's move later makes one unchecked).
    let mut tenant = Client::connect(&at("tenant", "tenant-pw", s.port)).unwrap();
    tenant.call(&[b"QCREATE", b"t.src"]).unwrap();
    for (dl, ok) in [("t.dl1", true), ("t.dl2", true), ("t.dl3", false)] {
        let r = tenant.call(&[b"QCONFIG", b"t.src", b"DEADLETTER", dl.as_bytes()]);
        assert_eq!(r.is_ok(), ok, "{dl}: {r:?}");
    }
    drop(tenant);
    // Full again, then a restart.
    while public.put("pub.a", &chunk).is_ok() {}
    drop((public, ops));
    assert!(s.signal_and_wait("-KILL").code().is_none());

    // After a restart, the queues restored still count.
    let s = Server::start_at(&data, &flags);
    let mut public = Client::connect(&at("public", "public-pw", s.port)).unwrap();
    let mut ops = Client::connect(&at("ops", "ops-pw", s.port)).unwrap();
    assert!(
        public.put("pub.d", b"x").is_err(),
        "max_queues forgotten at restart"
    );
    assert!(
        public.put("pub.a", &chunk).is_err(),
        "max_bytes forgotten at restart"
    );
    for verb in ["drop pub.c", "purge pub.a"] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(verb.split(' '))
            .env("FERRY_URL", at("ops", "ops-pw", s.port))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    public.put("pub.d", b"x").unwrap();
    let _ = ops.qsize("pub.d").unwrap();
}

/// EXPIRE on a queue a user without admin makes: the queue expires only
/// while it holds nothing, so a shared name made so never vanishes with
/// the messages others put to it (an admin's EXPIRE drops it regardless).
#[test]
fn a_non_admin_s_expiry_never_drops_messages() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        format!(
            "[users.ops]\npassword_hash = \"{}\"\nput = [\"*\"]\nget = [\"*\"]\nadmin = [\"*\"]\n\n\
             [users.public]\npassword_hash = \"{}\"\nput = [\"pub.*\"]\nget = [\"pub.*\"]\n",
            hash("ops-pw"),
            hash("public-pw")
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--acl-file", acl.to_str().unwrap()]);
    let at = |user: &str, pw: &str| format!("ferry://{user}:{pw}@127.0.0.1:{}", s.port);
    let mut public = Client::connect(&at("public", "public-pw")).unwrap();
    let mut ops = Client::connect(&at("ops", "ops-pw")).unwrap();
    // The held one last used first: it is due at the sweep that drops
    // the empty one.
    public
        .call(&[b"QCREATE", b"pub.held", b"EXPIRE", b"300"])
        .unwrap();
    ops.put("pub.held", b"someone else's message").unwrap();
    public
        .call(&[b"QCREATE", b"pub.empty", b"EXPIRE", b"300"])
        .unwrap();
    common::wait_until("the empty queue to expire", || {
        ops.call(&[b"QLIST"])
            .is_ok_and(|v| !format!("{v:?}").contains("pub.empty"))
    });
    assert_eq!(
        ops.qsize("pub.held").unwrap(),
        1,
        "a queue with a message stays"
    );
    let m = ops.get("pub.held").unwrap();
    assert_eq!(m.payload, b"someone else's message");
}
