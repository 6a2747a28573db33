//! The log's rules, on real files in a temp directory.

use super::*;
use crate::segment::{HEADER, MAGIC, VERSION, scan, segment_name};
use std::collections::HashSet;
use std::io::{Seek, Write};
use std::sync::atomic::AtomicU64;

mod damage;

fn quiet() -> (OnDurable, OnError) {
    (Box::new(|_| {}), Box::new(|_| {}))
}

fn open(dir: &Path, options: Options) -> Result<(Log, Recovery, Vec<Vec<u8>>), LogError> {
    let mut seen = Vec::new();
    let (d, e) = quiet();
    let (log, rec) = Log::open(
        dir,
        options,
        |r| {
            seen.push(r.to_vec());
            Ok(())
        },
        d,
        e,
    )?;
    Ok((log, rec, seen))
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("record {i} {}", "x".repeat(i % 97)).into_bytes())
        .collect()
}

fn wait_durable(log: &Log, lsn: Lsn) {
    let t = Instant::now();
    while log.durable() < lsn {
        assert!(t.elapsed() < Duration::from_secs(10), "never durable");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn records_come_back_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let want = records(1000);
    {
        let (log, rec, seen) = open(dir.path(), Options::default()).unwrap();
        assert_eq!((rec.records, seen.len()), (0, 0));
        let mut last = 0;
        for r in &want {
            last = log.append(r).unwrap();
        }
        wait_durable(&log, last);
    }
    let (_log, rec, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(rec.records, 1000);
    assert_eq!(seen, want);
    assert!(rec.cut.is_none());
}

#[test]
fn many_writers_share_fsyncs_and_every_append_becomes_durable() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    let (log, _) = Log::open(
        dir.path(),
        Options::default(),
        |_| Ok(()),
        Box::new(move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        }),
        Box::new(|_| {}),
    )
    .unwrap();
    let log = Arc::new(log);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..500 {
                    last = log.append(format!("{t}-{i}").as_bytes()).unwrap();
                }
                wait_durable(&log, last);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.durable(), 4000);
    let syncs = calls.load(Ordering::Relaxed);
    assert!(syncs < 4000, "group commit: {syncs} syncs for 4000 appends");
}

#[test]
fn a_torn_tail_is_cut_and_logging_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let want = records(50);
    {
        let (log, _, _) = open(dir.path(), Options::default()).unwrap();
        for r in &want {
            log.append(r).unwrap();
        }
        log.close();
    }
    let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
    let full = fs::metadata(&path).unwrap().len();
    // Every cut inside the last record leaves the 49 before it.
    let last_len = (FRAME + want[49].len()) as u64;
    for cut in [1, 3, FRAME as u64, last_len - 1] {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - cut).unwrap();
        drop(f);
        let (log, rec, seen) = open(dir.path(), Options::default()).unwrap();
        assert_eq!(seen, want[..49].to_vec(), "cut {cut}");
        let c = rec.cut.clone().unwrap();
        assert_eq!((c.offset, c.bytes), (full - last_len, last_len - cut));
        // Put the record back, as a client retrying would.
        let lsn = log.append(&want[49]).unwrap();
        wait_durable(&log, lsn);
        log.close();
        assert_eq!(fs::metadata(&path).unwrap().len(), full);
    }
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _, _) = open(dir.path(), Options::default()).unwrap();
        log.append(b"kept").unwrap();
        log.close();
    }
    let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0xff; 37])
        .unwrap();
    let (_, rec, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, vec![b"kept".to_vec()]);
    assert_eq!(rec.cut.unwrap().bytes, 37);
}

#[test]
fn corruption_in_an_earlier_segment_stops_the_start_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        segment_bytes: 4096,
        ..Options::default()
    };
    {
        let (log, _, _) = open(dir.path(), small.clone()).unwrap();
        for r in records(300) {
            log.append(&r).unwrap();
            // Small batches, so segments rotate as records arrive.
            if log.appended() % 10 == 0 {
                wait_durable(&log, log.appended());
            }
        }
        log.close();
    }
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let victim = &segs[1].1;
    let mut bytes = fs::read(victim).unwrap();
    bytes[HEADER + FRAME + 2] ^= 0x10;
    fs::write(victim, &bytes).unwrap();
    let sizes: Vec<u64> = segs
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .collect();
    match open(dir.path(), small.clone()) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!((&path, offset), (victim, HEADER as u64));
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, r, _)| r)),
    }
    let after: Vec<u64> = segs
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(sizes, after, "a refused start changes nothing");
    let (_, rec, seen) = open(
        dir.path(),
        Options {
            salvage: true,
            ..small
        },
    )
    .unwrap();
    assert_eq!(rec.skipped.len(), 1);
    assert_eq!(seen.len(), 299, "only the damaged record is skipped");
    assert_eq!(rec.kept.len(), 1);
}

