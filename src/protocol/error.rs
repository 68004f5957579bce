//! Errors every transport shares: a code for programs and a message for people.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes, shared by every transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, or not a message this side understands.
    Malformed,
    /// The datagram or line is larger than the documented limit.
    TooLarge,
    /// No session matches the given id or name.
    SessionNotFound,
    /// An id prefix matches more than one session.
    Ambiguous,
    /// The session name, or the member name within a session, is in use.
    NameTaken,
    /// A name breaks the naming rules.
    InvalidName,
    /// A text is empty or too long.
    InvalidText,
    /// A limit of the server was reached (sessions, members).
    Full,
    /// The member sent faster than allowed.
    RateLimited,
    /// A message arrived out of turn (for example `say` before `hello`).
    Unexpected,
    /// No token, or a token that is forged, altered or expired.
    Unauthorized,
    /// Login failed: unknown user or wrong password (deliberately not saying which).
    InvalidCredentials,
    /// The password is empty or too long.
    InvalidPassword,
    /// Too many failed logins; wait and try again.
    Throttled,
    /// Allowed only to someone else (closing a session one did not create).
    Forbidden,
    /// A rejoining member missed more lines than the server replays; `history` has them.
    Gap,
    /// The server has too much of this kind of work at once (password checks); nothing was
    /// done; try again in a moment.
    Busy,
    /// A coordinator request shorter than `limits::MIN_REQUEST` bytes: pad it with spaces.
    TooSmall,
    /// A plain (unsealed) coordinator request other than `key`, to a coordinator that takes
    /// only sealed ones (one not started with `--insecure`); or a plaintext connection to a
    /// session server that takes only encrypted ones.
    NotSealed,
    /// An announced identity key is not 32 bytes in standard base64.
    InvalidKey,
    /// A per-user or per-address quota was reached (registrations or sessions created per hour,
    /// sessions kept); the message says which, and when to try again.
    Quota,
    /// The user looked up (or relayed to) is not online: in no running session, and not
    /// announced (or, for `relay`, not announced).
    NotOnline,
    /// Something failed inside the server.
    Internal,
}

/// An error answer: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened, in words a person can act on.
    pub message: String,
    /// For `busy`: how long to wait before trying again, in milliseconds. A retry that waits this
    /// long (plus some random spread, so that clients refused together do not return together)
    /// is likely to find room; one that comes sooner is likely to be refused again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// An error with its message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A `busy` answer: nothing was done, and a retry after `after` is likely to find room.
    pub fn busy(message: impl Into<String>, after: std::time::Duration) -> Self {
        Self {
            retry_after_ms: Some(after.as_millis().try_into().unwrap_or(u64::MAX)),
            ..Self::new(ErrorCode::Busy, message)
        }
    }

    /// The wait a `busy` answer asks for, if it names one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_ms.map(std::time::Duration::from_millis)
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
