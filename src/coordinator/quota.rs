//! Quotas for strangers: how much one address or one account may ask of the coordinator.
//!
//! Everything here is a token bucket by key (an address, or a user name): `count` per `period`,
//! with bursts of `count`. A pure core, with time passed in, so the tests drive it without a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// `count` per `period`, in bursts of up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// In how long.
    pub period: Duration,
}

impl Rate {
    /// `count` per second.
    pub const fn per_second(count: u32) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(1),
        }
    }

    /// `count` per hour.
    pub const fn per_hour(count: u32) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(3600),
        }
    }
}

/// What one address (IPv4, or IPv6 /64) or one account may ask of the coordinator. `None`
/// turns a limit off; [`AbuseLimits::off`] turns them all off, for benchmarks and tests that
/// drive thousands of accounts from one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseLimits {
    /// Requests without a valid token (`register`, `login`, `list`, anything malformed) per
    /// address; beyond it datagrams are dropped unanswered, so the coordinator cannot be made to
    /// send a flood to a forged address.
    pub requests: Option<Rate>,
    /// Registrations per address.
    pub registrations: Option<Rate>,
    /// Sessions created per account.
    pub sessions_per_user: Option<Rate>,
    /// Sessions created per address, whatever the accounts.
    pub sessions_per_address: Option<Rate>,
    /// Private datagrams one account may have the coordinator relay (`relay`): a message that
    /// no direct path carries costs about one a second while it is retried, so the default
    /// leaves room for many at once and still keeps the relay from being anyone's firehose.
    pub relays_per_user: Option<Rate>,
    /// Sessions one account may have (created and not closed), so that no account can take
    /// every session server there is.
    pub live_sessions_per_user: Option<usize>,
    /// Logins being checked count against their address's free failures (see
    /// `auth::LoginThrottle::may_start`); more from that address are answered `busy`. Off lets
    /// one address log thousands of accounts in at once.
    pub hold_parallel_logins: bool,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        Self {
            requests: Some(Rate::per_second(50)),
            registrations: Some(Rate::per_hour(5)),
            sessions_per_user: Some(Rate::per_hour(20)),
            sessions_per_address: Some(Rate::per_hour(50)),
            relays_per_user: Some(Rate::per_second(20)),
            live_sessions_per_user: Some(100),
            hold_parallel_logins: true,
        }
    }
}

impl AbuseLimits {
    /// No limits at all.
    pub fn off() -> Self {
        Self {
            requests: None,
            registrations: None,
            sessions_per_user: None,
            sessions_per_address: None,
            relays_per_user: None,
            live_sessions_per_user: None,
            hold_parallel_logins: false,
        }
    }
}

/// Most keys tracked per limit; beyond it the buckets that are full again are forgotten, then
/// the least recently used tenth.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key; a limit that is off admits everything and remembers nothing.
#[derive(Debug)]
pub(super) struct Buckets<K> {
    rate: Option<Rate>,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub(super) fn new(rate: Option<Rate>) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub(super) fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let capacity = f64::from(rate.count.max(1));
        let per_token = rate.period.as_secs_f64() / capacity;
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_KEYS {
            self.make_room(now, per_token, capacity);
        }
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed / per_token).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) * per_token))
        }
    }

    fn make_room(&mut self, now: Instant, per_token: f64, capacity: f64) {
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() / per_token < capacity
        });
        if self.buckets.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 10];
            self.buckets.retain(|_, b| b.at > cut);
        }
    }
}

/// How long `wait` is, for people: seconds up to two minutes, then minutes.
pub(super) fn in_words(wait: Duration) -> String {
    let secs = wait.as_secs().max(1);
    if secs <= 120 {
        format!("{secs} s")
    } else {
        format!("{} min", secs.div_ceil(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Some(Rate::per_hour(5)));
        for _ in 0..5 {
            assert_eq!(b.take(&"a", t0), Ok(()));
        }
        let wait = b.take(&"a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(720));
        assert_eq!(b.take(&"b", t0), Ok(()), "another key has its own bucket");
        assert_eq!(b.take(&"a", t0 + Duration::from_secs(720)), Ok(()));
        assert!(b.take(&"a", t0 + Duration::from_secs(720)).is_err());
        assert_eq!(in_words(wait), "12 min");
    }

    #[test]
    fn a_limit_that_is_off_admits_everything() {
        let mut b = Buckets::new(None);
        for _ in 0..1000 {
            assert_eq!(b.take(&1, Instant::now()), Ok(()));
        }
        assert!(b.buckets.is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Some(Rate::per_hour(1)));
        for i in 0..MAX_KEYS as u64 + 10 {
            let _ = b.take(&i, t0 + Duration::from_millis(i));
        }
        assert!(b.buckets.len() <= MAX_KEYS);
        assert!(b.buckets.contains_key(&(MAX_KEYS as u64 + 9)));
    }
}
