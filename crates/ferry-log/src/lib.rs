//! ferry's segmented append-only log: checksummed records, group commit,
//! crash recovery. No tokio: a writer thread owns the files.
//!
//! # Layout on disk
//!
//! A data directory holds a `LOCK` file (locked while a log is open, so
//! two brokers cannot share a directory) and segments named by a
//! zero-padded sequence number, `00000000000000000001.log`, … Each segment
//! opens with a 20-byte header — the magic `FERRYLOG`, a little-endian u32
//! format version, the u64 sequence number — followed by records:
//!
//! ```text
//! len: u32 LE | crc32(payload): u32 LE | payload: len bytes
//! ```
//!
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
//! log sequence number at once; it never touches the disk. The writer
//! thread takes the whole batch, writes it with one `write`, and — in
//! [`Durability::Sync`] — calls `fdatasync` once for all of it (group
//! commit), then reports the highest durable sequence number through the
//! `on_durable` hook. In [`Durability::Async`] it reports after the write
//! and syncs at least once a second. A write or sync error is fatal: the
//! `on_error` hook is told, and every later append fails.
//!
//! # Recovery
//!
//! [`Log::open`] replays every record, oldest first. A record that is
//! short or fails its checksum in the **last** segment is a torn tail: the
//! segment is cut back to the last good record, synced, and the cut is
//! reported (a crash mid-write leaves exactly that). The same in an earlier
//! segment is corruption: opening fails and nothing is changed, unless
//! `salvage` is set, in which case the rest of that segment is skipped.

mod storage;

pub use storage::{Faults, LogFile, RealStorage, Storage};

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{info, warn};

/// A log sequence number: the count of records appended since open.
pub type Lsn = u64;

const MAGIC: &[u8; 8] = b"FERRYLOG";
/// The segment format written. Version 1 (before preallocation) had no
/// zero tails; it reads the same.
const VERSION: u32 = 2;
const HEADER: usize = 20;
const FRAME: usize = 8;
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
    /// Skip corrupt stretches of earlier segments instead of refusing to
    /// open.
    pub salvage: bool,
    /// How files are reached: the real file system, or a fault injector.
    pub storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("segment_bytes", &self.segment_bytes)
            .field("salvage", &self.salvage)
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
        }
    }
}

/// Why a log could not be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another process holds the directory's lock.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A record in the middle of the log is damaged.
    #[error("corrupt log: {path} at byte {offset}: {reason} (start with --salvage to skip it)")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
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

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> LogError {
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
    /// A torn tail cut off: the segment, the offset it was cut at, and how
    /// many bytes were dropped.
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Stretches skipped by salvage: segment and offset.
    pub skipped: Vec<(PathBuf, u64)>,
}

/// Called with the highest durable sequence number after each batch.
pub type OnDurable = Box<dyn Fn(Lsn) + Send + Sync>;
/// Called once if a write or sync fails.
pub type OnError = Box<dyn Fn(&io::Error) + Send + Sync>;

struct Pending {
    buf: Vec<u8>,
    last: Lsn,
    closing: bool,
    /// A new segment must start at this offset of `buf` (see
    /// [`Log::start_segment`]).
    rotate_at: Option<usize>,
}

struct Inner {
    pending: Mutex<Pending>,
    segment: Mutex<Segment>,
    wake: Condvar,
    durable: AtomicU64,
    failed: AtomicBool,
    syncs: AtomicU64,
    /// Bytes in all segments.
    bytes: AtomicU64,
    /// Sequence number of the segment begun by the last `start_segment`.
    started: AtomicU64,
    /// The last new segment could not be preallocated: the disk is full.
    short: AtomicBool,
    on_durable: OnDurable,
    on_error: OnError,
}

/// An open log. Appends from any thread; one writer thread does the I/O.
pub struct Log {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    durability: Durability,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// The segments in `dir`, by sequence number.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    storage
        .sync_dir(dir)
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

/// Reserves `len` bytes for a segment. Replies false if the disk is full;
/// a file system that cannot preallocate is let be (the log works without).
fn preallocate(f: &mut dyn LogFile, len: u64, path: &Path) -> Result<bool, LogError> {
    match f.preallocate(len) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| warn!(segment = %path.display(), "the file system cannot preallocate; segments grow as written"));
            Ok(true)
        }
        Err(e) => Err(io_err(format!("preallocating {}", path.display()))(e)),
    }
}

