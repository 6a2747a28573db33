//! What a queue, the lock table and the server look like from outside:
//! read once, under the queue's lock, for QINFO, `/metrics` and `/api`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use ferry_core::engine::{self, Millis, Stats};
use ferry_log::histogram::Snapshot;
use serde::Serialize;

use crate::broker::{Broker, QueueCell};

/// One queue's settings and counters, as QINFO reports them.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct QueueView {
    #[serde(serialize_with = "lossy")]
    pub(crate) name: Bytes,
    pub(crate) kind: &'static str,
    pub(crate) maxsize: u64,
    pub(crate) qsize: u64,
    pub(crate) unfinished: u64,
    pub(crate) leased: u64,
    pub(crate) taken: u64,
    pub(crate) delayed: u64,
    /// Connections (or holder groups) with messages in hand.
    pub(crate) holders: u64,
    pub(crate) waiting_getters: u64,
    pub(crate) waiting_putters: u64,
    pub(crate) waiting_joiners: u64,
    pub(crate) shutdown: &'static str,
    pub(crate) paused: bool,
    /// How long ago the oldest message it holds (ready, delayed or leased)
    /// was put, in whole seconds; none when it holds none.
    pub(crate) oldest_age_seconds: Option<u64>,
    pub(crate) lease_timeout: Option<Millis>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) dead_letter: Option<String>,
    pub(crate) expire: Option<Millis>,
    #[serde(flatten, serialize_with = "stats")]
    pub(crate) stats: Stats,
}

impl QueueView {
    pub(crate) fn full(&self) -> bool {
        self.maxsize > 0 && self.qsize >= self.maxsize
    }

    /// Its lifetime counters by name, in QINFO's order.
    pub(crate) fn counters(&self) -> [(&'static str, u64); 10] {
        named(&self.stats)
    }
}

fn named(s: &Stats) -> [(&'static str, u64); 10] {
    [
        ("put", s.put),
        ("delivered", s.delivered),
        ("redelivered", s.redelivered),
        ("done", s.done),
        ("nacked", s.nacked),
        ("expired", s.expired),
        ("released", s.released),
        ("dead_lettered", s.dead_lettered),
        ("lost", s.lost),
        ("dropped", s.dropped),
    ]
}

fn lossy<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

fn stats<S: serde::Serializer>(st: &Stats, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(10))?;
    for (k, v) in named(st) {
        m.serialize_entry(k, &v)?;
    }
    m.end()
}

impl QueueCell {
    /// The queue as it is now.
    pub(crate) fn view(&self, broker: &Arc<Broker>) -> QueueView {
        let expire = self.expire();
        let name = self.name.clone();
        self.with(broker, |st, now| {
            let q = &st.q;
            let config = q.config();
            QueueView {
                name,
                kind: config.kind.name(),
                maxsize: config.maxsize,
                qsize: q.qsize(),
                unfinished: q.unfinished(),
                leased: q.leased(),
                taken: q.taken(),
                delayed: q.delayed(),
                holders: q.holders() as u64,
                waiting_getters: q.waiting_getters() as u64,
                waiting_putters: q.waiting_putters() as u64,
                waiting_joiners: q.waiting_joiners() as u64,
                shutdown: match q.shutdown_state() {
                    None => "no",
                    Some(engine::Shutdown::Graceful) => "graceful",
                    Some(engine::Shutdown::Immediate) => "immediate",
                },
                paused: config.paused,
                oldest_age_seconds: q.oldest_put().map(|at| now.saturating_sub(at) / 1000),
                lease_timeout: config.lease_timeout,
                max_attempts: config.max_attempts,
                dead_letter: config.dead_letter.clone(),
                expire,
                stats: q.stats().clone(),
            }
        })
    }
}

/// The server as INFO and `/api/server` report it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ServerView {
    pub(crate) version: &'static str,
    pub(crate) process_id: u32,
    pub(crate) uptime_seconds: u64,
    pub(crate) threads: usize,
    pub(crate) durability: String,
    pub(crate) log_records: u64,
    pub(crate) log_syncs: u64,
    pub(crate) log_bytes: u64,
    pub(crate) log_segments: usize,
    /// fsync latency (µs) and records per write; none without a log.
    #[serde(skip)]
    pub(crate) log_histograms: Option<(Snapshot, Snapshot)>,
    pub(crate) log_compactions: u64,
    pub(crate) connected_clients: usize,
    pub(crate) max_clients: usize,
    pub(crate) max_request: usize,
    /// 0: never.
    pub(crate) idle_timeout_seconds: u64,
    pub(crate) write_timeout_seconds: u64,
    pub(crate) refused_requests: u64,
    pub(crate) idle_closed: u64,
    pub(crate) slow_closed: u64,
    pub(crate) unauthenticated_closed: u64,
    pub(crate) commands_processed: u64,
    pub(crate) queued_memory: u64,
    pub(crate) max_memory: u64,
    pub(crate) queues: usize,
    pub(crate) locks: usize,
    pub(crate) lock_waiters: usize,
    pub(crate) semaphores: usize,
    pub(crate) semaphore_waiters: usize,
    pub(crate) events: usize,
    pub(crate) event_waiters: usize,
    pub(crate) conditions: usize,
    pub(crate) condition_waiters: usize,
    pub(crate) barriers: usize,
    pub(crate) barrier_waiters: usize,
}

