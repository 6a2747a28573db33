//! The fifo queue ([`super::Queue`], [`super::JoinableQueue`]): a
//! lock-free array (or list) and atomic counts, with a lock only to sleep.
//!
//! A put, a get and a task_done that need not wait touch no lock: the
//! items are in crossbeam's lock-free `ArrayQueue` (sized to the bound) and
//! `SegQueue` (beyond it: see `Items`); one atomic word holds the two
//! counts, `len` (the bound: a put is admitted by raising it below
//! `maxsize`, then pushes) and Python's `unfinished` (raised by the same
//! write). A thread that must wait counts itself in its role's sleepers,
//! looks once more, and sleeps on its role's condition variable under
//! `lock`; a put, get, task_done or shutdown that may have made its wait
//! end reads the sleepers after its own change — both sides SeqCst
//! read-modify-writes then SeqCst loads of the other's word (`counts`,
//! `maxsize`, `shut`), so one of the two sees the other — and, if any
//! sleeps, notifies under the lock: no wake-up is lost, and none is paid
//! for while nobody sleeps. (A getter therefore looks at `len`, which a
//! put raises before it pushes: it may find the item a moment before it
//! can pop it, and looks again.) Measured against the engine behind a
//! mutex (three contended lock acquisitions per item):
//! docs/performance.md.
//!
//! As Python's `queue.Queue` (a condition variable), a woken thread may
//! find that another one took the item or the room first and waits again:
//! waiters are not served in strict arrival order, unlike the broker's
//! queues and this tier's lifo and priority queues.

use crossbeam_queue::{ArrayQueue, SegQueue};

