//! Segment files: their names, their header, preallocation, creation, and
//! the check of a segment's bytes — which records are whole, which
//! stretches are bad, and whether whole records follow a bad one.
//!
//! Format 3, the one written: a 36-byte header — the magic `FERRYLOG`, a
//! little-endian u32 format version, the u64 sequence number, a u32 salt,
//! the u64 offset where the previous segment's data ended when this one
//! began (0: none), and a crc32 of those 32 bytes — then records framed as
//!
//! ```text
//! len: u32 LE | crc(payload): u32 LE | crc(len, crc): u32 LE | payload
//! ```
//!
//! both checksums crc32 seeded with the salt. The frame's own checksum
//! lets a reader look past a damaged record cheaply: at every later offset
//! 8 bytes tell whether a frame starts there (1 in 2^32 by chance). The
//! salt, chosen at random for a data directory and never sent anywhere,
//! means that a client cannot put a payload which reads as a frame: after
//! damage inside its own record, each offset of its payload passes for a
//! frame by chance only, 1 in 2^32 (about 1 in 250 for a 16 MiB payload,
//! and only under `--salvage`). Formats 1 and 2 (read, never appended
//! to) have a 20-byte header (magic, version, sequence number) and frames
//! `len | crc32(payload)`: no such protection.
//!
//! Records are never empty, so zeros cannot start a frame: zeros after the
//! last record are preallocated space.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::{LogError, LogFile, MAX_RECORD, Storage, io_err};

pub(crate) const MAGIC: &[u8; 8] = b"FERRYLOG";
/// The segment format written.
pub(crate) const VERSION: u32 = 3;
/// Format 3's header and frame.
pub(crate) const HEADER: usize = 36;
pub(crate) const FRAME: usize = 12;
/// Formats 1 and 2 (version 1 had no preallocated zero tails; it reads
/// the same): header and frame.
pub(crate) const HEADER_V2: usize = 20;
pub(crate) const FRAME_V2: usize = 8;
/// A disk writes whole sectors: a write the disk never completed leaves
/// them zero, at this granularity at least.
const SECTOR: usize = 512;

pub(crate) fn segment_name(seq: u64) -> String {
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

pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    storage
        .sync_dir(dir)
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

/// crc32 seeded with a segment's salt.
pub(crate) fn salted(salt: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(bytes);
    h.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Frames the record written after `FRAME` reserved bytes at `buf[at..]`
/// (format 3).
pub(crate) fn frame_record(buf: &mut [u8], at: usize, salt: u32) {
    let len = buf.len() - at - FRAME;
    let crc = salted(salt, &buf[at + FRAME..]);
    buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    let check = salted(salt, &buf[at..at + 8]);
    buf[at + 8..at + 12].copy_from_slice(&check.to_le_bytes());
}

/// A segment's header, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Format 3's salt; `None` for formats 1 and 2 (plain checksums).
    pub(crate) salt: Option<u32>,
    /// Format 3: where the previous segment's data ended when this one
    /// began (0: there was none).
    pub(crate) prev_end: u64,
}

impl Header {
    pub(crate) fn len(&self) -> usize {
        if self.salt.is_some() {
            HEADER
        } else {
            HEADER_V2
        }
    }

    pub(crate) fn frame(&self) -> usize {
        if self.salt.is_some() { FRAME } else { FRAME_V2 }
    }
}

/// A format 3 header.
pub(crate) fn encode_header(seq: u64, salt: u32, prev_end: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..24].copy_from_slice(&salt.to_le_bytes());
    h[24..32].copy_from_slice(&prev_end.to_le_bytes());
    let crc = crc32fast::hash(&h[..32]);
    h[32..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_header(bytes: &[u8], seq: u64) -> Result<Header, &'static str> {
    if bytes.len() < HEADER_V2 {
        return Err("segment header is cut short");
    }
    if &bytes[..8] != MAGIC {
        return Err("not a ferry log segment (bad magic)");
    }
    let header = match u32_at(bytes, 8) {
        // A format 3 header whose version was damaged would read as an
        // older format, and its records all as one bad stretch — which,
        // in the last segment, looks like a torn end.
        1 | 2
            if bytes.len() >= HEADER && {
                let mut h = [0u8; 32];
                h.copy_from_slice(&bytes[..32]);
                h[8..12].copy_from_slice(&VERSION.to_le_bytes());
                crc32fast::hash(&h) == u32_at(bytes, 32)
            } =>
        {
            return Err("segment header's version is damaged");
        }
        1 | 2 => Header {
            salt: None,
            prev_end: 0,
        },
        3 => {
            if bytes.len() < HEADER {
                return Err("segment header is cut short");
            }
            if crc32fast::hash(&bytes[..32]) != u32_at(bytes, 32) {
                return Err("segment header checksum does not match");
            }
            Header {
                salt: Some(u32_at(bytes, 20)),
                prev_end: u64_at(bytes, 24),
            }
        }
        _ => return Err("unknown segment format version"),
    };
    if u64_at(bytes, 12) != seq {
        return Err("segment header names another sequence number");
    }
    Ok(header)
}

/// Reserves `len` bytes for a segment. Replies false if the disk is full;
/// a file system that cannot preallocate is let be (the log works without).
pub(crate) fn preallocate(f: &mut dyn LogFile, len: u64, path: &Path) -> Result<bool, LogError> {
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

/// What a new segment's header says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewSegment {
    pub(crate) seq: u64,
    pub(crate) salt: u32,
    /// Where the previous segment's data ends (0: none).
    pub(crate) prev_end: u64,
}

/// Creates a segment, header written and synced, preallocated to `len`
/// bytes. `None` if the disk has no room for it, or even for its header
/// (nothing is left behind).
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    new: NewSegment,
    len: u64,
) -> Result<Option<Box<dyn LogFile>>, LogError> {
    let path = dir.join(segment_name(new.seq));
    let mut f = match storage.create(&path) {
        Ok(f) => f,
        // No room even for the file: as for its preallocation.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
            let _ = storage.remove(&path);
            return Ok(None);
        }
        Err(e) => return Err(io_err(format!("creating {}", path.display()))(e)),
    };
    let header = encode_header(new.seq, new.salt, new.prev_end);
    let written = f.write_all(&header).and_then(|()| f.sync_data());
    let full = matches!(&written, Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()));
    if !full {
        written.map_err(io_err(format!("writing {}", path.display())))?;
    }
    if full || !preallocate(&mut *f, len, &path)? {
        drop(f);
        storage
            .remove(&path)
            .map_err(io_err(format!("removing {}", path.display())))?;
        return Ok(None);
    }
    sync_dir(storage, dir)?;
    Ok(Some(f))
}

