//! The writing side: appends gather in a pending batch; the writer thread
//! (or, in async mode, a caller of `Log::write_now`) writes each batch with
//! one `write`, fsyncs it (sync mode: every batch, group commit; async
//! mode: at least every second), moves on to a new preallocated segment
//! when one is full, and publishes how far the log is durable. A failed
//! write or fsync is fatal and never retried.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{info, warn};

use crate::histogram::Histogram;
use crate::segment::{HEADER, create_segment};
use crate::{Durability, LogError, LogFile, Lsn, OnDurable, OnError, Options, Storage};

/// Records appended and not yet written.
pub(crate) struct Pending {
    pub(crate) buf: Vec<u8>,
    pub(crate) last: Lsn,
    pub(crate) closing: bool,
    /// A new segment must start at this offset of `buf` (see
    /// [`Log::start_segment`]).
    pub(crate) rotate_at: Option<usize>,
}

/// What `Log` shares with its writer thread.
pub(crate) struct Inner {
    pub(crate) pending: Mutex<Pending>,
    pub(crate) segment: Mutex<Segment>,
    pub(crate) wake: Condvar,
    pub(crate) durable: AtomicU64,
    pub(crate) failed: AtomicBool,
    pub(crate) syncs: AtomicU64,
    /// How long each fsync took, in µs.
    pub(crate) fsync_micros: Histogram,
    /// Records per write (in sync mode, per fsync: the group commit).
    pub(crate) batch_records: Histogram,
    /// Bytes in all segments.
    pub(crate) bytes: AtomicU64,
    /// Sequence number of the segment begun by the last `start_segment`.
    pub(crate) started: AtomicU64,
    /// The last new segment could not be preallocated: the disk is full.
    pub(crate) short: AtomicBool,
    pub(crate) on_durable: OnDurable,
    pub(crate) on_error: OnError,
}

/// The segment being written, shared by the writer thread and (in async
/// mode) callers of `Log::write_now`. Lock order: this, then `pending`.
pub(crate) struct Segment {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) file: Box<dyn LogFile>,
    pub(crate) seq: u64,
    pub(crate) len: u64,
    pub(crate) options: Options,
    /// Written since the last fsync.
    pub(crate) dirty: bool,
    pub(crate) next_sync: Instant,
    /// After a full disk refused a new segment, when to try again.
    pub(crate) next_rotate: Instant,
    /// The pending buffer of the last batch, kept for reuse.
    pub(crate) spare: Vec<u8>,
    /// The last record written.
    pub(crate) written: Lsn,
}

impl Inner {
    /// Writes whatever is pending (and, in sync mode or when the second is
    /// up in async mode, fsyncs), then publishes how far the log is
    /// durable. Any thread may call it; batches go out in order.
    pub(crate) fn flush(&self, seg: &mut Segment) -> bool {
        let (batch, upto, closing, rotate_at) = {
            let mut p = self.pending.lock();
            let spare = std::mem::take(&mut seg.spare);
            let batch = std::mem::replace(&mut p.buf, spare);
            (batch, p.last, p.closing, p.rotate_at.take())
        };
        let result = match rotate_at {
            Some(at) => seg
                .write(self, &batch[..at], closing)
                .and_then(|()| seg.rotate(self))
                .map(|rotated| {
                    // Without a new segment (a full disk) nothing before the
                    // snapshot may be deleted.
                    if rotated {
                        self.started.store(seg.seq, Ordering::Release);
                    }
                })
                .and_then(|()| seg.write(self, &batch[at..], closing)),
            None => seg.write(self, &batch, closing),
        };
        if upto > seg.written {
            self.batch_records.observe(upto - seg.written);
            seg.written = upto;
        }
        let mut batch = batch;
        batch.clear();
        seg.spare = batch;
        match result {
            Ok(()) => {
                if upto > self.durable.load(Ordering::Acquire) {
                    self.durable.store(upto, Ordering::Release);
                    (self.on_durable)(upto);
                }
                true
            }
            Err(e) => {
                // Never retried: after a failed fsync the kernel may have
                // dropped the dirty pages, so a retry could "succeed" without
                // the data.
                if !self.failed.swap(true, Ordering::AcqRel) {
                    (self.on_error)(&e);
                }
                false
            }
        }
    }
}

