//! Password hashing (argon2id) and checking, and a check that takes as long for a user who
//! does not exist.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
