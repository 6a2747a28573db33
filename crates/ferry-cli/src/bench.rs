//! `ferry bench`: P producers and C consumers move N messages of S bytes,
//! in batches of B, through a broker: put → get → done, with a join at the
//! end. Prints end-to-end throughput and put→get latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::{Client, Error};

use crate::verbs::Outcome;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// ferry://[:password@]host[:port] or unix:///path[?password=...]
    #[arg(long, env = "FERRY_URL", default_value = ferry_client::DEFAULT_URL)]
    url: String,
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

fn connect(url: &str) -> Result<Client, (i32, String)> {
    Client::connect(url).map_err(|e| match e {
        Error::Io(e) => (
            crate::verbs::UNREACHABLE,
            format!("cannot reach {url}: {e}"),
        ),
        other => (1, other.to_string()),
    })
}

fn err(e: Error) -> (i32, String) {
    (1, e.to_string())
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // In tenths of a percent and integers: 99.9 % of 1000 is 999, which
    // floating point rounds up to 1000.
    let per_mille = (p * 10.0).round() as usize;
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn bench(a: &BenchArgs) -> Outcome {
    let total = if a.quick { 1_000 } else { a.messages.max(1) };
    let size = a.size.max(8);
    let batch = a.batch.max(1);
    let (producers, consumers) = (a.producers.max(1), a.consumers.max(1));
    let queue = a.queue.clone().unwrap_or_else(|| {
        format!(
            "bench-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        )
    });
    let mut control = connect(&a.url)?;
    let start = Instant::now();
    let consumed = Arc::new(AtomicU64::new(0));

    let mut consumer_threads = Vec::new();
    for _ in 0..consumers {
        let (url, queue, consumed) = (a.url.clone(), queue.clone(), Arc::clone(&consumed));
        consumer_threads.push(std::thread::spawn(
            move || -> Result<Vec<u64>, (i32, String)> {
                let mut c = connect(&url)?;
                let mut latencies = Vec::new();
                while consumed.load(Ordering::Acquire) < total {
                    let msgs = match c.get_many(&queue, batch, Some(Duration::from_millis(100))) {
                        Ok(m) => m,
                        Err(Error::Empty) => continue,
                        Err(e) => return Err(err(e)),
                    };
                    let now = start.elapsed().as_nanos() as u64;
                    let mut ids = Vec::with_capacity(msgs.len());
                    for m in &msgs {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&m.payload[..8.min(m.payload.len())]);
                        latencies.push(now.saturating_sub(u64::from_le_bytes(ts)) / 1_000);
                        ids.push(m.id.to_string());
                    }
                    let mut args: Vec<&[u8]> = vec![b"QDONE", queue.as_bytes()];
                    args.extend(ids.iter().map(|i| i.as_bytes()));
                    c.call(&args).map_err(err)?;
                    consumed.fetch_add(msgs.len() as u64, Ordering::AcqRel);
                }
                Ok(latencies)
            },
        ));
    }

    let mut producer_threads = Vec::new();
    for p in 0..producers as u64 {
        let (url, queue) = (a.url.clone(), queue.clone());
        let share = total / producers as u64 + u64::from(p < total % producers as u64);
        // Each producer paces its share: one batch every `interval`.
        let interval = a
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(batch as f64 * producers as f64 / r));
        producer_threads.push(std::thread::spawn(move || -> Outcome {
            let mut c = connect(&url)?;
            let mut sent = 0;
            let mut next = Instant::now();
            while sent < share {
                if let Some(i) = interval {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    next += i;
                }
                let n = (share - sent).min(batch as u64) as usize;
                let payloads: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        let mut body = vec![b'x'; size];
                        body[..8]
                            .copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
                        body
                    })
                    .collect();
                if n == 1 {
                    c.put(&queue, &payloads[0]).map_err(err)?;
                } else {
                    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                    c.put_many(&queue, &refs).map_err(err)?;
                }
                sent += n as u64;
            }
            Ok(())
        }));
    }
    for t in producer_threads {
        t.join()
            .map_err(|_| (1, "a producer panicked".to_string()))??;
    }
    control.join(&queue).map_err(err)?;
    let elapsed = start.elapsed();
    let mut latencies = Vec::new();
    for t in consumer_threads {
        latencies.extend(
            t.join()
                .map_err(|_| (1, "a consumer panicked".to_string()))??,
        );
    }
    if a.queue.is_none() {
        let _ = control.call(&[b"QDROP", queue.as_bytes()]);
    }
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let rate = a.rate.map_or_else(
        || "full speed".to_string(),
        |r| format!("{r:.0} msg/s offered"),
    );
    println!(
        "ferry bench: {total} messages of {size} B, {producers} producer(s), {consumers} consumer(s), batch {batch}, {rate}, {}",
        a.url
    );
    println!(
        "throughput: {:.0} msg/s end to end (put -> get -> done, join) in {:.3} s",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency put->get: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms ({} samples)",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 99.9)),
        latencies.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&[7], 99.9), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
