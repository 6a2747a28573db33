//! Keeps a process's leases and locks on Redis alive while it lives.
//!
//! One thread per process (made again in a forked child), with a runtime
//! of its own: the blocking client's runtime runs only inside its calls,
//! so it could not renew while the program works on a message. Every
//! third of its heartbeat (`?lease`) it renews, per server and queue, the
//! heartbeats of this process's holders that got from or waited in that
//! queue — one call and one write, whatever they hold — and the locks,
//! semaphore permits and barrier actions it holds (grants); when a holder's last client is dropped, what it holds is given
//! back at once (without that, it would come back once its heartbeat is
//! overdue). Each server is renewed on its own schedule and each renewal
//! is a task of its own, with a time limit: a server that is slow or gone
//! delays nothing but its own holders.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::conn::{Engine, Lib, RConn};
use super::{LOCK, QUEUE, SYNC, Target, lock_keys, move_dead_letters, queue_keys, sync_keys};

enum Cmd {
    Attach(Target, String),
    Detach(Target, String),
    Queue(Target, String, String),
    Hold(Target, String, Grant, String, u64),
    Drop(Target, String, Grant, String, u64),
}

/// What a token holds while its holder lives.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Grant {
    Lock,
    /// A semaphore's permit.
    Semaphore,
    /// A barrier's round held while its last arriver runs the action.
    Barrier,
}

impl Grant {
    fn script(self) -> &'static Lib {
        match self {
            Grant::Lock => &LOCK,
            Grant::Semaphore | Grant::Barrier => &SYNC,
        }
    }

    fn keys(self, name: &str) -> Vec<Vec<u8>> {
        match self {
            Grant::Lock => lock_keys(name),
            Grant::Semaphore => sync_keys("sem", name),
            Grant::Barrier => sync_keys("bar", name),
        }
    }

    /// What gives it back when its holder goes: a lock is free again, a
    /// permit returns only as far as the value, a held round breaks.
    fn gone(self) -> &'static [u8] {
        match self {
            Grant::Lock => b"release",
            Grant::Semaphore | Grant::Barrier => b"lose",
        }
    }
}

/// What one holder holds on one server.
#[derive(Default)]
struct Holding {
    clients: usize,
    queues: HashSet<String>,
    grants: HashSet<(Grant, String, u64)>,
}

type RenewerSlot = Option<(u32, UnboundedSender<Cmd>)>;

static RENEWER: Mutex<RenewerSlot> = Mutex::new(None);

thread_local! {
    /// RENEWER, held by the forking thread from `before_fork` to
    /// `after_fork`: a fork copies the mutex as it is, and a child whose
    /// copy another thread of the parent held would wait on it for ever
    /// (a Pool worker forked so never took a task).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, RenewerSlot>>> = const { RefCell::new(None) };
}

