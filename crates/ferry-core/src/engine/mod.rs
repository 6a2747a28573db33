//! The queue engine: one queue's semantics as a state machine, with no I/O,
//! no threads and no clock of its own.
//!
//! Every front end — the in-process queues for threads, the broker's async
//! connections — drives the same [`Queue`]. It holds its queue under a lock
//! and calls one operation at a time; time comes in as the `now` argument
//! (milliseconds on any monotonic clock the front end chooses).
//!
//! # Waiting
//!
//! An operation never blocks. When a get finds nothing, or a put finds no
//! room, the front end registers a waiter ([`Queue::wait_get`],
//! [`Queue::wait_put`], [`Queue::wait_join`]) and sleeps in its own way.
//! The engine serves waiters first come, first served: it *hands* messages
//! to the oldest getter (so no later caller can barge in), admits the oldest
//! putter as soon as its batch fits, and marks joiners done when nothing is
//! unfinished. The ids of waiters whose outcome was set are collected; the
//! front end drains them with [`Queue::drain_woken`] after every call and
//! wakes those sleepers, which then pick their outcome up with a `poll_*`
//! call. A sleeper that gives up calls `cancel_*`: whatever had been handed
//! to it goes back untouched, so a waiter that leaves is never handed a
//! message and nothing is lost to it.
//!
//! **Invariant:** the front end drains [`Queue::drain_woken`] after each
//! call and, for a waiter it registered, eventually calls `poll_*` or
//! `cancel_*`; messages handed to a waiter are reserved for it until then.
//!
//! # Layout
//!
//! - `ready`: the ready set, ordered by kind (fifo, lifo, priority).
//! - `store`: where a fifo queue keeps its ready messages — a `VecDeque`,
//!   or [`PackedFifo`] (packed into byte blocks).
//! - `leases`: what is out with consumers — leased messages with their
//!   deadlines, taken ones, and the index by holder, changed together.
//! - `waiters`: waiting getters, putters and joiners, and what each is
//!   owed.

mod ages;
mod leases;
mod ready;
mod store;
mod waiters;

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use ages::Ages;
use leases::{Leases, Released};
use ready::Ready;
pub use store::{FifoStore, Pack, PackedFifo};
use waiters::{GetState, PutState, Waiter, Waiters};

/// Milliseconds on the front end's monotonic clock.
pub type Millis = u64;
/// Who holds a bound lease or a taken message: a connection in the broker.
pub type HolderId = u64;
/// A registered waiter, unique within its queue.
pub type WaiterId = u64;

/// The order in which ready messages are served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// First in, first out (`queue.Queue`).
    #[default]
    Fifo,
    /// Last in, first out (`queue.LifoQueue`).
    Lifo,
    /// Lowest priority key first, first in first out among equals
    /// (`queue.PriorityQueue`).
    Priority,
}

impl Kind {
    /// Every kind, in the order of their codes.
    pub const ALL: [Kind; 3] = [Kind::Fifo, Kind::Lifo, Kind::Priority];

    /// Its name: `fifo`, `lifo` or `priority`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fifo => "fifo",
            Kind::Lifo => "lifo",
            Kind::Priority => "priority",
        }
    }

    /// The kind of that name, in any case.
    pub fn from_name(name: &[u8]) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// A queue's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Serving order.
    pub kind: Kind,
    /// Bound on ready messages; 0 means unbounded.
    pub maxsize: u64,
    /// How long a lease bound to its holder lasts without a touch; `None`
    /// lets it last as long as its holder.
    pub lease_timeout: Option<Millis>,
    /// A message returned this many times is dead-lettered instead.
    pub max_attempts: Option<u32>,
    /// Where dead-lettered messages go; `None` discards them (counted).
    pub dead_letter: Option<String>,
    /// Deliveries are paused: puts are admitted, gets find nothing ready
    /// and waiting gets wait, until resumed.
    pub paused: bool,
}

/// What the engine needs to know of an item.
pub trait Item {
    /// How items compare in a priority queue: lower is served first. Fifo
    /// and lifo queues never call it, so their items may answer `Equal`.
    fn priority_cmp(&self, other: &Self) -> Ordering;

    /// Roughly how many bytes the item takes, for
    /// [`Queue::held_weight`]; 0 if nobody limits memory.
    fn weight(&self) -> u64 {
        0
    }

    /// The item is entering a fifo queue, which never orders by it: drop
    /// whatever only ordering needs, so that [`Item::weight`] counts what
    /// the queue keeps (a packed fifo store keeps no more). Nothing, by
    /// default.
    fn forget_order(&mut self) {}
}

/// A message: an item with its id and the count of earlier deliveries
/// that did not finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<T> {
    /// Unique and increasing within its queue.
    pub id: u64,
    /// 0 on the first delivery, 1 after one return, and so on.
    pub attempts: u32,
    /// The payload (and, for a priority queue, its order key).
    pub item: T,
}

