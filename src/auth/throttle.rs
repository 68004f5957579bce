//! Throttling of failed logins, per name and per address, in bounded memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Failed logins for one user name that are allowed without any delay. Enough
/// for honest typos.
pub const NAME_FREE_FAILURES: u32 = 5;

/// Failed logins from one address allowed without delay. Higher than
/// [`NAME_FREE_FAILURES`] because many honest users can share an address
/// (NAT, campus networks).
pub const IP_FREE_FAILURES: u32 = 20;

/// A record's failures are forgotten once this long has passed since its last
/// failure. Sliding rather than fixed, so a slow steady guesser stays
/// throttled.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Delay imposed after the first failure beyond the free allowance; doubles
/// with each further failure.
pub const BASE_DELAY: Duration = Duration::from_secs(1);

/// Upper bound for the delay, so a legitimate user locked out by someone
/// else's guessing can still get in within a minute.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Maximum number of tracked names, and separately of tracked addresses.
/// Bounds memory (roughly 100 bytes per entry) under a flood of distinct
/// names or addresses; when full, expired records are pruned and then the
/// least recently failing tenth are evicted.
pub const MAX_ENTRIES: usize = 100_000;

/// Failure history of one name or address.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
}

impl Record {
    /// Whether the record's failures have been forgotten at `now`.
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_failure) >= FAILURE_WINDOW
    }

    /// How long the caller must still wait at `now`, if at all.
    fn wait(&self, free: u32, now: Instant) -> Option<Duration> {
        if self.expired(now) || self.failures < free {
            return None;
        }
        let doublings = (self.failures - free).min(16);
        let delay = BASE_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
        let elapsed = now.saturating_duration_since(self.last_failure);
        delay.checked_sub(elapsed).filter(|d| !d.is_zero())
    }
}

/// Slows down password guessing by delaying logins after repeated failures,
/// tracked both per user name (case-insensitive; protects one account from a
/// distributed attack) and per client address (stops one client spraying
/// many names). IPv6 addresses are grouped by /64 since one host typically
/// controls a whole /64.
///
/// Usage: call [`check`](Self::check) before verifying the password and
/// refuse with "retry after" on `Err`; then call
/// [`record_failure`](Self::record_failure) or
/// [`record_success`](Self::record_success). Time is passed in, which keeps
/// it testable.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    names: HashMap<String, Record>,
    ips: HashMap<IpAddr, Record>,
    /// Logins being checked, per address: each may yet be a failure, so they count against the
    /// address's free allowance before their answer is known. Without this, a burst of guesses
    /// at many names all pass the check before the first failure is recorded.
    pending: HashMap<IpAddr, u32>,
}

impl LoginThrottle {
    /// Creates an empty throttle.
    pub fn new() -> LoginThrottle {
        LoginThrottle::default()
    }

