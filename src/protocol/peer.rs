//! What clients send each other directly: one JSON object per UDP datagram.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    /// Opens the way for direct datagrams: sent straight to a peer's announced endpoint by a
    /// client that got a message from that peer only through the session server. Going out, it
    /// makes the sender's NAT let the peer's datagrams in; arriving, it shows the peer an
    /// endpoint that reaches the sender. Never answered.
    Probe {
        /// Sender's user name.
        from: String,
        /// Recipient's user name.
        to: String,
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
