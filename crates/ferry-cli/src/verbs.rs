//! The client verbs of the `ferry` command line: put, get, done, nack,
//! join, info, lock. Each connects with `--url` (or FERRY_URL, or the
//! default) and maps what happened to an exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the broker refused (an error reply), or the command failed |
//! | 2 | bad arguments |
//! | 3 | the broker cannot be reached |
//! | 4 | nothing happened in time: empty, full, join or lock timed out |

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::{Client, Error, Value};

pub(crate) const UNREACHABLE: i32 = 3;
pub(crate) const TIMED_OUT: i32 = 4;
/// `ferry lock`: the lock was lost while its command ran (the command was
/// ended).
pub(crate) const LOCK_LOST: i32 = 5;

/// Where the broker is.
#[derive(Args, Debug)]
pub(crate) struct Conn {
    /// ferry://[:password@]host[:port], unix:///path[?password=...], or redis://[:password@]host:port[/db][?wait=N&lease=ms] (a Redis server: see docs/backends.md)
    #[arg(long, env = "FERRY_URL", default_value = ferry_client::DEFAULT_URL)]
    url: String,
}

impl Conn {
    fn connect(&self) -> Result<Client, (i32, String)> {
        Client::connect(&self.url).map_err(|e| match e {
            Error::Io(e) => (UNREACHABLE, format!("cannot reach {}: {e}", self.url)),
            Error::Url(e) => (2, format!("bad --url {e}")),
            other => (1, other.to_string()),
        })
    }
}

/// What a verb ends with: an exit code and, unless 0, a one-line message.
pub(crate) type Outcome = Result<(), (i32, String)>;

fn fail(e: Error) -> (i32, String) {
    match e {
        Error::Full => (TIMED_OUT, "queue is full".into()),
        Error::Empty => (TIMED_OUT, "queue is empty".into()),
        Error::Io(e) => (UNREACHABLE, format!("connection lost: {e}")),
        other => (1, other.to_string()),
    }
}

fn ms(d: Option<f64>) -> Option<String> {
    d.map(|s| ((s * 1000.0).ceil().max(1.0) as u64).to_string())
}

/// Seconds from the command line as a `Duration`: negative or NaN is 0,
/// too large is forever.
fn duration(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    conn: Conn,
    /// The queue.
    queue: String,
    /// The payload; `-` or nothing reads it from stdin.
    payload: Option<String>,
    /// One message per line of stdin.
    #[arg(long)]
    lines: bool,
    /// A priority (lower first), for priority queues.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i64>,
    /// Seconds before the message may be delivered.
    #[arg(long)]
    delay: Option<f64>,
    /// Seconds to wait for room; exit 4 if none.
    #[arg(long, conflicts_with = "nowait")]
    timeout: Option<f64>,
    /// Do not wait for room; exit 4 if the queue is full.
    #[arg(long)]
    nowait: bool,
}

