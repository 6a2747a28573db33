//! The in-process tier: queues for threads with Python's `queue` API.
//!
//! [`Queue`], [`LifoQueue`] and [`PriorityQueue`] are handles: cloning one
//! gives another handle to the same queue, as passing a `queue.Queue` to a
//! thread does in Python. [`JoinableQueue`] is [`Queue`] under the name
//! `multiprocessing` uses; every queue here has `task_done` and `join`, as
//! `queue.Queue` does.
//!
//! Counting is exactly Python's: each put adds one unfinished task, each
//! `task_done` removes one, `join` returns when none is left, and a
//! `task_done` with none left is an error. Errors hand back the item that
//! was not put, as `crossbeam_channel::TrySendError::Full(T)` does.
//!
//! The fifo queue is lock-free until a thread must wait (`fifo.rs`). The
//! lifo and priority queues are an [`crate::engine::Queue`] behind a mutex
//! (parking_lot's; see `prim.rs` for why): a thread that must wait
//! registers a waiter with the engine and sleeps on a condition variable
//! of its own; the engine hands it the item (or admits its put) first
//! come, first served, and only that thread is woken.

mod fifo;
mod prim;

use std::time::{Duration, Instant};

use crate::engine::{self, Batch, Config, GetSpec, Item, Kind, WaiterId};
use fifo::Fifo;
use prim::{Arc, Condvar, Mutex, MutexGuard};
// Waiter ids are the engine's own: a fast hash without a random key is safe.
use rustc_hash::FxHashMap as HashMap;

/// A put that did not happen; the item comes back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError<T> {
    /// The queue stayed full (Python's `queue.Full`).
    #[error("queue is full")]
    Full(T),
    /// The queue was shut down (Python's `queue.ShutDown`).
    #[error("queue is shut down")]
    ShutDown(T),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t) | PutError::ShutDown(t) => t,
        }
    }
}

/// A get that found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    /// The queue stayed empty (Python's `queue.Empty`).
    #[error("queue is empty")]
    Empty,
    /// The queue was shut down and is drained (Python's `queue.ShutDown`).
    #[error("queue is shut down")]
    ShutDown,
}

/// `task_done()` was called more times than items were put (Python's
/// `ValueError`).
pub type TaskDoneError = engine::TooManyTaskDone;

/// How long an operation may wait.
#[derive(Clone, Copy)]
enum Wait {
    No,
    Forever,
    Until(Instant),
}

impl Wait {
    /// Its deadline is behind us.
    fn passed(&self) -> bool {
        matches!(self, Wait::Until(deadline) if Instant::now() >= *deadline)
    }

    fn timeout(timeout: Duration) -> Self {
        // A deadline too far to represent is as good as forever.
        Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until)
    }
}

/// An item as the engine stores it: ordered by the item itself in a
/// priority queue, and not at all otherwise.
trait Slot: Item {
    type Item;
    fn wrap(item: Self::Item) -> Self;
    fn into_item(self) -> Self::Item;
}

struct Plain<T>(T);

impl<T> Item for Plain<T> {
    fn priority_cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T> Slot for Plain<T> {
    type Item = T;
    fn wrap(item: T) -> Self {
        Plain(item)
    }
    fn into_item(self) -> T {
        self.0
    }
}

struct Ordered<T>(T);

impl<T: Ord> Item for Ordered<T> {
    fn priority_cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<T: Ord> Slot for Ordered<T> {
    type Item = T;
    fn wrap(item: T) -> Self {
        Ordered(item)
    }
    fn into_item(self) -> T {
        self.0
    }
}

/// The in-process tier never leases and never passes time: it takes
/// untracked (Python's counting) and its clock stands still.
const NOW: engine::Millis = 0;

struct State<S> {
    queue: engine::Queue<S>,
    /// The condition variable each sleeping thread waits on, by waiter.
    signals: HashMap<WaiterId, Arc<Condvar>>,
    /// Condition variables of earlier waits, for reuse.
    spare: Vec<Arc<Condvar>>,
}

impl<S: Slot> State<S> {
    fn take() -> GetSpec<S> {
        GetSpec::Take { holder: None }
    }

    /// Wakes the threads whose waits the last engine call settled.
    fn wake(&mut self) {
        let State { queue, signals, .. } = self;
        for id in queue.drain_woken() {
            if let Some(signal) = signals.get(&id) {
                signal.notify_one();
            }
        }
    }

