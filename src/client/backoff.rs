//! How often to try again, and how long to wait in between.
//!
//! The coordinator requests, the private messages and the session link's reconnects all retry
//! over a lossy network; they share this one schedule so that it is written and tested once.

use std::time::Duration;

/// How often to try, and how long to wait between tries (doubling up to a cap).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Wait after the first try.
    pub first: Duration,
    /// Longest wait between tries.
    pub max_delay: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
}

impl Retry {
    pub(super) fn delays(self) -> impl Iterator<Item = Duration> {
        let mut delay = self.first;
        (0..self.attempts).map(move |_| {
            let d = delay;
            delay = (delay * 2).min(self.max_delay);
            d
        })
    }

    /// The longest the whole retry sequence can take.
    pub fn total(self) -> Duration {
        self.delays().sum()
    }
}
