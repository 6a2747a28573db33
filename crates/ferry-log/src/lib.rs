//! ferry's segmented append-only log: checksummed records, group commit,
//! crash recovery. No tokio: a writer thread owns the files.
//!
//! # Layout on disk
//!
//! A data directory holds a `LOCK` file (locked while a log is open, so
//! two brokers cannot share a directory) and segments named by a
//! zero-padded sequence number, `00000000000000000001.log`, … Each segment
//! opens with a header — the magic `FERRYLOG`, the format version, the
//! sequence number, a salt, where the previous segment's data ended, and
//! the header's own checksum — followed by records:
//!
//! ```text
//! len: u32 LE | crc(payload): u32 LE | crc(len, crc): u32 LE | payload: len bytes
//! ```
//!
//! (the `segment` module has the details, and the older formats it reads).
//! Records are never empty, so an all-zero frame cannot be one: it marks
//! the end of the data. A segment is **preallocated** to its full size when
//! it is created (`fallocate`), so that a record lands in blocks the disk
//! already reserved — an fsync then commits data, not a new file length
//! (measured on this project's ext4 disk: about 1.5× the fsyncs a second),
//! and a disk that fills up cannot stop gets and dones from being logged.
//! The zeros after the last record are not data; a segment is cut to its
//! data when the log moves past it or closes. If the disk is too full for a
//! new segment, the log keeps writing the current one and reports
//! [`Log::short_of_space`] so the caller can refuse new work.
//!
//! # Writing
//!
//! [`Log::append`] copies a record into the pending batch and returns its
//! log sequence number at once; it never touches the disk. In
//! [`Durability::Sync`] a caller that waits for its record takes the whole
//! batch on its own thread ([`Log::lead`]), writes it with one `write` and
//! calls `fdatasync` once for all of it (group commit); the writer thread
//! does the same for records nobody leads within 2 ms, and for every batch
//! while fsyncs take over 1 ms. Either reports the highest durable
//! sequence number through the `on_durable` hook. In [`Durability::Async`]
//! callers write their own records ([`Log::write_now`]) and the writer
//! thread syncs at least once a second. A write or sync error is fatal:
//! the `on_error` hook is told, and every later append fails.
//!
//! # Recovery
//!
//! [`Log::open`] replays every whole record, oldest first. Only the end of
//! the **last** segment can be torn by a crash: a bad stretch there with
//! nothing whole after it (or zeros where a frame must be: a write the
//! disk did not finish) is cut off and reported — a damaged last record
//! looks the same and is cut too, its bytes kept in `damaged/`. Anything else is damage:
//! opening fails and nothing is changed, unless `salvage` is set, which
//! skips only the damaged stretches and keeps the damaged segments aside
//! (the `recovery` module has the rules).

// Layout: `segment` (file names, header, preallocation, the check of a
// segment's bytes), `recovery` (read, check and replay at open, cut a torn
// tail, ready the segment to append to), `writer` (the pending batch, the
// writer thread, group commit, rotation), `storage` (the I/O seam and its
// fault injector).
pub mod histogram;
mod recovery;
mod segment;
mod space;
mod storage;
mod writer;

pub use recovery::{DAMAGED_DIR, inspect};
pub use segment::segments;
pub use space::RESERVE_FILE;
pub use storage::{Faults, LogFile, RealStorage, Storage};

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use histogram::Histogram;
use recovery::recover;
use segment::{FRAME, frame_record, sync_dir};
use writer::{Inner, Pending, Segment, Writer};

/// A log sequence number: the count of records appended since open.
pub type Lsn = u64;

/// Largest record accepted; anything longer in a file is corruption.
pub const MAX_RECORD: usize = 256 << 20;

/// When an append counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After its batch is fsynced (group commit).
    Sync,
    /// After its batch is written; fsync at least every second.
    Async,
}

/// How to open a log.
#[derive(Clone)]
pub struct Options {
    /// When appends count as durable.
    pub durability: Durability,
    /// A new segment starts once the current one is this large.
    pub segment_bytes: u64,
    /// Skip damaged stretches (keeping the damaged segments aside)
    /// instead of refusing to open.
    pub salvage: bool,
    /// How files are reached: the real file system, or a fault injector.
    pub storage: Arc<dyn Storage>,
    /// Room kept in a preallocated file ([`RESERVE_FILE`]) for the day the
    /// disk fills: released then, so that dones and compaction go on
    /// (0: none).
    pub reserve_bytes: u64,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("segment_bytes", &self.segment_bytes)
            .field("salvage", &self.salvage)
            .field("reserve_bytes", &self.reserve_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            segment_bytes: 64 << 20,
            salvage: false,
            storage: Arc::new(RealStorage),
            reserve_bytes: 16 << 20,
        }
    }
}

