//! Private messages, peer to peer over the client's UDP socket, and the hub that reads it.
//!
//! One socket serves both the coordinator requests and the private messages, so the address the
//! coordinator observes for our requests is exactly the address peers must send private messages
//! to (that is what makes the STUN-like `observed` field useful behind a NAT). The hub reads that
//! socket and sorts each datagram: coordinator answers to the request that waits for them (see
//! `rpc`), acknowledgements to the private message that waits for them, and private messages to
//! the application as [`Event::Private`], each shown once and acknowledged every time.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backoff::Retry;
use super::error::ClientError;
use super::event::Event;
use super::roster::Roster;
use super::rpc::{Coord, Waiters};
use crate::expiring::ExpiringMap;
use crate::protocol::{Member, PeerMsg, limits};

/// Proof that a private message arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmReceipt {
    /// The message id.
    pub id: Uuid,
    /// The recipient's name as the session spells it.
    pub to: String,
    /// The timestamp the message carried.
    pub time: DateTime<Utc>,
}

/// A private message the client gave up on, kept so that a late acknowledgement can still be
/// reported rather than leave the sender believing it was never shown.
#[derive(Debug)]
struct LateDm {
    to: String,
    time: DateTime<Utc>,
    text: String,
}

/// Given-up messages by (id, the endpoint they went to); taken out by the first late ack.
type LateDms = Arc<Mutex<ExpiringMap<(Uuid, SocketAddr), Option<LateDm>>>>;
/// How long a given-up message listens for a late ack: as long as receivers remember the ids
/// they have shown, so that any copy shown at all is shown within it.
const LATE_TTL: Duration = Duration::from_secs(600);
/// Most given-up messages listened for at once (each keeps its text, at most 800 bytes).
const LATE_CAP: usize = 1000;
/// How long, and for how many messages, shown private-message ids are remembered.
const SEEN_TTL: Duration = Duration::from_secs(600);
const SEEN_CAP: usize = 100_000;

/// The sending side of private messages; the hub completes its waits.
pub(super) struct Dms {
    udp: Arc<UdpSocket>,
    user: String,
    retry: Retry,
    /// Acks are accepted only from the endpoint the message went to.
    acks: Waiters<(Uuid, SocketAddr), ()>,
    late: LateDms,
}

impl Dms {
    pub(super) fn new(udp: Arc<UdpSocket>, user: String, retry: Retry) -> Self {
        Self {
            udp,
            user,
            retry,
            acks: Waiters::new(),
            late: Arc::new(Mutex::new(ExpiringMap::new(LATE_TTL, LATE_CAP))),
        }
    }

    /// Sends `text` to `member`'s endpoint and waits for its acknowledgement, retrying with
    /// backoff; stops at once when `ended` is cancelled (the session is over for us).
    pub(super) async fn send(
        &self,
        member: Member,
        text: &str,
        ended: CancellationToken,
    ) -> Result<DmReceipt, ClientError> {
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if text.len() > limits::MAX_DM_TEXT {
            return Err(ClientError::Invalid(format!(
                "private message too long: {} bytes, limit {}",
                text.len(),
                limits::MAX_DM_TEXT
            )));
        }
        let id = Uuid::new_v4();
        let time = Utc::now().trunc_subsecs(0);
        let msg = PeerMsg::Dm {
            id,
            from: self.user.clone(),
            to: member.user.clone(),
            time,
            text: text.to_string(),
        };
        let bytes = serde_json::to_vec(&msg).expect("protocol types serialize");
        if bytes.len() > limits::MAX_DATAGRAM {
            // Escaping can make a text within MAX_DM_TEXT too big for one datagram.
            return Err(ClientError::Invalid(format!(
                "private message too long once encoded: {} bytes, limit {}",
                bytes.len(),
                limits::MAX_DATAGRAM
            )));
        }
        let Some(to) = member.udp else {
            return Err(ClientError::NoPrivateMessages(member.user));
        };
        let key = (id, to);
        let mut acked = self.acks.register(key);
        for delay in self.retry.delays() {
            if let Err(e) = self.udp.send_to(&bytes, to).await {
                tracing::debug!(error = %e, to = %member.user, "private message send failed");
            }
            let answered = tokio::select! {
                ack = tokio::time::timeout(delay, &mut acked) => matches!(ack, Ok(Ok(()))),
                _ = ended.cancelled() => {
                    self.acks.forget(&key);
                    return Err(ClientError::SessionEnded { to: member.user });
                }
            };
            if answered {
                return Ok(DmReceipt {
                    id,
                    to: member.user,
                    time,
                });
            }
        }
        // Listen on for a late ack before we stop waiting, so none falls between the two.
        let late = LateDm {
            to: member.user.clone(),
            time,
            text: text.to_string(),
        };
        self.late.lock().insert(key, Some(late));
        self.acks.forget(&key);
        if acked.try_recv().is_ok() {
            if let Some(slot) = self.late.lock().get_mut(&key) {
                slot.take();
            }
            return Ok(DmReceipt {
                id,
                to: member.user,
                time,
            });
        }
        Err(ClientError::NotDelivered {
            to: member.user,
            attempts: self.retry.attempts,
            id,
        })
    }

