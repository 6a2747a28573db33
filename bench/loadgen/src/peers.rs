//! One connection to a broker, whichever it is, with the three operations
//! of the workload: put a batch, get up to a batch (waiting at most a
//! second), acknowledge what was got.
//!
//! Each peer is driven the way its own users drive it: ferry with its
//! commands (QPUTMANY, QGET COUNT, QDONE with many ids) through
//! `ferry_client`; Redis lists with LPUSH / BRPOP (BLMPOP for batches) and
//! no acknowledgement; Redis streams with XADD / XREADGROUP / XACK;
//! beanstalkd with put / reserve-with-timeout / delete over its text
//! protocol (no maintained Rust client exists; it is a few lines); NATS
//! JetStream with `async_nats`, a work-queue stream and a durable pull
//! consumer with explicit acks.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferry_client::{AsyncClient, Message, Value};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Which broker, and how it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// ferry, at `host:port` or `unix:/path`.
    Ferry,
    /// ferry with NOACK gets (delivered and finished at once): the same
    /// contract as a Redis list's BRPOP, for the comparison with it.
    FerryNoack,
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
pub(crate) enum Token {
    /// A message id (ferry, beanstalkd).
    Id(u64),
    /// A stream entry id (Redis streams).
    Entry(String),
    /// A JetStream message (its reply subject acknowledges it).
    Nats(Box<async_nats::jetstream::Message>),
    /// Nothing to acknowledge (Redis lists).
    None,
}

/// A connection of one kind.
pub(crate) enum Conn {
    /// ferry; true for NOACK gets.
    Ferry(AsyncClient, bool),
    /// Redis, lists or streams.
    Redis(redis::aio::MultiplexedConnection, bool),
    /// beanstalkd.
    Beanstalk(Beanstalk),
    /// NATS JetStream.
    Nats(Box<Nats>),
}

const GROUP: &str = "workers";

