//! Pacing our group lines to the rate limit a session announced.

use std::time::Duration;

use crate::bucket::TokenBucket;
use crate::protocol::RateLimit;

/// Keeps our `say` lines within the rate limit the session announced, so that none is refused:
/// a script typing faster than the limit used to lose every line past the burst to `slow down`.
/// It mirrors the server's bucket with some slack (a fifth smaller, refilled at 90 % of the
/// rate), because the server counts from when it reads lines, and a network or a busy server
/// may bunch them: the slack absorbs about half a second of bunching at the default limit.
pub(super) struct Pacer {
    /// The announced rate at 90 %, `None` when the session announced no limit.
    rate: Option<f64>,
    bucket: TokenBucket,
}

impl Pacer {
    /// The server gives every connection a full bucket at its welcome; so do we.
    pub(super) fn new(limit: Option<RateLimit>) -> Self {
        let rate = limit.map(|l| l.per_second * 0.9).filter(|r| *r > 0.0);
        let capacity = limit.map_or(0.0, |l| {
            let burst = f64::from(l.burst);
            (burst - (burst / 5.0).max(1.0)).max(1.0)
        });
        Self {
            rate,
            bucket: TokenBucket::new(rate, capacity),
        }
    }

    /// How long one line takes on average, for waiting on a queue of them.
    pub(super) fn per_line(&self) -> Duration {
        self.rate
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r))
    }

    /// Takes a token, or says how long until there is one.
    pub(super) fn take(&mut self) -> Result<(), Duration> {
        self.bucket.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_stays_inside_the_announced_bucket_with_slack() {
        let limit = RateLimit {
            per_second: 20.0,
            burst: 50,
        };
        let mut pacer = Pacer::new(Some(limit));
        let at_once = std::iter::from_fn(|| pacer.take().ok()).take(100).count();
        assert_eq!(at_once, 40, "a fifth of the burst is kept in reserve");
        let wait = pacer.take().unwrap_err();
        assert!(wait >= Duration::from_millis(50), "{wait:?}");
        // Over ten seconds it sends at 90 % of the rate, never more.
        let mut sent = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            if pacer.take().is_ok() {
                sent += 1;
            }
        }
        assert!((170..=180).contains(&sent), "{sent}");
        // No limit announced: nothing is held back.
        let mut free = Pacer::new(None);
        assert!((0..1000).all(|_| free.take().is_ok()));
    }
}
