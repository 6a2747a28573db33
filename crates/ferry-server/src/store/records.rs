//! The log's record format: how each durable change is written, and the
//! reader replay takes records apart with. One place for the format.
//!
//! Records (little-endian; a queue name is a u8 length and its bytes):
//!
//! | tag | record | fields |
//! |---|---|---|
//! | 1 | Put | queue, id u64, attempts u32, due (Unix ms, 0: none) u64, key (u16 length + bytes), payload (the rest) |
//! | 2 | Finish | queue, id u64 |
//! | 3 | Return | queue, id u64, attempts u32 |
//! | 4 | Lease | queue, id u64 |
//! | 5 | Settings | queue, explicit u8, kind u8, maxsize u64, lease i64, max_attempts i64, dead-letter queue, idle expiry ms i64 (absent in older logs: none) |
//! | 6 | Shutdown | queue, immediate u8 |
//! | 7 | Drop | queue |
//! | 8 | Checkpoint | (empty queue name) — marks the end of a snapshot |
//! | 9 | Reset | queue — forget everything before: a snapshot follows |
//! | 10 | NextId | queue, next id u64 |
//! | 11 | SnapshotEnd | queue — the snapshot since its Reset is complete |
//! | 12 | SnapshotAbort | queue — the snapshot since its Reset was cut by a crash; forget it |
//! | 13 | Dedup | queue, id u64, until (Unix ms) u64, key (the rest) |
//! | 14 | FinishMany | queue, id u64 × n (n ≥ 2): one operation's finishes — a QDONE of many ids, a QGET COUNT with NOACK or TAKE |
//! | 16 | Reopen | queue — a shutdown undone |
//! | 17 | KeyType | queue, key type (the rest) — the type of the order keys of the messages the queue holds |
//! | 15 | PutMany | queue, then n ≥ 2 × (id u64, attempts u32, due u64, key (u16 length + bytes), payload (u32 length + bytes)): one operation's puts (QPUTMANY, a snapshot), at most ~64 kB a record unless one message is larger |

use bytes::{Buf, Bytes};
use ferry_core::engine::{self, Kind};

pub(crate) const PUT: u8 = 1;
pub(crate) const FINISH: u8 = 2;
pub(crate) const RETURN: u8 = 3;
pub(crate) const LEASE: u8 = 4;
pub(crate) const SETTINGS: u8 = 5;
pub(crate) const SHUTDOWN: u8 = 6;
pub(crate) const DROP: u8 = 7;
pub(crate) const CHECKPOINT: u8 = 8;
pub(crate) const RESET: u8 = 9;
pub(crate) const NEXT_ID: u8 = 10;
pub(crate) const SNAPSHOT_END: u8 = 11;
pub(crate) const SNAPSHOT_ABORT: u8 = 12;
pub(crate) const DEDUP: u8 = 13;
pub(crate) const FINISH_MANY: u8 = 14;
pub(crate) const PUT_MANY: u8 = 15;
pub(crate) const REOPEN: u8 = 16;
pub(crate) const KEYTYPE: u8 = 17;

/// The longest priority key a put may carry: its length is logged in a
/// u16. Longer keys are refused, never cut (a cut key would order the
/// message differently after a restart).
pub(crate) const MAX_KEY: usize = u16::MAX as usize;

/// The largest payload the broker accepts at most (`--max-payload` is
/// checked against it at start): one log record must hold a message whole,
/// with its key, queue name and fields.
pub const MAX_PAYLOAD: usize = ferry_log::MAX_RECORD - (1 << 20);
const _: () = assert!(MAX_KEY + 1024 < 1 << 20);

/// A record's tag and queue: how every record begins.
pub(crate) fn head(b: &mut Vec<u8>, tag: u8, queue: &[u8]) {
    b.push(tag);
    name(b, queue);
}

fn name(b: &mut Vec<u8>, name: &[u8]) {
    // Queue names are at most 200 bytes (checked before any queue exists).
    let len = name.len().min(255);
    b.push(len as u8);
    b.extend_from_slice(&name[..len]);
}

/// A put's id, attempts, due time (Unix ms, 0: none) and key.
pub(crate) fn put_head(b: &mut Vec<u8>, id: u64, attempts: u32, due: u64, key: &[u8]) {
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&attempts.to_le_bytes());
    b.extend_from_slice(&due.to_le_bytes());
    // Keys over MAX_KEY are refused before they reach a queue.
    let klen = u16::try_from(key.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&klen.to_le_bytes());
    b.extend_from_slice(&key[..usize::from(klen)]);
}

