//! `ferry bench`: the load generator's throughput workload (crates/ferry-loadgen,
//! built without its peers) against one broker — P producers and C
//! consumers move N messages of S bytes, in batches of B, put → get →
//! done — with the end-to-end throughput and put → get latency printed.

use clap::Args;
use ferry_loadgen::{Endpoint, Load, Report, throughput};

use crate::verbs::Outcome;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    conn: crate::verbs::Conn,
    /// Producers (each on its own connection).
    #[arg(short = 'p', long, default_value_t = 1)]
    producers: usize,
    /// Consumers (each on its own connection).
    #[arg(short = 'c', long, default_value_t = 1)]
    consumers: usize,
    /// Messages in all.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    messages: u64,
    /// Payload bytes (at least 8: a timestamp rides in each).
    #[arg(short = 's', long, default_value_t = 16)]
    size: usize,
    /// Messages per put and per get.
    #[arg(short = 'b', long, default_value_t = 1)]
    batch: usize,
    /// Messages per second in all, paced evenly (default: as fast as the
    /// broker takes them). Latency is only meaningful below saturation:
    /// at full speed it mostly measures the backlog.
    #[arg(long)]
    rate: Option<f64>,
    /// The queue to use; a fresh one (dropped afterwards) if not given.
    #[arg(long)]
    queue: Option<String>,
    /// About a thousand messages: a smoke test.
    #[arg(long)]
    quick: bool,
}

pub(crate) fn bench(a: &BenchArgs) -> Outcome {
    let load = Load {
        producers: a.producers.max(1),
        consumers: a.consumers.max(1),
        n: if a.quick { 1_000 } else { a.messages.max(1) },
        size: a.size.max(8),
        batch: a.batch.max(1),
        rate: a.rate.filter(|r| *r > 0.0),
        single_puts: false,
    };
    let queue = a.queue.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("bench-{}-{nanos}", std::process::id())
    });
    let at = Endpoint::FerryUrl(a.conn.url.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("starting the runtime: {e}")))?;
    let report = runtime.block_on(async {
        let mut control = at.connect().await.map_err(unreachable)?;
        let clients = control.clients().await;
        let report = throughput(&at, &queue, load).await.map_err(failed);
        if a.queue.is_none() {
            let _ = control.drop_queue(&queue, clients).await;
        }
        report
    })?;
    print(a, &load, &report);
    Ok(())
}

fn unreachable(e: anyhow::Error) -> (i32, String) {
    (crate::verbs::UNREACHABLE, format!("{e:#}"))
}

fn failed(e: anyhow::Error) -> (i32, String) {
    (1, format!("{e:#}"))
}

fn print(a: &BenchArgs, load: &Load, report: &Report) {
    let rate = load.rate.map_or_else(
        || "full speed".to_string(),
        |r| format!("{r:.0} msg/s offered"),
    );
    println!(
        "ferry bench: {} messages of {} B, {} producer(s), {} consumer(s), batch {}, {rate}, {}",
        load.n, load.size, load.producers, load.consumers, load.batch, a.conn.url
    );
    println!(
        "throughput: {:.0} msg/s end to end (put -> get -> done, join) in {:.3} s",
        report.rate(),
        report.elapsed.as_secs_f64()
    );
    let ms = |p: f64| report.latency_us(p) as f64 / 1000.0;
    println!(
        "latency put->get: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms ({} samples)",
        ms(50.0),
        ms(99.0),
        ms(99.9),
        report.latency.len()
    );
}