/// Receives every change to what a queue must remember across a restart,
/// in order, while the front end holds the queue's lock. The broker's store
/// writes each to its log; replaying them rebuilds the queue (see
/// [`Queue::restore`]).
pub trait Journal<T>: Send {
    /// A message was admitted (a put, or a dead letter moving in).
    fn put(&mut self, id: u64, attempts: u32, item: &T, due: Option<Millis>);
    /// A message is gone for good: done, delivered with NOACK or TAKE
    /// (never to be delivered again), dropped or purged.
    fn finished(&mut self, id: u64);
    /// A message came back for another try with this many attempts.
    fn returned(&mut self, id: u64, attempts: u32);
    /// A message was delivered under a lease.
    fn leased(&mut self, id: u64);
    /// A message reached max_attempts and left for the dead-letter queue;
    /// the store records it finished only once the dead-letter queue has
    /// it, so that a crash in between cannot lose it.
    fn dead_lettered(&mut self, id: u64);
    /// The operation that made the calls so far is complete: a journal
    /// that gathers records (many finishes of one batch into one) writes
    /// them now. The owner calls it, through [`Queue::flush_journal`],
    /// before it lets go of the queue after every operation.
    fn flush(&mut self) {}
}

/// The two kinds of lease (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Released when its holder goes away; only that holder may finish,
    /// return or touch it. Expires after the queue's `lease_timeout`, if set.
    Bound(HolderId),
    /// Survives any connection, may be finished by anyone, and expires
    /// after the given milliseconds unless touched.
    Timed(Millis),
}

/// How a get delivers (SPEC §1: leased, TAKE, NOACK).
pub enum GetSpec<T> {
    /// Delivered under a lease and redelivered if not finished. The engine
    /// keeps the item and hands out a copy made by `copy`.
    Lease {
        /// Which kind of lease.
        lease: Lease,
        /// Makes the copy that is handed out.
        copy: fn(&T) -> T,
    },
    /// Never redelivered, but unfinished until done. With a holder the
    /// message is tracked by id (done by id; counted lost if the holder goes
    /// away first); without one only the unfinished count remembers it, and
    /// [`Queue::task_done_counted`] finishes it as Python counts.
    Take {
        /// Who took it, if tracked.
        holder: Option<HolderId>,
    },
    /// Delivered and finished in one step.
    NoAck,
}

impl<T: Clone> GetSpec<T> {
    /// A leased get of cloneable items.
    pub fn lease(lease: Lease) -> Self {
        GetSpec::Lease {
            lease,
            copy: T::clone,
        }
    }
}

impl<T> Clone for GetSpec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GetSpec<T> {}

impl<T> std::fmt::Debug for GetSpec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetSpec::Lease { lease, .. } => f.debug_tuple("Lease").field(lease).finish(),
            GetSpec::Take { holder } => f.debug_tuple("Take").field(holder).finish(),
            GetSpec::NoAck => f.write_str("NoAck"),
        }
    }
}

/// One item or several, as a put or a waiting putter carries them.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch<T> {
    /// A single put.
    One(T),
    /// A batch put, admitted all or nothing.
    Many(Vec<T>),
}

impl<T: Item> Batch<T> {
    /// Their total [`Item::weight`].
    fn weight(&self) -> u64 {
        match self {
            Batch::One(t) => t.weight(),
            Batch::Many(v) => v.iter().map(Item::weight).sum(),
        }
    }
}

impl<T> Batch<T> {
    /// How many items.
    pub fn len(&self) -> usize {
        match self {
            Batch::One(_) => 1,
            Batch::Many(v) => v.len(),
        }
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a put was refused; the items come back with the error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError<B> {
    /// No room (no-wait, or the wait timed out).
    #[error("queue is full")]
    Full(B),
    /// The queue was shut down.
    #[error("queue is shut down")]
    ShutDown(B),
    /// A batch larger than maxsize can never fit.
    #[error("batch is larger than the queue's maxsize")]
    TooMany(B),
}

impl<B> PutError<B> {
    /// The items that were not put.
    pub fn into_inner(self) -> B {
        match self {
            PutError::Full(b) | PutError::ShutDown(b) | PutError::TooMany(b) => b,
        }
    }
}

/// A get on a queue that is shut down and has nothing ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("queue is shut down")]
pub struct ShutDown;

/// Python's "task_done() called too many times".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called too many times")]
pub struct TooManyTaskDone;

/// Whether and how a queue was shut down (Python 3.13's `shutdown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Gets drain what is ready, then fail.
    Graceful,
    /// What was ready was dropped (counted as finished).
    Immediate,
}

/// Running totals, for QINFO and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages admitted by puts.
    pub put: u64,
    /// Deliveries, redeliveries included.
    pub delivered: u64,
    /// Deliveries of a message delivered before (attempts > 0).
    pub redelivered: u64,
    /// Messages finished by done (or by a NOACK delivery).
    pub done: u64,
    /// Leased messages returned by nack.
    pub nacked: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Leased messages returned because their holder went away.
    pub released: u64,
    /// Messages moved out after `max_attempts` returns.
    pub dead_lettered: u64,
    /// Taken messages whose holder went away before done.
    pub lost: u64,
    /// Messages dropped by an immediate shutdown or a purge.
    pub dropped: u64,
}

