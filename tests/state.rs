//! The client's state stays true: after a rejoin, a close, a join of the session it is in, a
//! private message given up on, a script that types faster than the rate limit.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confab::client::{ClientError, Event};
use confab::protocol::{ErrorCode, Member};

#[tokio::test]
async fn a_closed_session_tells_every_member_who_closed_it_and_lets_go_of_it() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let (carol, mut c_ev) = client("carol", coord.addr).await;
    let beta = alice.start_session(Some("beta")).await.unwrap().session;
    bob.join("beta").await.unwrap();
    carol.join("beta").await.unwrap();
    eventually("bob knows carol", || async { bob.members().len() == 3 }).await;

    alice.close_session("beta").await.unwrap();
    for (who, events) in [
        ("alice", &mut a_ev),
        ("bob", &mut b_ev),
        ("carol", &mut c_ev),
    ] {
        let (session, by) = expect(events, "the close notice", |e| match e {
            Event::Closed { session, by } => Some((session.clone(), by.clone())),
            _ => None,
        })
        .await;
        assert_eq!(session.id, beta.id, "{who}");
        assert_eq!(by.as_deref(), Some("alice"), "{who}");
    }
    // Out of it: no session, no roster, nothing sent through it; private messages to its
    // former members still go, as to anyone online, through the coordinator's directory.
    for c in [&alice, &bob, &carol] {
        assert!(c.session().is_none());
        assert!(c.members().is_empty());
        assert_eq!(c.member_count(), 0);
    }
    assert!(matches!(
        bob.say("anyone?").await,
        Err(ClientError::NotInSession)
    ));
    let receipt = bob.dm("carol", "still there?").await.unwrap();
    assert_eq!(receipt.to, "carol");
    assert!(bob.leave().await.is_none());
    // And no reconnecting: nothing more is said about the session.
    expect_none(&mut b_ev, Duration::from_millis(500), |e| {
        matches!(e, Event::Disconnected { .. } | Event::Reconnected { .. })
    })
    .await;
    // The client is free to join something else.
    let gamma = bob.start_session(Some("gamma")).await.unwrap();
    assert_eq!(gamma.members.len(), 1);
    assert_eq!(bob.session().unwrap().id, gamma.session.id);
}

#[tokio::test]
async fn a_private_message_in_flight_when_the_session_closes_is_not_sent_again() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, _b) = client("bob", coord.addr).await;
    let beta = alice.start_session(Some("beta")).await.unwrap().session;
    bob.join("beta").await.unwrap();
    // A member whose UDP endpoint never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let token = token_for("mute", coord.addr).await;
    let mut mute = RawMember::connect(beta.server).await;
    mute.send(hello("mute", &token, silent.local_addr().unwrap()).as_bytes())
        .await;
    eventually("bob sees mute", || async { bob.members().len() == 3 }).await;
    let sending = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.dm("mute", "are you there?").await })
    };
    let mut buf = [0u8; 2048];
    tokio::time::timeout(WAIT, silent.recv_from(&mut buf))
        .await
        .expect("the first copy")
        .unwrap();

    alice.close_session("beta").await.unwrap();
    // Retries would go on for about 11 s; the close stops them.
    let result = tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .expect("the private message is given up when the session ends")
        .unwrap();
    match result {
        Err(ClientError::SessionEnded { to }) => assert_eq!(to, "mute"),
        other => panic!("expected session ended, got {other:?}"),
    }
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut buf)).await
    {}
    assert!(
        tokio::time::timeout(Duration::from_millis(600), silent.recv_from(&mut buf))
            .await
            .is_err(),
        "a copy went to a former member after the session ended"
    );
}

#[tokio::test]
async fn a_session_closed_while_a_member_was_reconnecting_is_let_go_of_too() {
    let directory = confab::coordinator::Directory::default();
    let config = confab::coordinator::CoordinatorConfig {
        directory: Some(directory.clone()),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let beta = alice.create(Some("beta")).await.unwrap();
    bob.join("beta").await.unwrap();
    // Bob's connection breaks (the server dies), and the session is closed before or while he
    // comes back: either the bye or the coordinator tells him it is gone.
    assert!(directory.crash(beta.id));
    expect(&mut b_ev, "the break", |e| {
        matches!(e, Event::Disconnected { retrying: true, .. }).then_some(())
    })
    .await;
    alice.close_session("beta").await.unwrap();
    let session = expect(&mut b_ev, "the close notice", |e| match e {
        Event::Closed { session, .. } => Some(session.clone()),
        Event::Disconnected {
            retrying: false, ..
        } => panic!("gave up instead of being told of the close: {e:?}"),
        _ => None,
    })
    .await;
    assert_eq!(session.id, beta.id);
    assert!(bob.session().is_none());
    assert!(bob.members().is_empty());
    expect_none(&mut b_ev, Duration::from_millis(500), |e| {
        matches!(e, Event::Disconnected { .. } | Event::Reconnected { .. })
    })
    .await;
}

#[tokio::test]
async fn joining_the_session_you_are_in_does_nothing_but_say_so() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let beta = alice.start_session(Some("beta")).await.unwrap().session;
    bob.join("beta").await.unwrap();
    bob.say("hello").await.unwrap();
    messages(&mut a_ev, 1).await;
    messages(&mut b_ev, 1).await;
    // By name, by id, by id prefix: all the same session.
    for key in [
        "BETA".to_string(),
        beta.id.to_string(),
        beta.id.to_string()[..8].to_string(),
    ] {
        match bob.join(&key).await {
            Err(ClientError::AlreadyInSession(label)) => {
                assert!(label.contains("beta"), "{label}");
            }
            other => panic!("expected already in session, got {other:?}"),
        }
    }
    assert_eq!(bob.session().unwrap().id, beta.id);
    // Nobody saw bob go and come back, and bob got no history again.
    expect_none(&mut a_ev, Duration::from_millis(500), |e| {
        matches!(e, Event::Presence { .. })
    })
    .await;
    expect_none(&mut b_ev, Duration::from_millis(10), |e| {
        matches!(e, Event::History(_) | Event::Presence { .. })
    })
    .await;
    bob.say("still here").await.unwrap();
    assert_eq!(messages(&mut a_ev, 1).await[0].text, "still here");
}