impl Conn {
    /// Connects to `addr` (`host:port`, or `unix:/path` for ferry).
    pub(crate) async fn connect(target: Target, addr: &str) -> Result<Conn> {
        Ok(match target {
            Target::Ferry | Target::FerryNoack => {
                let url = match addr.strip_prefix("unix:") {
                    Some(path) => format!("unix://{path}"),
                    None => format!("ferry://{addr}"),
                };
                Conn::Ferry(
                    AsyncClient::connect(&url).await?,
                    target == Target::FerryNoack,
                )
            }
            Target::RedisList | Target::RedisStream => {
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                // Our blocking reads wait at most a second.
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Duration::from_secs(30));
                let con = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Conn::Redis(con, target == Target::RedisStream)
            }
            Target::Beanstalkd => Conn::Beanstalk(Beanstalk::connect(addr).await?),
            Target::NatsMemory | Target::NatsFile => Conn::Nats(Box::new(
                Nats::connect(addr, target == Target::NatsFile).await?,
            )),
        })
    }

    /// Makes `queue` ready to use (stream groups, JetStream streams and
    /// consumers); queues of the other brokers exist when first used.
    pub(crate) async fn setup(&mut self, queue: &str) -> Result<()> {
        match self {
            Conn::Redis(con, true) => {
                let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(queue)
                    .arg(GROUP)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async(con)
                    .await;
                match r {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => Ok(other?),
                }
            }
            Conn::Nats(n) => n.setup(queue).await,
            _ => Ok(()),
        }
    }

    /// Puts a batch of messages (one message: the plain put).
    pub(crate) async fn put(&mut self, queue: &str, payloads: &[Vec<u8>]) -> Result<()> {
        match self {
            Conn::Ferry(c, _) => {
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
            Conn::Redis(con, false) => {
                let mut cmd = redis::cmd("LPUSH");
                cmd.arg(queue);
                for p in payloads {
                    cmd.arg(p.as_slice());
                }
                Ok(cmd.query_async::<()>(con).await?)
            }
            Conn::Redis(con, true) => {
                let mut pipe = redis::pipe();
                for p in payloads {
                    pipe.cmd("XADD")
                        .arg(queue)
                        .arg("*")
                        .arg("d")
                        .arg(p.as_slice());
                }
                Ok(pipe.query_async::<()>(con).await?)
            }
            Conn::Beanstalk(b) => b.put(queue, payloads).await,
            Conn::Nats(n) => n.put(queue, payloads).await,
        }
    }

    /// Gets up to `max` messages, waiting at most a second for the first;
    /// an empty batch if none came.
    pub(crate) async fn get(&mut self, queue: &str, max: usize) -> Result<Vec<(Token, Vec<u8>)>> {
        match self {
            Conn::Ferry(c, noack) => {
                let count = max.to_string();
                let reply = c.call(&ferry_get(queue, &count, *noack)).await?;
                ferry_entries(reply, *noack)
            }
            Conn::Redis(con, false) => {
                let reply: redis::Value = if max == 1 {
                    redis::cmd("BRPOP")
                        .arg(queue)
                        .arg(1)
                        .query_async(con)
                        .await?
                } else {
                    redis::cmd("BLMPOP")
                        .arg(1)
                        .arg(1)
                        .arg(queue)
                        .arg("RIGHT")
                        .arg("COUNT")
                        .arg(max)
                        .query_async(con)
                        .await?
                };
                let mut out = Vec::new();
                if let redis::Value::Array(mut parts) = reply {
                    match parts.pop() {
                        // BRPOP: [key, value]; BLMPOP: [key, [values]].
                        Some(redis::Value::BulkString(p)) => out.push((Token::None, p)),
                        Some(redis::Value::Array(values)) => {
                            for v in values {
                                if let redis::Value::BulkString(p) = v {
                                    out.push((Token::None, p));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Ok(out)
            }
            Conn::Redis(con, true) => {
                let reply: redis::Value = stream_read(queue, max).query_async(con).await?;
                Ok(stream_entries(reply))
            }
            Conn::Beanstalk(b) => b.get(queue, max).await,
            Conn::Nats(n) => n.get(queue, max).await,
        }
    }

    /// Acknowledges what `get` replied.
    pub(crate) async fn ack(&mut self, queue: &str, tokens: Vec<Token>) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        match self {
            Conn::Ferry(_, true) => Ok(()),
            Conn::Ferry(c, false) => {
                let ids = ids(&tokens);
                done_reply(c.call(&ferry_done(queue, &ids)).await?, ids.len())
            }
            Conn::Redis(_, false) => Ok(()),
            Conn::Redis(con, true) => Ok(stream_ack(queue, &tokens).query_async::<()>(con).await?),
            Conn::Beanstalk(b) => b.delete(tokens).await,
            Conn::Nats(_) => {
                for t in tokens {
                    if let Token::Nats(m) = t {
                        m.ack().await.map_err(|e| anyhow!("nats ack: {e}"))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Acknowledges `tokens` and gets up to `max` more in one write (one
    /// round trip), where the protocol allows it: a consumer's loop. NATS
    /// acks are asynchronous publishes already; Redis lists have nothing
    /// to acknowledge.
    pub(crate) async fn ack_then_get(
        &mut self,
        queue: &str,
        tokens: Vec<Token>,
        max: usize,
    ) -> Result<Vec<(Token, Vec<u8>)>> {
        if tokens.is_empty() {
            return self.get(queue, max).await;
        }
        match self {
            Conn::Ferry(c, false) => {
                let (ids, count) = (ids(&tokens), max.to_string());
                let mut replies = c
                    .pipeline(&[ferry_done(queue, &ids), ferry_get(queue, &count, false)])
                    .await?
                    .into_iter();
                done_reply(replies.next().context("no QDONE reply")??, ids.len())?;
                ferry_entries(replies.next().context("no QGET reply")??, false)
            }
            Conn::Redis(con, true) => {
                let (_, reply): ((), redis::Value) = redis::pipe()
                    .add_command(stream_ack(queue, &tokens))
                    .add_command(stream_read(queue, max))
                    .query_async(con)
                    .await?;
                Ok(stream_entries(reply))
            }
            Conn::Beanstalk(b) => b.delete_then_get(queue, tokens, max).await,
            _ => {
                self.ack(queue, tokens).await?;
                self.get(queue, max).await
            }
        }
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
fn ferry_entries(reply: Value, noack: bool) -> Result<Vec<(Token, Vec<u8>)>> {
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

fn stream_read(queue: &str, max: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg("loadgen")
        .arg("COUNT")
        .arg(max)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(queue)
        .arg(">");
    cmd
}

fn stream_ack(queue: &str, tokens: &[Token]) -> redis::Cmd {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(queue).arg(GROUP);
    for t in tokens {
        if let Token::Entry(id) = t {
            cmd.arg(id);
        }
    }
    cmd
}

/// The entries of an XREADGROUP reply: `[[stream, [[id, [field, value]]...]]]`.
fn stream_entries(reply: redis::Value) -> Vec<(Token, Vec<u8>)> {
    let mut out = Vec::new();
    let redis::Value::Array(streams) = reply else {
        return out;
    };
    for s in streams {
        let redis::Value::Array(mut parts) = s else {
            continue;
        };
        let Some(redis::Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for e in entries {
            let redis::Value::Array(mut e) = e else {
                continue;
            };
            let fields = e.pop();
            let id = e.pop();
            if let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(mut fields))) =
                (id, fields)
                && let Some(redis::Value::BulkString(p)) = fields.pop()
            {
                out.push((Token::Entry(String::from_utf8_lossy(&id).into_owned()), p));
            }
        }
    }
    out
}

/// beanstalkd's text protocol: `put`, `reserve-with-timeout`, `delete`.
pub(crate) struct Beanstalk {
    io: BufReader<TcpStream>,
    /// The tube `use`d for puts and the one watched for reserves.
    using: String,
    watching: String,
}

impl Beanstalk {
    async fn connect(addr: &str) -> Result<Beanstalk> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("beanstalkd at {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Beanstalk {
            io: BufReader::new(s),
            using: "default".into(),
            watching: "default".into(),
        })
    }

    async fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.io.read_line(&mut l).await? == 0 {
            bail!("beanstalkd closed the connection");
        }
        Ok(l.trim_end().to_string())
    }

    async fn expect(&mut self, want: &str) -> Result<()> {
        let l = self.line().await?;
        if !l.starts_with(want) {
            bail!("beanstalkd: expected {want}, got {l:?}");
        }
        Ok(())
    }

    async fn put(&mut self, tube: &str, payloads: &[Vec<u8>]) -> Result<()> {
        let mut buf = Vec::new();
        let switch = self.using != tube;
        if switch {
            buf.extend_from_slice(format!("use {tube}\r\n").as_bytes());
        }
        for p in payloads {
            buf.extend_from_slice(format!("put 0 0 60 {}\r\n", p.len()).as_bytes());
            buf.extend_from_slice(p);
            buf.extend_from_slice(b"\r\n");
        }
        self.io.get_mut().write_all(&buf).await?;
        if switch {
            self.expect("USING").await?;
            self.using = tube.to_string();
        }
        for _ in payloads {
            self.expect("INSERTED").await?;
        }
        Ok(())
    }

    async fn reserved(&mut self) -> Result<Option<(Token, Vec<u8>)>> {
        let l = self.line().await?;
        if l == "TIMED_OUT" || l == "DEADLINE_SOON" {
            return Ok(None);
        }
        let mut words = l.split(' ');
        let (Some("RESERVED"), Some(id), Some(len)) = (words.next(), words.next(), words.next())
        else {
            bail!("beanstalkd: expected RESERVED, got {l:?}");
        };
        let mut body = vec![0; len.parse::<usize>()? + 2];
        self.io.read_exact(&mut body).await?;
        body.truncate(body.len() - 2);
        Ok(Some((Token::Id(id.parse()?), body)))
    }

    async fn get(&mut self, tube: &str, max: usize) -> Result<Vec<(Token, Vec<u8>)>> {
        if self.watching != tube {
            let old = std::mem::replace(&mut self.watching, tube.to_string());
            let cmd = format!("watch {tube}\r\nignore {old}\r\n");
            self.io.get_mut().write_all(cmd.as_bytes()).await?;
            self.expect("WATCHING").await?;
            self.expect("WATCHING").await?;
        }
        self.io
            .get_mut()
            .write_all(b"reserve-with-timeout 1\r\n")
            .await?;
        self.reserve_rest(max).await
    }

    /// Reads the reply of a `reserve-with-timeout 1` already sent; if it
    /// got a job, reserves up to `max - 1` more without waiting.
    async fn reserve_rest(&mut self, max: usize) -> Result<Vec<(Token, Vec<u8>)>> {
        let mut out = Vec::new();
        let Some(first) = self.reserved().await? else {
            return Ok(out);
        };
        out.push(first);
        // beanstalkd has no batch reserve: the rest of the batch is
        // pipelined reserves that do not wait.
        if max > 1 {
            let more = "reserve-with-timeout 0\r\n".repeat(max - 1);
            self.io.get_mut().write_all(more.as_bytes()).await?;
            for _ in 1..max {
                if let Some(m) = self.reserved().await? {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Deletes, then reserves, in one write.
    async fn delete_then_get(
        &mut self,
        tube: &str,
        tokens: Vec<Token>,
        max: usize,
    ) -> Result<Vec<(Token, Vec<u8>)>> {
        if self.watching != tube {
            self.delete(tokens).await?;
            return self.get(tube, max).await;
        }
        let (mut buf, n) = delete_commands(&tokens);
        buf.push_str("reserve-with-timeout 1\r\n");
        self.io.get_mut().write_all(buf.as_bytes()).await?;
        for _ in 0..n {
            self.expect("DELETED").await?;
        }
        self.reserve_rest(max).await
    }

    async fn delete(&mut self, tokens: Vec<Token>) -> Result<()> {
        let (buf, n) = delete_commands(&tokens);
        self.io.get_mut().write_all(buf.as_bytes()).await?;
        for _ in 0..n {
            self.expect("DELETED").await?;
        }
        Ok(())
    }
}

fn delete_commands(tokens: &[Token]) -> (String, usize) {
    let mut buf = String::new();
    let mut n = 0;
    for t in tokens {
        if let Token::Id(id) = t {
            buf.push_str(&format!("delete {id}\r\n"));
            n += 1;
        }
    }
    (buf, n)
}

/// NATS JetStream: a work-queue stream per queue, one durable pull
/// consumer shared by every getter, explicit acks.
pub(crate) struct Nats {
    js: async_nats::jetstream::Context,
    file: bool,
    consumer: Option<(
        String,
        async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    )>,
}

/// The JetStream stream for a queue (names cannot hold dots).
fn stream_name(queue: &str) -> String {
    queue.replace(['.', '*', '>', ' '], "_")
}

impl Nats {
    async fn connect(addr: &str, file: bool) -> Result<Nats> {
        let client = async_nats::connect(addr)
            .await
            .with_context(|| format!("nats at {addr}"))?;
        Ok(Nats {
            js: async_nats::jetstream::new(client),
            file,
            consumer: None,
        })
    }

    async fn setup(&mut self, queue: &str) -> Result<()> {
        use async_nats::jetstream::{consumer, stream};
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: stream_name(queue),
                subjects: vec![queue.to_string()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: if self.file {
                    stream::StorageType::File
                } else {
                    stream::StorageType::Memory
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("nats stream: {e}"))?;
        stream
            .get_or_create_consumer(
                GROUP,
                consumer::pull::Config {
                    durable_name: Some(GROUP.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: 1_000_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow!("nats consumer: {e}"))?;
        Ok(())
    }

    async fn put(&mut self, queue: &str, payloads: &[Vec<u8>]) -> Result<()> {
        let mut acks = Vec::with_capacity(payloads.len());
        for p in payloads {
            acks.push(
                self.js
                    .publish(queue.to_string(), p.clone().into())
                    .await
                    .map_err(|e| anyhow!("nats publish: {e}"))?,
            );
        }
        for a in acks {
            a.await.map_err(|e| anyhow!("nats publish ack: {e}"))?;
        }
        Ok(())
    }

    async fn get(&mut self, queue: &str, max: usize) -> Result<Vec<(Token, Vec<u8>)>> {
        if self.consumer.as_ref().is_none_or(|(q, _)| q != queue) {
            let stream = self
                .js
                .get_stream(stream_name(queue))
                .await
                .map_err(|e| anyhow!("nats stream: {e}"))?;
            let c = stream
                .get_consumer(GROUP)
                .await
                .map_err(|e| anyhow!("nats consumer: {e}"))?;
            self.consumer = Some((queue.to_string(), c));
        }
        let Some((_, consumer)) = &self.consumer else {
            bail!("no consumer");
        };
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| anyhow!("nats fetch: {e}"))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow!("nats message: {e}"))?;
            let payload = m.payload.to_vec();
            out.push((Token::Nats(Box::new(m)), payload));
        }
        Ok(out)
    }
}
