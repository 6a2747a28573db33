//! Named barriers (BARWAIT: multiprocessing.Barrier).
//!
//! A barrier of `parties` lets its waiters through together once that
//! many arrived; each is told its place in the round (0 to parties - 1,
//! in order of arrival). A barrier made with an action holds a full
//! round until its last arriver, which ran the action, says BARPASS (or
//! BARABORT, if the action failed). A broken barrier refuses every wait
//! until it is reset: a waiter whose timeout passed breaks it, as
//! Python's does, and so does a waiter whose connection closed — a dead
//! party never arrives, and the others would wait for it forever. Reset
//! breaks the round in progress and starts afresh. Barriers live in
//! memory and are forgotten once they hold nothing.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// How a waiter's round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Passage {
    /// Let through, with its place in the round.
    Passed(u64),
    Broken,
}

/// Waiters in order of arrival: their tickets and how to wake them.
type Round = Vec<(u64, Arc<Notify>)>;

struct Barrier {
    parties: u64,
    broken: bool,
    /// This round's waiters, in order of arrival.
    arrived: Round,
    /// A full round held while its last arriver (this connection) runs
    /// the action, until BARPASS or BARABORT; the next round may gather
    /// meanwhile.
    acting: Option<(u64, Round)>,
    /// Rounds ended whose waiters have not looked yet.
    ended: HashMap<u64, Passage>,
}

#[derive(Default)]
struct Table {
    barriers: HashMap<Bytes, Barrier>,
    next_ticket: u64,
}

/// What an arrival found.
pub(crate) enum Arrival {
    /// The round is full: this arriver passes at once with its place (and,
    /// for a barrier with an action, runs it, then says BARPASS).
    Last(u64),
    /// It waits, with its ticket.
    Waiting(u64),
    Broken,
    /// The barrier exists with another number of parties.
    Parties(u64),
}

/// One barrier's state, for SYNCLIST and the dashboard.
pub(crate) struct BarrierView {
    pub(crate) name: Bytes,
    pub(crate) parties: u64,
    /// Waiters in this round (a held round's too).
    pub(crate) waiting: usize,
    /// A full round held while its last arriver runs the action.
    pub(crate) acting: bool,
    pub(crate) broken: bool,
}

/// The barriers of a broker.
#[derive(Default)]
pub(crate) struct Barriers {
    table: Mutex<Table>,
}

impl Barrier {
    fn new(parties: u64) -> Barrier {
        Barrier {
            parties,
            broken: false,
            arrived: Vec::new(),
            acting: None,
            ended: HashMap::new(),
        }
    }

    /// Lets a round's waiters through, in their order of arrival.
    fn pass(&mut self, round: Round) {
        for (place, (ticket, notify)) in round.into_iter().enumerate() {
            self.ended.insert(ticket, Passage::Passed(place as u64));
            notify.notify_one();
        }
    }

    /// Ends every waiter (a held round's too) with BrokenBarrierError; the
    /// barrier stays broken unless `reset`.
    fn break_round(&mut self, reset: bool) {
        let held = self.acting.take().map(|(_, r)| r).unwrap_or_default();
        for (ticket, notify) in held.into_iter().chain(self.arrived.drain(..)) {
            self.ended.insert(ticket, Passage::Broken);
            notify.notify_one();
        }
        self.broken = !reset;
    }

    fn idle(&self) -> bool {
        !self.broken && self.arrived.is_empty() && self.acting.is_none() && self.ended.is_empty()
    }
}

impl Table {
    fn tidy(&mut self, name: &[u8]) {
        if self.barriers.get(name).is_some_and(Barrier::idle) {
            self.barriers.remove(name);
        }
    }
}

