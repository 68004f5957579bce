//! Direct paths to peers: the endpoints that reached us from each, kept open while in use.
//!
//! A NAT may give a peer another public port than the one it announced; the endpoint an
//! authenticated datagram came from is the one that works, so it is remembered per peer key and
//! tried first. Probes (sealed, never answered) punch and keep the NAT mappings open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::protocol::PeerMsg;
use crate::seal::PeerBoxes;

/// A user's identity key (public half).
pub(super) type PeerKey = [u8; 32];

/// Endpoints that reached us straight from a peer (an authenticated datagram came from there),
/// by the peer's key: where our datagrams to that peer go first. A NAT may give a peer another
/// public port than the one it announced; this one works.
pub(super) type Paths = Arc<Mutex<std::collections::HashMap<PeerKey, Path>>>;

/// A direct path to a peer, and when a private message last used it.
#[derive(Debug, Clone)]
pub(super) struct Path {
    pub(super) addr: SocketAddr,
    pub(super) user: String,
    /// The last message or acknowledgement on it; probes do not count, or two clients would
    /// keep each other's paths alive for ever.
    pub(super) used: tokio::time::Instant,
}

/// How often an active path is kept open: NAT mappings for UDP commonly last 30 s or more.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(15);
/// A path is kept open this long after its last message.
pub(super) const ACTIVE: Duration = Duration::from_secs(120);

/// A `probe` from `from` to `to`, sealed for `to`'s key.
pub(super) fn sealed_probe(
    boxes: &Mutex<PeerBoxes>,
    from: &str,
    to: &str,
    key: &PeerKey,
) -> Vec<u8> {
    let probe = PeerMsg::Probe {
        from: from.to_string(),
        to: to.to_string(),
    };
    let bytes = serde_json::to_vec(&probe).expect("protocol types serialize");
    boxes.lock().seal(key, &bytes)
}

/// Records that `addr` reached us from `user` (key `key`); `used` says a message or an
/// acknowledgement came that way, not only a probe.
pub(super) fn learn(paths: &Paths, key: PeerKey, addr: SocketAddr, user: &str, used: bool) {
    let now = tokio::time::Instant::now();
    let mut paths = paths.lock();
    let entry = paths.entry(key).or_insert_with(|| Path {
        addr,
        user: user.to_string(),
        used: now,
    });
    entry.addr = addr;
    if used {
        entry.used = now;
    }
}
