//! What can go wrong for a client, in one enum that every part of the client returns.
//!
//! It lives below the client's other files (the requests, the private messages, the session
//! link all return it) so that none of them has to import the facade that uses them.

use std::net::SocketAddr;

use uuid::Uuid;

use crate::protocol::ErrorBody;

/// Everything that can go wrong for a client, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The coordinator never answered.
    #[error("the coordinator at {addr} did not answer after {attempts} tries")]
    CoordinatorTimeout {
        /// Its address.
        addr: SocketAddr,
        /// How often we asked.
        attempts: u32,
    },
    /// The coordinator or the session server said no.
    #[error("{0}")]
    Refused(ErrorBody),
    /// The session server could not be reached.
    #[error("cannot connect to the session server at {addr}: {source}")]
    Connect {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The session server went away.
    #[error("the session server closed the connection: {0}")]
    Closed(String),
    /// The operation needs a session.
    #[error("not in a session; use /start or /join first")]
    NotInSession,
    /// `join` named the session the client is already in, so nothing was done.
    #[error("you are already in session {0}")]
    AlreadyInSession(String),
    /// The operation needs a login.
    #[error("not logged in")]
    NotLoggedIn,
    /// `@name` named nobody in our session, and nobody online by that name.
    #[error("no one named {0} is in this session or online")]
    NoSuchMember(String),
    /// That member takes no private messages (it joined without a UDP endpoint).
    #[error("{0} does not take private messages")]
    NoPrivateMessages(String),
    /// The peer never acknowledged a private message. A copy may still arrive late (delayed in
    /// the network, or at a peer that was frozen); the client then says
    /// [`Event::DeliveredLate`](super::Event::DeliveredLate) with the same `id`.
    #[error("private message to {to} was not delivered: no answer after {attempts} tries")]
    NotDelivered {
        /// Who it was for.
        to: String,
        /// How often we sent it.
        attempts: u32,
        /// The message's id.
        id: Uuid,
    },
    /// The session ended for us (it was closed) while a private message to one of its members
    /// was still unacknowledged; it is not sent again.
    #[error("private message to {to} was given up: the session ended before {to} acknowledged it")]
    SessionEnded {
        /// Who it was for.
        to: String,
    },
    /// That member announced no identity key, so a private message cannot be sealed for it.
    #[error(
        "{0} has no identity key (an old or bare client), so private messages to {0} cannot be sealed"
    )]
    NoPeerKey(String),
    /// The member's identity key is not the one pinned for that name: it may be someone else
    /// (or the server may be lying about the roster). Nothing is sent until the user compares
    /// the key by other means and trusts it ([`Client::trust`](super::Client::trust)).
    #[error(
        "{user}'s key has changed (pinned {pinned}, now {now}); compare it with {user} by other means, then trust it to send"
    )]
    PeerKeyChanged {
        /// Whose key.
        user: String,
        /// The key pinned before.
        pinned: String,
        /// The key the session gives now.
        now: String,
    },
    /// Something the user typed breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// An answer that does not fit the question.
    #[error("unexpected answer from the coordinator")]
    Unexpected,
    /// Socket trouble.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}
