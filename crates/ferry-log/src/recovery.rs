//! Recovery: every segment read and checked before anything is replayed
//! (so corruption stops a start with nothing changed), the good records
//! replayed oldest first, and the segment to append to made ready — the
//! last one, cut back to its last good record and preallocated again, or
//! a new one.
//!
//! A record that is short or fails its checksum in the **last** segment is
//! a torn tail: it is cut off, and the cut is reported (a crash mid-write
//! leaves exactly that). The same in an earlier segment is corruption:
//! opening fails, unless `salvage` skips the rest of that segment.

use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::segment::{FRAME, HEADER, Scan, create_first_segment, preallocate, scan, segments};
use crate::{LogError, LogFile, Options, RealStorage, Recovery, Storage, io_err};

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

/// The segment to append to, as recovery left it.
pub(crate) struct Resumed {
    pub(crate) recovery: Recovery,
    pub(crate) seq: u64,
    pub(crate) file: Box<dyn LogFile>,
    /// Its data's length (the rest is preallocated space).
    pub(crate) len: u64,
    /// Bytes in the segments before it.
    pub(crate) sealed: u64,
    /// The disk had no room to preallocate it.
    pub(crate) short: bool,
}

/// Recovers the log in `dir` (locked by the caller): replays every good
/// record into `replay`, cuts a torn tail, and readies the segment to
/// append to.
pub(crate) fn recover(
    dir: &Path,
    options: &Options,
    replay: &mut impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Resumed, LogError> {
    let ReadAll {
        segs,
        checked,
        recovery,
    } = read_all(&*options.storage, dir, options.salvage, replay)?;
    let storage = &*options.storage;
    if let Some((path, offset, dropped)) = &recovery.truncated {
        warn!(segment = %path.display(), offset, dropped, "cutting a torn tail off the log");
    }
    for (path, offset) in &recovery.skipped {
        warn!(segment = %path.display(), offset, "salvage: skipping the rest of a corrupt segment");
    }
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
            let f = create_first_segment(storage, dir, *seq, size, &mut short)?;
            (*seq, f, HEADER as u64)
        }
        (None, _) => {
            let f = create_first_segment(storage, dir, 1, size, &mut short)?;
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
    Ok(Resumed {
        recovery,
        seq,
        file,
        len,
        sealed,
        short,
    })
}