/// A record of a queue and one id (Finish, Lease), or one id and an
/// attempt count (Return).
pub(crate) fn id(b: &mut Vec<u8>, tag: u8, queue: &[u8], id: u64, attempts: Option<u32>) {
    head(b, tag, queue);
    b.extend_from_slice(&id.to_le_bytes());
    if let Some(a) = attempts {
        b.extend_from_slice(&a.to_le_bytes());
    }
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Fifo => 0,
        Kind::Lifo => 1,
        Kind::Priority => 2,
    }
}

fn kind_of(code: u8) -> Option<Kind> {
    Kind::ALL.into_iter().find(|&k| kind_code(k) == code)
}

pub(crate) fn settings(
    b: &mut Vec<u8>,
    queue: &[u8],
    explicit: bool,
    c: &engine::Config,
    expire: Option<u64>,
    expire_if_empty: bool,
) {
    head(b, SETTINGS, queue);
    b.push(u8::from(explicit));
    b.push(kind_code(c.kind));
    b.extend_from_slice(&c.maxsize.to_le_bytes());
    b.extend_from_slice(&c.lease_timeout.map_or(-1i64, |v| v as i64).to_le_bytes());
    b.extend_from_slice(&c.max_attempts.map_or(-1i64, i64::from).to_le_bytes());
    name(b, c.dead_letter.as_deref().unwrap_or("").as_bytes());
    b.extend_from_slice(&expire.map_or(-1i64, |v| v as i64).to_le_bytes());
    b.push(u8::from(c.paused));
    b.push(u8::from(expire_if_empty));
}

pub(crate) fn dedup(b: &mut Vec<u8>, queue: &[u8], key: &[u8], id: u64, until: u64) {
    head(b, DEDUP, queue);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&until.to_le_bytes());
    b.extend_from_slice(key);
}

const CUT: &str = "record is cut short";

/// What a damaged record seems to hold, as far as its bytes read: its
/// kind, queue and ids. For the line salvage logs; nothing here is
/// trusted or applied.
pub(crate) fn describe(record: &[u8]) -> String {
    let kind = match record.first() {
        Some(&PUT) => "a put",
        Some(&FINISH) => "a finish",
        Some(&RETURN) => "a return",
        Some(&LEASE) => "a lease",
        Some(&SETTINGS) => "settings",
        Some(&SHUTDOWN) => "a shutdown",
        Some(&DROP) => "a drop",
        Some(&CHECKPOINT) => "a checkpoint marker",
        Some(&RESET) => "a snapshot's start",
        Some(&NEXT_ID) => "a next id",
        Some(&SNAPSHOT_END) => "a snapshot's end",
        Some(&SNAPSHOT_ABORT) => "a snapshot abort",
        Some(&DEDUP) => "a dedup key",
        Some(&FINISH_MANY) => "finishes",
        Some(&PUT_MANY) => "puts",
        Some(&REOPEN) => "a reopen",
        Some(&KEYTYPE) => "a key type",
        _ => return "unreadable".into(),
    };
    let mut f = Fields(Bytes::copy_from_slice(&record[1..]));
    let Ok(name) = f.name() else {
        return kind.into();
    };
    if !valid_name(&name) {
        return kind.into();
    }
    let mut out = format!("{kind} of queue {}", String::from_utf8_lossy(&name));
    let ids: Vec<u64> = match record[0] {
        PUT | FINISH | RETURN | LEASE | DEDUP | PUT_MANY => f.u64().ok().into_iter().collect(),
        FINISH_MANY => std::iter::from_fn(|| f.u64().ok()).take(16).collect(),
        _ => Vec::new(),
    };
    if !ids.is_empty() {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        out.push_str(&format!(", id {}", ids.join(" ")));
    }
    out
}

/// Takes a record apart, field by field; every field may be missing.
pub(crate) struct Fields(pub(crate) Bytes);