/// One queue's complete state. See the module docs for how a front end
/// drives it. `F` stores a fifo queue's ready messages: a `VecDeque` by
/// default, or a [`PackedFifo`] for items that can be packed into bytes.
pub struct Queue<T, F = VecDeque<Message<T>>> {
    config: Config,
    now: Millis,
    next_id: u64,
    /// Messages put and not finished. For tracked gets this equals ready +
    /// delayed + reserved + leased + taken; untracked takes leave only this
    /// count, which [`Queue::task_done_counted`] lowers as Python does.
    unfinished: u64,
    ready: Ready<T, F>,
    delayed: BTreeMap<(Millis, u64), Message<T>>,
    /// Leased and taken messages, by id and by holder.
    out: Leases<T>,
    shutdown: Option<Shutdown>,
    waiters: Waiters<T>,
    dead: Vec<Message<T>>,
    stats: Stats,
    /// Total weight of the items the engine holds: ready, delayed,
    /// reserved for a waiter, or leased (taken and no-ack deliveries hand
    /// their item out).
    held: u64,
    /// Total weight of the items of puts waiting for room.
    waiting: u64,
    /// When the held messages were put, by the second.
    ages: Ages,
    journal: Option<Box<dyn Journal<T>>>,
}

impl<T: Item, F: FifoStore<T>> Queue<T, F> {
    /// An empty queue with these settings.
    pub fn new(config: Config) -> Self {
        Queue {
            ready: Ready::new(config.kind),
            config,
            now: 0,
            next_id: 1,
            unfinished: 0,
            delayed: BTreeMap::new(),
            out: Leases::default(),
            shutdown: None,
            waiters: Waiters::new(),
            dead: Vec::new(),
            stats: Stats::default(),
            held: 0,
            waiting: 0,
            ages: Ages::default(),
            journal: None,
        }
    }

    /// Reports every durable change to `journal` from now on.
    pub fn set_journal(&mut self, journal: Box<dyn Journal<T>>) {
        self.journal = Some(journal);
    }

    /// Puts back a message recovered from a log — with its id, attempts and
    /// item as they were, delayed until `due` if given — past maxsize and
    /// shutdown, without journaling it. Ids must come in increasing order.
    pub fn restore(&mut self, id: u64, attempts: u32, mut item: T, due: Option<Millis>) {
        self.next_id = self.next_id.max(id + 1);
        self.unfinished += 1;
        self.hold(id, &mut item);
        let msg = Message { id, attempts, item };
        match due {
            Some(at) if at > self.now => {
                self.delayed.insert((at, id), msg);
            }
            _ => self.ready.push(msg),
        }
    }

    /// Visits every message the queue stores — ready, delayed (with the
    /// time it is due), leased (marked out), or handed to a waiter and not
    /// yet picked up — in no particular order: what a snapshot must keep.
    /// One message at a time: a packed backlog is never unpacked whole.
    pub fn for_each_stored(&self, mut f: impl FnMut(&Message<T>, Option<Millis>, bool)) {
        self.ready.for_each(|m| f(m, None, false));
        for (&(due, _), m) in &self.delayed {
            f(m, Some(due), false);
        }
        for m in self.out.leased() {
            f(m, None, true);
        }
        for waiter in self.waiters.table.values() {
            if let Waiter::Get {
                state: GetState::Reserved(msgs),
                ..
            } = waiter
            {
                for m in msgs {
                    f(m, None, false);
                }
            }
        }
    }

