//! The process's thread for PostgreSQL: it drives every connection of the
//! process's clients, their heartbeats and their notifications, on a
//! runtime of its own — the blocking client's runtime runs only inside
//! its calls, so it could neither renew a heartbeat nor read a
//! notification while the program works on a message. Made again in a
//! forked child (the parent's thread is not there).

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};

use tokio::runtime::Handle;

type Slot = Option<(u32, Handle)>;

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

/// The runtime of this process's PostgreSQL thread, started if need be.
pub(super) fn handle() -> std::io::Result<Handle> {
    // Between before_fork and after_fork this thread holds the slot.
    match FORK_GUARD.with(|g| g.borrow().as_ref().map(|slot| current(slot))) {
        Some(Some(h)) => return Ok(h),
        Some(None) => {
            return Err(std::io::Error::other(
                "no PostgreSQL connection can start while the process forks",
            ));
        }
        None => {}
    }
    let mut slot = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = current(&slot) {
        return Ok(h);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let h = rt.handle().clone();
    std::thread::Builder::new()
        .name("ferry-postgres".into())
        .spawn(move || {
            crate::leave_signals_to_the_program();
            rt.block_on(std::future::pending::<()>());
        })?;
    *slot = Some((std::process::id(), h.clone()));
    Ok(h)
}

/// The slot's runtime, if it is this process's.
fn current(slot: &Slot) -> Option<Handle> {
    match slot {
        Some((pid, h)) if *pid == std::process::id() => Some(h.clone()),
        _ => None,
    }
}