    fn signal(&mut self, id: WaiterId) -> Arc<Condvar> {
        let signal = self.spare.pop().unwrap_or_default();
        self.signals.insert(id, Arc::clone(&signal));
        signal
    }

    fn unsignal(&mut self, id: WaiterId) {
        if let Some(signal) = self.signals.remove(&id) {
            self.spare.push(signal);
        }
    }
}

/// The lifo and priority queues: the engine behind a mutex.
struct Core<S> {
    state: Mutex<State<S>>,
}

/// How many times a put that finds no room, or a get that finds nothing,
/// gives up the processor and looks again before it registers a waiter and
/// sleeps. Under load the item (or the room) usually comes within that
/// time, and a sleep costs two context switches and a wake-up: measured
/// with four producers and four consumers on 2 cores, they were more than
/// half of the time (`bench/inprocess.sh`). Waiters already registered
/// still come first: the engine hands items to them, not to a thread that
/// is looking again.
const YIELDS: usize = 4;

/// Lets the lock go, yields the processor, takes the lock again.
fn yield_unlocked<'a, S: Slot>(
    core: &'a Core<S>,
    guard: MutexGuard<'a, State<S>>,
) -> MutexGuard<'a, State<S>> {
    drop(guard);
    prim::yield_now();
    core.lock()
}

/// Sleeps until woken or `wait` runs out; false when it ran out.
fn sleep<'a, T>(
    signal: &Condvar,
    guard: MutexGuard<'a, T>,
    wait: Wait,
) -> (MutexGuard<'a, T>, bool) {
    match wait {
        Wait::No => (guard, false),
        Wait::Forever => (prim::wait(signal, guard), true),
        Wait::Until(deadline) => {
            let now = Instant::now();
            if now >= deadline {
                return (guard, false);
            }
            (prim::wait_timeout(signal, guard, deadline - now), true)
        }
    }
}

