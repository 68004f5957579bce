//! Authentication building blocks: name validation, password hashing, signed
//! login tokens and throttling of failed logins.
//!
//! Everything here is pure and synchronous. Password hashing is deliberately
//! slow (tens of milliseconds), so async callers should run
//! [`hash_password`], [`verify_password`] and [`dummy_verify`] on a blocking
//! thread.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// Longest accepted user name, in characters. Short enough to fit in a chat
/// line prefix.
pub const MAX_USER_NAME_LEN: usize = 32;

/// Longest accepted session name, in characters. Sessions get more room than
/// users because they describe a topic.
pub const MAX_SESSION_NAME_LEN: usize = 64;

/// Why a user or session name was rejected. The `Display` text is meant to be
/// shown to the user as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name must not be empty")]
    Empty,
    /// The name has more than `max` characters.
    #[error("name must be at most {max} characters long")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The name contains a character outside the allowed set.
    #[error("name may only contain letters, digits, '_', '-' and '.' (found {0:?})")]
    InvalidChar(char),
}

/// Checks a user name: 1 to [`MAX_USER_NAME_LEN`] ASCII letters, digits, `_`,
/// `-` or `.`. The restricted alphabet rules out look-alike Unicode names,
/// control characters and separators that would break the line protocol or
/// token format.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    validate_name(name, MAX_USER_NAME_LEN)
}

/// Checks a session name: same alphabet as user names (see
/// [`validate_user_name`]) but up to [`MAX_SESSION_NAME_LEN`] characters.
pub fn validate_session_name(name: &str) -> Result<(), NameError> {
    validate_name(name, MAX_SESSION_NAME_LEN)
}

fn validate_name(name: &str, max: usize) -> Result<(), NameError> {
    // Report a bad character before length so that a long pasted line of
    // garbage gets the more useful message.
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::InvalidChar(c));
    }
    // All characters are ASCII now, so bytes == characters.
    match name.len() {
        0 => Err(NameError::Empty),
        n if n > max => Err(NameError::TooLong { max }),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------

/// Failure to hash a password. Only happens on internal errors (e.g. the OS
/// random number generator failing), never because of what the user typed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The argon2 implementation reported an error.
    #[error("password hashing failed: {0}")]
    Hash(#[source] argon2::password_hash::Error),
}

/// Argon2id cost of new password hashes. The default is the crate's recommendation (19 MiB,
/// 2 passes, as OWASP advises); a lower cost exists only so that tests and benchmarks can register
/// thousands of accounts quickly. Stored hashes carry their own parameters, so changing the cost
/// never breaks existing accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over that memory.
    pub iterations: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        Self {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
        }
    }
}

impl PasswordCost {
    /// The cheapest cost argon2 allows: for tests and benchmarks only, never for real accounts.
    pub const INSECURE_FAST: PasswordCost = PasswordCost {
        memory_kib: 8,
        iterations: 1,
    };
}

/// Hashes a password with argon2id (the crate's recommended default
/// parameters) and a fresh random salt, returning a self-describing PHC
/// string (`$argon2id$v=19$m=...`) to store. Parameters live inside the
/// string, so they can be raised later without breaking old hashes.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    hash_password_with(password, PasswordCost::default())
}

/// [`hash_password`] at a chosen cost.
pub fn hash_password_with(password: &str, cost: PasswordCost) -> Result<String, AuthError> {
    let params = argon2::Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| AuthError::Hash(e.into()))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(AuthError::Hash)
}

/// Checks a password against a stored PHC string. Returns `false` for a
/// wrong password and also for an unparsable hash, because callers can only
/// sensibly reject the login in either case.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Spends the same time as a [`verify_password`] call that fails, so a login
/// for an unknown user is as slow as one with a wrong password and response
/// times do not reveal which names are registered. Call it whenever the user
/// lookup finds nothing.
///
/// The dummy hash is computed on first use with the same parameters as
/// [`hash_password`]; if stored hashes ever use different parameters, the
/// timings will differ accordingly.
pub fn dummy_verify(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| {
        // A fixed salt is fine: this hash protects nothing, it only burns time.
        Argon2::default()
            .hash_password_with_salt(b"confab dummy password", b"confab-dummy-salt")
            .map(|h| h.to_string())
            .expect("argon2 with default parameters and a 17-byte salt cannot fail")
    });
    // The result is irrelevant; `black_box` keeps the work from being elided.
    std::hint::black_box(verify_password(password, phc));
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// Key for issuing and checking login tokens, which let a client reconnect
/// without sending its password again. Tokens are stateless (HMAC-signed), so
/// servers only need the shared secret, typically from
/// `Store::token_secret`. Changing the secret invalidates every token.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl fmt::Debug for TokenKey {
    /// Never prints the secret, so keys can sit inside structs that get
    /// logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// What a valid token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user the token was issued to, as passed to [`TokenKey::issue`].
    pub user: String,
    /// When the token stops being valid (whole seconds; sub-second precision
    /// is dropped when issuing).
    pub expires: DateTime<Utc>,
}

