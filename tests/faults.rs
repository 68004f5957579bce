//! Fault injection: restarts, crashes, SIGKILL, silence, floods and limits. Loopback only, every
//! wait bounded.

mod common;

use confab::store::Database;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use confab::client::Event;
use confab::coordinator::{CoordinatorConfig, Directory};
use confab::protocol::{ChatLine, ErrorCode, LeaveReason};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

fn no_rate_limit(mut c: CoordinatorConfig) -> CoordinatorConfig {
    c.member_limits.rate = None;
    c
}

/// Collects the lines with the given prefix until `n` have arrived, noting reconnects.
async fn lines_with_prefix(
    events: &mut mpsc::Receiver<Event>,
    prefix: &str,
    n: usize,
    wait: Duration,
) -> (Vec<ChatLine>, usize) {
    let mut got = Vec::new();
    let mut reconnects = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while got.len() < n {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} lines arrived", got.len()))
            .expect("events continue");
        match event {
            Event::Message(l) if l.text.starts_with(prefix) => got.push(l),
            Event::Reconnected { .. } => reconnects += 1,
            _ => {}
        }
    }
    (got, reconnects)
}

fn assert_exactly_once_in_order(lines: &[ChatLine], prefix: &str, n: usize) {
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let unique: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!(
        unique.len(),
        texts.len(),
        "a line was shown twice: {texts:?}"
    );
    let expected: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(texts, expected, "lost or reordered");
    assert!(
        lines.windows(2).all(|w| w[0].seq < w[1].seq),
        "sequence numbers go backwards"
    );
}

#[tokio::test]
async fn chatting_clients_ride_out_a_coordinator_restart_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let config = || {
        no_rate_limit(CoordinatorConfig {
            db: Some(Database::Sqlite(db.clone())),
            ..test_config()
        })
    };
    let coord = TestCoordinator::start_with(config()).await;
    let addr = coord.addr;
    let (alice, mut a_ev) = client("alice", addr).await;
    let (bob, mut b_ev) = client("bob", addr).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();

    // Alice keeps typing the whole time.
    let n = 150;
    let typist = typist(&alice, "m", n, Duration::from_millis(4));
    tokio::time::sleep(Duration::from_millis(200)).await;
    coord.stop().await;
    let coord = TestCoordinator::start_on(addr, config()).await;

    let (bob_saw, bob_reconnects) = lines_with_prefix(&mut b_ev, "m", n, WAIT * 2).await;
    let (alice_saw, _) = lines_with_prefix(&mut a_ev, "m", n, WAIT).await;
    typist.await.unwrap();
    assert_exactly_once_in_order(&bob_saw, "m", n);
    assert_exactly_once_in_order(&alice_saw, "m", n);
    assert_eq!(bob_reconnects, 1, "bob went through one reconnect");
    expect_none(&mut b_ev, Duration::from_millis(300), |e| {
        matches!(e, Event::Message(_))
    })
    .await;
    coord.stop().await;
}

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn coordinator_process(listen: SocketAddr, db: &std::path::Path) -> Child {
    coordinator_process_with(listen, db, |_| {})
}

