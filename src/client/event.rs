//! What a client tells its application without being asked.
//!
//! Below the files that produce events (the session link, the UDP hub) and the facade that
//! hands out the receiver, so that none of them imports another to name one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::protocol::{ChatLine, Departure, ErrorBody, Member, SessionInfo};

/// Things that happen to a client without being asked for, in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A group chat line (the client's own included).
    Message(ChatLine),
    /// Earlier lines, oldest first, answering [`Client::history`](super::Client::history) or
    /// replayed on rejoin.
    History(Vec<ChatLine>),
    /// Members arrived or left. In a large session the lists are empty and only the count
    /// changes. One notice may name the same user in both lists: it left, then joined again (a
    /// rejoin), in that order.
    Presence {
        /// Who came.
        joined: Vec<Member>,
        /// Who went (before those in `joined` came).
        left: Vec<Departure>,
        /// How many are present now.
        member_count: usize,
        /// The roster right after this notice, sorted by name (in a large session, the members
        /// known). Show this rather than [`Client::members`](super::Client::members), which may
        /// already include later notices still queued behind this one, such as a member's return
        /// after its departure.
        members: Vec<Member>,
    },
    /// A private message, shown once however often it was sent.
    Private {
        /// Its id.
        id: Uuid,
        /// The sender.
        from: String,
        /// When it was sent.
        time: DateTime<Utc>,
        /// What it says.
        text: String,
    },
    /// A private message came under another identity key than the one pinned for its sender:
    /// said before that message (or any later one from them under that key) is shown.
    PeerKeyChanged {
        /// Whose key.
        user: String,
        /// The key pinned before.
        pinned: String,
        /// The key the message was sealed with.
        now: String,
    },
    /// The session server refused something (a rate limit, a text too long).
    ServerError(ErrorBody),
    /// The connection to the session ended without us leaving.
    Disconnected {
        /// Why, as far as we know.
        reason: String,
        /// Whether the client is reconnecting (it will say [`Event::Reconnected`]); if not, the
        /// session is over for us.
        retrying: bool,
        /// When not retrying: the group lines we said that the session may never have had
        /// (unconfirmed, or still waiting to go), oldest first, so they can be shown and said
        /// again elsewhere rather than vanish.
        unsent: Vec<String>,
    },
    /// Back in the session after a [`Event::Disconnected`]; missed lines follow as messages.
    Reconnected {
        /// The roster on rejoining, sorted by name (empty in a large session). As with
        /// [`Event::Presence`], show this one: notices queued behind it may already be applied.
        members: Vec<Member>,
        /// How many are present, by the server's count.
        member_count: usize,
    },
    /// A private message reported not delivered
    /// ([`ClientError::NotDelivered`](super::ClientError::NotDelivered)) was acknowledged after
    /// all: the recipient has shown it.
    DeliveredLate {
        /// The message's id, as in the error.
        id: Uuid,
        /// The recipient.
        to: String,
        /// The timestamp the message carried.
        time: DateTime<Utc>,
        /// What it said.
        text: String,
    },
    /// The session was removed for good (`close`). We are out of it: the client has forgotten
    /// it and its members, and does not reconnect.
    Closed {
        /// The session that is gone.
        session: SessionInfo,
        /// Who closed it, when the server said (it does not when the close happened while we
        /// were reconnecting).
        by: Option<String>,
    },
}
