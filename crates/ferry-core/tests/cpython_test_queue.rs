//! CPython's Lib/test/test_queue.py, ported to the in-process queues.
//!
//! Each scenario keeps the name of the Python test it comes from, and runs
//! against Queue, LifoQueue and PriorityQueue as CPython's mixins do.
//! Python's negative-timeout test has no counterpart: a `Duration` cannot
//! be negative.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const QUEUE_SIZE: usize = 5;

/// CPython's `do_blocking_test`: `block` must not return before `trigger`
/// (run on another thread after a pause) has started.
fn blocking_test<R>(block: impl FnOnce() -> R, trigger: impl FnOnce() + Send + 'static) -> R {
    let started = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&started);
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        flag.store(true, Ordering::SeqCst);
        trigger();
    });
    let result = block();
    assert!(
        started.load(Ordering::SeqCst),
        "blocking call returned before its trigger ran"
    );
    t.join().unwrap();
    result
}

macro_rules! suite {
    ($name:ident, $ty:ident, $order:expr) => {
        mod $name {
            use super::*;
            use ferry_core::{GetError, PutError, $ty as Q};

            /// CPython's `simple_queue_test`.
            fn simple_queue_test(q: &Q<i64>) {
                assert_eq!(q.qsize(), 0, "call this with an empty queue");
                assert!(q.empty());
                assert!(!q.full());
                q.put(111).unwrap();
                q.put(333).unwrap();
                q.put(222).unwrap();
                let actual = [q.get().unwrap(), q.get().unwrap(), q.get().unwrap()];
                assert_eq!(actual, $order, "didn't seem to queue the correct data");
                for i in 0..QUEUE_SIZE as i64 - 1 {
                    q.put(i).unwrap();
                    assert!(q.qsize() > 0, "queue should not be empty");
                }
                assert!(!q.full(), "queue should not be full");
                let last = 2 * QUEUE_SIZE as i64;
                let full = 3 * 2 * QUEUE_SIZE as i64;
                q.put(last).unwrap();
                assert!(q.full(), "queue should be full");
                assert!(!q.empty());
                assert_eq!(q.put_nowait(full), Err(PutError::Full(full)));
                let t0 = Instant::now();
                assert_eq!(
                    q.put_timeout(full, Duration::from_millis(10)),
                    Err(PutError::Full(full))
                );
                assert!(t0.elapsed() >= Duration::from_millis(10), "timed out early");
                // Blocking puts, released by a get on another thread.
                let (a, b) = (q.clone(), q.clone());
                blocking_test(
                    move || a.put(full).unwrap(),
                    move || {
                        b.get().unwrap();
                    },
                );
                let (a, b) = (q.clone(), q.clone());
                blocking_test(
                    move || a.put_timeout(full, Duration::from_secs(10)).unwrap(),
                    move || {
                        b.get().unwrap();
                    },
                );
                for _ in 0..QUEUE_SIZE {
                    q.get().unwrap();
                }
                assert_eq!(q.qsize(), 0, "queue should be empty");
                assert_eq!(q.get_nowait(), Err(GetError::Empty));
                let t0 = Instant::now();
                assert_eq!(
                    q.get_timeout(Duration::from_millis(10)),
                    Err(GetError::Empty)
                );
                assert!(t0.elapsed() >= Duration::from_millis(10), "timed out early");
                // Blocking gets, released by a put on another thread.
                let (a, b) = (q.clone(), q.clone());
                assert_eq!(
                    blocking_test(move || a.get().unwrap(), move || b.put(7).unwrap()),
                    7
                );
                let (a, b) = (q.clone(), q.clone());
                let got = blocking_test(
                    move || a.get_timeout(Duration::from_secs(10)).unwrap(),
                    move || b.put(8).unwrap(),
                );
                assert_eq!(got, 8);
            }

            #[test]
            fn test_basic() {
                let q = Q::new(QUEUE_SIZE);
                simple_queue_test(&q);
                simple_queue_test(&q);
            }

            /// CPython's `worker` and `queue_join_test`.
            fn queue_join_test(q: &Q<i64>) {
                let cum = Arc::new(Mutex::new(0));
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let (q, cum) = (q.clone(), Arc::clone(&cum));
                        thread::spawn(move || {
                            loop {
                                let x = q.get().unwrap();
                                if x < 0 {
                                    q.task_done().unwrap();
                                    return;
                                }
                                *cum.lock().unwrap() += x;
                                q.task_done().unwrap();
                            }
                        })
                    })
                    .collect();
                for i in 0..100 {
                    q.put(i).unwrap();
                }
                q.join();
                assert_eq!(
                    *cum.lock().unwrap(),
                    (0..100).sum::<i64>(),
                    "join doesn't appear to work"
                );
                for _ in 0..2 {
                    q.put(-1).unwrap();
                }
                q.join(); // join twice
                for t in threads {
                    t.join().unwrap();
                }
            }

            #[test]
            fn test_queue_task_done() {
                let q: Q<i64> = Q::new(0);
                assert!(
                    q.task_done().is_err(),
                    "did not detect task count going negative"
                );
            }

            #[test]
            fn test_queue_join() {
                let q = Q::new(0);
                queue_join_test(&q);
                queue_join_test(&q);
                assert!(
                    q.task_done().is_err(),
                    "did not detect task count going negative"
                );
            }

            #[test]
            fn test_nowait() {
                let q = Q::new(QUEUE_SIZE);
                for _ in 0..QUEUE_SIZE {
                    q.put_nowait(1).unwrap();
                }
                assert_eq!(q.put_nowait(1), Err(PutError::Full(1)));
                for _ in 0..QUEUE_SIZE {
                    q.get_nowait().unwrap();
                }
                assert_eq!(q.get_nowait(), Err(GetError::Empty));
            }

            #[test]
            fn test_shrinking_queue() {
                let q = Q::new(3);
                for i in 1..=3 {
                    q.put(i).unwrap();
                }
                assert_eq!(q.put_nowait(4), Err(PutError::Full(4)));
                assert_eq!(q.qsize(), 3);
                q.set_maxsize(2);
                assert_eq!(q.put_nowait(4), Err(PutError::Full(4)));
            }

            #[test]
            fn test_shutdown_empty() {
                let q: Q<i64> = Q::new(0);
                q.shutdown(false);
                assert_eq!(q.put(1), Err(PutError::ShutDown(1)));
                assert_eq!(q.get(), Err(GetError::ShutDown));
            }

            #[test]
            fn test_shutdown_nonempty() {
                let q = Q::new(0);
                q.put(1).unwrap();
                q.shutdown(false);
                q.get().unwrap();
                assert_eq!(q.get(), Err(GetError::ShutDown));
            }

            #[test]
            fn test_shutdown_immediate() {
                let q = Q::new(0);
                q.put(1).unwrap();
                q.shutdown(true);
                assert_eq!(q.get(), Err(GetError::ShutDown));
            }

            #[test]
            fn test_shutdown_allowed_transitions() {
                let q: Q<i64> = Q::new(0);
                assert!(!q.is_shutdown());
                q.shutdown(false);
                assert!(q.is_shutdown());
                q.shutdown(true);
                assert!(q.is_shutdown());
                q.shutdown(false);
                assert!(q.is_shutdown());
            }

            fn shutdown_all_methods_in_one_thread(immediate: bool) {
                let q = Q::new(2);
                q.put(1).unwrap();
                q.put_nowait(2).unwrap();
                q.shutdown(immediate);
                assert_eq!(q.put(3), Err(PutError::ShutDown(3)));
                assert_eq!(q.put_nowait(4), Err(PutError::ShutDown(4)));
                if immediate {
                    assert_eq!(q.get(), Err(GetError::ShutDown));
                    assert_eq!(q.get_nowait(), Err(GetError::ShutDown));
                    assert!(q.task_done().is_err());
                    q.join();
                } else {
                    assert!([1, 2].contains(&q.get().unwrap()));
                    q.task_done().unwrap();
                    assert!([1, 2].contains(&q.get().unwrap()));
                    q.task_done().unwrap();
                    q.join();
                    assert_eq!(q.get(), Err(GetError::ShutDown));
                    assert_eq!(q.get_nowait(), Err(GetError::ShutDown));
                    assert_eq!(
                        q.get_timeout(Duration::from_secs(1)),
                        Err(GetError::ShutDown)
                    );
                }
            }

            #[test]
            fn test_shutdown_all_methods_in_one_thread() {
                shutdown_all_methods_in_one_thread(false);
            }

            #[test]
            fn test_shutdown_immediate_all_methods_in_one_thread() {
                shutdown_all_methods_in_one_thread(true);
            }

            #[test]
            fn test_shutdown_pending_get() {
                let q: Q<i64> = Q::new(0);
                let getter = {
                    let q = q.clone();
                    thread::spawn(move || q.get())
                };
                // Give the getter time to block; shutdown must release it
                // whether or not it already waits.
                thread::sleep(Duration::from_millis(20));
                q.shutdown(false);
                assert_eq!(getter.join().unwrap(), Err(GetError::ShutDown));
            }

            #[test]
            fn test_shutdown_pending_put() {
                let q = Q::new(1);
                q.put(1).unwrap();
                let putter = {
                    let q = q.clone();
                    thread::spawn(move || q.put(2))
                };
                thread::sleep(Duration::from_millis(20));
                q.shutdown(false);
                assert_eq!(putter.join().unwrap(), Err(PutError::ShutDown(2)));
                assert_eq!(q.get(), Ok(1));
            }

            fn shutdown_put_join(immediate: bool) {
                let q = Q::new(2);
                q.put(1).unwrap();
                let go = Arc::new(Barrier::new(3));
                let putter = {
                    let (q, go) = (q.clone(), Arc::clone(&go));
                    thread::spawn(move || {
                        go.wait();
                        q.put(9)
                    })
                };
                let joiner = {
                    let (q, go) = (q.clone(), Arc::clone(&go));
                    thread::spawn(move || {
                        go.wait();
                        q.join();
                        true
                    })
                };
                assert_eq!(q.unfinished(), 1);
                q.shutdown(immediate);
                go.wait();
                if immediate {
                    assert_eq!(q.get_nowait(), Err(GetError::ShutDown));
                } else {
                    assert_eq!(q.get(), Ok(1));
                    q.task_done().unwrap();
                }
                assert_eq!(putter.join().unwrap(), Err(PutError::ShutDown(9)));
                assert!(joiner.join().unwrap());
            }

            #[test]
            fn test_shutdown_put_join() {
                shutdown_put_join(false);
            }

            #[test]
            fn test_shutdown_immediate_put_join() {
                shutdown_put_join(true);
            }

            fn shutdown_get_task_done_join(immediate: bool) {
                let q = Q::new(2);
                q.put(1).unwrap();
                q.put(2).unwrap();
                assert_eq!(q.unfinished(), q.qsize());
                let go = Arc::new(Barrier::new(5));
                let mut threads = Vec::new();
                for _ in 0..2 {
                    let (q, go) = (q.clone(), Arc::clone(&go));
                    threads.push(thread::spawn(move || {
                        go.wait();
                        match q.get() {
                            Ok(_) => q.task_done().is_ok(),
                            Err(e) => e == GetError::ShutDown,
                        }
                    }));
                }
                for _ in 0..2 {
                    let (q, go) = (q.clone(), Arc::clone(&go));
                    threads.push(thread::spawn(move || {
                        go.wait();
                        q.join();
                        true
                    }));
                }
                go.wait();
                q.shutdown(immediate);
                for t in threads {
                    assert!(t.join().unwrap());
                }
            }

            #[test]
            fn test_shutdown_get_task_done_join() {
                shutdown_get_task_done_join(false);
            }

            #[test]
            fn test_shutdown_immediate_get_task_done_join() {
                shutdown_get_task_done_join(true);
            }

            /// CPython's `test_many_threads` (from the SimpleQueue tests):
            /// several feeders and consumers, every number got exactly once.
            #[test]
            fn test_many_threads() {
                let q = Q::new(4);
                let n = 2_000i64;
                let feeders: Vec<_> = (0..3)
                    .map(|f| {
                        let q = q.clone();
                        thread::spawn(move || {
                            for i in (f..n).step_by(3) {
                                q.put(i).unwrap();
                            }
                        })
                    })
                    .collect();
                let consumers: Vec<_> = (0..3)
                    .map(|_| {
                        let q = q.clone();
                        thread::spawn(move || {
                            let mut got = Vec::new();
                            while let Ok(x) = q.get() {
                                got.push(x);
                                q.task_done().unwrap();
                            }
                            got
                        })
                    })
                    .collect();
                for f in feeders {
                    f.join().unwrap();
                }
                q.join();
                q.shutdown(false);
                let mut all: Vec<i64> = consumers
                    .into_iter()
                    .flat_map(|c| c.join().unwrap())
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
    };
}

suite!(queue, Queue, [111, 333, 222]);
suite!(lifo_queue, LifoQueue, [222, 333, 111]);
suite!(priority_queue, PriorityQueue, [111, 222, 333]);
