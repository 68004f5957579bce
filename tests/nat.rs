//! Issue 13 on loopback: who sent a private datagram is proven by its key, not by the port it
//! came from; when the direct path does not answer, the message goes through the session server
//! both members share (or, sharing none, the coordinator), sealed, and arrives once; and anyone
//! online can be reached, not only the members of one's session.

mod common;

use std::time::Duration;

use common::*;
use confab::client::{ClientError, Event, Via};
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
async fn online_lists_everyone_in_some_session_or_announced() {
    let coord = TestCoordinator::start().await;
    let quiet = |user: &str| {
        let mut config = client_config(user, coord.addr);
        config.announce = false;
        config
    };
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, _b) = logged_in(quiet("Bob")).await;
    // Carol announces herself and is in no session; dave does neither.
    let (carol, _c) = client("carol", coord.addr).await;
    let (_dave, _d) = logged_in(quiet("dave")).await;
    alice.start_session(Some("one")).await.unwrap();
    bob.start_session(Some("two")).await.unwrap();
    let (users, total) = carol.online(100).await.unwrap();
    assert_eq!((users, total), (strings(&["alice", "Bob", "carol"]), 3));
    // Bob does not announce: out of his session, he is offline.
    bob.leave().await;
    eventually("bob is offline", || async {
        carol.online(100).await.unwrap().0 == strings(&["alice", "carol"])
    })
    .await;
    match carol.dm("dave", "hello?").await {
        Err(ClientError::NoSuchMember(n)) => assert_eq!(n, "dave"),
        other => panic!("dave is not online, yet: {other:?}"),
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn a_private_message_reaches_someone_online_outside_our_session_and_the_answer_comes_back() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (dave, mut d_ev) = client("dave", coord.addr).await;
    alice.start_session(Some("one")).await.unwrap();
    // Dave is in no session at all: the coordinator knows him from his announcements.
    let card = alice.member("DAVE").await.unwrap();
    assert_eq!(card.user, "dave");
    assert_eq!(card.key.as_deref(), Some(dave.fingerprint().as_str()));
    let receipt = alice.dm("dave", "not in your room").await.unwrap();
    assert!(matches!(receipt.via, Via::Direct(_)), "{receipt:?}");
    assert_eq!(
        privates(&mut d_ev, Duration::from_millis(300)).await,
        ["not in your room"]
    );
    // Dave did not know alice: he looked her key up before taking her message, and answers
    // her although she is in a session he is not.
    let receipt = dave.dm("alice", "got it").await.unwrap();
    assert!(matches!(receipt.via, Via::Direct(_)), "{receipt:?}");
    assert_eq!(
        privates(&mut a_ev, Duration::from_millis(300)).await,
        ["got it"]
    );
}

#[tokio::test]
async fn when_no_direct_path_works_the_coordinator_relays_each_message_once_and_in_order() {
    let coord = TestCoordinator::start().await;
    // Both announce endpoints that swallow everything, as NATs without a mapping do, and no
    // local addresses: no probe, no copy can go direct. They share no session.
    let (_hole_a, hole_a) = black_hole().await;
    let (_hole_d, hole_d) = black_hole().await;
    let behind = |user: &str, hole| {
        let mut config = client_config(user, coord.addr);
        config.advertise = Some(hole);
        config.share_local = false;
        config
    };
    let (alice, _a) = logged_in(behind("alice", hole_a)).await;
    let (dave, mut d_ev) = logged_in(behind("dave", hole_d)).await;
    alice.start_session(Some("one")).await.unwrap();
    for text in ["first", "second", "third"] {
        let receipt = alice.dm("dave", text).await.unwrap();
        assert_eq!(receipt.via, Via::Relayed, "{text}");
    }
    assert_eq!(
        privates(&mut d_ev, Duration::from_secs(1)).await,
        ["first", "second", "third"]
    );
    assert_eq!(alice.reached_by("dave"), Some(Via::Relayed));
    drop(dave);
}