impl Fields {
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        self.0.try_get_u8().map_err(|_| CUT.into())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        self.0.try_get_u32_le().map_err(|_| CUT.into())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        self.0.try_get_u64_le().map_err(|_| CUT.into())
    }

    /// `len` bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, String> {
        if self.0.len() < len {
            return Err(CUT.into());
        }
        Ok(self.0.split_to(len))
    }

    /// A queue name: a u8 length and its bytes.
    pub(crate) fn name(&mut self) -> Result<Bytes, String> {
        let len = self.u8()?;
        self.bytes(usize::from(len))
    }

    /// Whatever is left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A message id, or a queue's next one: below 2^63, which no queue
    /// reaches by puts (an id beyond is damage, and the next one after it
    /// would not fit).
    pub(crate) fn id(&mut self) -> Result<u64, String> {
        let id = self.u64()?;
        if id >= 1 << 63 {
            return Err(format!("message id {id} is out of range"));
        }
        Ok(id)
    }

    /// A put's head: id, attempts, due and key (see [`put_head`]).
    pub(crate) fn put_head(&mut self) -> Result<(u64, u32, u64, Bytes), String> {
        let id = self.id()?;
        let attempts = self.u32()?;
        let due = self.u64()?;
        let klen = self.0.try_get_u16_le().map_err(|_| CUT.to_string())?;
        Ok((id, attempts, due, self.bytes(usize::from(klen))?))
    }

    /// The settings of a Settings record, after its queue: whether the
    /// queue was made explicitly, its config, its idle expiry, and whether
    /// that expiry drops it only when it holds nothing.
    pub(crate) fn settings(&mut self) -> Result<(bool, engine::Config, Option<u64>, bool), String> {
        let explicit = self.u8()? != 0;
        let kind = kind_of(self.u8()?).ok_or("unknown queue kind")?;
        let maxsize = self.u64()?;
        let lease = u64::try_from(self.u64()? as i64).ok();
        let max_attempts = u64::try_from(self.u64()? as i64)
            .ok()
            .and_then(|v| u32::try_from(v).ok());
        let dl = self.name()?;
        // Logs written before idle expiry end here.
        let expire = if self.is_empty() {
            None
        } else {
            u64::try_from(self.u64()? as i64).ok()
        };
        // And before pausing here.
        let paused = !self.is_empty() && self.u8()? != 0;
        // And before expiries only when empty here.
        let expire_if_empty = !self.is_empty() && self.u8()? != 0;
        Ok((
            explicit,
            engine::Config {
                kind,
                maxsize,
                lease_timeout: lease,
                max_attempts,
                dead_letter: (!dl.is_empty()).then(|| String::from_utf8_lossy(&dl).into_owned()),
                paused,
            },
            expire,
            expire_if_empty,
        ))
    }
}

/// Whether a queue may be named so (docs/protocol.md): the commands and
/// the log's replay hold names to the same rule.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    (1..=200).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_record_is_described_as_far_as_it_reads() {
        let mut b = Vec::new();
        id(&mut b, FINISH, b"jobs", 42, None);
        assert_eq!(describe(&b), "a finish of queue jobs, id 42");
        assert_eq!(describe(&b[..3]), "a finish");
        assert_eq!(describe(&[0xee, 1, 2]), "unreadable");
        assert_eq!(describe(&[]), "unreadable");
    }

    #[test]
    fn settings_read_back_as_written() {
        for (kind, paused) in Kind::ALL.into_iter().zip([true, false, true]) {
            let config = engine::Config {
                kind,
                maxsize: 7,
                lease_timeout: Some(1500),
                max_attempts: Some(3),
                dead_letter: Some("dead".into()),
                paused,
            };
            for (expire, if_empty) in [(None, false), (Some(60_000), false), (Some(5), true)] {
                let mut b = Vec::new();
                settings(&mut b, b"q", true, &config, expire, if_empty);
                let mut f = Fields(Bytes::from(b));
                assert_eq!(f.u8(), Ok(SETTINGS));
                assert_eq!(f.name().unwrap(), "q");
                assert_eq!(f.settings(), Ok((true, config.clone(), expire, if_empty)));
                assert!(f.is_empty());
            }
            // Records written before pausing, and before idle expiry.
            let unpaused = engine::Config {
                paused: false,
                ..config.clone()
            };
            let mut b = Vec::new();
            settings(&mut b, b"q", false, &config, Some(5), false);
            b.truncate(b.len() - 1);
            let mut f = Fields(Bytes::from(b.clone()));
            f.u8().unwrap();
            f.name().unwrap();
            assert_eq!(f.settings(), Ok((false, config.clone(), Some(5), false)));
            b.truncate(b.len() - 1);
            let mut f = Fields(Bytes::from(b.clone()));
            f.u8().unwrap();
            f.name().unwrap();
            assert_eq!(f.settings(), Ok((false, unpaused.clone(), Some(5), false)));
            b.truncate(b.len() - 8);
            let mut f = Fields(Bytes::from(b));
            f.u8().unwrap();
            f.name().unwrap();
            assert_eq!(f.settings(), Ok((false, unpaused, None, false)));
        }
    }
}
