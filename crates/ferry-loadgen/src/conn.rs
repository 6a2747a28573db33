//! One connection to a broker, whichever it is, with the three operations
//! of the workload: put a batch, get up to a batch (waiting at most a
//! second), acknowledge what was got.
//!
//! Each broker is driven the way its own users drive it: ferry with its
//! commands (QPUTMANY, QGET COUNT, QDONE with many ids) through
//! `ferry_client`; the peers (with the `peers` feature) as `peers.rs`
//! says.

use anyhow::{Context, Result, bail};
use ferry_client::{AsyncClient, Message, Value};

#[cfg(feature = "peers")]
use crate::peers::{Beanstalk, Nats, Redis};

/// Which broker, and how it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// ferry, at `host:port` or `unix:/path`.
    Ferry,
    /// ferry with NOACK gets (delivered and finished at once): the same
    /// contract as a Redis list's BRPOP, for the comparison with it.
    FerryNoack,
    /// ferry's client on a Redis server (the `redis://` backend: ferry's
    /// semantics in Lua scripts), at `host:port`.
    FerryRedis,
    /// ferry's client on a Redis Cluster (`redis+cluster://`), at
    /// `host:port[,host:port...]` (its seed nodes).
    FerryRedisCluster,
    /// Redis lists: LPUSH / BRPOP, nothing to acknowledge.
    RedisList,
    /// Redis streams: XADD / XREADGROUP / XACK.
    RedisStream,
    /// beanstalkd: put / reserve / delete.
    Beanstalkd,
    /// NATS JetStream, memory storage.
    NatsMemory,
    /// NATS JetStream, file storage.
    NatsFile,
}

/// What acknowledges one got message.
pub enum Token {
    /// A message id (ferry, beanstalkd).
    Id(u64),
    /// A stream entry id (Redis streams).
    Entry(String),
    /// A JetStream message (its reply subject acknowledges it).
    #[cfg(feature = "peers")]
    Nats(Box<async_nats::jetstream::Message>),
    /// Nothing to acknowledge (Redis lists, ferry's NOACK gets).
    None,
}

/// A got message: what acknowledges it, and its payload.
pub type Got = (Token, Vec<u8>);

/// A connection to a broker, whichever it is.
pub struct Conn(Link);

/// A connection of one kind.
enum Link {
    /// ferry; true for NOACK gets.
    Ferry(Box<AsyncClient>, bool),
    /// Redis, lists or streams.
    #[cfg(feature = "peers")]
    Redis(Redis),
    /// beanstalkd.
    #[cfg(feature = "peers")]
    Beanstalk(Beanstalk),
    /// NATS JetStream.
    #[cfg(feature = "peers")]
    Nats(Box<Nats>),
}

impl Conn {
    /// Connects to ferry at a URL (`ferry://...`, `unix://...`).
    pub async fn ferry(url: &str, noack: bool) -> Result<Conn> {
        let client = AsyncClient::connect(url)
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        Ok(Conn(Link::Ferry(Box::new(client), noack)))
    }

    /// Connects to `addr` (`host:port`, or `unix:/path` for ferry).
    pub async fn connect(target: Target, addr: &str) -> Result<Conn> {
        match target {
            Target::Ferry | Target::FerryNoack => {
                let url = match addr.strip_prefix("unix:") {
                    Some(path) => format!("unix://{path}"),
                    None => format!("ferry://{addr}"),
                };
                Conn::ferry(&url, target == Target::FerryNoack).await
            }
            Target::FerryRedis => Conn::ferry(&format!("redis://{addr}"), false).await,
            Target::FerryRedisCluster => {
                Conn::ferry(&format!("redis+cluster://{addr}"), false).await
            }
            #[cfg(feature = "peers")]
            Target::RedisList | Target::RedisStream => Ok(Conn(Link::Redis(
                Redis::connect(addr, target == Target::RedisStream).await?,
            ))),
            #[cfg(feature = "peers")]
            Target::Beanstalkd => Ok(Conn(Link::Beanstalk(Beanstalk::connect(addr).await?))),
            #[cfg(feature = "peers")]
            Target::NatsMemory | Target::NatsFile => Ok(Conn(Link::Nats(Box::new(
                Nats::connect(addr, target == Target::NatsFile).await?,
            )))),
            #[cfg(not(feature = "peers"))]
            other => bail!("{other:?}: built without the peers feature"),
        }
    }