    /// Returns `Err(retry_after)` if a login for `name` from `ip` must wait,
    /// taking the longer of the name's and the address's delays.
    pub fn check(&mut self, name: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let name_wait = self
            .names
            .get(&name.to_lowercase())
            .and_then(|r| r.wait(NAME_FREE_FAILURES, now));
        let ip_wait = self
            .ips
            .get(&ip_key(ip))
            .and_then(|r| r.wait(IP_FREE_FAILURES, now));
        match name_wait.max(ip_wait) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Whether another login from `ip` may be checked now. Logins still being
    /// checked count as failures until their answer is known, so a burst of
    /// guesses sent in parallel (at many names) gets no more than the free
    /// allowance checked before the throttle learns of them; beyond the
    /// allowance, one at a time.
    pub fn may_start(&self, ip: IpAddr, now: Instant) -> bool {
        let key = ip_key(ip);
        let pending = self.pending.get(&key).copied().unwrap_or(0);
        let failures = self
            .ips
            .get(&key)
            .filter(|r| !r.expired(now))
            .map_or(0, |r| r.failures);
        pending == 0 || failures.saturating_add(pending) < IP_FREE_FAILURES
    }

    /// Notes that a login from `ip` passed [`check`](Self::check) and is being
    /// checked; call [`finished`](Self::finished) when its answer is known.
    pub fn started(&mut self, ip: IpAddr) {
        *self.pending.entry(ip_key(ip)).or_insert(0) += 1;
    }

    /// The login from `ip` noted by [`started`](Self::started) is done (call
    /// the `record_*` method for its outcome as well).
    pub fn finished(&mut self, ip: IpAddr) {
        let key = ip_key(ip);
        if let Some(n) = self.pending.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&key);
            }
        }
    }

    /// Counts a failed login against both the name and the address.
    pub fn record_failure(&mut self, name: &str, ip: IpAddr, now: Instant) {
        bump(&mut self.names, name.to_lowercase(), now);
        bump(&mut self.ips, ip_key(ip), now);
    }

    /// Forgets the name's failures after a successful login, so the owner is
    /// not slowed by earlier typos. The address keeps its record: otherwise
    /// an attacker could reset it by logging into an account of their own
    /// between guesses.
    pub fn record_success(&mut self, name: &str, _ip: IpAddr) {
        self.names.remove(&name.to_lowercase());
    }

    /// Number of tracked names and addresses, for metrics and tests.
    pub fn len(&self) -> usize {
        self.names.len() + self.ips.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.ips.is_empty()
    }

    /// Drops every record whose failures have expired. Called automatically
    /// when a map fills up; callers may also run it periodically to return
    /// memory sooner.
    pub fn prune(&mut self, now: Instant) {
        self.names.retain(|_, r| !r.expired(now));
        self.ips.retain(|_, r| !r.expired(now));
    }
}

/// Adds a failure to `key`'s record, making room first if the map is full.
fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Record>, key: K, now: Instant) {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        make_room(map, now);
    }
    let rec = map.entry(key).or_insert(Record {
        failures: 0,
        last_failure: now,
    });
    if rec.expired(now) {
        rec.failures = 0;
    }
    rec.failures = rec.failures.saturating_add(1);
    rec.last_failure = rec.last_failure.max(now);
}

/// Prunes expired records; if that is not enough, evicts the tenth of
/// records with the oldest failures. Evicting a batch rather than one entry
/// keeps the O(n) scan rare under a sustained flood.
fn make_room<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Record>, now: Instant) {
    map.retain(|_, r| !r.expired(now));
    if map.len() < MAX_ENTRIES {
        return;
    }
    let mut times: Vec<Instant> = map.values().map(|r| r.last_failure).collect();
    let cut = times.len() / 10;
    let (_, &mut threshold, _) = times.select_nth_unstable(cut);
    map.retain(|_, r| r.last_failure > threshold);
}

