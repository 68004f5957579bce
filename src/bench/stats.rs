//! Latency histograms small enough to keep one per receiver and merge at the end.
//!
//! Keeping every sample would cost 8 bytes per delivery (tens of megabytes in the larger
//! scenarios) and a sort; log-linear buckets with 32 steps per power of two keep any percentile
//! within about 3 % of the truth in 15 KiB, and the maximum is kept exactly.

use serde::Serialize;

/// Steps per power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of nanosecond values.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as u64 + 1) * SUB + ((v >> shift) & (SUB - 1))) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    low + (1u64 << shift) / 2
}

impl Histogram {
    pub(crate) fn record(&mut self, nanos: u64) {
        self.counts[index(nanos)] += 1;
        self.count += 1;
        self.sum += nanos as u128;
        self.max = self.max.max(nanos);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The value below which a fraction `q` of the samples lie.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let us = |n: u64| n as f64 / 1e3;
        LatencySummary {
            samples: self.count,
            mean_us: if self.count == 0 {
                0.0
            } else {
                self.sum as f64 / self.count as f64 / 1e3
            },
            p50_us: us(self.quantile(0.50)),
            p99_us: us(self.quantile(0.99)),
            max_us: us(self.max),
        }
    }
}

/// Latency percentiles in microseconds (within about 3 %; the maximum is exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// How many values were measured.
    pub samples: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(i >= last, "index must not fall as values grow");
            last = i;
            let mid = value(i) as f64;
            if v > 0 {
                assert!((mid - v as f64).abs() / (v as f64) <= 1.0 / SUB as f64);
            }
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.samples, 10_000);
        assert!((s.p50_us - 5000.0).abs() / 5000.0 < 0.04, "{s:?}");
        assert!((s.p99_us - 9900.0).abs() / 9900.0 < 0.04, "{s:?}");
        assert_eq!(s.max_us, 10_000.0);
    }
}
