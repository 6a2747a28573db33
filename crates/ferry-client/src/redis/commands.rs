//! ferry's commands on Redis: each read as the broker reads it and
//! answered with the scripts' operations (queue.lua, lock.lua).

use std::time::Duration;

use ferry_proto::Value;

pub(super) use crate::request::{Args, unknown, wait_option};
use crate::request::{Get, Put};

use super::renew::Grant;
use super::wait::{Kind, Resends, Waiting, get_reply};
use super::*;
use crate::Error;

impl RedisLink {
    /// Answers one ferry command; a command that waits gives up when
    /// `cancel` resolves, as a timeout would (nothing it got is lost: every
    /// try is one whole script).
    pub(crate) async fn call_cancellable(
        &mut self,
        args: &[&[u8]],
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let (cmd, mut a) = Args::command(args)?;
        let rest = &args[1..];
        self.redo_dones_after_upheaval().await;
        let done = |v: Value| Ok((v, false));
        match cmd.as_str() {
            "PING" => done(match a.next() {
                Some(m) => Value::Bulk(m.to_vec().into()),
                None => Value::Simple("PONG".into()),
            }),
            "ECHO" => done(Value::Bulk(a.require("message")?.to_vec().into())),
            "SELECT" | "AUTH" => done(Value::Simple("OK".into())),
            "CLIENT" => {
                let sub = a.require("subcommand")?;
                if is(sub, "ID") {
                    done(Value::Int(self.id as i64))
                } else if is(sub, "HOLDER") {
                    let token = a.require("token")?;
                    done(self.set_holder(token)?)
                } else if is(sub, "UNBLOCK") {
                    // Waits here end from the waiting side (cancel).
                    done(Value::Int(0))
                } else {
                    done(Value::Simple("OK".into()))
                }
            }
            "CONFIG" => done(Value::Array(vec![
                Value::Bulk(b"proto-max-bulk-len".to_vec().into()),
                Value::Bulk(
                    self.max_payload
                        .unwrap_or(512 << 20)
                        .to_string()
                        .into_bytes()
                        .into(),
                ),
            ])),
            "INFO" => {
                let info = self.conn.info("server").await.map_err(io)?;
                let queues = self.scan("ferry:{*}:m").await?.len();
                let primitives = self.primitives_info().await?;
                done(Value::Bulk(
                    format!(
                        "# ferry\r\nbackend:{}\r\nqueues:{queues}\r\n{primitives}{info}",
                        if self.target.nodes.is_some() {
                            "redis-cluster"
                        } else {
                            "redis"
                        }
                    )
                    .into_bytes()
                    .into(),
                ))
            }
            "QCREATE" | "QCONFIG" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut sargs: Vec<Vec<u8>> = if cmd == "QCREATE" {
                    vec![b"create".to_vec(), b"1".to_vec(), q.as_bytes().to_vec()]
                } else {
                    vec![b"config".to_vec()]
                };
                for (field, value) in crate::request::settings(&cmd, &mut a)? {
                    sargs.push(field.as_bytes().to_vec());
                    sargs.push(value);
                }
                let keys = queue_keys(&q, b"-");
                done(self.change(&QUEUE, &keys, &sargs).await?)
            }
            "QPUT" | "QPUTMANY" => self.put(&cmd, &mut a, cancel).await,
            "QGET" => self.get(&mut a, cancel).await,
            "QDONE" => {
                let (keys, sargs) = self.done_call(rest)?;
                let mut resends = Resends::new();
                loop {
                    let v = self.change(&QUEUE, &keys, &sargs).await?;
                    if self.settled(&keys[0]).await {
                        self.remember_done(rest);
                        return done(v);
                    }
                    // Its primary turned replica: the done may be lost
                    // with it (and the message stay leased to a holder
                    // that lives on). Sent again, it finishes what is
                    // still held, and nothing twice.
                    resends.pause().await?;
                }
            }
            "QNACK" | "QTOUCH" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let id = a.number("id")?;
                let mut ms = if cmd == "QTOUCH" {
                    self.target.lease.as_millis() as u64
                } else {
                    0
                };
                let mut unstarted = false;
                while let Some(opt) = a.next() {
                    if (is(opt, "DELAY") && cmd == "QNACK") || (is(opt, "LEASE") && cmd == "QTOUCH")
                    {
                        ms = a.number("ms")?;
                    } else if is(opt, "UNSTARTED") && cmd == "QNACK" {
                        unstarted = true;
                    } else {
                        return Err(unknown(opt, &cmd));
                    }
                }
                if unstarted && ms > 0 {
                    return Err(server("ERR", "QNACK takes UNSTARTED or DELAY, not both"));
                }
                let op: &[u8] = if cmd == "QNACK" { b"nack" } else { b"touch" };
                let mut sargs = vec![
                    op.to_vec(),
                    self.holder.as_bytes().to_vec(),
                    id.to_string().into_bytes(),
                    ms.to_string().into_bytes(),
                ];
                if unstarted {
                    sargs.push(b"unstarted".to_vec());
                }
                let keys = queue_keys(&q, b"-");
                let v = self.change(&QUEUE, &keys, &sargs).await?;
                if cmd == "QNACK" {
                    move_dead_letters(&mut self.conn, &q).await.map_err(io)?;
                }
                done(v)
            }
            "QJOIN" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut wait = None;
                while let Some(opt) = a.next() {
                    if !wait_option(opt, &mut a, &mut wait)? {
                        return Err(unknown(opt, &cmd));
                    }
                }
                let keys = queue_keys(&q, b"-");
                let w = Waiting::on_queue(Kind::Join, q, keys, vec![b"join".to_vec()]);
                self.wait(w, wait, cancel).await
            }
            "QLEN" | "QINFO" | "QPURGE" | "QDROP" | "QREOPEN" | "QSHUTDOWN" | "QPEEK" => {
                let q = check_name(a.require("queue")?)?.to_string();
                let mut sargs: Vec<Vec<u8>> = vec![match cmd.as_str() {
                    "QLEN" => b"len".to_vec(),
                    "QINFO" => b"info".to_vec(),
                    "QPURGE" => b"purge".to_vec(),
                    "QDROP" => b"drop".to_vec(),
                    "QREOPEN" => b"reopen".to_vec(),
                    "QPEEK" => b"peek".to_vec(),
                    _ => b"shutdown".to_vec(),
                }];
                match cmd.as_str() {
                    "QSHUTDOWN" => {
                        let immediate = match a.next() {
                            None => false,
                            Some(w) if is(w, "IMMEDIATE") => true,
                            Some(w) => return Err(unknown(w, &cmd)),
                        };
                        sargs.push(if immediate {
                            b"1".to_vec()
                        } else {
                            b"0".to_vec()
                        });
                    }
                    "QPEEK" => {
                        let mut count = 1;
                        while let Some(opt) = a.next() {
                            if is(opt, "COUNT") {
                                count = a.number("COUNT")?;
                            } else {
                                return Err(unknown(opt, &cmd));
                            }
                        }
                        sargs.push(count.to_string().into_bytes());
                        sargs.push(q.as_bytes().to_vec());
                    }
                    "QINFO" => sargs.push(q.as_bytes().to_vec()),
                    _ => {}
                }
                let keys = queue_keys(&q, b"-");
                let v = self.change(&QUEUE, &keys, &sargs).await?;
                done(match (cmd.as_str(), v) {
                    ("QINFO", Value::Array(flat)) => info_map(flat),
                    (_, v) => v,
                })
            }
            "QLIST" => {
                let mut names: Vec<String> = self
                    .scan("ferry:{*}:m")
                    .await?
                    .iter()
                    .filter_map(|k| {
                        k.strip_prefix("ferry:{")?
                            .strip_suffix("}:m")
                            .map(str::to_string)
                    })
                    .collect();
                names.sort();
                done(Value::Array(
                    names
                        .into_iter()
                        .map(|n| Value::Bulk(n.into_bytes().into()))
                        .collect(),
                ))
            }
            "LOCK" => {
                let name = check_name(a.require("lock name")?)?.to_string();
                let mut ttl = None;
                let mut wait = None;
                while let Some(opt) = a.next() {
                    if is(opt, "TTL") {
                        ttl = Some(a.number("TTL")?).filter(|&t| t > 0);
                    } else if !wait_option(opt, &mut a, &mut wait)? {
                        return Err(unknown(opt, &cmd));
                    }
                }
                let keys = lock_keys(&name);
                let bound = ttl.is_none();
                let ttl = ttl.unwrap_or(self.target.lease.as_millis() as u64);
                let w = Waiting {
                    kind: Kind::Lock,
                    script: &LOCK,
                    inbox: format!("ferry:lock:{{{name}}}:w:").into_bytes(),
                    queue: String::new(),
                    resendable: false,
                    keys,
                    args: vec![
                        b"acquire".to_vec(),
                        self.holder.as_bytes().to_vec(),
                        ttl.to_string().into_bytes(),
                    ],
                };
                let (v, cancelled) = self.wait(w, wait, cancel).await?;
                if bound && let Value::Int(token) = v {
                    renew::hold(&self.target, &self.holder, Grant::Lock, &name, token as u64);
                }
                Ok((v, cancelled))
            }
            "LOCKED" => {
                let name = check_name(a.require("lock name")?)?.to_string();
                let token = a.number("token")?;
                let sargs = vec![b"held".to_vec(), token.to_string().into_bytes()];
                done(self.change(&LOCK, &lock_keys(&name), &sargs).await?)
            }
            "UNLOCK" => {
                let name = check_name(a.require("lock name")?)?.to_string();
                let token = a.number("token")?;
                let keys = lock_keys(&name);
                renew::drop(&self.target, &self.holder, Grant::Lock, &name, token);
                let sargs = vec![b"release".to_vec(), token.to_string().into_bytes()];
                done(self.change(&LOCK, &keys, &sargs).await?)
            }
            "SYNCLIST" => done(self.sync_list().await?),
            c if super::sync::COMMANDS.contains(&c) => self.sync_call(c, &mut a, cancel).await,
            _ => Err(server(
                "ERR",
                &format!("unknown command '{cmd}' on the Redis backend"),
            )),
        }
    }

    /// Every key matching `pattern` (SCAN; braces are not special in
    /// its glob).
    pub(super) async fn scan(&mut self, pattern: &str) -> Result<Vec<String>, Error> {
        self.conn.scan(pattern).await.map_err(io)
    }

    async fn put(
        &mut self,
        cmd: &str,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let Put {
            queue: q,
            payloads,
            key,
            keytype,
            delay_ms: delay,
            wait,
            dedup,
            dedup_ms,
        } = Put::parse(cmd, a)?;
        let own = match &dedup {
            Some(k) => {
                let mut o = b"dd:".to_vec();
                o.extend_from_slice(k);
                o
            }
            None => b"-".to_vec(),
        };
        let keys = queue_keys(&q, &own);
        let mut args = vec![
            b"put".to_vec(),
            key,
            keytype,
            delay.to_string().into_bytes(),
            if dedup.is_some() {
                dedup_ms.to_string().into_bytes()
            } else {
                b"0".to_vec()
            },
        ];
        args.extend(payloads);
        let mut w = Waiting::on_queue(Kind::Put, q, keys, args);
        w.resendable = dedup.is_some();
        let (v, cancelled) = self.wait(w, wait, cancel).await?;
        // QPUT replies one id; QPUTMANY the array.
        let v = match (cmd, v) {
            ("QPUT", Value::Array(mut ids)) if ids.len() == 1 => ids.remove(0),
            (_, v) => v,
        };
        Ok((v, cancelled))
    }

    async fn get(
        &mut self,
        a: &mut Args<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        let Get {
            mut queues,
            count,
            mode,
            lease_ms: lease,
            wait,
        } = Get::parse(a, self.target.lease)?;
        if queues.len() > 1 {
            return self.get_any(queues, count, mode, lease, wait, cancel).await;
        }
        let q = queues.remove(0);
        // Renewed while it holds or waits here: its heartbeat.
        renew::hold_queue(&self.target, &self.holder, &q);
        let keys = queue_keys(&q, b"-");
        let args = vec![
            b"get".to_vec(),
            count.to_string().into_bytes(),
            mode.as_bytes().to_vec(),
            self.holder.as_bytes().to_vec(),
            lease.to_string().into_bytes(),
            q.as_bytes().to_vec(),
            self.heartbeat(),
        ];
        let w = Waiting::on_queue(Kind::Get, q, keys, args);
        self.wait(w, wait, cancel).await
    }

    /// QGET a OR b ...: each queue in turn, first to last. To wait it
    /// watches every queue (not in their lines: it could be handed two
    /// messages) and sleeps until one publishes a wake-up (something became
    /// ready, or a shutdown), until time alone may change something, or
    /// until its wait ends; then it tries again.
    async fn get_any(
        &mut self,
        queues: Vec<String>,
        count: u64,
        mode: &str,
        lease: u64,
        wait: Option<Duration>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(Value, bool), Error> {
        use futures_util::StreamExt;
        let deadline = wait.map(|w| Instant::now() + w);
        tokio::pin!(cancel);
        let mut cancelled = false;
        let waiter = self.waiter();
        let mut sub: Option<redis::aio::PubSub> = None;
        let result = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let may_wait = !cancelled && left != Some(Duration::ZERO);
            let nap = left
                .unwrap_or(Duration::from_secs(10))
                .min(Duration::from_secs(10));
            // Subscribed and watching before the tries: a put between a try
            // and the sleep still wakes it.
            let mut hint = u64::MAX;
            if may_wait {
                if sub.is_none() {
                    let mut p = self.engine.pubsub(&self.target).await.map_err(io)?;
                    p.subscribe(format!("ferry:wake:{}", String::from_utf8_lossy(&waiter)))
                        .await
                        .map_err(io)?;
                    sub = Some(p);
                }
                for q in &queues {
                    let args = [
                        b"watch".to_vec(),
                        waiter.clone(),
                        nap.as_millis().to_string().into_bytes(),
                    ];
                    if let redis::Value::Int(ms) =
                        self.script(&QUEUE, &queue_keys(q, b"-"), &args).await?
                    {
                        hint = hint.min(ms.max(1) as u64);
                    }
                }
            }
            let mut shut = 0;
            let mut got = None;
            for q in &queues {
                renew::hold_queue(&self.target, &self.holder, q);
                let keys = queue_keys(q, b"-");
                let args = vec![
                    b"get".to_vec(),
                    Vec::new(),
                    b"0".to_vec(),
                    count.to_string().into_bytes(),
                    mode.as_bytes().to_vec(),
                    self.holder.as_bytes().to_vec(),
                    lease.to_string().into_bytes(),
                    q.as_bytes().to_vec(),
                    self.heartbeat(),
                ];
                match self
                    .script(&QUEUE, &keys, &args)
                    .await
                    .and_then(|v| get_reply(q, v))
                {
                    Ok(Value::Nil) => {}
                    Err(Error::ShutDown) => shut += 1,
                    other => {
                        got = Some(other);
                        break;
                    }
                }
            }
            if let Some(r) = got {
                break r.map(|v| (v, cancelled));
            }
            if shut == queues.len() {
                break Err(Error::ShutDown);
            }
            let Some(p) = sub.as_mut().filter(|_| may_wait) else {
                break Ok((Value::Nil, cancelled));
            };
            let sleep = nap.min(Duration::from_millis(hint));
            let mut wakes = p.on_message();
            tokio::select! {
                _ = wakes.next() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = &mut cancel, if !cancelled => cancelled = true,
            }
        };
        if sub.is_some() {
            for q in &queues {
                let args = [b"unwatch".to_vec(), waiter.clone()];
                let _ = self.script(&QUEUE, &queue_keys(q, b"-"), &args).await;
            }
        }
        result
    }

    /// How long this process's holders live unrenewed (`?lease`).
    fn heartbeat(&self) -> Vec<u8> {
        self.target.lease.as_millis().to_string().into_bytes()
    }
}

/// QINFO's flat array as the broker's map.
fn info_map(flat: Vec<Value>) -> Value {
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let v = match (&k, v) {
            (Value::Bulk(k), Value::Int(n)) if &k[..] == b"full" || &k[..] == b"empty" => {
                Value::Bool(n != 0)
            }
            (_, v) => v,
        };
        pairs.push((k, v));
    }
    Value::Map(pairs)
}
