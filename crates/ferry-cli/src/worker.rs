//! `ferry worker`: a supervisor that runs a command for each message.
//!
//! Up to N tasks run at once, one per worker thread, each thread with its
//! own connection (so its leases are bound to it: if the supervisor dies,
//! the broker gives them back). A task is a child process running CMD with
//! the payload on stdin and FERRY_QUEUE, FERRY_ID, FERRY_ATTEMPT in its
//! environment. Exit 0: done. Non-zero: given back for another try, after
//! a backoff (the queue's max_attempts dead-letters it). Over --timeout:
//! SIGTERM, then SIGKILL after --grace, then given back.
//!
//! Processes done right:
//! - Each task runs under a shim (`ferry __shim`), the leader of its own
//!   process group, with CMD inside that group. The shim watches its
//!   parent: when the supervisor dies — even by SIGKILL — the shim kills its
//!   whole group, so no task outlives the supervisor (PR_SET_PDEATHSIG
//!   would fire per thread and never reach grandchildren of `sh -c`).
//! - The supervisor is a child subreaper and one thread reaps every child
//!   and every orphaned descendant with `waitpid(-1)`, so none stays a
//!   zombie; task threads get their shim's status from it.
//! - SIGTERM/SIGINT: stop taking work, wait up to --grace for running
//!   tasks, kill what is left (their messages are given back), exit 0.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::{Client, Error};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::verbs::Outcome;

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    conn: crate::verbs::Conn,
    /// The queue to work on.
    queue: String,
    /// Tasks at once.
    #[arg(short = 'j', long, default_value_t = 1)]
    jobs: usize,
    /// Seconds a task may run before it is stopped (SIGTERM, then SIGKILL
    /// after --grace) and its message given back.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL, and how long a stopping
    /// supervisor waits for running tasks.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// N long-lived children instead of one per message: each reads one
    /// message at a time on stdin (framed by --framing) and answers one
    /// line on stdout — `ok` marks it done, anything else gives it back. A
    /// child that dies is restarted and its message given back.
    #[arg(long)]
    persistent: bool,
    /// How --persistent frames messages: `lines` (the payload, then a
    /// newline; payloads must not contain one) or `length` (the byte count
    /// in decimal, a newline, then the payload).
    #[arg(long, value_enum, default_value = "lines")]
    framing: Framing,
    /// The command; it reads the payload on stdin.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How --persistent frames messages on a child's stdin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Framing {
    /// Payload and a newline.
    Lines,
    /// Decimal length, newline, payload.
    Length,
}

/// How a shim ended, as the reaper saw it.
#[derive(Clone, Copy, Debug)]
enum Ended {
    Exit(i32),
    Signal(i32),
}

/// Where the reaper sends each shim's status, by pid.
type Slots = Arc<Mutex<HashMap<i32, mpsc::Sender<Ended>>>>;

