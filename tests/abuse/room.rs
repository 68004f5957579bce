//! See tests/abuse.rs.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use confab::coordinator::CoordinatorConfig;
use confab::store::{SessionRecord, Store, StoredMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use uuid::Uuid;

use super::common::*;

/// This process's resident memory, in bytes (the coordinator runs in it).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// A database holding one session, `big`, whose newest 1000 lines are 4000 bytes each: every
/// `history 500` answer is about 2 MB.
fn seed_big_session(db: &std::path::Path) {
    let store = Store::open(db).unwrap();
    let id = Uuid::new_v4();
    store
        .insert_session(&SessionRecord {
            id,
            name: Some("big".into()),
            creator: "alice".into(),
            created: Utc::now(),
        })
        .unwrap();
    let lines: Vec<StoredMessage> = (1..=1000)
        .map(|seq| StoredMessage {
            session: id,
            seq,
            time: Utc::now(),
            sender: "alice".into(),
            text: format!("{seq:04}{}", "x".repeat(3996)),
            client_id: None,
        })
        .collect();
    store.append_messages(&lines).unwrap();
}

/// Connects with a small receive buffer, says hello, and then only writes.
async fn non_reader(
    server: SocketAddr,
    coordinator: SocketAddr,
    user: &str,
) -> tokio::net::TcpStream {
    let token = token_for(user, coordinator).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream
        .write_all(hello(user, &token, "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await
        .unwrap();
    stream
}

// Two workers, so the attackers keep asking while the room encodes answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_cannot_grow_the_server_by_asking_for_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    seed_big_session(&db);
    // The default rate limit: the attack asks only as fast as it is allowed to.
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        db: Some(db),
        ..test_config()
    })
    .await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let server = alice.join("big").await.unwrap().session.server;
    let mut attackers = Vec::new();
    for user in ["mallory", "trudy"] {
        attackers.push(non_reader(server, coord.addr, user).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss();

    // 20 a second after a burst of 50: as fast as the rate limit lets a member ask. A member
    // whose requests the server stops reading just blocks in its own task.
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = attackers
        .into_iter()
        .map(|mut stream| {
            let asked = asked.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let ask = b"{\"type\":\"history\",\"limit\":500}\n";
                    if stream.write_all(ask).await.is_err() {
                        break;
                    }
                    asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pace = if i < 50 { 1 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pace)).await;
                }
                stream
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let asked = asked.load(std::sync::atomic::Ordering::Relaxed);
    let grown = rss().saturating_sub(before);
    println!(
        "RSS grew {} MiB under {asked} history requests from 2 members that never read",
        grown / MIB
    );
    assert!(
        grown < 24 * MIB,
        "two members that never read made the server hold {} MiB",
        grown / MIB
    );

    // Everyone else is unharmed.
    alice.say("still here").await.unwrap();
    expect(&mut a_ev, "alice's own line", |e| match e {
        confab::client::Event::Message(l) if l.text == "still here" => Some(()),
        _ => None,
    })
    .await;
    for task in tasks {
        task.abort();
    }
    coord.stop().await;
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn data_files_are_private_under_umask_022() {
    // The usual umask; process-wide, and harmless to the other tests of this binary.
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").join("confab");
    let db = data.join("confab.db");
    let log = dir.path().join("presence.log");
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        db: Some(db.clone()),
        presence_log: Some(log.clone()),
        ..test_config()
    })
    .await;
    // A registration and a line: the -wal and -shm files exist and hold data.
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    alice.start_session(Some("room")).await.unwrap();
    alice.say("written down").await.unwrap();
    messages(&mut a_ev, 1).await;
    for file in ["confab.db", "confab.db-wal", "confab.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&log), 0o600, "the presence log");
    assert_eq!(mode(&data), 0o700, "the folder confab made");
    assert_eq!(
        mode(&dir.path().join("data")),
        0o700,
        "its parent, made too"
    );
    coord.stop().await;
}

#[tokio::test]
async fn an_existing_database_readable_by_others_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    Store::open(&db).unwrap().token_secret().unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let folder = mode(dir.path());
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        db: Some(db.clone()),
        ..test_config()
    })
    .await;
    let _ = client("alice", coord.addr).await;
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&dir.path().join("confab.db-wal")), 0o600);
    // The folder was not confab's to make: left as it was.
    assert_eq!(mode(dir.path()), folder);
    coord.stop().await;
}
