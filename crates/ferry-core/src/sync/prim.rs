//! The synchronisation primitives of the in-process tier, behind four
//! functions and the atomics: parking_lot's and std's, or shuttle's under
//! the `shuttle` feature so that its scheduler can explore the
//! interleavings of the blocking core (`tests/shuttle.rs`). The fifo
//! queue's lock-free containers (crossbeam's) are not instrumented: under
//! shuttle each push and pop is one step.
//!
//! parking_lot rather than std: measured with `cargo bench --bench
//! inprocess`, its adaptive spinning more than tripled throughput with four
//! producers and four consumers (2.0 → 6.7 M items/s) and added a quarter
//! with one of each, because every put, get and task_done takes the lock.
//! It does not poison: a panic in user code under the lock (an item's
//! `Ord`) leaves the queue usable.

use std::time::Duration;

#[cfg(not(feature = "shuttle"))]
pub(super) use parking_lot::{Condvar, Mutex, MutexGuard};
#[cfg(not(feature = "shuttle"))]
pub(super) use std::sync::Arc;

#[cfg(not(feature = "shuttle"))]
pub(super) use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(feature = "shuttle"))]
pub(super) use std::thread::yield_now;

#[cfg(not(feature = "shuttle"))]
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock()
}

#[cfg(not(feature = "shuttle"))]
pub(super) fn wait<'a, T>(signal: &Condvar, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    signal.wait(&mut guard);
    guard
}

#[cfg(not(feature = "shuttle"))]
pub(super) fn wait_timeout<'a, T>(
    signal: &Condvar,
    mut guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    signal.wait_for(&mut guard, timeout);
    guard
}

#[cfg(feature = "shuttle")]
pub(super) use shuttle::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
#[cfg(feature = "shuttle")]
pub(super) use shuttle::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(feature = "shuttle")]
pub(super) use shuttle::thread::yield_now;

#[cfg(feature = "shuttle")]
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(feature = "shuttle")]
pub(super) fn wait<'a, T>(signal: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    signal.wait(guard).unwrap_or_else(|e| e.into_inner())
}

#[cfg(feature = "shuttle")]
pub(super) fn wait_timeout<'a, T>(
    signal: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    signal
        .wait_timeout(guard, timeout)
        .map_or_else(|e| e.into_inner().0, |(guard, _)| guard)
}
