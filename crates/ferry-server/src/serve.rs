//! `ferry serve` as a whole program: its flags (also from `FERRY_*`
//! environment variables and a TOML file), their resolution into a
//! validated [`Config`], logging, the runtime, and the exit status. The
//! `ferry` binary and `python -m ferry serve` both run this, so the two
//! take the same flags and refuse the same bad settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::config::{Config, Durability, Http, SettingsError, Size, parse_size, parse_yes_no};
use crate::server::{Server, StartError, Stopped};

/// `ferry serve` flags. Each may also come from its FERRY_* environment
/// variable or the TOML file given with --config; flags win over the
/// environment, which wins over the file.
#[derive(Args, Debug, Default)]
#[command(
    about = "Run the broker (RESP on TCP, and on a Unix socket if asked)",
    after_help = "Durability: `async` (the default) replies once a change is written to the \
log and fsyncs at least every second, so a kill -9 of the broker loses nothing and an OS crash \
or power cut loses at most the last second, as Redis's appendfsync everysec. `sync` replies \
only after the fsync: every acknowledged message survives a power cut."
)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the long flags, with
    /// underscores: max_clients = 100; sizes as strings: "64mb").
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, env = "FERRY_BIND")]
    pub bind: Option<IpAddr>,
    /// TCP port; 0 picks a free one [default: 7878]
    #[arg(long, env = "FERRY_PORT")]
    pub port: Option<u16>,
    /// Also listen on this Unix socket.
    #[arg(long, env = "FERRY_UNIX")]
    pub unix: Option<PathBuf>,
    /// The HTTP admin port (/metrics, /api, the dashboard): host:port, or
    /// off [default: 127.0.0.1 at the RESP port + 1, so 7879]
    #[arg(long, env = "FERRY_HTTP")]
    pub http: Option<Http>,
    /// A host name the HTTP port answers to besides loopback names and IP
    /// addresses (the name it is reached by through a proxy or DNS);
    /// repeat for more. Any other Host is refused (421), so that a web
    /// page cannot reach the port by rebinding its own name to it.
    #[arg(long = "http-host", env = "FERRY_HTTP_HOSTS", value_delimiter = ',')]
    pub http_hosts: Vec<String>,
    /// Directory of the embedded store [default: ./ferry-data]
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// async (reply after the write, fsync at least every second), sync
    /// (reply after the fsync, shared by concurrent writers) or memory (no
    /// disk) [default: async]
    #[arg(long, env = "FERRY_DURABILITY")]
    pub durability: Option<String>,
    /// Start even if the middle of the log is damaged, skipping the damage
    /// (logged); without it such a start fails and changes nothing.
    #[arg(long, env = "FERRY_SALVAGE")]
    pub salvage: bool,
    /// Password clients must AUTH with.
    #[arg(long, env = "FERRY_REQUIREPASS")]
    pub requirepass: Option<String>,
    /// Users, their hashed passwords and what each may do (TOML; see
    /// docs/protocol.md); instead of --requirepass.
    #[arg(long, env = "FERRY_ACL_FILE")]
    pub acl_file: Option<PathBuf>,
    /// yes: without a password, listen on loopback only (a start that
    /// would listen elsewhere is refused); no: listen where told, password
    /// or not [default: yes]
    #[arg(long, env = "FERRY_PROTECTED_MODE", value_parser = parse_yes_no)]
    pub protected_mode: Option<bool>,
    /// TLS on the TCP and HTTP ports with this certificate chain (PEM);
    /// needs --tls-key. The Unix socket stays plain.
    #[arg(long, env = "FERRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "FERRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM) of every TLS
    /// client.
    #[arg(long, env = "FERRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Most clients at once [default: 10000]
    #[arg(long, env = "FERRY_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// Largest payload: bytes, or with a kb/mb/gb suffix [default: 16mb]
    #[arg(long, env = "FERRY_MAX_PAYLOAD", value_parser = parse_size)]
    pub max_payload: Option<u64>,
    /// Most bytes one request's arguments may hold in all (a QPUTMANY's
    /// payloads together; before AUTH, 64kb): bytes, or with a kb/mb/gb
    /// suffix [default: 256mb]
    #[arg(long, env = "FERRY_MAX_REQUEST", value_parser = parse_size)]
    pub max_request: Option<u64>,
    /// Close a connection idle this many seconds (not waiting in a
    /// command); 0: never [default: 0]
    #[arg(long, env = "FERRY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Close a connection that has not read its replies for this many
    /// seconds; 0: never [default: 60]
    #[arg(long, env = "FERRY_WRITE_TIMEOUT")]
    pub write_timeout: Option<u64>,
    /// With a password: close a connection that has not authenticated
    /// this many seconds after connecting (when the broker is full, the
    /// oldest such connection also makes room for a newcomer); 0: never
    /// [default: 10]
    #[arg(long, env = "FERRY_AUTH_TIMEOUT")]
    pub auth_timeout: Option<u64>,
    /// Refuse puts (and new queues) with -OOM while queued messages and
    /// queues hold this much memory: bytes, or with a kb/mb/gb suffix; 0
    /// for no limit [default: half of this machine's memory, or of its
    /// cgroup's limit]
    #[arg(long, env = "FERRY_MAX_MEMORY", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Worker threads serving connections [default: one per core but
    /// one, at least one]
    #[arg(long, env = "FERRY_THREADS")]
    pub threads: Option<usize>,
    /// Refuse puts with -NOSPACE while the data directory's disk has less
    /// free space than this [default: 128mb]
    #[arg(long, env = "FERRY_MIN_FREE_DISK", value_parser = parse_size)]
    pub min_free_disk: Option<u64>,
    /// Room kept in a preallocated file (DATA_DIR/reserve) for the day the
    /// disk fills: released then, so that gets, dones and compaction go on
    /// while puts get -NOSPACE; 0 for none [default: 16mb]
    #[arg(long, env = "FERRY_DISK_RESERVE", value_parser = parse_size)]
    pub disk_reserve: Option<u64>,
    /// Compact the log once it holds this much (and twice what the last
    /// compaction left) [default: 64mb]
    #[arg(long, env = "FERRY_CHECKPOINT_BYTES", value_parser = parse_size)]
    pub checkpoint_bytes: Option<u64>,
}

