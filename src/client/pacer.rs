//! Pacing our group lines to the rate limit a session announced.

use std::time::Duration;

use crate::protocol::RateLimit;

/// Keeps our `say` lines within the rate limit the session announced, so that none is refused:
/// a script typing faster than the limit used to lose every line past the burst to `slow down`.
/// It mirrors the server's bucket with some slack (a fifth smaller, refilled at 90 % of the
/// rate), because the server counts from when it reads lines, and a network or a busy server
/// may bunch them: the slack absorbs about half a second of bunching at the default limit.
pub(super) struct Pacer {
    limit: Option<RateLimit>,
    tokens: f64,
    last: tokio::time::Instant,
}

impl Pacer {
    /// The server gives every connection a full bucket at its welcome; so do we.
    pub(super) fn new(limit: Option<RateLimit>) -> Self {
        let mut pacer = Self {
            limit,
            tokens: 0.0,
            last: tokio::time::Instant::now(),
        };
        pacer.tokens = pacer.capacity();
        pacer
    }

    fn capacity(&self) -> f64 {
        self.limit.map_or(0.0, |l| {
            let burst = f64::from(l.burst);
            (burst - (burst / 5.0).max(1.0)).max(1.0)
        })
    }

    fn rate(&self) -> Option<f64> {
        self.limit.map(|l| l.per_second * 0.9).filter(|r| *r > 0.0)
    }

    /// How long one line takes on average, for waiting on a queue of them.
    pub(super) fn per_line(&self) -> Duration {
        self.rate()
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r))
    }

    /// Takes a token, or says how long until there is one.
    pub(super) fn take(&mut self) -> Result<(), Duration> {
        let Some(rate) = self.rate() else {
            return Ok(());
        };
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(self.capacity());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
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
