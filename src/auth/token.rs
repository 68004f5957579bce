//! Login tokens: stateless, HMAC-signed, so a client can rejoin without its password.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

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
    /// The client key (X25519) the token is bound to: only a request sealed with it, or a
    /// session connection whose Noise handshake proved it, may use the token. `None` for a
    /// token issued to a plaintext login, which only `--insecure` servers take.
    pub key: Option<[u8; 32]>,
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
    /// Genuine, but issued to another client key than the one presenting it.
    #[error("this login token was issued to another client key; log in again")]
    WrongKey,
    /// Genuine, but from a plaintext login, and this server takes only encrypted ones.
    #[error(
        "this login token is not bound to a client key (issued in plaintext mode); log in again"
    )]
    Unbound,
}

impl Claims {
    /// Whether the holder of `key` (the key a request was sealed with, or a session handshake
    /// proved) may use the token: only the one it was issued to. Where plaintext is allowed
    /// (`insecure`, a debugging mode) anyone holding it may: a token sent in clear has already
    /// told the network everything the binding protects.
    pub fn usable_by(&self, key: Option<[u8; 32]>, insecure: bool) -> Result<(), TokenError> {
        match self.key {
            _ if insecure => Ok(()),
            Some(bound) if Some(bound) == key => Ok(()),
            Some(_) => Err(TokenError::WrongKey),
            None if insecure => Ok(()),
            None => Err(TokenError::Unbound),
        }
    }
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

    /// Issues a token for `user` valid until `expires`, bound to the client key `key` if
    /// given. Format: `b64url(payload) "." b64url(HMAC-SHA256(payload))` with
    /// `payload = user "\n" unix_seconds ["\n" b64url(key)]`; plain text rather than JSON
    /// keeps parsing trivial and the token short.
    pub fn issue(&self, user: &str, expires: DateTime<Utc>, key: Option<&[u8; 32]>) -> String {
        let mut payload = format!("{user}\n{}", expires.timestamp());
        if let Some(key) = key {
            payload.push('\n');
            payload.push_str(&URL_SAFE_NO_PAD.encode(key));
        }
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
        // Names never contain '\n' (they are checked before a token is issued), so the
        // fields are the pieces between newlines: two, or three with a key.
        let mut fields = payload.split('\n');
        let (Some(user), Some(secs), key, None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed);
        };
        let key = match key {
            None => None,
            Some(k) => Some(
                URL_SAFE_NO_PAD
                    .decode(k)
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or(TokenError::Malformed)?,
            ),
        };
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
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
        let tok = k.issue("Alice", at(3600), None);
        assert!(!tok.contains(['\n', '+', '/', '=']), "{tok}");
        let claims = k.verify(&tok, at(0)).unwrap();
        assert_eq!(
            claims,
            Claims {
                user: "Alice".into(),
                expires: at(3600),
                key: None,
            }
        );
        assert_eq!(k.verify(&tok, at(3599)).unwrap(), claims);
    }

    #[test]
    fn a_bound_token_names_its_key_and_cannot_be_moved_to_another() {
        let k = key(7);
        let tok = k.issue("alice", at(60), Some(&[9; 32]));
        assert_eq!(k.verify(&tok, at(0)).unwrap().key, Some([9; 32]));
        // Swapping the key in the payload breaks the signature.
        let moved = tamper(&tok, |p, _| {
            let at = p.len() - 2;
            p[at] ^= 1;
        });
        assert_eq!(k.verify(&moved, at(0)), Err(TokenError::BadSignature));
        let claims = k.verify(&tok, at(0)).unwrap();
        assert_eq!(claims.usable_by(Some([9; 32]), false), Ok(()));
        assert_eq!(
            claims.usable_by(Some([8; 32]), false),
            Err(TokenError::WrongKey)
        );
        assert_eq!(claims.usable_by(None, false), Err(TokenError::WrongKey));
        assert_eq!(claims.usable_by(None, true), Ok(()));
        let unbound = k.verify(&k.issue("alice", at(60), None), at(0)).unwrap();
        assert_eq!(
            unbound.usable_by(Some([9; 32]), false),
            Err(TokenError::Unbound)
        );
        assert_eq!(unbound.usable_by(None, true), Ok(()));
    }

    #[test]
    fn token_expiry() {
        let k = key(7);
        let tok = k.issue("alice", at(60), None);
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
        let tok = k.issue("alice", at(60), None);
        let other_user = tamper(&tok, |p, _| p[0] = b'm');
        assert_eq!(k.verify(&other_user, at(0)), Err(TokenError::BadSignature));
        let later = tamper(&tok, |p, _| *p.last_mut().unwrap() = b'9');
        assert_eq!(k.verify(&later, at(0)), Err(TokenError::BadSignature));
        let bad_sig = tamper(&tok, |_, s| s[5] ^= 1);
        assert_eq!(k.verify(&bad_sig, at(0)), Err(TokenError::BadSignature));
        let short_sig = tamper(&tok, |_, s| s.truncate(16));
        assert_eq!(k.verify(&short_sig, at(0)), Err(TokenError::Malformed));
        // Splicing another user's signature onto our payload fails too.
        let bob = k.issue("bob", at(60), None);
        let spliced = format!(
            "{}.{}",
            tok.split_once('.').unwrap().0,
            bob.split_once('.').unwrap().1
        );
        assert_eq!(k.verify(&spliced, at(0)), Err(TokenError::BadSignature));
    }

    #[test]
    fn token_from_other_key_is_rejected() {
        let tok = key(1).issue("alice", at(60), None);
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
}
