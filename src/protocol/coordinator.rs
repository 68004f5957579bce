//! What clients and the coordinator say to each other: one JSON object per UDP datagram.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ErrorBody;
use super::session::Member;

/// A request to the coordinator: one per datagram.
///
/// `id` is chosen by the client and unique per client socket; a repeated request (the same bytes
/// from the same address) gets the cached answer instead of running again, which makes retries
/// safe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// Client-chosen request id, echoed in the response.
    pub id: u64,
    /// What is asked.
    #[serde(flatten)]
    pub body: RequestBody,
}

impl<'de> Deserialize<'de> for Request {
    /// Like the derived form, except that `op` must be a string: serde takes an integer tag as
    /// the variant's index, so `{"op":1}` would be read as `login`, and a request must mean only
    /// what it says.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Raw {
            id: u64,
            #[serde(flatten)]
            body: RequestBody,
        }
        let value = serde_json::Value::deserialize(d)?;
        if let Some(op) = value.get("op")
            && !op.is_string()
        {
            return Err(D::Error::custom(format!("op must be a string, not {op}")));
        }
        let raw = Raw::deserialize(value).map_err(D::Error::custom)?;
        Ok(Request {
            id: raw.id,
            body: raw.body,
        })
    }
}

/// The operations the coordinator offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// Create an account.
    Register {
        /// The name to register (1–32 of letters, digits, `_`, `-`, `.`; unique without regard
        /// to case).
        user: String,
        /// The password; stored only as an argon2id hash.
        password: Password,
    },
    /// Exchange a name and password for a token.
    Login {
        /// The registered name, in any case.
        user: String,
        /// The password.
        password: Password,
    },
    /// Start a new session and its server.
    Create {
        /// Optional unique name; without one the session is known by its id only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// A token from `login`.
        token: String,
    },
    /// Look up a session to join, by id, unique id prefix, or name; starts its server if it was
    /// closed for being idle.
    Join {
        /// Id, id prefix (at least 4 characters) or name.
        session: String,
        /// A token from `login`.
        token: String,
    },
    /// Remove a session for good, with its history. Only its creator may.
    Close {
        /// Id, id prefix or name.
        session: String,
        /// A token from `login`.
        token: String,
    },
    /// One page of the session directory.
    List {
        /// Index of the first entry wanted; the previous page's `next`.
        #[serde(default)]
        cursor: usize,
    },
    /// One page of who is online: in some running session now.
    Online {
        /// Index of the first name wanted; the previous page's `next`.
        #[serde(default)]
        cursor: usize,
        /// A token from `login`: only users see who is online.
        token: String,
    },
    /// The client says it is online, and where peers reach it: from login on, every
    /// `ttl / 3` seconds of the answer, whether or not it is in a session. Besides listing it in
    /// `online` and `peer`, this keeps the way through the client's NAT to the coordinator open,
    /// which is the way `relay` comes back in.
    Announce {
        /// A token from `login`.
        token: String,
        /// The client's identity key (X25519, standard base64), as in a session `hello`.
        key: String,
        /// The endpoint peers should send to, when not the one this request came from (a port
        /// forward); absent means the observed one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        udp: Option<SocketAddr>,
        /// The client's addresses on its own network, as in `hello` (at most 4).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        local: Vec<SocketAddr>,
    },
    /// How to reach an online user (in a session, or announced): their endpoint, identity key
    /// and local addresses, to send them private messages without sharing a session.
    Peer {
        /// The user wanted.
        user: String,
        /// A token from `login`: only users look others up.
        token: String,
    },
    /// Pass a sealed private datagram to an online, announced user: the coordinator sends it
    /// on as a `relayed` datagram, stores nothing, and answers only a refusal (a relay that
    /// went through is as silent as the UDP datagram it stands for). Rate-limited per user.
    Relay {
        /// The recipient.
        to: String,
        /// The sealed datagram, standard base64, at most 1200 bytes decoded.
        data: String,
        /// A token from `login`.
        token: String,
    },
    /// The coordinator's public key, for a client to pin.
    Key,
}

