//! Recovery: every segment read and checked before anything is replayed
//! (so damage stops a start with nothing changed), the whole records
//! replayed oldest first, and the segment to append to made ready.
//!
//! What a bad stretch means depends on what follows it:
//!
//! - In the **last** segment, a bad stretch with nothing whole after it is
//!   the end of a write a crash interrupted — or a damaged last record:
//!   the two leave the same bytes, so it is cut off, reported as such, and
//!   its bytes kept in `damaged/`. A bad stretch with whole records after
//!   it whose frame, or the frame after its record, is zeros from a
//!   sector boundary on (never data: a frame is never zero) is a write the
//!   disk did not finish (its pages landed out of order); it is cut the
//!   same way, records after it included, since none of them was synced.
//! - Anything else — a bad stretch followed by whole records, a bad end
//!   of a segment the log had moved past (it was synced then), a header
//!   that does not check, a missing segment, a segment shorter than when
//!   the log moved past it — is damage: opening fails and nothing is
//!   changed, naming the segment, the offset and how many whole records
//!   follow, unless `salvage` is set. Salvage skips only the damaged
//!   stretches, replays every whole record, links each damaged segment
//!   into `damaged/` (never rewriting or cutting it), and appends to a
//!   new segment; the caller should then write a checkpoint so that the
//!   damaged segments leave the log.

use std::io;
use std::path::{Path, PathBuf};

use crate::segment::{
    Bad, Followed, HEADER, NewSegment, Scan, create_first_segment, preallocate, scan, segments,
};
use crate::{Cut, LogError, LogFile, Options, RealStorage, Recovery, Skipped, Storage, io_err};

/// Where damaged segments and cut bytes are kept, in the data directory.
pub const DAMAGED_DIR: &str = "damaged";

/// How much of a damaged record a report carries.
const DESCRIBED: usize = 4096;

/// How recovery takes one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Every record replays.
    Whole,
    /// The last segment's end is cut at `at`: the first `before` records
    /// replay, `dropped` whole ones after a torn sector go with the cut.
    Cut {
        at: usize,
        before: usize,
        dropped: usize,
    },
    /// Damage (only opened with salvage): every whole record replays.
    Damaged,
    /// The last segment's header was torn while it was being created: it
    /// holds nothing.
    TornHeader,
}

/// A segment read whole and judged.
struct Checked {
    seq: u64,
    path: PathBuf,
    bytes: Vec<u8>,
    scan: Scan,
    verdict: Verdict,
}

/// Damage found, as a refusal names it.
struct Problem {
    /// Index of the segment in `checked`.
    seg: usize,
    offset: u64,
    reason: String,
    /// Whole records after `offset` in that segment.
    after: usize,
}

fn judge(s: &Scan, bytes: &[u8], last: bool, salvage: bool) -> Verdict {
    if s.header.is_err() {
        return if last && (bytes.len() < HEADER || bytes.iter().all(|&b| b == 0)) {
            Verdict::TornHeader
        } else {
            Verdict::Damaged
        };
    }
    let Some(first) = s.bad.first() else {
        return Verdict::Whole;
    };
    if !last {
        return Verdict::Damaged;
    }
    let cut = |dropped| Verdict::Cut {
        at: first.at,
        before: first.records_before,
        dropped,
    };
    match first.followed {
        Followed::No => cut(0),
        // With salvage, whole records are kept wherever they are.
        Followed::Yes if first.torn && !salvage => cut(s.records.len() - first.records_before),
        Followed::Yes | Followed::Unknown => Verdict::Damaged,
    }
}

