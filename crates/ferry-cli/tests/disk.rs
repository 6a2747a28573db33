//! The disk end to end: damage found and refused (`ferry check`, a start,
//! `--salvage`), and a disk that fills up — puts refused while gets and
//! dones go on, a restart on a full disk, and normal service once it frees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Entry, Server, ready_payloads, wait_until};

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

#[test]
fn ferry_check_describes_a_data_directory_and_finds_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        let _: () = cmd("QCREATE")
            .arg("jobs")
            .arg("MAXSIZE")
            .arg(7)
            .query(&mut c)
            .unwrap();
        for p in ["a", "bb", "ccc"] {
            let _: u64 = cmd("QPUT").arg("jobs").arg(p).query(&mut c).unwrap();
        }
        let _: Vec<Entry> = cmd("QGET").arg("jobs").query(&mut c).unwrap();
        s.signal_and_wait("-KILL");
    }
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["check", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("jobs "))
        .unwrap()
        .split_whitespace()
        .collect();
    // queue kind maxsize messages leased delayed bytes shutdown
    assert_eq!(row, vec!["jobs", "fifo", "7", "3", "1", "0", "6", "no"]);

    // The kill left the segment preallocated; a clean stop cuts it to its
    // data, so that the bytes below land right after the last record.
    let s = Server::start_at(dir.path(), &[]);
    assert!(s.signal_and_wait("-TERM").success());
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut f, &[7u8; 11]).unwrap();
    drop(f);
    let out = check();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("end to cut: 11 bytes"));

    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let out = check();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "a refused start changes nothing"
    );
}

/// One flipped byte in the middle of the log is damage, not a torn end:
/// `ferry check` and `ferry serve` refuse, naming the place and the whole
/// records after it, and change nothing; `--salvage` skips that record
/// alone, keeps the segment aside, and the next plain start needs nothing.
#[test]
fn a_flipped_byte_mid_log_is_refused_and_salvage_loses_only_its_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        for i in 1..=100 {
            let _: u64 = cmd("QPUT")
                .arg("cq")
                .arg(format!("m{i}"))
                .query(&mut c)
                .unwrap();
        }
        s.signal_and_wait("-KILL");
    }
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let data_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = data_end * 2 / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let ferry = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    for args in [
        &["check"][..],
        &["serve", "--port", "0", "--http", "off"][..],
    ] {
        let out = ferry(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a damaged log");
        assert!(
            stderr.contains("damaged log") && stderr.contains("whole record(s) follow it"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            bytes,
            "{args:?} changed the log"
        );
    }

    let s = Server::start_at(dir.path(), &["--salvage"]);
    let mut c = s.conn();
    let ready = ready_payloads(&mut c, "cq");
    assert_eq!(ready.len(), 99, "only the damaged record is lost");
    let kept = dir
        .path()
        .join("damaged")
        .join(segment.file_name().unwrap());
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        bytes,
        "the damaged segment is kept whole"
    );
    assert!(s.signal_and_wait("-KILL").code().is_none());
    // The salvage wrote a checkpoint: a plain start finds a whole log.
    let s = Server::start_at(dir.path(), &[]);
    let mut c = s.conn();
    assert_eq!(ready_payloads(&mut c, "cq"), ready);
}

