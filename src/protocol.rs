//! Every message confab puts on the wire, on all three transports.
//!
//! This module is the code twin of `protocol.md`: if a field changes here, it changes there. All
//! messages are JSON objects; the coordinator speaks one object per UDP datagram, session servers
//! speak newline-delimited objects over TCP, and clients speak one object per UDP datagram to each
//! other for private messages.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Limits that a peer can rely on; protocol.md and README.md list the same numbers.
pub mod limits {
    use std::time::Duration;

    /// Largest datagram the coordinator reads or writes; an answer never exceeds it, so it travels
    /// unfragmented over any path with the IPv6 minimum MTU.
    pub const MAX_DATAGRAM: usize = 1200;
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
}

impl RequestBody {
    /// The login token the request carries, if it is of a kind that needs one.
    pub fn token(&self) -> Option<&str> {
        match self {
            RequestBody::Create { token, .. }
            | RequestBody::Join { token, .. }
            | RequestBody::Close { token, .. } => Some(token),
            RequestBody::Register { .. } | RequestBody::Login { .. } | RequestBody::List { .. } => {
                None
            }
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
    /// The request failed.
    Error(ErrorBody),
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
    /// A per-user or per-address quota was reached (registrations or sessions created per hour,
    /// sessions kept); the message says which, and when to try again.
    Quota,
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
}

impl ErrorBody {
    /// An error with its message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A member as everyone else sees it: a name and where to send private messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The member's user name.
    pub user: String,
    /// The UDP endpoint that receives the member's private messages.
    pub udp: SocketAddr,
}

/// Why a member left a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The member said `leave`.
    Left,
    /// The connection closed or broke without a goodbye.
    Disconnected,
    /// The member could not keep up with the session and its queue overflowed.
    TooSlow,
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
        /// UDP endpoint for private messages.
        udp: SocketAddr,
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
    /// The endpoint they had, so clients can forget it.
    pub udp: SocketAddr,
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
    /// Answer to `ping`.
    Pong,
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

/// Datagrams clients send each other directly for private messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerMsg {
    /// A private message. Retries carry the same `id`; the receiver shows each id once.
    Dm {
        /// Unique per message.
        id: Uuid,
        /// Sender's user name.
        from: String,
        /// Recipient's user name.
        to: String,
        /// When the sender sent it.
        time: DateTime<Utc>,
        /// The text.
        text: String,
    },
    /// The receiver got the message with this id (sent for every copy, so a lost ack is repaired
    /// by the next retry).
    Ack {
        /// The acknowledged message.
        id: Uuid,
        /// Who acknowledges.
        from: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_with_flat_fields() {
        let text = r#"{"id":7,"op":"create","name":"rust","token":"t"}"#;
        let req: Request = serde_json::from_str(text).unwrap();
        assert_eq!(
            req,
            Request {
                id: 7,
                body: RequestBody::Create {
                    name: Some("rust".into()),
                    token: "t".into(),
                }
            }
        );
        assert_eq!(serde_json::to_string(&req).unwrap(), text);
    }

    #[test]
    fn integers_are_not_op_names() {
        for op in ["0", "1", "5", "true", "null"] {
            let text = format!(r#"{{"id":1,"op":{op},"user":"a","password":"b"}}"#);
            let err = serde_json::from_str::<Request>(&text).unwrap_err();
            assert!(
                err.to_string().contains("op must be a string"),
                "{op}: {err}"
            );
        }
        assert!(serde_json::from_str::<Request>(r#"{"id":1,"op":"list"}"#).is_ok());
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let req = RequestBody::Login {
            user: "alice".into(),
            password: Password("hunter2".into()),
        };
        assert!(!format!("{req:?}").contains("hunter2"));
    }

    #[test]
    fn error_response_is_flat() {
        let resp = Response {
            id: Some(3),
            observed: "127.0.0.1:9".parse().unwrap(),
            body: ResponseBody::Error(ErrorBody::new(ErrorCode::SessionNotFound, "no")),
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            text,
            r#"{"id":3,"observed":"127.0.0.1:9","type":"error","code":"session_not_found","message":"no"}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), resp);
    }

    #[test]
    fn chat_line_is_flat() {
        let msg = ServerMsg::Msg(ChatLine {
            seq: 1,
            time: "2026-11-22T14:03:07Z".parse().unwrap(),
            from: "alice".into(),
            text: "hi".into(),
            id: None,
        });
        assert_eq!(
            serde_json::to_string(&msg).unwrap(),
            r#"{"type":"msg","seq":1,"time":"2026-11-22T14:03:07Z","from":"alice","text":"hi"}"#
        );
    }

    #[test]
    fn welcome_announces_the_rate_limit_as_protocol_md_shows() {
        let msg = ServerMsg::Welcome {
            session: Uuid::nil(),
            name: None,
            members: Vec::new(),
            member_count: 0,
            seq: 0,
            rate_limit: Some(RateLimit {
                per_second: 20.0,
                burst: 50,
            }),
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert!(
            text.ends_with(r#""seq":0,"rate_limit":{"per_second":20.0,"burst":50}}"#),
            "{text}"
        );
    }

    mod decoders {
        use super::super::*;
        use proptest::prelude::*;

        fn decode_all(bytes: &[u8]) {
            let _ = serde_json::from_slice::<Request>(bytes);
            let _ = serde_json::from_slice::<Response>(bytes);
            let _ = serde_json::from_slice::<ClientMsg>(bytes);
            let _ = serde_json::from_slice::<ServerMsg>(bytes);
            let _ = serde_json::from_slice::<PeerMsg>(bytes);
        }

        proptest! {
            #[test]
            fn any_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                decode_all(&bytes);
            }

            #[test]
            fn json_shaped_noise_never_panics(
                kind in prop_oneof!["hello", "say", "msg", "dm", "ack", "create", "join", "list", "welcome", "presence"],
                field in "[a-z_]{1,8}",
                value in prop_oneof![Just("1".to_string()), Just("null".to_string()), Just("[]".to_string()), Just("{}".to_string()), "\"[ -~]{0,20}\"".prop_map(|s| s)],
            ) {
                for tag in ["type", "op"] {
                    let text = format!(r#"{{"{tag}":"{kind}","id":1,"{field}":{value}}}"#);
                    decode_all(text.as_bytes());
                }
            }

            #[test]
            fn say_round_trips(text in "\\PC{0,100}", id in proptest::option::of(any::<u64>())) {
                let msg = ClientMsg::Say { text, id };
                let back: ClientMsg = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
                prop_assert_eq!(back, msg);
            }
        }
    }
}
