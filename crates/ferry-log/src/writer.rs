//! The writing side: appends gather in a pending batch; a caller that
//! waits for its records (`Log::lead` in sync mode, `Log::write_now` in
//! async mode) or the writer thread writes each batch with one `write`,
//! fsyncs it (sync mode: every batch, group commit; async mode: at least
//! every second), moves on to a new preallocated segment when one is
//! full, and publishes how far the log is durable. A failed write or fsync
//! is fatal and never retried.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::{info, warn};

use crate::histogram::Histogram;
use crate::segment::{HEADER, NewSegment, create_segment};
use crate::{Durability, LogError, LogFile, Lsn, OnDurable, OnError, Options, Storage};

/// Records appended and not yet written.
pub(crate) struct Pending {
    pub(crate) buf: Vec<u8>,
    pub(crate) last: Lsn,
    pub(crate) closing: bool,
    /// A new segment must start at this offset of `buf` (see
    /// [`Log::start_segment`]).
    pub(crate) rotate_at: Option<usize>,
    /// Sync mode: the writer thread sleeps until an append wakes it.
    pub(crate) idle: bool,
    /// Sync mode: a caller left its batch to the writer thread (the disk
    /// is slow), which syncs it at once.
    pub(crate) handed: bool,
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
    /// How long the last one took, in µs.
    pub(crate) last_fsync_micros: AtomicU64,
    /// Records per write (in sync mode, per fsync: the group commit).
    pub(crate) batch_records: Histogram,
    /// Bytes in all segments.
    pub(crate) bytes: AtomicU64,
    /// Sequence number of the segment begun by the last `start_segment`.
    pub(crate) started: AtomicU64,
    /// The last new segment could not be preallocated: the disk is full.
    pub(crate) short: AtomicBool,
    /// The data directory's salt: every frame's checksums are seeded with it.
    pub(crate) salt: u32,
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
    /// durable. Any thread may call it; batches go out in order. The
    /// `on_durable` hook is told by [`Inner::report`], once the caller
    /// has let the segment go: a task it wakes may sync the next batch.
    pub(crate) fn flush(&self, seg: &mut Segment) -> Flushed {
        let (batch, upto, closing, rotate_at) = {
            let mut p = self.pending.lock();
            let spare = std::mem::take(&mut seg.spare);
            let batch = std::mem::replace(&mut p.buf, spare);
            (batch, p.last, p.closing, p.rotate_at.take())
        };
        let result = match rotate_at {
            Some(at) => seg
                .write(self, &batch[..at], closing)
                .and_then(|()| seg.rotate(self, true))
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
                let published = upto > self.durable.load(Ordering::Acquire);
                if published {
                    self.durable.store(upto, Ordering::Release);
                }
                Flushed {
                    ok: true,
                    durable: published.then_some(upto),
                }
            }
            Err(e) => {
                // Never retried: after a failed fsync the kernel may have
                // dropped the dirty pages, so a retry could "succeed" without
                // the data.
                if !self.failed.swap(true, Ordering::AcqRel) {
                    (self.on_error)(&e);
                }
                Flushed {
                    ok: false,
                    durable: None,
                }
            }
        }
    }

    /// Tells `on_durable` what a flush made durable; call it after letting
    /// the segment go. False if the log failed.
    pub(crate) fn report(&self, flushed: Flushed) -> bool {
        if let Some(upto) = flushed.durable {
            (self.on_durable)(upto);
        }
        flushed.ok
    }
}

/// What [`Inner::flush`] did.
#[must_use]
pub(crate) struct Flushed {
    ok: bool,
    durable: Option<Lsn>,
}

pub(crate) struct Writer {
    pub(crate) inner: Arc<Inner>,
    /// Held for as long as the writer runs: the directory's lock.
    pub(crate) _lock: File,
}

/// Sync mode: how long records may wait for a task to sync them
/// ([`Log::lead`]) before the writer thread does.
const ORPHAN: Duration = Duration::from_millis(2);

/// Sync mode: after an fsync slower than this (µs), callers leave the
/// next ones to the writer thread ([`Log::lead`]): a caller that syncs
/// holds up its own thread — a tokio worker and all its connections —
/// for as long as the fsync takes.
pub(crate) const LEAD_FSYNC_MAX_MICROS: u64 = 1000;

impl Writer {
    pub(crate) fn run(self) {
        let inner = &self.inner;
        let durability = inner.segment.lock().options.durability;
        loop {
            let closing = {
                let mut p = inner.pending.lock();
                match durability {
                    Durability::Sync => inner.await_orphans(&mut p),
                    Durability::Async => inner.await_async(&mut p),
                }
                p.closing
            };
            if inner.failed.load(Ordering::Acquire) {
                return;
            }
            let mut seg = inner.segment.lock();
            let flushed = inner.flush(&mut seg);
            let stop = closing && inner.pending.lock().buf.is_empty();
            if stop {
                // A clean stop leaves the segment cut to its data.
                let len = seg.len;
                if let Err(e) = seg.file.truncate(len) {
                    warn!(error = %e, "cannot cut the last segment's preallocated space");
                }
            }
            drop(seg);
            if !inner.report(flushed) || stop {
                return;
            }
        }
    }
}