/// Why a log could not be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another process holds the directory's lock.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The log is damaged: not an end a crash can tear.
    #[error(
        "damaged log: {path} at byte {offset}: {reason}; {following} whole record(s) follow it, so it is not a torn end (start with --salvage to skip only the damage and keep every whole record; salvage keeps the damaged segment in damaged/)"
    )]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// Whole records after it, in this segment and the later ones.
        following: u64,
    },
    /// The replay callback refused a record.
    #[error("cannot replay {path} at byte {offset}: {reason}")]
    Replay {
        /// The segment.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// The callback's reason.
        reason: String,
    },
    /// An earlier write or sync failed; the log accepts nothing more.
    #[error("the log failed earlier and accepts no more records")]
    Failed,
    /// A record over [`MAX_RECORD`].
    #[error("record of {0} bytes is too large for the log")]
    TooLarge(usize),
    /// An empty record: the log cannot tell one from preallocated space.
    #[error("an empty record cannot be logged")]
    Empty,
    /// An I/O error.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
}

pub(crate) fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> LogError {
    let what = what.to_string();
    move |e| LogError::Io(what, e)
}

/// What recovery found.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// Segments read.
    pub segments: usize,
    /// The last segment's end, cut off.
    pub cut: Option<Cut>,
    /// Damage salvage skipped.
    pub skipped: Vec<Skipped>,
    /// Where salvage kept the damaged segments (under `damaged/`).
    pub kept: Vec<PathBuf>,
}

impl Recovery {
    /// Salvage skipped damage: the caller should write a checkpoint, so
    /// that the damaged segments leave the log.
    pub fn salvaged(&self) -> bool {
        !self.skipped.is_empty()
    }
}

/// The end of the last segment, cut off at open: torn by a crash, or a
/// damaged last record — the two leave the same bytes.
#[derive(Clone, Debug)]
pub struct Cut {
    /// The segment.
    pub path: PathBuf,
    /// Where it was cut.
    pub offset: u64,
    /// Bytes cut off.
    pub bytes: u64,
    /// Whole records cut with them: they followed zeros where a frame must
    /// be, a write the disk did not finish (none was synced).
    pub records: u64,
    /// Where the cut bytes were kept (`None` if they could not be, or the
    /// log was only inspected).
    pub kept: Option<PathBuf>,
}

/// A damaged stretch salvage skipped.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// The segment.
    pub path: PathBuf,
    /// Where the stretch starts.
    pub offset: u64,
    /// Its length (0: damage between segments, such as one missing).
    pub len: u64,
    /// What is wrong.
    pub reason: String,
    /// The damaged record's first bytes after its frame (at most 4 KiB),
    /// for a caller that can tell what it held.
    pub record: Vec<u8>,
}

/// Called with the highest durable sequence number after each batch.
pub type OnDurable = Box<dyn Fn(Lsn) + Send + Sync>;
/// Called once if a write or sync fails.
pub type OnError = Box<dyn Fn(&io::Error) + Send + Sync>;

/// An open log. Appends from any thread; the callers that wait for their
/// records and a writer thread do the I/O.
pub struct Log {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    durability: Durability,
    reserve: space::Reserve,
}

