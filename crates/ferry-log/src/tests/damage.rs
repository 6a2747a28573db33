//! Damage is never taken for a torn end: every byte of a small log flipped,
//! every length of its segments cut, each answered by a refusal or by
//! every record whose bytes are intact — never a silent loss.

use super::*;
use crate::segment::{FRAME_V2, HEADER_V2};

/// Records of every shape the scan must tell apart: short and long, with
/// runs of zeros, and lengths whose low byte is zero.
fn shapes() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..40usize {
        let mut r = format!("record {i} ").into_bytes();
        match i % 5 {
            0 => r.extend(std::iter::repeat_n(b'x', i * 7)),
            1 => r.extend(std::iter::repeat_n(0u8, 40)),
            2 => r.resize(256, b'y'),
            3 => r.extend((0..=255u8).cycle().take(300)),
            // A payload with sectors of zeros in it: data, not a torn write.
            4 if i == 9 => r.extend(std::iter::repeat_n(0u8, 1500)),
            _ => {}
        }
        out.push(r);
    }
    out
}

/// Writes `want` in small segments; replies the segments' paths.
fn write_small_log(dir: &Path, want: &[Vec<u8>]) -> Vec<PathBuf> {
    let options = Options {
        segment_bytes: 2048,
        ..Options::default()
    };
    let (log, _, _) = open(dir, options).unwrap();
    for r in want {
        let lsn = log.append(r).unwrap();
        wait_durable(&log, lsn);
    }
    log.close();
    segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

/// Each record's frame-and-payload span in its segment, by segment.
fn spans(paths: &[PathBuf]) -> Vec<Vec<(usize, usize)>> {
    segments(paths[0].parent().unwrap())
        .unwrap()
        .iter()
        .map(|(seq, p)| {
            let s = scan(&fs::read(p).unwrap(), *seq);
            assert!(s.bad.is_empty());
            s.records.iter().map(|&(a, b)| (a - FRAME, b)).collect()
        })
        .collect()
}

fn replayed(dir: &Path) -> Result<(Recovery, Vec<Vec<u8>>), LogError> {
    let mut seen = Vec::new();
    let rec = inspect(dir, |r| {
        seen.push(r.to_vec());
        Ok(())
    })?;
    Ok((rec, seen))
}

/// Flips one bit of every byte of every segment (and of the zeros a crash
/// leaves after the last one's data): a flip in a header, or in any record
/// but the very last, is refused, naming the place; a flip in the last
/// record cuts that record alone; a flip in the zeros cuts nothing whole.
#[test]
fn every_flipped_byte_is_refused_or_loses_only_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    let want = shapes();
    let paths = write_small_log(dir.path(), &want);
    assert!(paths.len() >= 3, "{} segments", paths.len());
    assert!(
        want.iter()
            .any(|r| r.windows(1024).any(|w| w.iter().all(|&b| b == 0)))
    );
    let spans = spans(&paths);
    // As a kill -9 leaves it: the last segment's preallocated zeros.
    let last = paths.len() - 1;
    let mut f = OpenOptions::new().append(true).open(&paths[last]).unwrap();
    f.write_all(&[0; 600]).unwrap();
    drop(f);
    let total = want.len() as u64;
    let mut flips = 0;
    for (si, path) in paths.iter().enumerate() {
        let pristine = fs::read(path).unwrap();
        for at in 0..pristine.len() {
            let mut bytes = pristine.clone();
            bytes[at] ^= 1 << (at % 8);
            fs::write(path, &bytes).unwrap();
            flips += 1;
            let hit = spans[si].iter().position(|&(a, b)| (a..b).contains(&at));
            let before: usize = spans[..si].iter().map(Vec::len).sum();
            let result = replayed(dir.path());
            let is_last_record = si == last && hit == Some(spans[si].len() - 1);
            let in_zeros = si == last && at >= spans[si].last().unwrap().1;
            if is_last_record || in_zeros {
                let (rec, seen) = result.unwrap_or_else(|e| panic!("flip at {si}:{at}: {e}"));
                let kept = if in_zeros { total } else { total - 1 };
                assert_eq!(seen.len() as u64, kept, "flip at {si}:{at}");
                assert_eq!(seen[..], want[..kept as usize]);
                assert!(rec.cut.is_some(), "flip at {si}:{at}: nothing cut");
            } else {
                match result {
                    Err(LogError::Corrupt {
                        path: p,
                        offset,
                        following,
                        ..
                    }) => {
                        assert_eq!(&p, path, "flip at {si}:{at}");
                        match hit {
                            Some(r) => {
                                assert_eq!(offset, spans[si][r].0 as u64, "flip at {si}:{at}")
                            }
                            // A version flipped to 2 reads the header as
                            // format 2's, and fails just after it.
                            None => assert!(offset < HEADER as u64, "flip at {si}:{at}: {offset}"),
                        }
                        // A header that does not check hides its segment's
                        // records: only later segments' are counted.
                        let upto = hit.map_or(spans[si].len(), |r| r + 1);
                        let want_following = total as usize - before - upto;
                        assert_eq!(following as usize, want_following, "flip at {si}:{at}");
                    }
                    other => panic!(
                        "flip at {si}:{at} (record {hit:?}) was not refused: {:?}",
                        other.map(|(r, s)| (r, s.len()))
                    ),
                }
            }
        }
        fs::write(path, &pristine).unwrap();
    }
    assert!(flips > 4000, "{flips} flips");
}

