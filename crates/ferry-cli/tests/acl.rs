//! Users and their rights (`--acl-file`) through the real binary: hashes
//! made by `ferry hash-password`, credentials from the URL in the Rust
//! client and the CLI, redis-cli's --user, and the HTTP port's operators.
//! (Every command's check, one by one: ferry-server's cmd/tests.rs.)
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
