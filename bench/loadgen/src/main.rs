//! `loadgen`: one end-to-end workload — producers put, consumers get and
//! acknowledge, the run ends when every message is acknowledged (Python's
//! `join`) — driven the same way against ferry and against its peers
//! (Redis lists and streams, beanstalkd, NATS JetStream). `bench/run.sh`
//! starts each peer and calls this once per row; every result is one JSON
//! line on stdout:
//!
//! ```text
//! {"workload":"throughput B=1","label":"redis-list memory","value":81234.5,"unit":"msg/s"}
//! ```
//!
//! Every load loop is bounded: by its message count, and by `--timeout-s`
//! (the run fails rather than hang).

mod peers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use peers::{Conn, Target, Token};

#[derive(Parser, Debug)]
#[command(about = "ferry's load generator: the same workload against ferry and its peers")]
struct Cli {
    /// The broker.
    #[arg(long, value_enum)]
    target: Target,
    /// Where it listens: host:port (or unix:/path for ferry).
    #[arg(long)]
    addr: String,
    /// The row's label in the results (e.g. "ferry sync").
    #[arg(long)]
    label: String,
    /// The workload's name in the results.
    #[arg(long)]
    name: String,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// P producers put N messages in batches of B; C consumers get up to B
    /// at a time and acknowledge them. Replies messages per second.
    Throughput {
        #[arg(long, default_value_t = 2)]
        producers: usize,
        #[arg(long, default_value_t = 2)]
        consumers: usize,
        #[arg(short, long)]
        n: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// One producer at a fixed rate, one consumer: put → get latency
    /// percentiles, in microseconds.
    Latency {
        #[arg(long)]
        rate: u64,
        #[arg(short, long)]
        n: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Server memory per idle connection, then per blocked getter (bytes,
    /// from the server's RSS).
    Conns {
        #[arg(long)]
        idle: usize,
        #[arg(long)]
        blocked: usize,
        /// The server's pid, for its RSS.
        #[arg(long)]
        pid: u32,
    },
    /// Server memory per queued message (bytes, from its RSS) with N queued.
    Fill {
        #[arg(short, long)]
        n: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
        #[arg(long)]
        pid: u32,
    },
    /// Q queues of M messages each: put them all, then get and acknowledge
    /// them all, queue by queue. Replies messages per second.
    Queues {
        #[arg(long)]
        queues: usize,
        #[arg(long)]
        per: usize,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
}

/// Writes one result line (an error, not a panic, if stdout is gone).
fn emit(cli: &Cli, suffix: &str, value: f64, unit: &str) -> Result<()> {
    use std::io::Write;
    let line = serde_json::json!({
        "workload": format!("{}{suffix}", cli.name),
        "label": cli.label,
        "value": value,
        "unit": unit,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let deadline = Duration::from_secs(cli.timeout_s);
    rt.block_on(async {
        match tokio::time::timeout(deadline, run(&cli)).await {
            Ok(r) => r,
            Err(_) => bail!(
                "{} / {}: no result within {deadline:?}",
                cli.name,
                cli.label
            ),
        }
    })
}

async fn run(cli: &Cli) -> Result<()> {
    let (t, addr) = (cli.target, cli.addr.as_str());
    match cli.workload {
        Workload::Throughput {
            producers,
            consumers,
            n,
            size,
            batch,
        } => {
            let queue = format!("tp-{}", std::process::id());
            let rate = throughput(t, addr, &queue, producers, consumers, n, size, batch).await?;
            emit(cli, "", rate, "msg/s")?;
        }
        Workload::Latency { rate, n, size } => {
            let (p50, p99, p999) = latency(t, addr, rate, n, size).await?;
            emit(cli, " p50", p50, "us")?;
            emit(cli, " p99", p99, "us")?;
            emit(cli, " p99.9", p999, "us")?;
        }
        Workload::Conns { idle, blocked, pid } => {
            let (per_idle, per_blocked) = conns(t, addr, idle, blocked, pid).await?;
            emit(cli, " idle", per_idle, "B/conn")?;
            emit(cli, " blocked", per_blocked, "B/conn")?;
        }
        Workload::Fill { n, size, pid } => {
            emit(cli, "", fill(t, addr, n, size, pid).await?, "B/msg")?;
        }
        Workload::Queues { queues, per, size } => {
            emit(
                cli,
                "",
                many_queues(t, addr, queues, per, size).await?,
                "msg/s",
            )?;
        }
    }
    Ok(())
}

fn payload(size: usize, i: u64) -> Vec<u8> {
    let mut p = format!("{i:016}").into_bytes();
    p.resize(size.max(1), b'x');
    p
}

/// Consumers first (connected and waiting), then producers; the clock runs
/// from the first put to the last acknowledgement.
#[allow(clippy::too_many_arguments)]
async fn throughput(
    t: Target,
    addr: &str,
    queue: &str,
    producers: usize,
    consumers: usize,
    n: u64,
    size: usize,
    batch: usize,
) -> Result<f64> {
    Conn::connect(t, addr).await?.setup(queue).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let mut conns = Vec::new();
    for _ in 0..consumers {
        conns.push(Conn::connect(t, addr).await?);
    }
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
        pconns.push(Conn::connect(t, addr).await?);
    }
    let start = Instant::now();
    let share = n.div_ceil(producers as u64);
    for (k, mut c) in pconns.into_iter().enumerate() {
        let queue = queue.to_string();
        let from = k as u64 * share;
        let to = (from + share).min(n);
        tasks.spawn(async move {
            let mut i = from;
            while i < to {
                let m = (batch as u64).min(to - i);
                let ps: Vec<Vec<u8>> = (i..i + m).map(|j| payload(size, j)).collect();
                c.put(&queue, &ps).await?;
                i += m;
            }
            anyhow::Ok(())
        });
    }
    let notified = finished.notified();
    tokio::pin!(notified);
    loop {
        tokio::select! {
            _ = &mut notified => break,
            r = tasks.join_next() => match r {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => bail!("a load task failed: {e}"),
                None => break,
            },
        }
    }
    let elapsed = start.elapsed();
    let got = acked.load(Ordering::Acquire);
    if got < n {
        bail!("only {got} of {n} messages acknowledged");
    }
    tasks.abort_all();
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Put → get latency at a fixed rate: the producer stamps each payload
/// with the time it was sent; the consumer records now − stamp.
async fn latency(t: Target, addr: &str, rate: u64, n: u64, size: usize) -> Result<(f64, f64, f64)> {
    let queue = format!("lat-{}", std::process::id());
    Conn::connect(t, addr).await?.setup(&queue).await?;
    let mut consumer = Conn::connect(t, addr).await?;
    let mut producer = Conn::connect(t, addr).await?;
    let t0 = Instant::now();
    let q = queue.clone();
    let reader = tokio::spawn(async move {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut seen = 0;
        let mut pending = Vec::new();
        while seen < n {
            // The last message's acknowledgement goes with the next get.
            let got = consumer
                .ack_then_get(&q, std::mem::take(&mut pending), 1)
                .await?;
            let now = t0.elapsed().as_nanos() as u64;
            for (tok, p) in got {
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(p.get(..8).context("a payload without its stamp")?);
                let sent = u64::from_le_bytes(stamp);
                h.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                pending.push(tok);
                seen += 1;
            }
        }
        consumer.ack(&q, pending).await?;
        anyhow::Ok(h)
    });
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..n {
        tick.tick().await;
        let mut p = (t0.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        p.resize(size.max(8), b'x');
        producer.put(&queue, &[p]).await?;
    }
    let h = reader.await??;
    Ok((
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
        h.value_at_quantile(0.999) as f64,
    ))
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
        Target::Ferry | Target::FerryNoack | Target::RedisList | Target::RedisStream => {
            io.get_mut().write_all(b"PING\r\n").await?;
            read_until(&mut io, "PONG").await?;
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
async fn conns(t: Target, addr: &str, idle: usize, blocked: usize, pid: u32) -> Result<(f64, f64)> {
    let queue = format!("blk-{}", std::process::id());
    Conn::connect(t, addr).await?.setup(&queue).await?;
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
async fn fill(t: Target, addr: &str, n: u64, size: usize, pid: u32) -> Result<f64> {
    let queue = format!("fill-{}", std::process::id());
    let mut c = Conn::connect(t, addr).await?;
    c.setup(&queue).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid)?;
    let mut i = 0;
    while i < n {
        let m = 100.min(n - i);
        let ps: Vec<Vec<u8>> = (i..i + m).map(|j| payload(size, j)).collect();
        c.put(&queue, &ps).await?;
        i += m;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(rss(pid)?.saturating_sub(before) as f64 / n as f64)
}

/// Q queues × M messages: two producers put each queue's messages in one
/// batch; then two consumers empty the queues one by one.
async fn many_queues(t: Target, addr: &str, queues: usize, per: usize, size: usize) -> Result<f64> {
    let base = format!("mq-{}", std::process::id());
    let names: Arc<Vec<String>> = Arc::new((0..queues).map(|i| format!("{base}-{i}")).collect());
    {
        let mut c = Conn::connect(t, addr).await?;
        for q in names.iter() {
            c.setup(q).await?;
        }
    }
    let start = Instant::now();
    let halves = |k: usize| (k * queues / 2)..((k + 1) * queues / 2);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..2 {
        let (names, mut c) = (Arc::clone(&names), Conn::connect(t, addr).await?);
        let range = halves(k);
        tasks.spawn(async move {
            for q in &names[range] {
                let ps: Vec<Vec<u8>> = (0..per as u64).map(|j| payload(size, j)).collect();
                c.put(q, &ps).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    for k in 0..2 {
        let (names, mut c) = (Arc::clone(&names), Conn::connect(t, addr).await?);
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
