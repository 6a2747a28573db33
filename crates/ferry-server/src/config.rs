//! The broker's settings, resolved once (file, then environment, then
//! flags) by the binary and validated here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::store::MAX_PAYLOAD;

/// How changes are made durable (SPEC §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A reply goes out after its changes are written to the log; fsync
    /// at least every second. A kill -9 of the broker loses nothing; an OS
    /// crash or power cut loses at most the last second. The default, as
    /// Redis's `appendfsync everysec`, NATS and Kafka default to.
    #[default]
    Async,
    /// A reply goes out only after its changes are fsynced; concurrent
    /// connections share each fsync (group commit).
    Sync,
    /// Nothing touches the disk; a restart loses everything.
    Memory,
}

/// Where the HTTP admin port (/metrics, /api, the dashboard) listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Http {
    /// On loopback, at the RESP port + 1 (127.0.0.1:7879 beside the
    /// default 7878; a free port when the RESP port is 0).
    #[default]
    Default,
    /// At this address.
    At(SocketAddr),
    /// No HTTP port.
    Off,
}

impl std::str::FromStr for Http {
    type Err = String;

    fn from_str(s: &str) -> Result<Http, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Http::Off);
        }
        s.parse().map(Http::At).map_err(|_| {
            format!("--http takes host:port (such as 127.0.0.1:7879) or off, not {s:?}")
        })
    }
}

/// Where the log's files go through: the file system, or (in tests) a
/// fault injector such as [`ferry_log::Faults`].
#[derive(Clone)]
pub struct LogStorage(pub std::sync::Arc<dyn ferry_log::Storage>);

impl std::fmt::Debug for LogStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStorage(..)")
    }
}

/// Everything `ferry serve` can be told.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the TCP listener.
    pub bind: IpAddr,
    /// Port of the TCP listener; 0 picks a free one.
    pub port: u16,
    /// Also listen on this Unix socket.
    pub unix: Option<PathBuf>,
    /// The HTTP admin port.
    pub http: Http,
    /// Host names the HTTP port answers to besides loopback names and IP
    /// addresses.
    pub http_hosts: Vec<String>,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Durability of changes.
    pub durability: Durability,
    /// Start even if the middle of the log is damaged, skipping the damage.
    pub salvage: bool,
    /// The log's file access; `None` is the real file system.
    pub log_storage: Option<LogStorage>,
    /// Password every connection must AUTH with, if set.
    pub requirepass: Option<String>,
    /// Users, their hashed passwords and rights (TOML; `acl.rs`): every
    /// connection must AUTH as one of them.
    pub acl_file: Option<PathBuf>,
    /// Without a password, listen on loopback only (Redis's protected
    /// mode): a setting that would listen elsewhere is refused at start.
    pub protected_mode: bool,
    /// TLS on the TCP and HTTP ports: this certificate chain and key
    /// (PEM). The Unix socket stays plain.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Require of every TLS client a certificate this CA signed (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Most connections at once; more are refused with an error.
    pub max_clients: usize,
    /// Largest payload (and largest argument) in bytes.
    pub max_payload: usize,
    /// Most bytes one request's arguments may hold in all (a QPUTMANY's
    /// payloads together). Before AUTH, far less (`Limits::unauthenticated`).
    pub max_request: usize,
    /// Close a connection that sends nothing for this long while not
    /// waiting in a command; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Close a connection that has not taken its replies for this long (it
    /// stopped reading); `None`: never.
    pub write_timeout: Option<Duration>,
    /// Close a connection that has not authenticated this long after it
    /// connected, while a password is required; `None`: never.
    pub auth_timeout: Option<Duration>,
    /// Puts (and new queues) are refused with -OOM while queued messages
    /// and queues hold this many bytes or more (payloads plus
    /// per-message and per-queue overhead); 0: no limit.
    pub max_memory: u64,
    /// Puts are refused with -NOSPACE while the data directory's file
    /// system has less free space than this (gets and dones go on).
    pub min_free_disk: u64,
    /// Room the log keeps in a preallocated file for the day the disk
    /// fills, released then so that dones and compaction go on (0: none).
    pub disk_reserve: u64,
    /// Compact the log once it holds this many bytes (and twice what the
    /// last compaction left).
    pub checkpoint_bytes: u64,
    /// How long a DEDUP key keeps returning the first put's id, in ms.
    pub dedup_window_ms: u64,
    /// Worker threads of the runtime `ferry serve` builds (`None`: one per
    /// core but one). Reported by INFO; a caller that builds its own runtime sets
    /// it to what it built.
    pub threads: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 7878,
            unix: None,
            http: Http::Default,
            http_hosts: Vec::new(),
            data_dir: PathBuf::from("ferry-data"),
            durability: Durability::Async,
            salvage: false,
            log_storage: None,
            requirepass: None,
            acl_file: None,
            protected_mode: true,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            max_clients: 10_000,
            max_payload: 16 << 20,
            max_request: 256 << 20,
            idle_timeout: None,
            write_timeout: Some(Duration::from_secs(60)),
            auth_timeout: Some(Duration::from_secs(10)),
            max_memory: half_the_memory(),
            checkpoint_bytes: 64 << 20,
            min_free_disk: 128 << 20,
            disk_reserve: 16 << 20,
            dedup_window_ms: 10 * 60 * 1000,
            threads: None,
        }
    }
}

