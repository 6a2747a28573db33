//! `ferry check`: a data directory verified offline and described, without
//! changing it.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_log::LogError;

use super::replay::Replay;

/// What `ferry check` reports of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    /// The queue's name.
    pub name: String,
    /// fifo, lifo or priority.
    pub kind: &'static str,
    /// Its bound (0: none).
    pub maxsize: u64,
    /// Messages stored (each comes back after a restart).
    pub messages: u64,
    /// Of which were leased when the log ends (they return with one more
    /// attempt).
    pub leased: u64,
    /// Of which are delayed past now.
    pub delayed: u64,
    /// Payload bytes stored.
    pub bytes: u64,
    /// `None`, `Some(false)` graceful, `Some(true)` immediate.
    pub shutdown: Option<bool>,
}

/// What `ferry check` found in a data directory.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Segments and records read.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// The end the next start would cut: torn by a crash, or a damaged
    /// last record.
    pub cut: Option<ferry_log::Cut>,
    /// Every queue, by name.
    pub queues: Vec<QueueReport>,
}

/// Verifies a data directory offline and describes what it holds, without
/// changing it. Damage (anything but a torn end of the last segment) is an
/// error.
pub fn check(dir: &std::path::Path) -> Result<CheckReport, LogError> {
    let mut replay = Replay::default();
    let recovery = ferry_log::inspect(dir, |r| replay.apply(r))?;
    let (state, _) = replay.finish();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut queues: Vec<QueueReport> = state
        .into_iter()
        .map(|(name, q)| QueueReport {
            name: String::from_utf8_lossy(&name).into_owned(),
            kind: q.config.kind.name(),
            maxsize: q.config.maxsize,
            messages: q.msgs.len() as u64,
            leased: q.msgs.values().filter(|m| m.out).count() as u64,
            delayed: q.msgs.values().filter(|m| m.due > now).count() as u64,
            bytes: q.msgs.values().map(|m| m.data.len() as u64).sum(),
            shutdown: q.shutdown,
        })
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CheckReport {
        segments: recovery.segments,
        records: recovery.records,
        cut: recovery.cut,
        queues,
    })
}
