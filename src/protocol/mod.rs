//! Every message confab puts on the wire, on all three transports.
//!
//! This module is the code twin of `protocol.md`: if a field changes here, it changes there. All
//! messages are JSON objects; the coordinator speaks one object per UDP datagram, session servers
//! speak newline-delimited objects over TCP, and clients speak one object per UDP datagram to each
//! other for private messages.

mod coordinator;
mod error;
mod peer;
mod session;
#[cfg(test)]
mod tests;

pub use coordinator::{
    DirectoryEntry, Password, Push, Request, RequestBody, Response, ResponseBody, SessionInfo,
};
pub use error::{ErrorBody, ErrorCode};
pub use peer::PeerMsg;
pub use session::{
    ByeReason, ChatLine, ClientMsg, Departure, LeaveReason, Member, RateLimit, ServerMsg,
};

/// Limits that a peer can rely on; protocol.md and README.md list the same numbers.
pub mod limits {
    use std::time::Duration;

    /// Largest datagram the coordinator reads or writes; an answer never exceeds it, so it travels
    /// unfragmented over any path with the IPv6 minimum MTU.
    pub const MAX_DATAGRAM: usize = 1200;
    /// Largest `relay` request: the one coordinator request that may exceed `MAX_DATAGRAM`,
    /// as it carries a whole private datagram (up to `MAX_DATAGRAM`) in base64 beside a token.
    /// It and the `relayed` datagram it becomes may be fragmented by IP on the way.
    pub const MAX_RELAY_REQUEST: usize = 2048;
    /// Most local endpoints a member may announce in `hello`.
    pub const MAX_LOCAL_ENDPOINTS: usize = 4;
    /// Smallest coordinator request that is run. A stranger can forge its source address, so
    /// the coordinator never sends more than 3× what it received (QUIC's anti-amplification
    /// rule); at a third of `MAX_DATAGRAM` every answer fits. Clients pad with spaces, which
    /// JSON ignores ([`pad_request`](super::pad_request)).
    pub const MIN_REQUEST: usize = MAX_DATAGRAM / 3;
    /// Longest line a session server accepts from a member, newline excluded.
    pub const MAX_LINE: usize = 8 * 1024;
    /// Longest line a client accepts from a session server (a welcome carries the whole roster).
    pub const MAX_SERVER_LINE: usize = 4 * 1024 * 1024;
    /// Longest group chat text, in bytes of UTF-8.
    pub const MAX_TEXT: usize = 4000;
    /// Longest private message text, in bytes: the whole datagram must stay under `MAX_DATAGRAM`.
    pub const MAX_DM_TEXT: usize = 800;
    /// Longest user name, in characters.
    pub const MAX_USER_NAME: usize = crate::auth::MAX_USER_NAME_LEN;
    /// Longest session name, in characters.
    pub const MAX_SESSION_NAME: usize = crate::auth::MAX_SESSION_NAME_LEN;
    /// Largest session whose roster is sent whole: up to this many members, a welcome carries
    /// everyone and presence notices name who came and went; above it a welcome carries no
    /// roster, notices carry only the count, and clients look members up when they need them.
    /// This keeps a burst of joins into a big session from costing members × joins.
    pub const FULL_ROSTER_MAX: usize = 1000;
    /// How often a large session tells its members the member count (at most).
    pub const LARGE_PRESENCE_INTERVAL: Duration = Duration::from_millis(250);
    /// Longest password, in bytes.
    pub const MAX_PASSWORD: usize = 512;
    /// Most history lines one request returns.
    pub const MAX_HISTORY: usize = 500;
    /// How long a new TCP connection may take to say hello.
    pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Pads an encoded coordinator request with spaces to [`limits::MIN_REQUEST`] bytes, so that the
/// coordinator may answer it in full (see `MIN_REQUEST` for why).
pub fn pad_request(request: &mut Vec<u8>) {
    if request.len() < limits::MIN_REQUEST {
        request.resize(limits::MIN_REQUEST, b' ');
    }
}

/// Checks a group chat line as every session server does, so a client can refuse it before it
/// goes out and a member gets the same words either way.
pub fn check_text(text: &str) -> Result<(), ErrorBody> {
    if text.trim().is_empty() {
        return Err(ErrorBody::new(ErrorCode::InvalidText, "empty message"));
    }
    if text.len() > limits::MAX_TEXT {
        return Err(ErrorBody::new(
            ErrorCode::InvalidText,
            format!(
                "message too long: {} bytes, limit {}",
                text.len(),
                limits::MAX_TEXT
            ),
        ));
    }
    Ok(())
}