/// Cuts every segment at every length: the last one's cuts lose only the
/// records they cut into; any other's is refused (the log had moved past
/// it, and its successor says where it ended).
#[test]
fn every_cut_is_refused_or_loses_only_what_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    let want = shapes();
    let paths = write_small_log(dir.path(), &want);
    let spans = spans(&paths);
    let last = paths.len() - 1;
    for (si, path) in paths.iter().enumerate() {
        let pristine = fs::read(path).unwrap();
        let before: usize = spans[..si].iter().map(Vec::len).sum();
        for len in 0..pristine.len() {
            fs::write(path, &pristine[..len]).unwrap();
            let result = replayed(dir.path());
            if si == last {
                let (_, seen) = result.unwrap_or_else(|e| panic!("cut at {len}: {e}"));
                let whole = spans[si].iter().filter(|&&(_, b)| b <= len).count();
                assert_eq!(seen[..], want[..before + whole], "cut at {len}");
            } else {
                assert!(
                    matches!(result, Err(LogError::Corrupt { .. })),
                    "segment {si} cut at {len} was not refused"
                );
            }
        }
        fs::write(path, &pristine).unwrap();
    }
}

/// Salvage, on a sample of the flips: every record but the damaged one
/// comes back in order, the damaged segment is linked into `damaged/`
/// unchanged, and appends go on in a new segment.
#[test]
fn salvage_skips_only_the_damaged_record_and_keeps_the_segment() {
    let pristine_dir = tempfile::tempdir().unwrap();
    let want = shapes();
    let paths = write_small_log(pristine_dir.path(), &want);
    let spans = spans(&paths);
    let mut samples = 0;
    for (si, path) in paths.iter().enumerate() {
        let bytes = fs::read(path).unwrap();
        for (r, &(a, b)) in spans[si].iter().enumerate() {
            // Three places per record: its frame, its first and last byte.
            for at in [a + 1, a + FRAME, b - 1] {
                samples += 1;
                let dir = tempfile::tempdir().unwrap();
                for p in &paths {
                    fs::copy(p, dir.path().join(p.file_name().unwrap())).unwrap();
                }
                let victim = dir.path().join(path.file_name().unwrap());
                let mut damaged = bytes.clone();
                damaged[at] ^= 0x20;
                fs::write(&victim, &damaged).unwrap();
                let salvage = Options {
                    salvage: true,
                    segment_bytes: 2048,
                    ..Options::default()
                };
                let index: usize = spans[..si].iter().map(Vec::len).sum::<usize>() + r;
                let last_record = index == want.len() - 1;
                let (log, rec, seen) = open(dir.path(), salvage.clone()).unwrap();
                let mut expect = want.clone();
                expect.remove(index);
                assert_eq!(seen, expect, "flip at {si}:{at}");
                if last_record {
                    // Cut, as a torn end is: its bytes kept.
                    let cut = rec.cut.clone().unwrap();
                    assert_eq!(cut.offset, a as u64);
                    let mut cut_bytes = damaged[a..b].to_vec();
                    while cut_bytes.last() == Some(&0) {
                        cut_bytes.pop();
                    }
                    assert_eq!(fs::read(cut.kept.unwrap()).unwrap(), cut_bytes);
                    drop(log);
                    continue;
                }
                assert_eq!(rec.skipped.len(), 1, "flip at {si}:{at}");
                assert_eq!(rec.skipped[0].offset, a as u64);
                assert_eq!(rec.kept.len(), 1);
                assert_eq!(fs::read(&rec.kept[0]).unwrap(), damaged, "kept unchanged");
                assert_eq!(fs::read(&victim).unwrap(), damaged, "never rewritten");
                let lsn = log.append(b"after salvage").unwrap();
                wait_durable(&log, lsn);
                drop(log);
                let (_, _, seen) = open(dir.path(), salvage).unwrap();
                expect.push(b"after salvage".to_vec());
                assert_eq!(seen, expect, "flip at {si}:{at}, reopened");
            }
        }
    }
    assert!(samples >= 100, "{samples} samples");
}