#[test]
fn a_second_log_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _, _) = open(dir.path(), Options::default()).unwrap();
    assert!(matches!(
        open(dir.path(), Options::default()),
        Err(LogError::Locked(_))
    ));
}

#[test]
fn a_segment_torn_while_being_created_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _, _) = open(dir.path(), Options::default()).unwrap();
        log.append(b"one").unwrap();
        log.close();
    }
    fs::write(dir.path().join(segment_name(2)), b"FERRY").unwrap();
    let (log, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, vec![b"one".to_vec()]);
    let lsn = log.append(b"two").unwrap();
    wait_durable(&log, lsn);
    log.close();
    let (_, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn async_mode_reports_after_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(
        dir.path(),
        Options {
            durability: Durability::Async,
            ..Options::default()
        },
    )
    .unwrap();
    // Nobody writes it: the writer thread comes by within a second.
    let t = Instant::now();
    let lsn = log.append(b"a").unwrap();
    wait_durable(&log, lsn);
    assert!(t.elapsed() < Duration::from_millis(1500));
    // A caller that waits writes it itself, at once.
    let lsn = log.append(b"b").unwrap();
    assert!(log.write_now());
    assert!(log.durable() >= lsn);
    log.close();
    let (_, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
}

fn open_with(dir: &Path, storage: Arc<dyn Storage>, errors: Arc<AtomicU64>) -> Log {
    let (log, _) = Log::open(
        dir,
        Options {
            storage,
            ..Options::default()
        },
        |_| Ok(()),
        Box::new(|_| {}),
        Box::new(move |_| {
            errors.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .unwrap();
    log
}

#[test]
fn a_failed_fsync_is_fatal_and_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let errors = Arc::new(AtomicU64::new(0));
    let log = open_with(dir.path(), Arc::new(faults.clone()), Arc::clone(&errors));
    let ok = log.append(b"before").unwrap();
    wait_durable(&log, ok);
    faults.fail_sync_after(1);
    let doomed = log.append(b"doomed").unwrap();
    let t = Instant::now();
    while !log.failed() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        log.durable() < doomed,
        "a record whose sync failed was reported durable"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 1);
    assert!(matches!(log.append(b"after"), Err(LogError::Failed)));
}

#[test]
fn a_failed_write_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let errors = Arc::new(AtomicU64::new(0));
    let log = open_with(dir.path(), Arc::new(faults.clone()), Arc::clone(&errors));
    faults.fail_write_after(1);
    let lsn = log.append(b"x").unwrap();
    let t = Instant::now();
    while !log.failed() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(log.durable() < lsn);
    assert_eq!(errors.load(Ordering::Relaxed), 1);
}

/// Power loss at random moments under concurrent appends: after the cut
/// (files back to their last synced length), every record that was
/// reported durable is there, and nothing that was never appended is.
#[test]
fn power_loss_keeps_every_durable_record() {
    for seed in 0..12u64 {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let log = Arc::new(open_with(
            dir.path(),
            Arc::new(faults.clone()),
            Arc::new(AtomicU64::new(0)),
        ));
        let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (log, acked, stop) = (Arc::clone(&log), Arc::clone(&acked), Arc::clone(&stop));
                std::thread::spawn(move || {
                    for i in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let payload = format!("{seed}-{t}-{i}");
                        let Ok(lsn) = log.append(payload.as_bytes()) else {
                            return;
                        };
                        while log.durable() < lsn {
                            if stop.load(Ordering::Relaxed) || log.failed() {
                                return;
                            }
                            std::thread::yield_now();
                        }
                        acked.lock().push(payload);
                    }
                })
            })
            .collect();
        // The cut lands after a different number of acknowledgements each
        // round (waited for, not slept for: a loaded machine acknowledges
        // late), with appends in flight.
        let t = Instant::now();
        while acked.lock().len() < (1 + seed * 15) as usize {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "seed {seed}: no acks"
            );
            std::thread::yield_now();
        }
        faults.power_cut().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        let acked: Vec<String> = acked.lock().clone();
        drop(log);
        let (_, _, seen) = open(dir.path(), Options::default()).unwrap();
        let seen: HashSet<String> = seen
            .into_iter()
            .map(|r| String::from_utf8(r).unwrap())
            .collect();
        for p in &acked {
            assert!(seen.contains(p), "seed {seed}: durable record {p} lost");
        }
        assert!(seen.iter().all(|p| p.starts_with(&format!("{seed}-"))));
        assert!(
            !acked.is_empty(),
            "seed {seed}: nothing was acknowledged before the cut"
        );
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Segments are preallocated while written and cut to their data once the
/// log moves past them or closes.
#[test]
fn segments_are_preallocated_and_cut_to_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    };
    let want = records(2000);
    let (log, _, _) = open(dir.path(), small.clone()).unwrap();
    for r in &want {
        let lsn = log.append(r).unwrap();
        if lsn % 50 == 0 {
            wait_durable(&log, lsn);
        }
    }
    wait_durable(&log, log.appended());
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let (_, last) = segs.last().unwrap();
    assert_eq!(file_len(last), 64 << 10, "the open segment is preallocated");
    for (seq, path) in &segs[..segs.len() - 1] {
        let bytes = fs::read(path).unwrap();
        let s = scan(&bytes, *seq);
        assert!(s.bad.is_empty());
        assert_eq!(s.end, bytes.len(), "segment {seq} holds no zero tail");
    }
    log.close();
    let bytes = fs::read(last).unwrap();
    assert_eq!(scan(&bytes, segs.last().unwrap().0).end, bytes.len());
    let data: u64 = segs.iter().map(|(_, p)| file_len(p)).sum();
    let (log, rec, seen) = open(dir.path(), small).unwrap();
    assert_eq!(seen, want);
    assert!(rec.cut.is_none());
    assert_eq!(log.bytes(), data, "bytes count data, not preallocation");
}

