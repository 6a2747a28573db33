//! One queue's journal: the engine reports each durable change while the
//! queue's lock is held, and it becomes a log record — so the log's order
//! is each queue's order.
//!
//! An operation's finishes and puts are gathered: a QDONE of many ids, a
//! QGET COUNT with NOACK or TAKE, a QPUTMANY or a snapshot become one
//! FinishMany or PutMany record, written when the operation ends
//! ([`Journal::flush`], under the queue's lock, before any reply can wait
//! for the log) or before a record of another kind — so the log keeps the
//! operation's order.

use bytes::Bytes;
use ferry_core::engine::{Journal, Millis};

use super::Store;
use super::records::{self, FINISH, FINISH_MANY, LEASE, PUT, PUT_MANY, RETURN};
use crate::payload::Payload;

/// A PutMany record is written before its entries would pass this many
/// bytes (one larger message makes a record of its own).
const PUT_MANY_BYTES: usize = 64 << 10;

/// One queue's journal. `S` is how it reaches the store: an `Arc` for a
/// live queue, a reference for a snapshot.
pub(crate) struct LogJournal<S> {
    store: S,
    queue: Bytes,
    /// Finishes of the operation under way, written as one record by
    /// `flush` (or before any other record of this queue).
    finished: Vec<u64>,
    /// Puts of the operation under way, encoded as PutMany entries, and how
    /// many. At most one of `finished` and `puts` is non-empty, so the log
    /// keeps the operation's order.
    puts: Vec<u8>,
    put_count: usize,
    /// The last put, kept whole in case it stays alone (a plain Put).
    last_put: Option<(u64, u32, u64, Payload)>,
}

impl<S: std::ops::Deref<Target = Store>> LogJournal<S> {
    pub(crate) fn new(store: S, queue: Bytes) -> Self {
        LogJournal {
            store,
            queue,
            finished: Vec::new(),
            puts: Vec::new(),
            put_count: 0,
            last_put: None,
        }
    }

    /// Writes the gathered puts: one Put, or one PutMany.
    fn write_puts(&mut self) {
        match self.put_count {
            0 => {}
            1 => {
                if let Some((id, attempts, due, item)) = self.last_put.take() {
                    self.store.append(|b| {
                        records::head(b, PUT, &self.queue);
                        records::put_head(b, id, attempts, due, &item.key);
                        b.extend_from_slice(&item.data);
                    });
                }
            }
            _ => self.store.append(|b| {
                records::head(b, PUT_MANY, &self.queue);
                b.extend_from_slice(&self.puts);
            }),
        }
        self.puts.clear();
        self.put_count = 0;
        self.last_put = None;
    }

    /// Writes the gathered finishes: one Finish, or one FinishMany.
    fn write_finished(&mut self) {
        match self.finished.as_slice() {
            [] => return,
            [id] => self
                .store
                .append(|b| records::id(b, FINISH, &self.queue, *id, None)),
            ids => self.store.append(|b| {
                records::head(b, FINISH_MANY, &self.queue);
                for id in ids {
                    b.extend_from_slice(&id.to_le_bytes());
                }
            }),
        }
        self.finished.clear();
    }

    /// Writes whatever the operation gathered so far.
    fn write_gathered(&mut self) {
        self.write_puts();
        self.write_finished();
    }
}

impl<S: std::ops::Deref<Target = Store> + Send> Journal<Payload> for LogJournal<S> {
    fn put(&mut self, id: u64, attempts: u32, item: &Payload, due: Option<Millis>) {
        self.write_finished();
        if !self.puts.is_empty()
            && self.puts.len() + item.data.len() + item.key.len() > PUT_MANY_BYTES
        {
            self.write_puts();
        }
        let due = due.map_or(0, |d| self.store.to_unix_ms(d));
        records::put_head(&mut self.puts, id, attempts, due, &item.key);
        // Payloads are at most MAX_PAYLOAD, well within a u32.
        let len = u32::try_from(item.data.len()).unwrap_or(u32::MAX);
        self.puts.extend_from_slice(&len.to_le_bytes());
        self.puts.extend_from_slice(&item.data);
        self.put_count += 1;
        self.last_put = (self.put_count == 1).then(|| (id, attempts, due, item.clone()));
    }

    fn finished(&mut self, id: u64) {
        self.write_puts();
        self.finished.push(id);
    }

    fn returned(&mut self, id: u64, attempts: u32) {
        self.write_gathered();
        self.store
            .append(|b| records::id(b, RETURN, &self.queue, id, Some(attempts)));
    }

    fn leased(&mut self, id: u64) {
        self.write_gathered();
        self.store
            .append(|b| records::id(b, LEASE, &self.queue, id, None));
    }

    fn flush(&mut self) {
        self.write_gathered();
    }

    fn dead_lettered(&mut self, _id: u64) {
        // Logged as finished by `Broker::bury`, after the dead-letter
        // queue's put, so that a crash in between keeps a copy.
    }
}