/// Reaps every child and orphaned descendant, forever.
fn reaper(slots: Slots) {
    loop {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    deliver(&slots, pid.as_raw(), Ended::Exit(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    deliver(&slots, pid.as_raw(), Ended::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn deliver(slots: &Slots, pid: i32, ended: Ended) {
    // Shims are registered before the reaper can see them (see
    // `spawn_shim`), so an unknown pid is an orphaned grandchild: reaped,
    // and nothing to report.
    if let Some(tx) = slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid) {
        let _ = tx.send(ended);
    }
}

/// Starts CMD under a shim that leads a new process group; replies the
/// child and the channel its status will arrive on. The slot table stays
/// locked from before the spawn until the pid is registered, so the reaper
/// cannot reap the shim unannounced (it waits on that lock to deliver).
fn spawn_shim(
    a: &WorkerArgs,
    slots: &Slots,
    setup: impl FnOnce(&mut Command),
) -> std::io::Result<(std::process::Child, mpsc::Receiver<Ended>)> {
    let program = crate::this_program()?;
    let mut cmd = Command::new(&program[0]);
    cmd.args(&program[1..])
        .arg("__shim")
        .arg("--")
        .args(&a.command)
        .env("FERRY_QUEUE", &a.queue)
        .stdin(Stdio::piped())
        .process_group(0);
    setup(&mut cmd);
    let mut table = slots.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel();
    table.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Stops a shim's whole group: SIGTERM, then SIGKILL if it has not ended
/// within `grace`; waits for the reaper's word.
fn stop_group(pid: i32, ended: &mpsc::Receiver<Ended>, grace: Duration) {
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if ended.recv_timeout(grace).is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = ended.recv_timeout(Duration::from_secs(5));
    }
}

#[derive(Default)]
struct Counts {
    running: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

fn backoff(attempts: u32) -> u64 {
    (100u64 << attempts.min(8)).min(30_000)
}

/// Runs one message under a shim; replies how it ended (None: it was
/// stopped because it ran too long or the supervisor is stopping).
fn run_task(
    a: &WorkerArgs,
    m: &ferry_client::Message,
    slots: &Slots,
    stopping: &AtomicBool,
    deadline_on_stop: &Mutex<Option<Instant>>,
) -> std::io::Result<Option<Ended>> {
    let (mut child, rx) = spawn_shim(a, slots, |c| {
        c.env("FERRY_ID", m.id.to_string())
            .env("FERRY_ATTEMPT", m.attempts.to_string());
    })?;
    let pid = child.id() as i32;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(&m.payload);
    }
    drop(child);
    let started = Instant::now();
    let timeout = a.timeout.map(Duration::from_secs_f64);
    let grace = Duration::from_secs_f64(a.grace.max(0.0));
    loop {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(20)) {
            return Ok(Some(e));
        }
        let overran = timeout.is_some_and(|t| started.elapsed() >= t);
        let stop_due = stopping.load(Ordering::Acquire)
            && deadline_on_stop
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|d| Instant::now() >= d);
        if overran || stop_due {
            stop_group(pid, &rx, grace);
            return Ok(None);
        }
    }
}

pub(crate) fn worker(a: &WorkerArgs) -> Outcome {
    // Orphaned descendants come to us, to be reaped.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| (1, format!("cannot become a subreaper: {e}")))?;
    let stopping = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stopping)).map_err(|e| (1, e.to_string()))?;
    }
    let slots: Slots = Arc::new(Mutex::new(HashMap::new()));
    {
        let slots = Arc::clone(&slots);
        std::thread::spawn(move || reaper(slots));
    }
    // Connect once up front, so a bad URL fails at once.
    drop(Client::connect(&a.conn.url).map_err(|e| match e {
        Error::Io(e) => (
            crate::verbs::UNREACHABLE,
            format!("cannot reach {}: {e}", a.conn.url),
        ),
        other => (1, other.to_string()),
    })?);
    let counts = Arc::new(Counts::default());
    let deadline_on_stop: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let tty = std::io::stderr().is_terminal();
    let a = Arc::new(WorkerArgs {
        conn: crate::verbs::Conn {
            url: a.conn.url.clone(),
        },
        queue: a.queue.clone(),
        jobs: a.jobs.max(1),
        timeout: a.timeout,
        grace: a.grace,
        persistent: a.persistent,
        framing: a.framing,
        command: a.command.clone(),
    });
    let mut threads = Vec::new();
    for _ in 0..a.jobs {
        let (a, slots, stopping, counts, dl) = (
            Arc::clone(&a),
            Arc::clone(&slots),
            Arc::clone(&stopping),
            Arc::clone(&counts),
            Arc::clone(&deadline_on_stop),
        );
        threads.push(std::thread::spawn(move || -> Outcome {
            let mut c = Client::connect(&a.conn.url)
                .map_err(|e| (crate::verbs::UNREACHABLE, e.to_string()))?;
            if a.persistent {
                return persistent_loop(&a, &mut c, &slots, &stopping, &counts, tty);
            }
            while !stopping.load(Ordering::Acquire) {
                let m = match c.get_timeout(&a.queue, Duration::from_millis(200)) {
                    Ok(m) => m,
                    Err(Error::Empty) => continue,
                    Err(Error::ShutDown) => return Ok(()),
                    Err(e) => return Err((1, e.to_string())),
                };
                counts.running.fetch_add(1, Ordering::AcqRel);
                let t0 = Instant::now();
                let ended = run_task(&a, &m, &slots, &stopping, &dl);
                counts.running.fetch_sub(1, Ordering::AcqRel);
                let (ok, what) = match ended {
                    Ok(Some(Ended::Exit(0))) => (true, "exit 0".to_string()),
                    Ok(Some(Ended::Exit(code))) => (false, format!("exit {code}")),
                    Ok(Some(Ended::Signal(sig))) => (false, format!("signal {sig}")),
                    Ok(None) => (false, "stopped (timeout or shutdown)".to_string()),
                    Err(e) => (false, format!("could not start: {e}")),
                };
                settle(&mut c, &a, &m, ok, &what, &counts, tty, t0);
            }
            Ok(())
        }));
    }
    let start = Instant::now();
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if stopping.load(Ordering::Acquire) {
            let mut d = deadline_on_stop.lock().unwrap_or_else(|e| e.into_inner());
            if d.is_none() {
                *d = Some(Instant::now() + Duration::from_secs_f64(a.grace.max(0.0)));
            }
        }
        if tty {
            let done = counts.done.load(Ordering::Relaxed);
            eprint!(
                "\rrunning {}, done {}, failed {}, {:.1}/s   ",
                counts.running.load(Ordering::Relaxed),
                done,
                counts.failed.load(Ordering::Relaxed),
                done as f64 / start.elapsed().as_secs_f64().max(0.001)
            );
        }
    }
    if tty {
        eprintln!();
    }
    for t in threads {
        t.join()
            .map_err(|_| (1, "a worker thread panicked".to_string()))??;
    }
    Ok(())
}

