//! The coordinator's long-term identity: an X25519 key pair, kept in its database, whose public
//! half clients pin the first time they meet it (as SSH pins host keys).
//!
//! The coordinator's requests are sealed for this key (`seal.rs`); clients learn it with the
//! `key` request and remember it. Users have identity key pairs of the same kind, whose public
//! halves travel in the roster and seal private messages.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey, StaticSecret};

/// A key pair. Its `Debug` shows only the public half.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

impl Identity {
    /// The key pair of a stored private key.
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_secret(rand::random())
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    /// The public key as people compare it: standard base64, 44 characters, as WireGuard shows
    /// its keys.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key())
    }

    /// The private key, for the channel that will use it.
    pub fn secret(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }
}

/// A public key as people compare it (see [`Identity::fingerprint`]).
pub fn fingerprint(public: &[u8; 32]) -> String {
    STANDARD.encode(public)
}

/// Why a fingerprint was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a key: expected 44 characters of base64 (32 bytes), as `confab coordinator --print-key` prints"
)]
pub struct BadFingerprint;

/// The public key a fingerprint stands for.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], BadFingerprint> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| BadFingerprint)?;
    bytes.try_into().map_err(|_| BadFingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_round_trips_and_hides_nothing_but_the_secret() {
        let id = Identity::from_secret([7; 32]);
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 44);
        assert_eq!(parse_fingerprint(&fp), Ok(id.public_key()));
        assert_eq!(parse_fingerprint(&format!(" {fp}\n")), Ok(id.public_key()));
        assert!(format!("{id:?}").contains(&fp));
        assert_ne!(id.public_key(), [7; 32]);
        assert_eq!(
            Identity::from_secret(id.secret()).public_key(),
            id.public_key()
        );
        assert_eq!(parse_fingerprint("hello"), Err(BadFingerprint));
        assert_eq!(
            parse_fingerprint(&STANDARD.encode([1u8; 31])),
            Err(BadFingerprint)
        );
    }
}
