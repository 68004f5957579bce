//! Issue 14, a coordinator group: several coordinators on one PostgreSQL database, and clients
//! that know them all and go to the next when one stops answering.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::postgres::{cluster, config_on, coordinator_process, free_udp_port};
use common::*;
use confab::client::Event;
use confab::protocol::ChatLine;
use confab::store::Database;

/// Group lines with `prefix` from `events` until `n`, with the reconnects seen meanwhile.
async fn lines(
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    prefix: &str,
    n: usize,
) -> (Vec<ChatLine>, usize) {
    let (mut got, mut reconnects) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message(l))) if l.text.starts_with(prefix) => got.push(l),
            Ok(Some(Event::Reconnected { .. })) => reconnects += 1,
            Ok(Some(_)) => {}
            _ => panic!("only {} of {n} {prefix} lines arrived", got.len()),
        }
    }
    (got, reconnects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_coordinator_stops_its_clients_go_on_through_another_of_the_group() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let config = || config_on(&db);
    let a = TestCoordinator::start_with(config()).await;
    // B's port is known before it runs: clients are told the whole group up front.
    let b_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let a_addr = a.addr;
    let group = |user: &str| {
        let mut c = client_config(user, a_addr);
        c.more_coordinators = vec![b_addr];
        c
    };
    let (alice, _a) = logged_in(group("alice")).await;
    let (bob, mut b_ev) = logged_in(group("bob")).await;
    alice.start_session(Some("group")).await.unwrap();
    bob.join("group").await.unwrap();
    for i in 0..5 {
        alice.say(&format!("g{i}")).await.unwrap();
    }
    let (first, _) = lines(&mut b_ev, "g", 5).await;

    // B starts on the same database: the same identity (clients pin one key for the group),
    // the same accounts and sessions. Then A goes away.
    let b = TestCoordinator::start_on(b_addr, config()).await;
    a.stop().await;

    // The session comes back on B: the clients' rejoin goes to B once A stops answering, and
    // what was said before is still in order, numbered on.
    for i in 5..10 {
        alice.say(&format!("g{i}")).await.unwrap();
    }
    let (after, reconnects) = lines(&mut b_ev, "g", 5).await;
    assert!(reconnects >= 1, "bob reconnected");
    let all: Vec<&ChatLine> = first.iter().chain(&after).collect();
    let texts: Vec<&str> = all.iter().map(|l| l.text.as_str()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("g{i}")).collect();
    assert_eq!(texts, want, "nothing lost, nothing twice, in order");
    let seqs: HashSet<u64> = all.iter().map(|l| l.seq).collect();
    assert_eq!(seqs.len(), 10);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    // And every other request goes to B too.
    let listed = alice.list().await.unwrap();
    assert!(listed.iter().any(|s| s.name.as_deref() == Some("group")));
    let (carol, mut c_ev) = logged_in(group("carol")).await;
    carol.join("group").await.unwrap();
    let history = expect(&mut c_ev, "history", |e| match e {
        Event::History(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        history.len(),
        10,
        "the whole history, from the shared database"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_served_once_whichever_coordinator_of_the_group_is_asked() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let config = || config_on(&db);
    let a = TestCoordinator::start_with(config()).await;
    let (alice, mut a_ev) = client("alice", a.addr).await;
    let first = alice.start_session(Some("once")).await.unwrap().session;
    // Long enough for A to have told the group who is in it: B, not yet started, missed it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = TestCoordinator::start_with(config()).await;
    // Bob asks B, which does not serve the session: A does, and B's answer says so.
    let (bob, mut b_ev) = client("bob", b.addr).await;
    // B, started after A served the session, asked the group to say again who is where.
    eventually(
        "B lists A's session with its server and alice in it",
        || async {
            bob.list().await.is_ok_and(|l| {
                l.iter().any(|e| {
                    e.id == first.id && e.server == Some(first.server) && e.members == ["alice"]
                })
            })
        },
    )
    .await;
    let joined = bob.join("once").await.unwrap();
    assert_eq!(joined.session.server, first.server, "sent to A's server");
    assert_eq!(joined.session.server_key, first.server_key);
    assert_eq!(joined.members.len(), 2, "one room, both in it");
    alice.say("one room").await.unwrap();
    assert_eq!(messages(&mut b_ev, 1).await[0].text, "one room");
    bob.say("indeed").await.unwrap();
    let texts: Vec<String> = messages(&mut a_ev, 2)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, ["one room", "indeed"]);
    // B, started after A served the session, lists it where A serves it, with both in it.
    eventually(
        "B lists A's session with its server and members",
        || async {
            bob.list().await.is_ok_and(|l| {
                l.iter().any(|e| {
                    e.id == first.id
                        && e.server == Some(first.server)
                        && e.member_count == 2
                        && e.members.len() == 2
                })
            })
        },
    )
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_coordinator_is_killed_another_serves_its_session_once_the_lease_runs_out() {
    let Some(pg) = cluster() else { return };
    let url = pg.database().await;
    let (a_addr, b_addr) = (free_udp_port(), free_udp_port());
    let mut a = coordinator_process(a_addr, &url, &[]);
    let group = |user: &str| {
        let mut c = client_config(user, a_addr);
        c.more_coordinators = vec![b_addr];
        c
    };
    let (alice, _a) = logged_in(group("alice")).await;
    let (bob, mut b_ev) = logged_in(group("bob")).await;
    alice.start_session(Some("survivor")).await.unwrap();
    bob.join("survivor").await.unwrap();
    let mut b = coordinator_process(b_addr, &url, &[]);
    for i in 0..5 {
        alice.say(&format!("k{i}")).await.unwrap();
    }
    let (before, _) = lines(&mut b_ev, "k", 5).await;
    // SIGKILL: no goodbye, no release; B must wait out A's lease before serving.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    for i in 5..10 {
        alice.say(&format!("k{i}")).await.unwrap();
    }
    let (after, reconnects) = lines(&mut b_ev, "k", 5).await;
    let took = killed.elapsed();
    assert!(reconnects >= 1);
    assert!(
        took < Duration::from_secs(15),
        "the session came back after {took:?}"
    );
    let texts: Vec<&str> = before
        .iter()
        .chain(&after)
        .map(|l| l.text.as_str())
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    assert_eq!(texts, want, "nothing lost, nothing twice, in order");
    eprintln!("the session was served again {took:?} after the kill");
    b.start_kill().unwrap();
    let _ = b.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_created_and_closed_through_one_coordinator_are_known_to_the_others_at_once() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let config = || config_on(&db);
    let a = TestCoordinator::start_with(config()).await;
    let b = TestCoordinator::start_with(config()).await;
    let (alice, _a) = client("alice", a.addr).await;
    let (bob, mut b_ev) = client("bob", b.addr).await;
    // Created through A after B started: B hears of it from the database (NOTIFY).
    let late = alice.start_session(Some("late")).await.unwrap().session;
    eventually("B lists the new session", || async {
        bob.list().await.unwrap().iter().any(|s| s.id == late.id)
    })
    .await;
    let joined = bob.join("late").await.unwrap();
    assert_eq!(joined.session.server, late.server, "served once, by A");
    // Closed through A: B forgets it, and bob is told who closed it.
    alice.close_session("late").await.unwrap();
    let by = expect(&mut b_ev, "the close", |e| match e {
        Event::Closed { by, .. } => Some(by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by.as_deref(), Some("alice"));
    eventually("B forgets the closed session", || async {
        !bob.list().await.unwrap().iter().any(|s| s.id == late.id)
    })
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_to_another_coordinator_is_done_once() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let config = || config_on(&db);
    let a = TestCoordinator::start_with(config()).await;
    let b = TestCoordinator::start_with(config()).await;
    let raw = SealedRaw::login("quinn", a.addr).await;
    // A registration whose answer from A was lost, retried (the same bytes) to B.
    let register = format!(
        r#"{{"id":40,"op":"register","user":"yara","password":"{}"}}"#,
        password("yara")
    );
    let (sealed, opener) = raw.seal(&register);
    let first = raw.send_sealed(a.addr, &sealed, &opener).await;
    assert_eq!(first["type"], "registered", "{first}");
    let retried = raw.send_sealed(b.addr, &sealed, &opener).await;
    assert_eq!(
        retried["type"], "registered",
        "done once, answered again: {retried}"
    );
    // A create: the retry at B gives the session A made, not name_taken.
    let create = format!(
        r#"{{"id":41,"op":"create","name":"brief","token":"{}"}}"#,
        raw.token
    );
    let (sealed, opener) = raw.seal(&create);
    let created = raw.send_sealed(a.addr, &sealed, &opener).await;
    assert_eq!(created["type"], "session", "{created}");
    let retried = raw.send_sealed(b.addr, &sealed, &opener).await;
    assert_eq!(retried["type"], "session", "{retried}");
    assert_eq!(retried["session"]["id"], created["session"]["id"]);
    assert_eq!(retried["session"]["server"], created["session"]["server"]);
    // An unnamed one too: one session, however many coordinators were asked.
    let unnamed = format!(r#"{{"id":44,"op":"create","token":"{}"}}"#, raw.token);
    let (sealed, opener) = raw.seal(&unnamed);
    let first = raw.send_sealed(a.addr, &sealed, &opener).await;
    let retried = raw.send_sealed(b.addr, &sealed, &opener).await;
    assert_eq!(
        retried["session"]["id"], first["session"]["id"],
        "{retried}"
    );
    // And a close, after B has heard the session is gone.
    let close = format!(
        r#"{{"id":42,"op":"close","session":"brief","token":"{}"}}"#,
        raw.token
    );
    let (sealed, opener) = raw.seal(&close);
    let first = raw.send_sealed(a.addr, &sealed, &opener).await;
    assert_eq!(first["type"], "closed", "{first}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retried = raw.send_sealed(b.addr, &sealed, &opener).await;
    assert_eq!(retried["type"], "closed", "{retried}");
    assert_eq!(retried["session"], first["session"]);
    // A new close of the same name is not found, as ever.
    let again = format!(
        r#"{{"id":43,"op":"close","session":"brief","token":"{}"}}"#,
        raw.token
    );
    let (sealed, opener) = raw.seal(&again);
    let answer = raw.send_sealed(b.addr, &sealed, &opener).await;
    assert_eq!(answer["code"], "session_not_found", "{answer}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_cannot_renew_its_claims_stops_serving_within_a_lease() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let mut config = config_on(&db);
    config.lease = Duration::from_secs(2);
    let a = TestCoordinator::start_with(config).await;
    let (alice, mut events) = client("alice", a.addr).await;
    alice.start_session(Some("cut-off")).await.unwrap();
    // The database goes away: another coordinator could take the session once the lease runs
    // out, so this one must stop serving it by then.
    pg.kill_and_expect_fenced(&mut events, Duration::from_secs(2))
        .await;
    drop(alice);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_rides_out_a_database_restart_and_stores_again() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let mut config = config_on(&db);
    config.lease = Duration::from_secs(2);
    let a = TestCoordinator::start_with(config).await;
    let (alice, mut a_ev) = client("alice", a.addr).await;
    alice.start_session(Some("durable")).await.unwrap();
    alice.say("before").await.unwrap();
    assert_eq!(messages(&mut a_ev, 1).await[0].text, "before");
    // Down long enough that the coordinator gives the session up, then back.
    pg.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.start_again();
    // The client rejoins on its own; the coordinator connects again, claims the session
    // anew and stores what is said after.
    alice.say("after").await.unwrap();
    let (after, _) = lines(&mut a_ev, "after", 1).await;
    assert_eq!(after[0].seq, 2, "numbered on from what was stored");
    let (bob, mut b_ev) = client("bob", a.addr).await;
    bob.join("durable").await.unwrap();
    let history = expect(&mut b_ev, "history", |e| match e {
        Event::History(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    let texts: Vec<&str> = history.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["before", "after"]);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_message_reaches_someone_who_talks_to_another_coordinator_of_the_group() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let a = TestCoordinator::start_with(config_on(&db)).await;
    let b = TestCoordinator::start_with(config_on(&db)).await;
    let group = |user: &str, first, second| {
        let mut c = client_config(user, first);
        c.more_coordinators = vec![second];
        c
    };
    // Alice asks A, dave asks B; neither is in a session.
    let (alice, mut a_ev) = logged_in(group("alice", a.addr, b.addr)).await;
    let (dave, mut d_ev) = logged_in(group("dave", b.addr, a.addr)).await;
    // A found dave though he announces himself to B first: to every coordinator of the group.
    eventually("A knows dave", || async {
        alice.member("dave").await.is_ok()
    })
    .await;
    alice.dm("dave", "across the group").await.unwrap();
    let got = first_private(&mut d_ev).await;
    assert_eq!(got, "across the group");
    dave.dm("alice", "and back").await.unwrap();
    assert_eq!(first_private(&mut a_ev).await, "and back");
    b.stop().await;
    a.stop().await;
}

async fn first_private(events: &mut tokio::sync::mpsc::Receiver<Event>) -> String {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Event::Private { text, .. })) => return text,
            Ok(Some(_)) => {}
            other => panic!("no private message: {other:?}"),
        }
    }
}
