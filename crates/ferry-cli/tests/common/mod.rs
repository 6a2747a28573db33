//! Starts the real `ferry` binary on port 0 in a temp directory and talks
//! to it over real sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod postgres;
#[allow(unused_imports)]
pub use postgres::PgServer;

pub struct Server {
    child: Child,
    data_dir: std::path::PathBuf,
    pub port: u16,
    /// The temp directory this server made, if it made one.
    pub dir: Option<tempfile::TempDir>,
    pub unix: Option<std::path::PathBuf>,
    /// The HTTP admin port's base URL (`http://127.0.0.1:port`), unless
    /// started with `--http off`.
    pub http: Option<String>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts `ferry serve --port 0` with extra flags, and waits for its
    /// `listening` line (never a sleep).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::start_at(dir.path(), extra);
        s.dir = Some(dir);
        s
    }

    /// Starts on a data directory the caller keeps (to restart on it).
    pub fn start_at(data_dir: &std::path::Path, extra: &[&str]) -> Server {
        // Port 0 (a free one) unless the caller names a port.
        let port0: &[&str] = if extra.contains(&"--port") {
            &[]
        } else {
            &["--port", "0"]
        };
        // The HTTP port on a free port too (its default, the RESP port + 1,
        // may be another test's).
        let http0: &[&str] = if extra.contains(&"--http") {
            &[]
        } else {
            &["--http", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("serve")
            .args(port0)
            .args(http0)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferry");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("ferry printed nothing").unwrap();
        let addr = first
            .strip_prefix("listening ")
            .expect("first line is `listening <address>`");
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let unix = if extra.contains(&"--unix") {
            let second = lines.next().unwrap().unwrap();
            Some(second.strip_prefix("listening unix:").unwrap().into())
        } else {
            None
        };
        let http_off = extra.windows(2).any(|w| w[0] == "--http" && w[1] == "off");
        let http = if http_off {
            None
        } else {
            let line = lines.next().unwrap().unwrap();
            Some(line.strip_prefix("http ").unwrap().to_string())
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            data_dir: data_dir.to_path_buf(),
            port,
            dir: None,
            unix,
            http,
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        let con = client.get_connection().unwrap();
        con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        con
    }

    pub fn raw(&self) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(mut self, sig: &str) -> std::process::ExitStatus {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw RESP connection: bytes in, bytes out.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// Sends a command as a RESP array.
    pub fn cmd(&mut self, args: &[&str]) -> String {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        self.send(out.as_bytes());
        self.reply()
    }

    /// Reads one whole reply (nested arrays included) as text.
    pub fn reply(&mut self) -> String {
        let mut text = String::new();
        self.read_value(&mut text);
        text
    }

    fn line(&mut self) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            let n = self.0.read(&mut b).unwrap();
            assert!(n == 1, "connection closed mid-reply");
            line.push(b[0]);
            if line.ends_with(b"\r\n") {
                return String::from_utf8_lossy(&line).into_owned();
            }
        }
    }

    fn read_value(&mut self, text: &mut String) {
        let line = self.line();
        text.push_str(&line);
        let n: i64 = line[1..line.len() - 2].parse().unwrap_or(0);
        match line.as_bytes()[0] {
            b'*' => (0..n.max(0)).for_each(|_| self.read_value(text)),
            b'%' => (0..2 * n.max(0)).for_each(|_| self.read_value(text)),
            b'$' if n >= 0 => {
                let mut body = vec![0u8; n as usize + 2];
                self.0.read_exact(&mut body).unwrap();
                text.push_str(&String::from_utf8_lossy(&body));
            }
            _ => {}
        }
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

/// A QGET entry: queue, id, payload, attempts.
pub type Entry = (String, u64, Vec<u8>, u32);

/// Every payload ready in `q`, by peeking (after a restart, all are ready).
pub fn ready_payloads(con: &mut redis::Connection, q: &str) -> Vec<String> {
    let entries: Vec<Entry> = redis::cmd("QPEEK")
        .arg(q)
        .arg("COUNT")
        .arg(1_000_000)
        .query(con)
        .unwrap();
    entries
        .into_iter()
        .map(|e| String::from_utf8(e.2).unwrap())
        .collect()
}

/// A port that was free a moment ago, for a server that must come back on
/// the same address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 10 ms until it holds: how a test waits for another
/// thread or process to reach a state (never a sleep that hopes it got
/// there). Panics after a minute, so a hang fails with a message.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < give_up,
            "still waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A counter of a queue's QINFO (0 while the queue does not exist).
pub fn qinfo(c: &mut redis::Connection, queue: &str, field: &str) -> u64 {
    let info: redis::RedisResult<Vec<redis::Value>> = redis::cmd("QINFO").arg(queue).query(c);
    let Ok(info) = info else { return 0 };
    info.chunks(2)
        .find_map(|kv| match kv {
            [redis::Value::BulkString(k), redis::Value::Int(v)] if k == field.as_bytes() => {
                Some(*v as u64)
            }
            _ => None,
        })
        .unwrap_or(0)
}

/// Waits until `n` clients wait in the queue's `field`
/// (`waiting_getters`, `waiting_putters`, `waiting_joiners`).
pub fn wait_for_waiters(c: &mut redis::Connection, queue: &str, field: &str, n: u64) {
    wait_until(&format!("{n} {field} on {queue}"), || {
        qinfo(c, queue, field) == n
    });
}

/// A line of INFO, as a number.
pub fn info_field(c: &mut redis::Connection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO has no {field}"))
}

/// A redis-server of its own on loopback, without persistence; killed
/// (SIGKILL) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Its cluster bus port, when it is a cluster node.
    bus: Option<u16>,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_on(extra, false)
    }

    /// A free port is only free until someone takes it (another test's
    /// server, or any connection's ephemeral port): a server that could
    /// not bind exits, and is started again on new ports.
    fn start_on(extra: &[&str], cluster_node: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            bus: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        for _ in 0..10 {
            server.port = free_port();
            server.bus = cluster_node.then(free_port);
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server would not start: {}", server.log())
    }

    /// Starts it again after [`RedisServer::kill9`]: same port, same
    /// directory, so a cluster node comes back as itself.
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server would not start again: {}",
            self.log()
        );
    }

    /// Starts it and waits until it listens; false if it exited first.
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let port = self.port;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path());
        if let Some(bus) = self.bus {
            command.args(["--cluster-port", &bus.to_string()]);
        }
        let mut child = command
            .args(&self.extra)
            .stdout(log)
            .spawn()
            .expect("redis-server (Debian: redis-server) must be installed");
        let mut exited = false;
        // Listening — and it, not another test's server that took the same
        // free port first (this one then exits, unable to bind).
        let pid = child.id();
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1))
            .cloned();
        wait_until("redis-server to listen", || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || listens_as(port, pid, password.as_deref())
        });
        if exited {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// What it printed.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn conn(&self) -> redis::Connection {
        // Its --requirepass, if it has one.
        let auth = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1))
            .map_or(String::new(), |pw| format!(":{pw}@"));
        redis::Client::open(format!("redis://{auth}127.0.0.1:{}", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// kill -9, and reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Its cluster bus port, if it is a cluster node.
    pub fn bus_port(&self) -> Option<u16> {
        self.bus
    }

    /// Sends it a signal (`-STOP`, `-CONT`, ...).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} redis-server");
        }
    }
}

