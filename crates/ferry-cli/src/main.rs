//! The `ferry` binary: parses flags, sets up logging, and calls the
//! libraries: `serve` and `check` for the broker, and the client verbs
//! (`verbs.rs`).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use ferry_server::{Config, Durability, Server};
use serde::Deserialize;

mod bench;
mod verbs;
mod worker;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "A durable work-queue broker with Python's queue semantics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (RESP on TCP, and on a Unix socket if asked).
    Serve(Box<ServeArgs>),
    /// Verify a data directory offline and print what it holds. Changes
    /// nothing. Exit 0: sound (a torn tail the next start would cut is
    /// reported); 1: damaged, or not readable.
    Check(CheckArgs),
    /// Put messages; prints each id. Exit 4 if the queue stayed full.
    Put(verbs::PutArgs),
    /// Get messages and print their payloads; finished after printing
    /// unless --lease. Exit 4 if none came in time.
    Get(verbs::GetArgs),
    /// Finish messages got with `get --lease`.
    Done(verbs::DoneArgs),
    /// Give a message got with `get --lease` back for another try.
    Nack(verbs::NackArgs),
    /// Wait until a queue's work is finished, showing progress on stderr.
    /// Exit 4 on --timeout.
    Join(verbs::JoinArgs),
    /// Queues and their counters (a table, one queue in full, or --json).
    Info(verbs::InfoArgs),
    /// A live view of every queue: depth, leased, rates, waiting consumers.
    Top(verbs::TopArgs),
    /// Run a command holding a lock, like flock(1) across machines; exits
    /// with the command's code (4 if the lock was not acquired in time).
    Lock(verbs::LockArgs),
    /// Load generator: producers and consumers through a broker; prints
    /// throughput and put->get latency percentiles.
    Bench(bench::BenchArgs),
    /// Run CMD for each message, up to N at once: exit 0 marks it done,
    /// anything else gives it back for a retry. Processes are reaped, and
    /// killed with the supervisor. See `ferry worker --help`.
    Worker(worker::WorkerArgs),
    /// (internal) the per-task shim of `ferry worker`.
    #[command(name = "__shim", hide = true)]
    Shim(worker::ShimArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Exit code and one-line message for a verb that did not succeed
/// (codes in `verbs.rs`).
fn finish(outcome: Result<i32, (i32, String)>) -> ! {
    match outcome {
        Ok(code) => std::process::exit(code),
        Err((code, msg)) => {
            eprintln!("ferry: {msg}");
            std::process::exit(code);
        }
    }
}

#[derive(Parser)]
struct CheckArgs {
    /// The data directory to check [default: ./ferry-data]
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "ferry-data")]
    data_dir: PathBuf,
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let report = ferry_server::check(&args.data_dir)
        .with_context(|| format!("checking {}", args.data_dir.display()))?;
    println!(
        "{}: {} segment(s), {} record(s), {} queue(s)",
        args.data_dir.display(),
        report.segments,
        report.records,
        report.queues.len()
    );
    if let Some((path, offset, bytes)) = &report.torn_tail {
        println!(
            "torn tail: {} bytes at offset {offset} of {} (the next start cuts them; they were never acknowledged)",
            bytes,
            path.display()
        );
    }
    println!(
        "{:<30} {:<9} {:>8} {:>10} {:>8} {:>8} {:>12} shutdown",
        "queue", "kind", "maxsize", "messages", "leased", "delayed", "bytes"
    );
    for q in &report.queues {
        let shutdown = match q.shutdown {
            None => "no",
            Some(false) => "graceful",
            Some(true) => "immediate",
        };
        println!(
            "{:<30} {:<9} {:>8} {:>10} {:>8} {:>8} {:>12} {}",
            q.name, q.kind, q.maxsize, q.messages, q.leased, q.delayed, q.bytes, shutdown
        );
    }
    Ok(())
}

/// `ferry serve` flags. Each may also come from its FERRY_* environment
/// variable or the TOML file given with --config; flags win over the
/// environment, which wins over the file.
#[derive(Parser, Default)]
struct ServeArgs {
    /// TOML file with any of these settings (keys as the long flags, with
    /// underscores: max_clients = 100).
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, env = "FERRY_BIND")]
    bind: Option<IpAddr>,
    /// TCP port; 0 picks a free one [default: 7878]
    #[arg(long, env = "FERRY_PORT")]
    port: Option<u16>,
    /// Also listen on this Unix socket.
    #[arg(long, env = "FERRY_UNIX")]
    unix: Option<PathBuf>,
    /// Directory of the embedded store [default: ./ferry-data]
    #[arg(long, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sync (reply after fsync, shared by concurrent writers), async (reply
    /// after write, fsync every second) or memory (no disk) [default: sync]
    #[arg(long, env = "FERRY_DURABILITY")]
    durability: Option<String>,
    /// Start even if the middle of the log is damaged, skipping the damage
    /// (logged); without it such a start fails and changes nothing.
    #[arg(long, env = "FERRY_SALVAGE")]
    salvage: bool,
    /// Password clients must AUTH with.
    #[arg(long, env = "FERRY_REQUIREPASS")]
    requirepass: Option<String>,
    /// Most clients at once [default: 10000]
    #[arg(long, env = "FERRY_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Largest payload in bytes [default: 16777216]
    #[arg(long, env = "FERRY_MAX_PAYLOAD")]
    max_payload: Option<usize>,
    /// Refuse puts with -OOM while queued messages hold this much memory:
    /// bytes, or with a kb/mb/gb suffix; 0 for no limit [default: 0]
    #[arg(long, env = "FERRY_MAX_MEMORY", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Worker threads serving connections [default: one per core]
    #[arg(long, env = "FERRY_THREADS")]
    threads: Option<usize>,
    /// Refuse puts with -NOSPACE while the data directory's disk has less
    /// free space than this [default: 128mb]
    #[arg(long, env = "FERRY_MIN_FREE_DISK", value_parser = parse_size)]
    min_free_disk: Option<u64>,
    /// Compact the log once it holds this much (and twice what the last
    /// compaction left) [default: 64mb]
    #[arg(long, env = "FERRY_CHECKPOINT_BYTES", value_parser = parse_size)]
    checkpoint_bytes: Option<u64>,
}