/// Why a token was rejected. The `Display` text is meant for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all (bad structure, base64 or payload).
    #[error("malformed login token; log in again")]
    Malformed,
    /// The signature does not match: the token was altered or was issued
    /// with a different secret.
    #[error("invalid login token; log in again")]
    BadSignature,
    /// The token was genuine but is past its expiry time.
    #[error("token expired; log in again")]
    Expired,
}

impl TokenKey {
    /// Wraps a 32-byte secret (256 bits, the HMAC-SHA256 block-size sweet
    /// spot).
    pub fn new(secret: [u8; 32]) -> TokenKey {
        TokenKey(secret)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// Issues a token for `user` valid until `expires`. Format:
    /// `b64url(payload) "." b64url(HMAC-SHA256(payload))` with
    /// `payload = user "\n" unix_seconds`; plain text rather than JSON keeps
    /// parsing trivial and the token short.
    pub fn issue(&self, user: &str, expires: DateTime<Utc>) -> String {
        let payload = format!("{user}\n{}", expires.timestamp());
        let tag = self.mac().chain_update(payload.as_bytes()).finalize();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.into_bytes())
        )
    }

    /// Checks a token's signature (in constant time) and expiry, returning
    /// its claims. The signature is checked before anything in the payload
    /// is interpreted, so forged tokens learn nothing beyond
    /// [`TokenError::BadSignature`].
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::Malformed)?;
        // A tag of the wrong length cannot be an HMAC-SHA256 output at all;
        // the length is public, so rejecting early leaks nothing.
        if payload.is_empty() || tag.len() != 32 {
            return Err(TokenError::Malformed);
        }
        self.mac()
            .chain_update(&payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;

        let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        // The expiry never contains '\n', so splitting at the last one is
        // unambiguous even for a user string containing newlines.
        let (user, secs) = payload.rsplit_once('\n').ok_or(TokenError::Malformed)?;
        let expires = secs
            .parse::<i64>()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or(TokenError::Malformed)?;
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            user: user.to_owned(),
            expires,
        })
    }
}

