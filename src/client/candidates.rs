//! Where peers may reach our socket besides the public endpoint the coordinator sees.

use std::net::SocketAddr;

/// Our socket's endpoint on our own network: its address, or, bound to every interface, the
/// address the system would send from towards the coordinator (found without sending anything:
/// a UDP socket's `connect` only picks the route). Peers behind the same NAT reach us there.
pub(super) fn local(local: SocketAddr, coordinator: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let probe = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0))
        .and_then(|s| s.connect(coordinator).map(|()| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(route) if !route.ip().is_unspecified() => {
            vec![SocketAddr::new(route.ip(), local.port())]
        }
        _ => Vec::new(),
    }
}
