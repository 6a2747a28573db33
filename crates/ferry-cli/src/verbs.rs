//! The client verbs of the `ferry` command line: put, get, done, nack,
//! join, info, top (lock and sem in lock.rs, event in event.rs). Each
//! connects with `--url` (or FERRY_URL, or the default) and maps what
//! happened to an exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the broker refused (an error reply), or the command failed |
//! | 2 | bad arguments |
//! | 3 | the broker cannot be reached |
//! | 4 | nothing happened in time: empty, full, join, lock or event wait timed out; `event is-set`: not set |
//! | 5 | `ferry lock`, `ferry sem`: the lock (permit) was lost while its command ran (it was ended) |

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::{Client, Error, Value};

pub(crate) const UNREACHABLE: i32 = 3;
pub(crate) const TIMED_OUT: i32 = 4;

/// Where the broker is.
#[derive(Args, Debug)]
pub(crate) struct Conn {
    /// The broker: ferry://[user:password@]host[:port], ferrys://... (TLS: ?ca=PEM&cert=PEM&key=PEM), unix:///path[?user=...&password=...], redis://[:password@]host:port[/db][?wait=N&lease=ms], or redis+cluster://host:port[,host:port...][?wait=N&lease=ms] (docs/backends.md)
    #[arg(long, env = "FERRY_URL", default_value = ferry_client::DEFAULT_URL)]
    pub(crate) url: String,
}

impl Conn {
    pub(crate) fn connect(&self) -> Result<Client, (i32, String)> {
        Client::connect(&self.url).map_err(|e| match e {
            Error::Io(e) => (UNREACHABLE, format!("cannot reach {}: {e}", self.url)),
            Error::Url(e) => (2, format!("bad --url {e}")),
            other => (1, other.to_string()),
        })
    }
}

/// What a verb ends with: an exit code and, unless 0, a one-line message.
pub(crate) type Outcome = Result<(), (i32, String)>;

/// A failure not about one queue, in the verbs' one style: what happened
/// and what to do, the broker's code last.
pub(crate) fn fail(e: Error) -> (i32, String) {
    match e {
        Error::Full => (TIMED_OUT, "the queue stayed full".into()),
        Error::Empty => (TIMED_OUT, "the queue stayed empty".into()),
        Error::Io(e) => (UNREACHABLE, format!("connection lost: {e}")),
        Error::Auth(why) => (
            1,
            format!(
                "the broker refused the password ({why}): put user:password in --url or FERRY_URL"
            ),
        ),
        Error::Server { code, message } if code == "NOPERM" => (
            1,
            format!("{message} (NOPERM: the user in --url has no such right)"),
        ),
        Error::Server { code, message } => (1, format!("{message} ({code})")),
        other => (1, other.to_string()),
    }
}

/// A failure on `queue`, in the same style: the queue's name first.
pub(crate) fn fail_on(queue: &str) -> impl Fn(Error) -> (i32, String) + '_ {
    move |e| match e {
        Error::Full => (TIMED_OUT, format!("queue {queue:?} stayed full")),
        Error::Empty => (TIMED_OUT, format!("queue {queue:?} stayed empty")),
        Error::ShutDown => (
            1,
            format!("queue {queue:?} is shut down (`ferry reopen {queue}` takes puts again)"),
        ),
        Error::Server { code, .. } if code == "NOQUEUE" => (
            1,
            format!("queue {queue:?} does not exist (`ferry info` lists the queues)"),
        ),
        Error::Server { code, message } if code == "ERR" && message.contains("queue name") => (
            2,
            format!("{queue:?} is not a valid queue name: 1 to 200 bytes of A-Z a-z 0-9 _ . : -"),
        ),
        e @ (Error::Io(_) | Error::Auth(_)) => fail(e),
        other => {
            let (code, why) = fail(other);
            (code, format!("queue {queue:?}: {why}"))
        }
    }
}

fn ms(d: Option<f64>) -> Option<String> {
    d.map(|s| ((s * 1000.0).ceil().max(1.0) as u64).to_string())
}