/// What is wrong with a damaged segment, first thing first.
fn problem(i: usize, c: &Checked) -> Problem {
    match (&c.scan.header, c.scan.bad.first()) {
        (Err(reason), _) => Problem {
            seg: i,
            offset: 0,
            reason: (*reason).to_string(),
            after: 0,
        },
        (Ok(_), Some(b)) => Problem {
            seg: i,
            offset: b.at as u64,
            reason: match b.followed {
                Followed::Yes => b.reason.to_string(),
                Followed::Unknown => format!(
                    "{}, in a stretch too costly to search for whole records",
                    b.reason
                ),
                Followed::No => format!(
                    "{}, at the end of a segment the log had moved past (only the last one's end can be torn)",
                    b.reason
                ),
            },
            after: c.scan.records.len() - b.records_before,
        },
        (Ok(_), None) => Problem {
            seg: i,
            offset: 0,
            reason: "damaged".into(),
            after: c.scan.records.len(),
        },
    }
}

/// Damage between segments: one missing, or one shorter than when the log
/// moved past it.
fn gaps(checked: &[Checked], problems: &mut Vec<Problem>) {
    for (i, pair) in checked.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if b.seq != a.seq + 1 {
            problems.push(Problem {
                seg: i + 1,
                offset: 0,
                reason: format!(
                    "segment {} is missing (the log goes from segment {} to {})",
                    a.seq + 1,
                    a.seq,
                    b.seq
                ),
                after: b.scan.records.len(),
            });
            continue;
        }
        let Ok(h) = b.scan.header else { continue };
        if h.prev_end == 0 || a.verdict != Verdict::Whole || a.scan.end as u64 == h.prev_end {
            continue;
        }
        problems.push(Problem {
            seg: i,
            offset: a.scan.end as u64,
            reason: format!(
                "the segment's data ends at byte {}, but it ended at byte {} when the log moved past it",
                a.scan.end, h.prev_end
            ),
            after: 0,
        });
    }
}

/// Every segment, checked and judged, and the damage found.
struct ReadAll {
    checked: Vec<Checked>,
    problems: Vec<Problem>,
}

