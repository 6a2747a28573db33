//! Keeps a process's leases and locks on Redis alive while it lives.
//!
//! One thread per process (made again in a forked child), with a runtime
//! of its own: the blocking client's runtime runs only inside its calls,
//! so it could not renew while the program works on a message. Every
//! third of the lease it renews, per holder, the leases it holds in each
//! queue it got from and the locks it holds; when a holder's last client
//! is dropped, what it holds is given back at once (without that, it
//! would come back when its lease runs out).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use super::conn::{Engine, RConn};
use super::{LOCK, QUEUE, Target, holder_key, lock_keys, move_dead_letters, queue_keys};

enum Cmd {
    Attach(Target, String),
    Detach(Target, String),
    Queue(Target, String, String),
    Lock(Target, String, String, u64),
    Unlock(Target, String, String, u64),
}

/// What one holder holds on one server.
#[derive(Default)]
struct Holding {
    clients: usize,
    queues: HashSet<String>,
    locks: HashSet<(String, u64)>,
}

static RENEWER: Mutex<Option<(u32, Sender<Cmd>)>> = Mutex::new(None);

fn send(cmd: Cmd) {
    let mut slot = RENEWER.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let alive = matches!(&*slot, Some((p, _)) if *p == pid);
    if !alive {
        let (tx, rx) = channel();
        let started = std::thread::Builder::new()
            .name("ferry-redis-renew".into())
            .spawn(move || {
                crate::leave_signals_to_the_program();
                run(rx)
            });
        if started.is_err() {
            // No thread: leases are not renewed, and come back after
            // their lease time (they are still finished in time by a
            // process that works faster than that).
            return;
        }
        *slot = Some((pid, tx));
    }
    if let Some((_, tx)) = &*slot {
        let _ = tx.send(cmd);
    }
}

pub(super) fn attach(target: &Target, holder: &str) {
    send(Cmd::Attach(target.clone(), holder.to_string()));
}

pub(super) fn detach(target: &Target, holder: &str) {
    send(Cmd::Detach(target.clone(), holder.to_string()));
}

pub(super) fn hold_queue(target: &Target, holder: &str, queue: &str) {
    send(Cmd::Queue(
        target.clone(),
        holder.to_string(),
        queue.to_string(),
    ));
}

pub(super) fn hold_lock(target: &Target, holder: &str, name: &str, token: u64) {
    send(Cmd::Lock(
        target.clone(),
        holder.to_string(),
        name.to_string(),
        token,
    ));
}

pub(super) fn drop_lock(target: &Target, holder: &str, name: &str, token: u64) {
    send(Cmd::Unlock(
        target.clone(),
        holder.to_string(),
        name.to_string(),
        token,
    ));
}

struct Renewer {
    rt: tokio::runtime::Runtime,
    holdings: HashMap<(Target, String), Holding>,
    conns: HashMap<String, RConn>,
}

fn run(rx: Receiver<Cmd>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut r = Renewer {
        rt,
        holdings: HashMap::new(),
        conns: HashMap::new(),
    };
    let mut next = Instant::now();
    loop {
        let period = r
            .holdings
            .keys()
            .map(|(t, _)| t.lease / 3)
            .min()
            .unwrap_or(Duration::from_secs(10));
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(cmd) => r.apply(cmd),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                r.renew_all();
                next = Instant::now() + period;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next {
            r.renew_all();
            next = Instant::now() + period;
        }
    }
}

impl Renewer {
    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach(t, h) => self.holdings.entry((t, h)).or_default().clients += 1,
            Cmd::Detach(t, h) => {
                let key = (t, h);
                let last = match self.holdings.get_mut(&key) {
                    Some(held) => {
                        held.clients = held.clients.saturating_sub(1);
                        held.clients == 0
                    }
                    None => false,
                };
                if last && let Some(held) = self.holdings.remove(&key) {
                    self.release(&key.0, &key.1, held);
                }
            }
            Cmd::Queue(t, h, q) => {
                self.holdings.entry((t, h)).or_default().queues.insert(q);
            }
            Cmd::Lock(t, h, name, token) => {
                self.holdings
                    .entry((t, h))
                    .or_default()
                    .locks
                    .insert((name, token));
            }
            Cmd::Unlock(t, h, name, token) => {
                if let Some(held) = self.holdings.get_mut(&(t, h)) {
                    held.locks.remove(&(name, token));
                }
            }
        }
    }

    fn conn(&mut self, t: &Target) -> Option<RConn> {
        if let Some(c) = self.conns.get(&t.url) {
            return Some(c.clone());
        }
        let engine = Engine::new(t).ok()?;
        let c = self
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), engine.connect()).await
            })
            .ok()?
            .ok()?;
        self.conns.insert(t.url.clone(), c.clone());
        Some(c)
    }

    fn renew_all(&mut self) {
        let work: Vec<((Target, String), Holding)> = self
            .holdings
            .iter()
            .map(|(key, held)| {
                (
                    key.clone(),
                    Holding {
                        clients: held.clients,
                        queues: held.queues.clone(),
                        locks: held.locks.clone(),
                    },
                )
            })
            .collect();
        for ((t, h), Holding { queues, locks, .. }) in work {
            let Some(mut c) = self.conn(&t) else { continue };
            let lease = t.lease.as_millis().to_string();
            let ok = self.rt.block_on(async {
                for q in &queues {
                    let args = [
                        b"renew".to_vec(),
                        h.clone().into_bytes(),
                        lease.clone().into_bytes(),
                    ];
                    QUEUE
                        .call::<i64>(&mut c, &queue_keys(q, &holder_key(&h)), &args)
                        .await?;
                    // Leases that ran out may have made dead letters.
                    move_dead_letters(&mut c, q).await?;
                }
                for (name, token) in &locks {
                    let args = [
                        b"renew".to_vec(),
                        token.to_string().into_bytes(),
                        lease.clone().into_bytes(),
                    ];
                    LOCK.call::<i64>(&mut c, &lock_keys(name), &args).await?;
                }
                Ok::<(), redis::RedisError>(())
            });
            if ok.is_err() {
                // Reconnect next time.
                self.conns.remove(&t.url);
            }
        }
    }

    fn release(&mut self, t: &Target, h: &str, held: Holding) {
        let Some(mut c) = self.conn(t) else { return };
        let _ = self.rt.block_on(async {
            for q in &held.queues {
                let args = [b"release".to_vec(), h.as_bytes().to_vec()];
                QUEUE
                    .call::<i64>(&mut c, &queue_keys(q, &holder_key(h)), &args)
                    .await?;
            }
            for (name, token) in &held.locks {
                let args = [b"release".to_vec(), token.to_string().into_bytes()];
                LOCK.call::<i64>(&mut c, &lock_keys(name), &args).await?;
            }
            Ok::<(), redis::RedisError>(())
        });
    }
}
