//! Reaching users outside one's session: `announce`, `peer` and `relay`.
//!
//! A client announces itself from login on (see `online.rs`); anyone logged in may look up an
//! online user's card to send them private messages directly, and when no direct path works,
//! ask the coordinator to pass a sealed datagram on, as a TURN server would. The coordinator
//! sees only sealed bytes and the two names, stores nothing, and lets each user relay at most
//! `AbuseLimits::relays_per_user`: the relay is for the messages a NAT stopped, not a
//! broadcast channel.

use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;

use super::jobs::Reply;
use super::online::ANNOUNCE_TTL;
use super::{Coordinator, err};
use crate::protocol::{ErrorBody, ErrorCode, Member, Push, ResponseBody, limits};

impl Coordinator {
    pub(super) fn announce(
        &mut self,
        reply: &Reply,
        token: &str,
        key: &str,
        udp: Option<SocketAddr>,
        local: Vec<SocketAddr>,
    ) -> Result<ResponseBody, ErrorBody> {
        let claims = self.verify(token, reply.seal.as_ref())?;
        let key = crate::identity::parse_fingerprint(key)
            .map_err(|e| err(ErrorCode::InvalidKey, format!("key: {e}")))?;
        if local.len() > limits::MAX_LOCAL_ENDPOINTS {
            return Err(err(
                ErrorCode::Malformed,
                format!(
                    "at most {} local endpoints, not {}",
                    limits::MAX_LOCAL_ENDPOINTS,
                    local.len()
                ),
            ));
        }
        let card = Member {
            user: claims.user,
            udp: Some(udp.unwrap_or(reply.from)),
            key: Some(crate::identity::fingerprint(&key)),
            local,
        };
        self.directory.announce(card, reply.from);
        Ok(ResponseBody::Announced {
            ttl: ANNOUNCE_TTL.as_secs(),
        })
    }

    pub(super) fn peer(
        &self,
        reply: &Reply,
        token: &str,
        user: &str,
    ) -> Result<ResponseBody, ErrorBody> {
        self.verify(token, reply.seal.as_ref())?;
        match self.directory.peer(user) {
            Some(found) => Ok(ResponseBody::Peer { member: found.card }),
            None => Err(not_online(user)),
        }
    }

    /// Passes `data` on to `to`; `Ok` carries the datagram and where it goes (the request
    /// itself is not answered then).
    pub(super) fn relay(
        &mut self,
        reply: &Reply,
        token: &str,
        to: &str,
        data: String,
    ) -> Result<(Bytes, SocketAddr), ErrorBody> {
        let claims = self.verify(token, reply.seal.as_ref())?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .map_err(|e| err(ErrorCode::Malformed, format!("data is not base64: {e}")))?;
        if decoded.len() > limits::MAX_DATAGRAM {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "relayed datagram of {} bytes is larger than the limit of {}",
                    decoded.len(),
                    limits::MAX_DATAGRAM
                ),
            ));
        }
        let relay_to = self
            .directory
            .peer(to)
            .and_then(|found| found.relay_to)
            .ok_or_else(|| not_online(to))?;
        if let Err(retry) = self
            .relays
            .take(&claims.user.to_lowercase(), Instant::now())
        {
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "relaying faster than allowed; try again in {} ms",
                    retry.as_millis()
                ),
            ));
        }
        let push = Push::Relayed {
            from: claims.user,
            data,
        };
        let mut bytes = serde_json::to_vec(&push).expect("protocol types serialize");
        bytes.push(b'\n');
        Ok((Bytes::from(bytes), relay_to))
    }
}

fn not_online(user: &str) -> ErrorBody {
    err(
        ErrorCode::NotOnline,
        format!("{user} is not online (or has not announced itself to this coordinator)"),
    )
}
