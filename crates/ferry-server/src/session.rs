//! A client's session: everything the broker keeps for one connection,
//! apart from its socket — who it is, what it negotiated, what it holds,
//! and the replies it has not sent yet. Commands read and change it
//! (`cmd`); the connection (`conn`) only reads, waits and flushes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_core::engine::{Message, Millis};
use ferry_proto::Reply;

use crate::acl::User;
use crate::broker::{Broker, HolderGroup, QueueCell};
use crate::clients::Client;
use crate::payload::Payload;

/// A new queue refused — the broker is over `--max-memory`, or the user
/// at its `max_queues` — with the reason (an `-OOM` reply).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

/// One client's state.
pub(crate) struct Session {
    pub(crate) broker: Arc<Broker>,
    pub(crate) id: u64,
    pub(crate) name: Option<Bytes>,
    pub(crate) authed: bool,
    /// Commands run before it authenticated (see `cmd::STRANGER_COMMANDS`).
    pub(crate) stranger_commands: u32,
    /// Passwords refused (see `cmd::WRONG_PASSWORDS`).
    pub(crate) wrong_passwords: u32,
    /// Who it authenticated as, under an ACL file; `None`: may do all.
    pub(crate) user: Option<Arc<User>>,
    pub(crate) resp3: bool,
    /// Replies written and not yet sent.
    pub(crate) out: BytesMut,
    /// Queues in which this client holds bound leases or taken messages:
    /// released when it goes.
    pub(crate) holds: HashMap<Bytes, Arc<QueueCell>>,
    /// The holder group it joined (CLIENT HOLDER): then its gets are held
    /// by the group, released when the group's last connection goes.
    pub(crate) group: Option<Arc<HolderGroup>>,
    /// Locks this client holds, by name, with their tokens.
    pub(crate) locks: Vec<(Bytes, u64)>,
    /// Semaphore permits this client holds, by name, with their tokens.
    pub(crate) semaphores: Vec<(Bytes, u64)>,
    /// The queue this client used last: most clients use one, and this
    /// spares the registry lookup per command.
    last: Option<Arc<QueueCell>>,
    /// QGET's working buffers, kept between calls: a get should not cost
    /// four allocations.
    pub(crate) scratch: GetScratch,
    /// A command since the last flush changed what the log records: the
    /// replies wait until the log is durable.
    pub(crate) logged: bool,
    /// Commands run, and what others see of this connection.
    pub(crate) commands: u64,
    pub(crate) seen: Arc<Client>,
    /// The broker time read for this batch of requests, and how many
    /// commands have used it ([`Session::now`]).
    clock: Option<Millis>,
    clock_uses: u32,
}

/// Commands that may share one reading of the clock, at most: a long
/// pipeline reads it again now and then.
const CLOCK_USES: u32 = 32;

/// QGET's working buffers.
#[derive(Default)]
pub(crate) struct GetScratch {
    pub(crate) cells: Vec<Arc<QueueCell>>,
    /// Of `cells`, those a wait would watch, by index.
    pub(crate) open: Vec<usize>,
    /// Messages got, with the index in `cells` of their queue.
    pub(crate) got: Vec<(usize, Message<Payload>)>,
    pub(crate) buf: Vec<Message<Payload>>,
}

impl GetScratch {
    /// Emptied before it is kept, so no payload outlives its reply.
    pub(crate) fn clear(&mut self) {
        self.cells.clear();
        self.open.clear();
        self.got.clear();
        self.buf.clear();
    }
}

impl Session {
    /// A new client of `broker`, connected from `addr`.
    pub(crate) fn new(broker: Arc<Broker>, addr: String) -> Self {
        let id = broker.next_client_id();
        let authed = broker.config.requirepass.is_none() && broker.config.acl_file.is_none();
        let seen = broker.connections.register(id, addr, broker.now(), !authed);
        Session {
            broker,
            id,
            name: None,
            authed,
            stranger_commands: 0,
            wrong_passwords: 0,
            user: None,
            resp3: false,
            // Grown by the first reply: an idle connection holds no page
            // for replies it has not sent.
            out: BytesMut::new(),
            holds: HashMap::new(),
            group: None,
            locks: Vec::new(),
            semaphores: Vec::new(),
            last: None,
            scratch: GetScratch::default(),
            logged: false,
            commands: 0,
            seen,
            clock: None,
            clock_uses: 0,
        }
    }

    /// Shows others the requests it ran since the last call.
    pub(crate) fn seen_active(&mut self) {
        let now = self.now();
        self.seen.active(self.commands, now);
    }

    /// The broker time, read once for a batch of requests (as Redis reads
    /// it once per command): reading the clock was 5–7 % of a put's time.
    /// The connection calls [`Session::tick`] before each batch and after
    /// every wait, so it is never older than the batch being answered.
    pub(crate) fn now(&mut self) -> Millis {
        match self.clock {
            Some(now) if self.clock_uses < CLOCK_USES => {
                self.clock_uses += 1;
                now
            }
            _ => {
                let now = self.broker.now();
                self.clock = Some(now);
                self.clock_uses = 0;
                now
            }
        }
    }

