//! The core system end to end, over real sockets on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use confab::client::{ClientError, Event};
use confab::coordinator::CoordinatorConfig;
use confab::protocol::{ErrorCode, LeaveReason, ResponseBody};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

#[tokio::test]
async fn six_clients_two_sessions_each_message_reaches_exactly_its_session_in_one_order() {
    let coord = TestCoordinator::start().await;
    let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(client(n, coord.addr).await);
    }
    clients[0].0.start_session(Some("red")).await.unwrap();
    clients[4].0.start_session(Some("blue")).await.unwrap();
    for i in [1, 2, 3] {
        clients[i].0.join("red").await.unwrap();
    }
    clients[5].0.join("blue").await.unwrap();
    // Everyone sees the full roster of their own session only.
    for (i, (c, _)) in clients.iter().enumerate() {
        let want = if i < 4 { 4 } else { 2 };
        eventually("rosters are complete", || async {
            c.members().len() == want
        })
        .await;
    }

    // Everyone talks at once.
    let per_client = 20;
    let mut sends = Vec::new();
    for (i, (c, _)) in clients.iter().enumerate() {
        let c = c.clone();
        sends.push(tokio::spawn(async move {
            for k in 0..per_client {
                c.say(&format!("{} {k}", names[i])).await.unwrap();
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let mut red_orders = Vec::new();
    let mut blue_orders = Vec::new();
    for (i, (_, events)) in clients.iter_mut().enumerate() {
        let (members, orders): (&[&str], _) = if i < 4 {
            (&names[..4], &mut red_orders)
        } else {
            (&names[4..], &mut blue_orders)
        };
        let got = messages(events, members.len() * per_client).await;
        for line in &got {
            assert!(
                members.contains(&line.from.as_str()),
                "{} leaked into the wrong session",
                line.from
            );
            assert!(line.text.starts_with(&line.from));
        }
        let seqs: Vec<u64> = got.iter().map(|l| l.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "sequence has gaps or disorder"
        );
        orders.push(got.iter().map(|l| l.text.clone()).collect::<Vec<_>>());
        expect_none(events, Duration::from_millis(200), |e| {
            matches!(e, Event::Message(_))
        })
        .await;
    }
    for orders in [&red_orders, &blue_orders] {
        assert!(
            orders.windows(2).all(|w| w[0] == w[1]),
            "members saw different orders"
        );
        // Each sender's own lines stay in the order it sent them.
        for n in names {
            let mine: Vec<&String> = orders[0].iter().filter(|t| t.starts_with(n)).collect();
            let expected: Vec<String> = (0..mine.len()).map(|k| format!("{n} {k}")).collect();
            assert_eq!(
                mine.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                expected
            );
        }
    }
    coord.stop().await;
}

#[tokio::test]
async fn joining_an_unknown_session_says_so() {
    let coord = TestCoordinator::start().await;
    let (alice, _ev) = client("alice", coord.addr).await;
    match alice.join("nowhere").await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::SessionNotFound);
            assert!(e.message.contains("nowhere"));
        }
        other => panic!("expected session_not_found, got {other:?}"),
    }
    assert!(alice.session().is_none());
}

#[tokio::test]
async fn a_name_already_in_the_session_is_refused_in_any_case() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    // The same account from a second device, typed in another case.
    let (alice2, _b) = logged_in(client_config("ALICE", coord.addr)).await;
    match alice2.join("room").await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::NameTaken),
        other => panic!("expected name_taken, got {other:?}"),
    }
    assert_eq!(alice.members().len(), 1);
}

#[tokio::test]
async fn session_names_are_unique_and_validated() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    alice.create(Some("Lobby")).await.unwrap();
    match alice.create(Some("lobby")).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::NameTaken),
        other => panic!("expected name_taken, got {other:?}"),
    }
    match alice.create(Some("no spaces!")).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::InvalidName),
        other => panic!("expected invalid_name, got {other:?}"),
    }
}

