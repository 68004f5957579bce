//! What a member and its session server say to each other: newline-delimited JSON over TCP.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ErrorBody;

/// A member as everyone else sees it: a name and where to send private messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The member's user name.
    pub user: String,
    /// The UDP endpoint that receives the member's private messages; absent for a member that
    /// takes none (a bot, a listener at `nc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<SocketAddr>,
    /// The member's identity key (X25519, standard base64), which its private messages are
    /// sealed with (protocol.md, "Sealed private messages"); absent for a member that has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The endpoints of the member's UDP socket on its own network, for peers behind the same
    /// NAT (which seldom forwards to its own public address); at most 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<SocketAddr>,
}

impl Member {
    /// The identity key it announced, if it is one (the server checks it, but a roster is only
    /// as good as the server that sent it).
    pub fn public_key(&self) -> Option<[u8; 32]> {
        let key = self.key.as_deref()?;
        crate::identity::parse_fingerprint(key).ok()
    }
}

/// Why a member left a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The member said `leave`.
    Left,
    /// The connection closed or broke without a goodbye.
    Disconnected,
    /// The member did not read: its queue did not drain within the drain timeout, or passed its
    /// byte budget.
    TooSlow,
}

impl LeaveReason {
    /// The name on the wire (`too_slow`), which logs use too so that one grep finds both.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::TooSlow => "too_slow",
        }
    }
}

/// What happened, as words that follow the member's name: "bob was dropped (too slow)".
impl std::fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::TooSlow => "was dropped (too slow)",
        })
    }
}

/// Messages a member sends to its session server, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// The first line of every connection.
    Hello {
        /// Name to appear under; must be the token's user.
        user: String,
        /// A token from the coordinator's `login`.
        token: String,
        /// UDP endpoint for private messages; without one, the member takes none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        udp: Option<SocketAddr>,
        /// The member's identity key (X25519, standard base64), passed to the others in the
        /// roster beside `udp`, so that private messages can be sealed for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The member's UDP socket's endpoints on its own network (at most 4), passed on in
        /// the roster for peers behind the same NAT.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        local: Vec<SocketAddr>,
        /// Send this many of the newest group messages right after the welcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<usize>,
        /// Replay the group messages after this sequence number (for a client that reconnects).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// A line for the whole group.
    Say {
        /// The text.
        text: String,
        /// The sender's own id for this line, increasing per sender. A line whose id the session
        /// has already seen from this user is dropped, so a client can resend whatever it has not
        /// seen echoed after a reconnect without making duplicates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Ask for one member's endpoint (in large sessions, whose rosters are not sent whole).
    Lookup {
        /// The member's name, in any case.
        user: String,
    },
    /// Pass a sealed private datagram to another member, for when the peer-to-peer path does
    /// not get through (NAT): the server forwards it as `relayed` and keeps nothing.
    Relay {
        /// The member it is for, in any case.
        to: String,
        /// The sealed datagram, standard base64 (at most 1200 bytes once decoded).
        data: String,
    },
    /// Ask for earlier group messages.
    History {
        /// Only messages with a smaller sequence number; absent means the newest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// How many at most.
        limit: usize,
    },
    /// Liveness check; answered with `pong`.
    Ping,
    /// Answer to the server's `ping`.
    Pong,
    /// Leave the session; the server closes the connection after telling the others.
    Leave,
}

/// A group chat line as the session server stamped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Position in the session's single order, starting at 1 and without gaps.
    pub seq: u64,
    /// When the server received it.
    pub time: DateTime<Utc>,
    /// Who sent it.
    pub from: String,
    /// What was said.
    pub text: String,
    /// The sender's id for the line, if it gave one (see `say`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// A member that left, as the others are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    /// Who left.
    pub user: String,
    /// The endpoint they had, so clients can forget it (absent if they had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<SocketAddr>,
    /// Why.
    pub reason: LeaveReason,
}

/// Why a session server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    /// The member sent `leave`; everything it sent before was applied.
    Left,
    /// The session was removed for good by its creator; do not reconnect.
    Closed,
    /// The server is shutting down (or the session is stopping); reconnecting later may work.
    Shutdown,
    /// Nothing (not even `ping`) arrived within the heartbeat limit.
    Silent,
    /// No `hello` arrived within the hello timeout.
    HelloTimeout,
}

/// A token bucket as a session applies it to each member's `say` lines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Lines per second, on average.
    pub per_second: f64,
    /// Lines that may be sent at once after a quiet spell (the bucket's size).
    pub burst: u32,
}

/// Messages a session server sends to a member, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The answer to a good `hello`: the roster, the member included.
    Welcome {
        /// Which session this is.
        session: Uuid,
        /// Its name, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Everyone present, with endpoints; empty in a session larger than
        /// `FULL_ROSTER_MAX` (use `lookup`).
        members: Vec<Member>,
        /// How many are present.
        member_count: usize,
        /// Sequence number of the newest group message so far (0 if none).
        seq: u64,
        /// The limit on this member's `say` lines, absent when there is none: a client that
        /// knows it can pace itself instead of having lines refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_limit: Option<RateLimit>,
    },
    /// A group chat line, sent to every member including its sender.
    Msg(ChatLine),
    /// Who arrived and who left since the last presence notice. In a session larger than
    /// `FULL_ROSTER_MAX` both lists are empty and only the count changes.
    Presence {
        /// Members that joined.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<Member>,
        /// Members that left.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<Departure>,
        /// How many are present now.
        member_count: usize,
    },
    /// Answer to `lookup`.
    Member {
        /// The name asked for.
        user: String,
        /// The member, if present.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<Member>,
    },
    /// Earlier group messages, oldest first, answering `history` or replaying after `since`.
    History {
        /// The messages.
        messages: Vec<ChatLine>,
    },
    /// A sealed private datagram another member passed through the server (`relay`).
    Relayed {
        /// Who passed it (the server's word: the name it knows the sender's connection by).
        from: String,
        /// The sealed datagram, standard base64.
        data: String,
    },
    /// Answer to `ping`.
    Pong,
    /// Sent to a member the server has not heard from for a while; answer with `pong` (any
    /// line will do) to stay in.
    Ping,
    /// A request failed; the connection stays open unless a `bye` follows.
    Error(ErrorBody),
    /// The server is about to close this connection.
    Bye {
        /// Why, for programs: decides whether a client should reconnect.
        reason: ByeReason,
        /// Why, in words.
        message: String,
        /// With reason `closed`: who closed the session, so members can be told by whom.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}
