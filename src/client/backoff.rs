//! How often to try again, and how long to wait in between.
//!
//! The coordinator requests, the private messages, the session link's rejoins and a join that
//! raced with an idle server stopping all retry over a lossy network; they share this one
//! schedule so that it is written and tested once. Every wait is drawn at random within a
//! quarter either side of its nominal length: when a coordinator restarts, every client loses
//! its session at the same instant, and without jitter they would all rejoin on the same beat,
//! each retry a spike. Drawn either side, the waits keep their nominal sum on average, so the
//! documented totals (about 13.4 s for 15 tries) still hold; the longest a sequence can take is
//! a quarter more ([`Retry::total`]).
//!
//! The `backon` crate was the obvious candidate. It does not fit: its jitter only lengthens a
//! wait (by up to 100 %), which would stretch the documented totals to as much as twice their
//! length, or change what the public `Retry` fields mean; and no retry here sleeps between
//! failed calls, which is what its retry loop is for: a request or a private message listens for
//! its answer during the wait, and a rejoin gives up by the clock, not by a count. What remains
//! is an iterator of durations, which is this file.

use std::time::Duration;

/// How far either side of its nominal length a wait may fall, as a fraction of it.
const JITTER: f64 = 0.25;

/// How often to try, and how long to wait between tries: doubling up to a cap, each wait
/// within a quarter either side of that (see the module docs for why).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Wait after the first try (nominal; the real one is within a quarter of it).
    pub first: Duration,
    /// Longest nominal wait between tries.
    pub max_delay: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
}

impl Retry {
    /// The wait after each try, one per try; each call draws a new random schedule.
    pub(super) fn delays(self) -> impl Iterator<Item = Duration> {
        Backoff::new(self.first, self.max_delay).take(self.attempts as usize)
    }

    /// The longest the whole retry sequence can take: every wait at its longest.
    pub fn total(self) -> Duration {
        let nominal: Duration = Backoff::nominal(self.first, self.max_delay)
            .take(self.attempts as usize)
            .sum();
        nominal.mul_f64(1.0 + JITTER)
    }
}

/// An endless exponential backoff with jitter: `first`, doubling up to `max`, each wait drawn
/// within a quarter either side. Endless because the link's rejoin stops by the clock; take as
/// many as a count allows elsewhere.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
    /// xorshift64* state; never zero.
    rng: u64,
}

impl Backoff {
    /// A schedule with its own random seed, so two clients never share one.
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Self::with_seed(first, max, rand::random())
    }

    /// A reproducible schedule, for tests.
    pub(super) fn with_seed(first: Duration, max: Duration, seed: u64) -> Self {
        Self {
            next: first,
            max,
            rng: seed.max(1),
        }
    }

    /// The waits without jitter: what the docs state and the jitter is drawn around.
    fn nominal(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
        std::iter::successors(Some(first), move |d| Some(d.saturating_mul(2).min(max)))
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let nominal = self.next;
        self.next = nominal.saturating_mul(2).min(self.max);
        let factor = 1.0 - JITTER + 2.0 * JITTER * self.unit();
        Some(nominal.mul_f64(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn within_a_quarter(got: Duration, nominal: Duration) -> bool {
        got >= nominal.mul_f64(0.75) && got <= nominal.mul_f64(1.25)
    }

    #[test]
    fn waits_double_up_to_the_cap_each_within_a_quarter() {
        let nominal = [200, 400, 800, 1000, 1000, 1000].map(|n| n * MS);
        for seed in 1..200 {
            let got: Vec<Duration> = Backoff::with_seed(200 * MS, 1000 * MS, seed)
                .take(nominal.len())
                .collect();
            for (g, n) in got.iter().zip(nominal) {
                assert!(within_a_quarter(*g, n), "seed {seed}: {g:?} for {n:?}");
            }
        }
    }

    #[test]
    fn clients_that_start_together_spread_out() {
        // A hundred clients lose their session at once: their third rejoin, nominally 700 ms
        // after the break, is spread over more than 150 ms (the jitter allows 350).
        let thirds: Vec<Duration> = (1..=100)
            .map(|seed| Backoff::with_seed(100 * MS, 3000 * MS, seed).take(3).sum())
            .collect();
        let (lo, hi) = (thirds.iter().min().unwrap(), thirds.iter().max().unwrap());
        assert!(*hi - *lo > 150 * MS, "{lo:?}..{hi:?}");
        // The same seed gives the same schedule; fresh ones differ.
        let a: Vec<_> = Backoff::with_seed(MS, MS, 7).take(5).collect();
        let b: Vec<_> = Backoff::with_seed(MS, MS, 7).take(5).collect();
        assert_eq!(a, b);
        let c: Vec<_> = Backoff::new(MS, MS).take(5).collect();
        let d: Vec<_> = Backoff::new(MS, MS).take(5).collect();
        assert_ne!(c, d);
    }

    #[test]
    fn the_nominal_schedule_is_the_one_the_docs_state() {
        let ms = |v: &[u32]| v.iter().map(|n| *n * MS).collect::<Vec<_>>();
        let nominal = |first, max, n| Backoff::nominal(first, max).take(n).collect::<Vec<_>>();
        assert_eq!(
            nominal(200 * MS, 1000 * MS, 5),
            ms(&[200, 400, 800, 1000, 1000])
        );
        // The link's rejoin: 100 ms doubling to 3 s.
        assert_eq!(
            nominal(100 * MS, 3000 * MS, 7),
            ms(&[100, 200, 400, 800, 1600, 3000, 3000])
        );
        // A cap below the first wait applies from the second on, as it always did.
        assert_eq!(nominal(300 * MS, 100 * MS, 3), ms(&[300, 100, 100]));
    }

    #[test]
    fn the_documented_schedule_keeps_its_total_on_average_and_its_bound() {
        // The defaults: 200 ms doubling to 1 s, 15 tries, about 13.4 s.
        let retry = Retry {
            first: 200 * MS,
            max_delay: 1000 * MS,
            attempts: 15,
        };
        assert_eq!(retry.delays().count(), 15);
        assert_eq!(retry.total(), (13_400 * MS).mul_f64(1.25));
        let runs = 2000;
        let sum: Duration = (0..runs).map(|_| retry.delays().sum::<Duration>()).sum();
        let mean = sum / runs;
        assert!(mean > 13_200 * MS && mean < 13_600 * MS, "{mean:?}");
        for _ in 0..runs {
            assert!(retry.delays().sum::<Duration>() <= retry.total());
        }
    }
}