/// The address used as a throttling key: IPv4-mapped IPv6 addresses count as
/// IPv4, and other IPv6 addresses are truncated to their /64 network.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP1: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn throttle_allows_free_failures_then_backs_off() {
        let mut th = LoginThrottle::new();
        let t0 = Instant::now();
        for i in 0..NAME_FREE_FAILURES {
            assert_eq!(th.check("alice", IP1, t0), Ok(()), "failure {i}");
            th.record_failure("alice", IP1, t0);
        }
        // 5 failures: 1 s delay, counted from the last failure.
        assert_eq!(th.check("alice", IP1, t0), Err(secs(1)));
        assert_eq!(
            th.check("alice", IP1, t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        assert_eq!(th.check("alice", IP1, t0 + secs(1)), Ok(()));
        // Case-insensitive, and applies from another address too.
        assert_eq!(th.check("ALICE", IP2, t0), Err(secs(1)));
        // Other names are unaffected.
        assert_eq!(th.check("bob", IP2, t0), Ok(()));

        // Each further failure doubles the delay, up to the cap.
        let mut now = t0;
        let mut expected = 2;
        for _ in 0..10 {
            now += secs(61);
            th.record_failure("alice", IP1, now);
            assert_eq!(
                th.check("alice", IP1, now),
                Err(secs(expected.min(MAX_DELAY.as_secs())))
            );
            expected *= 2;
        }
        assert_eq!(th.check("alice", IP1, now + MAX_DELAY), Ok(()));
    }

    #[test]
    fn throttle_window_expires_and_success_clears_name() {
        let mut th = LoginThrottle::new();
        let t0 = Instant::now();
        for _ in 0..NAME_FREE_FAILURES + 2 {
            th.record_failure("alice", IP1, t0);
        }
        assert!(th.check("alice", IP1, t0).is_err());
        // After the window the count starts over.
        let later = t0 + FAILURE_WINDOW;
        assert_eq!(th.check("alice", IP1, later), Ok(()));
        th.record_failure("alice", IP1, later);
        assert_eq!(th.check("alice", IP1, later), Ok(()));

        for _ in 0..NAME_FREE_FAILURES {
            th.record_failure("alice", IP1, later);
        }
        assert!(th.check("alice", IP1, later).is_err());
        th.record_success("Alice", IP1);
        assert_eq!(th.check("alice", IP1, later), Ok(()));
    }

    #[test]
    fn throttle_per_ip_spraying() {
        let mut th = LoginThrottle::new();
        let t0 = Instant::now();
        for i in 0..IP_FREE_FAILURES {
            let name = format!("user{i}");
            assert_eq!(th.check(&name, IP1, t0), Ok(()));
            th.record_failure(&name, IP1, t0);
        }
        // A fresh name from the same address is now delayed...
        assert_eq!(th.check("fresh", IP1, t0), Err(secs(1)));
        // ...a success does not reset the address...
        th.record_success("fresh", IP1);
        assert_eq!(th.check("fresh", IP1, t0), Err(secs(1)));
        // ...but another address is fine.
        assert_eq!(th.check("fresh", IP2, t0), Ok(()));
    }

    #[test]
    fn logins_in_progress_count_against_the_address() {
        let mut th = LoginThrottle::new();
        let t0 = Instant::now();
        // A parallel burst: the free allowance is handed out, then nothing until answers come.
        for i in 0..IP_FREE_FAILURES {
            assert!(th.may_start(IP1, t0), "{i}");
            th.started(IP1);
        }
        assert!(!th.may_start(IP1, t0));
        assert!(th.may_start(IP2, t0), "another address");
        for i in 0..IP_FREE_FAILURES {
            th.finished(IP1);
            th.record_failure(&format!("u{i}"), IP1, t0);
        }
        assert!(th.pending.is_empty());
        // Then the usual delay, and one at a time.
        assert_eq!(th.check("fresh", IP1, t0), Err(secs(1)));
        let t1 = t0 + secs(1);
        assert_eq!(th.check("fresh", IP1, t1), Ok(()));
        assert!(th.may_start(IP1, t1));
        th.started(IP1);
        assert!(!th.may_start(IP1, t1 + secs(30)));
    }

    #[test]
    fn throttle_groups_ipv6_by_prefix() {
        let mut th = LoginThrottle::new();
        let t0 = Instant::now();
        for i in 0..IP_FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            th.record_failure(&format!("u{i}"), ip, t0);
        }
        let same_net: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(th.check("x", same_net, t0).is_err());
        assert_eq!(th.check("x", other_net, t0), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), IP1);
    }

    #[test]
    fn throttle_memory_is_bounded() {
        let mut th = LoginThrottle::new();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES as u32 + 10 {
            let ip = IpAddr::V4(Ipv4Addr::from(i));
            // Spread failures over time so eviction has an order to follow.
            th.record_failure(
                &format!("n{i}"),
                ip,
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(th.names.len() <= MAX_ENTRIES);
        assert!(th.ips.len() <= MAX_ENTRIES);
        // The newest records survive eviction.
        assert!(th.names.contains_key(&format!("n{}", MAX_ENTRIES + 9)));
        assert!(!th.names.contains_key("n0"));

        // Pruning after the window drops everything.
        th.prune(t0 + secs(200) + FAILURE_WINDOW);
        assert!(th.is_empty());
    }
}