/// Whether the redis-server on `port` is process `pid` (its INFO says).
fn listens_as(port: u16, pid: u32, password: Option<&str>) -> bool {
    let auth = password.map_or(String::new(), |pw| format!(":{pw}@"));
    let Ok(client) = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return false;
    };
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut c)
        .unwrap_or_default();
    info.lines()
        .any(|l| l.trim() == format!("process_id:{pid}"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of its own: `primaries` primaries with `replicas`
/// replicas each, made by `redis-cli --cluster create`, on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(primaries, replicas, None)
    }

    /// With a password: every node's requirepass and masterauth. A
    /// creation that fails (a node's port taken by another test's
    /// connection between its start and the creation) is tried again on
    /// new nodes, and a third failure shows redis-cli's words.
    pub fn start_with(primaries: usize, replicas: usize, password: Option<&str>) -> RedisCluster {
        let mut last = String::new();
        for _ in 0..3 {
            let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
                .map(|_| {
                    let mut args = vec![
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "1000",
                        // Replicas in sync at once (not after 5 s), so that
                        // a primary killed early has a replica to fail over to.
                        "--repl-diskless-sync-delay",
                        "0",
                    ];
                    if let Some(pw) = password {
                        args.extend(["--requirepass", pw, "--masterauth", pw]);
                    }
                    RedisServer::start_on(&args, true)
                })
                .collect();
            let mut create = Command::new("redis-cli");
            if let Some(pw) = password {
                create.args(["--no-auth-warning", "-a", pw]);
            }
            let out = create
                .arg("--cluster")
                .arg("create")
                .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .output()
                .expect("redis-cli (Debian: redis-tools) must be installed");
            if out.status.success() {
                let cluster = RedisCluster { nodes };
                cluster.wait_ok();
                return cluster;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("redis-cli --cluster create failed three times: {last}")
    }

    /// Waits until every live node sees all slots served, and every
    /// live replica is in sync with its primary.
    pub fn wait_ok(&self) {
        wait_until("the cluster to serve every slot", || {
            self.nodes.iter().filter(|n| n.alive()).all(|n| {
                let mut c = n.conn();
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                let repl: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })
        });
    }

    /// `replica` takes over from its primary (CLUSTER FAILOVER), and the
    /// cluster sees it serve `key`. Redis drops a manual failover that has
    /// not completed in 5 s (a vote not in time on a loaded machine): it is
    /// asked again, and a failure shows both nodes' logs.
    pub fn failover(&self, replica: usize, key: &str) {
        let primary = self.primary_of(key);
        let is_primary = || {
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query(&mut self.nodes[replica].conn())
                .unwrap_or_default();
            matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
        };
        for attempt in 1.. {
            let _: () = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query(&mut self.nodes[replica].conn())
                .unwrap();
            let asked = std::time::Instant::now();
            while !is_primary() && asked.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if is_primary() {
                break;
            }
            assert!(
                attempt < 6,
                "the replica did not take over.\nreplica's log:\n{}\nprimary's log:\n{}",
                self.nodes[replica].log(),
                self.nodes[primary].log()
            );
            eprintln!("the failover did not complete in 10 s: asked again");
        }
        wait_until("the cluster to see the replica take over", || {
            self.primary_of(key) == replica
        });
    }

    /// Seeds: the first three nodes.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .take(3)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The node that serves `key`'s slot as primary now.
    pub fn primary_of(&self, key: &str) -> usize {
        let live = self.nodes.iter().find(|n| n.alive()).unwrap();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut live.conn())
            .unwrap();
        // Each: from, to, the primary [ip, port, id], its replicas.
        let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut live.conn())
            .unwrap();
        for range in slots {
            let [
                redis::Value::Int(from),
                redis::Value::Int(to),
                redis::Value::Array(primary),
                ..,
            ] = range.as_slice()
            else {
                panic!("CLUSTER SLOTS: {range:?}")
            };
            if (*from..=*to).contains(&slot) {
                let Some(redis::Value::Int(port)) = primary.get(1) else {
                    panic!("CLUSTER SLOTS: {primary:?}")
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| i64::from(n.port) == *port)
                    .unwrap();
            }
        }
        panic!("no primary serves slot {slot}")
    }
}