/// `1048576`, `1024kb`, `1mb`, `1gb` (powers of 1024, as Redis reads them).
fn parse_size(s: &str) -> Result<u64, String> {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<IpAddr>,
    port: Option<u16>,
    unix: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    salvage: Option<bool>,
    requirepass: Option<String>,
    max_clients: Option<usize>,
    max_payload: Option<usize>,
    max_memory: Option<String>,
    checkpoint_bytes: Option<String>,
    min_free_disk: Option<String>,
}

/// Resolves flags, environment and file into the broker's settings.
fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let d = Config::default();
    let durability = match args.durability.or(file.durability).as_deref() {
        None | Some("sync") => Durability::Sync,
        Some("async") => Durability::Async,
        Some("memory") => Durability::Memory,
        Some(other) => bail!("--durability must be sync, async or memory, not {other:?}"),
    };
    let max_payload = args
        .max_payload
        .or(file.max_payload)
        .unwrap_or(d.max_payload);
    if max_payload == 0 {
        bail!("--max-payload must be at least 1 byte");
    }
    Ok(Config {
        bind: args.bind.or(file.bind).unwrap_or(d.bind),
        port: args.port.or(file.port).unwrap_or(d.port),
        unix: args.unix.or(file.unix),
        data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
        durability,
        salvage: args.salvage || file.salvage.unwrap_or(false),
        log_storage: None,
        requirepass: args
            .requirepass
            .or(file.requirepass)
            .filter(|p| !p.is_empty()),
        max_clients: args
            .max_clients
            .or(file.max_clients)
            .unwrap_or(d.max_clients),
        max_payload,
        max_memory: match (args.max_memory, file.max_memory) {
            (Some(m), _) => m,
            (None, Some(m)) => parse_size(&m).map_err(anyhow::Error::msg)?,
            (None, None) => d.max_memory,
        },
        checkpoint_bytes: match (args.checkpoint_bytes, file.checkpoint_bytes) {
            (Some(b), _) => b,
            (None, Some(b)) => parse_size(&b).map_err(anyhow::Error::msg)?,
            (None, None) => d.checkpoint_bytes,
        },
        min_free_disk: match (args.min_free_disk, file.min_free_disk) {
            (Some(b), _) => b,
            (None, Some(b)) => parse_size(&b).map_err(anyhow::Error::msg)?,
            (None, None) => d.min_free_disk,
        },
        dedup_window_ms: d.dedup_window_ms,
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(config.clone())
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let bound = server.bound()?;
    // Signal handlers go in before the first line, so that a SIGTERM sent
    // as soon as a script reads it stops the broker cleanly.
    let stop = ferry_server::shutdown_signal();
    // The first line on stdout: tests and scripts wait for it.
    println!("listening {}", bound.tcp);
    if let Some(path) = &bound.unix {
        println!("listening unix:{}", path.display());
    }
    tracing::info!(tcp = %bound.tcp, unix = ?bound.unix, durability = ?config.durability, "ferry serving");
    match server.run(stop).await {
        ferry_server::Stopped::Clean => Ok(()),
        ferry_server::Stopped::LogFailed => {
            eprintln!(
                "ferry: the log failed (a write or fsync error); stopped without acknowledging anything more"
            );
            std::process::exit(70);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Put(a) => finish(verbs::put(&a).map(|()| 0)),
        Command::Get(a) => finish(verbs::get(&a).map(|()| 0)),
        Command::Done(a) => finish(verbs::done(&a).map(|()| 0)),
        Command::Nack(a) => finish(verbs::nack(&a).map(|()| 0)),
        Command::Join(a) => finish(verbs::join(&a).map(|()| 0)),
        Command::Info(a) => finish(verbs::info(&a).map(|()| 0)),
        Command::Top(a) => finish(verbs::top(&a).map(|()| 0)),
        Command::Lock(a) => finish(verbs::lock(&a)),
        Command::Bench(a) => finish(bench::bench(&a).map(|()| 0)),
        Command::Worker(a) => finish(worker::worker(&a).map(|()| 0)),
        Command::Shim(a) => worker::shim(&a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(())
        }
        Command::Serve(args) => {
            let threads = args.threads.filter(|&t| t > 0);
            let config = resolve(*args)?;
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(t) = threads {
                runtime.worker_threads(t);
            }
            runtime
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(serve(config))
        }
    }
}
