//! Issue 14, storage: every case runs against both engines, SQLite in a file and PostgreSQL in
//! a throwaway cluster of its own (each case in a fresh database), through the one `Storage`
//! interface the coordinator uses. Then a coordinator on PostgreSQL, restarted: accounts,
//! sessions and history are still there.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use common::postgres::{cluster, config_on};
use common::*;
use confab::client::Event;
use confab::session::Committed;
use confab::store::{
    self, Database, Opened, Placement, Serve, SessionRecord, Storage, StoreError, StoredMessage,
};
use futures::future::BoxFuture;
use uuid::Uuid;

type Case = fn(Arc<dyn Storage>) -> BoxFuture<'static, ()>;

const CASES: &[(&str, Case)] = &[
    ("users", |s| Box::pin(users(s))),
    ("secrets", |s| Box::pin(secrets(s))),
    ("sessions", |s| Box::pin(sessions(s))),
    ("history", |s| Box::pin(history(s))),
    ("order", |s| Box::pin(order(s))),
    ("once", |s| Box::pin(once(s))),
];

/// A request retried to another coordinator of the group (the same bytes, so the same digest)
/// is done once: the second time gives what the first made.
async fn once(s: Arc<dyn Storage>) {
    let created = Utc::now().trunc_subsecs(3);
    let digest = Some([7u8; 32]);
    let first = s
        .create_user("zed".into(), "h".into(), created, digest)
        .await
        .unwrap();
    let again = s
        .create_user("zed".into(), "h".into(), created, digest)
        .await
        .unwrap();
    assert_eq!(again, first, "done once, answered twice");
    // Another request for the same name is a clash, as ever.
    let other = s
        .create_user("ZED".into(), "h".into(), created, Some([8u8; 32]))
        .await;
    assert!(matches!(other, Err(StoreError::NameTaken)), "{other:?}");
    let rec = session(Some("brief"), "zed");
    here(&s, rec.id, Some(rec.clone()), 10).await.unwrap();
    assert!(s.delete_session(rec.id, Some([9u8; 32])).await.unwrap());
    assert!(
        s.delete_session(rec.id, Some([9u8; 32])).await.unwrap(),
        "the retried close is answered as done"
    );
    assert!(!s.delete_session(rec.id, Some([10u8; 32])).await.unwrap());
}

fn serve(lease: Duration) -> Serve {
    Serve {
        server: "127.0.0.1:4000".parse().unwrap(),
        server_key: "key".into(),
        lease,
        placement: Placement::Here,
    }
}

/// Opens a session that this storage's host may serve (no one else claims it here).
async fn here(
    s: &Arc<dyn Storage>,
    id: Uuid,
    new: Option<SessionRecord>,
    recent: usize,
) -> Result<(u64, Vec<StoredMessage>), StoreError> {
    match s
        .open_session(id, new, recent, serve(Duration::from_secs(60)), None)
        .await?
    {
        Opened::Here { seq, recent } => Ok((seq, recent)),
        other => panic!("expected to serve it here, got {other:?}"),
    }
}

fn session(name: Option<&str>, creator: &str) -> SessionRecord {
    SessionRecord {
        id: Uuid::new_v4(),
        name: name.map(String::from),
        creator: creator.into(),
        created: Utc::now().trunc_subsecs(3),
    }
}

fn message(session: Uuid, seq: u64) -> StoredMessage {
    StoredMessage {
        session,
        seq,
        time: Utc::now().trunc_subsecs(3),
        sender: "alice".into(),
        text: format!("line {seq} — ünïcode ✓"),
        client_id: seq.is_multiple_of(2).then_some(seq * 1000),
    }
}

async fn users(s: Arc<dyn Storage>) {
    let created = Utc::now().trunc_subsecs(3);
    let alice = s
        .create_user("Alice".into(), "hash-a".into(), created, None)
        .await
        .unwrap();
    assert_eq!(alice.name, "Alice");
    let again = s
        .create_user("aLICE".into(), "hash-b".into(), created, None)
        .await;
    assert!(matches!(again, Err(StoreError::NameTaken)), "{again:?}");
    let found = s
        .user("ALICE".into())
        .await
        .unwrap()
        .expect("found in any case");
    assert_eq!(found, alice);
    assert_eq!(s.user("bob".into()).await.unwrap(), None);
    let bob = s
        .create_user("bob".into(), "hash-b".into(), created, None)
        .await
        .unwrap();
    assert_ne!(bob.id, alice.id);
}