impl RequestBody {
    /// The login token the request carries, if it is of a kind that needs one.
    pub fn token(&self) -> Option<&str> {
        match self {
            RequestBody::Create { token, .. }
            | RequestBody::Join { token, .. }
            | RequestBody::Close { token, .. }
            | RequestBody::Online { token, .. }
            | RequestBody::Announce { token, .. }
            | RequestBody::Peer { token, .. }
            | RequestBody::Relay { token, .. } => Some(token),
            RequestBody::Register { .. }
            | RequestBody::Login { .. }
            | RequestBody::List { .. }
            | RequestBody::Key => None,
        }
    }
}

/// A password on its way to the coordinator. Its `Debug` form is redacted, so a request that
/// ends up in a log line never carries the password with it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The coordinator's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id, or `null` when the request was too broken to carry one.
    pub id: Option<u64>,
    /// The UDP address the coordinator saw the request come from, as STUN reports it: the client
    /// advertises it to peers so that private messages reach it through simple NATs.
    pub observed: SocketAddr,
    /// The answer itself.
    #[serde(flatten)]
    pub body: ResponseBody,
}

/// The answers the coordinator gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBody {
    /// Answer to `register`.
    Registered {
        /// The name as registered.
        user: String,
    },
    /// Answer to `login`.
    LoggedIn {
        /// The name as registered (its case may differ from what was typed).
        user: String,
        /// Goes with `create`, `join`, `close` and the session server's `hello`.
        token: String,
        /// After this the token is refused; log in again.
        expires: DateTime<Utc>,
    },
    /// Answer to `create` and `join`: where the session is served.
    Session {
        /// The session.
        session: SessionInfo,
    },
    /// Answer to `close`.
    Closed {
        /// The session that is gone.
        session: Uuid,
    },
    /// Answer to `list`: one page of the directory.
    Sessions {
        /// The entries of this page.
        sessions: Vec<DirectoryEntry>,
        /// Cursor of the next page, absent on the last page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<usize>,
        /// Number of sessions in the whole directory.
        total: usize,
    },
    /// Answer to `online`: one page of who is in some running session now.
    Online {
        /// Their names as registered, sorted without regard to case.
        users: Vec<String>,
        /// Cursor of the next page, absent on the last page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<usize>,
        /// How many are online in all.
        total: usize,
    },
    /// Answer to `announce`.
    Announced {
        /// Seconds the announcement counts; announce again within a third of it.
        ttl: u64,
    },
    /// Answer to `peer`: how to reach the user.
    Peer {
        /// Their name as registered, endpoint, identity key and local addresses, as a session
        /// roster gives them.
        member: Member,
    },
    /// Answer to `key`: the coordinator's long-term public key (X25519), standard base64.
    Key {
        /// The key, as `confab coordinator --print-key` prints it.
        key: String,
    },
    /// The request failed.
    Error(ErrorBody),
}

/// What the coordinator sends a client unasked, to the address its announcements come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    /// A sealed private datagram another user asked the coordinator to `relay`.
    Relayed {
        /// The sender, as its token names it.
        from: String,
        /// The datagram, standard base64.
        data: String,
    },
}

/// Where a session lives and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Stable identifier.
    pub id: Uuid,
    /// Unique name, if it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP address of its session server.
    pub server: SocketAddr,
    /// The session server's Noise static key (X25519, standard base64): the client connects
    /// only to a server that proves it (protocol.md, "Encrypted session connections").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
    /// Who created it (and alone may close it).
    pub creator: String,
    /// When it was created.
    pub created: DateTime<Utc>,
}

/// One line of the directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// Stable identifier.
    pub id: Uuid,
    /// Unique name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP address of its server; absent while the session is idle and its server stopped
    /// (joining starts it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddr>,
    /// Who created it.
    pub creator: String,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// How many members are in it now.
    pub member_count: usize,
    /// Member names, possibly only the first few so that the page fits one datagram;
    /// `member_count` is always exact.
    pub members: Vec<String>,
}
