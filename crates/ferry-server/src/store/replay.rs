//! Replay: the log's records, oldest first, folded into what each queue
//! holds — its settings, shutdown state, next id, DEDUP keys, and the
//! messages put and not finished, with their attempts. A message leased at
//! the crash comes back with one attempt more, as if its consumer's
//! connection had closed.
//!
//! A checkpoint's snapshot spans many records and so may be cut by a crash:
//! replay sets a queue's records from its Reset to its SnapshotEnd aside,
//! and puts them in the queue's place only when SnapshotEnd arrives. A
//! snapshot cut short that way is followed, at the next start and before
//! anything else, by a SnapshotAbort, so that the records after it are not
//! taken for the rest of the snapshot.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use ferry_core::engine;

use super::records::{self, Fields};

/// A queue as the log describes it.
#[derive(Default)]
pub(crate) struct Recovered {
    pub(crate) config: engine::Config,
    pub(crate) explicit: bool,
    /// Dropped after this many ms unused (see `idle_sweeper`).
    pub(crate) expire: Option<u64>,
    /// ... but only while it holds nothing (an expiry a user without
    /// admin set, making the queue).
    pub(crate) expire_if_empty: bool,
    /// The type of the order keys of the messages it holds.
    pub(crate) keytype: Option<Bytes>,
    pub(crate) shutdown: Option<bool>,
    pub(crate) next_id: u64,
    pub(crate) msgs: BTreeMap<u64, RecoveredMsg>,
    /// DEDUP keys: the id they answer, and until when (Unix ms).
    pub(crate) dedup: HashMap<Bytes, (u64, u64)>,
}

/// A stored message as the log describes it.
pub(crate) struct RecoveredMsg {
    pub(crate) attempts: u32,
    /// Leased when the log ends.
    pub(crate) out: bool,
    /// Unix ms before which it is not delivered (0: none).
    pub(crate) due: u64,
    pub(crate) key: Bytes,
    pub(crate) data: Bytes,
}

/// Replay's state: the queues, and the snapshots still being read.
#[derive(Default)]
pub(crate) struct Replay {
    state: HashMap<Bytes, Recovered>,
    /// A queue's snapshot between its Reset and its SnapshotEnd. It
    /// replaces the queue only once complete: a crash in the middle of
    /// writing it leaves the queue as the records before it describe
    /// (those segments are deleted only after every snapshot is durable).
    pending: HashMap<Bytes, Recovered>,
}

impl Replay {
    /// Applies one record; an error names what is wrong with it.
    pub(crate) fn apply(&mut self, record: &[u8]) -> Result<(), String> {
        let mut f = Fields(Bytes::copy_from_slice(record));
        let tag = f.u8()?;
        let name = f.name()?;
        match tag {
            records::RESET => {
                self.pending.insert(name, Recovered::default());
            }
            records::SNAPSHOT_END => {
                if let Some(q) = self.pending.remove(&name) {
                    self.state.insert(name, q);
                }
            }
            records::SNAPSHOT_ABORT => {
                self.pending.remove(&name);
            }
            _ => {
                let state = if self.pending.contains_key(&name) {
                    &mut self.pending
                } else {
                    &mut self.state
                };
                apply(state, tag, name, f)?;
            }
        }
        Ok(())
    }

    /// The queues, with incomplete snapshots dropped, and the names of the
    /// queues whose snapshot was incomplete.
    pub(crate) fn finish(self) -> (HashMap<Bytes, Recovered>, Vec<Bytes>) {
        (self.state, self.pending.into_keys().collect())
    }
}

fn put(state: &mut HashMap<Bytes, Recovered>, name: Bytes, id: u64, msg: RecoveredMsg) {
    let q = state.entry(name).or_default();
    q.next_id = q.next_id.max(id + 1);
    q.msgs.insert(id, msg);
}