async fn secrets(s: Arc<dyn Storage>) {
    let token = s.token_secret().await.unwrap();
    let identity = s.identity_secret().await.unwrap();
    assert_ne!(token, identity);
    assert_ne!(token, [0; 32]);
    assert_eq!(
        s.token_secret().await.unwrap(),
        token,
        "made once, then kept"
    );
    assert_eq!(s.identity_secret().await.unwrap(), identity);
    assert_eq!(s.schema_version().await.unwrap(), 5);
}

async fn sessions(s: Arc<dyn Storage>) {
    let mut lobby = session(Some("Lobby"), "alice");
    // Listed by creation time: the first a second older than the rest, whatever the clock.
    lobby.created -= chrono::Duration::seconds(1);
    let (seq, recent) = here(&s, lobby.id, Some(lobby.clone()), 50).await.unwrap();
    assert_eq!((seq, recent.len()), (0, 0));
    let clash = session(Some("LOBBY"), "bob");
    let taken = here(&s, clash.id, Some(clash), 50).await;
    assert!(matches!(taken, Err(StoreError::NameTaken)), "{taken:?}");
    // Unnamed sessions do not clash with each other.
    let (a, b) = (session(None, "bob"), session(None, "bob"));
    for rec in [&a, &b] {
        here(&s, rec.id, Some(rec.clone()), 50).await.unwrap();
    }
    let listed = s.sessions().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], lobby, "oldest first, as stored");
    // Reopening a known session stores nothing new and reads its history.
    append(&s, message(lobby.id, 1), None).await;
    let (seq, recent) = here(&s, lobby.id, None, 50).await.unwrap();
    assert_eq!((seq, recent.len()), (1, 1));
    assert!(s.delete_session(lobby.id, None).await.unwrap());
    assert!(
        !s.delete_session(lobby.id, None).await.unwrap(),
        "gone already"
    );
    assert_eq!(
        s.last_seq(lobby.id).await.unwrap(),
        0,
        "its history went with it"
    );
    assert_eq!(s.sessions().await.unwrap().len(), 2);
    // The name is free again.
    let reborn = session(Some("lobby"), "carol");
    here(&s, reborn.id, Some(reborn), 50).await.unwrap();
}

/// Appends as a room does: at once, or (returning true) after waiting for room in the queue.
async fn append(s: &Arc<dyn Storage>, m: StoredMessage, done: Option<Committed>) -> bool {
    match s.append(m, done) {
        Some(stalled) => {
            stalled.await;
            true
        }
        None => false,
    }
}

async fn history(s: Arc<dyn Storage>) {
    let rec = session(Some("h"), "alice");
    here(&s, rec.id, Some(rec.clone()), 10).await.unwrap();
    let id = rec.id;
    // More than a full queue's worth (100,000), queued as fast as a room could: beyond the
    // queue's room the appender is held back, and nothing is lost.
    let lines = 150_000u64;
    // The room is told how far its lines are written, batch by batch.
    let done = Committed::new(0);
    let mut stalls = 0;
    for seq in 1..=lines {
        stalls += append(&s, message(id, seq), Some(done.clone())).await as usize;
    }
    eprintln!("{stalls} appends waited for room in the queue");
    // A message already stored, and one for a session that does not exist, are skipped
    // without failing the batch around them.
    append(&s, message(id, 7), None).await;
    append(&s, message(Uuid::new_v4(), 1), None).await;
    append(&s, message(id, lines + 1), Some(done.clone())).await;
    assert_eq!(s.last_seq(id).await.unwrap(), lines + 1);
    assert_eq!(done.written(), lines + 1, "marked once written");
    let newest = s.history(id, None, 10).await.unwrap();
    let seqs: Vec<u64> = newest.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (lines - 8..=lines + 1).collect::<Vec<_>>(),
        "oldest first"
    );
    assert_eq!(newest[9], message(id, lines + 1).with_time(newest[9].time));
    let page = s.history(id, Some(50), 5).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [45, 46, 47, 48, 49]
    );
    assert_eq!(page[1].client_id, Some(46_000));
    assert_eq!(page[0].client_id, None);
    assert_eq!(page[0].text, "line 45 — ünïcode ✓");
    let after = s.messages_after(id, lines - 2, 100).await.unwrap();
    assert_eq!(
        after.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [lines - 1, lines, lines + 1]
    );
    assert!(s.history(id, Some(1), 10).await.unwrap().is_empty());
    assert!(s.messages_after(id, u64::MAX, 10).await.unwrap().is_empty());
    let (seq, recent) = here(&s, id, None, 3).await.unwrap();
    assert_eq!((seq, recent.len()), (lines + 1, 3));
}