    /// Starts the task that reads the socket until `stop`.
    pub(super) fn spawn_hub(
        &self,
        coord: Coord,
        roster: Roster,
        events: mpsc::Sender<Event>,
        stop: CancellationToken,
    ) {
        let hub = Hub {
            udp: self.udp.clone(),
            user: self.user.clone(),
            coord,
            acks: self.acks.clone(),
            late: self.late.clone(),
            roster,
            events,
            seen: ExpiringMap::new(SEEN_TTL, SEEN_CAP),
        };
        tokio::spawn(hub.run(stop));
    }
}

/// Reads the client's UDP socket and routes every datagram.
struct Hub {
    udp: Arc<UdpSocket>,
    user: String,
    coord: Coord,
    acks: Waiters<(Uuid, SocketAddr), ()>,
    late: LateDms,
    roster: Roster,
    events: mpsc::Sender<Event>,
    /// Private messages already shown, by sender and id.
    seen: ExpiringMap<(String, Uuid), ()>,
}

impl Hub {
    async fn run(mut self, stop: CancellationToken) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let received = tokio::select! {
                r = self.udp.recv_from(&mut buf) => r,
                _ = stop.cancelled() => break,
            };
            match received {
                Ok((len, from)) => self.route(&buf[..len], from).await,
                // ICMP "port unreachable" from an earlier send to a vanished peer lands here.
                Err(e) => tracing::debug!(error = %e, "udp receive failed"),
            }
        }
    }

    async fn route(&mut self, datagram: &[u8], from: SocketAddr) {
        if from == self.coord.addr() {
            self.coord.deliver(datagram);
            return;
        }
        if datagram.len() > limits::MAX_DATAGRAM {
            tracing::debug!(%from, len = datagram.len(), "oversized peer datagram dropped");
            return;
        }
        match serde_json::from_slice::<PeerMsg>(datagram) {
            Ok(PeerMsg::Ack { id, .. }) => {
                if !self.acks.complete(&(id, from), ()) {
                    let late = self.late.lock().get_mut(&(id, from)).and_then(Option::take);
                    if let Some(LateDm { to, time, text }) = late {
                        let event = Event::DeliveredLate { id, to, time, text };
                        let _ = self.events.try_send(event);
                    }
                }
            }
            Ok(PeerMsg::Dm {
                id,
                from: sender,
                to,
                time,
                text,
            }) => {
                if !to.eq_ignore_ascii_case(&self.user) {
                    tracing::debug!(%from, %to, "private message for someone else dropped");
                    return;
                }
                if !self.roster.is_at(&sender, from) {
                    if self.roster.is_partial() && self.roster.get(&sender).is_none() {
                        // Perhaps a member of a large session we were not told about: ask, and
                        // the sender's next try will find it known.
                        self.roster.want(&sender);
                    }
                    // Not from the endpoint the session says the sender has: forged, or from
                    // someone not (yet) in our roster. No ack, so a real sender will retry.
                    tracing::warn!(%from, claimed = %sender, "private message from wrong endpoint rejected");
                    return;
                }
                if self.seen.get(&(sender.clone(), id)).is_none() {
                    let event = Event::Private {
                        id,
                        from: sender.clone(),
                        time,
                        text,
                    };
                    if self.events.try_send(event).is_err() {
                        // The application is not keeping up; without an ack the sender retries.
                        return;
                    }
                    self.seen.insert((sender, id), ());
                }
                let ack = PeerMsg::Ack {
                    id,
                    from: self.user.clone(),
                };
                let bytes = serde_json::to_vec(&ack).expect("protocol types serialize");
                let _ = self.udp.send_to(&bytes, from).await;
            }
            Err(e) => tracing::debug!(%from, error = %e, "malformed peer datagram dropped"),
        }
    }
}
