//! A fixed-bucket histogram the writer thread fills without a lock: how
//! long fsyncs take and how many records each write carries (the group
//! commit). Read as a snapshot by whoever exports metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of observed values by upper bound, and their sum.
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, then one for values above the last.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram as it was when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `(upper bound, count)` per bucket, not cumulative; the last bound
    /// is `u64::MAX` (everything above the one before).
    pub buckets: Vec<(u64, u64)>,
    /// The sum of every value observed.
    pub sum: u64,
    /// How many values were observed.
    pub count: u64,
}

/// fsync latency bounds, in microseconds: 50 µs to 1 s.
pub const FSYNC_MICROS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Records per write: 1 to 16,384, by powers of two (then 4×).
pub const BATCH_RECORDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096, 16_384];

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let buckets: Vec<(u64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([u64::MAX])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        Snapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_bounds_them() {
        let h = Histogram::new(&[1, 2, 4]);
        for v in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, [(1, 2), (2, 1), (4, 2), (u64::MAX, 2)]);
        assert_eq!((s.sum, s.count), (115, 7));
    }
}
