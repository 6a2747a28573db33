//! Where a fifo queue keeps its ready messages: a plain `VecDeque`, or a
//! packed store that copies each message into large byte blocks.
//!
//! A queued message in a `VecDeque<Message<T>>` costs `size_of::<Message<T>>()`
//! plus whatever its item owns — for the broker's payloads, two `Bytes`
//! handles and a share of the read buffer the request arrived in, about
//! 130 bytes for a 16-byte payload. [`PackedFifo`] writes the id (as a
//! delta), the attempt count and the packed item back to back, about 19 bytes
//! for the same message, and frees each block as soon as it is consumed.

use std::collections::VecDeque;
use std::marker::PhantomData;

use super::{Item, Message};

/// A first-in, first-out sequence of ready messages.
pub trait FifoStore<T>: Default {
    /// Appends a message.
    fn push_back(&mut self, msg: Message<T>);
    /// Takes the oldest message.
    fn pop_front(&mut self) -> Option<Message<T>>;
    /// How many messages it holds.
    fn len(&self) -> usize;
    /// True when it holds none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops every message, telling `f` each one's id and weight
    /// ([`Item::weight`]), oldest first. A packed store weighs its items as
    /// the bytes they are, never rebuilding one: a purge of 1 GiB of 16 MiB
    /// payloads that unpacked each held a broker worker for 1.5 s.
    fn drop_all(&mut self, f: &mut dyn FnMut(u64, u64));
    /// Shows `f` each message, oldest first, until it replies false. A
    /// packed store unpacks one message at a time, so visiting a large
    /// backlog (a snapshot) costs one message's memory, not the backlog's.
    fn visit(&self, f: &mut dyn FnMut(&Message<T>) -> bool);
}

impl<T: Item> FifoStore<T> for VecDeque<Message<T>> {
    fn push_back(&mut self, msg: Message<T>) {
        VecDeque::push_back(self, msg);
    }

    fn pop_front(&mut self) -> Option<Message<T>> {
        VecDeque::pop_front(self)
    }

    fn len(&self) -> usize {
        VecDeque::len(self)
    }

    fn drop_all(&mut self, f: &mut dyn FnMut(u64, u64)) {
        for m in self.drain(..) {
            f(m.id, m.item.weight());
        }
    }

    fn visit(&self, f: &mut dyn FnMut(&Message<T>) -> bool) {
        for m in self {
            if !f(m) {
                return;
            }
        }
    }
}

/// An item that can be written as bytes and read back, for [`PackedFifo`].
pub trait Pack: Sized {
    /// Bytes that [`Pack::pack`] will write.
    fn packed_len(&self) -> usize;
    /// Appends the item's bytes.
    fn pack(&self, out: &mut Vec<u8>);
    /// Rebuilds an item from exactly the bytes `pack` wrote.
    fn unpack(bytes: &[u8]) -> Self;
    /// The [`Item::weight`] the item those bytes rebuild would have,
    /// without rebuilding it.
    fn packed_weight(bytes: &[u8]) -> u64;
}

/// Largest block; a new one starts when the next message would not fit.
/// Blocks start small and grow by doubling, so a queue of a few messages
/// costs a few hundred bytes, not a whole block.
const BLOCK: usize = 64 << 10;

struct Block {
    buf: Vec<u8>,
    /// Where the next message to pop starts.
    read: usize,
    /// Id of the message last written / last read: ids are stored as
    /// deltas from the one before them in the same block.
    last_written: u64,
    last_read: u64,
}

impl Block {
    fn new(capacity: usize) -> Self {
        Block {
            buf: Vec::with_capacity(capacity),
            read: 0,
            last_written: 0,
            last_read: 0,
        }
    }
}

/// Ready messages packed into byte blocks: per message a zigzag varint id
/// delta, a varint attempt count, a varint length and the packed item.
pub struct PackedFifo<T> {
    blocks: VecDeque<Block>,
    len: usize,
    item: PhantomData<fn() -> T>,
}

