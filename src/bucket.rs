//! A token bucket: the rate limit a session server applies to what one member sends, and the
//! client's own pacing to stay inside it.

use std::time::Duration;

use tokio::time::Instant;

/// Classic token bucket: `rate` tokens per second, at most `burst` saved up.
pub(crate) struct TokenBucket {
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: Option<f64>, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn take(&mut self) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(self.burst);
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
    async fn token_bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(Some(10.0), 3.0);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take().is_ok());
        assert!(b.take().is_err());
    }
}