pub(crate) fn put(a: &PutArgs) -> Outcome {
    let payloads: Vec<Vec<u8>> = if a.lines {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| (1, format!("reading stdin: {e}")))?
            .into_iter()
            .map(String::into_bytes)
            .collect()
    } else {
        match a.payload.as_deref() {
            Some(p) if p != "-" => vec![p.as_bytes().to_vec()],
            _ => {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| (1, format!("reading stdin: {e}")))?;
                vec![buf]
            }
        }
    };
    let mut c = a.conn.connect()?;
    let priority = a.priority.map(|p| p.to_string());
    let delay = ms(a.delay);
    let timeout = ms(a.timeout);
    let mut out = std::io::stdout().lock();
    // Each put carries a DEDUP key of its own, as the client's puts do: one
    // whose connection broke (a broker restart, a failover) is sent again
    // and goes in once.
    let keys = ferry_client::ResendKeys::new("cli");
    let window = ferry_client::resend_dedup_window(a.timeout.map(duration)).to_string();
    for p in &payloads {
        let key = keys.next();
        let mut args: Vec<&[u8]> = vec![
            b"QPUT",
            a.queue.as_bytes(),
            p,
            b"DEDUP",
            key.as_bytes(),
            b"DEDUPFOR",
            window.as_bytes(),
        ];
        if let Some(pr) = &priority {
            args.extend_from_slice(&[b"PRIORITY", pr.as_bytes()]);
        }
        if let Some(d) = &delay {
            args.extend_from_slice(&[b"DELAY", d.as_bytes()]);
        }
        match (&timeout, a.nowait) {
            (_, true) => args.push(b"NOWAIT"),
            (Some(t), _) => args.extend_from_slice(&[b"TIMEOUT", t.as_bytes()]),
            (None, false) => args.extend_from_slice(&[b"TIMEOUT", b"0"]),
        }
        match c.call(&args).map_err(fail)? {
            Value::Int(id) => writeln!(out, "{id}").map_err(|e| (1, e.to_string()))?,
            other => return Err((1, format!("unexpected reply {other:?}"))),
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    conn: Conn,
    /// The queue.
    queue: String,
    /// Messages to get (at most).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Seconds to wait for a message; exit 4 if none. Default: wait as
    /// long as it takes.
    #[arg(long)]
    timeout: Option<f64>,
    /// Take a timed lease of this many milliseconds instead of finishing
    /// the message: prints `ID<TAB>PAYLOAD`, and `ferry done` or `ferry
    /// nack` (from any process) finishes it.
    #[arg(long)]
    lease: Option<u64>,
}

pub(crate) fn get(a: &GetArgs) -> Outcome {
    let mut c = a.conn.connect()?;
    let count = a.count.max(1).to_string();
    let timeout = ms(a.timeout).unwrap_or_else(|| "0".into());
    let lease = a.lease.map(|l| l.max(1).to_string());
    let mut args: Vec<&[u8]> = vec![
        b"QGET",
        a.queue.as_bytes(),
        b"COUNT",
        count.as_bytes(),
        b"TIMEOUT",
        timeout.as_bytes(),
    ];
    if let Some(l) = &lease {
        args.extend_from_slice(&[b"LEASE", l.as_bytes()]);
    }
    let entries = match c.call(&args).map_err(fail)? {
        Value::Nil => return Err((TIMED_OUT, "queue is empty".into())),
        Value::Array(e) => e,
        other => return Err((1, format!("unexpected reply {other:?}"))),
    };
    let mut out = std::io::stdout().lock();
    let mut ids = Vec::new();
    for e in entries {
        let Value::Array(parts) = e else {
            return Err((1, "malformed entry".into()));
        };
        let (Some(Value::Int(id)), Some(Value::Bulk(payload))) = (parts.get(1), parts.get(2))
        else {
            return Err((1, "malformed entry".into()));
        };
        if lease.is_some() {
            write!(out, "{id}\t").map_err(|e| (1, e.to_string()))?;
        }
        out.write_all(payload)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| (1, e.to_string()))?;
        ids.push(id.to_string());
    }
    // Printed first, finished after: if the output fails, the connection
    // closes and the broker delivers the messages again.
    out.flush().map_err(|e| (1, e.to_string()))?;
    if lease.is_none() && !ids.is_empty() {
        let mut args: Vec<&[u8]> = vec![b"QDONE", a.queue.as_bytes()];
        args.extend(ids.iter().map(|i| i.as_bytes()));
        c.call(&args).map_err(fail)?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct DoneArgs {
    #[command(flatten)]
    conn: Conn,
    /// The queue.
    queue: String,
    /// Ids of messages got with `ferry get --lease`.
    #[arg(required = true)]
    ids: Vec<u64>,
}

pub(crate) fn done(a: &DoneArgs) -> Outcome {
    let mut c = a.conn.connect()?;
    let ids: Vec<String> = a.ids.iter().map(u64::to_string).collect();
    let mut args: Vec<&[u8]> = vec![b"QDONE", a.queue.as_bytes()];
    args.extend(ids.iter().map(|i| i.as_bytes()));
    match c.call(&args).map_err(fail)? {
        Value::Int(n) if n as usize == ids.len() => Ok(()),
        Value::Int(n) => Err((
            1,
            format!(
                "{n} of {} finished; the others are not leased (done already, or their lease ran out)",
                ids.len()
            ),
        )),
        other => Err((1, format!("unexpected reply {other:?}"))),
    }
}

#[derive(Args, Debug)]
pub(crate) struct NackArgs {
    #[command(flatten)]
    conn: Conn,
    /// The queue.
    queue: String,
    /// The id of a message got with `ferry get --lease`.
    id: u64,
    /// Seconds before it may be delivered again.
    #[arg(long)]
    delay: Option<f64>,
}

pub(crate) fn nack(a: &NackArgs) -> Outcome {
    let mut c = a.conn.connect()?;
    let id = a.id.to_string();
    let delay = ms(a.delay);
    let mut args: Vec<&[u8]> = vec![b"QNACK", a.queue.as_bytes(), id.as_bytes()];
    if let Some(d) = &delay {
        args.extend_from_slice(&[b"DELAY", d.as_bytes()]);
    }
    c.call(&args).map(drop).map_err(fail)
}

/// What `ferry drop | purge | reopen` does to each queue named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Manage {
    /// QDROP: the queue and everything in it go.
    Drop,
    /// QPURGE: its ready and delayed messages go (counted finished).
    Purge,
    /// QREOPEN: a shut-down queue takes puts again.
    Reopen,
}

#[derive(Args, Debug)]
pub(crate) struct ManageArgs {
    #[command(flatten)]
    conn: Conn,
    /// The queues.
    #[arg(required = true)]
    queues: Vec<String>,
}

/// Drops, purges or reopens each queue named, printing what happened.
pub(crate) fn manage(what: Manage, a: &ManageArgs) -> Outcome {
    let mut c = a.conn.connect()?;
    let command: &[u8] = match what {
        Manage::Drop => b"QDROP",
        Manage::Purge => b"QPURGE",
        Manage::Reopen => b"QREOPEN",
    };
    for q in &a.queues {
        match (what, c.call(&[command, q.as_bytes()]).map_err(fail)?) {
            (Manage::Drop, Value::Int(1)) => println!("{q}: dropped"),
            (Manage::Drop, _) => return Err((1, format!("{q}: no such queue"))),
            (Manage::Purge, Value::Int(n)) => println!("{q}: {n} message(s) purged"),
            (Manage::Reopen, _) => println!("{q}: reopened"),
            (_, other) => return Err((1, format!("unexpected reply {other:?}"))),
        }
    }
    Ok(())
}

/// A QINFO reply (a RESP3 map, or RESP2's flat array) as (field, value)
/// pairs, in the broker's order.
fn pairs_of(v: Value) -> Result<Vec<(String, Value)>, (i32, String)> {
    let flat = match v {
        Value::Array(flat) => flat,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        other => return Err((1, format!("unexpected reply {other:?}"))),
    };
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(Value::Bulk(k)), Some(v)) = (it.next(), it.next()) {
        out.push((String::from_utf8_lossy(&k).into_owned(), v));
    }
    Ok(out)
}