/// Creates segment `seq`, header written and synced, preallocated to
/// `len` bytes. `None` if the disk has no room for it (nothing is left
/// behind).
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    seq: u64,
    len: u64,
) -> Result<Option<Box<dyn LogFile>>, LogError> {
    let path = dir.join(segment_name(seq));
    let mut f = storage
        .create(&path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&seq.to_le_bytes());
    f.write_all(&header)
        .and_then(|()| f.sync_data())
        .map_err(io_err(format!("writing {}", path.display())))?;
    if !preallocate(&mut *f, len, &path)? {
        drop(f);
        storage
            .remove(&path)
            .map_err(io_err(format!("removing {}", path.display())))?;
        return Ok(None);
    }
    sync_dir(storage, dir)?;
    Ok(Some(f))
}

/// Creates segment `seq`, preallocated if the disk has room.
fn create_first_segment(
    storage: &dyn Storage,
    dir: &Path,
    seq: u64,
    len: u64,
    short: &mut bool,
) -> Result<Box<dyn LogFile>, LogError> {
    if let Some(f) = create_segment(storage, dir, seq, len)? {
        return Ok(f);
    }
    *short = true;
    create_segment(storage, dir, seq, 0)?.ok_or_else(|| {
        LogError::Io(
            format!("creating segment {seq}"),
            io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        )
    })
}

