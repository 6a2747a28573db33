//! A PostgreSQL server of a test's own (scripts/postgres.sh: initdb into
//! a temp directory, a free loopback port), stopped when dropped.

use std::path::Path;
use std::process::Command;

pub struct PgServer {
    dir: tempfile::TempDir,
    url: String,
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/postgres.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        PgServer { dir, url }
    }

    /// kill -9 of the server (a crash: its clients' connections go).
    pub fn kill9(&self) {
        self.script("kill");
    }

    /// Starts it again after [`PgServer::kill9`]: same port, same data,
    /// once its recovery is done.
    pub fn restart(&self) {
        self.script("restart");
    }

    fn script(&self, verb: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(verb)
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/postgres.sh {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its URL, with ferry's options (`?lease=ms`) if any.
    pub fn url(&self, options: &str) -> String {
        if options.is_empty() {
            self.url.clone()
        } else {
            format!("{}?{options}", self.url)
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