#[tokio::test]
async fn leave_updates_every_roster_with_who_and_endpoint() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let (carol, _c_ev) = client("carol", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    carol.join("room").await.unwrap();
    let carol_udp = carol.endpoint();
    // Presence carries the joining member's endpoint.
    let joined = expect(&mut a_ev, "carol's arrival", |e| match e {
        Event::Presence { joined, .. } => joined.iter().find(|m| m.user == "carol").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(joined.udp, Some(carol_udp));

    carol.leave().await.unwrap();
    for events in [&mut a_ev, &mut b_ev] {
        let gone = expect(events, "carol's departure", |e| match e {
            Event::Presence { left, .. } => left.iter().find(|d| d.user == "carol").cloned(),
            _ => None,
        })
        .await;
        assert_eq!(gone.udp, Some(carol_udp));
        assert_eq!(gone.reason, LeaveReason::Left);
    }
    let names =
        |c: &confab::client::Client| c.members().into_iter().map(|m| m.user).collect::<Vec<_>>();
    assert_eq!(names(&alice), ["alice", "bob"]);
    assert_eq!(names(&bob), ["alice", "bob"]);
    // The directory agrees.
    let list = alice.list().await.unwrap();
    assert_eq!(list[0].members, ["alice", "bob"]);
    assert_eq!(list[0].member_count, 2);
}

#[tokio::test]
async fn a_connection_that_drops_without_goodbye_leaves_the_roster() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    let mut raw = TcpStream::connect(info.server).await.unwrap();
    let token = token_for("ghost", coord.addr).await;
    raw.write_all(hello("ghost", &token, "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await
        .unwrap();
    expect(&mut a_ev, "ghost's arrival", |e| match e {
        Event::Presence { joined, .. } => joined.iter().any(|m| m.user == "ghost").then_some(()),
        _ => None,
    })
    .await;
    drop(raw);
    let gone = expect(&mut a_ev, "ghost's departure", |e| match e {
        Event::Presence { left, .. } => left.iter().find(|d| d.user == "ghost").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(gone.reason, LeaveReason::Disconnected);
    assert_eq!(alice.members().len(), 1);
}

#[tokio::test]
async fn a_private_message_reaches_only_its_target_once_with_its_timestamp() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let (carol, mut c_ev) = client("carol", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    carol.join("room").await.unwrap();
    eventually("alice knows everyone", || async {
        alice.members().len() == 3
    })
    .await;

    let receipt = alice.dm("BOB", "just for you").await.unwrap();
    assert_eq!(receipt.to, "bob");
    let (from, time, text) = expect(&mut b_ev, "the private message", |e| match e {
        Event::Private {
            from, time, text, ..
        } => Some((from.clone(), *time, text.clone())),
        _ => None,
    })
    .await;
    assert_eq!((from.as_str(), text.as_str()), ("alice", "just for you"));
    assert_eq!(time, receipt.time);
    expect_none(&mut b_ev, Duration::from_millis(300), |e| {
        matches!(e, Event::Private { .. })
    })
    .await;
    expect_none(&mut c_ev, Duration::from_millis(10), |e| {
        matches!(e, Event::Private { .. })
    })
    .await;

    match alice.dm("nobody", "hi").await {
        Err(ClientError::NoSuchMember(n)) => assert_eq!(n, "nobody"),
        other => panic!("expected no such member, got {other:?}"),
    }
}

#[tokio::test]
async fn a_private_message_to_a_vanished_peer_is_reported_undelivered() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    // A member whose UDP endpoint answers nothing.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let info = alice.start_session(Some("room")).await.unwrap().session;
    let mut raw = TcpStream::connect(info.server).await.unwrap();
    let token = token_for("mute", coord.addr).await;
    raw.write_all(hello("mute", &token, silent.local_addr().unwrap()).as_bytes())
        .await
        .unwrap();
    eventually("alice sees mute", || async { alice.members().len() == 2 }).await;
    let attempts = {
        // The client under test uses quick retries: 30 attempts at most 400 ms apart.
        let err = alice.dm("mute", "are you there?").await.unwrap_err();
        match err {
            ClientError::NotDelivered { to, attempts, .. } => {
                assert_eq!(to, "mute");
                attempts
            }
            other => panic!("expected not delivered, got {other:?}"),
        }
    };
    assert_eq!(attempts, 30);
    // Every try really went out (after the connectivity check's probe).
    let mut buf = [0u8; 2048];
    let mut copies = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut buf)).await
    {
        copies += 1;
    }
    assert_eq!(copies, 31);
}

#[tokio::test]
async fn a_forged_private_message_is_rejected() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    eventually("bob sees alice", || async { bob.members().len() == 2 }).await;
    let mallory = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forged = format!(
        "{{\"type\":\"dm\",\"id\":\"{}\",\"from\":\"alice\",\"to\":\"bob\",\"time\":\"2026-11-22T14:03:07Z\",\"text\":\"send me your password\"}}",
        uuid::Uuid::new_v4()
    );
    mallory
        .send_to(forged.as_bytes(), bob.endpoint())
        .await
        .unwrap();
    expect_none(&mut b_ev, Duration::from_millis(500), |e| {
        matches!(e, Event::Private { .. })
    })
    .await;
    // No ack for the forger either.
    let mut buf = [0u8; 2048];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), mallory.recv_from(&mut buf))
            .await
            .is_err()
    );
    // The real alice still gets through.
    alice.dm("bob", "real").await.unwrap();
}

