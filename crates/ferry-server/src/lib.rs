//! ferry's broker: the queue engine served over RESP with tokio.
//!
//! # Layout
//!
//! - `server`: listeners (TCP with keepalive, Unix socket); one task per
//!   connection; graceful shutdown.
//! - `conn`: a connection's loop — parse every complete request in the
//!   buffer, answer each on this task, write all replies with one write;
//!   blocking commands park only this task and watch the socket meanwhile.
//! - `cmd`: one function per command; argument parsing; error replies.
//! - `broker`: the registry of queues (each an engine behind its own
//!   mutex, with a timer task for delays and lease expiry), dead-letter
//!   routing, DEDUP keys.
//! - `locks`: LOCK / UNLOCK with fencing tokens.
//! - `config`: the broker's settings, and their validation.
//! - `serve`: `ferry serve` as a program — flags, environment, TOML file,
//!   logging, runtime, exit status — shared by the `ferry` binary and
//!   `python -m ferry serve`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_server::StartError> {
//! let server = ferry_server::Server::bind(ferry_server::Config::default()).await?;
//! println!("listening {}", server.bound().tcp);
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod broker;
mod cmd;
mod config;
mod conn;
mod locks;
pub mod serve;
mod server;
mod store;

pub use config::{Config, Durability, LogStorage};
pub use ferry_log::{Faults, Storage};
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
