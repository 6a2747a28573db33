//! Waiting getters, putters and joiners of one queue, and what each is owed.

use std::collections::VecDeque;

// Waiter ids are the engine's own: a fast hash without a random key is safe.
use rustc_hash::FxHashMap as HashMap;
use std::ops::Range;

use super::{Batch, GetSpec, Message, Millis, WaiterId};

/// What a getter has been handed while it waited. Messages are only
/// *reserved* here: they become leased, taken or finished when the getter
/// picks them up, so a getter that leaves instead gives them back whole.
pub(super) enum GetState<T> {
    Waiting,
    Reserved(Vec<Message<T>>),
    ShutDown,
}

pub(super) enum PutState<T> {
    Waiting {
        batch: Batch<T>,
        delay: Option<Millis>,
    },
    Admitted(Range<u64>),
    ShutDown(Batch<T>),
}

pub(super) enum Waiter<T> {
    Get {
        spec: GetSpec<T>,
        max: usize,
        state: GetState<T>,
    },
    Put(PutState<T>),
    Join {
        done: bool,
    },
}

/// The table of waiters. Getters and putters are queued in arrival order
/// (first come, first served); a waiter leaves its queue when it is served
/// or cancelled, and leaves the table when its outcome is picked up or it
/// is cancelled.
pub(super) struct Waiters<T> {
    next: WaiterId,
    pub(super) table: HashMap<WaiterId, Waiter<T>>,
    pub(super) getters: VecDeque<WaiterId>,
    pub(super) putters: VecDeque<WaiterId>,
    pub(super) joiners: Vec<WaiterId>,
    /// Waiters whose outcome was set since the front end last looked.
    pub(super) woken: Vec<WaiterId>,
}

impl<T> Waiters<T> {
    pub(super) fn new() -> Self {
        Waiters {
            next: 1,
            table: HashMap::default(),
            getters: VecDeque::new(),
            putters: VecDeque::new(),
            joiners: Vec::new(),
            woken: Vec::new(),
        }
    }

    /// True when nobody waits, so an operation can skip dispatching.
    pub(super) fn idle(&self) -> bool {
        self.getters.is_empty() && self.putters.is_empty() && self.joiners.is_empty()
    }

    pub(super) fn add(&mut self, waiter: Waiter<T>) -> WaiterId {
        let id = self.next;
        self.next += 1;
        match waiter {
            Waiter::Get { .. } => self.getters.push_back(id),
            Waiter::Put(_) => self.putters.push_back(id),
            Waiter::Join { .. } => self.joiners.push(id),
        }
        self.table.insert(id, waiter);
        id
    }

    /// Removes a waiter wherever it is and returns it.
    pub(super) fn remove(&mut self, id: WaiterId) -> Option<Waiter<T>> {
        let waiter = self.table.remove(&id)?;
        match waiter {
            Waiter::Get { .. } => self.getters.retain(|&w| w != id),
            Waiter::Put(_) => self.putters.retain(|&w| w != id),
            Waiter::Join { .. } => self.joiners.retain(|&w| w != id),
        }
        Some(waiter)
    }
}