impl Broker {
    /// The server as it is now.
    pub(crate) fn view(&self) -> ServerView {
        let (locks, lock_waiters) = self.locks.counts();
        let (semaphores, semaphore_waiters) = self.semaphores.counts();
        let (events, event_waiters, conditions, condition_waiters) = self.events.counts();
        let (barriers, barrier_waiters) = self.barriers.counts();
        let (log_records, log_syncs, log_bytes) = self.store.as_ref().map_or((0, 0, 0), |st| {
            let log = st.log();
            (log.appended(), log.syncs(), log.bytes())
        });
        ServerView {
            version: env!("CARGO_PKG_VERSION"),
            process_id: std::process::id(),
            uptime_seconds: self.uptime().as_secs(),
            threads: self.config.threads.unwrap_or(0),
            durability: format!("{:?}", self.config.durability).to_lowercase(),
            log_records,
            log_syncs,
            log_bytes,
            log_segments: self
                .store
                .as_ref()
                .and_then(|st| st.log().segment_count().ok())
                .unwrap_or(0),
            log_histograms: self.store.as_ref().map(|st| {
                let log = st.log();
                (log.fsync_latency(), log.batch_sizes())
            }),
            log_compactions: self.compactions.load(Ordering::Relaxed),
            connected_clients: self.clients.load(Ordering::Relaxed),
            max_clients: self.config.max_clients,
            max_request: self.config.max_request,
            idle_timeout_seconds: self.config.idle_timeout.map_or(0, |d| d.as_secs()),
            write_timeout_seconds: self.config.write_timeout.map_or(0, |d| d.as_secs()),
            refused_requests: self.refused_requests.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
            slow_closed: self.slow_closed.load(Ordering::Relaxed),
            unauthenticated_closed: self.unauthenticated_closed.load(Ordering::Relaxed),
            commands_processed: self.commands.get(),
            queued_memory: self.memory(),
            max_memory: self.config.max_memory,
            queues: self.queue_count(),
            locks,
            lock_waiters,
            semaphores,
            semaphore_waiters,
            events,
            event_waiters,
            conditions,
            condition_waiters,
            barriers,
            barrier_waiters,
        }
    }

    /// Every queue as it is now, by name.
    pub(crate) fn queue_views(self: &Arc<Self>) -> Vec<QueueView> {
        self.names()
            .iter()
            .filter_map(|n| self.queue(n))
            .map(|cell| cell.view(self))
            .collect()
    }
}

/// One lock, semaphore, event, condition or barrier as SYNCLIST, `/api/sync`
/// and the dashboard show it.
#[derive(Debug, Serialize)]
pub(crate) struct SyncView {
    /// lock, semaphore, event, condition or barrier.
    pub(crate) kind: &'static str,
    #[serde(serialize_with = "lossy")]
    pub(crate) name: Bytes,
    /// Permits held (a lock's holder, a semaphore's).
    pub(crate) holders: u64,
    /// Clients waiting: in line for a permit, for a set, for a notify, at
    /// a barrier.
    pub(crate) waiters: u64,
    /// In words: a lock's token, a semaphore's free permits, whether an
    /// event is set, a barrier's parties and whether it is broken.
    pub(crate) state: String,
}

impl Broker {
    /// Every lock, semaphore, event, condition and barrier in use, by kind
    /// then name.
    pub(crate) fn sync_views(&self) -> Vec<SyncView> {
        let mut v = Vec::new();
        for (kind, table) in [("lock", &self.locks), ("semaphore", &self.semaphores)] {
            v.extend(table.list().into_iter().map(|p| {
                SyncView {
                    kind,
                    state: match kind {
                        "lock" => p
                            .holders
                            .first()
                            .map_or_else(String::new, |t| format!("token {t}")),
                        _ => format!("{} of {} free", p.free, p.value),
                    },
                    holders: p.holders.len() as u64,
                    waiters: p.waiters as u64,
                    name: p.name,
                }
            }));
        }
        v.extend(self.events.list().into_iter().map(|e| SyncView {
            kind: if e.condition { "condition" } else { "event" },
            state: match (e.condition, e.set) {
                (true, _) => String::new(),
                (false, true) => "set".into(),
                (false, false) => "clear".into(),
            },
            holders: 0,
            waiters: e.waiters as u64,
            name: e.name,
        }));
        v.extend(self.barriers.list().into_iter().map(|b| SyncView {
            kind: "barrier",
            state: format!(
                "{} parties{}{}",
                b.parties,
                if b.acting { ", action running" } else { "" },
                if b.broken { ", broken" } else { "" }
            ),
            holders: 0,
            waiters: b.waiting as u64,
            name: b.name,
        }));
        v
    }
}
