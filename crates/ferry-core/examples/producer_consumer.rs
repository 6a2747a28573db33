//! The producer–consumer model with threads, end to end: two producers
//! fill a bounded JoinableQueue, two consumers work through it and mark each
//! item done, the main thread joins, then shuts the queue down so the
//! consumers' next get fails and they exit.
//!
//! Run it with `cargo run --release -p ferry-core --example producer_consumer`.
#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::Instant;

use ferry_core::{GetError, JoinableQueue};

const PER_PRODUCER: u64 = 100_000;

fn main() {
    let started = Instant::now();
    let q = JoinableQueue::new(64);
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    q.put(p * PER_PRODUCER + i).unwrap();
                }
                println!("producer {p}: put {PER_PRODUCER} items");
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|c| {
            let q = q.clone();
            thread::spawn(move || {
                let (mut count, mut sum) = (0u64, 0u64);
                loop {
                    match q.get() {
                        Ok(x) => {
                            count += 1;
                            sum += x;
                            q.task_done().unwrap();
                        }
                        Err(GetError::ShutDown) => break,
                        Err(GetError::Empty) => unreachable!("a blocking get never times out"),
                    }
                }
                println!("consumer {c}: got {count} items, then ShutDown");
                (count, sum)
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    q.join();
    println!(
        "join returned: every item put was marked done (unfinished = {})",
        q.unfinished()
    );
    q.shutdown(false);
    let (count, sum) = consumers
        .into_iter()
        .map(|c| c.join().unwrap())
        .fold((0, 0), |(n, s), (cn, cs)| (n + cn, s + cs));
    let n = 2 * PER_PRODUCER;
    assert_eq!(count, n);
    assert_eq!(sum, n * (n - 1) / 2);
    let elapsed = started.elapsed();
    println!(
        "{count} items through a queue of 64 in {elapsed:.2?} ({:.0} items/s); sum checks out",
        count as f64 / elapsed.as_secs_f64()
    );
}