/// Reads and checks every segment, and judges each. Changes nothing.
fn read_all(storage: &dyn Storage, dir: &Path, salvage: bool) -> Result<ReadAll, LogError> {
    let segs = segments(dir).map_err(io_err(format!("listing {}", dir.display())))?;
    let mut checked = Vec::with_capacity(segs.len());
    for (i, (seq, path)) in segs.iter().enumerate() {
        let bytes = storage
            .read(path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let scan = scan(&bytes, *seq);
        let verdict = judge(&scan, &bytes, i + 1 == segs.len(), salvage);
        checked.push(Checked {
            seq: *seq,
            path: path.clone(),
            bytes,
            scan,
            verdict,
        });
    }
    let mut problems: Vec<Problem> = checked
        .iter()
        .enumerate()
        .filter(|(_, c)| c.verdict == Verdict::Damaged)
        .map(|(i, c)| problem(i, c))
        .collect();
    gaps(&checked, &mut problems);
    problems.sort_by_key(|p| (p.seg, p.offset));
    if let (Some(p), false) = (problems.first(), salvage) {
        let later: usize = checked[p.seg + 1..]
            .iter()
            .map(|c| c.scan.records.len())
            .sum();
        return Err(LogError::Corrupt {
            path: checked[p.seg].path.clone(),
            offset: p.offset,
            reason: p.reason.clone(),
            following: (p.after + later) as u64,
        });
    }
    Ok(ReadAll { checked, problems })
}

/// Replays the records recovery keeps, oldest first; replies what it found
/// (without where things were kept: that is for [`recover`] to add).
fn replay_all(
    all: &ReadAll,
    replay: &mut impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Recovery, LogError> {
    let mut recovery = Recovery::default();
    for c in &all.checked {
        let keep = match c.verdict {
            Verdict::Whole | Verdict::Damaged => c.scan.records.len(),
            Verdict::Cut { before, .. } => before,
            Verdict::TornHeader => 0,
        };
        let frame = c.scan.header.map_or(0, |h| h.frame());
        for &(start, end) in &c.scan.records[..keep] {
            replay(&c.bytes[start..end]).map_err(|reason| LogError::Replay {
                path: c.path.clone(),
                offset: (start - frame) as u64,
                reason,
            })?;
            recovery.records += 1;
        }
        recovery.segments += 1;
        if let Verdict::Cut { at, dropped, .. } = c.verdict {
            recovery.cut = Some(Cut {
                path: c.path.clone(),
                offset: at as u64,
                bytes: (c.scan.end - at) as u64,
                records: dropped as u64,
                kept: None,
            });
        }
        if c.verdict == Verdict::Damaged {
            recovery.skipped.extend(skipped(c));
        }
    }
    for p in all.problems.iter().filter(|p| {
        // Damaged segments' own problems are listed stretch by stretch.
        all.checked[p.seg].verdict != Verdict::Damaged
    }) {
        recovery.skipped.push(Skipped {
            path: all.checked[p.seg].path.clone(),
            offset: p.offset,
            len: 0,
            reason: p.reason.clone(),
            record: Vec::new(),
        });
    }
    Ok(recovery)
}

/// A damaged segment's bad stretches, as salvage reports them.
fn skipped(c: &Checked) -> Vec<Skipped> {
    let Ok(h) = c.scan.header else {
        return vec![Skipped {
            path: c.path.clone(),
            offset: 0,
            len: c.bytes.len() as u64,
            reason: format!("{} (the whole segment is unreadable)", problem(0, c).reason),
            record: Vec::new(),
        }];
    };
    c.scan
        .bad
        .iter()
        .map(|b: &Bad| {
            // The record's bytes as far as its frame claims, for whoever
            // can tell what it held.
            let from = (b.at + h.frame()).min(b.to);
            Skipped {
                path: c.path.clone(),
                offset: b.at as u64,
                len: (b.to - b.at) as u64,
                reason: b.reason.to_string(),
                record: c.bytes[from..b.to.min(from + DESCRIBED)].to_vec(),
            }
        })
        .collect()
}

/// Checks a log offline without changing it: replays every record into
/// `replay` and reports what [`Log::open`](crate::Log::open) would find —
/// including an end it would cut. Damage is an error.
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
    let all = read_all(&RealStorage, dir, false)?;
    replay_all(&all, &mut replay)
}

/// The segment to append to, as recovery left it.
pub(crate) struct Resumed {
    pub(crate) recovery: Recovery,
    pub(crate) seq: u64,
    pub(crate) salt: u32,
    pub(crate) file: Box<dyn LogFile>,
    /// Its data's length (the rest is preallocated space).
    pub(crate) len: u64,
    /// Bytes in the segments before it.
    pub(crate) sealed: u64,
    /// The disk had no room to preallocate it.
    pub(crate) short: bool,
}

/// A salt for a new data directory's segments.
fn new_salt() -> u32 {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(4) => u32::from_le_bytes(b),
        // Unpredictable enough where the kernel will not say.
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| {
                d.subsec_nanos() ^ std::process::id().rotate_left(16)
            }),
    }
}

/// Links (else copies) `path` into `dir/damaged/`, under a name not yet
/// taken there; replies where.
fn keep_aside(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    suffix: &str,
    bytes: Option<&[u8]>,
) -> Result<PathBuf, LogError> {
    let aside = dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&aside).map_err(io_err(format!("creating {}", aside.display())))?;
    let name = path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    let mut to = aside.join(format!("{name}{suffix}"));
    let mut n = 1;
    while to.exists() {
        to = aside.join(format!("{name}{suffix}.{n}"));
        n += 1;
    }
    match bytes {
        Some(bytes) => storage.save(&to, bytes),
        None => storage.keep_copy(path, &to),
    }
    .map_err(io_err(format!("keeping {} aside", path.display())))?;
    crate::segment::sync_dir(storage, &aside)?;
    crate::segment::sync_dir(storage, dir)?;
    Ok(to)
}

