//! Issue 14, session hosts: coordinators that only direct (`--no-local-sessions`) place every
//! session on the least-loaded `confab host` of the group, all on one PostgreSQL database; a
//! host or a coordinator that dies loses nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use common::postgres::{cluster, config_on, coordinator_process, free_udp_port, host_process};
use common::*;
use confab::client::{Client, ClientError, Event};
use confab::host::HostConfig;
use confab::protocol::{ChatLine, ErrorCode};
use confab::store::{Database, HostKind, HostLoad};
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The session hosts' addresses: one loopback address each, so a server's address says which
/// host serves it.
const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// Waits until `n` hosts have a live heartbeat in the database.
async fn hosts_live(url: &str, n: usize) {
    let (db, _finished) = confab::store::open(Some(&Database::parse(url)))
        .await
        .unwrap();
    eventually(&format!("{n} hosts live"), || {
        let db = db.clone();
        async move {
            let hosts = db.hosts().await.unwrap();
            hosts
                .iter()
                .filter(|h| h.load.kind == HostKind::Host)
                .count()
                == n
        }
    })
    .await;
}

/// Where session `id` is served now, as the database has it.
async fn served_at(url: &str, id: Uuid) -> Option<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    let row = client
        .query_one("SELECT server FROM sessions WHERE id = $1", &[&id])
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    row.get(0)
}

/// Every stored line of session `id`, in order.
async fn stored(url: &str, id: Uuid) -> Vec<(u64, String)> {
    let (db, finished) = confab::store::open(Some(&Database::parse(url)))
        .await
        .unwrap();
    let lines = db.messages_after(id, 0, 10_000).await.unwrap();
    drop(db);
    finished.wait().await;
    lines.into_iter().map(|m| (m.seq, m.text)).collect()
}

/// Group lines with `prefix` from `events` until `n`, with whether the client reconnected
/// meanwhile.
async fn lines(events: &mut Receiver<Event>, prefix: &str, n: usize) -> (Vec<ChatLine>, bool) {
    let (mut got, mut reconnected) = (Vec::new(), false);
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message(l))) if l.text.starts_with(prefix) => got.push(l),
            Ok(Some(Event::Reconnected { .. })) => reconnected = true,
            Ok(Some(_)) => {}
            _ => panic!("only {} of {n} {prefix} lines arrived", got.len()),
        }
    }
    (got, reconnected)
}

/// Waits until `client`'s `list` shows every room served on its host with both its members.
async fn listed_as_served(client: &Client, rooms: &[Room]) {
    eventually(
        "the directory shows where each session is served and who is in it",
        || async {
            let Ok(listed) = client.list().await else {
                return false;
            };
            rooms.iter().all(|room| {
                listed.iter().any(|e| {
                    e.id == room.id
                        && e.server.map(|s| s.ip()) == Some(room.host)
                        && e.member_count == 2
                        && e.members.len() == 2
                })
            })
        },
    )
    .await;
}

/// Lines the speaker of one room types while its host is killed.
const STREAM: usize = 300;

