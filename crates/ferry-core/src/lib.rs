//! ferry's heart: the queue semantics of SPEC §1, written once.
//!
//! # Layout
//!
//! - [`engine`]: one queue as a state machine — ready, delayed, leased and
//!   taken messages, the counters Python defines, first-come first-served
//!   waiters, shutdown, attempts and dead-lettering. No I/O, no threads, no
//!   clock: every front end (the in-process queues below, the broker) drives
//!   the same engine and passes time in.
//! - [`sync`]: the in-process tier for threads — [`Queue`], [`LifoQueue`],
//!   [`PriorityQueue`] and [`JoinableQueue`], with Python's `queue` API and
//!   meaning: the fifo queue lock-free until a thread must wait, the others
//!   built on the engine with a mutex and a condition variable per
//!   sleeping thread.
//!
//! # Example
//!
//! The producer–consumer model, with threads:
//!
//! ```
//! use ferry_core::JoinableQueue;
//! use std::thread;
//!
//! let q = JoinableQueue::new(8);
//! let consumer = {
//!     let q = q.clone();
//!     thread::spawn(move || {
//!         let mut sum = 0;
//!         while let Ok(n) = q.get() {
//!             sum += n;
//!             q.task_done().unwrap();
//!         }
//!         sum
//!     })
//! };
//! for n in 1..=100 {
//!     q.put(n).unwrap();
//! }
//! q.join(); // every item was got and task_done
//! q.shutdown(false); // the consumer's next get fails with ShutDown
//! assert_eq!(consumer.join().unwrap(), 5050);
//! ```

pub mod engine;
pub mod sync;

pub use sync::{GetError, JoinableQueue, LifoQueue, PriorityQueue, PutError, Queue, TaskDoneError};