impl Config {
    /// The HTTP admin port's address, if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        match self.http {
            Http::Off => None,
            Http::At(a) => Some(a),
            Http::Default => Some(SocketAddr::from((
                [127, 0, 0, 1],
                self.port
                    .checked_add(1)
                    .filter(|_| self.port != 0)
                    .unwrap_or(0),
            ))),
        }
    }

    /// Refuses settings the broker cannot keep its promises with, naming
    /// the setting: above all a payload larger than one log record can
    /// hold, which would be acknowledged and then never logged.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |msg: String| Err(SettingsError(msg));
        if self.max_payload == 0 {
            return bad("--max-payload must be at least 1 byte".into());
        }
        if self.max_payload > MAX_PAYLOAD {
            return bad(format!(
                "--max-payload of {} bytes is more than one log record holds: it must be at most {MAX_PAYLOAD} bytes",
                self.max_payload
            ));
        }
        if self.max_request < self.max_payload {
            return bad(format!(
                "--max-request ({} bytes) must be at least --max-payload ({} bytes)",
                self.max_request, self.max_payload
            ));
        }
        if self.max_clients == 0 {
            return bad("--max-clients must be at least 1".into());
        }
        if self.threads == Some(0) {
            return bad("--threads must be at least 1".into());
        }
        if self.checkpoint_bytes == 0 {
            return bad("--checkpoint-bytes must be at least 1 byte".into());
        }
        if self.acl_file.is_some() && self.requirepass.is_some() {
            return bad(
                "--requirepass and --acl-file are two ways to set passwords: use one (the ACL file's `default` user is who AUTH <password> logs in as)".into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("--tls-cert and --tls-key go together".into());
        }
        if self.tls_ca.is_some() && self.tls_cert.is_none() {
            return bad("--tls-ca needs --tls-cert and --tls-key".into());
        }
        // Client certificates authenticate as a password does.
        if self.protected_mode
            && self.requirepass.is_none()
            && self.acl_file.is_none()
            && self.tls_ca.is_none()
        {
            let open = [
                ("--bind", Some(self.bind)),
                ("--http", self.http_addr().map(|a| a.ip())),
            ]
            .into_iter()
            .find_map(|(flag, ip)| ip.filter(|ip| !ip.is_loopback()).map(|ip| (flag, ip)));
            if let Some((flag, ip)) = open {
                return bad(format!(
                    "{flag} {ip} without a password would serve anyone who can reach this machine \
                     (protected mode): set a password with --requirepass (or FERRY_REQUIREPASS, \
                     or requirepass in the config file), require client certificates with \
                     --tls-ca, listen on 127.0.0.1, or, on a network you trust, \
                     --protected-mode no"
                ));
            }
        }
        Ok(())
    }
}

/// Half the memory this process may use: the machine's (`MemTotal`), or
/// its cgroup's limit if lower; 0 (no limit) where neither can be read.
/// `--max-memory`'s default: queued messages alone then cannot take a
/// machine's memory.
pub(crate) fn half_the_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    match (meminfo, cgroup) {
        (Some(m), Some(c)) => m.min(c) / 2,
        (Some(m), None) => m / 2,
        (None, Some(c)) => c / 2,
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_mode_allows_beyond_loopback_with_a_password_or_when_off() {
        let open = Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            ..Config::default()
        };
        assert!(open.validate().is_err());
        assert!(
            Config {
                requirepass: Some("s3cret".into()),
                ..open.clone()
            }
            .validate()
            .is_ok()
        );
        assert!(
            Config {
                protected_mode: false,
                ..open.clone()
            }
            .validate()
            .is_ok()
        );
        // Loopback, IPv4 or IPv6, needs nothing.
        assert!(Config::default().validate().is_ok());
        assert!(
            Config {
                bind: "::1".parse().unwrap(),
                ..Config::default()
            }
            .validate()
            .is_ok()
        );
    }
}

/// Settings that cannot be served, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// `yes` or `no` (as Redis's settings read).
pub(crate) fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("{s:?}: yes or no")),
    }
}

/// `1048576`, `1024kb`, `1mb`, `1gb` (powers of 1024, as Redis reads them).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let unit = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(format!("{s:?}: the unit must be b, kb, mb or gb")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A size in the TOML file: a number of bytes, or a string with a unit.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(crate) enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub(crate) fn bytes(&self, key: &str) -> Result<u64, SettingsError> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => parse_size(s).map_err(|e| SettingsError(format!("{key}: {e}"))),
        }
    }
}
