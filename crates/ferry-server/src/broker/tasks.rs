//! The broker's background tasks: log compaction, the idle-queue
//! sweeper, the disk watcher, and each queue's timer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

/// Compacts the log whenever it grows past `checkpoint_bytes` and past
/// twice what the last compaction left, so that a large live backlog is not
/// rewritten over and over.
pub(super) async fn compactor(broker: Arc<Broker>) {
    let Some(store) = broker.store.clone() else {
        return;
    };
    let mut floor = 0u64;
    let mut waiting = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bytes = store.log().bytes();
        if bytes < broker.config.checkpoint_bytes || bytes < 2 * floor {
            continue;
        }
        // A snapshot needs room for every live message: on a disk that
        // cannot hold it, compaction waits for consumers to drain (it would
        // fill the disk and stop the log, freeing nothing).
        let live = broker.memory();
        let room = store.log().room();
        if room < live + live / 4 + (1 << 20) {
            if !waiting {
                tracing::warn!(
                    room,
                    live,
                    "log compaction waits: the disk has no room for a snapshot of the live messages"
                );
                waiting = true;
            }
            continue;
        }
        waiting = false;
        match broker.checkpoint().await {
            Ok(freed) => {
                broker.compactions.fetch_add(1, Ordering::Relaxed);
                floor = store.log().bytes();
                tracing::info!(freed, kept = floor, "log compacted");
            }
            Err(e) => {
                tracing::error!(error = %e, "log compaction failed");
                return;
            }
        }
    }
}

/// Drops the queues with an idle expiry that nobody used for that long,
/// nobody waits in, and nobody holds messages of: the leftovers of
/// programs that ended without cleaning up (a private queue whose program
/// was killed). And lets go of DEDUP keys whose window ended, in queues
/// no put comes to any more. Looks once a second.
pub(super) async fn idle_sweeper(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = broker.now();
        let cells: Vec<Arc<QueueCell>> = broker.queues.read().values().cloned().collect();
        for cell in cells {
            if cell.lock().dedup.due(now) {
                cell.with(&broker, |st, now| st.dedup.sweep(now));
            }
        }
        let due: Vec<Arc<QueueCell>> = broker
            .queues
            .read()
            .values()
            .filter(|c| {
                c.expire()
                    .is_some_and(|e| now.saturating_sub(c.last_used.load(Ordering::Relaxed)) >= e)
            })
            .cloned()
            .collect();
        for cell in due {
            let idle = |st: &QueueState| {
                let q = &st.q;
                q.waiting_getters() + q.waiting_putters() + q.waiting_joiners() == 0
                    && q.leased() + q.taken() == 0
                    && (!cell.expire_if_empty() || q.unfinished() == 0)
            };
            if broker.drop_if_idle(&cell, idle) {
                tracing::info!(queue = %String::from_utf8_lossy(&cell.name), "dropped a queue nobody used within its EXPIRE");
            }
        }
    }
}

/// Twice a second: lets the log look after its disk (its reserve, and a
/// segment it could not preallocate), then re-measures free space.
pub(super) async fn disk_watcher(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(store) = broker.store.clone() {
            // It may fallocate: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || store.log().tend_space()).await;
        }
        broker.check_disk();
    }
}

/// Lets time pass for one queue: sleeps until its next deadline (or until
/// an operation arms an earlier one), then ticks the engine.
pub(super) async fn timer(broker: Arc<Broker>, cell: Arc<QueueCell>) {
    loop {
        let deadline = {
            let st = cell.lock();
            if st.dropped {
                return;
            }
            let d = st.q.next_deadline();
            cell.armed.store(d.unwrap_or(u64::MAX), Ordering::Release);
            d
        };
        match deadline {
            None => cell.timer.notified().await,
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(broker.instant_at(d)) => {}
                    _ = cell.timer.notified() => {}
                }
            }
        }
        cell.with(&broker, |st, now| st.q.tick(now));
    }
}
