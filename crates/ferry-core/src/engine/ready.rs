//! The ready set of one queue, ordered by the queue's kind.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

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
#[derive(Debug)]
pub(super) enum Ready<T> {
    Fifo(VecDeque<Message<T>>),
    Lifo(VecDeque<Message<T>>),
    Priority(BinaryHeap<ByPriority<T>>),
}

impl<T: Item> Ready<T> {
    pub(super) fn new(kind: Kind) -> Self {
        match kind {
            Kind::Fifo => Ready::Fifo(VecDeque::new()),
            Kind::Lifo => Ready::Lifo(VecDeque::new()),
            Kind::Priority => Ready::Priority(BinaryHeap::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Ready::Fifo(q) | Ready::Lifo(q) => q.len(),
            Ready::Priority(h) => h.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, msg: Message<T>) {
        match self {
            Ready::Fifo(q) | Ready::Lifo(q) => q.push_back(msg),
            Ready::Priority(h) => h.push(ByPriority(msg)),
        }
    }

    pub(super) fn give_back(&mut self, msg: Message<T>) {
        match self {
            Ready::Fifo(q) => q.push_front(msg),
            Ready::Lifo(q) => q.push_back(msg),
            Ready::Priority(h) => h.push(ByPriority(msg)),
        }
    }

    pub(super) fn pop(&mut self) -> Option<Message<T>> {
        match self {
            Ready::Fifo(q) => q.pop_front(),
            Ready::Lifo(q) => q.pop_back(),
            Ready::Priority(h) => h.pop().map(|e| e.0),
        }
    }

    /// Takes every ready message out, in no particular order.
    pub(super) fn drain(&mut self) -> Vec<Message<T>> {
        match self {
            Ready::Fifo(q) | Ready::Lifo(q) => q.drain(..).collect(),
            Ready::Priority(h) => h.drain().map(|e| e.0).collect(),
        }
    }

    /// The first `count` messages in the order they would be delivered.
    pub(super) fn peek(&self, count: usize) -> Vec<&Message<T>> {
        match self {
            Ready::Fifo(q) => q.iter().take(count).collect(),
            Ready::Lifo(q) => q.iter().rev().take(count).collect(),
            Ready::Priority(h) => {
                // The heap's own order is partial; sorting its entries is
                // O(n log n), acceptable for an inspection command.
                let mut all: Vec<&ByPriority<T>> = h.iter().collect();
                all.sort_unstable_by(|a, b| b.cmp(a));
                all.into_iter().take(count).map(|e| &e.0).collect()
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