#[tokio::test]
async fn the_coordinator_relays_only_to_announced_users_within_the_senders_rate() {
    let mut config = test_config();
    config.abuse.relays_per_user = Some(confab::coordinator::Rate::per_second(5));
    let coord = TestCoordinator::start_with(config).await;
    let trent = SealedRaw::login("trent", coord.addr).await;
    let mallory = SealedRaw::login("mallory", coord.addr).await;
    let announce = |raw: &SealedRaw| {
        format!(
            r#"{{"id":2,"op":"announce","token":"{}","key":"{RAW_IDENTITY_PUBLIC}"}}"#,
            raw.token
        )
    };
    let relay = |to: &str, data: &str, id: u32| {
        format!(
            r#"{{"id":{id},"op":"relay","to":"{to}","data":"{data}","token":"{}"}}"#,
            mallory.token
        )
    };
    // Not announced yet: refused, and nothing reaches trent.
    let refused = mallory.request(&relay("trent", "AAEC", 3)).await;
    assert_eq!(refused["code"], "not_online", "{refused}");
    let answer = trent.request(&announce(&trent)).await;
    assert_eq!(answer["type"], "announced", "{answer}");
    assert_eq!(answer["ttl"], 60);
    // Bad data is refused, not passed on.
    let refused = mallory.request(&relay("trent", "not base64!", 4)).await;
    assert_eq!(refused["code"], "malformed", "{refused}");
    let big = base64_of(&[7u8; 1201]);
    let refused = mallory.request(&relay("trent", &big, 5)).await;
    assert_eq!(refused["code"], "too_large", "{refused}");
    // A burst of 40: 5 (and what refills meanwhile) get through, the rest are refused.
    for id in 0..40 {
        let (sealed, _) = mallory.seal(&relay("trent", "AAEC", 100 + id));
        mallory.socket.send_to(&sealed, coord.addr).await.unwrap();
    }
    let mut pushes = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok((n, from))) =
        tokio::time::timeout(Duration::from_millis(500), trent.socket.recv_from(&mut buf)).await
    {
        assert_eq!(from, coord.addr);
        pushes.push(serde_json::from_slice::<serde_json::Value>(&buf[..n]).unwrap());
    }
    assert!((5..=7).contains(&pushes.len()), "{} relayed", pushes.len());
    for push in &pushes {
        assert_eq!(push["type"], "relayed");
        assert_eq!(push["from"], "mallory");
        assert_eq!(push["data"], "AAEC");
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_peer_outside_the_session_who_comes_back_with_a_new_key_is_looked_up_again() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (dave, _d) = client("dave", coord.addr).await;
    alice.start_session(Some("one")).await.unwrap();
    // Alice learns dave's card (and pins his key) from a first message.
    dave.dm("alice", "first").await.unwrap();
    assert_eq!(
        privates(&mut a_ev, Duration::from_millis(200)).await,
        ["first"]
    );
    drop(dave);
    // Dave again, from a fresh client with a new identity key (each run makes one unless the
    // application keeps it): alice's card of him is stale; she asks the coordinator again.
    let (dave, _d) = client("dave", coord.addr).await;
    dave.dm("alice", "new key, same dave").await.unwrap();
    let mut warned = false;
    let mut shown = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(e) = a_ev.recv().await {
            match e {
                Event::PeerKeyChanged { user, .. } if user == "dave" => warned = true,
                Event::Private { text, .. } => shown.push(text),
                _ => {}
            }
        }
    })
    .await;
    assert!(warned, "the changed key is said before the message");
    assert_eq!(shown, ["new key, same dave"]);
}

#[tokio::test]
async fn an_announcement_with_a_bad_key_or_too_many_addresses_is_refused() {
    let coord = TestCoordinator::start().await;
    let raw = SealedRaw::login("uma", coord.addr).await;
    let bad_key = format!(
        r#"{{"id":2,"op":"announce","token":"{}","key":"not a key"}}"#,
        raw.token
    );
    let answer = raw.request(&bad_key).await;
    assert_eq!(answer["code"], "invalid_key", "{answer}");
    let five = format!(
        r#"{{"id":3,"op":"announce","token":"{}","key":"{RAW_IDENTITY_PUBLIC}","local":["10.0.0.1:1","10.0.0.2:1","10.0.0.3:1","10.0.0.4:1","10.0.0.5:1"]}}"#,
        raw.token
    );
    let answer = raw.request(&five).await;
    assert_eq!(answer["code"], "malformed", "{answer}");
    // Neither made uma online.
    let peer = format!(
        r#"{{"id":4,"op":"peer","user":"uma","token":"{}"}}"#,
        raw.token
    );
    let answer = raw.request(&peer).await;
    assert_eq!(answer["code"], "not_online", "{answer}");
}
