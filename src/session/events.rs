//! What member handlers ask of the room: the room task's inbox, and the joins it answers.
//!
//! Apart from `room.rs`, so that a member handler knows the messages without knowing the room.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use crate::protocol::{ChatLine, ErrorBody, LeaveReason};

/// Identifies one connection for the lifetime of the room.
pub(crate) type ConnId = u64;

/// Earlier messages a joining member asked for, sent right after its welcome.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Replay {
    /// Everything after this sequence number (a reconnecting client).
    pub(crate) since: Option<u64>,
    /// The newest this many (a client joining fresh).
    pub(crate) last: Option<usize>,
}

/// A member asking to join.
pub(crate) struct JoinRequest {
    pub(crate) conn: ConnId,
    pub(crate) user: String,
    pub(crate) udp: Option<SocketAddr>,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) local: Box<[SocketAddr]>,
    pub(crate) replay: Replay,
    pub(crate) tx: Arc<Outbox>,
    pub(crate) kick: CancellationToken,
    pub(crate) reply: oneshot::Sender<Result<(), ErrorBody>>,
}

/// What member handlers ask of the room.
pub(crate) enum RoomEvent {
    Join(JoinRequest),
    /// A rejoin that missed more than memory holds, with the missed lines read from storage.
    CaughtUp(JoinRequest, Vec<ChatLine>),
    Say {
        conn: ConnId,
        text: String,
        id: Option<u64>,
    },
    History {
        conn: ConnId,
        before: Option<u64>,
        limit: usize,
    },
    /// A history answer that needed storage, back from it.
    HistoryRead {
        conn: ConnId,
        messages: Vec<ChatLine>,
    },
    Lookup {
        conn: ConnId,
        user: String,
    },
    Relay {
        conn: ConnId,
        to: String,
        data: String,
    },
    Leave {
        conn: ConnId,
        reason: LeaveReason,
    },
}