#[tokio::test]
async fn a_session_named_like_an_id_prefix_cannot_capture_a_join_by_that_prefix() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (mallory, _m) = client("mallory", coord.addr).await;
    let (carol, _c) = client("carol", coord.addr).await;
    let victim = alice.start_session(None).await.unwrap().session;
    let prefix = victim.id.to_string()[..8].to_string();
    let squat = mallory.create(Some(&prefix)).await.unwrap();
    match carol.join(&prefix).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Ambiguous);
            assert!(e.message.contains(&victim.id.to_string()), "{}", e.message);
            assert!(e.message.contains(&squat.id.to_string()), "{}", e.message);
        }
        other => panic!("expected ambiguous, got {other:?}"),
    }
    assert!(carol.session().is_none());
    // The whole id reaches the session that was meant.
    let joined = carol.join(&victim.id.to_string()).await.unwrap();
    assert_eq!(joined.session.id, victim.id);
}

#[tokio::test]
async fn after_a_rejoin_each_presence_comes_with_the_roster_it_leads_to() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let beta = alice.start_session(Some("beta")).await.unwrap().session;
    let token = token_for("carol", coord.addr).await;
    let before: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let after: SocketAddr = "127.0.0.1:10".parse().unwrap();
    let mut carol = RawMember::connect(beta.server).await;
    carol.send(hello("carol", &token, before).as_bytes()).await;
    assert_eq!(carol.json().await["type"], "welcome");
    let at = |udp: SocketAddr| {
        let alice = alice.clone();
        move || {
            let alice = alice.clone();
            async move {
                alice
                    .members()
                    .iter()
                    .any(|m| m.user == "carol" && m.udp == Some(udp))
            }
        }
    };
    eventually("alice sees carol", at(before)).await;

    // Carol's connection breaks and she comes straight back, as a reconnecting client does
    // (again after a moment if the server has not yet noticed the break).
    drop(carol);
    let _carol = loop {
        let mut carol = RawMember::connect(beta.server).await;
        carol.send(hello("carol", &token, after).as_bytes()).await;
        let answer = carol.json().await;
        if answer["type"] == "welcome" {
            break carol;
        }
        assert_eq!(answer["code"], "name_taken", "{answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Alice's client has applied every notice before alice reads any of them: the moment an
    // application is slowest to keep up.
    eventually("alice sees carol back", at(after)).await;

    let mut model: BTreeMap<String, Member> = BTreeMap::new();
    model.insert(
        "alice".into(),
        Member {
            user: "alice".into(),
            udp: Some(alice.endpoint()),
            key: Some(alice.fingerprint()),
            local: vec![alice.local_udp()],
        },
    );
    while model.get("carol").is_none_or(|m| m.udp != Some(after)) {
        let (joined, left, members) = expect(&mut a_ev, "a presence notice", |e| match e {
            Event::Presence {
                joined,
                left,
                members,
                ..
            } => Some((joined.clone(), left.clone(), members.clone())),
            _ => None,
        })
        .await;
        for d in &left {
            model.remove(&d.user);
        }
        for m in &joined {
            model.insert(m.user.clone(), m.clone());
        }
        let expected: Vec<Member> = model.values().cloned().collect();
        assert_eq!(
            members, expected,
            "the roster shown with a notice (joined {joined:?}, left {left:?}) must be the one it leads to"
        );
    }
}

#[tokio::test]
async fn a_piped_script_faster_than_the_rate_limit_gets_every_line_through_in_order() {
    use std::process::Stdio;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // The default limit: 20 lines a second, bursts of 50.
    let coord = TestCoordinator::start().await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.start_session(Some("script")).await.unwrap();
    let mut script = String::from("/join script\n");
    for i in 0..60 {
        script.push_str(&format!("line {i}\n"));
    }
    let data = tempfile::tempdir().unwrap();
    let mut alice = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["client", "--user", "alice", "--register"])
        .env("XDG_DATA_HOME", data.path())
        .args([
            "--coordinator",
            &coord.addr.to_string(),
            "--bind",
            "127.0.0.1:0",
        ])
        .env("CONFAB_PASSWORD", password("alice"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("confab binary starts");
    // All at once, then end of input: the script is done as soon as it is written.
    let mut stdin = alice.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let mut stdout = alice.stdout.take().unwrap();
    let mut output = String::new();
    tokio::time::timeout(WAIT, stdout.read_to_string(&mut output))
        .await
        .expect("the script finishes")
        .unwrap();
    assert!(alice.wait().await.unwrap().success(), "{output}");
    assert!(!output.contains("slow down"), "{output}");

    let got: Vec<String> = messages(&mut b_ev, 60)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect();
    let sent: Vec<String> = (0..60).map(|i| format!("line {i}")).collect();
    assert_eq!(got, sent);
}

/// Two peers that reach each other only through a relay holding every datagram for `delay`: A is
/// known as `a_face`, B as `b_face` (each advertises its face).
struct SlowPair {
    a_face: std::net::SocketAddr,
    b_face: std::net::SocketAddr,
    /// Datagrams handed on so far.
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SlowPair {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl SlowPair {
    async fn start(a_real: SocketAddr, b_real: SocketAddr, delay: Duration) -> Self {
        use std::sync::Arc;
        use tokio::net::UdpSocket;
        let a_face = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b_face = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        // Into b_face → out of a_face to B; into a_face → out of b_face to A.
        for (inbound, outbound, target) in [
            (b_face.clone(), a_face.clone(), b_real),
            (a_face.clone(), b_face.clone(), a_real),
        ] {
            let forwarded = forwarded.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = inbound.recv_from(&mut buf).await {
                    let (outbound, data, forwarded) =
                        (outbound.clone(), buf[..n].to_vec(), forwarded.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = outbound.send_to(&data, target).await;
                        forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    });
                }
            }));
        }
        Self {
            a_face: a_face.local_addr().unwrap(),
            b_face: b_face.local_addr().unwrap(),
            forwarded,
            tasks,
        }
    }
}