/// QINFO of one queue as (field, value) pairs.
fn info_pairs(c: &mut Client, queue: &str) -> Result<Vec<(String, Value)>, (i32, String)> {
    pairs_of(c.call(&[b"QINFO", queue.as_bytes()]).map_err(fail)?)
}

/// Every queue's name (QLIST).
fn queue_names(c: &mut Client) -> Result<Vec<String>, (i32, String)> {
    match c.call(&[b"QLIST"]).map_err(fail)? {
        Value::Array(v) => Ok(v
            .into_iter()
            .filter_map(|n| match n {
                Value::Bulk(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect()),
        other => Err((1, format!("unexpected reply {other:?}"))),
    }
}

fn int_of(pairs: &[(String, Value)], key: &str) -> i64 {
    pairs
        .iter()
        .find_map(|(k, v)| match v {
            Value::Int(n) if k == key => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(n) => (*n).into(),
        Value::Bulk(b) => String::from_utf8_lossy(b).into_owned().into(),
        Value::Simple(s) => s.clone().into(),
        Value::Bool(b) => (*b).into(),
        _ => serde_json::Value::Null,
    }
}

#[derive(Args, Debug)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    conn: Conn,
    /// One queue in full; without it, a table of all queues.
    queue: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn info(a: &InfoArgs) -> Outcome {
    let mut c = a.conn.connect()?;
    let names: Vec<String> = match &a.queue {
        Some(q) => vec![q.clone()],
        None => queue_names(&mut c)?,
    };
    let mut all = Vec::new();
    for n in &names {
        all.push((n.clone(), info_pairs(&mut c, n)?));
    }
    let mut out = std::io::stdout().lock();
    let w = |r: std::io::Result<()>| r.map_err(|e| (1, e.to_string()));
    if a.json {
        let obj: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(n, pairs)| {
                let fields: serde_json::Map<String, serde_json::Value> = pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), json_value(v)))
                    .collect();
                (n.clone(), serde_json::Value::Object(fields))
            })
            .collect();
        let v = match &a.queue {
            Some(q) => obj.get(q).cloned().unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Object(obj),
        };
        return w(writeln!(out, "{v}"));
    }
    if a.queue.is_some() {
        for (_, pairs) in &all {
            for (k, v) in pairs {
                w(writeln!(
                    out,
                    "{k}: {}",
                    json_value(v).to_string().trim_matches('"')
                ))?;
            }
        }
        return Ok(());
    }
    w(writeln!(
        out,
        "{:<30} {:<9} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9}",
        "queue", "kind", "maxsize", "ready", "unfinished", "leased", "delayed", "getters"
    ))?;
    for (n, p) in &all {
        let kind = p.iter().find_map(|(k, v)| match v {
            Value::Bulk(b) if k == "kind" => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        });
        w(writeln!(
            out,
            "{:<30} {:<9} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9}",
            n,
            kind.unwrap_or_default(),
            int_of(p, "maxsize"),
            int_of(p, "qsize"),
            int_of(p, "unfinished"),
            int_of(p, "leased") + int_of(p, "taken"),
            int_of(p, "delayed"),
            int_of(p, "waiting_getters"),
        ))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct JoinArgs {
    #[command(flatten)]
    conn: Conn,
    /// The queue.
    queue: String,
    /// Seconds to wait; exit 4 if work is still unfinished then.
    #[arg(long)]
    timeout: Option<f64>,
}

pub(crate) fn join(a: &JoinArgs) -> Outcome {
    use std::io::IsTerminal;
    let mut watcher = a.conn.connect()?;
    let mut waiter = a.conn.connect()?;
    let queue = a.queue.clone();
    let timeout = ms(a.timeout).unwrap_or_else(|| "0".into());
    // One connection blocks in QJOIN; this thread reports progress from
    // the other.
    let joined = std::thread::spawn(move || {
        waiter
            .call(&[b"QJOIN", queue.as_bytes(), b"TIMEOUT", timeout.as_bytes()])
            .map(|v| v != Value::Nil)
    });
    let start = Instant::now();
    let first = info_pairs(&mut watcher, &a.queue).unwrap_or_default();
    let (put0, unfinished0) = (int_of(&first, "put"), int_of(&first, "unfinished"));
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    while !joined.is_finished() {
        std::thread::sleep(Duration::from_millis(if tty { 200 } else { 100 }));
        let Ok(p) = info_pairs(&mut watcher, &a.queue) else {
            break;
        };
        let unfinished = int_of(&p, "unfinished");
        let total = unfinished0 + (int_of(&p, "put") - put0);
        let finished = (total - unfinished).max(0);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = finished as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0}s", unfinished as f64 / rate)
        } else {
            "?".into()
        };
        if tty {
            let width = 30usize;
            let filled = if total > 0 {
                (finished as usize * width) / total as usize
            } else {
                width
            };
            eprint!(
                "\r[{}{}] {finished}/{total} {rate:.0}/s ETA {eta}   ",
                "#".repeat(filled.min(width)),
                "-".repeat(width - filled.min(width))
            );
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("{finished}/{total} finished, {rate:.0}/s, ETA {eta}");
            last_line = Instant::now();
        }
    }
    if tty {
        eprintln!();
    }
    match joined.join() {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err((TIMED_OUT, "join timed out with work unfinished".into())),
        Ok(Err(e)) => Err(fail(e)),
        Err(_) => Err((1, "join thread failed".into())),
    }
}

