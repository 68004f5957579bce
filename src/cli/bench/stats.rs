//! Latency histograms small enough to keep one per receiver and merge at the end.
//!
//! Keeping every sample would cost 8 bytes per delivery (tens of megabytes in the larger
//! scenarios) and a sort. An HdrHistogram with two significant digits keeps any percentile within
//! 1 % of the truth, grows only as far as the largest value seen (a few tens of KiB for latencies
//! up to seconds), and merges exactly; the maximum and the mean are kept exactly beside it.

use serde::Serialize;

/// Significant decimal digits the histogram keeps (1 % resolution).
const SIGNIFICANT_DIGITS: u8 = 2;

/// Counts of nanosecond values.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    hdr: hdrhistogram::Histogram<u64>,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            hdr: hdrhistogram::Histogram::new(SIGNIFICANT_DIGITS)
                .expect("two significant digits is a valid precision"),
            sum: 0,
            max: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, nanos: u64) {
        // An auto-resizing histogram grows to any value it is given (saturating would clamp to
        // the current top instead of growing); only values past u64's top bucket are refused,
        // and they are clamped so the count stays true.
        if self.hdr.record(nanos).is_err() {
            self.hdr.saturating_record(nanos);
        }
        self.sum += nanos as u128;
        self.max = self.max.max(nanos);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        self.hdr
            .add(&other.hdr)
            .expect("auto-resizing histograms always merge");
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let count = self.hdr.len();
        let us = |n: u64| n.min(self.max) as f64 / 1e3;
        LatencySummary {
            samples: count,
            mean_us: if count == 0 {
                0.0
            } else {
                self.sum as f64 / count as f64 / 1e3
            },
            p50_us: us(self.hdr.value_at_quantile(0.50)),
            p99_us: us(self.hdr.value_at_quantile(0.99)),
            max_us: us(self.max),
        }
    }
}

/// Latency percentiles in microseconds (within 1 %; the maximum and the mean are exact).
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
    fn percentiles_of_a_uniform_spread() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.samples, 10_000);
        assert!((s.p50_us - 5000.0).abs() / 5000.0 < 0.01, "{s:?}");
        assert!((s.p99_us - 9900.0).abs() / 9900.0 < 0.01, "{s:?}");
        assert_eq!(s.max_us, 10_000.0);
        assert!((s.mean_us - 5000.5).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn merged_halves_equal_the_whole() {
        let (mut a, mut b, mut whole) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in 1..=5_000u64 {
            a.record(v * 977);
            whole.record(v * 977);
        }
        for v in 1..=5_000u64 {
            b.record(v * 1_000_003);
            whole.record(v * 1_000_003);
        }
        a.merge(&b);
        assert_eq!(a.summary(), whole.summary());
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        assert_eq!(Histogram::default().summary(), LatencySummary::default());
    }
}