use super::prim::{self, AtomicU8, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use super::{GetError, PutError, TaskDoneError, Wait, YIELDS};

const OPEN: u8 = 0;
const SHUT: u8 = 1;
const SHUT_NOW: u8 = 2;

const SC: Ordering = Ordering::SeqCst;

/// The halves of `Fifo::counts`.
const LEN: u64 = u32::MAX as u64;
const ONE_ITEM: u64 = 1;
const ONE_UNFINISHED: u64 = 1 << 32;

/// Whether counts `c` leave room for one more item under `max` (0: no
/// bound but the halves' own).
fn room(c: u64, max: usize) -> bool {
    let len = c & LEN;
    let under = max == 0 || len < max as u64;
    under && len < LEN && c >> 32 < LEN
}

/// The items, oldest first: a bounded queue's in an array sized to its
/// bound (no allocation per item), and beyond it — an unbounded queue, or
/// a bound raised past the array — in a linked list. Gets take from the
/// array first: every item there was pushed before the list was first
/// used, or by a put racing the one that first used it.
struct Items<T> {
    array: Option<ArrayQueue<T>>,
    list: SegQueue<T>,
}

impl<T> Items<T> {
    fn new(maxsize: usize) -> Self {
        Items {
            array: (maxsize > 0).then(|| ArrayQueue::new(maxsize)),
            list: SegQueue::new(),
        }
    }

    fn push(&self, item: T) {
        // Once the list holds an item, later puts go behind it.
        let item = match &self.array {
            Some(array) if self.list.is_empty() => match array.push(item) {
                Ok(()) => return,
                Err(item) => item,
            },
            _ => item,
        };
        self.list.push(item);
    }

    fn pop(&self) -> Option<T> {
        if let Some(array) = &self.array
            && let Some(item) = array.pop()
        {
            return Some(item);
        }
        self.list.pop()
    }
}

pub(super) struct Fifo<T> {
    items: Items<T>,
    /// Two counts in one word, so that a put raises both at once: the low
    /// half `len` (items in `items`, and puts admitted that are pushing
    /// theirs: what the bound counts), the high half `unfinished`
    /// (Python's count). Each is at most `u32::MAX`.
    counts: AtomicU64,
    maxsize: AtomicUsize,
    /// OPEN, SHUT (`shutdown(false)`) or SHUT_NOW (`shutdown(true)`).
    shut: AtomicU8,
    /// Threads asleep, or about to look once more and sleep, by role.
    getters: AtomicUsize,
    putters: AtomicUsize,
    joiners: AtomicUsize,
    lock: Mutex<()>,
    /// Getters sleep on it: an item came, or the queue shut down.
    item: Condvar,
    /// Putters: room came (a get, a larger bound), or the queue shut down.
    room: Condvar,
    /// Joiners: nothing is unfinished.
    done: Condvar,
}

impl<T> Fifo<T> {
    pub(super) fn new(maxsize: usize) -> Self {
        Fifo {
            items: Items::new(maxsize),
            counts: AtomicU64::new(0),
            maxsize: AtomicUsize::new(maxsize),
            shut: AtomicU8::new(OPEN),
            getters: AtomicUsize::new(0),
            putters: AtomicUsize::new(0),
            joiners: AtomicUsize::new(0),
            lock: Mutex::new(()),
            item: Condvar::new(),
            room: Condvar::new(),
            done: Condvar::new(),
        }
    }

    fn len(&self) -> u64 {
        self.counts.load(SC) & LEN
    }

    fn has_room(&self) -> bool {
        room(self.counts.load(SC), self.maxsize.load(SC))
    }

    /// Takes a place under the bound, if there is one, and counts the
    /// item unfinished: before it can be got and done.
    fn admit(&self) -> bool {
        let max = self.maxsize.load(SC);
        self.counts
            .fetch_update(SC, SC, |c| {
                room(c, max).then_some(c + ONE_ITEM + ONE_UNFINISHED)
            })
            .is_ok()
    }

    /// Takes back what `admit` counted, or an immediate shutdown's
    /// dropped item: one fewer queued and unfinished.
    fn uncount(&self) {
        let before = self.counts.fetch_sub(ONE_ITEM + ONE_UNFINISHED, SC);
        if before >> 32 == 1 {
            self.wake(&self.joiners, &self.done, true);
        }
    }

    /// After a change that may end the waits of `sleepers`: wakes one of
    /// them (or all), if any sleeps.
    fn wake(&self, sleepers: &AtomicUsize, signal: &Condvar, all: bool) {
        if sleepers.load(SC) > 0 {
            let _guard = prim::lock(&self.lock);
            if all {
                signal.notify_all();
            } else {
                signal.notify_one();
            }
        }
    }

    /// Sleeps on `signal` unless `ready` already holds, counted in
    /// `sleepers`; false when `wait` has run out. When it is ready at once
    /// (an item admitted and not yet pushed, room another thread may
    /// take) it yields instead: the caller looks again.
    fn sleep(
        &self,
        sleepers: &AtomicUsize,
        signal: &Condvar,
        wait: Wait,
        ready: impl Fn() -> bool,
    ) -> bool {
        let guard = prim::lock(&self.lock);
        sleepers.fetch_add(1, SC);
        if ready() {
            drop(guard);
            sleepers.fetch_sub(1, SC);
            prim::yield_now();
            return !wait.passed();
        }
        let (guard, slept) = super::sleep(signal, guard, wait);
        drop(guard);
        sleepers.fetch_sub(1, SC);
        slept
    }

    pub(super) fn put(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        let mut round = 0;
        let mut late = false;
        loop {
            if self.shut.load(SC) != OPEN {
                return Err(PutError::ShutDown(item));
            }
            if self.admit() {
                // Shut down meanwhile: a get may have found the queue
                // drained after the shutdown (it reads `len` after `shut`,
                // this reads `shut` after `len`); the put did not happen.
                if self.shut.load(SC) != OPEN {
                    self.uncount();
                    self.wake(&self.putters, &self.room, false);
                    return Err(PutError::ShutDown(item));
                }
                self.items.push(item);
                self.wake(&self.getters, &self.item, false);
                return Ok(());
            }
            if late || matches!(wait, Wait::No) {
                return Err(PutError::Full(item));
            }
            if round < YIELDS && !wait.passed() {
                round += 1;
                prim::yield_now();
                continue;
            }
            late = !self.sleep(&self.putters, &self.room, wait, || {
                self.shut.load(SC) != OPEN || self.has_room()
            });
        }
    }

    pub(super) fn get(&self, wait: Wait) -> Result<T, GetError> {
        let mut round = 0;
        let mut late = false;
        loop {
            let shut = self.shut.load(SC);
            if shut == SHUT_NOW {
                // What a racing put pushed after the drain goes too.
                self.drain();
                return Err(GetError::ShutDown);
            }
            if let Some(item) = self.items.pop() {
                self.counts.fetch_sub(ONE_ITEM, SC);
                self.wake(&self.putters, &self.room, false);
                return Ok(item);
            }
            if shut == SHUT {
                if self.len() == 0 {
                    return Err(GetError::ShutDown);
                }
                // A put admitted before the shutdown is pushing its item.
                prim::yield_now();
                continue;
            }
            if late || matches!(wait, Wait::No) {
                return Err(GetError::Empty);
            }
            if round < YIELDS && !wait.passed() {
                round += 1;
                prim::yield_now();
                continue;
            }
            // `len`, not the list: the put's own write (see the module).
            late = !self.sleep(&self.getters, &self.item, wait, || {
                self.shut.load(SC) != OPEN || self.len() > 0
            });
        }
    }

    pub(super) fn task_done(&self) -> Result<(), TaskDoneError> {
        let before = self
            .counts
            .fetch_update(SC, SC, |c| (c >> 32 > 0).then(|| c - ONE_UNFINISHED))
            .map_err(|_| crate::engine::TooManyTaskDone)?;
        if before >> 32 == 1 {
            self.wake(&self.joiners, &self.done, true);
        }
        Ok(())
    }

    pub(super) fn join(&self, wait: Wait) -> bool {
        loop {
            if self.unfinished() == 0 {
                return true;
            }
            if !self.sleep(&self.joiners, &self.done, wait, || self.unfinished() == 0) {
                return self.unfinished() == 0;
            }
        }
    }

    /// Drops what is queued, each counted as done (`shutdown(true)`).
    fn drain(&self) {
        while self.items.pop().is_some() {
            self.uncount();
        }
    }

    pub(super) fn shutdown(&self, immediate: bool) {
        if immediate {
            self.shut.store(SHUT_NOW, SC);
            self.drain();
        } else {
            let _ = self.shut.compare_exchange(OPEN, SHUT, SC, SC);
        }
        self.wake(&self.getters, &self.item, true);
        self.wake(&self.putters, &self.room, true);
    }

    pub(super) fn set_maxsize(&self, maxsize: usize) {
        self.maxsize.store(maxsize, SC);
        self.wake(&self.putters, &self.room, true);
    }

    pub(super) fn qsize(&self) -> usize {
        self.len() as usize
    }

    pub(super) fn empty(&self) -> bool {
        self.qsize() == 0
    }

    pub(super) fn full(&self) -> bool {
        !self.has_room()
    }

    pub(super) fn maxsize(&self) -> usize {
        self.maxsize.load(SC)
    }

    pub(super) fn unfinished(&self) -> usize {
        (self.counts.load(SC) >> 32) as usize
    }

    pub(super) fn is_shutdown(&self) -> bool {
        self.shut.load(SC) != OPEN
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use crate::Queue;

    /// A bound raised past the array: the items beyond it wait in the
    /// list, behind the array's, and the order holds throughout.
    #[test]
    fn a_raised_bound_keeps_the_order() {
        let q = Queue::new(2);
        q.put(1).unwrap();
        q.put(2).unwrap();
        q.set_maxsize(4);
        q.put(3).unwrap();
        q.put(4).unwrap();
        assert!(q.full());
        assert_eq!(q.get(), Ok(1));
        // Room in the array now, but the list holds older items.
        q.put(5).unwrap();
        assert_eq!(
            (q.get(), q.get(), q.get(), q.get()),
            (Ok(2), Ok(3), Ok(4), Ok(5))
        );
        q.put(6).unwrap();
        q.set_maxsize(0);
        for i in 7..100 {
            q.put(i).unwrap();
        }
        for i in 6..100 {
            assert_eq!(q.get(), Ok(i));
        }
        assert_eq!(q.qsize(), 0);
        assert_eq!(q.unfinished(), 99);
    }
}