/// After a crash the open segment ends in zeros: that is space, not data.
/// A run of zeros with data after it is a torn tail in the last segment
/// and corruption in any other.
#[test]
fn zeros_end_the_data_and_zeros_before_data_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open_with(
        dir.path(),
        Arc::new(faults.clone()),
        Arc::new(AtomicU64::new(0)),
    );
    for r in records(20) {
        log.append(&r).unwrap();
    }
    wait_durable(&log, 20);
    faults.power_cut().unwrap();
    drop(log);
    let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
    assert_eq!(file_len(&path), Options::default().segment_bytes);
    let (log, rec, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, records(20));
    assert!(rec.cut.is_none(), "{:?}", rec.cut);
    drop(log);

    // Data beyond a run of zeros: a write that landed out of order.
    let data_end = fs::read(&path).unwrap().len() as u64;
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(data_end + 100).unwrap();
    f.seek(std::io::SeekFrom::Start(data_end + 40)).unwrap();
    f.write_all(b"late bytes").unwrap();
    drop(f);
    let (log, rec, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, records(20));
    let c = rec.cut.unwrap();
    assert_eq!((c.offset, c.bytes), (data_end, 50));
    // The same stretch in a segment that is not the last stops the start.
    let lsn = log.append(b"next").unwrap();
    wait_durable(&log, lsn);
    log.close();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0; 16]).unwrap();
    f.write_all(b"late bytes").unwrap();
    drop(f);
    fs::write(dir.path().join(segment_name(2)), {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&2u64.to_le_bytes());
        h
    })
    .unwrap();
    assert!(matches!(
        open(dir.path(), Options::default()),
        Err(LogError::Corrupt { .. })
    ));
}

/// A disk too full for a new segment is not a crash: the log stays in the
/// current segment, says so, and moves on once there is room.
#[test]
fn a_full_disk_keeps_the_segment_and_reports_short_of_space() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (log, _) = Log::open(
        dir.path(),
        Options {
            segment_bytes: 4096,
            storage: Arc::new(faults.clone()),
            ..Options::default()
        },
        |_| Ok(()),
        Box::new(|_| {}),
        Box::new(|_| {}),
    )
    .unwrap();
    faults.fill_disk();
    let want = records(100);
    for r in &want {
        let lsn = log.append(r).unwrap();
        wait_durable(&log, lsn);
    }
    assert!(log.short_of_space());
    assert!(!log.failed());
    assert_eq!(segments(dir.path()).unwrap().len(), 1);
    // A second later the next batch tries again, and there is room now.
    std::thread::sleep(Duration::from_millis(1100));
    let lsn = log.append(b"after").unwrap();
    wait_durable(&log, lsn);
    assert!(!log.short_of_space());
    assert_eq!(segments(dir.path()).unwrap().len(), 2);
    log.close();
    let (_, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen.len(), 101);
    assert_eq!(seen[..100], want[..]);
}