/// An engine and its URL.
pub enum Engine {
    Ferry(Server),
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Engine {
    pub fn url(&self) -> String {
        match self {
            Engine::Ferry(s) => format!("ferry://127.0.0.1:{}", s.port),
            // Short leases: a dead consumer's messages come back in a second.
            Engine::Redis(r) => format!("redis://127.0.0.1:{}?lease=1000", r.port),
            Engine::Cluster(c) => format!("{}?lease=1000", c.url()),
        }
    }

    pub fn client(&self) -> ferry_client::Client {
        ferry_client::Client::connect(&self.url()).unwrap()
    }

    /// A QINFO counter (0 while the queue does not exist).
    pub fn info(&self, queue: &str, field: &str) -> i64 {
        let mut c = self.client();
        // A cluster that says it is down for a moment (a node slow to
        // answer its peers on a loaded machine) is waited for, not failed.
        let mut reply = c.call(&[b"QINFO", queue.as_bytes()]);
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while matches!(&reply, Err(ferry_client::Error::Server { code, .. })
            if matches!(code.as_str(), "CLUSTERDOWN" | "TRYAGAIN" | "LOADING"))
            && std::time::Instant::now() < give_up
        {
            std::thread::sleep(Duration::from_millis(50));
            reply = c.call(&[b"QINFO", queue.as_bytes()]);
        }
        let pairs = match reply {
            Ok(ferry_client::Value::Map(pairs)) => pairs,
            Ok(ferry_client::Value::Array(flat)) => flat
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect(),
            Err(ferry_client::Error::Server { code, .. }) if code == "NOQUEUE" => return 0,
            other => panic!("QINFO replied {other:?}"),
        };
        for (k, v) in pairs {
            if k == ferry_client::Value::Bulk(field.as_bytes().to_vec().into()) {
                return match v {
                    ferry_client::Value::Int(n) => n,
                    ferry_client::Value::Bool(b) => i64::from(b),
                    other => panic!("{field} is {other:?}"),
                };
            }
        }
        panic!("QINFO has no {field}")
    }
}

/// Each test, once per engine: ferry's broker, a redis-server and a Redis
/// Cluster of three primaries, each its own, the URL the only difference.
#[macro_export]
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod on_ferry {
            $(#[test] fn $name() {
                super::$name(&$crate::common::Engine::Ferry($crate::common::Server::start()));
            })*
        }
        mod on_redis {
            $(#[test] fn $name() {
                super::$name(&$crate::common::Engine::Redis($crate::common::RedisServer::start()));
            })*
        }
        mod on_cluster {
            $(#[test] fn $name() {
                super::$name(&$crate::common::Engine::Cluster($crate::common::RedisCluster::start(3, 0)));
            })*
        }
    };
}

/// A small file system of the test's own (a tmpfs mounted on a temp
/// directory, unmounted when dropped), so that a disk can be filled for
/// real. `None` where this process may not mount one.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(megabytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the disk has no room left; replies its size.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut written = 0;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => return written,
                Ok(n) => written += n as u64,
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
