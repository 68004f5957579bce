//! What the loop hands to jobs and gets back from them: whom to answer, and what finished.
//!
//! A leaf module: the request handlers (`accounts.rs`, `sessions.rs`) import the loop's
//! `Coordinator`, and the loop (`mod.rs`) takes these types from here, never from them, so no two
//! files import each other.

use crate::seal::Answerer;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use uuid::Uuid;

use super::directory::Listed;
use super::replies::RequestKey;
use crate::protocol::{ErrorBody, ResponseBody};
use crate::store::StoredMessage;

/// Whom to answer: the request's address and id, its key in the reply cache, and how to seal the
/// answer if the request came sealed.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub(super) from: SocketAddr,
    pub(super) id: u64,
    pub(super) key: RequestKey,
    pub(super) seal: Option<Answerer>,
}

impl Reply {
    /// What identifies the request across a coordinator group, so that a retry to another
    /// coordinator is not done twice: the digest of its bytes, for a sealed request only (its
    /// bytes are the client's alone: a fresh ephemeral key and nonce each; two people can send
    /// the same plain bytes).
    pub(super) fn once(&self) -> Option<[u8; 32]> {
        self.seal.as_ref().map(|_| self.key.digest())
    }
}

/// A job that finished, for the loop to apply and answer.
pub(super) enum Done {
    /// `register` or `login`.
    Account {
        reply: Reply,
        body: ResponseBody,
        /// For logins: the name, and whether it succeeded (`None` when an internal error says
        /// nothing about the password), for the throttle.
        login: Option<(String, Option<bool>)>,
    },
    /// A session's server is ready to start (or could not be); answers every request waiting
    /// for it.
    Started {
        session: Uuid,
        /// By a `create`: the session was not stored before.
        created: bool,
        result: Result<Start, ErrorBody>,
        /// A host the session was placed on that did not serve it in time.
        unresponsive: Option<Uuid>,
    },
    /// A sealed `create` was looked up among the requests the group did: `found` is the
    /// session it made, if another coordinator did it.
    CreateChecked {
        reply: Reply,
        name: Option<String>,
        token: String,
        found: Result<Option<uuid::Uuid>, ErrorBody>,
    },
    /// A `close` was written to the database (or could not be).
    Closed {
        reply: Reply,
        session: Uuid,
        by: String,
        result: Result<(), ErrorBody>,
    },
}

/// What a session's start found in the database.
pub(super) enum Start {
    /// The session is ours to serve.
    Here(Started),
    /// Another coordinator of the group serves it: the answer points there.
    Elsewhere(crate::protocol::SessionInfo),
}

/// A session whose server can start: its listener, and the history it starts with.
pub(super) struct Started {
    pub(super) listed: Listed,
    pub(super) listener: TcpListener,
    pub(super) seq: u64,
    pub(super) recent: Vec<StoredMessage>,
}