/// The TOML file: every flag but `config`, by its long name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<IpAddr>,
    port: Option<u16>,
    unix: Option<PathBuf>,
    http: Option<String>,
    http_hosts: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    salvage: Option<bool>,
    requirepass: Option<String>,
    acl_file: Option<PathBuf>,
    protected_mode: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    max_clients: Option<usize>,
    max_payload: Option<Size>,
    max_request: Option<Size>,
    idle_timeout: Option<u64>,
    write_timeout: Option<u64>,
    auth_timeout: Option<u64>,
    max_memory: Option<Size>,
    threads: Option<usize>,
    checkpoint_bytes: Option<Size>,
    min_free_disk: Option<Size>,
    disk_reserve: Option<Size>,
}

/// A size from the flag (or environment), else the file, else the default.
fn size(
    flag: Option<u64>,
    file: Option<Size>,
    key: &str,
    default: u64,
) -> Result<u64, SettingsError> {
    match (flag, file) {
        (Some(n), _) => Ok(n),
        (None, Some(s)) => s.bytes(key),
        (None, None) => Ok(default),
    }
}

/// Seconds from the flag (or environment) or file, 0 meaning never, else
/// the default.
fn seconds(given: Option<u64>, default: Option<Duration>) -> Option<Duration> {
    match given {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => default,
    }
}