/// Before a fork (the child goes on without exec): takes the process-wide
/// lock so that no other thread holds it as the fork copies it.
pub(crate) fn before_fork() {
    let guard = RENEWER.lock().unwrap_or_else(|e| e.into_inner());
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

/// After a fork, in the parent and in the child: lets go of it.
pub(crate) fn after_fork() {
    FORK_GUARD.with(|g| g.borrow_mut().take());
}

fn send(cmd: Cmd) {
    // Between `before_fork` and `after_fork` this thread holds the lock
    // already (an at-fork hook, or a collected connection, may get here).
    let mut cmd = Some(cmd);
    FORK_GUARD.with(|g| {
        if let Some(slot) = g.borrow_mut().as_mut() {
            deliver(slot, cmd.take());
        }
    });
    if cmd.is_some() {
        deliver(&mut RENEWER.lock().unwrap_or_else(|e| e.into_inner()), cmd);
    }
}

fn deliver(slot: &mut RenewerSlot, cmd: Option<Cmd>) {
    let Some(cmd) = cmd else { return };
    let pid = std::process::id();
    let alive = matches!(&*slot, Some((p, _)) if *p == pid);
    if !alive {
        // A parent's sender is forgotten, not dropped: dropping the last
        // one would wake the parent's renewer through a runtime whose
        // locks the fork copied.
        std::mem::forget(slot.take());
        let (tx, rx) = unbounded_channel();
        let started = std::thread::Builder::new()
            .name("ferry-redis-renew".into())
            .spawn(move || {
                crate::leave_signals_to_the_program();
                run(rx)
            });
        if started.is_err() {
            // No thread: leases are not renewed, and come back after
            // their lease time (they are still finished in time by a
            // process that works faster than that).
            return;
        }
        *slot = Some((pid, tx));
    }
    if let Some((_, tx)) = &*slot {
        let _ = tx.send(cmd);
    }
}

pub(super) fn attach(target: &Target, holder: &str) {
    send(Cmd::Attach(target.clone(), holder.to_string()));
}

pub(super) fn detach(target: &Target, holder: &str) {
    send(Cmd::Detach(target.clone(), holder.to_string()));
}

pub(super) fn hold_queue(target: &Target, holder: &str, queue: &str) {
    send(Cmd::Queue(
        target.clone(),
        holder.to_string(),
        queue.to_string(),
    ));
}

pub(super) fn hold(target: &Target, holder: &str, grant: Grant, name: &str, token: u64) {
    send(Cmd::Hold(
        target.clone(),
        holder.to_string(),
        grant,
        name.to_string(),
        token,
    ));
}

pub(super) fn drop(target: &Target, holder: &str, grant: Grant, name: &str, token: u64) {
    send(Cmd::Drop(
        target.clone(),
        holder.to_string(),
        grant,
        name.to_string(),
        token,
    ));
}

/// One server's connection, made when first needed and again after an
/// error; shared by the renewals of every holder on that server.
type Slot = Arc<tokio::sync::Mutex<Option<RConn>>>;

#[derive(Default)]
struct Renewer {
    holdings: HashMap<(Target, String), Holding>,
    conns: HashMap<String, Slot>,
    /// When each server's holders are renewed next.
    due: HashMap<Target, Instant>,
}

fn run(rx: UnboundedReceiver<Cmd>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(Renewer::default().serve(rx));
}

/// How often a holder's leases and locks are renewed.
fn period(t: &Target) -> Duration {
    (t.lease / 3).max(Duration::from_millis(1))
}

impl Renewer {
    async fn serve(mut self, mut rx: UnboundedReceiver<Cmd>) {
        loop {
            let wait = self
                .due
                .values()
                .min()
                .map_or(Duration::from_secs(10), |due| {
                    due.saturating_duration_since(Instant::now())
                });
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    None => return,
                },
                () = tokio::time::sleep(wait) => {}
            }
            self.renew_due();
        }
    }

    /// What `h` holds on `t`; a server new here is renewed a period from
    /// now (what it holds was just taken, for a whole heartbeat).
    fn holding(&mut self, t: Target, h: String) -> &mut Holding {
        let due = Instant::now() + period(&t);
        self.due.entry(t.clone()).or_insert(due);
        self.holdings.entry((t, h)).or_default()
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach(t, h) => self.holding(t, h).clients += 1,
            Cmd::Detach(t, h) => {
                let key = (t, h);
                let last = match self.holdings.get_mut(&key) {
                    Some(held) => {
                        held.clients = held.clients.saturating_sub(1);
                        held.clients == 0
                    }
                    None => false,
                };
                if last && let Some(held) = self.holdings.remove(&key) {
                    let (t, h) = key;
                    if !self.holdings.keys().any(|(other, _)| *other == t) {
                        self.due.remove(&t);
                    }
                    let slot = self.slot(&t);
                    tokio::spawn(async move {
                        let lease = t.lease;
                        let _ = tokio::time::timeout(lease, release(slot, t, h, held)).await;
                    });
                }
            }
            Cmd::Queue(t, h, q) => {
                self.holding(t, h).queues.insert(q);
            }
            Cmd::Hold(t, h, grant, name, token) => {
                self.holding(t, h).grants.insert((grant, name, token));
            }
            Cmd::Drop(t, h, grant, name, token) => {
                if let Some(held) = self.holdings.get_mut(&(t, h)) {
                    held.grants.remove(&(grant, name, token));
                }
            }
        }
    }

    fn slot(&mut self, t: &Target) -> Slot {
        Arc::clone(self.conns.entry(t.url.clone()).or_default())
    }

    /// Starts the renewal of every server whose time has come; each is
    /// given at most a heartbeat (after that, renewing is moot).
    fn renew_due(&mut self) {
        let now = Instant::now();
        let mut work = Vec::new();
        for (t, due) in &mut self.due {
            if *due > now {
                continue;
            }
            *due = now + period(t);
            // Each queue's holders, and every grant, on this server.
            let mut queues: HashMap<String, Vec<String>> = HashMap::new();
            let mut grants = HashSet::new();
            for ((ht, h), held) in &self.holdings {
                if ht != t {
                    continue;
                }
                for q in &held.queues {
                    queues.entry(q.clone()).or_default().push(h.clone());
                }
                grants.extend(held.grants.iter().cloned());
            }
            work.push((t.clone(), queues, grants));
        }
        for (t, queues, grants) in work {
            let slot = self.slot(&t);
            tokio::spawn(async move {
                let beat = t.lease;
                let renewed = tokio::time::timeout(beat, renew(&slot, &t, &queues, &grants)).await;
                if !matches!(renewed, Ok(Ok(()))) {
                    // Connect again next time.
                    *slot.lock().await = None;
                }
            });
        }
    }
}