/// Recovers the log in `dir` (locked by the caller): replays every record
/// it keeps into `replay`, cuts a torn end, keeps damaged segments aside
/// (salvage), and readies the segment to append to.
pub(crate) fn recover(
    dir: &Path,
    options: &Options,
    replay: &mut impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Resumed, LogError> {
    let storage = &*options.storage;
    let all = read_all(storage, dir, options.salvage)?;
    let mut recovery = replay_all(&all, replay)?;
    // Evidence first: nothing below changes a damaged segment, and a cut
    // end's bytes are saved before the segment is cut.
    for c in all.checked.iter().filter(|c| c.verdict == Verdict::Damaged) {
        recovery
            .kept
            .push(keep_aside(storage, dir, &c.path, "", None)?);
    }
    if let (Some(cut), Some(c)) = (&mut recovery.cut, all.checked.last()) {
        let from = cut.offset as usize;
        let suffix = format!(".cut-at-{from}");
        match keep_aside(
            storage,
            dir,
            &c.path,
            &suffix,
            Some(&c.bytes[from..c.scan.end]),
        ) {
            Ok(to) => cut.kept = Some(to),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the bytes of the log's cut end aside")
            }
        }
    }
    let salt = all
        .checked
        .iter()
        .rev()
        .find_map(|c| c.scan.header.ok().and_then(|h| h.salt))
        .unwrap_or_else(new_salt);
    let size = options.segment_bytes;
    let mut short = false;
    let mut sealed: u64 = all
        .checked
        .iter()
        .take(all.checked.len().saturating_sub(1))
        .map(|c| c.bytes.len() as u64)
        .sum();
    let create = |new: NewSegment, short: &mut bool| -> Result<_, LogError> {
        let f = create_first_segment(storage, dir, new, size, short)?;
        Ok((new.seq, f, HEADER as u64))
    };
    let (seq, file, len) = match all.checked.last() {
        None => create(
            NewSegment {
                seq: 1,
                salt,
                prev_end: 0,
            },
            &mut short,
        )?,
        Some(c) => match c.verdict {
            Verdict::TornHeader => {
                // Created by a crash and never written: replace it.
                storage
                    .remove(&c.path)
                    .map_err(io_err(format!("removing {}", c.path.display())))?;
                let prev_end = match all.checked.len().checked_sub(2).map(|i| &all.checked[i]) {
                    Some(p) if p.seq + 1 == c.seq => p.scan.end as u64,
                    _ => 0,
                };
                create(
                    NewSegment {
                        seq: c.seq,
                        salt,
                        prev_end,
                    },
                    &mut short,
                )?
            }
            Verdict::Damaged => {
                // Never written to again: appends go to a new segment.
                sealed += c.scan.end as u64;
                create(
                    NewSegment {
                        seq: c.seq + 1,
                        salt,
                        prev_end: c.scan.end as u64,
                    },
                    &mut short,
                )?
            }
            Verdict::Whole | Verdict::Cut { .. } => {
                let keep = c.scan.keep() as u64;
                let mut f = storage
                    .open(&c.path)
                    .map_err(io_err(format!("opening {}", c.path.display())))?;
                f.truncate(keep)
                    .map_err(io_err(format!("truncating {}", c.path.display())))?;
                if c.scan.header.ok().and_then(|h| h.salt) == Some(salt) {
                    short = !preallocate(&mut *f, size.max(keep), &c.path)?;
                    // Full already, with no room for the next one: short
                    // from the start, so that puts are refused at once.
                    if keep >= size && crate::space::free_space(dir).is_ok_and(|free| free < size) {
                        short = true;
                    }
                    (c.seq, f, keep)
                } else {
                    // An older format is never appended to: it stays cut
                    // to its data, and a new segment follows it.
                    drop(f);
                    sealed += keep;
                    create(
                        NewSegment {
                            seq: c.seq + 1,
                            salt,
                            prev_end: keep,
                        },
                        &mut short,
                    )?
                }
            }
        },
    };
    Ok(Resumed {
        recovery,
        seq,
        salt,
        file,
        len,
        sealed,
        short,
    })
}
