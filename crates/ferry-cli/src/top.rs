//! `ferry top`: a live view of every queue, and of the locks,
//! semaphores, events, conditions and barriers in use.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::{Client, Value};

use crate::verbs::{Conn, Outcome, duration, fail, int_of, pairs_of, queue_names};

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
/// consumers and producers, and put/done rates. Full screen on a terminal; one table per
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
            "ferry top — {} queue(s), every {:.1}s\n{:<30} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}\n",
            names.len(),
            interval.as_secs_f64(),
            "queue",
            "ready",
            "unfinished",
            "leased",
            "delayed",
            "getters",
            "putters",
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
                "{:<30} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10.0} {:>10.0}\n",
                name,
                int_of(&p, "qsize"),
                int_of(&p, "unfinished"),
                int_of(&p, "leased") + int_of(&p, "taken"),
                int_of(&p, "delayed"),
                int_of(&p, "waiting_getters"),
                int_of(&p, "waiting_putters"),
                put_rate,
                done_rate
            ));
        }
        sync_table(&mut c, &mut screen);
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

/// `ferry top`'s second table: the locks, semaphores, events, conditions
/// and barriers in use (SYNCLIST), with their holders and waiters; nothing
/// if there are none (or the server predates SYNCLIST).
fn sync_table(c: &mut Client, screen: &mut String) {
    let Ok(Value::Array(rows)) = c.call(&[b"SYNCLIST"]) else {
        return;
    };
    if rows.is_empty() {
        return;
    }
    screen.push_str(&format!(
        "\n{:<10} {:<30} {:>8} {:>8}  {}\n",
        "kind", "name", "holders", "waiters", "state"
    ));
    for row in rows {
        let Value::Array(f) = row else { continue };
        let text = |v: Option<&Value>| match v {
            Some(Value::Bulk(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::Int(n)) => n.to_string(),
            _ => String::new(),
        };
        screen.push_str(&format!(
            "{:<10} {:<30} {:>8} {:>8}  {}\n",
            text(f.first()),
            text(f.get(1)),
            text(f.get(2)),
            text(f.get(3)),
            text(f.get(4))
        ));
    }
}
