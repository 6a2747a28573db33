//! The peers ferry is measured against, each driven the way its own users
//! drive it: Redis lists with LPUSH / BRPOP (BLMPOP for batches) and no
//! acknowledgement; Redis streams with XADD / XREADGROUP / XACK;
//! beanstalkd with put / reserve-with-timeout / delete over its text
//! protocol (no maintained Rust client exists; it is a few lines); NATS
//! JetStream with `async_nats`, a work-queue stream and a durable pull
//! consumer with explicit acks.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::conn::{Got, Token};

const GROUP: &str = "workers";

/// Redis: lists, or streams with a consumer group.
pub(crate) struct Redis {
    con: redis::aio::MultiplexedConnection,
    stream: bool,
}

impl Redis {
    pub(crate) async fn connect(addr: &str, stream: bool) -> Result<Redis> {
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        // Our blocking reads wait at most a second.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Duration::from_secs(30));
        let con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Redis { con, stream })
    }

    pub(crate) async fn setup(&mut self, queue: &str) -> Result<()> {
        if !self.stream {
            return Ok(());
        }
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(queue)
            .arg(GROUP)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut self.con)
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    pub(crate) async fn put(&mut self, queue: &str, payloads: &[Vec<u8>]) -> Result<()> {
        if self.stream {
            let mut pipe = redis::pipe();
            for p in payloads {
                pipe.cmd("XADD")
                    .arg(queue)
                    .arg("*")
                    .arg("d")
                    .arg(p.as_slice());
            }
            return Ok(pipe.query_async::<()>(&mut self.con).await?);
        }
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(queue);
        for p in payloads {
            cmd.arg(p.as_slice());
        }
        Ok(cmd.query_async::<()>(&mut self.con).await?)
    }

    pub(crate) async fn get(&mut self, queue: &str, max: usize) -> Result<Vec<Got>> {
        if self.stream {
            let reply: redis::Value = stream_read(queue, max).query_async(&mut self.con).await?;
            return Ok(stream_entries(reply));
        }
        let con = &mut self.con;
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

    pub(crate) async fn ack(&mut self, queue: &str, tokens: &[Token]) -> Result<()> {
        if !self.stream {
            return Ok(());
        }
        Ok(stream_ack(queue, tokens)
            .query_async::<()>(&mut self.con)
            .await?)
    }

    /// Acknowledges and reads in one pipeline (streams; lists have nothing
    /// to acknowledge).
    pub(crate) async fn ack_then_get(
        &mut self,
        queue: &str,
        tokens: &[Token],
        max: usize,
    ) -> Result<Vec<Got>> {
        if !self.stream {
            return self.get(queue, max).await;
        }
        let (_, reply): ((), redis::Value) = redis::pipe()
            .add_command(stream_ack(queue, tokens))
            .add_command(stream_read(queue, max))
            .query_async(&mut self.con)
            .await?;
        Ok(stream_entries(reply))
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
fn stream_entries(reply: redis::Value) -> Vec<Got> {
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
    pub(crate) async fn connect(addr: &str) -> Result<Beanstalk> {
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

    pub(crate) async fn put(&mut self, tube: &str, payloads: &[Vec<u8>]) -> Result<()> {
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

    async fn reserved(&mut self) -> Result<Option<Got>> {
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

    pub(crate) async fn get(&mut self, tube: &str, max: usize) -> Result<Vec<Got>> {
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
    async fn reserve_rest(&mut self, max: usize) -> Result<Vec<Got>> {
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
    pub(crate) async fn delete_then_get(
        &mut self,
        tube: &str,
        tokens: Vec<Token>,
        max: usize,
    ) -> Result<Vec<Got>> {
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

    pub(crate) async fn delete(&mut self, tokens: Vec<Token>) -> Result<()> {
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
    pub(crate) async fn connect(addr: &str, file: bool) -> Result<Nats> {
        let client = async_nats::connect(addr)
            .await
            .with_context(|| format!("nats at {addr}"))?;
        Ok(Nats {
            js: async_nats::jetstream::new(client),
            file,
            consumer: None,
        })
    }

    pub(crate) async fn setup(&mut self, queue: &str) -> Result<()> {
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

    pub(crate) async fn put(&mut self, queue: &str, payloads: &[Vec<u8>]) -> Result<()> {
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

    pub(crate) async fn get(&mut self, queue: &str, max: usize) -> Result<Vec<Got>> {
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

/// Acknowledges JetStream messages.
pub(crate) async fn nats_ack(tokens: Vec<Token>) -> Result<()> {
    for t in tokens {
        if let Token::Nats(m) = t {
            m.ack().await.map_err(|e| anyhow!("nats ack: {e}"))?;
        }
    }
    Ok(())
}