trait WithTime {
    fn with_time(self, time: chrono::DateTime<Utc>) -> Self;
}

impl WithTime for StoredMessage {
    fn with_time(mut self, time: chrono::DateTime<Utc>) -> Self {
        self.time = time;
        self
    }
}

async fn order(s: Arc<dyn Storage>) {
    // Calls are done in the order they are made, whoever waits for them: a close asked right
    // after a create (neither awaited yet) finds the session.
    let rec = session(Some("quick"), "alice");
    let created = s.open_session(
        rec.id,
        Some(rec.clone()),
        10,
        serve(Duration::from_secs(60)),
        None,
    );
    let deleted = s.delete_session(rec.id, None);
    assert!(deleted.await.unwrap(), "the create went first");
    created.await.unwrap();
    assert!(s.sessions().await.unwrap().is_empty());
}

/// Two hosts on one database (two coordinators of a group): a session is served by one at a
/// time; the other is sent there while the lease lives, takes over once it runs out, and the
/// first, fenced off, writes nothing more.
async fn claims(db: Database) {
    let (a, a_done) = store::open(Some(&db)).await.unwrap();
    let (b, b_done) = store::open(Some(&db)).await.unwrap();
    assert_ne!(a.host(), b.host());
    let rec = session(Some("shared"), "alice");
    let lease = Duration::from_millis(1500);
    let at_a = Serve {
        server: "127.0.0.1:4001".parse().unwrap(),
        server_key: "key-a".into(),
        lease,
        placement: Placement::Here,
    };
    let at_b = Serve {
        server: "127.0.0.1:4002".parse().unwrap(),
        server_key: "key-b".into(),
        lease,
        placement: Placement::Here,
    };
    let opened = a.open_session(rec.id, Some(rec.clone()), 10, at_a.clone(), None);
    assert!(matches!(opened.await.unwrap(), Opened::Here { seq: 0, .. }));
    append(&a, message(rec.id, 1), None).await;
    // B is sent to A's server while A's lease lives, renewed or not yet run out.
    match b
        .open_session(rec.id, None, 10, at_b.clone(), None)
        .await
        .unwrap()
    {
        Opened::Elsewhere { server, server_key } => {
            assert_eq!((server, server_key.as_str()), (at_a.server, "key-a"));
        }
        other => panic!("expected A's server, got {other:?}"),
    }
    assert_eq!(a.renew(lease).await.unwrap(), 1);
    tokio::time::sleep(lease / 2).await;
    assert!(matches!(
        b.open_session(rec.id, None, 10, at_b.clone(), None)
            .await
            .unwrap(),
        Opened::Elsewhere { .. }
    ));
    // A stops renewing (it died, or lost the database): after the lease, B serves it, from
    // what A stored.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    match b
        .open_session(rec.id, None, 10, at_b.clone(), None)
        .await
        .unwrap()
    {
        Opened::Here { seq, recent } => assert_eq!((seq, recent.len()), (1, 1)),
        other => panic!("expected to take over, got {other:?}"),
    }
    // A, fenced off, writes nothing more; B does.
    append(&a, message(rec.id, 2), None).await;
    assert_eq!(
        a.last_seq(rec.id).await.unwrap(),
        1,
        "A's line after the takeover is refused"
    );
    append(&b, message(rec.id, 2), None).await;
    assert_eq!(b.last_seq(rec.id).await.unwrap(), 2);
    // A's release does not free B's claim; B's does, and then A may serve it again.
    a.release_session(rec.id).await.unwrap();
    assert!(matches!(
        a.open_session(rec.id, None, 10, at_a.clone(), None)
            .await
            .unwrap(),
        Opened::Elsewhere { .. }
    ));
    b.release_session(rec.id).await.unwrap();
    assert!(matches!(
        a.open_session(rec.id, None, 10, at_a, None).await.unwrap(),
        Opened::Here { seq: 2, .. }
    ));
    // A closed session is gone for everyone.
    assert!(a.delete_session(rec.id, None).await.unwrap());
    assert!(matches!(
        b.open_session(rec.id, None, 10, at_b, None).await.unwrap(),
        Opened::Gone
    ));
    drop((a, b));
    a_done.wait().await;
    b_done.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_at_a_time_serves_a_session_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    claims(Database::Sqlite(dir.path().join("claims.db"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_at_a_time_serves_a_session_on_postgresql() {
    let Some(pg) = cluster() else { return };
    claims(Database::Postgres(pg.database().await)).await;
}

async fn run_cases(open: impl AsyncFn(&str) -> Database) {
    for (name, case) in CASES {
        let db = open(name).await;
        let (storage, finished) = store::open(Some(&db)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), case(storage))
            .await
            .unwrap_or_else(|_| panic!("{name} on {} took over 60 s", db.describe()));
        finished.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_storage_case_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run_cases(async |name| Database::Sqlite(dir.path().join(format!("{name}.db")))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_storage_case_on_postgresql() {
    let Some(pg) = cluster() else { return };
    run_cases(async |_| Database::Postgres(pg.database().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_schema_is_made_once_by_coordinators_starting_together_and_kept() {
    let Some(pg) = cluster() else { return };
    let url = pg.database().await;
    let db = Database::Postgres(url.clone());
    // Four at once on an empty database: one makes the schema, the others wait and find it.
    let opens = (0..4).map(|_| store::open(Some(&db)));
    let opened = futures::future::join_all(opens).await;
    let mut secrets = Vec::new();
    for result in opened {
        let (storage, finished) = result.expect("every one opens");
        secrets.push(storage.token_secret().await.unwrap());
        drop(storage);
        finished.wait().await;
    }
    assert!(
        secrets.windows(2).all(|w| w[0] == w[1]),
        "one secret for all"
    );
    // A database from a newer confab is refused, not changed.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client
        .batch_execute("UPDATE confab_schema SET version = 99")
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    match store::open(Some(&db)).await {
        Err(StoreError::TooNew {
            found: 99,
            supported: 5,
        }) => {}
        Err(e) => panic!("expected too new, got {e}"),
        Ok(_) => panic!("expected too new, it opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_on_postgresql_keeps_accounts_sessions_and_history_across_a_restart() {
    let Some(pg) = cluster() else { return };
    let db = Database::Postgres(pg.database().await);
    let config = || config_on(&db);
    let coord = TestCoordinator::start_with(config()).await;
    let addr = coord.addr;
    let (alice, mut events) = client("alice", addr).await;
    alice.start_session(Some("kept")).await.unwrap();
    for i in 0..20 {
        alice.say(&format!("line {i}")).await.unwrap();
    }
    assert_eq!(messages(&mut events, 20).await.len(), 20);
    let key = alice.coordinator_key().await.unwrap();
    drop(alice);
    coord.stop().await;

    let coord = TestCoordinator::start_on(addr, config()).await;
    // The same identity (clients pin it), the same account, the session and its lines.
    let (alice, mut events) = client("alice", coord.addr).await;
    assert_eq!(alice.coordinator_key().await.unwrap(), key);
    let joined = alice.join("kept").await.unwrap();
    assert_eq!(joined.seq, 20);
    let shown = expect(&mut events, "the history on joining", |e| match e {
        Event::History(lines) => Some(lines.clone()),
        _ => None,
    })
    .await;
    let texts: Vec<&str> = shown.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts.first(), Some(&"line 0"));
    assert_eq!(texts.last(), Some(&"line 19"));
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_checks_the_server_and_a_group_works_through_it() {
    let Some(pg) = cluster() else { return };
    let url = pg.database().await;
    let ca = match pg.require_tls() {
        Ok(ca) => ca,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED (needs openssl to make certificates): {why}");
            return;
        }
        Err(why) => panic!("{why}"),
    };
    let plain = Database::parse(&url);
    eventually("the cluster refuses plaintext", || async {
        store::open(Some(&plain)).await.is_err()
    })
    .await;
    // Checked against its CA: it works, as storage and for a group's notifications.
    let tls = Database::parse(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ca.display()
    ));
    let (s, finished) = store::open(Some(&tls)).await.unwrap();
    users(s.clone()).await;
    drop(s);
    finished.wait().await;
    let a = TestCoordinator::start_with(config_on(&tls)).await;
    let b = TestCoordinator::start_with(config_on(&tls)).await;
    let (ivy, _a) = client("ivy", a.addr).await;
    let made = ivy.start_session(Some("sealed")).await.unwrap().session;
    let (jay, _b) = client("jay", b.addr).await;
    let joined = jay.join("sealed").await.unwrap();
    assert_eq!(joined.session.server, made.server, "B heard of it over TLS");
    // A server whose certificate another CA signed is refused, and the error says why.
    let stranger = common::postgres::make_ca(pg.path(), "stranger").unwrap();
    let wrong = Database::parse(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        stranger.display()
    ));
    match store::open(Some(&wrong)).await {
        Err(e) => {
            eprintln!("refused as it should be: {e}");
            assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        }
        Ok(_) => panic!("a server certificate from another CA was taken"),
    }
    b.stop().await;
    a.stop().await;
}
