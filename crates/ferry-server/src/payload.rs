//! What the broker queues: a payload and its priority order key, and how
//! the engine weighs, orders and packs it.

use bytes::Bytes;
use ferry_core::engine::{self, Item, Pack, PackedFifo};

/// A message's payload and its priority order key. Bytes are
/// reference-counted, so the copy a leased delivery hands out shares the
/// payload.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    pub(crate) data: Bytes,
    pub(crate) key: Bytes,
}

/// What a queued message costs besides its bytes: the engine's entry and
/// the two `Bytes` handles, roughly.
const MESSAGE_OVERHEAD: u64 = 96;

/// What a message of this payload and order key weighs (at most: a fifo
/// keeps no key), for `--max-memory` and the users' `max_bytes`.
pub(crate) fn weight(data: &[u8], key: &[u8]) -> u64 {
    (data.len() + key.len()) as u64 + MESSAGE_OVERHEAD
}

/// The order key of a put that names no priority: priority 0.
pub(crate) const DEFAULT_KEY: &[u8] = &[0x80, 0, 0, 0, 0, 0, 0, 0];

impl Item for Payload {
    fn priority_cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }

    fn weight(&self) -> u64 {
        weight(&self.data, &self.key)
    }

    /// A fifo never orders by the key, and a packed one keeps none: a key
    /// counted in at a put and not out at its get made the memory count
    /// climb by its length with every message (8 bytes by default, up to
    /// 64 KiB with PRIOKEY) until puts were refused with nothing queued.
    fn forget_order(&mut self) {
        self.key = Bytes::new();
    }
}

/// A fifo queue's ready messages are packed into byte blocks: about 19
/// bytes for a 16-byte payload instead of ~130 as `Message<Payload>`s
/// holding shares of read buffers. The order key is not kept: fifo queues
/// never look at it.
impl Pack for Payload {
    fn packed_len(&self) -> usize {
        self.data.len()
    }

    fn pack(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.data);
    }

    fn unpack(bytes: &[u8]) -> Self {
        Payload {
            data: Bytes::copy_from_slice(bytes),
            key: Bytes::new(),
        }
    }

    fn packed_weight(bytes: &[u8]) -> u64 {
        bytes.len() as u64 + MESSAGE_OVERHEAD
    }
}

/// One queue's engine, as the broker stores it.
pub(crate) type EngineQueue = engine::Queue<Payload, PackedFifo<Payload>>;

/// Encodes an i64 priority as an order key: big-endian with the sign bit
/// flipped, so that comparing the bytes compares the numbers.
pub(crate) fn priority_key(p: i64) -> Bytes {
    Bytes::copy_from_slice(&((p as u64) ^ (1 << 63)).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keys_sort_as_the_numbers() {
        let ps = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let keys: Vec<Bytes> = ps.iter().map(|&p| priority_key(p)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(&priority_key(0)[..], DEFAULT_KEY);
    }

    #[test]
    fn a_packed_payload_weighs_what_its_unpacked_copy_does() {
        let p = Payload {
            data: Bytes::from_static(b"sixteen bytes!!!"),
            key: DEFAULT_KEY.into(),
        };
        let mut packed = Vec::new();
        p.pack(&mut packed);
        assert_eq!(
            Payload::packed_weight(&packed),
            Payload::unpack(&packed).weight()
        );
    }
}