impl Inner {
    /// Sync mode: the tasks that wait for their records sync them, on
    /// their own thread; this one returns when records have waited
    /// [`ORPHAN`] with nobody syncing (a lease expiring on a timer, whose
    /// record no reply waits for), or to close or rotate.
    fn await_orphans(&self, p: &mut MutexGuard<'_, Pending>) {
        loop {
            if p.closing || p.rotate_at.is_some() || std::mem::take(&mut p.handed) {
                return;
            }
            if p.buf.is_empty() {
                // The next append wakes it.
                p.idle = true;
                self.wake.wait(p);
                p.idle = false;
                continue;
            }
            let seen = p.last;
            self.wake.wait_for(p, ORPHAN);
            if self.durable.load(Ordering::Acquire) < seen {
                return;
            }
        }
    }

    /// Async mode: callers write their own records ([`Log::write_now`]);
    /// this thread returns for records nobody wrote, to fsync once the
    /// second is up, or to close or rotate.
    fn await_async(&self, p: &mut MutexGuard<'_, Pending>) {
        loop {
            if !p.buf.is_empty() || p.closing || p.rotate_at.is_some() {
                return;
            }
            let due = MutexGuard::unlocked(p, || {
                let seg = self.segment.lock();
                seg.dirty.then_some(seg.next_sync)
            });
            if !p.buf.is_empty() || p.closing || p.rotate_at.is_some() {
                return;
            }
            match due {
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        return;
                    }
                    self.wake.wait_for(p, at - now);
                }
                // Look for records nobody wrote once a second.
                None => {
                    self.wake.wait_for(p, Duration::from_secs(1));
                }
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
                self.rotate(inner, false)?;
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
            let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            inner.fsync_micros.observe(took);
            inner.last_fsync_micros.store(took, Ordering::Relaxed);
            inner.syncs.fetch_add(1, Ordering::Relaxed);
            self.dirty = false;
            self.next_sync = Instant::now() + Duration::from_secs(1);
        }
        Ok(())
    }

    /// Moves on to a new, preallocated segment and cuts the old one to its
    /// data. If the disk has no room for one, a segment that must begin
    /// (a checkpoint's: the segments before it can go only then) begins
    /// unpreallocated; otherwise the log stays (replying false). Either way
    /// it reports [`Log::short_of_space`](crate::Log::short_of_space) until
    /// a segment is preallocated again (see [`Segment::regain`]).
    fn rotate(&mut self, inner: &Inner, must: bool) -> io::Result<bool> {
        // The segment is synced before the next one exists: only the last
        // segment's end can be torn by a crash, and recovery takes a bad
        // end of any other for damage.
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        let size = self.options.segment_bytes;
        let new = NewSegment {
            seq: self.seq + 1,
            salt: inner.salt,
            prev_end: self.len,
        };
        let create = |len| create_segment(&*self.storage, &self.dir, new, len).map_err(to_io);
        let (next, short) = match create(size)? {
            Some(f) => (Some(f), false),
            None if must => (create(0)?, true),
            None => (None, true),
        };
        if short && !inner.short.swap(true, Ordering::AcqRel) {
            warn!(dir = %self.dir.display(), "the disk is too full to preallocate a log segment");
        }
        let Some(next) = next else {
            self.next_rotate = Instant::now() + Duration::from_secs(1);
            return Ok(false);
        };
        if !short && inner.short.swap(false, Ordering::AcqRel) {
            info!(dir = %self.dir.display(), "the log has room for its segments again");
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

    /// While the log is short of space: preallocates the segment being
    /// written, or (if it is already past its size) moves on to a new
    /// preallocated one, if the disk has room now.
    pub(crate) fn regain(&mut self, inner: &Inner) -> io::Result<()> {
        let size = self.options.segment_bytes;
        let room = crate::space::free_space(&self.dir).unwrap_or(u64::MAX);
        let needed = if self.len >= size {
            size
        } else {
            size - self.len
        };
        if room < needed {
            return Ok(());
        }
        if self.len >= size {
            self.rotate(inner, false)?;
            return Ok(());
        }
        let path = self.dir.join(crate::segment::segment_name(self.seq));
        let room = crate::segment::preallocate(&mut *self.file, size, &path).map_err(to_io)?;
        if room && inner.short.swap(false, Ordering::AcqRel) {
            info!(dir = %self.dir.display(), "the log has room for its segments again");
        }
        Ok(())
    }
}

/// The I/O error a log error stands for (the writer reports those).
fn to_io(e: LogError) -> io::Error {
    match e {
        LogError::Io(_, e) => e,
        other => io::Error::other(other.to_string()),
    }
}