    /// Forgets the time read: the next [`Session::now`] reads the clock.
    pub(crate) fn tick(&mut self) {
        self.clock = None;
    }

    /// A writer for the next reply.
    pub(crate) fn reply(&mut self) -> Reply<'_> {
        Reply::new(&mut self.out, self.resp3)
    }

    /// The queue of that name, if it exists (a share of it; the session
    /// keeps it as the queue used last).
    pub(crate) fn find(&mut self, name: &Bytes) -> Option<Arc<QueueCell>> {
        let cell = self.take_existing(name)?;
        self.keep_queue(Arc::clone(&cell));
        Some(cell)
    }

    /// The queue of that name (created by first use if need be), taken
    /// out of the session's last-used slot when it is that one: give it
    /// back with [`Session::keep_queue`]. No reference count changes on
    /// the usual path, where [`Session::find_or_create`] adds one. The
    /// other lookups are built on this one.
    pub(crate) fn take_queue(&mut self, name: &Bytes) -> Result<Arc<QueueCell>, Refused> {
        if let Some(cell) = self.take_existing(name) {
            // A queue a get made for its wait alone is the log's from now.
            return Ok(self.broker.promote(cell));
        }
        let made = self.broker.create(
            name,
            ferry_core::engine::Config::default(),
            false,
            None,
            self.user.as_deref(),
        );
        made.map(|(cell, _)| cell).map_err(Refused)
    }

    /// [`Session::take_queue`] for a get: a queue that does not exist is
    /// made for the get's wait alone, and leaves nothing behind
    /// ([`crate::broker::Broker::queue_to_get`]).
    pub(crate) fn take_queue_to_get(&mut self, name: &Bytes) -> Result<Arc<QueueCell>, Refused> {
        if let Some(cell) = self.take_existing(name) {
            return Ok(cell);
        }
        self.broker
            .queue_to_get(name, self.user.as_deref())
            .map_err(Refused)
    }

    /// [`Session::take_queue`] of a queue that exists, if it does.
    pub(crate) fn take_existing(&mut self, name: &Bytes) -> Option<Arc<QueueCell>> {
        let now = self.now();
        let cell = match self.last.take_if(|c| c.name == *name && !c.removed()) {
            Some(cell) => cell,
            None => self.broker.queue(name)?,
        };
        cell.used(now);
        Some(cell)
    }

    /// Makes `cell` the queue used last.
    pub(crate) fn keep_queue(&mut self, cell: Arc<QueueCell>) {
        self.last = Some(cell);
    }

    /// The queue of that name, created by first use if need be (a share
    /// of it; the session keeps it as the queue used last).
    pub(crate) fn find_or_create(&mut self, name: &Bytes) -> Result<Arc<QueueCell>, Refused> {
        let cell = self.take_queue(name)?;
        self.keep_queue(Arc::clone(&cell));
        Ok(cell)
    }

    /// Who holds what this client gets: its holder group, or itself.
    pub(crate) fn holder(&self) -> u64 {
        self.group.as_ref().map_or(self.id, |g| g.id)
    }

    /// Remembers that this client (or its group) holds something in `cell`.
    pub(crate) fn hold(&mut self, cell: &Arc<QueueCell>) {
        let mut group_holds;
        let holds = match &self.group {
            Some(g) => {
                group_holds = g.holds.lock();
                &mut *group_holds
            }
            None => &mut self.holds,
        };
        if !holds.contains_key(&cell.name) {
            holds.insert(cell.name.clone(), Arc::clone(cell));
        }
    }

    /// Leaves its holder group; the last member to leave releases what the
    /// group held.
    pub(crate) fn leave_group(&mut self) {
        if let Some(group) = self.group.take()
            && self.broker.leave_group(&group)
        {
            let holds = std::mem::take(&mut *group.holds.lock());
            for cell in holds.into_values() {
                cell.with(&self.broker, |st, now| st.q.release_holder(group.id, now));
            }
        }
    }

    /// Gives back everything the client held: bound leases return to their
    /// queues (attempt + 1), taken messages count as lost, locks and
    /// semaphore permits are given back.
    pub(crate) fn release_all(&mut self) {
        let id = self.id;
        for cell in std::mem::take(&mut self.holds).into_values() {
            cell.with(&self.broker, |st, now| st.q.release_holder(id, now));
        }
        self.leave_group();
        let holder = crate::locks::Releaser::Holder(id);
        for (name, token) in std::mem::take(&mut self.locks) {
            let _ = self.broker.locks.release(&name, token, holder);
        }
        for (name, token) in std::mem::take(&mut self.semaphores) {
            let _ = self.broker.semaphores.release(&name, token, holder);
        }
        // A barrier's round held for this client's action breaks.
        self.broker.barriers.gone(id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.broker.connections.forget(self.id);
    }
}