/// A sector of zeros amid the last segment's records is a write the disk
/// did not finish (its pages landed out of order): cut there, records
/// after it included, and the start goes on.
#[test]
fn a_sector_of_zeros_in_the_last_segment_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let want: Vec<Vec<u8>> = (0..40).map(|i| vec![b'a' + (i % 26) as u8; 100]).collect();
    let (log, _, _) = open(dir.path(), Options::default()).unwrap();
    for r in &want {
        log.append(r).unwrap();
    }
    wait_durable(&log, want.len() as u64);
    log.close();
    let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[2048..2560].fill(0);
    fs::write(&path, &bytes).unwrap();
    let record = FRAME + 100;
    let torn = (2048 - HEADER) / record;
    let (_, rec, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen[..], want[..torn]);
    let cut = rec.cut.unwrap();
    assert_eq!(cut.offset as usize, HEADER + torn * record);
    assert!(cut.records > 0, "whole records after the hole go with it");
    assert_eq!(
        fs::read(cut.kept.unwrap()).unwrap(),
        bytes[cut.offset as usize..].to_vec()
    );
}

/// A segment missing from the middle of the log is damage.
#[test]
fn a_missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_small_log(dir.path(), &shapes());
    fs::remove_file(&paths[1]).unwrap();
    match replayed(dir.path()) {
        Err(LogError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, paths[2]);
            assert!(reason.contains("is missing"), "{reason}");
        }
        other => panic!("not refused: {:?}", other.map(|(r, _)| r)),
    }
}

/// A data directory of format 2 (20-byte headers, 8-byte frames) reads
/// back; appends go to a new segment of the current format, and a flip
/// in its middle is still refused.
#[test]
fn an_older_format_reads_back_and_is_never_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let want = shapes();
    let mut seg = MAGIC.to_vec();
    seg.extend_from_slice(&2u32.to_le_bytes());
    seg.extend_from_slice(&1u64.to_le_bytes());
    assert_eq!(seg.len(), HEADER_V2);
    let mut spans = Vec::new();
    for r in &want {
        let at = seg.len();
        seg.extend_from_slice(&(r.len() as u32).to_le_bytes());
        seg.extend_from_slice(&crc32fast::hash(r).to_le_bytes());
        seg.extend_from_slice(r);
        spans.push(at);
        assert_eq!(seg.len() - at, FRAME_V2 + r.len());
    }
    let path = dir.path().join(segment_name(1));
    fs::write(&path, &seg).unwrap();
    let mut damaged = seg.clone();
    damaged[spans[3] + FRAME_V2 + 1] ^= 4;
    fs::write(&path, &damaged).unwrap();
    match replayed(dir.path()) {
        Err(LogError::Corrupt {
            offset, following, ..
        }) => assert_eq!((offset, following), (spans[3] as u64, 36)),
        other => panic!("not refused: {:?}", other.map(|(r, _)| r)),
    }
    fs::write(&path, &seg).unwrap();
    let (log, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, want);
    let lsn = log.append(b"new").unwrap();
    wait_durable(&log, lsn);
    log.close();
    assert_eq!(
        fs::read(&path).unwrap(),
        seg,
        "the old segment is left as it was"
    );
    let segs = segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 2);
    let (_, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen.len(), want.len() + 1);
}

/// Zeros inside a payload are data: a byte damaged in a record that holds
/// sectors of zeros, with whole records after it in the last segment, is
/// damage — refused — and not taken for a torn write.
#[test]
fn a_damaged_record_full_of_zeros_is_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut big = b"big ".to_vec();
    big.extend(std::iter::repeat_n(0u8, 3000));
    let want = vec![
        b"first".to_vec(),
        big,
        b"after 1".to_vec(),
        b"after 2".to_vec(),
    ];
    let (log, _, _) = open(dir.path(), Options::default()).unwrap();
    for r in &want {
        log.append(r).unwrap();
    }
    wait_durable(&log, want.len() as u64);
    log.close();
    let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let big_at = HEADER + FRAME + want[0].len();
    bytes[big_at + FRAME + 2000] ^= 1;
    fs::write(&path, &bytes).unwrap();
    match replayed(dir.path()) {
        Err(LogError::Corrupt {
            offset, following, ..
        }) => assert_eq!((offset, following), (big_at as u64, 2)),
        other => panic!("not refused: {:?}", other.map(|(r, s)| (r, s.len()))),
    }
}