    /// Makes `queue` ready to use (stream groups, JetStream streams and
    /// consumers); queues of the other brokers exist when first used.
    #[cfg_attr(not(feature = "peers"), allow(unused_variables))]
    pub async fn setup(&mut self, queue: &str) -> Result<()> {
        match &mut self.0 {
            Link::Ferry(..) => Ok(()),
            #[cfg(feature = "peers")]
            Link::Redis(r) => r.setup(queue).await,
            #[cfg(feature = "peers")]
            Link::Beanstalk(_) => Ok(()),
            #[cfg(feature = "peers")]
            Link::Nats(n) => n.setup(queue).await,
        }
    }

    /// Puts a batch of messages (one message: the plain put); `single`:
    /// as pipelined single puts where the peer has a batch put.
    pub async fn put(&mut self, queue: &str, payloads: &[Vec<u8>], single: bool) -> Result<()> {
        match &mut self.0 {
            Link::Ferry(c, _) if single && payloads.len() > 1 => {
                let puts: Vec<Vec<&[u8]>> = payloads
                    .iter()
                    .map(|p| vec![&b"QPUT"[..], queue.as_bytes(), p])
                    .collect();
                for reply in c.pipeline(&puts).await? {
                    if let Value::Error { code, message } = reply? {
                        bail!("ferry: {code} {message}");
                    }
                }
                Ok(())
            }
            Link::Ferry(c, _) => {
                let reply = if let [one] = payloads {
                    c.call(&[b"QPUT", queue.as_bytes(), one]).await?
                } else {
                    let mut args: Vec<&[u8]> = vec![b"QPUTMANY", queue.as_bytes(), b"PAYLOADS"];
                    args.extend(payloads.iter().map(Vec::as_slice));
                    c.call(&args).await?
                };
                match reply {
                    Value::Error { code, message } => bail!("ferry: {code} {message}"),
                    _ => Ok(()),
                }
            }
            #[cfg(feature = "peers")]
            Link::Redis(r) => r.put(queue, payloads).await,
            #[cfg(feature = "peers")]
            Link::Beanstalk(b) => b.put(queue, payloads).await,
            #[cfg(feature = "peers")]
            Link::Nats(n) => n.put(queue, payloads).await,
        }
    }

    /// Gets up to `max` messages, waiting at most a second for the first;
    /// an empty batch if none came.
    pub async fn get(&mut self, queue: &str, max: usize) -> Result<Vec<Got>> {
        match &mut self.0 {
            Link::Ferry(c, noack) => {
                let count = max.to_string();
                let reply = c.call(&ferry_get(queue, &count, *noack)).await?;
                ferry_entries(reply, *noack)
            }
            #[cfg(feature = "peers")]
            Link::Redis(r) => r.get(queue, max).await,
            #[cfg(feature = "peers")]
            Link::Beanstalk(b) => b.get(queue, max).await,
            #[cfg(feature = "peers")]
            Link::Nats(n) => n.get(queue, max).await,
        }
    }

