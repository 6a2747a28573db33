//! What is out with consumers: leased messages (with their expiry
//! deadlines) and taken ones, indexed by holder so that a holder that goes
//! away gives everything back at once. One type, so that the four indexes
//! are always changed together.

use std::collections::BTreeSet;

// Keys are ids the engine assigns (messages, holders), never a client's
// choice, so a fast hash without a random key is safe: SipHash was ~3 % of
// an acknowledged get.
use rustc_hash::FxHashMap as HashMap;

use super::{HolderId, Message, Millis};

/// A leased message.
pub(super) struct Leased<T> {
    pub(super) msg: Message<T>,
    /// The holder a bound lease belongs to; `None` for a timed lease, which
    /// anyone may finish.
    pub(super) holder: Option<HolderId>,
    /// The lease's length, reused by a touch that names none.
    pub(super) duration: Option<Millis>,
    pub(super) deadline: Option<Millis>,
}

/// What a holder had out when it went away.
pub(super) enum Released<T> {
    /// A bound lease: the message comes back.
    Lease(Message<T>),
    /// A taken message: it counts as finished, and lost.
    Taken,
}

/// Leased and taken messages.
pub(super) struct Leases<T> {
    leased: HashMap<u64, Leased<T>>,
    /// Taken messages (tracked takes): who took each.
    taken: HashMap<u64, HolderId>,
    /// Every id a holder has out, leased or taken.
    holders: HashMap<HolderId, BTreeSet<u64>>,
    /// Leases with a deadline, soonest first.
    expiries: BTreeSet<(Millis, u64)>,
}

impl<T> Default for Leases<T> {
    fn default() -> Self {
        Leases {
            leased: HashMap::default(),
            taken: HashMap::default(),
            holders: HashMap::default(),
            expiries: BTreeSet::new(),
        }
    }
}

/// May `holder` act on a message held as `owner`? A bound lease or a
/// tracked take belongs to its holder; a timed lease to anyone.
pub(super) fn may_act(owner: Option<HolderId>, holder: Option<HolderId>) -> bool {
    owner.is_none() || owner == holder
}

impl<T> Leases<T> {
    pub(super) fn leased_count(&self) -> usize {
        self.leased.len()
    }

    pub(super) fn taken_count(&self) -> usize {
        self.taken.len()
    }

    /// Holders with something out.
    pub(super) fn holder_count(&self) -> usize {
        self.holders.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.leased.is_empty() && self.taken.is_empty()
    }

    /// Every leased message.
    pub(super) fn leased(&self) -> impl Iterator<Item = &Message<T>> {
        self.leased.values().map(|l| &l.msg)
    }

    /// The soonest lease deadline.
    pub(super) fn next_expiry(&self) -> Option<Millis> {
        self.expiries.first().map(|&(deadline, _)| deadline)
    }

    /// Leases `msg` to `holder` (none: a timed lease) until `deadline`.
    pub(super) fn lease(
        &mut self,
        msg: Message<T>,
        holder: Option<HolderId>,
        duration: Option<Millis>,
        deadline: Option<Millis>,
    ) {
        let id = msg.id;
        if let Some(d) = deadline {
            self.expiries.insert((d, id));
        }
        if let Some(h) = holder {
            self.holders.entry(h).or_default().insert(id);
        }
        self.leased.insert(
            id,
            Leased {
                msg,
                holder,
                duration,
                deadline,
            },
        );
    }

    /// Records that `holder` took message `id`.
    pub(super) fn take(&mut self, id: u64, holder: HolderId) {
        self.taken.insert(id, holder);
        self.holders.entry(holder).or_default().insert(id);
    }

    /// Removes a lease, whoever holds it.
    pub(super) fn remove(&mut self, id: u64) -> Option<Leased<T>> {
        let lease = self.leased.remove(&id)?;
        if let Some(d) = lease.deadline {
            self.expiries.remove(&(d, id));
        }
        if let Some(h) = lease.holder {
            self.unindex(h, id);
        }
        Some(lease)
    }

    /// Removes a lease `holder` may act on.
    pub(super) fn remove_for(&mut self, id: u64, holder: Option<HolderId>) -> Option<Leased<T>> {
        if self
            .leased
            .get(&id)
            .is_some_and(|l| may_act(l.holder, holder))
        {
            self.remove(id)
        } else {
            None
        }
    }

    /// Finishes message `id` if `holder` took it.
    pub(super) fn finish_taken(&mut self, id: u64, holder: Option<HolderId>) -> bool {
        match self.taken.get(&id) {
            Some(&owner) if Some(owner) == holder => {
                self.taken.remove(&id);
                self.unindex(owner, id);
                true
            }
            _ => false,
        }
    }

    /// The lease whose deadline passed first by `now`, removed.
    pub(super) fn pop_expired(&mut self, now: Millis) -> Option<Leased<T>> {
        let &(deadline, id) = self.expiries.first()?;
        if deadline > now {
            return None;
        }
        self.expiries.pop_first();
        let lease = self.leased.remove(&id)?;
        if let Some(h) = lease.holder {
            self.unindex(h, id);
        }
        Some(lease)
    }

    /// Extends a lease `holder` may act on to `now + lease` (or its own
    /// length again): the new deadline, `Some(None)` for a lease without
    /// one, `None` when there is no such lease.
    pub(super) fn touch(
        &mut self,
        id: u64,
        holder: Option<HolderId>,
        lease: Option<Millis>,
        now: Millis,
    ) -> Option<Option<Millis>> {
        let entry = self.leased.get_mut(&id)?;
        if !may_act(entry.holder, holder) {
            return None;
        }
        if let Some(ms) = lease {
            entry.duration = Some(ms);
        }
        let Some(duration) = entry.duration else {
            return Some(None);
        };
        if let Some(old) = entry.deadline {
            self.expiries.remove(&(old, id));
        }
        let deadline = now.saturating_add(duration);
        entry.deadline = Some(deadline);
        self.expiries.insert((deadline, id));
        Some(Some(deadline))
    }

    /// Everything `holder` had out, newest first, removed.
    pub(super) fn release(&mut self, holder: HolderId) -> Vec<Released<T>> {
        let Some(ids) = self.holders.remove(&holder) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.into_iter().rev() {
            if let Some(lease) = self.leased.remove(&id) {
                if let Some(d) = lease.deadline {
                    self.expiries.remove(&(d, id));
                }
                out.push(Released::Lease(lease.msg));
            } else if self.taken.remove(&id).is_some() {
                out.push(Released::Taken);
            }
        }
        out
    }

    fn unindex(&mut self, holder: HolderId, id: u64) {
        if let Some(ids) = self.holders.get_mut(&holder) {
            ids.remove(&id);
            if ids.is_empty() {
                self.holders.remove(&holder);
            }
        }
    }
}
