//! ferry's load generator: one end-to-end workload — producers put,
//! consumers get and acknowledge, the run ends when every message is
//! acknowledged (Python's `join`) — driven the same way against ferry and,
//! with the `peers` feature, against its peers (Redis lists and streams,
//! beanstalkd, NATS JetStream). `ferry bench` is a front end on it (without
//! the peers); so is the `loadgen` binary that `bench/run.sh` calls once
//! per row.
//!
//! - `conn`: one connection to a broker, whichever it is — put a batch,
//!   get up to a batch, acknowledge.
//! - `peers`: Redis, beanstalkd and NATS JetStream, each driven the way
//!   its own users drive it (feature `peers`).
//! - `workloads`: throughput (paced or not, with put → get latency),
//!   memory per connection, memory per queued message, many queues.

mod conn;
#[cfg(feature = "peers")]
mod peers;
mod workloads;

pub use conn::{Conn, Got, Target, Token};
pub use workloads::{Endpoint, Load, Report, conns, fill, many_queues, throughput};