/// Marks a message done (`ok`) or gives it back with a backoff delay, and
/// logs the outcome (one line per task when stderr is not a terminal).
#[allow(clippy::too_many_arguments)]
fn settle(
    c: &mut Client,
    a: &WorkerArgs,
    m: &ferry_client::Message,
    ok: bool,
    what: &str,
    counts: &Counts,
    tty: bool,
    started: Instant,
) {
    if ok {
        counts.done.fetch_add(1, Ordering::AcqRel);
        let _ = c.task_done(&a.queue, m.id);
    } else {
        counts.failed.fetch_add(1, Ordering::AcqRel);
        let id = m.id.to_string();
        let delay = backoff(m.attempts).to_string();
        let _ = c.call(&[
            b"QNACK",
            a.queue.as_bytes(),
            id.as_bytes(),
            b"DELAY",
            delay.as_bytes(),
        ]);
    }
    if !tty {
        eprintln!(
            "ferry worker: queue={} id={} attempt={} {} in {:.3}s",
            a.queue,
            m.id,
            m.attempts,
            if ok { "done" } else { what },
            started.elapsed().as_secs_f64()
        );
    }
}

/// A long-lived child for --persistent: its shim's group, stdin, and the
/// lines it answers (`None` once its stdout closes).
struct Resident {
    pid: i32,
    stdin: std::process::ChildStdin,
    answers: mpsc::Receiver<Option<String>>,
    ended: mpsc::Receiver<Ended>,
}