impl Barriers {
    /// Arrives at barrier `name` of `parties` (made so if new). `notify`:
    /// how to wake it if it waits; `None` (NOWAIT) breaks the barrier
    /// rather than wait. `conn` runs the action when `action` and last.
    pub(crate) fn arrive(
        &self,
        name: &Bytes,
        parties: u64,
        action: bool,
        conn: u64,
        notify: Option<&Arc<Notify>>,
    ) -> Arrival {
        let mut t = self.table.lock();
        t.next_ticket += 1;
        let ticket = t.next_ticket;
        let b = t
            .barriers
            .entry(name.clone())
            .or_insert_with(|| Barrier::new(parties));
        let arrival = if b.parties != parties {
            Arrival::Parties(b.parties)
        } else if b.broken {
            Arrival::Broken
        } else if b.arrived.len() as u64 + 1 == parties && !(action && b.acting.is_some()) {
            let place = parties - 1;
            let round = std::mem::take(&mut b.arrived);
            if action {
                b.acting = Some((conn, round));
            } else {
                b.pass(round);
            }
            Arrival::Last(place)
        } else if b.arrived.len() as u64 + 1 == parties {
            // The next round is full while the last one's action still
            // runs: it cannot be held too, and waiting would not free it.
            b.break_round(false);
            Arrival::Broken
        } else {
            match notify {
                Some(n) => {
                    b.arrived.push((ticket, Arc::clone(n)));
                    Arrival::Waiting(ticket)
                }
                None => {
                    b.break_round(false);
                    Arrival::Broken
                }
            }
        };
        t.tidy(name);
        arrival
    }

    /// How waiter `ticket`'s round ended, if it did (taken: it is told
    /// once). `give_up` (its timeout, its disconnect) breaks the barrier
    /// if the round has not ended.
    pub(crate) fn look(&self, name: &Bytes, ticket: u64, give_up: bool) -> Option<Passage> {
        let mut t = self.table.lock();
        let b = t.barriers.get_mut(name)?;
        let passage = match b.ended.remove(&ticket) {
            Some(p) => Some(p),
            None if give_up => {
                b.arrived.retain(|w| w.0 != ticket);
                b.break_round(false);
                Some(Passage::Broken)
            }
            None => None,
        };
        t.tidy(name);
        passage
    }

    /// BARPASS: the action ran; the held round goes through. False if no
    /// round waited for an action.
    pub(crate) fn pass(&self, name: &Bytes) -> bool {
        let mut t = self.table.lock();
        let passed = match t.barriers.get_mut(name) {
            Some(b) => match b.acting.take() {
                Some((_, round)) => {
                    b.pass(round);
                    true
                }
                None => false,
            },
            None => false,
        };
        t.tidy(name);
        passed
    }

    /// BARABORT: breaks the barrier (waiters get BrokenBarrierError).
    pub(crate) fn abort(&self, name: &Bytes, parties: u64) {
        let mut t = self.table.lock();
        t.barriers
            .entry(name.clone())
            .or_insert_with(|| Barrier::new(parties))
            .break_round(false);
    }

    /// BARRESET: the round in progress ends broken; the barrier starts
    /// afresh.
    pub(crate) fn reset(&self, name: &Bytes) {
        let mut t = self.table.lock();
        if let Some(b) = t.barriers.get_mut(name) {
            b.break_round(true);
        }
        t.tidy(name);
    }

    /// Waiters in this round and whether it is broken.
    pub(crate) fn info(&self, name: &Bytes) -> (u64, bool) {
        let t = self.table.lock();
        t.barriers.get(name).map_or((0, false), |b| {
            let held = b.acting.as_ref().map_or(0, |a| a.1.len());
            ((b.arrived.len() + held) as u64, b.broken)
        })
    }

    /// A connection went away: a round waiting for its action breaks.
    pub(crate) fn gone(&self, conn: u64) {
        let mut t = self.table.lock();
        let names: Vec<Bytes> = t
            .barriers
            .iter()
            .filter(|(_, b)| b.acting.as_ref().is_some_and(|a| a.0 == conn))
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            if let Some(b) = t.barriers.get_mut(&n) {
                b.break_round(false);
            }
        }
    }

    /// Every barrier known, by name.
    pub(crate) fn list(&self) -> Vec<BarrierView> {
        let t = self.table.lock();
        let mut v: Vec<_> = t
            .barriers
            .iter()
            .map(|(n, b)| BarrierView {
                name: n.clone(),
                parties: b.parties,
                waiting: b.arrived.len() + b.acting.as_ref().map_or(0, |a| a.1.len()),
                acting: b.acting.is_some(),
                broken: b.broken,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Barriers known, and clients waiting at them, for INFO.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.table.lock();
        (
            t.barriers.len(),
            t.barriers.values().map(|b| b.arrived.len()).sum(),
        )
    }
}