/// `speaker` says `prefix0` … one every 2 ms, in a task of its own.
fn typist(speaker: &Client, prefix: String, n: usize) -> tokio::task::JoinHandle<()> {
    let speaker = speaker.clone();
    tokio::spawn(async move {
        for k in 0..n {
            speaker.say(&format!("{prefix}{k}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

struct Room {
    id: Uuid,
    host: IpAddr,
    speaker: Client,
    listener: Client,
    heard: Receiver<Event>,
    /// Kept: a client whose events nobody takes ends its link.
    _said: Receiver<Event>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_hosts_and_come_back_when_a_host_and_a_coordinator_die() {
    let Some(pg) = cluster() else { return };
    let url = pg.database().await;
    let (a_addr, b_addr) = (free_udp_port(), free_udp_port());
    let directing = ["--no-local-sessions", "--no-abuse-limits"];
    let mut a = coordinator_process(a_addr, &url, &directing);
    let mut b = coordinator_process(b_addr, &url, &directing);
    let mut hosts: Vec<_> = HOSTS.iter().map(|ip| host_process(&url, ip)).collect();
    hosts_live(&url, 3).await;

    // Six sessions, made and joined half through each coordinator; each client knows both.
    let group = |user: &str, first: bool| {
        let (one, other) = if first {
            (a_addr, b_addr)
        } else {
            (b_addr, a_addr)
        };
        let mut c = client_config(user, one);
        c.more_coordinators = vec![other];
        c
    };
    let mut rooms = Vec::new();
    for i in 0..6 {
        let (speaker, said) = logged_in(group(&format!("speaker{i}"), i % 2 == 0)).await;
        let (listener, heard) = logged_in(group(&format!("listener{i}"), i % 2 == 1)).await;
        let name = format!("room{i}");
        let made = speaker.start_session(Some(&name)).await.unwrap();
        let joined = listener.join(&name).await.unwrap();
        assert_eq!(
            made.session.server, joined.session.server,
            "one server per session"
        );
        rooms.push(Room {
            id: made.session.id,
            host: made.session.server.ip(),
            speaker,
            listener,
            heard,
            _said: said,
        });
    }
    let per_host: HashMap<IpAddr, usize> = rooms.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.host).or_default() += 1;
        m
    });
    assert_eq!(
        per_host.len(),
        3,
        "six sessions on three idle hosts use all three: {per_host:?}"
    );
    assert!(
        per_host.values().all(|n| *n == 2),
        "least loaded first: {per_host:?}"
    );

    // Either coordinator lists every session where it is served, with its members, though
    // neither serves any.
    listed_as_served(&rooms[0].listener, &rooms).await;

    for (i, room) in rooms.iter_mut().enumerate() {
        for k in 0..5 {
            room.speaker.say(&format!("r{i}-{k}")).await.unwrap();
        }
        let (seen, _) = lines(&mut room.heard, &format!("r{i}-"), 5).await;
        assert_eq!(seen.len(), 5);
    }

    // SIGKILL one host and one coordinator mid-stream: no goodbyes, no releases, a speaker
    // typing in one of the host's rooms all the while.
    let doomed: IpAddr = HOSTS[1].parse().unwrap();
    let streamed = rooms.iter().position(|r| r.host == doomed).unwrap();
    let typing = typist(&rooms[streamed].speaker, format!("s{streamed}-"), STREAM);
    let mut seen = Vec::new();
    while seen.len() < STREAM / 4 {
        if let Some(Event::Message(l)) = rooms[streamed].heard.recv().await {
            seen.push(l);
        }
    }
    hosts[1].start_kill().unwrap();
    hosts[1].wait().await.unwrap();
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    let prefix = format!("s{streamed}-");
    let (rest, reconnected) = lines(&mut rooms[streamed].heard, &prefix, STREAM - seen.len()).await;
    assert!(reconnected, "the streamed room's listener reconnected");
    seen.extend(rest);
    typing.await.unwrap();
    let texts: Vec<String> = seen.iter().map(|l| l.text.clone()).collect();
    let want: Vec<String> = (0..STREAM).map(|k| format!("{prefix}{k}")).collect();
    assert_eq!(
        texts, want,
        "every streamed line once, in order, across the kill"
    );

    for (i, room) in rooms.iter().enumerate() {
        for k in 5..10 {
            room.speaker.say(&format!("r{i}-{k}")).await.unwrap();
        }
    }
    let mut back_after = Vec::new();
    for (i, room) in rooms.iter_mut().enumerate() {
        let (seen, reconnected) = lines(&mut room.heard, &format!("r{i}-"), 5).await;
        let texts: Vec<String> = seen.iter().map(|l| l.text.clone()).collect();
        let want: Vec<String> = (5..10).map(|k| format!("r{i}-{k}")).collect();
        assert_eq!(texts, want, "room {i}: once each, in order");
        if room.host == doomed {
            // (The streamed room's reconnect was seen, and checked, with its stream.)
            assert!(
                reconnected || i == streamed,
                "room {i}'s listener reconnected"
            );
            back_after.push(killed.elapsed());
            let now = served_at(&url, room.id).await.expect("served again");
            let ip: IpAddr = now.parse::<std::net::SocketAddr>().unwrap().ip();
            assert_ne!(ip, doomed, "room {i} is served by a live host now");
        }
    }
    assert_eq!(back_after.len(), 2);
    for took in &back_after {
        assert!(
            *took < Duration::from_secs(15),
            "a session came back {took:?} after its host died"
        );
    }
    eprintln!("sessions of the killed host were served again after {back_after:?}");

    // The listing follows the sessions to their new hosts (asked of the coordinator left).
    for room in rooms.iter_mut() {
        room.host = served_at(&url, room.id)
            .await
            .expect("served")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .ip();
    }
    listed_as_served(&rooms[1].speaker, &rooms).await;

    // Everything any member saw is stored, once, in order, numbered without gaps, under the
    // number it was seen with.
    for (i, room) in rooms.iter().enumerate() {
        let lines = stored(&url, room.id).await;
        let mut want: Vec<String> = (0..5).map(|k| format!("r{i}-{k}")).collect();
        if i == streamed {
            for l in &seen {
                assert!(
                    lines.contains(&(l.seq, l.text.clone())),
                    "{} seen as {} is stored so",
                    l.text,
                    l.seq
                );
            }
            want.extend((0..STREAM).map(|k| format!("s{i}-{k}")));
        }
        want.extend((5..10).map(|k| format!("r{i}-{k}")));
        let want: Vec<(u64, String)> = (1..).zip(want).collect();
        assert_eq!(lines, want, "room {i}'s history");
    }
    // Every client is still in its session (both members of each room in one roster).
    for room in &rooms {
        let seen: HashSet<String> = room
            .listener
            .members()
            .into_iter()
            .map(|m| m.user)
            .collect();
        assert_eq!(seen.len(), 2, "both members back: {seen:?}");
        assert!(room.speaker.session().is_some());
    }

    b.start_kill().unwrap();
    let _ = b.wait().await;
    for mut h in hosts {
        let _ = h.start_kill();
        let _ = h.wait().await;
    }
}

/// A session host in this process, stopped when the token is cancelled.
fn host_task(
    db: &Database,
    ip: &str,
    lease: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = HostConfig::new(db.clone(), ip.parse().unwrap());
    config.lease = lease;
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { confab::host::run(config, stop).await.unwrap() }
    });
    (stop, task)
}

/// A coordinator that only directs, on `db`.
async fn directing(db: &Database) -> TestCoordinator {
    let mut config = config_on(db);
    config.local_sessions = false;
    TestCoordinator::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_live_host_a_create_says_so_and_a_host_that_does_not_serve_is_passed_over() {
    let Some(pg) = cluster() else { return };
    let url = pg.database().await;
    let db = Database::parse(&url);
    let coord = directing(&db).await;
    let (alice, _a) = client("alice", coord.addr).await;
    let refused = |r: Result<confab::client::Joined, ClientError>| match r {
        Err(ClientError::Refused(e)) if e.code == ErrorCode::Full => e.message,
        other => panic!("expected full, got {other:?}"),
    };
    let said = refused(alice.start_session(Some("nowhere")).await);
    assert!(said.contains("no session host"), "{said}");

    // A host that says it lives but never takes up what is placed on it (wedged, or deaf to
    // the group): the create waits 3 s for it, then that host is passed over.
    let (wedged, _w) = confab::store::open(Some(&db)).await.unwrap();
    let load = HostLoad {
        kind: HostKind::Host,
        address: "127.0.0.9".into(),
        members: 0,
        sessions: 0,
    };
    wedged
        .heartbeat(load, Duration::from_secs(60))
        .await
        .unwrap();
    let asked = tokio::time::Instant::now();
    let said = refused(alice.start_session(Some("stuck")).await);
    let took = asked.elapsed();
    assert!(said.contains("no session host"), "{said}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "answered after {took:?}"
    );
    assert_eq!(
        served_at(&url, session_id(&url, "stuck").await).await,
        None,
        "the placement was undone"
    );

    // A real host: the session made above is served there, and so is a new one.
    let (stop, host) = host_task(&db, "127.0.0.5", Duration::from_secs(6));
    hosts_live(&url, 2).await;
    let joined = alice.join("stuck").await.unwrap();
    assert_eq!(joined.session.server.ip().to_string(), "127.0.0.5");
    let made = alice.start_session(Some("fresh")).await.unwrap();
    assert_eq!(made.session.server.ip().to_string(), "127.0.0.5");
    // Closed through the coordinator, the session ends on its host, and its member is told.
    let (bob, mut bob_ev) = client("bob", coord.addr).await;
    bob.join("fresh").await.unwrap();
    alice.close_session("fresh").await.unwrap();
    let by = expect(&mut bob_ev, "the close, on the host", |e| match e {
        Event::Closed { by, .. } => Some(by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by.as_deref(), Some("alice"), "the host says who closed it");
    alice.leave().await;
    stop.cancel();
    host.await.unwrap();
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_the_database_stops_serving_within_a_lease() {
    let Some(pg) = cluster() else { return };
    let url = pg.database().await;
    let db = Database::parse(&url);
    let coord = directing(&db).await;
    let (stop, host) = host_task(&db, "127.0.0.6", Duration::from_secs(2));
    hosts_live(&url, 1).await;
    let (alice, mut events) = client("alice", coord.addr).await;
    let made = alice.start_session(Some("cut-off")).await.unwrap();
    assert_eq!(made.session.server.ip().to_string(), "127.0.0.6");
    // Another host could take the session once the lease runs out: this one stops first.
    pg.kill_and_expect_fenced(&mut events, Duration::from_secs(2))
        .await;
    drop(alice);
    stop.cancel();
    host.await.unwrap();
    coord.stop().await;
}

/// The id of the session named `name`.
async fn session_id(url: &str, name: &str) -> Uuid {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    let row = client
        .query_one("SELECT id FROM sessions WHERE name = $1", &[&name])
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    row.get(0)
}
