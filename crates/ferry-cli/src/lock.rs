//! `ferry lock NAME -- COMMAND`: a command run holding a lock, like
//! flock(1) across machines, and ended once the lock is lost (exit
//! LOCK_LOST), as `consul lock` does; `ferry sem NAME -n N -- COMMAND`:
//! the same holding one of a semaphore's N permits, like GNU parallel's
//! `sem` across machines.

use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::Client;

use crate::verbs::{Conn, TIMED_OUT, duration, fail};

/// `ferry lock`, `ferry sem`: the lock (permit) was lost while its
/// command ran (the command was ended).
const LOCK_LOST: i32 = 5;

#[derive(Args, Debug)]
pub(crate) struct SemArgs {
    /// The semaphore's value: at most this many commands hold it at once
    /// (every `ferry sem` and program using it must say the same).
    #[arg(short = 'n', long = "value", default_value_t = 1)]
    value: u64,
    #[command(flatten)]
    hold: LockArgs,
}

/// What a command runs holding.
#[derive(Clone, Copy)]
enum Permit {
    Lock,
    Semaphore(u64),
}

impl Permit {
    fn acquire(
        self,
        c: &mut Client,
        name: &str,
        wait: Option<Duration>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, ferry_client::Error> {
        match self {
            Permit::Lock => c.lock(name, wait, ttl),
            Permit::Semaphore(value) => c.sem_acquire(name, value, wait, ttl),
        }
    }

    fn release(self, c: &mut Client, name: &str, token: u64) {
        let _ = match self {
            Permit::Lock => c.unlock(name, token),
            Permit::Semaphore(value) => c.sem_release(name, value, Some(token), false),
        };
    }

    fn held(self, c: &mut Client, name: &str, token: u64) -> Result<bool, ferry_client::Error> {
        match self {
            Permit::Lock => c.lock_held(name, token),
            Permit::Semaphore(_) => c.sem_held(name, token),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Permit::Lock => "lock",
            Permit::Semaphore(_) => "semaphore",
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct LockArgs {
    #[command(flatten)]
    conn: Conn,
    /// The lock's (semaphore's) name.
    name: String,
    /// Seconds after which the broker frees the lock (the permit) even if
    /// the command still runs (default: held until the command ends).
    #[arg(long)]
    ttl: Option<f64>,
    /// Seconds to wait for the lock (a permit); exit 4 if not acquired.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seconds the command has to end after SIGTERM, once the lock is
    /// lost, before SIGKILL.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// The command to run while holding the lock (the permit).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs a command holding a lock, like flock(1) across machines; replies
/// the command's exit code. While it runs, a connection of its own asks
/// whether the lock is still held (LOCKED); once it is not — its TTL ran
/// out, the broker restarted, its Redis heartbeat was overdue — or cannot
/// be confirmed for as long as the lock could outlive its holder, the
/// command is ended (SIGTERM, then SIGKILL after `--grace`) and `ferry
/// lock` exits LOCK_LOST, as `consul lock` does: two holders at once are
/// cut as short as the holder can know.
pub(crate) fn lock(a: &LockArgs) -> Result<i32, (i32, String)> {
    run_holding(a, Permit::Lock)
}

/// Runs a command holding one of a semaphore's permits, as [`lock`] does
/// holding a lock.
pub(crate) fn sem(a: &SemArgs) -> Result<i32, (i32, String)> {
    run_holding(&a.hold, Permit::Semaphore(a.value))
}

fn run_holding(a: &LockArgs, permit: Permit) -> Result<i32, (i32, String)> {
    let mut c = a.conn.connect()?;
    // Never Duration::ZERO (that would not wait at all): `--timeout 0`
    // waits a millisecond, as it always has.
    let wait = a.timeout.map(|s| duration(s).max(Duration::from_millis(1)));
    let ttl = a.ttl.map(duration);
    let Some(token) = permit.acquire(&mut c, &a.name, wait, ttl).map_err(fail)? else {
        return Err((
            TIMED_OUT,
            format!("{} {:?} not acquired in time", permit.what(), a.name),
        ));
    };
    let acquired = Instant::now();
    let mut child = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .spawn()
        .map_err(|e| (127, format!("cannot run {:?}: {e}", a.command[0])))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Watch::Exited(child.wait()));
        });
    }
    // How often to ask, and how long the lock may go unconfirmed: on
    // Redis its heartbeat (a lock unrenewed that long is gone); on the
    // broker, where a lock lives with its connection, a few seconds.
    let heartbeat = ferry_client::heartbeat_of(&a.conn.url);
    let every = heartbeat.map_or(Duration::from_secs(1), |h| h / 3);
    let unconfirmed_for = heartbeat.unwrap_or(Duration::from_secs(5));
    {
        let (url, name) = (a.conn.url.clone(), a.name.clone());
        std::thread::spawn(move || watch_lock(&url, permit, &name, token, every, &tx));
    }
    let mut confirmed = Instant::now();
    let why = loop {
        let mut until = confirmed + unconfirmed_for;
        if let Some(t) = ttl {
            until = until.min(acquired + t);
        }
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Watch::Exited(status)) => {
                // Released explicitly; the broker would also release it
                // when this connection closes.
                permit.release(&mut c, &a.name, token);
                let status =
                    status.map_err(|e| (1, format!("waiting for {:?}: {e}", a.command[0])))?;
                return Ok(status.code().unwrap_or(128 + 9));
            }
            Ok(Watch::Held) => confirmed = Instant::now(),
            Ok(Watch::Lost) => break "it is no longer held (released, its TTL ran out, or its holder's connection was lost)".to_string(),
            Err(_) if ttl.is_some_and(|t| acquired.elapsed() >= t) => {
                break "its TTL ran out".to_string();
            }
            Err(_) => {
                break format!(
                    "it could not be confirmed for {:.1} s",
                    unconfirmed_for.as_secs_f64()
                );
            }
        }
    };
    end_command(pid, duration(a.grace), &rx);
    Err((
        LOCK_LOST,
        format!(
            "{} {:?} lost while {:?} ran: {why}; the command was ended",
            permit.what(),
            a.name,
            a.command[0]
        ),
    ))
}