#[test]
fn an_empty_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path(), Options::default()).unwrap();
    assert!(matches!(log.append(b""), Err(LogError::Empty)));
    let lsn = log.append(b"x").unwrap();
    wait_durable(&log, lsn);
}

/// Sync mode: a caller that leads syncs the batch on its own thread, and
/// once fsyncs are slow leaves them to the writer thread.
#[test]
fn a_caller_leads_the_sync_until_the_disk_is_slow() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let options = Options {
        durability: Durability::Sync,
        storage: Arc::new(faults.clone()),
        ..Options::default()
    };
    let (log, _, _) = open(dir.path(), options).unwrap();
    // No fsync yet: led here, durable when it returns (the writer waits
    // 2 ms for a leader before it syncs what nobody led).
    let lsn = log.append(b"one").unwrap();
    assert_eq!(log.lead(), Some(true));
    assert!(log.durable() >= lsn);

    faults.slow_syncs(Duration::from_millis(5));
    // At most one more is led (if the last real fsync took under 1 ms);
    // after a 5 ms one, the writer is asked, at once.
    let mut declined = None;
    for _ in 0..3 {
        let lsn = log.append(b"slow").unwrap();
        let asked = Instant::now();
        match log.lead() {
            Some(true) => assert!(log.durable() >= lsn),
            None => {
                declined = Some(lsn);
                wait_durable(&log, lsn);
                assert!(asked.elapsed() < Duration::from_secs(1));
                break;
            }
            Some(false) => panic!("the log failed"),
        }
    }
    assert!(
        declined.is_some(),
        "a slow disk's fsyncs stay on the writer"
    );

    // Fast again (the writer's next fsync shows it): callers lead again.
    faults.slow_syncs(Duration::ZERO);
    let led = (0..100).any(|_| {
        let lsn = log.append(b"fast").unwrap();
        wait_durable(&log, lsn);
        let lsn = log.append(b"fast").unwrap();
        let led = log.lead() == Some(true);
        wait_durable(&log, lsn);
        led
    });
    assert!(led, "callers lead again once fsyncs are fast");
}

/// Sync mode: records nobody leads (a lease expiring on a timer) are
/// synced by the writer thread.
#[test]
fn records_nobody_leads_are_synced_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: Durability::Sync,
        ..Options::default()
    };
    let (log, _, _) = open(dir.path(), options).unwrap();
    for _ in 0..3 {
        let lsn = log.append(b"orphan").unwrap();
        wait_durable(&log, lsn);
    }
    assert_eq!(log.syncs(), 3);
}

/// A checkpoint on a full disk still begins a segment (unpreallocated),
/// so that the segments before it can go; once the disk has room,
/// `tend_space` preallocates it and the log is no longer short.
#[test]
fn a_checkpoint_on_a_full_disk_begins_a_segment_and_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (log, _) = Log::open(
        dir.path(),
        Options {
            segment_bytes: 64 << 10,
            storage: Arc::new(faults.clone()),
            ..Options::default()
        },
        |_| Ok(()),
        Box::new(|_| {}),
        Box::new(|_| {}),
    )
    .unwrap();
    assert!(
        dir.path().join(RESERVE_FILE).exists(),
        "the reserve is made"
    );
    let lsn = log.append(b"before").unwrap();
    wait_durable(&log, lsn);
    faults.fill_disk();
    log.start_segment();
    let lsn = log.append(b"snapshot").unwrap();
    wait_durable(&log, lsn);
    assert_eq!(log.started_segment(), 2, "the checkpoint's segment began");
    assert!(log.short_of_space());
    let second = dir.path().join(segment_name(2));
    assert!(file_len(&second) < 64 << 10, "not preallocated");
    log.delete_before(2).unwrap();
    log.tend_space();
    assert!(!log.short_of_space(), "room again: preallocated");
    assert_eq!(file_len(&second), 64 << 10);
    log.close();
    let (_, _, seen) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(seen, vec![b"snapshot".to_vec()]);
}
