//! ferry's broker: the queue engine served over RESP with tokio.
//!
//! # Layout
//!
//! - `serve`: `ferry serve` as a program — flags, environment, TOML file,
//!   logging, runtime, exit status — shared by the `ferry` binary and
//!   `python -m ferry serve`.
//! - `config`: the broker's settings, and their validation.
//! - `server`: listeners (TCP with keepalive, Unix socket); one task per
//!   connection; graceful shutdown.
//! - `conn`: a connection as transport — read, decode every complete
//!   request, run each on this task, write all replies with one write;
//!   waits on a blocked command's behalf while watching the socket.
//! - `session`: a client's state apart from its socket: identity,
//!   protocol, what it holds, replies not yet sent.
//! - `cmd`: commands parsed into types and applied to a session, one
//!   module per family; a command that must wait hands back its state.
//! - `broker`: the registry of queues (each an engine behind its own
//!   mutex, with a timer task for delays and lease expiry), dead-letter
//!   routing, DEDUP keys, checkpoints.
//! - `counter`: counters many threads add to, sharded per thread.
//! - `payload`: what a queue holds, and how the engine weighs, orders and
//!   packs it.
//! - `locks`: the lock table (fencing tokens, FIFO waiters).
//! - `store`: the log's records, journal, replay and `ferry check`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_server::StartError> {
//! let server = ferry_server::Server::bind(ferry_server::Config::default()).await?;
//! println!("listening {}", server.bound().tcp);
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod acl;
mod barriers;
mod broker;
mod clients;
mod cmd;
mod config;
mod conn;
mod counter;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod http;
mod locks;
mod payload;
pub mod serve;
mod server;
mod session;
mod store;
mod tls;
mod view;

pub use acl::hash_password;
pub use config::{Config, Durability, LogStorage};
pub use ferry_log::{Cut, DAMAGED_DIR, Faults, Storage};
pub use server::{Bound, Server, StartError, Stopped};
pub use store::{CheckReport, MAX_PAYLOAD, QueueReport, check};

/// Registers SIGTERM and SIGINT handlers now (call it inside a runtime,
/// before announcing the address, so that a signal sent as soon as a
/// script reads the address is not lost); the future ends at the first of
/// them. For [`Server::run`].
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
