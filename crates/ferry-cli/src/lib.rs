//! The `ferry` command line as a library: [`run`] parses flags, sets up
//! logging, and calls the libraries — `serve` and `check` for the broker,
//! the client verbs (`verbs.rs`, `lock.rs`), `worker`, `bench`. The
//! `ferry` binary (main.rs) and the Python package (`python -m ferry`, the
//! wheel's `ferry` command) are both hosts of it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

mod bench;
mod event;
mod lock;
mod top;
mod trim;
mod verbs;
mod worker;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "A durable work-queue broker with Python's queue semantics",
    after_help = "The client verbs (put, get, done, nack, drop, purge, reopen, join, info, top, lock, \
                  sem, event, bench, worker) find the broker at --url, else $FERRY_URL, else \
                  ferry://127.0.0.1:7878 (redis:// and redis+cluster:// reach Redis; see \
                  `ferry put --help`).\n\n\
                  Exit codes: 0 done; 1 the broker refused, or the command failed; 2 bad \
                  arguments; 3 the broker cannot be reached; 4 nothing happened in time (empty, \
                  full, join, lock or event wait timed out; `ferry event is-set`: not set); 5 \
                  `ferry lock`, `ferry sem`: the lock (permit) was lost while its command ran \
                  (it was ended). Otherwise they pass their command's code through (127: it \
                  could not be run)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (RESP on TCP, and on a Unix socket if asked).
    Serve(Box<ferry_server::serve::ServeArgs>),
    /// Verify a data directory offline and print what it holds. Changes
    /// nothing. Exit 0: sound (a torn tail the next start would cut is
    /// reported); 1: damaged, or not readable.
    Check(CheckArgs),
    /// Read a password from stdin (one line) and print its argon2id hash,
    /// for a user's `password_hash` in the --acl-file.
    HashPassword,
    /// Put messages; prints each id. Exit 4 if the queue stayed full.
    Put(verbs::PutArgs),
    /// Get messages and print their payloads; finished after printing
    /// unless --lease. Exit 4 if none came in time.
    Get(verbs::GetArgs),
    /// Finish messages got with `get --lease`.
    Done(verbs::DoneArgs),
    /// Give a message got with `get --lease` back for another try.
    Nack(verbs::NackArgs),
    /// Remove queues and everything in them (a queue named again later
    /// starts afresh).
    Drop(verbs::ManageArgs),
    /// Drop the ready and delayed messages of queues (each counted
    /// finished, so join returns once the leased ones are done).
    Purge(verbs::ManageArgs),
    /// Let shut-down queues take puts again.
    Reopen(verbs::ManageArgs),
    /// Wait until a queue's work is finished, showing progress on stderr.
    /// Exit 4 on --timeout.
    Join(verbs::JoinArgs),
    /// Queues and their counters (a table, one queue in full, or --json).
    Info(verbs::InfoArgs),
    /// A live view of every queue (depth, leased, rates, waiting consumers)
    /// and of the locks, semaphores, events, conditions and barriers in use.
    Top(top::TopArgs),
    /// Run a command holding a lock, like flock(1) across machines; exits
    /// with the command's code (4 if the lock was not acquired in time).
    Lock(lock::LockArgs),
    /// Run a command holding one of a semaphore's N permits: at most N
    /// such commands at once, on every machine (GNU parallel's `sem`
    /// across machines); exits as `ferry lock` does.
    Sem(lock::SemArgs),
    /// Set, clear, test or wait for an event (`multiprocessing.Event`
    /// across machines): `ferry event wait go` waits until someone runs
    /// `ferry event set go` (exit 4 on --timeout).
    Event(event::EventArgs),
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
fn finish(outcome: Result<i32, (i32, String)>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("ferry: {msg}");
            code
        }
    }
}

/// What the program running the command line provides.
pub struct Host {
    /// How to start this same command line again (`ferry worker` runs
    /// each task under `<self> __shim`): the binary's path, or a Python
    /// interpreter with `-m ferry`.
    pub this_program: Vec<OsString>,
}

static HOST: OnceLock<Vec<OsString>> = OnceLock::new();

/// The command that starts this command line again (see [`Host`]).
pub(crate) fn this_program() -> std::io::Result<Vec<OsString>> {
    match HOST.get() {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => Ok(vec![std::env::current_exe()?.into_os_string()]),
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
    if let Some(c) = &report.cut {
        println!(
            "end to cut: {} bytes at offset {} of {} (the next start cuts them, keeping them in {}/): torn by a crash, or a damaged last record — the two leave the same bytes",
            c.bytes,
            c.offset,
            c.path.display(),
            ferry_server::DAMAGED_DIR,
        );
        if c.records > 0 {
            println!(
                "  {} whole record(s) after a sector of zeros go with them (a write the disk did not finish)",
                c.records
            );
        }
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

/// Runs the command line `args` (the program's name first, as
/// `std::env::args_os` has it); replies its exit code.
pub fn run(args: impl IntoIterator<Item = OsString>, host: Host) -> i32 {
    let _ = HOST.set(host.this_program);
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and exit 0; a usage error 2.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    ferry_server::serve::init_logging();
    let done = |r: anyhow::Result<()>| match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    match cli.command {
        Command::Check(args) => done(check(&args)),
        Command::HashPassword => done(hash_password()),
        Command::Put(a) => finish(verbs::put(&a).map(|()| 0)),
        Command::Get(a) => finish(verbs::get(&a).map(|()| 0)),
        Command::Done(a) => finish(verbs::done(&a).map(|()| 0)),
        Command::Nack(a) => finish(verbs::nack(&a).map(|()| 0)),
        Command::Join(a) => finish(verbs::join(&a).map(|()| 0)),
        Command::Drop(a) => finish(verbs::manage(verbs::Manage::Drop, &a).map(|()| 0)),
        Command::Purge(a) => finish(verbs::manage(verbs::Manage::Purge, &a).map(|()| 0)),
        Command::Reopen(a) => finish(verbs::manage(verbs::Manage::Reopen, &a).map(|()| 0)),
        Command::Info(a) => finish(verbs::info(&a).map(|()| 0)),
        Command::Top(a) => finish(top::top(&a).map(|()| 0)),
        Command::Lock(a) => finish(lock::lock(&a)),
        Command::Sem(a) => finish(lock::sem(&a)),
        Command::Event(a) => finish(event::event(&a)),
        Command::Bench(a) => finish(bench::bench(&a).map(|()| 0)),
        Command::Worker(a) => finish(worker::worker(&a).map(|()| 0)),
        Command::Shim(a) => worker::shim(&a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            0
        }
        Command::Serve(args) => {
            trim::start();
            ferry_server::serve::run("ferry", *args)
        }
    }
}

fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    let hash = ferry_server::hash_password(password.as_bytes()).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}