/// Creates a segment, preallocated if the disk has room.
pub(crate) fn create_first_segment(
    storage: &dyn Storage,
    dir: &Path,
    new: NewSegment,
    len: u64,
    short: &mut bool,
) -> Result<Box<dyn LogFile>, LogError> {
    if let Some(f) = create_segment(storage, dir, new, len)? {
        return Ok(f);
    }
    *short = true;
    create_segment(storage, dir, new, 0)?.ok_or_else(|| {
        LogError::Io(
            format!("creating segment {}", new.seq),
            io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        )
    })
}

/// Whether whole records follow a bad stretch in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Followed {
    /// A whole record starts where the stretch ends.
    Yes,
    /// Nothing whole: the stretch runs to the end of the data.
    No,
    /// Too costly to tell (a format 2 segment of large records; each
    /// candidate costs a checksum of its length): taken as damage.
    Unknown,
}

/// A stretch of a segment that holds no whole record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bad {
    /// Where it starts (a frame that does not check).
    pub(crate) at: usize,
    /// Where it ends: the next whole record, or the end of the data.
    pub(crate) to: usize,
    pub(crate) reason: &'static str,
    /// How many of the segment's whole records come before it.
    pub(crate) records_before: usize,
    pub(crate) followed: Followed,
    /// It looks like a write the disk never finished (see
    /// [`looks_torn`]), not like damage.
    pub(crate) torn: bool,
}

/// A check of one segment's bytes.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The header, or why it is bad (then nothing else was read).
    pub(crate) header: Result<Header, &'static str>,
    /// The whole records' payload ranges, in order.
    pub(crate) records: Vec<(usize, usize)>,
    /// The bad stretches, in order.
    pub(crate) bad: Vec<Bad>,
    /// Where the data ends: after the last whole record or bad stretch
    /// (zeros after it are preallocated space).
    pub(crate) end: usize,
}

impl Scan {
    /// The bytes worth keeping: up to the first bad stretch, else the data.
    pub(crate) fn keep(&self) -> usize {
        self.bad.first().map_or(self.end, |b| b.at)
    }
}

