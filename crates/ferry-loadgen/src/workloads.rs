//! The workloads, the same against every broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::conn::{Conn, Target, Token};

/// Where the broker is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A broker of this kind at `host:port` (or `unix:/path` for ferry).
    At(Target, String),
    /// ferry at a URL (`ferry://[:password@]host:port`, `unix:///path`).
    FerryUrl(String),
}

impl Endpoint {
    /// A new connection.
    pub async fn connect(&self) -> Result<Conn> {
        match self {
            Endpoint::At(t, addr) => Conn::connect(*t, addr).await,
            Endpoint::FerryUrl(url) => Conn::ferry(url, false).await,
        }
    }

    fn target(&self) -> Target {
        match self {
            Endpoint::At(t, _) => *t,
            Endpoint::FerryUrl(_) => Target::Ferry,
        }
    }

    fn addr(&self) -> &str {
        match self {
            Endpoint::At(_, a) | Endpoint::FerryUrl(a) => a,
        }
    }
}

/// The throughput workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Producers, each on its own connection.
    pub producers: usize,
    /// Consumers, each on its own connection.
    pub consumers: usize,
    /// Messages in all.
    pub n: u64,
    /// Payload bytes (at least 8: the send time rides in each).
    pub size: usize,
    /// Messages per put and per get.
    pub batch: usize,
    /// Messages per second in all, paced evenly; `None`: as fast as the
    /// broker takes them. Latency means something only below saturation.
    pub rate: Option<f64>,
    /// Each batch put as pipelined single puts (ferry: QPUTs, not one
    /// QPUTMANY), the shape a Redis stream's XADDs have.
    pub single_puts: bool,
}

/// What a throughput run measured.
#[derive(Debug)]
pub struct Report {
    /// From the first put to the last acknowledgement.
    pub elapsed: Duration,
    /// Messages moved.
    pub n: u64,
    /// Put → get latency of every message, in microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    /// Messages per second, end to end.
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile (0–100), in microseconds.
    pub fn latency_us(&self, percentile: f64) -> u64 {
        self.latency.value_at_quantile(percentile / 100.0)
    }
}

/// A payload of `size` bytes (at least 8) carrying `stamp` first.
fn stamped(size: usize, stamp: u64) -> Vec<u8> {
    let mut p = stamp.to_le_bytes().to_vec();
    p.resize(size.max(8), b'x');
    p
}