impl<T> Default for PackedFifo<T> {
    fn default() -> Self {
        PackedFifo {
            blocks: VecDeque::new(),
            len: 0,
            item: PhantomData,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint written by `put_varint` at `*pos`. The store only reads
/// what it wrote itself, so the bytes are always well formed; a short read
/// yields what it has rather than panicking.
fn get_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = buf.get(*pos) {
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 || shift >= 63 {
            break;
        }
        shift += 7;
    }
    v
}

fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl<T: Pack> PackedFifo<T> {
    fn decode(block: &Block, pos: &mut usize, last: &mut u64) -> Message<T> {
        let id = last.wrapping_add(unzigzag(get_varint(&block.buf, pos)) as u64);
        *last = id;
        let attempts = u32::try_from(get_varint(&block.buf, pos)).unwrap_or(u32::MAX);
        let len = get_varint(&block.buf, pos) as usize;
        let end = (*pos + len).min(block.buf.len());
        let item = T::unpack(&block.buf[*pos..end]);
        *pos = end;
        Message { id, attempts, item }
    }
}

impl<T: Pack> FifoStore<T> for PackedFifo<T> {
    fn push_back(&mut self, msg: Message<T>) {
        let body = msg.item.packed_len();
        let need = body + 10 + 5 + 10;
        let fits = self
            .blocks
            .back()
            .is_some_and(|b| b.buf.is_empty() || b.buf.len() + need <= BLOCK);
        if !fits {
            self.blocks
                .push_back(Block::new(need.max(256).min(BLOCK.max(need))));
        }
        if let Some(block) = self.blocks.back_mut() {
            let delta = msg.id.wrapping_sub(block.last_written) as i64;
            put_varint(&mut block.buf, zigzag(delta));
            put_varint(&mut block.buf, u64::from(msg.attempts));
            put_varint(&mut block.buf, body as u64);
            msg.item.pack(&mut block.buf);
            block.last_written = msg.id;
            self.len += 1;
        }
    }

    fn pop_front(&mut self) -> Option<Message<T>> {
        let several = self.blocks.len() > 1;
        let block = self.blocks.front_mut()?;
        if block.read >= block.buf.len() {
            return None;
        }
        let (mut pos, mut last) = (block.read, block.last_read);
        let msg = Self::decode(block, &mut pos, &mut last);
        block.read = pos;
        block.last_read = last;
        self.len -= 1;
        if block.read >= block.buf.len() {
            if several {
                self.blocks.pop_front();
            } else {
                // The only block, emptied: reuse it from the start.
                block.buf.clear();
                block.read = 0;
                block.last_written = 0;
                block.last_read = 0;
                if block.buf.capacity() > BLOCK {
                    block.buf.shrink_to(256);
                }
            }
        }
        Some(msg)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn drop_all(&mut self, f: &mut dyn FnMut(u64, u64)) {
        for block in &self.blocks {
            let (mut pos, mut last) = (block.read, block.last_read);
            while pos < block.buf.len() {
                let id = last.wrapping_add(unzigzag(get_varint(&block.buf, &mut pos)) as u64);
                last = id;
                let _attempts = get_varint(&block.buf, &mut pos);
                let len = get_varint(&block.buf, &mut pos) as usize;
                let end = (pos + len).min(block.buf.len());
                f(id, T::packed_weight(&block.buf[pos..end]));
                pos = end;
            }
        }
        self.blocks.clear();
        self.len = 0;
    }

    fn visit(&self, f: &mut dyn FnMut(&Message<T>) -> bool) {
        for block in &self.blocks {
            let (mut pos, mut last) = (block.read, block.last_read);
            while pos < block.buf.len() {
                if !f(&Self::decode(block, &mut pos, &mut last)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Pack for Vec<u8> {
        fn packed_len(&self) -> usize {
            self.len()
        }
        fn pack(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(self);
        }
        fn unpack(bytes: &[u8]) -> Self {
            bytes.to_vec()
        }
        fn packed_weight(bytes: &[u8]) -> u64 {
            bytes.len() as u64
        }
    }

    impl Item for Vec<u8> {
        fn priority_cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.cmp(other)
        }
        fn weight(&self) -> u64 {
            self.len() as u64
        }
    }

    fn msg(id: u64, attempts: u32, len: usize) -> Message<Vec<u8>> {
        Message {
            id,
            attempts,
            item: vec![id as u8; len],
        }
    }

    #[test]
    fn packs_and_unpacks_in_order_across_blocks() {
        let mut s = PackedFifo::default();
        // Ids out of order (promoted delays), big and empty items.
        let msgs: Vec<_> = (0..20_000u64)
            .map(|i| {
                msg(
                    if i % 7 == 0 { i / 2 } else { i + 100 },
                    (i % 300) as u32,
                    (i % 50) as usize,
                )
            })
            .chain([msg(u64::MAX, 0, 200_000), msg(0, u32::MAX, 0)])
            .collect();
        for m in &msgs {
            s.push_back(m.clone());
        }
        assert_eq!(s.len(), msgs.len());
        assert!(s.blocks.len() > 2);
        let mut seen = Vec::new();
        s.visit(&mut |m| {
            seen.push(m.clone());
            true
        });
        assert_eq!(seen, msgs, "a visit shows every message, oldest first");
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(s.pop_front().as_ref(), Some(m), "message {i}");
        }
        assert!(s.pop_front().is_none() && s.is_empty());
        let mut dropped = Vec::new();
        for m in &msgs[..3] {
            s.push_back(m.clone());
        }
        s.drop_all(&mut |id, weight| dropped.push((id, weight)));
        let want: Vec<(u64, u64)> = msgs[..3].iter().map(|m| (m.id, m.item.weight())).collect();
        assert_eq!(
            dropped, want,
            "a drop weighs each message without unpacking it"
        );
        assert!(s.is_empty() && s.pop_front().is_none());
        s.push_back(msg(5, 1, 3));
        assert_eq!(s.pop_front(), Some(msg(5, 1, 3)));
    }

    #[test]
    fn a_small_message_costs_a_few_bytes() {
        let mut s = PackedFifo::default();
        for i in 1..=10_000 {
            s.push_back(msg(i, 0, 16));
        }
        let bytes: usize = s.blocks.iter().map(|b| b.buf.len()).sum();
        assert!(bytes <= 10_000 * 20, "{bytes} bytes");
    }
}