/// What `ferry lock` learns while its command runs.
enum Watch {
    Held,
    Lost,
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// Asks every `every` whether `token` still holds lock `name`, on a
/// connection of its own (the holder's is idle, and may be the one that
/// was lost), until the lock is lost or nobody listens.
fn watch_lock(
    url: &str,
    permit: Permit,
    name: &str,
    token: u64,
    every: Duration,
    tx: &std::sync::mpsc::Sender<Watch>,
) {
    let mut c = None;
    loop {
        std::thread::sleep(every);
        if c.is_none() {
            c = Client::connect(url).ok();
        }
        let Some(client) = c.as_mut() else { continue };
        let news = match permit.held(client, name, token) {
            Ok(true) => Watch::Held,
            Ok(false) => Watch::Lost,
            Err(_) => {
                c = None;
                continue;
            }
        };
        let lost = matches!(news, Watch::Lost);
        if tx.send(news).is_err() || lost {
            return;
        }
    }
}

/// SIGTERM to the command and every process it started, SIGKILL to
/// those left after `grace`. The command keeps ferry's process group (a
/// terminal's Ctrl-C and job control still reach it), so its descendants
/// are found by their parents in /proc.
fn end_command(pid: u32, grace: Duration, rx: &std::sync::mpsc::Receiver<Watch>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let signal_all = |sig: Signal| {
        for p in std::iter::once(pid).chain(descendants(pid)) {
            if let Ok(p) = i32::try_from(p) {
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
    };
    // Its descendants first seen while it lives (once it is reaped, they
    // are the init process's).
    let tree = descendants(pid);
    signal_all(Signal::SIGTERM);
    let give_up = Instant::now() + grace;
    let mut exited = false;
    while !exited {
        match rx.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
            Ok(Watch::Exited(_)) => exited = true,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    if !exited {
        signal_all(Signal::SIGKILL);
    }
    for p in tree {
        if let Ok(p) = i32::try_from(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    // Reaped by its waiting thread.
    while !exited {
        match rx.recv() {
            Ok(Watch::Exited(_)) | Err(_) => exited = true,
            Ok(_) => {}
        }
    }
}

/// Every process descended from `pid`, from /proc's parent links (empty
/// where there is no /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid ..." — comm may hold
            // spaces and parentheses, so read after the last ')'.
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|f| f.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}
