//! Interleavings of the blocking in-process tier, explored by shuttle.
//!
//! Built only with `--features shuttle`, which swaps the tier's mutex and
//! condition variables for shuttle's, so that its scheduler picks every
//! switch between threads. A lost wake-up shows up as a deadlock, a lost or
//! doubled item as a failed assertion. Seeds are fixed and iterations
//! bounded, so the run is repeatable and quick.
#![cfg(feature = "shuttle")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_core::{GetError, LifoQueue, PutError, Queue};
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;

const SEED: u64 = 0x0f_e2_2e;
const ITERATIONS: usize = 2_000;

fn check(f: impl Fn() + Send + Sync + 'static) {
    shuttle::check_random_with_seed(f, SEED, ITERATIONS);
}

/// Two producers and two consumers through a one-slot queue, then join:
/// every item is got exactly once and join returns. The fifo queue (its
/// lock-free core) and the lifo queue (the engine's).
macro_rules! producers_consumers_join {
    ($name:ident, $queue:ident) => {
        #[test]
        fn $name() {
            producers_consumers_join_on(
                || $queue::new(1),
                |q| q.clone(),
                |q, x| q.put(x).unwrap(),
                |q| q.get().unwrap(),
                |q| q.task_done().unwrap(),
                |q| q.join(),
                |q| q.unfinished(),
            );
        }
    };
}
producers_consumers_join!(producers_consumers_join, Queue);
producers_consumers_join!(producers_consumers_join_lifo, LifoQueue);

#[allow(clippy::too_many_arguments)]
fn producers_consumers_join_on<Q: Send + 'static>(
    new: fn() -> Q,
    clone: fn(&Q) -> Q,
    put: fn(&Q, u32),
    get: fn(&Q) -> u32,
    done: fn(&Q),
    join: fn(&Q),
    unfinished: fn(&Q) -> usize,
) {
    check(move || {
        let q = new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for p in 0..2u32 {
            let q = clone(&q);
            threads.push(thread::spawn(move || {
                for i in 0..3 {
                    put(&q, p * 10 + i);
                }
            }));
        }
        for _ in 0..2 {
            let (q, seen) = (clone(&q), Arc::clone(&seen));
            threads.push(thread::spawn(move || {
                for _ in 0..3 {
                    let x = get(&q);
                    seen.lock().unwrap().push(x);
                    done(&q);
                }
            }));
        }
        join(&q);
        for t in threads {
            t.join().unwrap();
        }
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 10, 11, 12]);
        assert_eq!(unfinished(&q), 0);
    });
}

/// A get waiting on an empty queue while a put races a shutdown: if the
/// get says the queue is shut down and drained, the put did not happen
/// (it was refused, not left in a queue nobody will read).
#[test]
fn a_put_racing_shutdown_is_got_or_refused() {
    check(|| {
        let q = Queue::new(1);
        let getter = {
            let q = q.clone();
            thread::spawn(move || q.get())
        };
        let putter = {
            let q = q.clone();
            thread::spawn(move || q.put(7u32))
        };
        q.shutdown(false);
        let got = getter.join().unwrap();
        let put = putter.join().unwrap();
        let left = q.get_nowait();
        let held = usize::from(got.is_ok());
        match (got, put) {
            (Ok(7), Ok(())) => assert_eq!(left, Err(GetError::ShutDown)),
            (Err(GetError::ShutDown), Err(PutError::ShutDown(7))) => {
                assert_eq!(left, Err(GetError::ShutDown))
            }
            (got, put) => panic!("got {got:?}, put {put:?}, left {left:?}"),
        }
        assert_eq!(q.unfinished(), held);
    });
}

/// A get that times out while a put races it: the item is then still
/// queued — never lost between the two.
#[test]
fn a_get_timing_out_leaves_the_racing_item_queued() {
    check(|| {
        let q = Queue::new(0);
        let putter = {
            let q = q.clone();
            thread::spawn(move || q.put(7u32).unwrap())
        };
        let got = q.get_timeout(Duration::from_millis(1));
        putter.join().unwrap();
        match got {
            Ok(7) => assert_eq!(q.qsize(), 0),
            Err(GetError::Empty) => assert_eq!(q.get_nowait(), Ok(7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.unfinished(), 1);
    });
}

/// A put waiting for room is let in by a larger bound.
#[test]
fn a_larger_maxsize_lets_a_waiting_put_in() {
    check(|| {
        let q = Queue::new(1);
        q.put(1u32).unwrap();
        let putter = {
            let q = q.clone();
            thread::spawn(move || q.put(2))
        };
        q.set_maxsize(2);
        putter.join().unwrap().unwrap();
        assert_eq!((q.get(), q.get()), (Ok(1), Ok(2)));
    });
}

/// Shutdown racing a blocked getter and a blocked putter: both return, and
/// every item is either still queued, got, or handed back with the error.
#[test]
fn shutdown_releases_blocked_callers_without_losing_items() {
    check(|| {
        let q = Queue::new(1);
        q.put(1u32).unwrap();
        let putter = {
            let q = q.clone();
            thread::spawn(move || q.put(2))
        };
        let getter = {
            let q = q.clone();
            thread::spawn(move || (q.get(), q.get()))
        };
        q.shutdown(false);
        let put = putter.join().unwrap();
        let (a, b) = getter.join().unwrap();
        let mut got: Vec<u32> = [a, b].into_iter().filter_map(Result::ok).collect();
        while let Ok(x) = q.get_nowait() {
            got.push(x);
        }
        match put {
            Ok(()) => {
                got.sort_unstable();
                assert_eq!(got, vec![1, 2]);
            }
            Err(PutError::ShutDown(2)) => assert_eq!(got, vec![1]),
            Err(e) => panic!("unexpected {e:?}"),
        }
        assert_eq!(q.get_nowait(), Err(GetError::ShutDown));
    });
}

/// Immediate shutdown racing getters and a joiner: join returns once the
/// items already got are done, and nothing is delivered twice.
#[test]
fn immediate_shutdown_and_join() {
    check(|| {
        let q = Queue::new(0);
        for i in 0..3u32 {
            q.put(i).unwrap();
        }
        let getter = {
            let q = q.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(x) = q.get() {
                    got.push(x);
                    q.task_done().unwrap();
                }
                got
            })
        };
        let joiner = {
            let q = q.clone();
            thread::spawn(move || q.join())
        };
        q.shutdown(true);
        joiner.join().unwrap();
        let got = getter.join().unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "delivered out of order or twice: {got:?}"
        );
        assert_eq!(q.unfinished(), 0);
    });
}

/// task_done() from many threads at once, one more than there are items
/// (the lock-free path racing the locked one): exactly one fails, and a
/// joiner waiting meanwhile returns.
#[test]
fn racing_task_done_counts_exactly() {
    check(|| {
        let q = Queue::new(0);
        for i in 0..3u32 {
            q.put(i).unwrap();
        }
        let joiner = {
            let q = q.clone();
            thread::spawn(move || q.join())
        };
        let doers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || q.task_done().is_ok())
            })
            .collect();
        let ok = doers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(ok, 3);
        joiner.join().unwrap();
        assert_eq!(q.unfinished(), 0);
        assert!(q.task_done().is_err());
    });
}
