//! `ferry event set|clear|is-set|wait NAME`: a `multiprocessing.Event`
//! from the shell — start scripts on many machines together (`ferry event
//! wait go && ./run`, then one `ferry event set go`), or hold them until
//! a migration is done.

use clap::{Args, Subcommand};

use crate::verbs::{Conn, TIMED_OUT, duration, fail};

#[derive(Args, Debug)]
pub(crate) struct EventArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Set the event: every waiter wakes, and waits return at once until
    /// it is cleared.
    Set(Named),
    /// Clear the event: waits wait again.
    Clear(Named),
    /// Print `set` or `clear`; exit 0 if set, 4 if not.
    IsSet(Named),
    /// Wait until the event is set (at once if it is); exit 4 on
    /// --timeout.
    Wait(WaitArgs),
}

#[derive(Args, Debug)]
struct Named {
    #[command(flatten)]
    conn: Conn,
    /// The event's name (the one `ferry.Event(name=...)` uses).
    name: String,
}

#[derive(Args, Debug)]
struct WaitArgs {
    #[command(flatten)]
    event: Named,
    /// Seconds to wait (0: only look); exit 4 if it was not set by then.
    #[arg(long)]
    timeout: Option<f64>,
}

/// Replies the exit code (`is-set`'s answer) or a failure.
pub(crate) fn event(a: &EventArgs) -> Result<i32, (i32, String)> {
    match &a.action {
        Action::Set(e) => e.conn.connect()?.event_set(&e.name).map_err(fail)?,
        Action::Clear(e) => e.conn.connect()?.event_clear(&e.name).map_err(fail)?,
        Action::IsSet(e) => {
            let set = e.conn.connect()?.event_is_set(&e.name).map_err(fail)?;
            println!("{}", if set { "set" } else { "clear" });
            return Ok(if set { 0 } else { TIMED_OUT });
        }
        Action::Wait(w) => {
            let e = &w.event;
            let timeout = w.timeout.map(duration);
            if !e
                .conn
                .connect()?
                .event_wait(&e.name, timeout)
                .map_err(fail)?
            {
                return Err((TIMED_OUT, format!("event {:?} was not set in time", e.name)));
            }
        }
    }
    Ok(0)
}
