//! Issue 13, first steps on loopback: who sent a private datagram is proven by its key, not by
//! the port it came from; and when the direct path does not answer, the message goes through
//! the session server both members share, sealed, and arrives once.

mod common;

use std::time::Duration;

use common::*;
use confab::client::{Event, Via};
use tokio::net::UdpSocket;

/// A UDP endpoint that takes datagrams and never answers: a peer behind a NAT that drops what
/// it did not ask for.
async fn black_hole() -> (UdpSocket, std::net::SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

async fn privates(events: &mut tokio::sync::mpsc::Receiver<Event>, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(quiet, async {
        while let Some(e) = events.recv().await {
            if let Event::Private { text, .. } = e {
                got.push(text);
            }
        }
    })
    .await;
    got
}

/// The next line from `member` that contains `needle` (others skipped).
async fn line_with(member: &mut RawMember, needle: &str) -> String {
    loop {
        let line = member.line().await.expect("connection open");
        if line.contains(needle) {
            return line;
        }
    }
}

#[tokio::test]
async fn a_peer_whose_announced_endpoint_drops_everything_is_reached_where_its_probe_came_from() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    // Bob announces an endpoint that swallows everything, as a NAT without a mapping does.
    let (_hole, hole) = black_hole().await;
    let mut config = client_config("bob", coord.addr);
    config.advertise = Some(hole);
    // On loopback his socket's own address would reach him; behind a real NAT it would not.
    config.share_local = false;
    let (bob, mut b_ev) = logged_in(config).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    eventually("alice sees bob", || async { alice.members().len() == 2 }).await;
    // Alice's check went through the server; bob probed her straight back, from his real
    // socket, and that is where her message went.
    let receipt = alice.dm("bob", "found you").await.unwrap();
    assert!(
        matches!(receipt.via, Via::Direct(at) if at != hole),
        "{:?}",
        receipt.via
    );
    assert_eq!(
        privates(&mut b_ev, Duration::from_millis(500)).await,
        ["found you"]
    );
    let back = bob.dm("alice", "and back").await.unwrap();
    assert!(matches!(back.via, Via::Direct(_)), "{:?}", back.via);
}

#[tokio::test]
async fn when_no_probe_gets_through_the_message_goes_relayed_and_is_shown_once() {
    let coord = TestCoordinator::start().await;
    // Both announce endpoints that swallow everything, and neither shares its own address:
    // no direct path exists either way, as behind two symmetric NATs.
    let (_hole_a, hole_a) = black_hole().await;
    let (_hole_b, hole_b) = black_hole().await;
    let mut a_config = client_config("alice", coord.addr);
    a_config.advertise = Some(hole_a);
    a_config.share_local = false;
    let mut b_config = client_config("bob", coord.addr);
    b_config.advertise = Some(hole_b);
    b_config.share_local = false;
    let (alice, _a) = logged_in(a_config).await;
    let (bob, mut b_ev) = logged_in(b_config).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    eventually("alice sees bob", || async { alice.members().len() == 2 }).await;
    let receipt = alice.dm("bob", "through the server").await.unwrap();
    assert_eq!(receipt.via, Via::Relayed);
    assert_eq!(alice.reached_by("bob"), Some(Via::Relayed));
    // Shown once, although later copies went both ways.
    assert_eq!(
        privates(&mut b_ev, Duration::from_secs(2)).await,
        ["through the server"]
    );
    let back = bob.dm("alice", "relayed back").await.unwrap();
    assert_eq!(back.via, Via::Relayed);
}

#[tokio::test]
async fn a_sender_seen_from_another_port_than_it_announced_is_still_accepted() {
    let coord = TestCoordinator::start().await;
    // Alice announces another endpoint than the one she sends from, as behind a NAT that
    // changes ports: bob accepts her message because her key sealed it, and answers to where
    // it came from.
    let (_hole, hole) = black_hole().await;
    let mut config = client_config("alice", coord.addr);
    config.advertise = Some(hole);
    let (alice, _a) = logged_in(config).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    eventually("alice sees bob", || async { alice.members().len() == 2 }).await;
    let receipt = alice.dm("bob", "from another port").await.unwrap();
    assert_eq!(receipt.via, Via::Direct(bob.endpoint()));
    assert_eq!(
        privates(&mut b_ev, Duration::from_millis(500)).await,
        ["from another port"]
    );
}

#[tokio::test]
async fn a_relay_goes_only_to_the_member_named_and_bad_data_is_refused() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let session = alice.start_session(Some("room")).await.unwrap().session;
    // Two members on the bare protocol: one relays to the other, and to nobody.
    let mut mallory = RawMember::joined(session.server, coord.addr, "mallory").await;
    let mut trent = RawMember::joined(session.server, coord.addr, "trent").await;
    eventually("both in", || async { alice.members().len() == 3 }).await;
    mallory
        .send(b"{\"type\":\"relay\",\"to\":\"nobody\",\"data\":\"AAAA\"}\n")
        .await;
    mallory
        .send(b"{\"type\":\"relay\",\"to\":\"Trent\",\"data\":\"AAEC\"}\n")
        .await;
    mallory
        .send(b"{\"type\":\"relay\",\"to\":\"trent\",\"data\":\"not base64!\"}\n")
        .await;
    let relayed = line_with(&mut trent, "\"relayed\"").await;
    assert!(
        relayed.contains("\"from\":\"mallory\"") && relayed.contains("\"data\":\"AAEC\""),
        "{relayed}"
    );
    let refusal = line_with(&mut mallory, "\"error\"").await;
    // Only the one relay reached trent.
    mallory.send(b"{\"type\":\"ping\"}\n").await;
    line_with(&mut mallory, "\"pong\"").await;
    trent.send(b"{\"type\":\"ping\"}\n").await;
    let next = line_with(&mut trent, "\"type\"").await;
    assert!(!next.contains("relayed"), "{next}");
    assert!(
        refusal.contains("malformed") && refusal.contains("base64"),
        "{refusal}"
    );
}

#[tokio::test]
async fn online_lists_everyone_in_some_session_not_only_ours() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, _b) = client("Bob", coord.addr).await;
    let (carol, _c) = client("carol", coord.addr).await;
    alice.start_session(Some("one")).await.unwrap();
    bob.start_session(Some("two")).await.unwrap();
    // Carol is logged in but in no session: not online in this sense.
    let (users, total) = carol.online(100).await.unwrap();
    assert_eq!(
        (users, total),
        (vec!["alice".to_string(), "Bob".to_string()], 2)
    );
    bob.leave().await;
    eventually("bob is offline", || async {
        carol.online(100).await.unwrap().0 == ["alice"]
    })
    .await;
}