/// Resolves flags, environment and file into validated settings.
pub fn resolve(args: ServeArgs) -> Result<Config, SettingsError> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SettingsError(format!("reading {}: {e}", path.display())))?;
            toml::from_str(&text)
                .map_err(|e| SettingsError(format!("parsing {}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let d = Config::default();
    let durability = match args.durability.or(file.durability).as_deref() {
        None => d.durability,
        Some("async") => Durability::Async,
        Some("sync") => Durability::Sync,
        Some("memory") => Durability::Memory,
        Some(other) => {
            return Err(SettingsError(format!(
                "--durability must be async, sync or memory, not {other:?}"
            )));
        }
    };
    let max_payload = size(
        args.max_payload,
        file.max_payload,
        "max_payload",
        d.max_payload as u64,
    )?;
    let config = Config {
        bind: args.bind.or(file.bind).unwrap_or(d.bind),
        port: args.port.or(file.port).unwrap_or(d.port),
        unix: args.unix.or(file.unix),
        http: match (args.http, file.http) {
            (Some(h), _) => h,
            (None, Some(h)) => h.parse().map_err(SettingsError)?,
            (None, None) => d.http,
        },
        http_hosts: if args.http_hosts.is_empty() {
            file.http_hosts.unwrap_or_default()
        } else {
            args.http_hosts
        },
        data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
        durability,
        salvage: args.salvage || file.salvage.unwrap_or(false),
        log_storage: None,
        requirepass: args
            .requirepass
            .or(file.requirepass)
            .filter(|p| !p.is_empty()),
        acl_file: args.acl_file.or(file.acl_file),
        protected_mode: args
            .protected_mode
            .or(file.protected_mode)
            .unwrap_or(d.protected_mode),
        tls_cert: args.tls_cert.or(file.tls_cert),
        tls_key: args.tls_key.or(file.tls_key),
        tls_ca: args.tls_ca.or(file.tls_ca),
        max_clients: args
            .max_clients
            .or(file.max_clients)
            .unwrap_or(d.max_clients),
        max_payload: usize::try_from(max_payload).unwrap_or(usize::MAX),
        max_request: usize::try_from(size(
            args.max_request,
            file.max_request,
            "max_request",
            d.max_request as u64,
        )?)
        .unwrap_or(usize::MAX),
        idle_timeout: seconds(args.idle_timeout.or(file.idle_timeout), d.idle_timeout),
        write_timeout: seconds(args.write_timeout.or(file.write_timeout), d.write_timeout),
        auth_timeout: seconds(args.auth_timeout.or(file.auth_timeout), d.auth_timeout),
        max_memory: size(args.max_memory, file.max_memory, "max_memory", d.max_memory)?,
        checkpoint_bytes: size(
            args.checkpoint_bytes,
            file.checkpoint_bytes,
            "checkpoint_bytes",
            d.checkpoint_bytes,
        )?,
        min_free_disk: size(
            args.min_free_disk,
            file.min_free_disk,
            "min_free_disk",
            d.min_free_disk,
        )?,
        disk_reserve: size(
            args.disk_reserve,
            file.disk_reserve,
            "disk_reserve",
            d.disk_reserve,
        )?,
        threads: args.threads.or(file.threads),
        dedup_window_ms: d.dedup_window_ms,
    };
    config.validate()?;
    Ok(config)
}

/// Sets up logging to stderr (`RUST_LOG`, default `info`; the `redis`
/// crate's own warnings, which the caller's error already says, only
/// when asked for), in colour only when stderr is a terminal. Does
/// nothing if logging is already set up.
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // RUST_LOG as `level` or `target=level,...` (tracing-subscriber's
    // Targets: no regex engine to build for the one variable).
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("redis", tracing::Level::ERROR)
        });
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(targets);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Worker threads when `--threads` is not given: one per core but one.
/// The core left over is for what else a broker's machine runs at once —
/// the log's writer thread and its fsyncs, the kernel's network
/// processing, and usually the clients themselves (a program's worker
/// processes beside its broker). Redis's guidance for its I/O threads is
/// the same. Measured on 2 cores with redis-benchmark on the same machine
/// (docs/performance.md, "Round two"): one worker against two, pipelined
/// puts +10–20 %, put → get latency p50 50 → 33 µs, CPU per request
/// lower on every row.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Runs the broker with these flags until SIGTERM or SIGINT; replies the
/// process's exit status: 0 after a clean stop, 1 when the settings or the
/// start are refused (the reason is on stderr, after `prog: `), 70 when the
/// log failed.
pub fn run(prog: &str, args: ServeArgs) -> i32 {
    let mut config = match resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    let threads = *config.threads.get_or_insert_with(default_threads);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{prog}: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(Stopped::Clean) => 0,
        Ok(Stopped::LogFailed) => {
            eprintln!(
                "{prog}: the log failed (a write or fsync error); stopped without acknowledging anything more"
            );
            70
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            1
        }
    }
}

async fn serve(config: Config) -> Result<Stopped, StartError> {
    let durability = config.durability;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let server = Server::bind(config).await?;
    let bound = server.bound();
    // Signal handlers go in before the first line, so that a SIGTERM sent
    // as soon as a script reads it stops the broker cleanly.
    let stop = crate::shutdown_signal();
    // The first line on stdout: tests and scripts wait for it. All lines
    // go in one write, and a reader that closed the pipe after the first
    // (it has what it waited for) stops nothing.
    let mut lines = format!("listening {}\n", bound.tcp);
    if let Some(path) = &bound.unix {
        lines.push_str(&format!("listening unix:{}\n", path.display()));
    }
    if let Some(addr) = &bound.http {
        lines.push_str(&format!("http {scheme}://{addr}\n"));
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
    drop(out);
    tracing::info!(tcp = %bound.tcp, unix = ?bound.unix, http = ?bound.http, ?durability, "ferry serving");
    Ok(server.run(stop).await)
}