/// Checks the frame at `pos`; replies where its payload starts and ends.
fn frame_at(bytes: &[u8], pos: usize, h: &Header) -> Result<(usize, usize), &'static str> {
    let frame = h.frame();
    if bytes.len() - pos < frame {
        return Err("record frame is cut short");
    }
    let len = u32_at(bytes, pos) as usize;
    let crc = u32_at(bytes, pos + 4);
    if let Some(salt) = h.salt
        && salted(salt, &bytes[pos..pos + 8]) != u32_at(bytes, pos + 8)
    {
        return Err("record frame checksum does not match");
    }
    if len == 0 || len > MAX_RECORD {
        return Err("record length is impossible");
    }
    let start = pos + frame;
    if bytes.len() - start < len {
        return Err("record is cut short");
    }
    let sum = match h.salt {
        Some(salt) => salted(salt, &bytes[start..start + len]),
        None => crc32fast::hash(&bytes[start..start + len]),
    };
    if sum != crc {
        return Err("record checksum does not match");
    }
    Ok((start, start + len))
}

/// The first offset after `from` (and before `data_end`) where a whole
/// record starts.
fn resync(
    bytes: &[u8],
    from: usize,
    data_end: usize,
    h: &Header,
    budget: &mut usize,
) -> Result<Option<usize>, ()> {
    // Format 2 frames carry no checksum of their own: each candidate
    // costs a checksum of the length it claims. Bounded per segment; past
    // the bound, unknown.
    for q in from + 1..data_end {
        if bytes.len() - q < h.frame() {
            break;
        }
        let len = u32_at(bytes, q) as usize;
        if len == 0 || len > bytes.len() - q - h.frame() {
            continue;
        }
        if h.salt.is_none() {
            if *budget < len {
                return Err(());
            }
            *budget -= len;
        }
        if frame_at(bytes, q, h).is_ok() {
            return Ok(Some(q));
        }
    }
    Ok(None)
}

/// Does the bad stretch at `at` look like a write the disk never
/// finished? Such a write leaves zeros where data should be, sector by
/// sector. Zeros inside a record's payload may be its data and prove
/// nothing; but a frame is never zero (records are never empty), so zeros
/// where a frame must be — the stretch's own, or, if that frame checks
/// and only its payload does not, the next one after the record — all of
/// it, or its end from a sector boundary on, are an unfinished write's.
/// A byte damaged amid whole data leaves no such thing.
fn looks_torn(bytes: &[u8], at: usize, h: &Header) -> bool {
    let zeroed = |pos: usize| {
        let end = (pos + h.frame()).min(bytes.len());
        if pos >= end {
            return false;
        }
        let from = if pos.is_multiple_of(SECTOR) {
            pos
        } else {
            pos.next_multiple_of(SECTOR)
        };
        bytes[pos..end].iter().all(|&b| b == 0)
            || (from < end && bytes[from..end].iter().all(|&b| b == 0))
    };
    if zeroed(at) {
        return true;
    }
    // The frame checks (its length is the writer's): is the next one
    // zeros?
    let Some(salt) = h.salt else { return false };
    if bytes.len() - at < h.frame() || salted(salt, &bytes[at..at + 8]) != u32_at(bytes, at + 8) {
        return false;
    }
    let next = at + h.frame() + u32_at(bytes, at) as usize;
    next < bytes.len() && zeroed(next)
}

/// Checks a segment's bytes: every whole record, and every bad stretch
/// with what follows it.
pub(crate) fn scan(bytes: &[u8], seq: u64) -> Scan {
    let header = parse_header(bytes, seq);
    let mut s = Scan {
        header,
        records: Vec::new(),
        bad: Vec::new(),
        end: 0,
    };
    let Ok(h) = header else {
        return s;
    };
    // Zeros cannot start a frame: the data ends at the last byte that is
    // not zero (a record's own trailing zeros are read past it).
    let data_end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p + 1)
        .max(h.len());
    let mut pos = h.len();
    s.end = pos;
    let mut budget = 16 * bytes.len() + (64 << 20);
    while pos < data_end {
        match frame_at(bytes, pos, &h) {
            Ok((start, end)) => {
                s.records.push((start, end));
                pos = end;
                s.end = end;
            }
            Err(reason) => {
                let (to, followed) = match resync(bytes, pos, data_end, &h, &mut budget) {
                    Ok(Some(q)) => (q, Followed::Yes),
                    Ok(None) => (data_end, Followed::No),
                    Err(()) => (data_end, Followed::Unknown),
                };
                s.bad.push(Bad {
                    at: pos,
                    to,
                    reason,
                    records_before: s.records.len(),
                    followed,
                    torn: looks_torn(bytes, pos, &h),
                });
                pos = to;
                s.end = to;
                if followed != Followed::Yes {
                    break;
                }
            }
        }
    }
    s
}
