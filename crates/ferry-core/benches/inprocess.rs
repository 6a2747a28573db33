//! The in-process JoinableQueue against crossbeam-channel's bounded channel
//! and std's sync_channel, in one run: P producers and C consumers move
//! 16-byte items through a queue bounded at 1024.
//!
//! ferry does more per item than the channels: every get is followed by a
//! `task_done`, and the run ends with `join` then `shutdown`, which is what
//! its users do. The channels end when their senders drop.
//!
//! `cargo bench -p ferry-core --bench inprocess`; `bench/inprocess.sh` runs
//! it and prints the ferry / crossbeam and ferry / std ratios.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_core::JoinableQueue;

const ITEMS: usize = 100_000;
const CAPACITY: usize = 1024;
type Item = [u8; 16];

fn item(i: usize) -> Item {
    let mut it = [0u8; 16];
    it[..8].copy_from_slice(&(i as u64).to_le_bytes());
    it
}

/// Starts `c` consumers running `consume` and `p` producers putting their
/// share of the items with `put`, waits for the producers, runs `finish`
/// (what ends the consumers), waits for them; replies the time taken.
fn run<Q: Clone + Send + 'static>(
    q: Q,
    p: usize,
    c: usize,
    put: fn(&Q, Item),
    consume: fn(Q),
    finish: impl FnOnce(Q),
) -> Duration {
    let start = Instant::now();
    let consumers: Vec<_> = (0..c)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || consume(q))
        })
        .collect();
    let producers: Vec<_> = (0..p)
        .map(|k| {
            let q = q.clone();
            thread::spawn(move || {
                for i in (k..ITEMS).step_by(p) {
                    put(&q, item(i));
                }
            })
        })
        .collect();
    for t in producers {
        t.join().unwrap();
    }
    finish(q);
    for t in consumers {
        t.join().unwrap();
    }
    start.elapsed()
}

fn ferry(p: usize, c: usize) -> Duration {
    let q: JoinableQueue<Item> = JoinableQueue::new(CAPACITY);
    run(
        q,
        p,
        c,
        |q, x| q.put(x).unwrap(),
        |q| {
            while let Ok(x) = q.get() {
                black_box(x);
                q.task_done().unwrap();
            }
        },
        |q| {
            q.join();
            q.shutdown(false);
        },
    )
}

/// A channel's two ends: producers clone the sender, consumers the
/// receiver; dropping the last sender ends the consumers.
#[derive(Clone)]
struct Ends<S, R>(Option<S>, R);

fn crossbeam(p: usize, c: usize) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Item>(CAPACITY);
    run(
        Ends(Some(tx), rx),
        p,
        c,
        |e, x| e.0.as_ref().unwrap().send(x).unwrap(),
        |Ends(tx, rx)| {
            drop(tx);
            while let Ok(x) = rx.recv() {
                black_box(x);
            }
        },
        drop,
    )
}

fn std_sync_channel(p: usize, c: usize) -> Duration {
    let (tx, rx) = mpsc::sync_channel::<Item>(CAPACITY);
    // std's receiver cannot be cloned: several consumers share it behind a
    // mutex, as programs that use it that way must.
    run(
        Ends(Some(tx), Arc::new(Mutex::new(rx))),
        p,
        c,
        |e, x| e.0.as_ref().unwrap().send(x).unwrap(),
        |Ends(tx, rx)| {
            drop(tx);
            loop {
                let next = rx.lock().unwrap().recv();
                match next {
                    Ok(x) => {
                        black_box(x);
                    }
                    Err(_) => break,
                }
            }
        },
        drop,
    )
}

fn bench(cr: &mut Criterion) {
    for (p, c) in [(1, 1), (4, 4)] {
        let mut g = cr.benchmark_group(format!("{p}p{c}c"));
        g.throughput(Throughput::Elements(ITEMS as u64));
        g.sample_size(20);
        g.measurement_time(Duration::from_secs(4));
        type Run = fn(usize, usize) -> Duration;
        let runs: [(&str, Run); 3] = [
            ("ferry_joinable", ferry),
            ("crossbeam_bounded", crossbeam),
            ("std_sync_channel", std_sync_channel),
        ];
        for (name, run) in runs {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| run(p, c)).sum())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
