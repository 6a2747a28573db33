//! TLS on the RESP and HTTP ports (`--tls-cert`, `--tls-key`, `--tls-ca`)
//! against the Rust client, the CLI, redis-cli and curl, with
//! certificates made for the test (rcgen): a CA, the broker's (for
//! 127.0.0.1 and localhost), and a client's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use ferry_client::Client;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ferry test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issue = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        issue(
            "broker",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        issue("client", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let (cert, key) = (self.p("broker.pem"), self.p("broker.key"));
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        Server::start_with(&args)
    }
}

fn redis_cli(port: u16, tls: &[&str], args: &[&str]) -> (bool, String) {
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .args(tls)
        .args(args)
        .output()
        .expect("redis-cli (Debian: redis-tools)");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text.trim().to_string())
}

fn ferry_cli(url: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_URL", url)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text.trim().to_string())
}

fn curl(url: &str, ca: &Path) -> (bool, String) {
    let o = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            url,
        ])
        .output()
        .expect("curl");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn tls_round_trips_with_the_client_the_cli_redis_cli_and_https() {
    let pki = Pki::new();
    let s = pki.serve(&[]);
    let ca = pki.p("ca.pem");
    let url = format!("ferrys://127.0.0.1:{}?ca={ca}", s.port);

    // The Rust client.
    let mut c = Client::connect(&url).unwrap();
    c.put("secret", b"over tls").unwrap();
    let m = c.get("secret").unwrap();
    assert_eq!(m.payload, b"over tls");
    c.task_done("secret", m.id).unwrap();

    // The CLI, by FERRY_URL.
    assert!(ferry_cli(&url, &["put", "cli", "hello"]).0);
    let (ok, out) = ferry_cli(&url, &["get", "cli"]);
    assert!(ok && out.contains("hello"), "{out}");

    // redis-cli --tls.
    assert_eq!(
        redis_cli(s.port, &["--cacert", &ca], &["PING"]),
        (true, "PONG".into())
    );
    let (_, n) = redis_cli(s.port, &["--cacert", &ca], &["QLEN", "secret"]);
    assert_eq!(n, "0");

    // The HTTP admin port speaks TLS too.
    let http = s.http.clone().unwrap();
    assert!(http.starts_with("https://"), "{http}");
    let (ok, body) = curl(&format!("{http}/api/server"), &pki.path("ca.pem"));
    assert!(ok && body.contains("\"version\""), "{body}");
    // A change from the dashboard's own page carries an https Origin:
    // served; one from a plain-http page of the same host is not.
    let status = |origin: &str| {
        let o = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                "--cacert",
            ])
            .arg(pki.path("ca.pem"))
            .args(["-X", "POST", "-H", &format!("Origin: {origin}")])
            .arg(format!("{http}/api/queues/secret/pause"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(status(&http), "200");
    assert_eq!(status(&http.replacen("https://", "http://", 1)), "403");

    // A client that does not trust the CA, or speaks plain RESP, is not
    // served.
    let untrusted = Client::connect(&format!("ferrys://127.0.0.1:{}", s.port)).map(drop);
    let err = format!("{:?}", untrusted.expect_err("an unknown CA is refused"));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let plain = Client::connect(&format!("ferry://127.0.0.1:{}", s.port));
    assert!(plain.is_err());
    // The certificate names the host by DNS name too.
    let mut by_name = Client::connect(&format!("ferrys://localhost:{}?ca={ca}", s.port)).unwrap();
    assert_eq!(by_name.qsize("cli").unwrap(), 0);
    // And the broker went on serving through the refusals.
    assert_eq!(c.qsize("secret").unwrap(), 0);
}

#[test]
fn a_client_certificate_is_required_when_tls_ca_is_set() {
    let pki = Pki::new();
    let ca = pki.p("ca.pem");
    let s = pki.serve(&["--tls-ca", &ca]);
    let without = Client::connect(&format!("ferrys://127.0.0.1:{}?ca={ca}", s.port))
        .and_then(|mut c| c.put("q", b"x"));
    assert!(without.is_err(), "served without a client certificate");
    let (cert, key) = (pki.p("client.pem"), pki.p("client.key"));
    let url = format!(
        "ferrys://127.0.0.1:{}?ca={ca}&cert={cert}&key={key}",
        s.port
    );
    let mut c = Client::connect(&url).unwrap();
    c.put("q", b"x").unwrap();
    assert_eq!(c.qsize("q").unwrap(), 1);
    assert_eq!(
        redis_cli(
            s.port,
            &["--cacert", &ca, "--cert", &cert, "--key", &key],
            &["QLEN", "q"]
        ),
        (true, "1".into())
    );
    let (ok, _) = redis_cli(s.port, &["--cacert", &ca], &["QLEN", "q"]);
    assert!(!ok, "redis-cli without a certificate was served");
}

#[test]
fn bad_tls_settings_stop_the_start_naming_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (
            vec!["--tls-cert".to_string(), pki.p("broker.pem")],
            "--tls-cert and --tls-key go together".to_string(),
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.p("broker.pem"),
                "--tls-key".into(),
                pki.p("missing.key"),
            ],
            "missing.key".into(),
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.p("broker.pem"),
                "--tls-key".into(),
                pki.p("client.key"),
            ],
            "do not make a certificate and its key".into(),
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--port", "0", "--http", "off", "--data-dir"])
            .arg(dir.path())
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains(&says), "{flags:?}: {err}");
    }
}

/// Handshakes that never speak do not keep a TLS client out: with
/// `--max-clients 10` and ten connections that send nothing, a real client
/// is served at once (it cuts the oldest handshake short).
#[test]
fn silent_handshakes_do_not_keep_a_client_out() {
    let pki = Pki::new();
    let s = pki.serve(&["--max-clients", "10"]);
    let silent: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap())
        .collect();
    let ca = pki.p("ca.pem");
    let mut c = Client::connect(&format!("ferrys://127.0.0.1:{}?ca={ca}", s.port)).unwrap();
    c.put("in", b"at once").unwrap();
    assert_eq!(c.qsize("in").unwrap(), 1);
    drop(silent);
}