fn message(
    f: &mut Fields,
    data: impl FnOnce(&mut Fields) -> Result<Bytes, String>,
) -> Result<(u64, RecoveredMsg), String> {
    let (id, attempts, due, key) = f.put_head()?;
    let data = data(f)?;
    Ok((
        id,
        RecoveredMsg {
            attempts,
            out: false,
            due,
            key,
            data,
        },
    ))
}

fn apply(
    state: &mut HashMap<Bytes, Recovered>,
    tag: u8,
    name: Bytes,
    mut f: Fields,
) -> Result<(), String> {
    match tag {
        records::PUT => {
            let (id, msg) = message(&mut f, |f| Ok(f.rest()))?;
            put(state, name, id, msg);
        }
        records::PUT_MANY => {
            if f.is_empty() {
                return Err("a PutMany record holds no message".into());
            }
            while !f.is_empty() {
                let (id, msg) = message(&mut f, |f| {
                    let len = f.u32()?;
                    f.bytes(len as usize)
                })?;
                put(state, name.clone(), id, msg);
            }
        }
        records::FINISH => {
            let id = f.u64()?;
            if let Some(q) = state.get_mut(&name) {
                q.msgs.remove(&id);
            }
        }
        records::FINISH_MANY => {
            let ids = f.rest();
            if ids.len() < 16 || !ids.len().is_multiple_of(8) {
                return Err("a FinishMany record's ids are cut short".into());
            }
            if let Some(q) = state.get_mut(&name) {
                for id in ids.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(id);
                    q.msgs.remove(&u64::from_le_bytes(b));
                }
            }
        }
        records::RETURN => {
            let id = f.u64()?;
            let attempts = f.u32()?;
            if let Some(m) = state.get_mut(&name).and_then(|q| q.msgs.get_mut(&id)) {
                m.attempts = attempts;
                m.out = false;
            }
        }
        records::LEASE => {
            let id = f.u64()?;
            if let Some(m) = state.get_mut(&name).and_then(|q| q.msgs.get_mut(&id)) {
                m.out = true;
            }
        }
        records::SETTINGS => {
            let (explicit, config, expire, expire_if_empty) = f.settings()?;
            let q = state.entry(name).or_default();
            q.explicit = explicit;
            q.config = config;
            q.expire = expire;
            q.expire_if_empty = expire_if_empty;
        }
        records::SHUTDOWN => {
            let immediate = f.u8()? != 0;
            let q = state.entry(name).or_default();
            q.shutdown = Some(q.shutdown.unwrap_or(false) || immediate);
        }
        records::DROP => {
            state.remove(&name);
        }
        records::KEYTYPE => {
            state.entry(name).or_default().keytype = Some(f.rest());
        }
        records::REOPEN => {
            state.entry(name).or_default().shutdown = None;
        }
        records::CHECKPOINT => {}
        records::DEDUP => {
            let id = f.u64()?;
            let until = f.u64()?;
            state
                .entry(name)
                .or_default()
                .dedup
                .insert(f.rest(), (id, until));
        }
        records::NEXT_ID => {
            let next = f.id()?;
            let q = state.entry(name).or_default();
            q.next_id = q.next_id.max(next);
        }
        _ => return Err(format!("unknown record type {tag}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{
        FINISH, FINISH_MANY, PUT, PUT_MANY, RESET, SNAPSHOT_ABORT, SNAPSHOT_END, head, put_head,
    };

    #[test]
    fn an_id_out_of_range_is_refused_not_overflowed() {
        // Found by fuzz/ (log_record): a put of id u64::MAX overflowed
        // the next id.
        let mut r = Replay::default();
        assert!(
            r.apply(&put(b"q", u64::MAX))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(r.apply(&put(b"q", 1 << 63)).is_err());
        let mut next = marker(records::NEXT_ID, b"q");
        next.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(r.apply(&next).is_err());
        r.apply(&put(b"q", (1 << 63) - 1)).unwrap();
    }

    #[test]
    fn truncated_and_unknown_records_are_refused_not_panicked_on() {
        let mut r = Replay::default();
        for bad in [
            &[][..],
            &[PUT],
            &[PUT, 5, b'q'],
            &[99, 1, b'q'],
            &[FINISH, 1, b'q', 1, 2],
            &[FINISH_MANY, 1, b'q', 1, 0, 0, 0, 0, 0, 0, 0],
            &[FINISH_MANY, 1, b'q', 1, 0, 0, 0, 0, 0, 0, 0, 2, 0],
        ] {
            assert!(r.apply(bad).is_err(), "{bad:?}");
        }
    }

    fn put(q: &[u8], id: u64) -> Vec<u8> {
        let mut b = Vec::new();
        head(&mut b, PUT, q);
        put_head(&mut b, id, 0, 0, b"");
        b.extend_from_slice(b"payload");
        b
    }

    fn marker(tag: u8, q: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        head(&mut b, tag, q);
        b
    }

    fn ids(r: Replay) -> Vec<u64> {
        r.finish().0[&Bytes::from_static(b"q")]
            .msgs
            .keys()
            .copied()
            .collect()
    }

    /// What the journal writes for a batch of puts.
    fn put_many(q: &[u8], ids: &[u64]) -> Vec<u8> {
        let mut b = marker(PUT_MANY, q);
        for &id in ids {
            put_head(&mut b, id, 1, 0, b"k");
            b.extend_from_slice(&7u32.to_le_bytes());
            b.extend_from_slice(b"payload");
        }
        b
    }

    #[test]
    fn put_many_puts_each_message() {
        let mut r = Replay::default();
        r.apply(&put_many(b"q", &[3, 5, 8])).unwrap();
        let state = r.finish().0;
        let q = &state[&Bytes::from_static(b"q")];
        assert_eq!(q.msgs.keys().copied().collect::<Vec<_>>(), vec![3, 5, 8]);
        assert_eq!(q.next_id, 9);
        let m = &q.msgs[&5];
        assert_eq!(
            (m.attempts, &m.key[..], &m.data[..]),
            (1, &b"k"[..], &b"payload"[..])
        );
    }

    #[test]
    fn a_put_many_cut_short_is_refused() {
        let whole = put_many(b"q", &[1, 2]);
        for cut in [whole.len() - 1, whole.len() - 8, 3] {
            assert!(
                Replay::default().apply(&whole[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn finish_many_finishes_each_id() {
        let mut r = Replay::default();
        for id in 1..=4 {
            r.apply(&put(b"q", id)).unwrap();
        }
        let mut b = marker(FINISH_MANY, b"q");
        for id in [1u64, 3, 9] {
            b.extend_from_slice(&id.to_le_bytes());
        }
        r.apply(&b).unwrap();
        assert_eq!(ids(r), vec![2, 4]);
    }

    #[test]
    fn records_after_an_aborted_snapshot_count() {
        let mut r = Replay::default();
        r.apply(&put(b"q", 1)).unwrap();
        r.apply(&marker(RESET, b"q")).unwrap();
        r.apply(&put(b"q", 1)).unwrap();
        // The crash; the next start appends SnapshotAbort, then lives on.
        r.apply(&marker(SNAPSHOT_ABORT, b"q")).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        assert_eq!(ids(r), vec![1, 2]);
    }

    #[test]
    fn a_snapshot_cut_short_by_a_crash_changes_nothing() {
        let mut r = Replay::default();
        r.apply(&put(b"q", 1)).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        // A checkpoint began: Reset, part of the snapshot, then the crash.
        r.apply(&marker(RESET, b"q")).unwrap();
        r.apply(&put(b"q", 1)).unwrap();
        assert_eq!(ids(r), vec![1, 2]);
    }

    #[test]
    fn a_complete_snapshot_replaces_the_queue() {
        let mut r = Replay::default();
        r.apply(&put(b"q", 1)).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        r.apply(&marker(RESET, b"q")).unwrap();
        r.apply(&put(b"q", 2)).unwrap();
        r.apply(&marker(SNAPSHOT_END, b"q")).unwrap();
        r.apply(&put(b"q", 3)).unwrap();
        assert_eq!(ids(r), vec![2, 3]);
    }
}