    /// Acknowledges what `get` replied.
    pub async fn ack(&mut self, queue: &str, tokens: Vec<Token>) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        match &mut self.0 {
            Link::Ferry(_, true) => Ok(()),
            Link::Ferry(c, false) => {
                let ids = ids(&tokens);
                done_reply(c.call(&ferry_done(queue, &ids)).await?, ids.len())
            }
            #[cfg(feature = "peers")]
            Link::Redis(r) => r.ack(queue, &tokens).await,
            #[cfg(feature = "peers")]
            Link::Beanstalk(b) => b.delete(tokens).await,
            #[cfg(feature = "peers")]
            Link::Nats(_) => crate::peers::nats_ack(tokens).await,
        }
    }

    /// Acknowledges `tokens` and gets up to `max` more in one write (one
    /// round trip), where the protocol allows it: a consumer's loop. NATS
    /// acks are asynchronous publishes already; Redis lists have nothing
    /// to acknowledge.
    pub async fn ack_then_get(
        &mut self,
        queue: &str,
        tokens: Vec<Token>,
        max: usize,
    ) -> Result<Vec<Got>> {
        if tokens.is_empty() {
            return self.get(queue, max).await;
        }
        match &mut self.0 {
            Link::Ferry(c, false) => {
                let (ids, count) = (ids(&tokens), max.to_string());
                let mut replies = c
                    .pipeline(&[ferry_done(queue, &ids), ferry_get(queue, &count, false)])
                    .await?
                    .into_iter();
                done_reply(replies.next().context("no QDONE reply")??, ids.len())?;
                ferry_entries(replies.next().context("no QGET reply")??, false)
            }
            #[cfg(feature = "peers")]
            Link::Redis(r) => r.ack_then_get(queue, &tokens, max).await,
            #[cfg(feature = "peers")]
            Link::Beanstalk(b) => b.delete_then_get(queue, tokens, max).await,
            _ => {
                self.ack(queue, tokens).await?;
                self.get(queue, max).await
            }
        }
    }

    /// Drops a queue (ferry only: the peers' queues live on in their
    /// servers, which the harness starts fresh per row) once the run's
    /// consumers have left it (at most 5 s): a get still waiting there
    /// when its connection closes would make it again by first use.
    /// The clients connected to the broker, when it says (ferry's INFO).
    pub async fn clients(&mut self) -> Option<i64> {
        match &mut self.0 {
            Link::Ferry(c, _) => match c.call(&[b"INFO", b"clients"]).await.ok()? {
                Value::Bulk(text) => std::str::from_utf8(&text)
                    .ok()?
                    .lines()
                    .find_map(|l| l.strip_prefix("connected_clients:"))?
                    .trim()
                    .parse()
                    .ok(),
                _ => None,
            },
            #[cfg(feature = "peers")]
            _ => None,
        }
    }

    /// Drops a queue once the run's other connections are gone: at most
    /// `clients` (counted before the run) remain connected, so no get the
    /// run sent can arrive after the drop and create the queue again.
    pub async fn drop_queue(&mut self, queue: &str, clients: Option<i64>) -> Result<()> {
        if let Some(before) = clients {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline
                && self.clients().await.is_some_and(|now| now > before)
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        match &mut self.0 {
            Link::Ferry(c, _) => {
                c.call(&[b"QDROP", queue.as_bytes()]).await?;
            }
            #[cfg(feature = "peers")]
            _ => {}
        }
        Ok(())
    }
}

fn ferry_get<'a>(queue: &'a str, count: &'a str, noack: bool) -> Vec<&'a [u8]> {
    let mut args: Vec<&[u8]> = vec![
        b"QGET",
        queue.as_bytes(),
        b"COUNT",
        count.as_bytes(),
        b"TIMEOUT",
        b"1000",
    ];
    if noack {
        args.push(b"NOACK");
    }
    args
}

fn ids(tokens: &[Token]) -> Vec<String> {
    tokens
        .iter()
        .filter_map(|t| match t {
            Token::Id(id) => Some(id.to_string()),
            _ => None,
        })
        .collect()
}

fn ferry_done<'a>(queue: &'a str, ids: &'a [String]) -> Vec<&'a [u8]> {
    let mut args: Vec<&[u8]> = vec![b"QDONE", queue.as_bytes()];
    args.extend(ids.iter().map(|i| i.as_bytes()));
    args
}

fn done_reply(reply: Value, want: usize) -> Result<()> {
    match reply {
        Value::Int(n) if n as usize == want => Ok(()),
        other => bail!("ferry: QDONE replied {other:?}"),
    }
}

/// A QGET reply's entries; with NOACK there is nothing to acknowledge.
fn ferry_entries(reply: Value, noack: bool) -> Result<Vec<Got>> {
    match Message::from_reply(reply) {
        Err(ferry_client::Error::Empty) => Ok(Vec::new()),
        r => Ok(r?
            .into_iter()
            .map(|m| {
                let token = if noack { Token::None } else { Token::Id(m.id) };
                (token, m.payload)
            })
            .collect()),
    }
}
