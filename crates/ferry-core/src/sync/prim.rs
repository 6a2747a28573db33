//! The synchronisation primitives of the in-process tier: std's, or
//! shuttle's under the `shuttle` feature so that its scheduler can explore
//! the interleavings of the blocking core (`tests/shuttle.rs`).

#[cfg(not(feature = "shuttle"))]
pub(super) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
pub(super) use shuttle::sync::{Arc, Condvar, Mutex, MutexGuard};