impl Log {
    /// Opens (or creates) the log in `dir`, replaying every record into
    /// `replay`, then starts the writer thread.
    pub fn open(
        dir: &Path,
        options: Options,
        mut replay: impl FnMut(&[u8]) -> Result<(), String>,
        on_durable: OnDurable,
        on_error: OnError,
    ) -> Result<(Log, Recovery), LogError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LogError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", lock_path.display()))(e));
            }
        }
        // Released first if the disk is full: recovery may need room.
        let reserve = space::Reserve::open(&*options.storage, dir, options.reserve_bytes);
        let resumed = recover(dir, &options, &mut replay)?;
        if !resumed.short
            && space::free_space(dir).is_ok_and(|free| free >= 3 * options.reserve_bytes)
        {
            reserve.make(&*options.storage, false);
        }
        let storage = Arc::clone(&options.storage);
        let durability = options.durability;
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(64 << 10),
                last: 0,
                closing: false,
                rotate_at: None,
                idle: false,
                handed: false,
            }),
            segment: Mutex::new(Segment {
                dir: dir.to_path_buf(),
                storage: Arc::clone(&storage),
                file: resumed.file,
                seq: resumed.seq,
                len: resumed.len,
                options,
                dirty: false,
                next_sync: Instant::now() + Duration::from_secs(1),
                next_rotate: Instant::now(),
                spare: Vec::with_capacity(64 << 10),
                written: 0,
            }),
            wake: Condvar::new(),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            fsync_micros: Histogram::new(histogram::FSYNC_MICROS),
            last_fsync_micros: AtomicU64::new(0),
            batch_records: Histogram::new(histogram::BATCH_RECORDS),
            bytes: AtomicU64::new(resumed.sealed + resumed.len),
            started: AtomicU64::new(0),
            short: AtomicBool::new(resumed.short),
            salt: resumed.salt,
            on_durable,
            on_error,
        });
        let writer = Writer {
            inner: Arc::clone(&inner),
            _lock: lock,
        };
        let handle = std::thread::Builder::new()
            .name("ferry-log".into())
            .spawn(move || writer.run())
            .map_err(io_err("starting the log writer"))?;
        Ok((
            Log {
                inner,
                writer: Mutex::new(Some(handle)),
                dir: dir.to_path_buf(),
                storage,
                durability,
                reserve,
            },
            resumed.recovery,
        ))
    }

    /// Appends one record built by `write` into the pending batch; replies
    /// its sequence number. It is durable once [`Log::durable`] reaches it.
    pub fn append_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<Lsn, LogError> {
        if self.inner.failed.load(Ordering::Acquire) {
            return Err(LogError::Failed);
        }
        let mut p = self.inner.pending.lock();
        let at = p.buf.len();
        p.buf.extend_from_slice(&[0u8; FRAME]);
        write(&mut p.buf);
        let len = p.buf.len() - at - FRAME;
        if len == 0 || len > MAX_RECORD {
            p.buf.truncate(at);
            return Err(if len == 0 {
                LogError::Empty
            } else {
                LogError::TooLarge(len)
            });
        }
        frame_record(&mut p.buf, at, self.inner.salt);
        p.last += 1;
        let lsn = p.last;
        // In async mode whoever waits for the record writes it
        // ([`Log::write_now`]) and the writer thread comes by every second;
        // waking it per batch cost a context switch each (measured: 40 %
        // of the broker's time went to task switches at 1 M msg/s).
        if self.durability == Durability::Sync && p.idle {
            p.idle = false;
            self.inner.wake.notify_one();
        }
        drop(p);
        Ok(lsn)
    }

    /// Appends one record.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, LogError> {
        self.append_with(|buf| buf.extend_from_slice(payload))
    }

    /// In async mode, writes what is pending on the calling thread right
    /// away (no fsync: the writer thread does that every second), so that a
    /// reply waits for no other thread. In sync mode it does nothing (see
    /// [`Log::lead`]). False if the log failed.
    pub fn write_now(&self) -> bool {
        if self.durability != Durability::Async {
            return !self.failed();
        }
        if self.failed() {
            return false;
        }
        let mut seg = self.inner.segment.lock();
        if self.inner.pending.lock().buf.is_empty() {
            return true;
        }
        let flushed = self.inner.flush(&mut seg);
        drop(seg);
        self.inner.report(flushed)
    }

    /// In sync mode, writes and fsyncs what is pending on the calling
    /// thread (group commit without a thread hand-off), unless another
    /// thread is at it or the disk is slow (the last fsync took over
    /// 1 ms: the writer thread is asked to, so as not to hold up the
    /// caller's thread). `None` then: `on_durable` reports after that
    /// thread lets the log go, so a waiter it does not cover can lead the
    /// next batch. Otherwise false if the log failed. In async mode it
    /// does nothing (`Some`).
    pub fn lead(&self) -> Option<bool> {
        if self.durability != Durability::Sync {
            return Some(!self.failed());
        }
        if self.failed() {
            return Some(false);
        }
        if self.inner.last_fsync_micros.load(Ordering::Relaxed) > writer::LEAD_FSYNC_MAX_MICROS {
            self.inner.pending.lock().handed = true;
            self.inner.wake.notify_one();
            return None;
        }
        let mut seg = self.inner.segment.try_lock()?;
        let flushed = self.inner.flush(&mut seg);
        drop(seg);
        Some(self.inner.report(flushed))
    }

    /// The highest sequence number that is durable (written, in async mode).
    pub fn durable(&self) -> Lsn {
        self.inner.durable.load(Ordering::Acquire)
    }

    /// The highest sequence number appended so far.
    pub fn appended(&self) -> Lsn {
        self.inner.pending.lock().last
    }

    /// Makes the records appended from now on go to a new segment; once
    /// they are durable, [`Log::started_segment`] names it. Compaction
    /// writes a snapshot after this, then deletes the older segments.
    pub fn start_segment(&self) {
        let mut p = self.inner.pending.lock();
        let at = p.buf.len();
        p.rotate_at = Some(at);
    }

    /// The sequence number of the segment begun by the last
    /// [`Log::start_segment`] that the writer carried out (0: none yet).
    pub fn started_segment(&self) -> u64 {
        self.inner.started.load(Ordering::Acquire)
    }

    /// Deletes every segment numbered below `seq` (never the one being
    /// written), oldest first, syncing the directory after each: a crash
    /// part way leaves the log without its oldest segments, never with a
    /// gap (which recovery takes for damage). Replies the bytes freed.
    pub fn delete_before(&self, seq: u64) -> Result<u64, LogError> {
        let mut freed = 0;
        for (s, path) in
            segments(&self.dir).map_err(io_err(format!("listing {}", self.dir.display())))?
        {
            if s >= seq {
                break;
            }
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.storage
                .remove(&path)
                .map_err(io_err(format!("removing {}", path.display())))?;
            sync_dir(&*self.storage, &self.dir)?;
            freed += len;
        }
        self.inner.bytes.fetch_sub(
            freed.min(self.inner.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        Ok(freed)
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Acquire)
    }

    /// fsyncs done since open.
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// How long fsyncs took, in µs, since open.
    pub fn fsync_latency(&self) -> histogram::Snapshot {
        self.inner.fsync_micros.snapshot()
    }

    /// Records per write since open (in sync mode, per fsync: the group
    /// commit's size).
    pub fn batch_sizes(&self) -> histogram::Snapshot {
        self.inner.batch_records.snapshot()
    }

    /// Segment files in the log's directory.
    pub fn segment_count(&self) -> io::Result<usize> {
        segments(&self.dir).map(|s| s.len())
    }

    /// True while the disk is too full for a new segment: the log goes on
    /// in the current one, past its size, and the caller should refuse new
    /// work. Cleared when a new segment is preallocated again.
    pub fn short_of_space(&self) -> bool {
        self.inner.short.load(Ordering::Acquire)
    }

    /// Free space on the log's disk, counting the reserve while it is
    /// held (it is released before the log runs out).
    pub fn room(&self) -> u64 {
        let free = space::free_space(&self.dir).unwrap_or(u64::MAX);
        let reserve = if self.reserve.held() {
            self.reserve.size()
        } else {
            0
        };
        free.saturating_add(reserve)
    }

    /// Looks after the disk (call it every second or so; it may touch the
    /// disk): releases the reserve when free space falls below its size and
    /// makes it again once there is room, and while the log is
    /// [short of space](Log::short_of_space) tries again to preallocate
    /// its segment, so that normal service comes back once space frees.
    pub fn tend_space(&self) {
        let Ok(free) = space::free_space(&self.dir) else {
            return;
        };
        space::tend(&*self.storage, &self.reserve, free, self.short_of_space());
        if self.short_of_space() && !self.failed() {
            // Never waits for a writer: the next call tries again.
            if let Some(mut seg) = self.inner.segment.try_lock()
                && let Err(e) = seg.regain(&self.inner)
            {
                drop(seg);
                self.fail(e);
            }
        }
    }

    /// Stops the log as a failed write does: `on_error` is told (once),
    /// nothing more is appended, and nothing more becomes durable. For a
    /// caller that cannot log a change it has made.
    pub fn fail(&self, error: io::Error) {
        if !self.inner.failed.swap(true, Ordering::AcqRel) {
            (self.inner.on_error)(&error);
        }
    }

    /// True once a write or sync failed.
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes and syncs everything appended, then stops the writer thread.
    pub fn close(&self) {
        self.inner.pending.lock().closing = true;
        self.inner.wake.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

/// Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`):
/// not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz {
    use crate::segment::{FRAME, HEADER, encode_header, frame_record, scan};

    /// The salt of the fuzzed segment.
    const SALT: u32 = 0x5eed_f00d;

    /// Frames a record as the writer does.
    pub fn frame(record: &[u8], out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; FRAME]);
        out.extend_from_slice(record);
        frame_record(out, at, SALT);
    }

    /// Checks `body` as recovery checks a segment's bytes after a good
    /// header; replies the records it accepts, in order.
    pub fn records(body: &[u8]) -> Vec<Vec<u8>> {
        let mut seg = Vec::with_capacity(HEADER + body.len());
        seg.extend_from_slice(&encode_header(7, SALT, 0));
        seg.extend_from_slice(body);
        let s = scan(&seg, 7);
        assert!(s.keep() <= seg.len() && s.end <= seg.len());
        for pair in s.bad.windows(2) {
            assert!(pair[0].to <= pair[1].at, "bad stretches overlap");
        }
        s.records.iter().map(|&(a, b)| seg[a..b].to_vec()).collect()
    }
}

#[cfg(test)]
mod tests;