/// `confab coordinator` as a process, with what `more` adds to its command line.
fn coordinator_process_with(
    listen: SocketAddr,
    db: &std::path::Path,
    more: impl FnOnce(&mut Command),
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.args(["coordinator", "--listen", &listen.to_string()])
        .args(["--db", db.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    more(&mut cmd);
    cmd.spawn().expect("confab coordinator starts")
}

/// Alice says `prefix0` … `prefix{n-1}`, one every `pause`, in a task of her own.
fn typist(
    alice: &confab::client::Client,
    prefix: &'static str,
    n: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let alice = alice.clone();
    tokio::spawn(async move {
        for i in 0..n {
            alice.say(&format!("{prefix}{i}")).await.unwrap();
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test]
async fn clients_survive_a_coordinator_killed_with_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let listen = free_udp_port();
    let mut process = coordinator_process(listen, &db);
    // The real binary uses the real password cost; the client retries until it is up.
    let (alice, _a) = client("alice", listen).await;
    let (bob, mut b_ev) = client("bob", listen).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    for i in 0..10 {
        alice.say(&format!("k{i}")).await.unwrap();
    }
    let (before, _) = lines_with_prefix(&mut b_ev, "k", 10, WAIT).await;
    assert_exactly_once_in_order(&before, "k", 10);

    // Killed at once: every line bob saw was stored before he was sent it.
    process.start_kill().unwrap();
    process.wait().await.unwrap();
    let mut process = coordinator_process(listen, &db);
    for i in 10..20 {
        alice.say(&format!("k{i}")).await.unwrap();
    }
    let (after, reconnects) = lines_with_prefix(&mut b_ev, "k", 10, WAIT * 3).await;
    let texts: Vec<&str> = after.iter().map(|l| l.text.as_str()).collect();
    let expected: Vec<String> = (10..20).map(|i| format!("k{i}")).collect();
    assert_eq!(texts, expected, "nothing lost, nothing shown twice");
    assert_eq!(reconnects, 1);
    // The history survived the kill too: a newcomer sees all twenty.
    let (carol, mut c_ev) = client("carol", listen).await;
    carol.join("room").await.unwrap();
    let history = expect(&mut c_ev, "history", |e| match e {
        Event::History(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(history.len(), 20);
    process.start_kill().unwrap();
    let _ = process.wait().await;
}

#[tokio::test]
async fn every_line_anyone_saw_is_stored_when_the_coordinator_is_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let listen = free_udp_port();
    let start = || {
        coordinator_process_with(listen, &db, |cmd| {
            cmd.args(["--no-rate-limit", "--fast-passwords"])
                // A slow disk: each batch of history takes 30 ms longer to write, so lines wait
                // for it long enough that a kill always finds some on their way to the disk.
                .env("CONFAB_FAULT_WRITE_DELAY_MS", "30");
        })
    };
    let mut process = start();
    let (alice, _a) = client("alice", listen).await;
    let (bob, mut b_ev) = client("bob", listen).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    let n = 400;
    let typist = typist(&alice, "s", n, Duration::from_millis(1));
    // Killed the moment bob has seen 100 lines, with alice still typing: no grace for writes.
    let mut seen = Vec::new();
    while seen.len() < 100 {
        if let Some(Event::Message(l)) = b_ev.recv().await {
            seen.push(l);
        }
    }
    process.start_kill().unwrap();
    process.wait().await.unwrap();
    // Whatever bob had been sent before the kill, in his queue or not yet read.
    let mut reconnects = 0;
    loop {
        match b_ev.recv().await.expect("events continue") {
            Event::Message(l) => seen.push(l),
            Event::Disconnected { .. } => break,
            _ => {}
        }
    }
    let before_kill = seen.len();
    let mut process = start();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, b_ev.recv()).await {
            Ok(Some(Event::Message(l))) => seen.push(l),
            Ok(Some(Event::Reconnected { .. })) => reconnects += 1,
            Ok(Some(_)) => {}
            _ => panic!("bob saw {} of {n} lines", seen.len()),
        }
    }
    typist.await.unwrap();
    assert_exactly_once_in_order(&seen, "s", n);
    assert_eq!(reconnects, 1);
    // Everything bob saw, before the kill above all, is in the history, each once, in order,
    // with the number bob saw it under.
    let (carol, mut c_ev) = client("carol", listen).await;
    carol.join("room").await.unwrap();
    carol.history(None, 500).await.unwrap();
    let history = loop {
        let page = expect(&mut c_ev, "history", |e| match e {
            Event::History(l) => Some(l.clone()),
            _ => None,
        })
        .await;
        if page.len() == n {
            break page;
        }
    };
    for (stored, saw) in history.iter().zip(&seen) {
        assert_eq!((stored.seq, &stored.text), (saw.seq, &saw.text));
    }
    assert!(before_kill >= 100);
    process.start_kill().unwrap();
    let _ = process.wait().await;
}

#[tokio::test]
async fn a_crashed_session_server_is_restarted_and_touches_no_other_session() {
    let directory = Directory::default();
    let config = CoordinatorConfig {
        directory: Some(directory.clone()),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let (carol, mut c_ev) = client("carol", coord.addr).await;
    let (dave, mut d_ev) = client("dave", coord.addr).await;
    let doomed = alice.start_session(Some("doomed")).await.unwrap().session;
    bob.join("doomed").await.unwrap();
    carol.start_session(Some("safe")).await.unwrap();
    dave.join("safe").await.unwrap();
    alice.say("before").await.unwrap();
    messages(&mut b_ev, 1).await;

    assert!(directory.crash(doomed.id));
    for events in [&mut a_ev, &mut b_ev] {
        expect(events, "the disconnect", |e| match e {
            Event::Disconnected { retrying, .. } => {
                assert!(retrying);
                Some(())
            }
            _ => None,
        })
        .await;
        expect(events, "the reconnect", |e| {
            matches!(e, Event::Reconnected { .. }).then_some(())
        })
        .await;
    }
    alice.say("after").await.unwrap();
    let line = messages(&mut b_ev, 1).await.remove(0);
    assert_eq!((line.text.as_str(), line.seq), ("after", 2));

    // The other session never noticed.
    carol.say("still fine").await.unwrap();
    assert_eq!(messages(&mut d_ev, 1).await[0].text, "still fine");
    for events in [&mut c_ev, &mut d_ev] {
        expect_none(events, Duration::from_millis(100), |e| {
            matches!(e, Event::Disconnected { .. } | Event::Reconnected { .. })
        })
        .await;
    }
    coord.stop().await;
}

#[tokio::test]
async fn a_member_that_goes_silent_leaves_every_roster_within_seconds() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    // A half-open peer: joined, then never another byte (no pings), socket left open.
    let token = token_for("zombie", coord.addr).await;
    let mut zombie = TcpStream::connect(info.server).await.unwrap();
    zombie
        .write_all(hello("zombie", &token, "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await
        .unwrap();
    eventually("zombie joined", || async { alice.members().len() == 2 }).await;
    let started = Instant::now();
    let gone = expect(&mut a_ev, "the zombie's departure", |e| match e {
        Event::Presence { left, .. } => left.iter().find(|d| d.user == "zombie").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(gone.reason, LeaveReason::Disconnected);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "dropped too early: {took:?}"
    );
    // Alice said nothing either, but her client pings: she is still in, and heard.
    alice.say("still here").await.unwrap();
    assert_eq!(messages(&mut a_ev, 1).await[0].text, "still here");
    assert_eq!(alice.members().len(), 1);
    drop(zombie);
}

#[tokio::test]
async fn ctrl_c_tells_members_finishes_writes_and_exits_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let listen = free_udp_port();
    let process = coordinator_process(listen, &db);
    let (alice, mut a_ev) = client("alice", listen).await;
    alice.start_session(Some("room")).await.unwrap();
    // Within the default burst of the rate limit.
    for i in 0..40 {
        alice.say(&format!("s{i}")).await.unwrap();
    }
    let _ = lines_with_prefix(&mut a_ev, "s", 40, WAIT).await;

    let pid = process.id().unwrap() as libc::pid_t;
    let started = Instant::now();
    // SAFETY: sending a signal to our own child process, whose pid we hold.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGINT) },
        0,
        "Ctrl-C delivered"
    );
    let mut process = process;
    let exit = tokio::time::timeout(Duration::from_secs(5), process.wait())
        .await
        .expect("the coordinator exits")
        .unwrap();
    let took = started.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let reason = expect(&mut a_ev, "the goodbye", |e| match e {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("shutting down"), "{reason}");
    alice.leave().await;

    // Everything said before the signal is in the database.
    let mut process = coordinator_process(listen, &db);
    let mut config = client_config("bob", listen);
    config.history_on_join = 100;
    let (bob, mut events) = logged_in(config).await;
    bob.join("room").await.unwrap();
    let history = expect(&mut events, "history", |e| match e {
        Event::History(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(history.len(), 40);
    process.start_kill().unwrap();
    let _ = process.wait().await;
}

#[tokio::test]
async fn a_flooding_member_is_rate_limited_told_so_and_others_are_unharmed() {
    let coord = TestCoordinator::start().await; // default limit: 20/s, burst 50
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    let info = bob.start_session(Some("room")).await.unwrap().session;
    // The client library paces itself to the limit; a flooder speaks the protocol by hand.
    let mut flooder = RawMember::joined(info.server, coord.addr, "alice").await;
    let flood: String = (0..200)
        .map(|i| format!("{{\"type\":\"say\",\"text\":\"f{i}\"}}\n"))
        .collect();
    flooder.send(flood.as_bytes()).await;
    let told = loop {
        let line = flooder.json().await;
        if line["type"] == "error" {
            break line;
        }
    };
    assert_eq!(told["code"], "rate_limited", "{told}");
    let message = told["message"].as_str().unwrap();
    assert!(message.contains("per second"), "{message}");
    // Bob still talks, and what got through is a prefix-free, ordered subset.
    bob.say("bob is fine").await.unwrap();
    let mut flood = 0;
    loop {
        let line = messages(&mut b_ev, 1).await.remove(0);
        if line.from == "bob" {
            break;
        }
        flood += 1;
    }
    assert!((50..200).contains(&flood), "{flood} flood lines passed");
}

#[tokio::test]
async fn member_and_session_limits_are_enforced_with_clear_errors() {
    let config = CoordinatorConfig {
        max_members: 2,
        max_sessions: 1,
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (a, _a) = client("alice", coord.addr).await;
    let (b, _b) = client("bob", coord.addr).await;
    let (c, _c) = client("carol", coord.addr).await;
    a.start_session(Some("small")).await.unwrap();
    b.join("small").await.unwrap();
    match c.join("small").await {
        Err(confab::client::ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Full);
            assert!(e.message.contains("full"), "{}", e.message);
        }
        other => panic!("expected full, got {other:?}"),
    }
    match c.start_session(Some("second")).await {
        Err(confab::client::ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::Full),
        other => panic!("expected full, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_datagrams_to_a_client_change_nothing() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let (bob, _b) = client("bob", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    bob.join("room").await.unwrap();
    let noise = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b"\xff\xfe"[..],
        b"{}",
        b"{\"type\":\"dm\"}",
        b"{\"type\":\"ack\",\"id\":\"nope\"}",
        &[b'x'; 3000][..],
    ] {
        noise.send_to(junk, alice.endpoint()).await.unwrap();
    }
    bob.dm("alice", "still works").await.unwrap();
    let text = expect(&mut a_ev, "the real message", |e| match e {
        Event::Private { text, .. } => Some(text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(text, "still works");
}

#[tokio::test]
async fn a_private_message_survives_a_relay_that_drops_duplicates_and_reorders() {
    let coord = TestCoordinator::start().await;
    let mut a_cfg = client_config("alice", coord.addr);
    let mut b_cfg = client_config("bob", coord.addr);
    // Learn the real local ports first, then put the lossy relay between them.
    let probe_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probe_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (a_real, b_real) = (probe_a.local_addr().unwrap(), probe_b.local_addr().unwrap());
    drop((probe_a, probe_b));
    let relay = LossyPair::start(a_real, b_real, Faults::harsh(42)).await;
    a_cfg.bind = Some(a_real);
    b_cfg.bind = Some(b_real);
    a_cfg.advertise = Some(relay.a_face);
    b_cfg.advertise = Some(relay.b_face);
    // Only through the lossy relay: their own addresses would reach each other without loss.
    a_cfg.share_local = false;
    b_cfg.share_local = false;
    let (alice, mut a_ev) = logged_in(a_cfg).await;
    let (bob, mut b_ev) = logged_in(b_cfg).await;
    alice.start_session(Some("lossy")).await.unwrap();
    bob.join("lossy").await.unwrap();
    eventually("alice sees bob", || async { alice.members().len() == 2 }).await;

    let n = 30;
    let (a2, b2) = (alice.clone(), bob.clone());
    let sender_a = tokio::spawn(async move {
        for i in 0..n {
            a2.dm("bob", &format!("a{i}")).await.unwrap();
        }
    });
    let sender_b = tokio::spawn(async move {
        for i in 0..n {
            b2.dm("alice", &format!("b{i}")).await.unwrap();
        }
    });
    sender_a.await.unwrap();
    sender_b.await.unwrap();
    for (events, prefix) in [(&mut b_ev, "a"), (&mut a_ev, "b")] {
        let mut got = Vec::new();
        while got.len() < n {
            got.push(
                expect(events, "a private message", |e| match e {
                    Event::Private { text, .. } => Some(text.clone()),
                    _ => None,
                })
                .await,
            );
        }
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), n, "a message was shown twice: {got:?}");
        // Each send waited for its ack, so order is kept too.
        let expected: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(got, expected);
        expect_none(events, Duration::from_millis(300), |e| {
            matches!(e, Event::Private { .. })
        })
        .await;
    }
    assert!(
        relay.stats.dropped.load(Ordering::Relaxed) > 10,
        "the relay really dropped"
    );
    assert!(
        relay.stats.duplicated.load(Ordering::Relaxed) > 3,
        "the relay really duplicated"
    );
}

#[tokio::test]
async fn every_request_succeeds_once_through_a_lossy_relay() {
    let coord = TestCoordinator::start().await;
    let nat = LossyNat::start(coord.addr, Faults::harsh(7)).await;
    let (alice, _a) = client("alice", nat.addr).await;
    for i in 0..15 {
        alice.create(Some(&format!("s{i}"))).await.unwrap();
    }
    let list = alice.list().await.unwrap();
    assert_eq!(list.len(), 15, "no create ran twice, none was lost");
    assert!(nat.stats.dropped.load(Ordering::Relaxed) > 3);
    // The observed endpoint is the relay's upstream socket, as a NAT would make it.
    assert_ne!(alice.endpoint(), alice.local_udp());
}

#[tokio::test]
async fn a_rejoin_that_missed_more_than_memory_holds_gets_everything_from_storage() {
    let config = CoordinatorConfig {
        recent_messages: 10,
        ..no_rate_limit(test_config())
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    for i in 0..40 {
        alice.say(&format!("r{i}")).await.unwrap();
    }
    messages(&mut a_ev, 40).await;
    // Bob comes back having seen up to seq 3: 37 lines missed, only 10 in memory.
    let token = token_for("bob", coord.addr).await;
    let mut bob = RawMember::connect(info.server).await;
    let hello = format!(
        r#"{{"type":"hello","user":"bob","token":"{token}","udp":"127.0.0.1:9","since":3}}"#
    ) + "\n";
    bob.send(hello.as_bytes()).await;
    let mut seqs = Vec::new();
    while seqs.len() < 37 {
        let v = bob.json().await;
        assert_ne!(v["code"], "gap", "nothing should be missing: {v}");
        if v["type"] == "msg" {
            seqs.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, (4..=40).collect::<Vec<u64>>());
    // And live lines follow in order.
    alice.say("live").await.unwrap();
    let live = loop {
        let v = bob.json().await;
        if v["type"] == "msg" {
            break v;
        }
    };
    assert_eq!(live["seq"], 41);
}

#[tokio::test]
async fn a_rejoin_replay_stops_at_its_byte_budget_and_says_what_it_left_out() {
    let coord = TestCoordinator::start_with(no_rate_limit(test_config())).await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    // 1100 lines of 4000 bytes: more than the 4 MiB a replay may carry.
    let n = 1100;
    for i in 0..n {
        alice
            .say(&format!("{i:05} {}", "x".repeat(3990)))
            .await
            .unwrap();
    }
    messages(&mut a_ev, n).await;
    let token = token_for("bob", coord.addr).await;
    let mut bob = RawMember::connect(info.server).await;
    let hello = format!(
        r#"{{"type":"hello","user":"bob","token":"{token}","udp":"127.0.0.1:9","since":0}}"#
    ) + "\n";
    bob.send(hello.as_bytes()).await;
    assert_eq!(bob.json().await["type"], "welcome");
    let gap = bob.json().await;
    assert_eq!(gap["code"], "gap", "{gap}");
    let missed: u64 = gap["message"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The newest lines come, contiguous, up to the last one.
    let mut seqs = Vec::new();
    while seqs.last() != Some(&(n as u64)) {
        let v = bob.json().await;
        assert_eq!(v["type"], "msg");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs[0], missed + 1);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(seqs.len() * 4000 <= 4 * 1024 * 1024 + 4000 * 2);
}