impl<S: Slot> Core<S> {
    fn new(kind: Kind, maxsize: usize) -> Self {
        let config = Config {
            kind,
            maxsize: maxsize as u64,
            ..Config::default()
        };
        Core {
            state: Mutex::new(State {
                queue: engine::Queue::new(config),
                signals: HashMap::default(),
                spare: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<S>> {
        prim::lock(&self.state)
    }

    fn put(&self, item: S::Item, wait: Wait) -> Result<(), PutError<S::Item>> {
        let mut st = self.lock();
        let mut slot = S::wrap(item);
        for round in 0..=YIELDS {
            slot = match st.queue.put(slot, None, NOW) {
                Ok(_) => {
                    st.wake();
                    return Ok(());
                }
                Err(engine::PutError::ShutDown(s)) => {
                    return Err(PutError::ShutDown(s.into_item()));
                }
                Err(engine::PutError::Full(s) | engine::PutError::TooMany(s)) => s,
            };
            if let Wait::No = wait {
                return Err(PutError::Full(slot.into_item()));
            }
            if round < YIELDS && !wait.passed() {
                st = yield_unlocked(self, st);
            }
        }
        let id = st.queue.wait_put(Batch::One(slot), None, NOW);
        let signal = st.signal(id);
        loop {
            if let Some(outcome) = st.queue.poll_put(id) {
                st.unsignal(id);
                st.wake();
                return match outcome {
                    Ok(_) => Ok(()),
                    Err(e) => Err(PutError::ShutDown(unbatch(e.into_inner()))),
                };
            }
            let (guard, slept) = sleep(&signal, st, wait);
            st = guard;
            if !slept {
                st.unsignal(id);
                let batch = st.queue.cancel_put(id);
                st.wake();
                // `poll_put` just said the put is still waiting, and this
                // thread has held the lock since: the batch must be here.
                return match batch {
                    Some(b) => Err(PutError::Full(unbatch(b))),
                    None => Ok(()),
                };
            }
        }
    }

    fn get(&self, wait: Wait) -> Result<S::Item, GetError> {
        let mut st = self.lock();
        for round in 0..=YIELDS {
            match st.queue.get(State::take(), NOW) {
                Ok(Some(msg)) => {
                    st.wake();
                    return Ok(msg.item.into_item());
                }
                Err(engine::ShutDown) => return Err(GetError::ShutDown),
                Ok(None) => {}
            }
            if let Wait::No = wait {
                return Err(GetError::Empty);
            }
            if round < YIELDS && !wait.passed() {
                st = yield_unlocked(self, st);
            }
        }
        let id = st.queue.wait_get(State::take(), 1, NOW);
        let signal = st.signal(id);
        loop {
            if let Some(outcome) = st.queue.poll_get(id, NOW) {
                st.unsignal(id);
                st.wake();
                return match outcome.map(|mut msgs| msgs.pop()) {
                    Ok(Some(msg)) => Ok(msg.item.into_item()),
                    Ok(None) => Err(GetError::Empty),
                    Err(engine::ShutDown) => Err(GetError::ShutDown),
                };
            }
            let (guard, slept) = sleep(&signal, st, wait);
            st = guard;
            if !slept {
                st.unsignal(id);
                st.queue.cancel_get(id);
                st.wake();
                return Err(GetError::Empty);
            }
        }
    }

    fn join(&self, wait: Wait) -> bool {
        let mut st = self.lock();
        let Some(id) = st.queue.wait_join() else {
            return true;
        };
        let signal = st.signal(id);
        loop {
            if st.queue.poll_join(id) {
                st.unsignal(id);
                return true;
            }
            let (guard, slept) = sleep(&signal, st, wait);
            st = guard;
            if !slept {
                st.unsignal(id);
                st.queue.cancel_join(id);
                return false;
            }
        }
    }

    fn task_done(&self) -> Result<(), TaskDoneError> {
        let mut st = self.lock();
        st.queue.task_done_counted()?;
        st.wake();
        Ok(())
    }

    fn shutdown(&self, immediate: bool) {
        let mut st = self.lock();
        st.queue.shutdown(immediate, NOW);
        st.wake();
    }

    fn set_maxsize(&self, maxsize: usize) {
        let mut st = self.lock();
        st.queue.set_maxsize(maxsize as u64);
        st.wake();
    }

    fn qsize(&self) -> usize {
        self.lock().queue.qsize() as usize
    }

    fn empty(&self) -> bool {
        self.lock().queue.empty()
    }

    fn full(&self) -> bool {
        self.lock().queue.full()
    }

    fn maxsize(&self) -> usize {
        self.lock().queue.config().maxsize as usize
    }

    fn unfinished(&self) -> usize {
        self.lock().queue.unfinished() as usize
    }

    fn is_shutdown(&self) -> bool {
        self.lock().queue.shutdown_state().is_some()
    }
}

fn unbatch<S: Slot>(batch: Batch<S>) -> S::Item {
    match batch {
        Batch::One(s) => s.into_item(),
        // The in-process tier only ever registers single puts.
        Batch::Many(mut v) => match v.pop() {
            Some(s) => s.into_item(),
            None => unreachable!("the in-process tier never waits with an empty batch"),
        },
    }
}

macro_rules! queue_type {
    (
        $(#[$doc:meta])*
        $name:ident, $core:ty, $new:expr, [$($bound:tt)*], $example:literal
    ) => {
        $(#[$doc])*
        pub struct $name<T> {
            core: Arc<$core>,
        }

        impl<T> Clone for $name<T> {
            /// Another handle to the same queue.
            fn clone(&self) -> Self {
                $name { core: Arc::clone(&self.core) }
            }
        }

        impl<T $($bound)*> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("maxsize", &self.maxsize())
                    .field("qsize", &self.qsize())
                    .field("unfinished", &self.unfinished())
                    .field("is_shutdown", &self.is_shutdown())
                    .finish()
            }
        }

        impl<T $($bound)*> $name<T> {
            /// A queue that holds at most `maxsize` items; 0 means no bound (but
            /// the fifo queue's counts: at most `u32::MAX` items queued, and as
            /// many unfinished).
            ///
            /// ```
            #[doc = $example]
            /// ```
            pub fn new(maxsize: usize) -> Self {
                $name { core: Arc::new($new(maxsize)) }
            }

            /// Puts an item, waiting for room as long as it takes. Fails only
            /// when the queue is shut down, handing the item back.
            pub fn put(&self, item: T) -> Result<(), PutError<T>> {
                self.core.put(item, Wait::Forever)
            }

            /// Puts an item if there is room now (Python's `put_nowait`).
            ///
            /// ```
            /// # use ferry_core::{Queue, PutError};
            /// let q = Queue::new(1);
            /// q.put_nowait("a").unwrap();
            /// assert_eq!(q.put_nowait("b"), Err(PutError::Full("b")));
            /// ```
            pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
                self.core.put(item, Wait::No)
            }

            /// Puts an item, waiting at most `timeout` for room. A zero
            /// timeout does not wait.
            pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
                let wait = if timeout.is_zero() { Wait::No } else { Wait::timeout(timeout) };
                self.core.put(item, wait)
            }

            /// Gets an item, waiting as long as it takes. Fails only when the
            /// queue is shut down and drained.
            pub fn get(&self) -> Result<T, GetError> {
                self.core.get(Wait::Forever)
            }

            /// Gets an item if one is ready now (Python's `get_nowait`).
            ///
            /// ```
            /// # use ferry_core::{Queue, GetError};
            /// let q: Queue<i32> = Queue::new(0);
            /// assert_eq!(q.get_nowait(), Err(GetError::Empty));
            /// ```
            pub fn get_nowait(&self) -> Result<T, GetError> {
                self.core.get(Wait::No)
            }

            /// Gets an item, waiting at most `timeout`. A zero timeout does
            /// not wait.
            pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
                let wait = if timeout.is_zero() { Wait::No } else { Wait::timeout(timeout) };
                self.core.get(wait)
            }

            /// Items ready to get.
            pub fn qsize(&self) -> usize {
                self.core.qsize()
            }

            /// True when no item is ready.
            pub fn empty(&self) -> bool {
                self.core.empty()
            }

            /// True when `maxsize > 0` and `qsize() >= maxsize`.
            pub fn full(&self) -> bool {
                self.core.full()
            }

            /// The bound on items; 0 means none.
            pub fn maxsize(&self) -> usize {
                self.core.maxsize()
            }

            /// Changes the bound. A larger one lets waiting puts in at once.
            pub fn set_maxsize(&self, maxsize: usize) {
                self.core.set_maxsize(maxsize)
            }

            /// Items put and not yet marked done.
            pub fn unfinished(&self) -> usize {
                self.core.unfinished()
            }

            /// Marks one task done (Python's count). Fails when called more
            /// times than items were put.
            ///
            /// ```
            /// # use ferry_core::Queue;
            /// let q = Queue::new(0);
            /// q.put(1).unwrap();
            /// q.get().unwrap();
            /// q.task_done().unwrap();
            /// assert!(q.task_done().is_err());
            /// ```
            pub fn task_done(&self) -> Result<(), TaskDoneError> {
                self.core.task_done()
            }

            /// Waits until every item put has been marked done.
            pub fn join(&self) {
                self.core.join(Wait::Forever);
            }

            /// Waits at most `timeout` for every item to be done; true if
            /// they were.
            pub fn join_timeout(&self, timeout: Duration) -> bool {
                self.core.join(Wait::timeout(timeout))
            }

            /// Python 3.13's `shutdown(immediate)`: puts fail from now on and
            /// gets fail once the queue is drained; `immediate` drops what is
            /// queued, counting each as done, so `join` does not wait for it.
            pub fn shutdown(&self, immediate: bool) {
                self.core.shutdown(immediate)
            }

            /// True once `shutdown` was called.
            pub fn is_shutdown(&self) -> bool {
                self.core.is_shutdown()
            }
        }
    };
}

queue_type! {
    /// A first-in, first-out queue (Python's `queue.Queue`).
    Queue, Fifo<T>, Fifo::new, [],
    "let q = ferry_core::Queue::new(2);\nq.put(1).unwrap();\nq.put(2).unwrap();\nassert!(q.full());\nassert_eq!(q.get(), Ok(1));"
}

queue_type! {
    /// A last-in, first-out queue (Python's `queue.LifoQueue`).
    LifoQueue, Core<Plain<T>>, |maxsize| Core::new(Kind::Lifo, maxsize), [],
    "let q = ferry_core::LifoQueue::new(0);\nq.put(1).unwrap();\nq.put(2).unwrap();\nassert_eq!(q.get(), Ok(2));"
}

queue_type! {
    /// A queue that serves its least item first, and equal items in the
    /// order they were put (Python's `queue.PriorityQueue`).
    PriorityQueue, Core<Ordered<T>>, |maxsize| Core::new(Kind::Priority, maxsize), [: Ord],
    "let q = ferry_core::PriorityQueue::new(0);\nq.put((2, \"b\")).unwrap();\nq.put((1, \"a\")).unwrap();\nassert_eq!(q.get(), Ok((1, \"a\")));"
}

/// [`Queue`] under the name of `multiprocessing.JoinableQueue`: the same
/// queue, with `task_done` and `join`.
pub type JoinableQueue<T> = Queue<T>;