/// Seconds from the command line as a `Duration`: negative or NaN is 0,
/// too large is forever.
pub(crate) fn duration(s: f64) -> Duration {
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
    // A put that waits for room says so after a second (on stderr),
    // rather than waiting in silence.
    let (put_done, notice) = std::sync::mpsc::channel::<()>();
    if !a.nowait {
        let (url, queue) = (a.conn.url.clone(), a.queue.clone());
        std::thread::spawn(move || tell_when_full(&url, &queue, &notice));
    }
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
        let reply = c.call(&args);
        let _ = put_done.send(());
        match reply.map_err(fail_on(&a.queue))? {
            Value::Int(id) => writeln!(out, "{id}").map_err(|e| (1, e.to_string()))?,
            other => return Err((1, format!("unexpected reply {other:?}"))),
        }
    }
    Ok(())
}

/// While `ferry put` runs: a put that has waited a second on a full queue
/// is told on stderr, once per wait, with the queue's fill (asked on a
/// connection of its own; a put slow for another reason says nothing).
fn tell_when_full(url: &str, queue: &str, put_done: &std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut c = None;
    loop {
        match put_done.recv_timeout(Duration::from_secs(1)) {
            Ok(()) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if c.is_none() {
            c = Client::connect(url).ok();
        }
        let fill = c.as_mut().and_then(|c| {
            let pairs = pairs_of(c.call(&[b"QINFO", queue.as_bytes()]).ok()?).ok()?;
            Some((int_of(&pairs, "qsize"), int_of(&pairs, "maxsize")))
        });
        if let Some((qsize, maxsize)) = fill.filter(|&(q, m)| m > 0 && q >= m) {
            eprintln!(
                "ferry: queue {queue:?} is full ({qsize} of {maxsize}): waiting for room \
                 (--timeout N gives up after N seconds, --nowait at once)"
            );
        }
        // Until this put is done: one notice per wait.
        if put_done.recv().is_err() {
            return;
        }
    }
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
    let entries = match c.call(&args).map_err(fail_on(&a.queue))? {
        Value::Nil => return Err(fail_on(&a.queue)(Error::Empty)),
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
        c.call(&args).map_err(fail_on(&a.queue))?;
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
    match c.call(&args).map_err(fail_on(&a.queue))? {
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
    c.call(&args).map(drop).map_err(fail_on(&a.queue))
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
        match (what, c.call(&[command, q.as_bytes()]).map_err(fail_on(q))?) {
            (Manage::Drop, Value::Int(1)) => println!("{q}: dropped"),
            (Manage::Drop, _) => {
                return Err((
                    1,
                    format!("queue {q:?} does not exist (`ferry info` lists the queues)"),
                ));
            }
            (Manage::Purge, Value::Int(n)) => println!("{q}: {n} message(s) purged"),
            (Manage::Reopen, _) => println!("{q}: reopened"),
            (_, other) => return Err((1, format!("unexpected reply {other:?}"))),
        }
    }
    Ok(())
}

/// A QINFO reply (a RESP3 map, or RESP2's flat array) as (field, value)
/// pairs, in the broker's order.
pub(crate) fn pairs_of(v: Value) -> Result<Vec<(String, Value)>, (i32, String)> {
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
    pairs_of(
        c.call(&[b"QINFO", queue.as_bytes()])
            .map_err(fail_on(queue))?,
    )
}

/// Every queue's name (QLIST).
pub(crate) fn queue_names(c: &mut Client) -> Result<Vec<String>, (i32, String)> {
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

pub(crate) fn int_of(pairs: &[(String, Value)], key: &str) -> i64 {
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
        "{:<30} {:<9} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
        "queue",
        "kind",
        "maxsize",
        "ready",
        "unfinished",
        "leased",
        "delayed",
        "getters",
        "putters"
    ))?;
    for (n, p) in &all {
        let kind = p.iter().find_map(|(k, v)| match v {
            Value::Bulk(b) if k == "kind" => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        });
        w(writeln!(
            out,
            "{:<30} {:<9} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
            n,
            kind.unwrap_or_default(),
            int_of(p, "maxsize"),
            int_of(p, "qsize"),
            int_of(p, "unfinished"),
            int_of(p, "leased") + int_of(p, "taken"),
            int_of(p, "delayed"),
            int_of(p, "waiting_getters"),
            int_of(p, "waiting_putters"),
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
        Ok(Err(e)) => Err(fail_on(&a.queue)(e)),
        Err(_) => Err((1, "join thread failed".into())),
    }
}
