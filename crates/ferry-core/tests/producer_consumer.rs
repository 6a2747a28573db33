//! The seed's producer–consumer model with threads: 2 producers, 2
//! consumers, join, then shutdown.
#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::Duration;

use ferry_core::{GetError, JoinableQueue, PutError};

#[test]
fn two_producers_two_consumers_join_then_shutdown() {
    let q = JoinableQueue::new(8);
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..5_000 {
                    q.put(p * 5_000 + i).unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                let end = loop {
                    match q.get() {
                        Ok(x) => {
                            got.push(x);
                            q.task_done().unwrap();
                        }
                        Err(e) => break e,
                    }
                };
                (got, end)
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    q.join();
    assert_eq!(q.unfinished(), 0);
    assert!(q.empty());
    q.shutdown(false);
    assert_eq!(q.put(1), Err(PutError::ShutDown(1)));
    let mut all = Vec::new();
    for c in consumers {
        let (got, end) = c.join().unwrap();
        assert_eq!(
            end,
            GetError::ShutDown,
            "consumers end on ShutDown, not a timeout"
        );
        assert!(
            got.windows(2)
                .all(|w| w[0] < w[1] || w[0] / 5_000 != w[1] / 5_000),
            "per-producer order kept"
        );
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..10_000).collect::<Vec<_>>(),
        "every item got exactly once"
    );
}

#[test]
fn join_waits_for_the_last_task_done() {
    let q = JoinableQueue::new(0);
    q.put("job").unwrap();
    let worker = {
        let q = q.clone();
        thread::spawn(move || {
            let job = q.get().unwrap();
            thread::sleep(Duration::from_millis(50));
            q.task_done().unwrap();
            job
        })
    };
    assert!(
        !q.join_timeout(Duration::from_millis(10)),
        "join returned before task_done"
    );
    q.join();
    assert_eq!(worker.join().unwrap(), "job");
}