/// The server's connection: the one made before, or a new one.
async fn connected(slot: &Slot, t: &Target) -> Result<RConn, redis::RedisError> {
    let mut c = slot.lock().await;
    if let Some(c) = &*c {
        return Ok(c.clone());
    }
    let made = Engine::new(t)?.connect().await?;
    *c = Some(made.clone());
    Ok(made)
}

async fn renew(
    slot: &Slot,
    t: &Target,
    queues: &HashMap<String, Vec<String>>,
    grants: &HashSet<(Grant, String, u64)>,
) -> Result<(), redis::RedisError> {
    let mut c = connected(slot, t).await?;
    let beat = t.lease.as_millis().to_string();
    for (q, holders) in queues {
        let mut args = vec![b"renew".to_vec(), beat.clone().into_bytes()];
        args.extend(holders.iter().map(|h| h.as_bytes().to_vec()));
        let dead: i64 = QUEUE.call(&mut c, &queue_keys(q, b"-"), &args).await?;
        // Leases that ran out, or holders that died, made dead letters.
        if dead > 0 {
            move_dead_letters(&mut c, q).await?;
        }
    }
    for (grant, name, token) in grants {
        let args = [
            b"renew".to_vec(),
            token.to_string().into_bytes(),
            beat.clone().into_bytes(),
        ];
        grant
            .script()
            .call::<i64>(&mut c, &grant.keys(name), &args)
            .await?;
    }
    Ok(())
}

/// Gives back what a holder whose last client went held.
async fn release(slot: Slot, t: Target, h: String, held: Holding) -> Result<(), redis::RedisError> {
    let mut c = connected(&slot, &t).await?;
    for q in &held.queues {
        let args = [b"release".to_vec(), h.as_bytes().to_vec()];
        QUEUE
            .call::<i64>(&mut c, &queue_keys(q, b"-"), &args)
            .await?;
    }
    for (grant, name, token) in &held.grants {
        let args = [grant.gone().to_vec(), token.to_string().into_bytes()];
        grant
            .script()
            .call::<i64>(&mut c, &grant.keys(name), &args)
            .await?;
    }
    Ok(())
}