// ---------------------------------------------------------------------------
// Login throttling
// ---------------------------------------------------------------------------

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
    use chrono::TimeZone;
    use std::net::Ipv4Addr;

    // ---- names ----

    #[test]
    fn user_name_validation() {
        assert_eq!(validate_user_name("alice"), Ok(()));
        assert_eq!(validate_user_name("A.b-c_9"), Ok(()));
        assert_eq!(validate_user_name(&"x".repeat(32)), Ok(()));
        assert_eq!(validate_user_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_user_name(&"x".repeat(33)),
            Err(NameError::TooLong { max: 32 })
        );
        assert_eq!(validate_user_name("bob!"), Err(NameError::InvalidChar('!')));
        assert_eq!(
            validate_user_name("with space"),
            Err(NameError::InvalidChar(' '))
        );
        assert_eq!(validate_user_name("é"), Err(NameError::InvalidChar('é')));
        assert_eq!(
            validate_user_name("a\nb"),
            Err(NameError::InvalidChar('\n'))
        );
    }

    #[test]
    fn session_name_validation() {
        assert_eq!(validate_session_name(&"s".repeat(64)), Ok(()));
        assert_eq!(
            validate_session_name(&"s".repeat(65)),
            Err(NameError::TooLong { max: 64 })
        );
        assert_eq!(validate_session_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_session_name("#general"),
            Err(NameError::InvalidChar('#'))
        );
    }

    #[test]
    fn name_error_messages_are_readable() {
        assert_eq!(
            NameError::InvalidChar('!').to_string(),
            "name may only contain letters, digits, '_', '-' and '.' (found '!')"
        );
        assert_eq!(
            NameError::TooLong { max: 32 }.to_string(),
            "name must be at most 32 characters long"
        );
    }

    // ---- passwords ----

    #[test]
    fn password_hash_round_trip() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("correct horsE", &phc));
        assert!(!verify_password("", &phc));
        // Random salt: same password, different hash.
        assert_ne!(hash_password("correct horse").unwrap(), phc);
    }

    #[test]
    fn garbage_hash_never_verifies() {
        assert!(!verify_password("x", ""));
        assert!(!verify_password("x", "not a phc string"));
        assert!(!verify_password("x", "$argon2id$v=19$m=19456,t=2,p=1$bad"));
    }

    #[test]
    fn dummy_verify_runs() {
        // Twice: the second call uses the cached hash.
        dummy_verify("whatever");
        dummy_verify("whatever");
    }

    // ---- tokens ----

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn key(b: u8) -> TokenKey {
        TokenKey::new([b; 32])
    }

    /// Re-encodes `token` after letting `f` modify its decoded parts.
    fn tamper(token: &str, f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>)) -> String {
        let (p, s) = token.split_once('.').unwrap();
        let mut p = URL_SAFE_NO_PAD.decode(p).unwrap();
        let mut s = URL_SAFE_NO_PAD.decode(s).unwrap();
        f(&mut p, &mut s);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(p),
            URL_SAFE_NO_PAD.encode(s)
        )
    }

    #[test]
    fn token_round_trip() {
        let k = key(7);
        let tok = k.issue("Alice", at(3600));
        assert!(!tok.contains(['\n', '+', '/', '=']), "{tok}");
        let claims = k.verify(&tok, at(0)).unwrap();
        assert_eq!(
            claims,
            Claims {
                user: "Alice".into(),
                expires: at(3600)
            }
        );
        assert_eq!(k.verify(&tok, at(3599)).unwrap(), claims);
    }

    #[test]
    fn token_expiry() {
        let k = key(7);
        let tok = k.issue("alice", at(60));
        assert_eq!(k.verify(&tok, at(60)), Err(TokenError::Expired));
        assert_eq!(k.verify(&tok, at(1000)), Err(TokenError::Expired));
        assert_eq!(
            TokenError::Expired.to_string(),
            "token expired; log in again"
        );
    }

    #[test]
    fn tampered_tokens_are_rejected() {
        let k = key(7);
        let tok = k.issue("alice", at(60));
        let other_user = tamper(&tok, |p, _| p[0] = b'm');
        assert_eq!(k.verify(&other_user, at(0)), Err(TokenError::BadSignature));
        let later = tamper(&tok, |p, _| *p.last_mut().unwrap() = b'9');
        assert_eq!(k.verify(&later, at(0)), Err(TokenError::BadSignature));
        let bad_sig = tamper(&tok, |_, s| s[5] ^= 1);
        assert_eq!(k.verify(&bad_sig, at(0)), Err(TokenError::BadSignature));
        let short_sig = tamper(&tok, |_, s| s.truncate(16));
        assert_eq!(k.verify(&short_sig, at(0)), Err(TokenError::Malformed));
        // Splicing another user's signature onto our payload fails too.
        let bob = k.issue("bob", at(60));
        let spliced = format!(
            "{}.{}",
            tok.split_once('.').unwrap().0,
            bob.split_once('.').unwrap().1
        );
        assert_eq!(k.verify(&spliced, at(0)), Err(TokenError::BadSignature));
    }

    #[test]
    fn token_from_other_key_is_rejected() {
        let tok = key(1).issue("alice", at(60));
        assert_eq!(key(2).verify(&tok, at(0)), Err(TokenError::BadSignature));
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        let k = key(7);
        for garbage in ["", ".", "nodot", "!!!.???", "a.b.c", "YWxpY2U"] {
            assert_eq!(
                k.verify(garbage, at(0)),
                Err(TokenError::Malformed),
                "{garbage:?}"
            );
        }
        // Correctly signed but with a payload that is not "user\nsecs".
        let sign = |payload: &[u8]| {
            let tag = k.mac().chain_update(payload).finalize().into_bytes();
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(tag)
            )
        };
        for payload in [
            &b"alice"[..],
            b"alice\nsoon",
            b"\xff\n1",
            b"a\n99999999999999999",
        ] {
            assert_eq!(
                k.verify(&sign(payload), at(0)),
                Err(TokenError::Malformed),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn token_key_debug_hides_secret() {
        let dbg = format!("{:?}", key(0xab));
        assert_eq!(dbg, "TokenKey(<redacted>)");
        assert!(!dbg.contains("171"));
    }

    // ---- throttle ----

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