    /// Makes the next id at least `next` (ids are never reused, even for
    /// messages that finished before a restart).
    pub fn set_next_id(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Total [`Item::weight`] of the messages this queue holds: a memory
    /// limit's measure.
    pub fn held_weight(&self) -> u64 {
        self.held
    }

    /// Total [`Item::weight`] of the items of puts waiting for room: not
    /// messages yet, but memory all the same.
    pub fn waiting_put_weight(&self) -> u64 {
        self.waiting
    }

    /// When the oldest message it holds (ready, delayed, leased or handed
    /// to a waiter; not taken) was put, to the second; restored messages
    /// count from their restore.
    pub fn oldest_put(&self) -> Option<Millis> {
        self.ages.oldest()
    }

    /// How many messages it holds, as [`Queue::oldest_put`] counts them.
    pub fn held_count(&self) -> u64 {
        self.ages.held()
    }

    /// Ends an operation for the journal (see [`Journal::flush`]).
    pub fn flush_journal(&mut self) {
        if let Some(j) = &mut self.journal {
            j.flush();
        }
    }

    fn journal_finished(&mut self, id: u64) {
        if let Some(j) = &mut self.journal {
            j.finished(id);
        }
    }

    /// Counts a message entering the queue (a fifo first drops what only
    /// ordering needs: the weight added here is the weight taken off
    /// when it leaves, whichever store it passed through).
    fn hold(&mut self, id: u64, item: &mut T) {
        if self.config.kind == Kind::Fifo {
            item.forget_order();
        }
        self.held += item.weight();
        self.ages.hold(id, self.now);
    }

    fn unhold(&mut self, id: u64, item: &T) {
        self.unhold_weighed(id, item.weight());
    }

    /// [`Queue::unhold`] of a message known by its id and weight.
    fn unhold_weighed(&mut self, id: u64, weight: u64) {
        self.ages.release(id);
        self.held = self.held.saturating_sub(weight);
    }

    // ----- settings and counters -------------------------------------------

    /// The current settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes maxsize. A larger one admits waiting putters at once; a
    /// smaller one makes puts wait until the queue drains below it.
    pub fn set_maxsize(&mut self, maxsize: u64) {
        self.config.maxsize = maxsize;
        self.dispatch();
    }

    /// Changes the serving order; only while no message is ready, delayed
    /// or out, since the ready set would have to be re-sorted. True if the
    /// queue now has that kind.
    pub fn set_kind(&mut self, kind: Kind) -> bool {
        if kind == self.config.kind {
            return true;
        }
        let idle = self.ready.is_empty() && self.delayed.is_empty() && self.out.is_empty();
        if idle {
            self.config.kind = kind;
            self.ready = Ready::new(kind);
        }
        idle
    }

    /// Changes the lease timeout of leases taken from now on.
    pub fn set_lease_timeout(&mut self, lease_timeout: Option<Millis>) {
        self.config.lease_timeout = lease_timeout;
    }

    /// Changes max_attempts for returns from now on.
    pub fn set_max_attempts(&mut self, max_attempts: Option<u32>) {
        self.config.max_attempts = max_attempts;
    }

    /// Changes the dead-letter queue's name.
    pub fn set_dead_letter(&mut self, dead_letter: Option<String>) {
        self.config.dead_letter = dead_letter;
    }

    /// Pauses deliveries, or resumes them (waiting gets are served at
    /// once).
    pub fn set_paused(&mut self, paused: bool) {
        self.config.paused = paused;
        self.dispatch();
    }

    /// Ready messages (Python's `qsize()`); delayed ones are not counted.
    pub fn qsize(&self) -> u64 {
        self.ready.len() as u64
    }

    /// Python's `empty()`.
    pub fn empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Python's `full()`: `maxsize > 0 and qsize >= maxsize`.
    pub fn full(&self) -> bool {
        self.config.maxsize > 0 && self.qsize() >= self.config.maxsize
    }

    /// Messages put and not yet finished; `join` waits for 0.
    pub fn unfinished(&self) -> u64 {
        self.unfinished
    }

    /// Messages out under a lease.
    pub fn leased(&self) -> u64 {
        self.out.leased_count() as u64
    }

    /// Messages taken by a tracked holder and not yet done.
    pub fn taken(&self) -> u64 {
        self.out.taken_count() as u64
    }

    /// Messages waiting for their delay to pass.
    pub fn delayed(&self) -> u64 {
        self.delayed.len() as u64
    }

    /// Holders (connections or holder groups) with leased or taken
    /// messages out; timed leases have no holder.
    pub fn holders(&self) -> usize {
        self.out.holder_count()
    }

    /// Getters waiting for a message.
    pub fn waiting_getters(&self) -> usize {
        self.waiters.getters.len()
    }

    /// Putters waiting for room.
    pub fn waiting_putters(&self) -> usize {
        self.waiters.putters.len()
    }

    /// Joiners waiting for the unfinished count to reach 0.
    pub fn waiting_joiners(&self) -> usize {
        self.waiters.joiners.len()
    }

    /// Whether and how the queue was shut down.
    pub fn shutdown_state(&self) -> Option<Shutdown> {
        self.shutdown
    }

    /// Running totals.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next id a put will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The earliest moment at which time alone changes something (a delay
    /// runs out or a lease expires); the front end calls [`Queue::tick`]
    /// then.
    pub fn next_deadline(&self) -> Option<Millis> {
        let delay = self.delayed.first_key_value().map(|(&(due, _), _)| due);
        let lease = self.out.next_expiry();
        match (delay, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Copies of up to `count` ready messages, in the order they would be
    /// served.
    pub fn peek(&self, count: usize) -> Vec<Message<T>>
    where
        T: Clone,
    {
        self.ready.peek(count)
    }

    /// Waiters whose outcome was set since the last call; wake them.
    pub fn drain_woken(&mut self) -> std::vec::Drain<'_, WaiterId> {
        self.waiters.woken.drain(..)
    }

    /// Messages that reached max_attempts since the last call, for the
    /// owner of all queues to move to [`Config::dead_letter`].
    pub fn drain_dead_letters(&mut self) -> std::vec::Drain<'_, Message<T>> {
        self.dead.drain(..)
    }

    // ----- time ------------------------------------------------------------

    /// Lets time pass: delays that ran out make messages ready, leases that
    /// ran out return theirs.
    pub fn tick(&mut self, now: Millis) {
        self.advance(now);
    }

    /// Brings the queue up to `now`, and serves waiters with whatever that
    /// made ready, so that the operation that follows cannot barge ahead of
    /// them.
    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
        let now = self.now;
        let mut changed = false;
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let msg = entry.remove();
            self.ready.push(msg);
            changed = true;
        }
        while let Some(lease) = self.out.pop_expired(now) {
            self.stats.expired += 1;
            self.give_back(lease.msg, None);
            changed = true;
        }
        if changed {
            self.dispatch();
        }
    }

    // ----- put -------------------------------------------------------------

    fn has_room(&self, n: usize) -> bool {
        self.config.maxsize == 0 || (self.ready.len() + n) as u64 <= self.config.maxsize
    }

    /// Puts one item without waiting; replies its id. A `delay` keeps it
    /// out of reach until `now + delay`.
    pub fn put(&mut self, item: T, delay: Option<Millis>, now: Millis) -> Result<u64, PutError<T>> {
        self.advance(now);
        if self.shutdown.is_some() {
            return Err(PutError::ShutDown(item));
        }
        if !self.has_room(1) {
            return Err(PutError::Full(item));
        }
        let id = self.admit_one(item, delay);
        self.dispatch();
        Ok(id)
    }

    /// Puts a batch without waiting, all or nothing; replies its ids.
    pub fn put_many(
        &mut self,
        items: Vec<T>,
        delay: Option<Millis>,
        now: Millis,
    ) -> Result<Range<u64>, PutError<Vec<T>>> {
        self.advance(now);
        if self.shutdown.is_some() {
            return Err(PutError::ShutDown(items));
        }
        if self.config.maxsize > 0 && items.len() as u64 > self.config.maxsize {
            return Err(PutError::TooMany(items));
        }
        if !self.has_room(items.len()) {
            return Err(PutError::Full(items));
        }
        let ids = self.admit(Batch::Many(items), delay);
        self.dispatch();
        Ok(ids)
    }

    /// Admits a message that was already admitted elsewhere — a dead letter
    /// moving in from its source queue, or a redriven one moving back —
    /// past maxsize and shutdown, with `attempts`. Replies its new id.
    pub fn put_moved(&mut self, mut item: T, attempts: u32, now: Millis) -> u64 {
        self.advance(now);
        let id = self.next_id;
        self.next_id += 1;
        self.unfinished += 1;
        self.stats.put += 1;
        self.hold(id, &mut item);
        if let Some(j) = &mut self.journal {
            j.put(id, attempts, &item, None);
        }
        self.ready.push(Message { id, attempts, item });
        self.dispatch();
        id
    }

    fn admit_one(&mut self, mut item: T, delay: Option<Millis>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.unfinished += 1;
        self.stats.put += 1;
        self.hold(id, &mut item);
        let due = delay.filter(|&d| d > 0).map(|d| self.now.saturating_add(d));
        if let Some(j) = &mut self.journal {
            j.put(id, 0, &item, due);
        }
        let msg = Message {
            id,
            attempts: 0,
            item,
        };
        match due {
            Some(at) => {
                self.delayed.insert((at, id), msg);
            }
            None => self.ready.push(msg),
        }
        id
    }

    fn admit(&mut self, batch: Batch<T>, delay: Option<Millis>) -> Range<u64> {
        let first = self.next_id;
        match batch {
            Batch::One(item) => {
                self.admit_one(item, delay);
            }
            Batch::Many(items) => {
                for item in items {
                    self.admit_one(item, delay);
                }
            }
        }
        first..self.next_id
    }

    /// Registers a putter that waits for room. Its batch is held here and
    /// admitted, whole, when it is the oldest putter and fits.
    pub fn wait_put(&mut self, batch: Batch<T>, delay: Option<Millis>, now: Millis) -> WaiterId {
        self.advance(now);
        self.waiting += batch.weight();
        let id = self
            .waiters
            .add(Waiter::Put(PutState::Waiting { batch, delay }));
        self.dispatch();
        id
    }

    /// A waiting putter's outcome, once there is one: its ids, or its batch
    /// back because the queue was shut down. `None` while it still waits.
    pub fn poll_put(&mut self, waiter: WaiterId) -> Option<Result<Range<u64>, PutError<Batch<T>>>> {
        if !matches!(
            self.waiters.table.get(&waiter),
            Some(Waiter::Put(PutState::Admitted(_) | PutState::ShutDown(_)))
        ) {
            return None;
        }
        match self.waiters.remove(waiter) {
            Some(Waiter::Put(PutState::Admitted(ids))) => Some(Ok(ids)),
            Some(Waiter::Put(PutState::ShutDown(batch))) => Some(Err(PutError::ShutDown(batch))),
            _ => None,
        }
    }

    /// Withdraws a waiting putter and hands back its batch if it was not
    /// admitted. Call [`Queue::poll_put`] first: an admitted batch stays put.
    pub fn cancel_put(&mut self, waiter: WaiterId) -> Option<Batch<T>> {
        if !matches!(self.waiters.table.get(&waiter), Some(Waiter::Put(_))) {
            return None;
        }
        let batch = match self.waiters.remove(waiter)? {
            Waiter::Put(PutState::Waiting { batch, .. }) => {
                self.waiting = self.waiting.saturating_sub(batch.weight());
                Some(batch)
            }
            Waiter::Put(PutState::ShutDown(batch)) => Some(batch),
            _ => None,
        };
        // The putter may have been holding up smaller ones behind it.
        self.dispatch();
        batch
    }

    // ----- get -------------------------------------------------------------

    /// Gets one message without waiting: `Ok(None)` when nothing is ready,
    /// `Err(ShutDown)` when nothing is ready and the queue was shut down.
    pub fn get(&mut self, spec: GetSpec<T>, now: Millis) -> Result<Option<Message<T>>, ShutDown> {
        self.advance(now);
        match self.pop_deliverable() {
            Some(msg) => {
                let msg = self.deliver(msg, spec);
                self.dispatch();
                Ok(Some(msg))
            }
            None if self.shutdown.is_some() && self.ready.is_empty() => Err(ShutDown),
            None => Ok(None),
        }
    }

    /// Gets up to `max` messages without waiting, appending them to `out`;
    /// replies how many. `Err(ShutDown)` when nothing is ready and the
    /// queue was shut down.
    pub fn get_many(
        &mut self,
        spec: GetSpec<T>,
        max: usize,
        now: Millis,
        out: &mut Vec<Message<T>>,
    ) -> Result<usize, ShutDown> {
        self.advance(now);
        let mut n = 0;
        while n < max {
            let Some(msg) = self.pop_deliverable() else {
                break;
            };
            let msg = self.deliver(msg, spec);
            out.push(msg);
            n += 1;
        }
        if n == 0 && self.shutdown.is_some() && self.ready.is_empty() {
            return Err(ShutDown);
        }
        self.dispatch();
        Ok(n)
    }

    /// Registers a getter that waits for up to `max` messages.
    pub fn wait_get(&mut self, spec: GetSpec<T>, max: usize, now: Millis) -> WaiterId {
        self.advance(now);
        let id = self.waiters.add(Waiter::Get {
            spec,
            max: max.max(1),
            state: GetState::Waiting,
        });
        self.dispatch();
        id
    }

    /// A waiting getter's outcome, once there is one: the messages handed
    /// to it (delivered now, at `now`), or ShutDown. `None` while it waits.
    pub fn poll_get(
        &mut self,
        waiter: WaiterId,
        now: Millis,
    ) -> Option<Result<Vec<Message<T>>, ShutDown>> {
        if !matches!(
            self.waiters.table.get(&waiter),
            Some(Waiter::Get {
                state: GetState::Reserved(_) | GetState::ShutDown,
                ..
            })
        ) {
            return None;
        }
        self.advance(now);
        let result = match self.waiters.remove(waiter) {
            Some(Waiter::Get {
                spec,
                state: GetState::Reserved(msgs),
                ..
            }) => Ok(msgs.into_iter().map(|m| self.deliver(m, spec)).collect()),
            _ => Err(ShutDown),
        };
        self.dispatch();
        Some(result)
    }

    /// Withdraws a waiting getter. Messages handed to it and not picked up
    /// go back to the head of the queue, their attempts unchanged.
    pub fn cancel_get(&mut self, waiter: WaiterId) {
        if !matches!(self.waiters.table.get(&waiter), Some(Waiter::Get { .. })) {
            return;
        }
        if let Some(Waiter::Get {
            state: GetState::Reserved(msgs),
            ..
        }) = self.waiters.remove(waiter)
        {
            for msg in msgs.into_iter().rev() {
                self.ready.give_back(msg);
            }
            self.dispatch();
        }
    }

    /// The next ready message, unless deliveries are paused.
    fn pop_deliverable(&mut self) -> Option<Message<T>> {
        if self.config.paused {
            return None;
        }
        self.ready.pop()
    }

    fn deliver(&mut self, msg: Message<T>, spec: GetSpec<T>) -> Message<T> {
        self.stats.delivered += 1;
        self.stats.redelivered += u64::from(msg.attempts > 0);
        match spec {
            GetSpec::NoAck => {
                self.unhold(msg.id, &msg.item);
                self.journal_finished(msg.id);
                self.finish_one();
                self.stats.done += 1;
                msg
            }
            GetSpec::Take { holder: None } => {
                self.unhold(msg.id, &msg.item);
                self.journal_finished(msg.id);
                msg
            }
            GetSpec::Take { holder: Some(h) } => {
                self.unhold(msg.id, &msg.item);
                self.journal_finished(msg.id);
                self.out.take(msg.id, h);
                msg
            }
            GetSpec::Lease { lease, copy } => {
                let (holder, duration) = match lease {
                    Lease::Bound(h) => (Some(h), self.config.lease_timeout),
                    Lease::Timed(ms) => (None, Some(ms)),
                };
                let deadline = duration.map(|d| self.now.saturating_add(d));
                if let Some(j) = &mut self.journal {
                    j.leased(msg.id);
                }
                let out = Message {
                    id: msg.id,
                    attempts: msg.attempts,
                    item: copy(&msg.item),
                };
                self.out.lease(msg, holder, duration, deadline);
                out
            }
        }
    }

    // ----- finishing and returning -----------------------------------------

    fn finish_one(&mut self) {
        // Saturating: with Python's counting (untracked takes) an immediate
        // shutdown may drop messages whose count task_done already took.
        self.unfinished = self.unfinished.saturating_sub(1);
    }

    /// Finishes (task_done) the given leased or taken messages on behalf of
    /// `holder`; replies how many it finished. Ids that are not out, or
    /// that belong to another holder, are skipped.
    pub fn done(&mut self, ids: &[u64], holder: Option<HolderId>) -> usize {
        let mut n = 0;
        for &id in ids {
            if let Some(lease) = self.out.remove_for(id, holder) {
                self.unhold(lease.msg.id, &lease.msg.item);
                self.journal_finished(id);
                n += 1;
            } else if self.out.finish_taken(id, holder) {
                n += 1;
            }
        }
        for _ in 0..n {
            self.finish_one();
        }
        self.stats.done += n as u64;
        self.dispatch();
        n
    }

    /// Python's `task_done()`: lowers the unfinished count by one, whatever
    /// was got, and fails when it is already 0. For untracked takes (the
    /// in-process queues) only.
    pub fn task_done_counted(&mut self) -> Result<(), TooManyTaskDone> {
        if self.unfinished == 0 {
            return Err(TooManyTaskDone);
        }
        self.unfinished -= 1;
        self.stats.done += 1;
        self.dispatch();
        Ok(())
    }

    /// Gives a leased message back for another try (attempt + 1), now or
    /// after `delay`. False when `holder` does not hold such a lease.
    pub fn nack(
        &mut self,
        id: u64,
        holder: Option<HolderId>,
        delay: Option<Millis>,
        now: Millis,
    ) -> bool {
        self.advance(now);
        let lease = self.out.remove_for(id, holder);
        let allowed = lease.is_some();
        if let Some(lease) = lease {
            self.stats.nacked += 1;
            self.give_back(lease.msg, delay);
        }
        self.dispatch();
        allowed
    }

    /// Gives back a leased message its holder never started (a client's
    /// prefetch, returned unused): ready again at once, with no attempt
    /// counted, so it never moves to the dead-letter queue for it. False
    /// when `holder` does not hold such a lease.
    pub fn return_unstarted(&mut self, id: u64, holder: Option<HolderId>, now: Millis) -> bool {
        self.advance(now);
        let lease = self.out.remove_for(id, holder);
        let allowed = lease.is_some();
        if let Some(lease) = lease {
            self.stats.nacked += 1;
            self.come_back(lease.msg, None, false);
        }
        self.dispatch();
        allowed
    }

    /// Extends a lease to `now + lease` (or its own length again); replies
    /// the new deadline, `Some(None)` for a lease without one, and `None`
    /// when `holder` does not hold such a lease.
    pub fn touch(
        &mut self,
        id: u64,
        holder: Option<HolderId>,
        lease: Option<Millis>,
        now: Millis,
    ) -> Option<Option<Millis>> {
        self.advance(now);
        self.out.touch(id, holder, lease, self.now)
    }

    /// The holder went away (its connection closed): its bound leases come
    /// back (attempt + 1), in their original order, and its taken messages
    /// count as finished and lost.
    pub fn release_holder(&mut self, holder: HolderId, now: Millis) {
        self.advance(now);
        // Newest first: each goes back to the head of the queue, so the
        // oldest ends up served first again.
        for released in self.out.release(holder) {
            match released {
                Released::Lease(msg) => {
                    self.stats.released += 1;
                    self.give_back(msg, None);
                }
                Released::Taken => {
                    self.stats.lost += 1;
                    self.finish_one();
                }
            }
        }
        self.dispatch();
    }

    /// A message comes back from a consumer: one more attempt, then the
    /// dead-letter queue, a drop (after an immediate shutdown), a delay, or
    /// the head of the queue.
    fn give_back(&mut self, msg: Message<T>, delay: Option<Millis>) {
        self.come_back(msg, delay, true);
    }

    /// `give_back`, or with `attempted` false the same without counting an
    /// attempt (and so never dead-lettered for it).
    fn come_back(&mut self, mut msg: Message<T>, delay: Option<Millis>, attempted: bool) {
        if attempted {
            msg.attempts = msg.attempts.saturating_add(1);
        }
        if attempted
            && self
                .config
                .max_attempts
                .is_some_and(|max| msg.attempts >= max)
        {
            self.stats.dead_lettered += 1;
            self.finish_one();
            self.unhold(msg.id, &msg.item);
            if let Some(j) = &mut self.journal {
                j.dead_lettered(msg.id);
            }
            self.dead.push(msg);
            return;
        }
        if self.shutdown == Some(Shutdown::Immediate) {
            self.stats.dropped += 1;
            self.finish_one();
            self.unhold(msg.id, &msg.item);
            self.journal_finished(msg.id);
            return;
        }
        if let Some(j) = &mut self.journal {
            j.returned(msg.id, msg.attempts);
        }
        match (self.shutdown, delay) {
            (None, Some(d)) if d > 0 => {
                self.delayed
                    .insert((self.now.saturating_add(d), msg.id), msg);
            }
            _ => self.ready.give_back(msg),
        }
    }

    // ----- shutdown, purge, join -------------------------------------------

    /// Python 3.13's `shutdown(immediate)`: puts fail from now on; delayed
    /// messages become ready; getters drain what is ready, then fail. With
    /// `immediate`, what is ready is dropped, each counted as finished.
    pub fn shutdown(&mut self, immediate: bool, now: Millis) {
        self.advance(now);
        if immediate {
            self.shutdown = Some(Shutdown::Immediate);
        } else if self.shutdown.is_none() {
            self.shutdown = Some(Shutdown::Graceful);
        }
        while let Some((_, msg)) = self.delayed.pop_first() {
            self.ready.push(msg);
        }
        if immediate {
            let mut dropped = Vec::new();
            self.ready.drop_all(|id, weight| dropped.push((id, weight)));
            self.stats.dropped += dropped.len() as u64;
            for (id, weight) in dropped {
                self.unhold_weighed(id, weight);
                self.journal_finished(id);
                self.finish_one();
            }
        }
        self.dispatch();
    }

    /// Undoes a shutdown: puts are accepted, and gets wait, again.
    pub fn reopen(&mut self) {
        self.shutdown = None;
    }

    /// Takes up to `max` ready messages out to move them to another queue
    /// (a redrive), paused or not; each counts as done here. Their finish
    /// is not journaled: the caller logs it after their put in the other
    /// queue, so that a crash in between leaves a copy in both, never in
    /// neither.
    pub fn take_out(&mut self, max: usize, now: Millis) -> Vec<Message<T>> {
        self.advance(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(msg) = self.ready.pop() else { break };
            self.unhold(msg.id, &msg.item);
            self.finish_one();
            self.stats.done += 1;
            out.push(msg);
        }
        self.dispatch();
        out
    }

    /// Drops every ready and delayed message, each counted as finished;
    /// replies how many.
    pub fn purge(&mut self, now: Millis) -> u64 {
        self.advance(now);
        let mut dropped = Vec::new();
        self.ready.drop_all(|id, weight| dropped.push((id, weight)));
        let mut n = 0;
        for (id, weight) in dropped {
            self.unhold_weighed(id, weight);
            self.journal_finished(id);
            n += 1;
        }
        while let Some((_, msg)) = self.delayed.pop_first() {
            self.unhold(msg.id, &msg.item);
            self.journal_finished(msg.id);
            n += 1;
        }
        for _ in 0..n {
            self.finish_one();
        }
        self.stats.dropped += n;
        self.dispatch();
        n
    }

    /// Registers a joiner; `None` when nothing is unfinished (join returns
    /// at once).
    pub fn wait_join(&mut self) -> Option<WaiterId> {
        if self.unfinished == 0 {
            return None;
        }
        Some(self.waiters.add(Waiter::Join { done: false }))
    }

    /// True (and the joiner is gone) once nothing is unfinished.
    pub fn poll_join(&mut self, waiter: WaiterId) -> bool {
        match self.waiters.table.get(&waiter) {
            Some(Waiter::Join { done: true }) => {
                self.waiters.remove(waiter);
                true
            }
            _ => false,
        }
    }

    /// Withdraws a joiner.
    pub fn cancel_join(&mut self, waiter: WaiterId) {
        if matches!(self.waiters.table.get(&waiter), Some(Waiter::Join { .. })) {
            self.waiters.remove(waiter);
        }
    }

    // ----- dispatch --------------------------------------------------------

    /// Serves waiters, oldest first, until nothing more can be done.
    fn dispatch(&mut self) {
        if self.waiters.idle() {
            return;
        }
        loop {
            self.serve_getters();
            if !self.serve_putters() {
                break;
            }
        }
        if self.unfinished == 0 && !self.waiters.joiners.is_empty() {
            for id in self.waiters.joiners.drain(..) {
                if let Some(Waiter::Join { done }) = self.waiters.table.get_mut(&id) {
                    *done = true;
                    self.waiters.woken.push(id);
                }
            }
        }
    }

    fn serve_getters(&mut self) {
        while !self.config.paused && !self.ready.is_empty() {
            let Some(id) = self.waiters.getters.pop_front() else {
                return;
            };
            if let Some(Waiter::Get { max, state, .. }) = self.waiters.table.get_mut(&id) {
                let mut msgs = Vec::with_capacity((*max).min(self.ready.len()));
                while msgs.len() < *max {
                    let Some(msg) = self.ready.pop() else { break };
                    msgs.push(msg);
                }
                *state = GetState::Reserved(msgs);
                self.waiters.woken.push(id);
            }
        }
        if self.shutdown.is_some() && self.ready.is_empty() {
            for id in self.waiters.getters.drain(..) {
                if let Some(Waiter::Get { state, .. }) = self.waiters.table.get_mut(&id) {
                    *state = GetState::ShutDown;
                    self.waiters.woken.push(id);
                }
            }
        }
    }

    /// Admits putters, oldest first, while they fit; true if any was.
    fn serve_putters(&mut self) -> bool {
        let mut admitted = false;
        while let Some(&id) = self.waiters.putters.front() {
            let needed = match self.waiters.table.get(&id) {
                Some(Waiter::Put(PutState::Waiting { batch, .. })) => batch.len(),
                _ => {
                    self.waiters.putters.pop_front();
                    continue;
                }
            };
            if self.shutdown.is_none() && !self.has_room(needed) {
                break;
            }
            self.waiters.putters.pop_front();
            let Some(Waiter::Put(state)) = self.waiters.table.get_mut(&id) else {
                continue;
            };
            let PutState::Waiting { batch, delay } =
                std::mem::replace(state, PutState::Admitted(0..0))
            else {
                continue;
            };
            self.waiting = self.waiting.saturating_sub(batch.weight());
            let outcome = if self.shutdown.is_some() {
                PutState::ShutDown(batch)
            } else {
                admitted = true;
                PutState::Admitted(self.admit(batch, delay))
            };
            if let Some(Waiter::Put(state)) = self.waiters.table.get_mut(&id) {
                *state = outcome;
            }
            self.waiters.woken.push(id);
        }
        admitted
    }
}

#[cfg(test)]
mod tests;
