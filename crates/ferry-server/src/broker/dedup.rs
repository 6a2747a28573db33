//! A queue's DEDUP keys: the id each key's put got, until when it
//! counts, and what they weigh toward `--max-memory`. Keys go when their
//! window ends — swept in the order they were kept, a few at a time as
//! puts come and once a second by the idle sweeper, so that what they
//! weigh comes back down when the puts stop (it used to stay until the
//! table doubled).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use ferry_core::engine::Millis;

/// What a DEDUP key weighs: its bytes, its entry and its place in the
/// sweep order, roughly.
fn weight(key: &[u8]) -> u64 {
    key.len() as u64 + 96
}

#[derive(Default)]
pub(crate) struct DedupKeys {
    keys: HashMap<Bytes, (u64, Millis)>,
    /// Each key as it was kept, with its end: windows are mostly the same
    /// length, so this is nearly in order of ending; a key kept again
    /// leaves a stale entry, skipped when it comes up.
    order: VecDeque<(Millis, Bytes)>,
    bytes: u64,
}

impl DedupKeys {
    /// The id an earlier put with this key got, if it still counts.
    pub(crate) fn get(&mut self, key: &Bytes, now: Millis) -> Option<u64> {
        match self.keys.get(key) {
            Some(&(id, until)) if until > now => Some(id),
            _ => None,
        }
    }

    /// Keeps a key until `until` (replacing any it had). The key is
    /// copied: a request's arguments are slices of its connection's read
    /// buffer, which a key kept for minutes would otherwise hold whole.
    pub(crate) fn keep(&mut self, key: Bytes, id: u64, until: Millis) {
        let key = Bytes::copy_from_slice(&key);
        let w = weight(&key);
        self.order.push_back((until, key.clone()));
        if self.keys.insert(key, (id, until)).is_none() {
            self.bytes += w;
        }
    }

    /// Lets go of the keys whose window ended by `now`, from the front of
    /// the order (stopping at the first that has not).
    pub(crate) fn sweep(&mut self, now: Millis) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                return;
            }
            let Some((_, key)) = self.order.pop_front() else {
                return;
            };
            // Only if this entry is the key's last keeping.
            if self.keys.get(&key).is_some_and(|&(_, u)| u <= now) {
                self.keys.remove(&key);
                self.bytes -= weight(&key);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = DedupKeys::default();
    }

    /// What they weigh.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a sweep at `now` would let go of something.
    pub(crate) fn due(&self, now: Millis) -> bool {
        self.order.front().is_some_and(|(until, _)| *until <= now)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key that still counts at `now`: (key, id, until).
    pub(crate) fn live(&self, now: Millis) -> impl Iterator<Item = (&Bytes, u64, Millis)> {
        self.keys
            .iter()
            .filter(move |(_, (_, until))| *until > now)
            .map(|(k, &(id, until))| (k, id, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_when_their_window_ends_and_their_weight_with_them() {
        let mut d = DedupKeys::default();
        d.keep(Bytes::from_static(b"a"), 1, 100);
        d.keep(Bytes::from_static(b"b"), 2, 200);
        // Kept again, longer: its first entry ends without it.
        d.keep(Bytes::from_static(b"a"), 1, 300);
        assert_eq!(d.get(&Bytes::from_static(b"a"), 150), Some(1));
        d.sweep(250);
        assert_eq!(d.get(&Bytes::from_static(b"b"), 250), None);
        assert_eq!(d.get(&Bytes::from_static(b"a"), 250), Some(1));
        assert_eq!(d.bytes(), weight(b"a"));
        d.sweep(300);
        assert!(d.is_empty());
        assert_eq!(d.bytes(), 0);
    }
}
