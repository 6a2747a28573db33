//! Segment files: their names, their header, preallocation, creation, and
//! the check of a segment's bytes (which records are good, where the first
//! bad one starts).
//!
//! A segment opens with a 20-byte header — the magic `FERRYLOG`, a
//! little-endian u32 format version, the u64 sequence number — followed by
//! records framed as `len: u32 LE | crc32(payload): u32 LE | payload`.
//! Records are never empty, so an all-zero frame marks the end of the data
//! (the rest is preallocated space).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::{LogError, LogFile, MAX_RECORD, Storage, io_err};

pub(crate) const MAGIC: &[u8; 8] = b"FERRYLOG";
/// The segment format written. Version 1 (before preallocation) had no
/// zero tails; it reads the same.
pub(crate) const VERSION: u32 = 2;
pub(crate) const HEADER: usize = 20;
pub(crate) const FRAME: usize = 8;

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

/// Creates segment `seq`, header written and synced, preallocated to
/// `len` bytes. `None` if the disk has no room for it (nothing is left
/// behind).
pub(crate) fn create_segment(
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
pub(crate) fn create_first_segment(
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
pub(crate) struct Scan {
    pub(crate) records: Vec<(usize, usize)>,
    pub(crate) bad: Option<(usize, &'static str)>,
    /// Where the good records end (any zeros after them are preallocated
    /// space).
    pub(crate) end: usize,
}

impl Scan {
    /// The bytes worth keeping: up to the first bad record, else the data.
    pub(crate) fn keep(&self) -> usize {
        self.bad.map_or(self.end, |(o, _)| o)
    }
}

pub(crate) fn scan(bytes: &[u8], seq: u64) -> Scan {
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