#[derive(Args, Debug)]
pub(crate) struct LockArgs {
    #[command(flatten)]
    conn: Conn,
    /// The lock's name.
    name: String,
    /// Seconds after which the broker frees the lock even if the command
    /// still runs (default: held until the command ends).
    #[arg(long)]
    ttl: Option<f64>,
    /// Seconds to wait for the lock; exit 4 if not acquired.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seconds the command has to end after SIGTERM, once the lock is
    /// lost, before SIGKILL.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// The command to run while holding the lock.
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
    let mut c = a.conn.connect()?;
    // Never Duration::ZERO (that would not wait at all): `--timeout 0`
    // waits a millisecond, as it always has.
    let wait = a.timeout.map(|s| duration(s).max(Duration::from_millis(1)));
    let ttl = a.ttl.map(duration);
    let Some(token) = c.lock(&a.name, wait, ttl).map_err(fail)? else {
        return Err((TIMED_OUT, format!("lock {:?} not acquired in time", a.name)));
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
        std::thread::spawn(move || watch_lock(&url, &name, token, every, &tx));
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
                let _ = c.unlock(&a.name, token);
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
            "lock {:?} lost while {:?} ran: {why}; the command was ended",
            a.name, a.command[0]
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
        let news = match client.lock_held(name, token) {
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

#[derive(Args, Debug)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    conn: Conn,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    iterations: Option<u64>,
}

/// A live view of every queue: depth, unfinished, leased, delayed, waiting
/// consumers, and put/done rates. Full screen on a terminal; one table per
/// refresh otherwise.
pub(crate) fn top(a: &TopArgs) -> Outcome {
    use std::collections::HashMap;
    use std::io::IsTerminal;
    let mut c = a.conn.connect()?;
    let tty = std::io::stdout().is_terminal();
    let interval = duration(a.interval).max(Duration::from_millis(50));
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    let mut last_at = Instant::now();
    let mut n = 0u64;
    loop {
        let names = queue_names(&mut c)?;
        let commands: Vec<Vec<&[u8]>> = names
            .iter()
            .map(|q| vec![&b"QINFO"[..], q.as_bytes()])
            .collect();
        let replies = c.pipeline(&commands).map_err(fail)?;
        let secs = last_at.elapsed().as_secs_f64().max(0.001);
        last_at = Instant::now();
        let mut screen = String::new();
        if tty {
            screen.push_str("\x1b[H\x1b[2J");
        }
        screen.push_str(&format!(
            "ferry top — {} queue(s), every {:.1}s\n{:<30} {:>9} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10}\n",
            names.len(),
            interval.as_secs_f64(),
            "queue",
            "ready",
            "unfinished",
            "leased",
            "delayed",
            "getters",
            "put/s",
            "done/s"
        ));
        for (name, reply) in names.iter().zip(replies) {
            let Ok(Ok(p)) = reply.map(pairs_of) else {
                continue;
            };
            let (put, done) = (int_of(&p, "put"), int_of(&p, "done"));
            let (put_rate, done_rate) = match last.insert(name.clone(), (put, done)) {
                Some((p0, d0)) => ((put - p0) as f64 / secs, (done - d0) as f64 / secs),
                None => (0.0, 0.0),
            };
            screen.push_str(&format!(
                "{:<30} {:>9} {:>10} {:>8} {:>8} {:>8} {:>10.0} {:>10.0}\n",
                name,
                int_of(&p, "qsize"),
                int_of(&p, "unfinished"),
                int_of(&p, "leased") + int_of(&p, "taken"),
                int_of(&p, "delayed"),
                int_of(&p, "waiting_getters"),
                put_rate,
                done_rate
            ));
        }
        let mut out = std::io::stdout().lock();
        out.write_all(screen.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| (1, e.to_string()))?;
        n += 1;
        if a.iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