#[test]
fn low_disk_refuses_puts_while_gets_and_dones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Server::start_at(dir.path(), &[]);
        let mut c = s.conn();
        let _: () = cmd("QPUTMANY")
            .arg("q")
            .arg("PAYLOADS")
            .arg("a")
            .arg("b")
            .query(&mut c)
            .unwrap();
        s.signal_and_wait("-TERM");
    }
    // A free-space floor no disk meets: the broker sees "low on disk".
    let s = Server::start_at(dir.path(), &["--min-free-disk", "1000000gb"]);
    let mut c = s.conn();
    let refused: redis::RedisResult<u64> = cmd("QPUT").arg("q").arg("c").query(&mut c);
    assert_eq!(refused.unwrap_err().code(), Some("NOSPACE"));
    let refused: redis::RedisResult<Vec<u64>> = cmd("QPUTMANY")
        .arg("q")
        .arg("PAYLOADS")
        .arg("c")
        .query(&mut c);
    assert_eq!(refused.unwrap_err().code(), Some("NOSPACE"));
    let got: Vec<Entry> = cmd("QGET")
        .arg("q")
        .arg("COUNT")
        .arg(2)
        .query(&mut c)
        .unwrap();
    let ids: Vec<u64> = got.iter().map(|e| e.1).collect();
    let done: u64 = cmd("QDONE").arg("q").arg(&ids).query(&mut c).unwrap();
    assert_eq!(done, 2);
    let joined: String = cmd("QJOIN")
        .arg("q")
        .arg("TIMEOUT")
        .arg(1000)
        .query(&mut c)
        .unwrap();
    assert_eq!(joined, "OK");
}

/// The disk fills up for real (a 160 MB tmpfs, 1 MiB puts): puts get
/// -NOSPACE, the log's reserve is released once something else takes the
/// rest; a kill -9 and a restart on the full disk come up with every
/// acknowledged message, refuse puts, serve every get and done; and once
/// the consumers' dones let compaction free the log, puts are taken again.
#[test]
fn a_full_disk_restarts_serves_gets_and_dones_and_recovers() {
    let Some(disk) = common::SmallDisk::mount(160) else {
        eprintln!("skipped: this process may not mount a tmpfs (run as root)");
        return;
    };
    let data = disk.path().join("data");
    let flags = ["--min-free-disk", "1mb", "--durability", "sync"];
    let payload = vec![b'p'; 1 << 20];
    let s = Server::start_at(&data, &flags);
    let mut c = s.conn();
    let mut acked = 0u64;
    let refused = loop {
        let r: redis::RedisResult<u64> = cmd("QPUT").arg("big").arg(&payload).query(&mut c);
        match r {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 300, "the disk never filled");
    };
    assert_eq!(refused.code(), Some("NOSPACE"), "{refused}");
    assert!(acked >= 64, "only {acked} puts before the disk filled");
    // Something else takes the rest of the disk: the log lets its reserve go.
    disk.fill();
    wait_until("the reserve released", || !data.join("reserve").exists());
    assert!(s.signal_and_wait("-KILL").code().is_none());

    let s = Server::start_at(&data, &flags);
    let mut c = s.conn();
    let len: u64 = cmd("QLEN").arg("big").query(&mut c).unwrap();
    assert_eq!(len, acked, "every acknowledged put is back");
    let r: redis::RedisResult<u64> = cmd("QPUT").arg("big").arg("x").query(&mut c);
    assert_eq!(r.unwrap_err().code(), Some("NOSPACE"));
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let got: Option<Vec<Entry>> = cmd("QGET")
            .arg("big")
            .arg("COUNT")
            .arg(8)
            .arg("NOWAIT")
            .query(&mut c)
            .unwrap_or_else(|e| panic!("a get on the full disk failed: {e}"));
        let Some(got) = got else { break };
        let ids: Vec<u64> = got.iter().map(|e| e.1).collect();
        for e in &got {
            assert_eq!(e.2, payload);
            assert!(seen.insert(e.1), "message {} delivered twice", e.1);
        }
        let done: u64 = cmd("QDONE").arg("big").arg(&ids).query(&mut c).unwrap();
        assert_eq!(done, ids.len() as u64);
    }
    assert_eq!(
        seen.len() as u64,
        acked,
        "delivered = acknowledged, none lost"
    );
    // Compaction drops the finished log; the disk has room again.
    wait_until("puts taken again", || {
        let r: redis::RedisResult<u64> = cmd("QPUT").arg("big").arg("after").query(&mut c);
        r.is_ok()
    });
    assert!(s.signal_and_wait("-KILL").code().is_none());
    let s = Server::start_at(&data, &flags);
    let mut c = s.conn();
    assert_eq!(ready_payloads(&mut c, "big"), ["after"]);
}