fn payload(size: usize, i: u64) -> Vec<u8> {
    let mut p = format!("{i:016}").into_bytes();
    p.resize(size.max(1), b'x');
    p
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// P producers put N messages in batches of B (paced, if a rate is given),
/// C consumers get up to B at a time and acknowledge them; the run ends
/// when every message is acknowledged (Python's `join`). Consumers first
/// (connected and waiting), then producers; the clock runs from the first
/// put to the last acknowledgement. Every payload carries its send time,
/// so each consumer records put → get latency.
pub async fn throughput(at: &Endpoint, queue: &str, load: Load) -> Result<Report> {
    let Load {
        producers,
        consumers,
        n,
        size,
        batch,
        rate,
        single_puts,
    } = load;
    let (producers, consumers, batch) = (producers.max(1), consumers.max(1), batch.max(1));
    at.connect().await?.setup(queue).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    // Each consumer's latencies, collected when the run ends (a consumer
    // may still wait in a get then).
    let mut latencies = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..consumers {
        conns.push(at.connect().await?);
    }
    let t0 = Instant::now();
    // With single messages, a consumer acknowledges each together with its
    // next get (one write, the latency-optimal loop); with batches it
    // acknowledges the batch, then gets the next (asking at once shrinks
    // the batches and costs every peer throughput: measured, ferry's B=100
    // fell from ~900k to ~170k msg/s and Redis streams' from ~330k to
    // ~76k). Once every message has been got, the last acknowledgements go
    // at once.
    let received = Arc::new(AtomicU64::new(0));
    for mut c in conns {
        let (queue, acked, finished, received) = (
            queue.to_string(),
            Arc::clone(&acked),
            Arc::clone(&finished),
            Arc::clone(&received),
        );
        let latency = Arc::new(std::sync::Mutex::new(histogram()?));
        latencies.push(Arc::clone(&latency));
        tasks.spawn(async move {
            let mut pending: Vec<Token> = Vec::new();
            while acked.load(Ordering::Acquire) < n {
                let sent = pending.len() as u64;
                let count = |acked: &AtomicU64| {
                    if sent > 0 && acked.fetch_add(sent, Ordering::AcqRel) + sent >= n {
                        finished.notify_one();
                    }
                };
                let got = if batch == 1 {
                    // Counted when written: the acknowledgement is in the
                    // socket ahead of the get, and its reply only comes with
                    // the get's (an error still fails the run) — so the
                    // clock may stop one round trip early, never a get's
                    // wait late.
                    count(&acked);
                    c.ack_then_get(&queue, std::mem::take(&mut pending), batch)
                        .await?
                } else {
                    c.ack(&queue, std::mem::take(&mut pending)).await?;
                    count(&acked);
                    c.get(&queue, batch).await?
                };
                if got.is_empty() {
                    continue;
                }
                let now = t0.elapsed().as_nanos() as u64;
                {
                    let mut latency = latency.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    for (_, p) in &got {
                        let mut stamp = [0u8; 8];
                        stamp.copy_from_slice(p.get(..8).context("a payload without its stamp")?);
                        let sent = u64::from_le_bytes(stamp);
                        latency.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    }
                }
                let k = got.len() as u64;
                pending = got.into_iter().map(|(t, _)| t).collect();
                if received.fetch_add(k, Ordering::AcqRel) + k >= n {
                    // Nothing left to get: acknowledge now.
                    c.ack(&queue, std::mem::take(&mut pending)).await?;
                    if acked.fetch_add(k, Ordering::AcqRel) + k >= n {
                        finished.notify_one();
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    let mut pconns = Vec::new();
    for _ in 0..producers {
        pconns.push(at.connect().await?);
    }
    let start = Instant::now();
    let share = n.div_ceil(producers as u64);
    // Each producer paces its share: one batch every `every`.
    let every = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(batch as f64 * producers as f64 / r));
    for (k, mut c) in pconns.into_iter().enumerate() {
        let queue = queue.to_string();
        let from = k as u64 * share;
        let to = (from + share).min(n);
        tasks.spawn(async move {
            let mut tick = every.map(|every| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut i = from;
            while i < to {
                if let Some(t) = &mut tick {
                    t.tick().await;
                }
                let m = (batch as u64).min(to - i);
                let stamp = t0.elapsed().as_nanos() as u64;
                let ps: Vec<Vec<u8>> = (0..m).map(|_| stamped(size, stamp)).collect();
                c.put(&queue, &ps, single_puts).await?;
                i += m;
            }
            anyhow::Ok(())
        });
    }
    let notified = finished.notified();
    tokio::pin!(notified);
    while !(tasks.is_empty() && acked.load(Ordering::Acquire) >= n) {
        tokio::select! {
            _ = &mut notified => break,
            r = tasks.join_next(), if !tasks.is_empty() => match r {
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => bail!("a load task failed: {e}"),
                _ => {}
            },
        }
    }
    let elapsed = start.elapsed();
    let got = acked.load(Ordering::Acquire);
    if got < n {
        bail!("only {got} of {n} messages acknowledged");
    }
    // Stopped, and awaited: their connections are closed when this returns.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let mut latency = histogram()?;
    for h in latencies {
        let h = h.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        latency.add(&*h)?;
    }
    Ok(Report {
        elapsed,
        n,
        latency,
    })
}

fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the server's (pid {pid}) memory"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Reads until `want` appears (a handshake's end).
async fn read_until(io: &mut BufReader<TcpStream>, want: &str) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            bail!("the server closed a connection during its handshake");
        }
        if line.contains(want) {
            return Ok(());
        }
    }
}

/// One raw connection, past the protocol's handshake (so the server holds
/// whatever a real client would cost it).
async fn open_raw(t: Target, addr: &str) -> Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr).await?;
    let mut io = BufReader::new(s);
    match t {
        Target::Ferry
        | Target::FerryNoack
        | Target::FerryRedis
        | Target::RedisList
        | Target::RedisStream => {
            io.get_mut().write_all(b"PING\r\n").await?;
            read_until(&mut io, "PONG").await?;
        }
        Target::FerryRedisCluster => {
            bail!("one server's memory per connection: not measured on a cluster")
        }
        Target::Beanstalkd => {
            io.get_mut().write_all(b"list-tube-used\r\n").await?;
            read_until(&mut io, "USING").await?;
        }
        Target::NatsMemory | Target::NatsFile => {
            read_until(&mut io, "INFO").await?;
            io.get_mut()
                .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
                .await?;
            read_until(&mut io, "PONG").await?;
        }
    }
    Ok(io)
}

/// Server memory per connection: `idle` connections past their handshake,
/// then `blocked` more, each waiting in a blocking get on an empty queue.
pub async fn conns(at: &Endpoint, idle: usize, blocked: usize, pid: u32) -> Result<(f64, f64)> {
    let (t, addr) = (at.target(), at.addr());
    let queue = format!("blk-{}", std::process::id());
    at.connect().await?.setup(&queue).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid)?;
    let mut held = Vec::with_capacity(idle + blocked);
    for _ in 0..idle {
        held.push(open_raw(t, addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_idle = rss(pid)?;
    for i in 0..blocked {
        let mut io = open_raw(t, addr).await?;
        let cmd = match t {
            Target::Ferry | Target::FerryNoack => format!("QGET {queue} TIMEOUT 0\r\n"),
            // The backend's waiting get: BLPOP on the waiter's own list.
            Target::FerryRedis => format!("BLPOP ferry:{{{queue}}}:w:c{i} 0\r\n"),
            Target::FerryRedisCluster => bail!("not measured on a cluster"),
            Target::RedisList => format!("BRPOP {queue} 0\r\n"),
            Target::RedisStream => {
                format!("XREADGROUP GROUP workers c{i} COUNT 1 BLOCK 0 STREAMS {queue} >\r\n")
            }
            Target::Beanstalkd => format!("watch {queue}\r\nreserve\r\n"),
            Target::NatsMemory | Target::NatsFile => {
                let body = "{\"batch\":1,\"expires\":300000000000}";
                format!(
                    "SUB _INBOX.blk{i} 1\r\nPUB $JS.API.CONSUMER.MSG.NEXT.{queue}.workers _INBOX.blk{i} {}\r\n{body}\r\nPING\r\n",
                    body.len()
                )
            }
        };
        io.get_mut().write_all(cmd.as_bytes()).await?;
        match t {
            Target::Beanstalkd => read_until(&mut io, "WATCHING").await?,
            Target::NatsMemory | Target::NatsFile => read_until(&mut io, "PONG").await?,
            _ => {}
        }
        held.push(io);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_blocked = rss(pid)?;
    let per_idle = after_idle.saturating_sub(before) as f64 / idle.max(1) as f64;
    let per_blocked = after_blocked.saturating_sub(after_idle) as f64 / blocked.max(1) as f64;
    drop(held);
    Ok((per_idle, per_blocked))
}

/// Server memory per queued message: N messages put in batches of 100.
pub async fn fill(at: &Endpoint, n: u64, size: usize, pid: u32) -> Result<f64> {
    let queue = format!("fill-{}", std::process::id());
    let mut c = at.connect().await?;
    c.setup(&queue).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid)?;
    let mut i = 0;
    while i < n {
        let m = 100.min(n - i);
        let ps: Vec<Vec<u8>> = (i..i + m).map(|j| payload(size, j)).collect();
        c.put(&queue, &ps, false).await?;
        i += m;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(rss(pid)?.saturating_sub(before) as f64 / n as f64)
}

/// Q queues × M messages: two producers put each queue's messages in one
/// batch; then two consumers empty the queues one by one.
pub async fn many_queues(at: &Endpoint, queues: usize, per: usize, size: usize) -> Result<f64> {
    let base = format!("mq-{}", std::process::id());
    let names: Arc<Vec<String>> = Arc::new((0..queues).map(|i| format!("{base}-{i}")).collect());
    {
        let mut c = at.connect().await?;
        for q in names.iter() {
            c.setup(q).await?;
        }
    }
    let start = Instant::now();
    let halves = |k: usize| (k * queues / 2)..((k + 1) * queues / 2);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..2 {
        let (names, mut c) = (Arc::clone(&names), at.connect().await?);
        let range = halves(k);
        tasks.spawn(async move {
            for q in &names[range] {
                let ps: Vec<Vec<u8>> = (0..per as u64).map(|j| payload(size, j)).collect();
                c.put(q, &ps, false).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    for k in 0..2 {
        let (names, mut c) = (Arc::clone(&names), at.connect().await?);
        let range = halves(k);
        tasks.spawn(async move {
            for q in &names[range] {
                let mut left = per;
                while left > 0 {
                    let got = c.get(q, left).await?;
                    if got.is_empty() {
                        bail!("queue {q} ran dry with {left} messages missing");
                    }
                    left -= got.len();
                    c.ack(q, got.into_iter().map(|(t, _)| t).collect()).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok((queues * per) as f64 / start.elapsed().as_secs_f64())
}
