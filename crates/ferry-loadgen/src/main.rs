//! `loadgen`: the load generator's front end for `bench/run.sh`, which
//! starts each peer and calls this once per row (see the library's docs
//! for the workloads); every result is one JSON line on stdout:
//!
//! ```text
//! {"workload":"throughput B=1","label":"redis-list memory","value":81234.5,"unit":"msg/s"}
//! ```
//!
//! Every load loop is bounded: by its message count, and by `--timeout-s`
//! (the run fails rather than hang).

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use ferry_loadgen::{Endpoint, Load, Target, conns, fill, many_queues, throughput};

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
        /// Put each batch as pipelined single puts (ferry: QPUTs, not one
        /// QPUTMANY; Redis streams always put so).
        #[arg(long)]
        single_puts: bool,
    },
    /// One producer at a fixed rate, one consumer (the throughput workload,
    /// paced): put → get latency percentiles, in microseconds.
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
    let at = Endpoint::At(cli.target, cli.addr.clone());
    match cli.workload {
        Workload::Throughput {
            producers,
            consumers,
            n,
            size,
            batch,
            single_puts,
        } => {
            let queue = format!("tp-{}", std::process::id());
            let load = Load {
                producers,
                consumers,
                n,
                size,
                batch,
                rate: None,
                single_puts,
            };
            let report = throughput(&at, &queue, load).await?;
            emit(cli, "", report.rate(), "msg/s")?;
        }
        Workload::Latency { rate, n, size } => {
            let queue = format!("lat-{}", std::process::id());
            let load = Load {
                producers: 1,
                consumers: 1,
                n,
                size,
                batch: 1,
                rate: Some(rate as f64),
                single_puts: false,
            };
            let report = throughput(&at, &queue, load).await?;
            for p in [50.0, 99.0, 99.9] {
                emit(cli, &format!(" p{p}"), report.latency_us(p) as f64, "us")?;
            }
        }
        Workload::Conns { idle, blocked, pid } => {
            let (per_idle, per_blocked) = conns(&at, idle, blocked, pid).await?;
            emit(cli, " idle", per_idle, "B/conn")?;
            emit(cli, " blocked", per_blocked, "B/conn")?;
        }
        Workload::Fill { n, size, pid } => {
            emit(cli, "", fill(&at, n, size, pid).await?, "B/msg")?;
        }
        Workload::Queues { queues, per, size } => {
            emit(cli, "", many_queues(&at, queues, per, size).await?, "msg/s")?;
        }
    }
    Ok(())
}
