//! Room on the disk: a reserve kept for the day it fills, and the way back
//! once it frees.
//!
//! A full disk must not stop a broker: its consumers still need to log
//! dones, and compaction — which frees the space — needs room for a
//! snapshot. So the data directory holds `reserve`, a preallocated file of
//! [`Options::reserve_bytes`](crate::Options::reserve_bytes) (the idea of
//! CockroachDB's ballast file). When free space falls below its size (and
//! before recovery, at open) it is deleted, giving the log that much room;
//! it is made again once free space is back above three times its size.
//! While the log writes in a segment it could not preallocate it reports
//! [`Log::short_of_space`](crate::Log::short_of_space); [`tend`] retries
//! the preallocation, so that normal service comes back without waiting
//! for the next segment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use crate::Storage;

/// The reserve's file name, in the data directory.
pub const RESERVE_FILE: &str = "reserve";

/// Free space on the file system that holds `dir`, in bytes.
pub(crate) fn free_space(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The reserve file, and whether it is held.
pub(crate) struct Reserve {
    path: PathBuf,
    size: u64,
    held: AtomicBool,
}

impl Reserve {
    /// Finds the reserve in `dir`; releases it at once if the disk has
    /// less room than it holds, so that recovery has that much.
    pub(crate) fn open(storage: &dyn Storage, dir: &Path, size: u64) -> Reserve {
        let path = dir.join(RESERVE_FILE);
        if size == 0 {
            // None is kept: one an earlier run made goes.
            let _ = storage.remove(&path);
        }
        let held = size > 0 && std::fs::metadata(&path).is_ok_and(|m| m.len() >= size);
        let r = Reserve {
            path,
            size,
            held: AtomicBool::new(held),
        };
        if held && free_space(dir).is_ok_and(|free| free < size) {
            r.release(storage);
        }
        r
    }

    /// Its size when held.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Deletes it, freeing its room.
    pub(crate) fn release(&self, storage: &dyn Storage) {
        match storage.remove(&self.path) {
            Ok(()) => {
                self.held.store(false, Ordering::Release);
                warn!(
                    bytes = self.size,
                    file = %self.path.display(),
                    "the disk is nearly full: released the log's reserve so that gets, dones and compaction go on"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.held.store(false, Ordering::Release);
            }
            Err(e) => {
                warn!(error = %e, file = %self.path.display(), "cannot release the log's reserve")
            }
        }
    }

    /// Makes it (again): preallocated and synced, or nothing if the disk
    /// has no room.
    pub(crate) fn make(&self, storage: &dyn Storage, again: bool) {
        if self.size == 0 || self.held() {
            return;
        }
        let _ = storage.remove(&self.path);
        let made = storage.create(&self.path).and_then(|mut f| {
            f.preallocate(self.size)?;
            Ok(())
        });
        match made {
            Ok(()) => {
                self.held.store(true, Ordering::Release);
                if again {
                    info!(
                        bytes = self.size,
                        "the disk has room again: the log's reserve is back"
                    );
                }
            }
            Err(e) => {
                let _ = storage.remove(&self.path);
                if !again {
                    warn!(error = %e, bytes = self.size, "no room for the log's reserve; it is made once the disk has room");
                }
            }
        }
    }
}

/// What to do about the reserve, given the free space.
pub(crate) fn tend(storage: &dyn Storage, reserve: &Reserve, free: u64, short: bool) {
    if reserve.size() == 0 {
        return;
    }
    if reserve.held() && free < reserve.size() {
        reserve.release(storage);
    } else if !reserve.held() && !short && free >= 3 * reserve.size() {
        reserve.make(storage, true);
    }
}
