//! The ready set of one queue, ordered by the queue's kind.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::store::FifoStore;
use super::{Item, Kind, Message};

/// Ready messages in delivery order.
///
/// Two ways in: [`Ready::push`] for a message that becomes ready for the
/// first time (a put, or a delay that ran out), which joins the back of a
/// fifo queue and the top of a lifo one; and [`Ready::give_back`] for one
/// that was out and came back (a nack, a lost or expired lease, a hand-off
/// that its waiter never picked up), which is served next in a fifo or lifo
/// queue. A priority queue orders both by key, then by id, so a message
/// given back returns to the place its id gives it among equals.
///
/// A fifo queue keeps messages given back in a lane of their own, served
/// before the main store, so that the main store (which may be packed) only
/// ever appends at the back and takes from the front.
pub(super) enum Ready<T, F> {
    Fifo {
        returned: VecDeque<Message<T>>,
        main: F,
    },
    Lifo(VecDeque<Message<T>>),
    Priority(BinaryHeap<ByPriority<T>>),
}

impl<T: Item, F: FifoStore<T>> Ready<T, F> {
    pub(super) fn new(kind: Kind) -> Self {
        match kind {
            Kind::Fifo => Ready::Fifo {
                returned: VecDeque::new(),
                main: F::default(),
            },
            Kind::Lifo => Ready::Lifo(VecDeque::new()),
            Kind::Priority => Ready::Priority(BinaryHeap::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Ready::Fifo { returned, main } => returned.len() + main.len(),
            Ready::Lifo(q) => q.len(),
            Ready::Priority(h) => h.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, msg: Message<T>) {
        match self {
            Ready::Fifo { main, .. } => main.push_back(msg),
            Ready::Lifo(q) => q.push_back(msg),
            Ready::Priority(h) => h.push(ByPriority(msg)),
        }
    }

    pub(super) fn give_back(&mut self, msg: Message<T>) {
        match self {
            Ready::Fifo { returned, .. } => returned.push_front(msg),
            Ready::Lifo(q) => q.push_back(msg),
            Ready::Priority(h) => h.push(ByPriority(msg)),
        }
    }

    pub(super) fn pop(&mut self) -> Option<Message<T>> {
        match self {
            Ready::Fifo { returned, main } => returned.pop_front().or_else(|| main.pop_front()),
            Ready::Lifo(q) => q.pop_back(),
            Ready::Priority(h) => h.pop().map(|e| e.0),
        }
    }

    /// Drops every ready message, telling `f` each one's id and weight,
    /// in no particular order (a packed store's items are never rebuilt).
    pub(super) fn drop_all(&mut self, mut f: impl FnMut(u64, u64)) {
        match self {
            Ready::Fifo { returned, main } => {
                for m in returned.drain(..) {
                    f(m.id, m.item.weight());
                }
                main.drop_all(&mut f);
            }
            Ready::Lifo(q) => q.drain(..).for_each(|m| f(m.id, m.item.weight())),
            Ready::Priority(h) => h.drain().for_each(|e| f(e.0.id, e.0.item.weight())),
        }
    }

    /// Shows `f` every ready message, in no particular order, one at a
    /// time (a packed store is never unpacked whole).
    pub(super) fn for_each(&self, mut f: impl FnMut(&Message<T>)) {
        match self {
            Ready::Fifo { returned, main } => {
                returned.iter().for_each(&mut f);
                main.visit(&mut |m| {
                    f(m);
                    true
                });
            }
            Ready::Lifo(q) => q.iter().for_each(f),
            Ready::Priority(h) => h.iter().for_each(|e| f(&e.0)),
        }
    }

    /// Copies of the first `count` messages in the order they would be
    /// delivered.
    pub(super) fn peek(&self, count: usize) -> Vec<Message<T>>
    where
        T: Clone,
    {
        match self {
            Ready::Fifo { returned, main } => {
                let mut out: Vec<Message<T>> = returned.iter().take(count).cloned().collect();
                if out.len() < count {
                    main.visit(&mut |m| {
                        out.push(m.clone());
                        out.len() < count
                    });
                }
                out
            }
            Ready::Lifo(q) => q.iter().rev().take(count).cloned().collect(),
            Ready::Priority(h) => {
                // The heap's own order is partial; sorting its entries is
                // O(n log n), acceptable for an inspection command.
                let mut all: Vec<&ByPriority<T>> = h.iter().collect();
                all.sort_unstable_by(|a, b| b.cmp(a));
                all.into_iter().take(count).map(|e| e.0.clone()).collect()
            }
        }
    }
}

/// A heap entry: the greatest entry is the one served first, so the lowest
/// priority key wins and, among equal keys, the lowest (oldest) id.
#[derive(Debug)]
pub(super) struct ByPriority<T>(Message<T>);

impl<T: Item> Ord for ByPriority<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .item
            .priority_cmp(&self.0.item)
            .then_with(|| other.0.id.cmp(&self.0.id))
    }
}

impl<T: Item> PartialOrd for ByPriority<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Item> PartialEq for ByPriority<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T: Item> Eq for ByPriority<T> {}