/// A check of one segment's bytes: the good records' payload ranges, and
/// where (and why) the first bad one starts, if any.
struct Scan {
    records: Vec<(usize, usize)>,
    bad: Option<(usize, &'static str)>,
    /// Where the good records end (any zeros after them are preallocated
    /// space).
    end: usize,
}

impl Scan {
    /// The bytes worth keeping: up to the first bad record, else the data.
    fn keep(&self) -> usize {
        self.bad.map_or(self.end, |(o, _)| o)
    }
}

fn scan(bytes: &[u8], seq: u64) -> Scan {
    let mut s = Scan {
        records: Vec::new(),
        bad: None,
        end: 0,
    };
    if bytes.len() < HEADER {
        s.bad = Some((0, "segment header is cut short"));
        return s;
    }
    if &bytes[..8] != MAGIC {
        s.bad = Some((0, "not a ferry log segment (bad magic)"));
        return s;
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(1..=VERSION).contains(&version) {
        s.bad = Some((0, "unknown segment format version"));
        return s;
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&bytes[12..20]);
    if u64::from_le_bytes(seq_bytes) != seq {
        s.bad = Some((0, "segment header names another sequence number"));
        return s;
    }
    let mut pos = HEADER;
    s.end = pos;
    while pos < bytes.len() {
        if bytes[pos..].iter().all(|&b| b == 0) {
            // Preallocated space: the data ends here.
            return s;
        }
        if bytes.len() - pos < FRAME {
            s.bad = Some((pos, "record frame is cut short"));
            return s;
        }
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len == 0 || len > MAX_RECORD {
            s.bad = Some((pos, "record length is impossible"));
            return s;
        }
        let start = pos + FRAME;
        if bytes.len() - start < len {
            s.bad = Some((pos, "record is cut short"));
            return s;
        }
        if crc32fast::hash(&bytes[start..start + len]) != crc {
            s.bad = Some((pos, "record checksum does not match"));
            return s;
        }
        s.records.push((start, start + len));
        pos = start + len;
        s.end = pos;
    }
    s
}

/// A segment read whole: its path, bytes and check.
type Checked = (PathBuf, Vec<u8>, Scan);

/// Every segment, as read and checked, and what replaying them found.
struct ReadAll {
    segs: Vec<(u64, PathBuf)>,
    checked: Vec<Checked>,
    recovery: Recovery,
}

/// Reads and checks every segment (refusing corruption before the last
/// one unless `salvage`), then replays their good records in order.
/// Changes nothing on disk.
fn read_all(
    storage: &dyn Storage,
    dir: &Path,
    salvage: bool,
    replay: &mut impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<ReadAll, LogError> {
    let segs = segments(dir).map_err(io_err(format!("listing {}", dir.display())))?;
    let mut recovery = Recovery::default();
    let last_index = segs.len().checked_sub(1);
    // First pass: check every segment before replaying anything, so that
    // corruption stops the start with nothing changed.
    let mut checked = Vec::with_capacity(segs.len());
    for (i, (seq, path)) in segs.iter().enumerate() {
        let bytes = storage
            .read(path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let s = scan(&bytes, *seq);
        if let Some((offset, reason)) = s.bad {
            // Only the tail of the last segment can be torn by a crash; a
            // bad header is damage unless the segment was cut short or
            // left all zeros while it was being created.
            let torn = Some(i) == last_index
                && (offset > 0 || bytes.len() <= HEADER || bytes.iter().all(|&b| b == 0));
            if !torn && !salvage {
                return Err(LogError::Corrupt {
                    path: path.clone(),
                    offset: offset as u64,
                    reason,
                });
            }
        }
        checked.push((path.clone(), bytes, s));
    }
    for (i, (path, bytes, s)) in checked.iter().enumerate() {
        for &(start, end) in &s.records {
            replay(&bytes[start..end]).map_err(|reason| LogError::Replay {
                path: path.clone(),
                offset: (start - FRAME) as u64,
                reason,
            })?;
            recovery.records += 1;
        }
        recovery.segments += 1;
        if let Some((offset, _)) = s.bad {
            if Some(i) == last_index {
                let dropped = bytes[offset..]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p + 1) as u64;
                recovery.truncated = Some((path.clone(), offset as u64, dropped));
            } else {
                recovery.skipped.push((path.clone(), offset as u64));
            }
        }
    }
    Ok(ReadAll {
        segs,
        checked,
        recovery,
    })
}

/// Checks a log offline without changing it: replays every record into
/// `replay` and reports what [`Log::open`] would find — including a torn
/// tail it would cut. Corruption before the last segment is an error.
pub fn inspect(
    dir: &Path,
    mut replay: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Recovery, LogError> {
    if !dir.is_dir() {
        return Err(LogError::Io(
            format!("reading {}", dir.display()),
            io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        ));
    }
    read_all(&RealStorage, dir, false, &mut replay).map(|r| r.recovery)
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

        let ReadAll {
            segs,
            checked,
            recovery,
        } = read_all(&*options.storage, dir, options.salvage, &mut replay)?;
        let storage = Arc::clone(&options.storage);
        if let Some((path, offset, dropped)) = &recovery.truncated {
            warn!(segment = %path.display(), offset, dropped, "cutting a torn tail off the log");
        }
        for (path, offset) in &recovery.skipped {
            warn!(segment = %path.display(), offset, "salvage: skipping the rest of a corrupt segment");
        }

        // The segment to append to: the last one, cut back to its last good
        // record and preallocated again, or a new one.
        let mut short = false;
        let size = options.segment_bytes;
        let (seq, file, len) = match (segs.last(), checked.last()) {
            (Some((seq, path)), Some((_, _, s))) if s.bad.is_none_or(|(o, _)| o >= HEADER) => {
                let keep = s.keep() as u64;
                let mut f = storage
                    .open(path)
                    .map_err(io_err(format!("opening {}", path.display())))?;
                f.truncate(keep)
                    .map_err(io_err(format!("truncating {}", path.display())))?;
                short = !preallocate(&mut *f, size.max(keep), path)?;
                (*seq, f, keep)
            }
            (Some((seq, path)), _) => {
                // A segment whose header itself is torn (a crash while it was
                // being created) holds nothing: replace it.
                storage
                    .remove(path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
                let f = create_first_segment(&*storage, dir, *seq, size, &mut short)?;
                (*seq, f, HEADER as u64)
            }
            (None, _) => {
                let f = create_first_segment(&*storage, dir, 1, size, &mut short)?;
                (1, f, HEADER as u64)
            }
        };
        if short {
            warn!(dir = %dir.display(), "the disk is too full to preallocate the log's segment");
        }
        // Earlier segments were cut to their data when the log moved past
        // them; the last one counts up to its data.
        let sealed: u64 = checked
            .iter()
            .take(checked.len().saturating_sub(1))
            .map(|(_, bytes, _)| bytes.len() as u64)
            .sum();
        info!(
            dir = %dir.display(),
            records = recovery.records,
            segments = recovery.segments,
            "log recovered"
        );

        let durability = options.durability;
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(64 << 10),
                last: 0,
                closing: false,
                rotate_at: None,
            }),
            segment: Mutex::new(Segment {
                dir: dir.to_path_buf(),
                storage: Arc::clone(&storage),
                file,
                seq,
                len,
                options,
                dirty: false,
                next_sync: Instant::now() + Duration::from_secs(1),
                next_rotate: Instant::now(),
                spare: Vec::with_capacity(64 << 10),
            }),
            wake: Condvar::new(),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            bytes: AtomicU64::new(sealed + len),
            started: AtomicU64::new(0),
            short: AtomicBool::new(short),
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
            },
            recovery,
        ))
    }

    /// Appends one record built by `write` into the pending batch; replies
    /// its sequence number. It is durable once [`Log::durable`] reaches it.
    pub fn append_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<Lsn, LogError> {
        if self.inner.failed.load(Ordering::Acquire) {
            return Err(LogError::Failed);
        }
        let mut p = self.inner.pending.lock();
        let was_empty = p.buf.is_empty();
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
        let crc = crc32fast::hash(&p.buf[at + FRAME..]);
        p.buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        p.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        p.last += 1;
        let lsn = p.last;
        drop(p);
        // In async mode whoever waits for the record writes it
        // ([`Log::write_now`]) and the writer thread comes by every second;
        // waking it per batch cost a context switch each (measured: 40 %
        // of the broker's time went to task switches at 1 M msg/s).
        if was_empty && self.durability == Durability::Sync {
            self.inner.wake.notify_one();
        }
        Ok(lsn)
    }

    /// Appends one record.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, LogError> {
        self.append_with(|buf| buf.extend_from_slice(payload))
    }

    /// In async mode, writes what is pending on the calling thread right
    /// away (no fsync: the writer thread does that every second), so that a
    /// reply waits for no other thread. In sync mode it does nothing: the
    /// fsync belongs on the writer thread, off the caller's. False if the
    /// log failed.
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
        self.inner.flush(&mut seg)
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
    /// written), then syncs the directory. Replies the bytes freed.
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
            freed += len;
        }
        sync_dir(&*self.storage, &self.dir)?;
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

    /// True while the disk is too full for a new segment: the log goes on
    /// in the current one, past its size, and the caller should refuse new
    /// work. Cleared when a new segment is preallocated again.
    pub fn short_of_space(&self) -> bool {
        self.inner.short.load(Ordering::Acquire)
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

/// The segment being written, shared by the writer thread and (in async
/// mode) callers of [`Log::write_now`]. Lock order: this, then `pending`.
struct Segment {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    file: Box<dyn LogFile>,
    seq: u64,
    len: u64,
    options: Options,
    /// Written since the last fsync.
    dirty: bool,
    next_sync: Instant,
    /// After a full disk refused a new segment, when to try again.
    next_rotate: Instant,
    /// The pending buffer of the last batch, kept for reuse.
    spare: Vec<u8>,
}

impl Inner {
    /// Writes whatever is pending (and, in sync mode or when the second is
    /// up in async mode, fsyncs), then publishes how far the log is
    /// durable. Any thread may call it; batches go out in order.
    fn flush(&self, seg: &mut Segment) -> bool {
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

struct Writer {
    inner: Arc<Inner>,
    /// Held for as long as the writer runs: the directory's lock.
    _lock: File,
}

impl Writer {
    fn run(self) {
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
            self.file.sync_data()?;
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

#[cfg(test)]
mod tests;