pub(crate) struct Writer {
    pub(crate) inner: Arc<Inner>,
    /// Held for as long as the writer runs: the directory's lock.
    pub(crate) _lock: File,
}

impl Writer {
    pub(crate) fn run(self) {
        let inner = &self.inner;
        let async_mode = inner.segment.lock().options.durability == Durability::Async;
        loop {
            let closing = {
                let mut p = inner.pending.lock();
                loop {
                    if !p.buf.is_empty() || p.closing || p.rotate_at.is_some() {
                        break;
                    }
                    // In async mode, wake when the second is up for the fsync
                    // of what callers wrote themselves.
                    let due = {
                        drop(p);
                        let seg = inner.segment.lock();
                        let due = seg.dirty.then_some(seg.next_sync);
                        drop(seg);
                        p = inner.pending.lock();
                        due
                    };
                    if !p.buf.is_empty() || p.closing || p.rotate_at.is_some() {
                        break;
                    }
                    match due {
                        Some(at) => {
                            let now = Instant::now();
                            if now >= at {
                                break;
                            }
                            inner.wake.wait_for(&mut p, at - now);
                        }
                        // Async appends do not wake this thread: look for
                        // records nobody wrote (a lease expiring on a timer)
                        // once a second.
                        None if async_mode => {
                            inner.wake.wait_for(&mut p, Duration::from_secs(1));
                        }
                        None => inner.wake.wait(&mut p),
                    }
                }
                p.closing
            };
            if inner.failed.load(Ordering::Acquire) {
                return;
            }
            let mut seg = inner.segment.lock();
            if !inner.flush(&mut seg) {
                return;
            }
            if closing && inner.pending.lock().buf.is_empty() {
                // A clean stop leaves the segment cut to its data.
                let len = seg.len;
                if let Err(e) = seg.file.truncate(len) {
                    warn!(error = %e, "cannot cut the last segment's preallocated space");
                }
                return;
            }
        }
    }
}

impl Segment {
    fn write(&mut self, inner: &Inner, batch: &[u8], closing: bool) -> io::Result<()> {
        if !batch.is_empty() {
            if self.len > HEADER as u64
                && self.len + batch.len() as u64 > self.options.segment_bytes
                && Instant::now() >= self.next_rotate
            {
                self.rotate(inner)?;
            }
            self.file.write_all(batch)?;
            self.len += batch.len() as u64;
            inner.bytes.fetch_add(batch.len() as u64, Ordering::AcqRel);
            self.dirty = true;
        }
        let sync_now = match self.options.durability {
            Durability::Sync => self.dirty,
            Durability::Async => self.dirty && (closing || Instant::now() >= self.next_sync),
        };
        if sync_now {
            let start = Instant::now();
            self.file.sync_data()?;
            let took = start.elapsed().as_micros();
            inner
                .fsync_micros
                .observe(u64::try_from(took).unwrap_or(u64::MAX));
            inner.syncs.fetch_add(1, Ordering::Relaxed);
            self.dirty = false;
            self.next_sync = Instant::now() + Duration::from_secs(1);
        }
        Ok(())
    }

    /// Moves on to a new, preallocated segment and cuts the old one to its
    /// data. If the disk has no room for the new one, stays (replying
    /// false), reports [`Log::short_of_space`] and tries again a second
    /// later.
    fn rotate(&mut self, inner: &Inner) -> io::Result<bool> {
        let size = self.options.segment_bytes;
        let next =
            create_segment(&*self.storage, &self.dir, self.seq + 1, size).map_err(|e| match e {
                LogError::Io(_, e) => e,
                other => io::Error::other(other.to_string()),
            })?;
        let Some(next) = next else {
            if !inner.short.swap(true, Ordering::AcqRel) {
                warn!(dir = %self.dir.display(), "the disk is too full for a new log segment");
            }
            self.next_rotate = Instant::now() + Duration::from_secs(1);
            return Ok(false);
        };
        if inner.short.swap(false, Ordering::AcqRel) {
            info!(dir = %self.dir.display(), "the log has room for new segments again");
        }
        let len = self.len;
        self.file.truncate(len)?;
        self.file = next;
        self.seq += 1;
        self.len = HEADER as u64;
        self.dirty = false;
        inner.bytes.fetch_add(HEADER as u64, Ordering::AcqRel);
        Ok(true)
    }
}