#[tokio::test]
async fn a_private_message_given_up_on_and_shown_later_is_reported_delivered_late() {
    let coord = TestCoordinator::start().await;
    let mut a_cfg = client_config("alice", coord.addr);
    let mut b_cfg = client_config("bob", coord.addr);
    let probe_a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probe_b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (a_real, b_real) = (probe_a.local_addr().unwrap(), probe_b.local_addr().unwrap());
    drop((probe_a, probe_b));
    // Every datagram between them takes a second; alice gives up after 0.3 s.
    let relay = SlowPair::start(a_real, b_real, Duration::from_secs(1)).await;
    a_cfg.bind = Some(a_real);
    b_cfg.bind = Some(b_real);
    a_cfg.advertise = Some(relay.a_face);
    b_cfg.advertise = Some(relay.b_face);
    // Only through the slow relay: their own addresses would reach each other at once.
    a_cfg.share_local = false;
    b_cfg.share_local = false;
    a_cfg.dm_retry.first = Duration::from_millis(100);
    a_cfg.dm_retry.max_delay = Duration::from_millis(100);
    a_cfg.dm_retry.attempts = 3;
    let (alice, mut a_ev) = logged_in(a_cfg).await;
    let (bob, mut b_ev) = logged_in(b_cfg).await;
    alice.start_session(Some("slow")).await.unwrap();
    bob.join("slow").await.unwrap();
    eventually("alice sees bob", || async { alice.members().len() == 2 }).await;

    let id = match alice.dm("bob", "are you there?").await {
        Err(ClientError::NotDelivered { id, .. }) => id,
        other => panic!("expected not delivered, got {other:?}"),
    };
    // The copies arrive after all, and bob shows the message once...
    let shown = expect(&mut b_ev, "the late private message", |e| match e {
        Event::Private { id, text, .. } => Some((*id, text.clone())),
        _ => None,
    })
    .await;
    assert_eq!(shown, (id, "are you there?".to_string()));
    // ...so alice is told it was delivered after all, once.
    let (late_id, to, text) = expect(&mut a_ev, "the late delivery report", |e| match e {
        Event::DeliveredLate { id, to, text, .. } => Some((*id, to.clone(), text.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        (late_id, to.as_str(), text.as_str()),
        (id, "bob", "are you there?")
    );
    // Every copy and every ack has gone through the relay: three copies, three acks.
    let forwarded = relay.forwarded.clone();
    eventually("the relay has handed everything on", || {
        let forwarded = forwarded.clone();
        async move { forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 6 }
    })
    .await;
    expect_none(&mut a_ev, Duration::from_millis(200), |e| {
        matches!(e, Event::DeliveredLate { .. })
    })
    .await;
}