impl Resident {
    fn spawn(a: &WorkerArgs, slots: &Slots) -> std::io::Result<Resident> {
        let (mut child, ended) = spawn_shim(a, slots, |c| {
            c.stdout(Stdio::piped());
        })?;
        let pid = child.id() as i32;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (atx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if atx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = atx.send(None);
        });
        drop(child);
        Ok(Resident {
            pid,
            stdin,
            answers,
            ended,
        })
    }

    /// Closes its stdin (a well-behaved child then exits), waits up to
    /// `grace`, then kills its group.
    fn stop(self, grace: Duration) {
        drop(self.stdin);
        if self.ended.recv_timeout(grace).is_err() {
            stop_group(self.pid, &self.ended, grace);
        }
    }
}

/// --persistent: one long-lived child per thread, fed one message at a
/// time.
fn persistent_loop(
    a: &WorkerArgs,
    c: &mut Client,
    slots: &Slots,
    stopping: &AtomicBool,
    counts: &Counts,
    tty: bool,
) -> Outcome {
    let grace = Duration::from_secs_f64(a.grace.max(0.0));
    let mut resident: Option<Resident> = None;
    while !stopping.load(Ordering::Acquire) {
        let m = match c.get_timeout(&a.queue, Duration::from_millis(200)) {
            Ok(m) => m,
            Err(Error::Empty) => continue,
            Err(Error::ShutDown) => break,
            Err(e) => return Err((1, e.to_string())),
        };
        if resident.is_none() {
            resident = Some(
                Resident::spawn(a, slots)
                    .map_err(|e| (1, format!("cannot start {:?}: {e}", a.command[0])))?,
            );
        }
        let Some(r) = resident.as_mut() else { continue };
        counts.running.fetch_add(1, Ordering::AcqRel);
        let t0 = Instant::now();
        let mut frame = Vec::with_capacity(m.payload.len() + 24);
        if a.framing == Framing::Length {
            frame.extend_from_slice(format!("{}\n", m.payload.len()).as_bytes());
            frame.extend_from_slice(&m.payload);
        } else {
            frame.extend_from_slice(&m.payload);
            frame.push(b'\n');
        }
        let answer = match r.stdin.write_all(&frame).and_then(|()| r.stdin.flush()) {
            Err(_) => None,
            Ok(()) => {
                let timeout = a.timeout.map(Duration::from_secs_f64);
                let mut got = None;
                loop {
                    match r.answers.recv_timeout(Duration::from_millis(50)) {
                        Ok(line) => {
                            got = line;
                            break;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let overran = timeout.is_some_and(|t| t0.elapsed() >= t);
                            if overran || stopping.load(Ordering::Acquire) && t0.elapsed() >= grace
                            {
                                break;
                            }
                        }
                    }
                }
                got
            }
        };
        counts.running.fetch_sub(1, Ordering::AcqRel);
        let ok = answer.as_deref().map(str::trim) == Some("ok");
        if answer.is_none() {
            // Dead, closed, or over its timeout: start a fresh one next time.
            if let Some(r) = resident.take() {
                r.stop(Duration::ZERO);
            }
        }
        let what = match &answer {
            Some(l) => format!("answered {l:?}"),
            None => "no answer (child died or timed out; restarted)".to_string(),
        };
        settle(c, a, &m, ok, &what, counts, tty, t0);
    }
    if let Some(r) = resident.take() {
        r.stop(grace);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct ShimArgs {
    /// The command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// The shim: runs the command in its own process group (which it leads)
/// and kills that group if its parent, the supervisor, goes away. Exits
/// with the command's code.
pub(crate) fn shim(a: &ShimArgs) -> ! {
    let parent = std::os::unix::process::parent_id();
    let mut child = match Command::new(&a.command[0]).args(&a.command[1..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry worker: cannot run {:?}: {e}", a.command[0]);
            std::process::exit(127);
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
                std::process::exit(code);
            }
            Ok(None) => {}
            Err(_) => std::process::exit(1),
        }
        if std::os::unix::process::parent_id() != parent {
            // The supervisor died: take the whole group down, this shim
            // with it.
            let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
            std::process::exit(137);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
