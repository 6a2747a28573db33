//! The process's thread for PostgreSQL: it drives every connection of the
//! process's clients and their notifications, and keeps the process's
//! holders alive, on a runtime of its own — the blocking client's runtime
//! runs only inside its calls, so it could neither renew a heartbeat nor
//! read a notification while the program works on a message. Made again
//! in a forked child (the parent's thread is not there).
//!
//! Holders: clients of one process may share a holder (CLIENT HOLDER,
//! as the Python package's connections do), so a holder lives while any
//! of its clients does: its heartbeat renews it every third of `?lease`
//! on a connection of its own, and when its last client goes, what it
//! holds is given back at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::Target;

/// A holder's clients, and how to end its heartbeat (which then gives
/// back what it holds).
struct Holding {
    clients: usize,
    stop: Option<oneshot::Sender<()>>,
    /// Counts the times its clients fell to none: a release scheduled
    /// then goes ahead only if none came back since.
    emptied: u64,
}

/// How long a holder whose last client went lives on, in case a client
/// comes back: a client that lost its connection drops its link before
/// it opens the next, and its process's holder must not give back its
/// leases and locks in between.
const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

struct Thread {
    pid: u32,
    rt: Handle,
    holders: HashMap<(String, String), Holding>,
}

type Slot = Option<Thread>;

static SLOT: Mutex<Slot> = Mutex::new(None);

thread_local! {
    /// SLOT, held by the forking thread from `before_fork` to
    /// `after_fork`, so that no other thread holds it as the fork copies
    /// it (a child would wait on that copy for ever).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Slot>>> = const { RefCell::new(None) };
}

pub(crate) fn before_fork() {
    let guard = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
}

pub(crate) fn after_fork() {
    FORK_GUARD.with(|g| g.borrow_mut().take());
}

/// Runs `f` on this process's thread's state, starting the thread if
/// need be.
fn with<T>(f: impl FnOnce(&mut Thread) -> T) -> std::io::Result<T> {
    let mut f = Some(f);
    // Between before_fork and after_fork this thread holds the slot.
    let mut guarded = None;
    FORK_GUARD.with(|g| {
        if let Some(slot) = g.borrow_mut().as_mut() {
            guarded = Some(run(slot, &mut f));
        }
    });
    if let Some(out) = guarded {
        return out;
    }
    run(&mut SLOT.lock().unwrap_or_else(|e| e.into_inner()), &mut f)
}

fn run<T>(slot: &mut Slot, f: &mut Option<impl FnOnce(&mut Thread) -> T>) -> std::io::Result<T> {
    if current(slot).is_none() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("ferry-postgres".into())
            .spawn(move || {
                crate::leave_signals_to_the_program();
                rt.block_on(std::future::pending::<()>());
            })?;
        // A parent's holders are forgotten, not given back: they are the
        // parent's, which lives on (and their senders would wake the
        // parent's runtime through copied state).
        if let Some(old) = slot.take() {
            std::mem::forget(old);
        }
        *slot = Some(Thread {
            pid: std::process::id(),
            rt: handle,
            holders: HashMap::new(),
        });
    }
    match (current(slot), f.take()) {
        (Some(t), Some(f)) => Ok(f(t)),
        _ => Err(std::io::Error::other("the PostgreSQL thread did not start")),
    }
}

/// The slot's thread, if it is this process's.
fn current(slot: &mut Slot) -> Option<&mut Thread> {
    slot.as_mut().filter(|t| t.pid == std::process::id())
}

/// The runtime of this process's PostgreSQL thread, started if need be.
pub(super) fn handle() -> std::io::Result<Handle> {
    with(|t| t.rt.clone())
}

/// One more client of `holder`: its heartbeat starts with the first.
pub(super) fn attach(target: &Target, holder: &str) -> std::io::Result<()> {
    with(|t| {
        let key = (target.url.clone(), holder.to_string());
        let h = t.holders.entry(key).or_insert(Holding {
            clients: 0,
            stop: None,
            emptied: 0,
        });
        h.clients += 1;
        if h.stop.is_none() {
            let (stop, stopped) = oneshot::channel();
            h.stop = Some(stop);
            t.rt.spawn(heartbeat(target.clone(), holder.to_string(), stopped));
        }
    })
}

/// One client of `holder` fewer: when none is left for [`GRACE`], its
/// heartbeat ends and what it holds goes back.
pub(super) fn detach(target: &Target, holder: &str) {
    let _ = with(|t| {
        let key = (target.url.clone(), holder.to_string());
        let Some(h) = t.holders.get_mut(&key) else {
            return;
        };
        h.clients = h.clients.saturating_sub(1);
        if h.clients > 0 {
            return;
        }
        h.emptied += 1;
        let emptied = h.emptied;
        t.rt.spawn(async move {
            tokio::time::sleep(GRACE).await;
            let _ = with(|t| {
                let gone = t
                    .holders
                    .get(&key)
                    .is_some_and(|h| h.clients == 0 && h.emptied == emptied);
                if gone
                    && let Some(h) = t.holders.remove(&key)
                    && let Some(stop) = h.stop
                {
                    let _ = stop.send(());
                }
            });
        });
    });
}

/// Renews `holder` every third of the lease until stopped, then gives
/// back what it holds. A renewal that fails is tried again at the next
/// tick, on a new connection.
async fn heartbeat(target: Target, holder: String, mut stopped: oneshot::Receiver<()>) {
    let lease = super::ms(target.lease);
    let mut tick = tokio::time::interval(target.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut db = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stopped => break,
        }
        if db.is_none() {
            db = super::connect(&target).await.ok();
        }
        if let Some(c) = &db {
            let renewed = tokio::time::timeout(
                target.lease / 3,
                c.execute("SELECT ferry.renew($1, $2)", &[&holder, &lease]),
            )
            .await;
            if !matches!(renewed, Ok(Ok(_))) {
                db = None;
            }
        }
    }
    if db.is_none() {
        db = super::connect(&target).await.ok();
    }
    if let Some(c) = db {
        let _ = c.execute("SELECT ferry.release($1)", &[&holder]).await;
    }
}
