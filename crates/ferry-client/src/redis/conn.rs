//! Connections to a single Redis or to a Redis Cluster, and the function
//! libraries ferry's operations run as.
//!
//! The `redis` crate does the cluster's work (slot map, MOVED and ASK,
//! reconnecting after a failover); its own retries are off, because it
//! would send again a script whose connection broke after it was sent —
//! a get or a put that may already have happened. What was surely not
//! run (a redirect, TRYAGAIN, CLUSTERDOWN, a refused connection) is sent
//! again here; a broken connection is the caller's to judge
//! (`aio::repeatable`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use super::Target;

/// How many times this process saw the engine move under it (a redirect,
/// a failover, a connection lost): a write acknowledged just before may
/// have been lost with a primary that was replaced (see `RedisLink`'s
/// recent dones).
pub(crate) static UPHEAVALS: AtomicU64 = AtomicU64::new(0);

/// How long an operation keeps trying while a cluster moves a slot or
/// promotes a replica (Redis's cluster-node-timeout is 15 s by default).
const SETTLE: Duration = Duration::from_secs(30);

/// What opens connections to the engine.
#[derive(Clone)]
pub(crate) enum Engine {
    One(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl Engine {
    pub(crate) fn new(target: &Target) -> RedisResult<Engine> {
        Ok(match &target.nodes {
            None => Engine::One(redis::Client::open(target.url.as_str())?),
            Some(nodes) => Engine::Cluster(
                redis::cluster::ClusterClient::builder(nodes.clone())
                    .retries(0)
                    .connection_timeout(Duration::from_secs(2))
                    .build()?,
            ),
        })
    }

    /// A pub/sub connection (on a cluster: to the first seed that answers;
    /// PUBLISH reaches every node).
    pub(crate) async fn pubsub(&self, target: &Target) -> RedisResult<redis::aio::PubSub> {
        match (self, &target.nodes) {
            (Engine::One(c), _) => c.get_async_pubsub().await,
            (Engine::Cluster(_), Some(nodes)) => {
                let mut last = None;
                for node in nodes {
                    match redis::Client::open(node.as_str())?.get_async_pubsub().await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last
                    .unwrap_or_else(|| RedisError::from((ErrorKind::ClientError, "no seed node"))))
            }
            (Engine::Cluster(_), None) => Err(RedisError::from((
                ErrorKind::ClientError,
                "a cluster without seed nodes",
            ))),
        }
    }

    pub(crate) async fn connect(&self) -> RedisResult<RConn> {
        Ok(match self {
            Engine::One(c) => RConn::One(c.get_multiplexed_async_connection().await?),
            Engine::Cluster(c) => RConn::Cluster(c.get_async_connection().await?),
        })
    }
}

/// A connection (multiplexed: many commands in flight) to the engine.
#[derive(Clone)]
pub(crate) enum RConn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RConn::One(c) => c.req_packed_command(cmd),
            RConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RConn::One(c) => c.req_packed_commands(cmd, offset, count),
            RConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RConn::One(c) => c.get_db(),
            RConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error says the command was not run, so that sending it
/// again is safe whatever it does.
fn not_run(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Moved
            | ErrorKind::Ask
            | ErrorKind::TryAgain
            | ErrorKind::ClusterDown
            | ErrorKind::MasterDown
            | ErrorKind::BusyLoadingError
            | ErrorKind::ClusterConnectionNotFound
    ) || e.is_connection_refusal()
        // A blocked command on a primary that became a replica.
        || e.code() == Some("UNBLOCKED")
}

impl RConn {
    /// Runs `cmd`, sent again while the engine says it was not run (a
    /// cluster settling), for at most [`SETTLE`].
    pub(crate) async fn run<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        let give_up = tokio::time::Instant::now() + SETTLE;
        let mut pause = Duration::from_millis(20);
        loop {
            match cmd.query_async(self).await {
                Err(e) if not_run(&e) && tokio::time::Instant::now() + pause < give_up => {
                    UPHEAVALS.fetch_add(1, Ordering::Relaxed);
                    // A redirect's slot map is refreshed in the background.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    if not_run(&e) || e.is_io_error() || e.is_connection_dropped() {
                        UPHEAVALS.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }

    /// WAIT (at most `ms`) for `n` replicas of the primary that holds
    /// `key`, after this connection's changes there.
    pub(crate) async fn wait_replicas(&mut self, key: &[u8], n: u32, ms: u64) -> RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(n).arg(ms);
        match self {
            RConn::One(c) => wait.query_async(c).await,
            RConn::Cluster(c) => {
                let route = Route::new(slot(key), SlotAddr::Master);
                let v = c
                    .route_command(
                        &wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                i64::from_redis_value(&v)
            }
        }
    }

    /// The server's INFO section (on a cluster: one node's).
    pub(crate) async fn info(&mut self, section: &str) -> RedisResult<String> {
        let mut info = redis::cmd("INFO");
        info.arg(section);
        match self {
            RConn::One(c) => info.query_async(c).await,
            RConn::Cluster(c) => {
                let v = c
                    .route_command(
                        &info,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                String::from_redis_value(&v)
            }
        }
    }

    /// Every key that matches `pattern` (SCAN, on every primary).
    pub(crate) async fn scan(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        let nodes = match self {
            RConn::One(_) => vec![None],
            RConn::Cluster(c) => {
                let v = c
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES"),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                primaries(&String::from_redis_value(&v)?)
                    .into_iter()
                    .map(Some)
                    .collect()
            }
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let v = match (&mut *self, &node) {
                    (RConn::Cluster(c), Some((host, port))) => {
                        c.route_command(
                            &scan,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            }),
                        )
                        .await?
                    }
                    (conn, _) => scan.query_async(conn).await?,
                };
                let (next, batch): (u64, Vec<String>) = FromRedisValue::from_redis_value(&v)?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// The live primaries in CLUSTER NODES's answer.
fn primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_id, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let addr = addr.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// The cluster slot of a key: CRC16 of its hash tag (or of the key).
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// A function library of ferry's (`queue.lua`, `lock.lua`), named with
/// a hash of its code so that clients of two ferry versions can share a
/// server, each calling its own.
pub(crate) struct Lib {
    name: String,
    code: String,
}

impl Lib {
    /// `base` is the name the file gives its library and its function.
    pub(crate) fn new(base: &str, code: &str) -> Lib {
        let hash = code.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let name = format!("{base}_{:012x}", hash >> 16);
        let code = code
            .replacen(&format!("name={base}\n"), &format!("name={name}\n"), 1)
            .replacen(
                &format!("register_function('{base}'"),
                &format!("register_function('{name}'"),
                1,
            );
        Lib { name, code }
    }

    /// FCALL: the library is loaded (on every primary) if the server
    /// does not have it yet. The waiters the call mailed are woken (the
    /// scripts reply `["WOKE", reply, list...]`, see queue.lua).
    pub(crate) async fn call<T: FromRedisValue>(
        &self,
        conn: &mut RConn,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> RedisResult<T> {
        let v = self.fcall(conn, keys, args).await?;
        let v = match v {
            Value::Array(mut a)
                if a.len() >= 2 && matches!(&a[0], Value::BulkString(w) if w == b"WOKE") =>
            {
                let lists = a.split_off(2);
                for list in lists {
                    if let Value::BulkString(list) = list {
                        wake(conn, &list).await;
                    }
                }
                a.swap_remove(1)
            }
            v => v,
        };
        T::from_redis_value(&v)
    }

    async fn fcall(
        &self,
        conn: &mut RConn,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> RedisResult<Value> {
        let mut fcall = redis::cmd("FCALL");
        fcall.arg(&self.name).arg(keys.len());
        for k in keys {
            fcall.arg(k.as_slice());
        }
        for a in args {
            fcall.arg(a.as_slice());
        }
        match conn.run(&fcall).await {
            Err(e) if missing_function(&e) => {
                conn.run::<Value>(
                    redis::cmd("FUNCTION")
                        .arg("LOAD")
                        .arg("REPLACE")
                        .arg(&self.code),
                )
                .await?;
                conn.run(&fcall).await
            }
            other => other,
        }
    }
}

/// Wakes a waiter blocked on `list` (its mail is in the script's keys:
/// a wake-up lost here costs it a nap, never the mail).
pub(crate) async fn wake(conn: &mut RConn, list: &[u8]) {
    let mut p = redis::pipe();
    p.cmd("RPUSH").arg(list).arg("1").ignore();
    p.cmd("PEXPIRE").arg(list).arg(60_000).ignore();
    let _: RedisResult<()> = p.query_async(conn).await;
}

fn missing_function(e: &RedisError) -> bool {
    // The reply's text (its detail is part of it).
    e.to_string().contains("Function not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_is_renamed_where_it_names_itself() {
        let lib = Lib::new("ferry_queue", super::super::QUEUE_CODE);
        assert!(lib.code.starts_with(&format!("#!lua name={}\n", lib.name)));
        assert!(
            lib.code
                .contains(&format!("register_function('{}'", lib.name))
        );
        let lock = Lib::new("ferry_lock", include_str!("lock.lua"));
        assert!(
            lock.code
                .contains(&format!("register_function('{}'", lock.name))
        );
        assert_ne!(lib.name, lock.name);
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Redis's own examples (CLUSTER KEYSLOT).
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"ferry:{q}:m"), slot(b"q"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(slot(b"ferry:{a}:m"), slot(b"ferry:{b}:m"));
    }

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:7002@17002 slave a 0 0 1 connected\n\
                     c 127.0.0.1:7003@17003 master,fail - 0 0 2 disconnected\n\
                     d 127.0.0.1:7004@17004 master - 0 0 3 connected 5461-10922\n";
        assert_eq!(
            primaries(nodes),
            vec![("127.0.0.1".into(), 7001), ("127.0.0.1".into(), 7004)]
        );
    }
}