#[tokio::test]
async fn a_retried_create_makes_one_session() {
    let coord = TestCoordinator::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let token = token_for("alice", coord.addr).await;
    let req = format!(r#"{{"id":41,"op":"create","name":"once","token":"{token}"}}"#);
    let first = raw_request(&socket, coord.addr, &req).await;
    let second = raw_request(&socket, coord.addr, &req).await;
    assert_eq!(first, second, "the retry got the same answer");
    assert!(matches!(first.body, ResponseBody::Session { .. }));
    assert_eq!(first.observed, socket.local_addr().unwrap());
    let list = raw_request(&socket, coord.addr, r#"{"id":42,"op":"list"}"#).await;
    match list.body {
        ResponseBody::Sessions {
            sessions, total, ..
        } => {
            assert_eq!(total, 1);
            assert_eq!(sessions.len(), 1);
        }
        other => panic!("expected sessions, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_and_oversized_datagrams_get_errors_and_harm_nobody() {
    let coord = TestCoordinator::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = raw_request(&socket, coord.addr, "this is not json").await;
    assert!(matches!(&r.body, ResponseBody::Error(e) if e.code == ErrorCode::Malformed));
    assert_eq!(r.id, None);
    let r = raw_request(&socket, coord.addr, r#"{"id":5,"op":"explode"}"#).await;
    assert!(matches!(&r.body, ResponseBody::Error(e) if e.code == ErrorCode::Malformed));
    assert_eq!(r.id, Some(5));
    let r = raw_request(&socket, coord.addr, r#"{"id":6,"op":"join","session":12}"#).await;
    assert!(matches!(&r.body, ResponseBody::Error(e) if e.code == ErrorCode::Malformed));
    let big = format!(r#"{{"id":7,"op":"create","name":"{}"}}"#, "x".repeat(5000));
    let r = raw_request(&socket, coord.addr, &big).await;
    assert!(matches!(&r.body, ResponseBody::Error(e) if e.code == ErrorCode::TooLarge));
    assert_eq!(r.id, Some(7));
    socket
        .send_to(&[0xff, 0xfe, 0x00], coord.addr)
        .await
        .unwrap();
    // The coordinator still serves a real client.
    let (alice, _a) = client("alice", coord.addr).await;
    alice.start_session(None).await.unwrap();
}

#[tokio::test]
async fn a_long_directory_comes_in_pages_that_fit_one_datagram() {
    let coord = TestCoordinator::start().await;
    let token = token_for("alice", coord.addr).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..40u64 {
        let req = format!(
            r#"{{"id":{i},"op":"create","name":"a-rather-long-session-name-number-{i}","token":"{token}"}}"#
        );
        raw_request(&socket, coord.addr, &req).await;
    }
    let mut cursor = 0;
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let req = format!(r#"{{"id":{},"op":"list","cursor":{cursor}}}"#, 1000 + pages);
        let r = raw_request(&socket, coord.addr, &req).await; // asserts ≤ 1200 bytes
        pages += 1;
        let ResponseBody::Sessions {
            sessions,
            next,
            total,
        } = r.body
        else {
            panic!()
        };
        assert_eq!(total, 40);
        seen += sessions.len();
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    assert_eq!(seen, 40);
    assert!(pages > 1);
}

#[tokio::test]
async fn bad_lines_get_errors_and_the_session_carries_on() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    let mut m = RawMember::connect(info.server).await;
    m.send(b"{\"type\":\"say\",\"text\":\"too early\"}\n").await;
    assert_eq!(m.json().await["code"], "unexpected");
    m.send(hello("bad name!", "x", "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await;
    assert_eq!(m.json().await["code"], "invalid_name");

    let mut eve = RawMember::joined(info.server, coord.addr, "eve").await;
    assert_eq!(eve.json().await["type"], "welcome");
    for (bad, code) in [
        (&b"{not json\n"[..], "malformed"),
        (b"{\"type\":\"say\",\"text\":5}\n", "malformed"),
        (&[0xff, 0xfe, b'\n'], "malformed"),
        (b"{\"type\":\"say\",\"text\":\"\"}\n", "invalid_text"),
    ] {
        eve.send(bad).await;
        assert_eq!(eve.json().await["code"], code);
    }
    let huge = format!("{{\"type\":\"say\",\"text\":\"{}\"}}\n", "x".repeat(20_000));
    eve.send(huge.as_bytes()).await;
    assert_eq!(eve.json().await["code"], "too_large");
    // Still a member, still heard; alice saw none of the noise.
    eve.send(b"{\"type\":\"say\",\"text\":\"still here\"}\n")
        .await;
    let line = messages(&mut a_ev, 1).await.remove(0);
    assert_eq!(
        (line.from.as_str(), line.text.as_str()),
        ("eve", "still here")
    );
    assert_eq!(alice.members().len(), 2);
}

/// A coordinator whose members queue 256 lines before the senders are held, and are dropped
/// when their queue stays past that for `drain`.
fn flow_config(drain: Duration) -> CoordinatorConfig {
    CoordinatorConfig {
        member_queue: 256,
        member_limits: confab::session::MemberLimits {
            rate: None,
            drain_timeout: drain,
            ..Default::default()
        },
        ..test_config()
    }
}

/// Joins a member on the bare protocol that reads nothing until told to.
async fn silent_member(
    user: &str,
    coord: &TestCoordinator,
    server: std::net::SocketAddr,
) -> TcpStream {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let token = token_for(user, coord.addr).await;
    stream
        .write_all(hello(user, &token, "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await
        .unwrap();
    stream
}

/// Alice says `n` lines of `text` in windows of 50 (waiting for her own echoes) and returns
/// how many she saw come back and whether `who` was dropped as too slow meanwhile.
async fn say_in_windows(
    alice: &confab::client::Client,
    a_ev: &mut tokio::sync::mpsc::Receiver<Event>,
    text: &str,
    n: usize,
    who: &str,
) -> (usize, bool) {
    let mut got = 0;
    let mut dropped = false;
    while got < n {
        for _ in 0..50 {
            alice.say(text).await.unwrap();
        }
        let target = got + 50;
        while got < target {
            match tokio::time::timeout(WAIT, a_ev.recv())
                .await
                .expect("alice keeps receiving")
                .unwrap()
            {
                Event::Message(m) => {
                    assert_eq!(m.text, text);
                    got += 1
                }
                Event::Presence { left, .. } => {
                    dropped |= left
                        .iter()
                        .any(|d| d.user == who && d.reason == LeaveReason::TooSlow)
                }
                _ => {}
            }
        }
    }
    (got, dropped)
}

#[tokio::test]
async fn a_member_that_stops_reading_is_dropped_after_the_drain_timeout_and_nothing_is_lost() {
    let coord = TestCoordinator::start_with(flow_config(Duration::from_millis(500))).await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    // A member that never reads: its socket buffers fill, then its queue passes 256 lines and
    // alice is held back, until the drain timeout drops it.
    let sloth = silent_member("sloth", &coord, info.server).await;
    eventually("sloth joined", || async { alice.members().len() == 2 }).await;
    let text = "y".repeat(3000);
    // 12 MB: more than loopback's socket buffers hold.
    let (got, dropped) = say_in_windows(&alice, &mut a_ev, &text, 4000, "sloth").await;
    assert!(dropped, "the member that never reads was dropped");
    assert_eq!(got, 4000, "alice lost nothing while she was held back");
    drop(sloth);
}

#[tokio::test]
async fn a_member_that_pauses_reading_is_waited_for_and_gets_every_line() {
    let coord = TestCoordinator::start_with(flow_config(Duration::from_secs(30))).await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    let napper = silent_member("napper", &coord, info.server).await;
    eventually("napper joined", || async { alice.members().len() == 2 }).await;
    // The napper reads nothing for the first second, while alice fills its socket buffers and
    // its queue many times over; a queue of 256 lines is ~770 KB here, the burst 12 MB.
    let text = "z".repeat(3000);
    let n = 4000;
    let reading = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut lines = BufReader::new(napper).lines();
        let mut said = 0;
        while said < n {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("the napper keeps receiving")
                .unwrap()
                .expect("the napper was not dropped");
            if line.contains("\"type\":\"msg\"") {
                said += 1;
            }
        }
        said
    });
    let (got, dropped) = say_in_windows(&alice, &mut a_ev, &text, n, "napper").await;
    assert!(!dropped, "a member that pauses is not dropped");
    assert_eq!(got, n);
    assert_eq!(reading.await.unwrap(), n, "the napper got every line");
}

#[tokio::test]
async fn an_empty_session_stops_its_server_after_the_grace_period_and_restarts_on_join() {
    let config = CoordinatorConfig {
        idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, _a) = client("alice", coord.addr).await;
    let first = alice.start_session(Some("brief")).await.unwrap().session;
    alice.say("before the pause").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        alice.list().await.unwrap()[0].server.is_some(),
        "open while alice is in it"
    );
    alice.leave().await.unwrap();
    eventually("the server is stopped", || async {
        alice.list().await.unwrap()[0].server.is_none()
    })
    .await;
    assert!(
        TcpStream::connect(first.server).await.is_err(),
        "nothing listens at the old address"
    );
    // Still listed; joining starts it again, history intact.
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let again = bob.join("brief").await.unwrap().session;
    assert_eq!(again.id, first.id);
    let history = expect(&mut b_ev, "history on join", |e| match e {
        Event::History(lines) => Some(lines.clone()),
        _ => None,
    })
    .await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].text, "before the pause");
    bob.say("after").await.unwrap();
    let line = messages(&mut b_ev, 1).await.remove(0);
    assert_eq!(line.seq, 2, "sequence numbers continue");
}

#[tokio::test]
async fn the_presence_log_records_joins_and_leaves_with_timestamps() {
    let path = std::env::temp_dir().join(format!("confab-presence-{}.log", uuid::Uuid::new_v4()));
    let config = CoordinatorConfig {
        presence_log: Some(path.clone()),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, _b) = client("bob", coord.addr).await;
    alice.start_session(Some("logged")).await.unwrap();
    bob.join("logged").await.unwrap();
    bob.leave().await.unwrap();
    coord.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.contains("joined user=alice")));
    assert!(lines.iter().any(|l| l.contains("joined user=bob")));
    assert!(lines.iter().any(|l| l.contains("left user=bob")));
    for l in &lines {
        // "2026-11-22 14:03:07 session=…"
        assert!(
            chrono::NaiveDateTime::parse_from_str(&l[..19], "%Y-%m-%d %H:%M:%S").is_ok(),
            "{l}"
        );
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed() {
    // Uses the documented hello timeout (10 s); the test waits for it once.
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let info = alice.start_session(None).await.unwrap().session;
    let stream = TcpStream::connect(info.server).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let bye = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(bye.contains("\"type\":\"bye\""), "{bye}");
    let end = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none());
}

#[tokio::test]
async fn a_large_session_sends_counts_and_members_are_looked_up_when_needed() {
    // The real threshold is 1000; a small one shows the same behaviour cheaply.
    let config = CoordinatorConfig {
        full_roster_max: 3,
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let names = ["ann", "ben", "cat", "dan", "eve"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(client(n, coord.addr).await);
    }
    clients[0].0.start_session(Some("big")).await.unwrap();
    for (c, _) in &clients[1..] {
        c.join("big").await.unwrap();
    }
    let (eve, eve_events) = &mut clients[4];
    // Eve joined a session of five: no roster, just the count.
    assert!(eve.members().is_empty());
    assert_eq!(eve.member_count(), 5);
    let _ = eve_events;
    // Ann learns the count without names once the session is large.
    let (ann, ann_events) = &mut clients[0];
    let count = expect(ann_events, "a count-only notice", |e| match e {
        Event::Presence {
            joined,
            left,
            member_count,
            ..
        } if joined.is_empty() && left.is_empty() => Some(*member_count),
        _ => None,
    })
    .await;
    assert!(count > 3);
    eventually("ann counts five", || async { ann.member_count() == 5 }).await;
    assert!(ann.members().len() < 5, "ann was not told every name");
    // Eve can write to ann, whom she was never told about, and ann (who never heard of eve by
    // name) accepts it once she has looked eve up.
    let eve = clients[4].0.clone();
    eve.dm("ann", "found you").await.unwrap();
    let (_, ann_events) = &mut clients[0];
    let text = expect(ann_events, "eve's private message", |e| match e {
        Event::Private { from, text, .. } if from == "eve" => Some(text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(text, "found you");
    match eve.dm("nobody", "hi").await {
        Err(ClientError::NoSuchMember(_)) => {}
        other => panic!("expected no such member, got {other:?}"),
    }
    // Group chat is unaffected.
    clients[1].0.say("hello big room").await.unwrap();
    let (_, eve_events) = &mut clients[4];
    assert_eq!(messages(eve_events, 1).await[0].text, "hello big room");
    // Back under the limit, everyone gets the whole roster again.
    clients[2].0.leave().await.unwrap();
    clients[3].0.leave().await.unwrap();
    // Eve, who joined a large session and was never told names, now knows everyone.
    let eve = clients[4].0.clone();
    eventually("eve knows every name", || async {
        eve.members()
            .iter()
            .map(|m| m.user.clone())
            .collect::<Vec<_>>()
            == ["ann", "ben", "eve"]
    })
    .await;
    assert_eq!(eve.member_count(), 3);
}

#[tokio::test]
async fn a_resent_line_is_applied_once_and_costs_no_rate_limit() {
    let coord = TestCoordinator::start().await; // burst of 50
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    let mut rex = RawMember::joined(info.server, coord.addr, "rex").await;
    // The same line, id 7, a hundred times (as a client resending after reconnects might).
    let line = "{\"type\":\"say\",\"text\":\"once\",\"id\":7}\n".repeat(100);
    rex.send(line.as_bytes()).await;
    rex.send(b"{\"type\":\"say\",\"text\":\"next\",\"id\":8}\n")
        .await;
    let got = messages(&mut a_ev, 2).await;
    assert_eq!(got[0].text, "once");
    assert_eq!(got[0].id, Some(7));
    assert_eq!(got[1].text, "next", "no second copy, and not rate limited");
    for _ in 0..3 {
        // the welcome and the two echoes: none of them a rate-limit error
        let l = rex.line().await.unwrap();
        assert!(!l.contains("rate_limited"), "{l}");
    }
}

#[tokio::test]
async fn a_hello_with_an_absurd_since_harms_nobody() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    alice.say("before").await.unwrap();
    let token = token_for("max", coord.addr).await;
    let mut max = RawMember::connect(info.server).await;
    let hello = format!(
        r#"{{"type":"hello","user":"max","token":"{token}","udp":"127.0.0.1:9","since":18446744073709551615}}"#
    ) + "\n";
    max.send(hello.as_bytes()).await;
    assert_eq!(max.json().await["type"], "welcome");
    // The session is alive and in order for everyone.
    alice.say("after").await.unwrap();
    let got = messages(&mut a_ev, 2).await;
    assert_eq!((got[1].text.as_str(), got[1].seq), ("after", 2));
    let next = max.json().await;
    assert_eq!(
        (&next["type"], &next["seq"]),
        (&"msg".into(), &2.into()),
        "nothing replayed, then the live line: {next}"
    );
}

#[tokio::test]
async fn a_listener_without_an_endpoint_stays_in_by_answering_the_servers_pings() {
    let idle = Duration::from_millis(1500);
    let config = CoordinatorConfig {
        member_limits: confab::session::MemberLimits {
            idle,
            ..Default::default()
        },
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("quiet")).await.unwrap().session;

    // A bot that takes no private messages: its hello names no UDP endpoint.
    let token = token_for("listener", coord.addr).await;
    let mut bot = RawMember::connect(info.server).await;
    bot.send(
        format!("{{\"type\":\"hello\",\"user\":\"listener\",\"token\":\"{token}\"}}\n").as_bytes(),
    )
    .await;
    let welcome = bot.json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let me = welcome["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "listener")
        .expect("the bot is in its own welcome")
        .clone();
    assert!(me.get("udp").is_none(), "{me}");
    eventually("alice sees the bot without an endpoint", || async {
        alice
            .members()
            .iter()
            .any(|m| m.user == "listener" && m.udp.is_none())
    })
    .await;
    match alice.dm("listener", "hi").await {
        Err(ClientError::NoPrivateMessages(who)) => assert_eq!(who, "listener"),
        other => panic!("{other:?}"),
    }

    // Three silence limits long the bot sends nothing but its answers to the server's pings.
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < idle * 3 {
        let line = bot.json().await;
        match line["type"].as_str() {
            Some("ping") => {
                pings += 1;
                bot.send(b"{\"type\":\"pong\"}\n").await;
            }
            Some("bye") => panic!("dropped although it answered every ping: {line}"),
            _ => {}
        }
    }
    assert!(pings >= 3, "{pings} pings in {:?}", idle * 3);
    alice.say("still there?").await.unwrap();
    loop {
        let line = bot.json().await;
        if line["type"] == "msg" {
            assert_eq!(line["text"], "still there?");
            break;
        }
    }

    // Once it stops answering, it is dropped at the silence limit, as before.
    loop {
        let line = bot.json().await;
        if line["type"] == "bye" {
            assert_eq!(line["reason"], "silent", "{line}");
            break;
        }
    }
    let gone = loop {
        if let Event::Presence { left, .. } = tokio::time::timeout(WAIT, a_ev.recv())
            .await
            .unwrap()
            .unwrap()
            && let Some(d) = left.into_iter().find(|d| d.user == "listener")
        {
            break d;
        }
    };
    assert_eq!(gone.udp, None);
}
