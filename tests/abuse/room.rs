//! See tests/abuse.rs.

use confab::store::Database;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use confab::coordinator::CoordinatorConfig;
use confab::store::{SessionRecord, Store, StoredMessage};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::common::*;

/// A process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
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
    store.append_messages(&lines, None).unwrap();
}

/// A member that asks but never reads, with a small receive buffer, so that the server's
/// writes to it stall at once.
async fn non_reader(
    session: &confab::protocol::SessionInfo,
    coordinator: SocketAddr,
    user: &str,
) -> (confab::transport::WireRead, confab::transport::WireWrite) {
    encrypted_member(session, coordinator, user, Some(4096)).await
}

// Two workers, so the attackers keep asking while the test watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_cannot_grow_the_server_by_asking_for_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    seed_big_session(&db);
    // The real binary, so that its memory is its own, not shared with the other tests; the
    // default rate limit: the attack asks only as fast as it is allowed to.
    let mut process = Process::start(&db, std::process::Stdio::null()).await;
    let pid = process.child.id().unwrap();
    let (alice, mut a_ev) = client("alice", process.listen).await;
    let session = alice.join("big").await.unwrap().session;
    let mut attackers = Vec::new();
    for user in ["mallory", "trudy"] {
        attackers.push(non_reader(&session, process.listen, user).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid);

    // 20 a second after a burst of 50: as fast as the rate limit lets a member ask. A member
    // whose requests the server stops reading just blocks in its own task.
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = attackers
        .into_iter()
        .map(|(read, mut stream)| {
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
                (read, stream)
            })
        })
        .collect();
    let mut peak = before;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss(pid));
    }
    let asked = asked.load(std::sync::atomic::Ordering::Relaxed);
    let grown = peak - before;
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
    process.signal(libc::SIGKILL);
    process.exit(WAIT).await;
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
        db: Some(Database::Sqlite(db.clone())),
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
        db: Some(Database::Sqlite(db.clone())),
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

/// The real binary, as an operator runs it, with its stderr on a pipe the test holds.
struct Process {
    child: tokio::process::Child,
    listen: SocketAddr,
}

impl Process {
    async fn start(db: &std::path::Path, stderr: std::process::Stdio) -> Self {
        let listen = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args([
                "coordinator",
                "--fast-passwords",
                "--listen",
                &listen.to_string(),
            ])
            .args(["--db", db.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("confab coordinator starts");
        Self { child, listen }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: a signal to our own child, whose pid we hold.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the exit, at most `within`.
    async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the coordinator did not exit within {within:?}"))
            .unwrap()
    }
}

#[tokio::test]
async fn a_closed_stderr_neither_stops_the_coordinator_nor_keeps_its_port_after_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut process =
        Process::start(&dir.path().join("confab.db"), std::process::Stdio::piped()).await;
    // Read the log up to "listening", then close the pipe, as a `| tee log` killed by Ctrl-C.
    let stderr = process.child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut log = String::new();
    while !log.contains("coordinator listening") {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the coordinator logs that it listens")
            .unwrap()
            .expect("stderr open");
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {log:?}"
    );
    drop(lines);

    // Every request below logs a line into the closed pipe.
    let (alice, mut a_ev) = client("alice", process.listen).await;
    alice.start_session(Some("room")).await.unwrap();
    let (bob, _b_ev) = client("bob", process.listen).await;
    bob.join("room").await.unwrap();
    bob.say("still serving").await.unwrap();
    let line = messages(&mut a_ev, 1).await.remove(0);
    assert_eq!(line.text, "still serving");

    process.signal(libc::SIGINT);
    let exit = process.exit(WAIT).await;
    assert!(exit.success(), "{exit:?}");
    std::net::UdpSocket::bind(process.listen).expect("the port is free again");
}

#[tokio::test]
async fn sigterm_tells_members_and_stores_history_like_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    let mut process = Process::start(&db, std::process::Stdio::null()).await;
    let (alice, mut a_ev) = client("alice", process.listen).await;
    alice.start_session(Some("room")).await.unwrap();
    for i in 0..30 {
        alice.say(&format!("t{i}")).await.unwrap();
    }
    messages(&mut a_ev, 30).await;

    process.signal(libc::SIGTERM);
    let exit = process.exit(WAIT).await;
    assert!(exit.success(), "{exit:?}");
    let reason = expect(&mut a_ev, "the goodbye", |e| match e {
        confab::client::Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("shutting down"), "{reason}");
    alice.leave().await;

    // Everything said before the signal was stored.
    let process = Process::start(&db, std::process::Stdio::null()).await;
    let mut config = client_config("bob", process.listen);
    config.history_on_join = 100;
    let (bob, mut events) = logged_in(config).await;
    bob.join("room").await.unwrap();
    let history = expect(&mut events, "history", |e| match e {
        confab::client::Event::History(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(history.len(), 30);
}

#[tokio::test]
async fn a_second_ctrl_c_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("confab.db");
    seed_big_session(&db);
    let mut process = Process::start(&db, std::process::Stdio::null()).await;
    let (alice, _a_ev) = client("alice", process.listen).await;
    let session = alice.join("big").await.unwrap().session;
    // A member that does not read holds the clean shutdown: its last write may take 10 s. Ten
    // answers of 2 MB are more than the socket buffers on both ends hold (4 MiB at most).
    let mut stuck = non_reader(&session, process.listen, "mallory").await;
    for _ in 0..10 {
        stuck
            .1
            .write_all(b"{\"type\":\"history\",\"limit\":500}\n")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    process.signal(libc::SIGINT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "the clean shutdown is held by the member that does not read"
    );
    let second = std::time::Instant::now();
    process.signal(libc::SIGINT);
    let exit = process.exit(Duration::from_secs(5)).await;
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "took {:?}",
        second.elapsed()
    );
    assert!(!exit.success(), "a forced exit says so: {exit:?}");
    drop(stuck);
}

/// Joins and leaves `session` as fast as the server answers, as `user`, until `stop`.
async fn churn(
    server: SocketAddr,
    coordinator: SocketAddr,
    user: String,
    stop: tokio_util::sync::CancellationToken,
) -> usize {
    use tokio::io::AsyncBufReadExt;
    let token = token_for(&user, coordinator).await;
    let mut cycles = 0;
    while !stop.is_cancelled() {
        // A new endpoint each time, so that no notice can be left out as "no change".
        let udp = SocketAddr::from(([127, 0, 0, 1], 1000 + cycles as u16));
        let hello = hello(&user, &token, udp);
        let Ok(stream) = tokio::net::TcpStream::connect(server).await else {
            continue;
        };
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        if write.write_all(hello.as_bytes()).await.is_err() {
            continue;
        }
        // Leave once welcomed, so that the join has been told to the others.
        let welcomed = tokio::time::timeout(WAIT, lines.next_line()).await;
        if !matches!(welcomed, Ok(Ok(Some(ref l))) if l.contains("\"welcome\"")) {
            continue;
        }
        let _ = write.write_all(b"{\"type\":\"leave\"}\n").await;
        // Until the server closes: the leave is applied before the next hello.
        while let Ok(Ok(Some(_))) = tokio::time::timeout(WAIT, lines.next_line()).await {}
        cycles += 1;
    }
    cycles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_churn_cannot_flood_the_other_members_with_presence() {
    let coord = TestCoordinator::start().await;
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let server = alice
        .start_session(Some("room"))
        .await
        .unwrap()
        .session
        .server;
    let stop = tokio_util::sync::CancellationToken::new();
    let churners: Vec<_> = (0..6)
        .map(|i| tokio::spawn(churn(server, coord.addr, format!("eve{i}"), stop.clone())))
        .collect();

    let watch = Duration::from_secs(3);
    let mut notices = 0;
    let started = tokio::time::Instant::now();
    while let Ok(Some(event)) = tokio::time::timeout_at(started + watch, a_ev.recv()).await {
        if matches!(event, confab::client::Event::Presence { .. }) {
            notices += 1;
        }
    }
    stop.cancel();
    let mut cycles = 0;
    for churner in churners {
        cycles += churner.await.unwrap();
    }
    println!("{cycles} join/leave cycles in {watch:?}: {notices} presence notices to alice");
    assert!(cycles >= 6, "the churn ran ({cycles} cycles)");
    // At most one every 250 ms (and one at once), whatever the churn.
    assert!(notices <= 14, "{notices} presence notices in {watch:?}");

    // Coalesced, not lost: the roster comes out right once the churn stops.
    eventually("only alice is left in alice's roster", || async {
        alice.members().len() == 1
    })
    .await;
    alice.say("after the churn").await.unwrap();
    expect(&mut a_ev, "alice's line", |e| match e {
        confab::client::Event::Message(l) if l.text == "after the churn" => Some(()),
        _ => None,
    })
    .await;
    coord.stop().await;
}

/// The lines of `log` about sessions, as (session, user, event, reason), in order.
fn visits(log: &str) -> Vec<(String, String, String, Option<String>)> {
    log.lines()
        .filter_map(|l| {
            let field = |name: &str| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_string)
            };
            let session = field("session=")?;
            let event = if l.contains(" joined ") {
                "joined"
            } else {
                "left"
            };
            Some((
                session,
                field("user=")?,
                event.to_string(),
                field("reason="),
            ))
        })
        .collect()
}

#[tokio::test]
async fn every_joined_in_the_presence_log_gets_one_left_with_a_reason_through_close_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("presence.log");
    let config = || CoordinatorConfig {
        db: Some(Database::Sqlite(dir.path().join("confab.db"))),
        presence_log: Some(log.clone()),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config()).await;
    let addr = coord.addr;
    let (alice, _a) = client("alice", addr).await;
    let (bob, _b) = client("bob", addr).await;
    let (carol, _c) = client("carol", addr).await;
    let (dave, _d) = client("dave", addr).await;
    alice.start_session(Some("one")).await.unwrap();
    bob.join("one").await.unwrap();
    carol.start_session(Some("two")).await.unwrap();
    dave.join("two").await.unwrap();
    eventually("everyone is in", || async {
        alice.members().len() == 2 && carol.members().len() == 2
    })
    .await;
    bob.leave().await.unwrap();
    alice.close_session("one").await.unwrap();
    // Carol and dave are in "two" when it stops, and when it starts again they rejoin by themselves.
    coord.stop().await;
    let coord = TestCoordinator::start_on(addr, config()).await;
    eventually("carol and dave are back", || async {
        let text = std::fs::read_to_string(&log).unwrap();
        text.matches("joined user=carol").count() == 2
            && text.matches("joined user=dave").count() == 2
    })
    .await;
    coord.stop().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let mut open: std::collections::HashMap<(String, String), bool> = Default::default();
    for (session, user, event, reason) in visits(&text) {
        let inside = open.entry((session.clone(), user.clone())).or_default();
        match event.as_str() {
            "joined" => assert!(
                !*inside,
                "{user} joined {session} twice without a left:\n{text}"
            ),
            _ => {
                assert!(*inside, "{user} left {session} without a joined:\n{text}");
                assert!(reason.is_some(), "a left without a reason:\n{text}");
            }
        }
        *inside = event == "joined";
    }
    assert!(
        open.values().all(|inside| !inside),
        "a joined without its left:\n{text}"
    );
    for reason in ["reason=left", "reason=closed", "reason=shutdown"] {
        assert!(text.contains(reason), "no {reason}:\n{text}");
    }
    for user in ["alice", "bob", "carol", "dave"] {
        assert!(
            text.contains(&format!("login user={user} ")),
            "{user}'s login:\n{text}"
        );
    }
    drop((alice, bob, carol, dave));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_cannot_grow_the_presence_log_past_its_rotation_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("presence.log");
    let max_bytes = 1024;
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        presence_log: Some(log.clone()),
        presence_log_rotation: confab::presence_log::Rotation { max_bytes, keep: 2 },
        ..test_config()
    })
    .await;
    let (alice, _a) = client("alice", coord.addr).await;
    let server = alice
        .start_session(Some("room"))
        .await
        .unwrap()
        .session
        .server;
    let stop = tokio_util::sync::CancellationToken::new();
    let churners: Vec<_> = (0..6)
        .map(|i| tokio::spawn(churn(server, coord.addr, format!("eve{i}"), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut cycles = 0;
    for churner in churners {
        cycles += churner.await.unwrap();
    }
    coord.stop().await;
    let size = |suffix: &str| {
        let mut name = log.as_os_str().to_owned();
        name.push(suffix);
        std::fs::metadata(std::path::PathBuf::from(name)).map(|m| m.len())
    };
    let sizes: Vec<_> = ["", ".1", ".2", ".3"].map(size).into_iter().collect();
    println!("{cycles} join/leave cycles; presence log files: {sizes:?}");
    assert!(sizes[2].is_ok(), "the log rotated: {sizes:?}");
    assert!(sizes[3].is_err(), "two old files kept, no more: {sizes:?}");
    for len in sizes.iter().flatten() {
        assert!(*len <= max_bytes, "{sizes:?}");
    }
}

#[tokio::test]
async fn a_crashed_session_server_still_logs_a_left_for_every_joined() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("presence.log");
    let directory = confab::coordinator::Directory::default();
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        presence_log: Some(log.clone()),
        directory: Some(directory.clone()),
        ..test_config()
    })
    .await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, _b) = client("bob", coord.addr).await;
    let id = alice
        .start_session(Some("doomed"))
        .await
        .unwrap()
        .session
        .id;
    bob.join("doomed").await.unwrap();
    eventually("bob is in", || async { alice.members().len() == 2 }).await;
    assert!(directory.crash(id));
    // Both clients rejoin the restarted server by themselves.
    eventually("alice and bob are back", || async {
        let text = std::fs::read_to_string(&log).unwrap();
        text.matches("joined user=alice").count() == 2
            && text.matches("joined user=bob").count() == 2
    })
    .await;
    coord.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    for user in ["alice", "bob"] {
        let events: Vec<String> = visits(&text)
            .into_iter()
            .filter(|(_, u, _, _)| u == user)
            .map(|(_, _, event, reason)| format!("{event} {}", reason.unwrap_or_default()))
            .collect();
        assert_eq!(
            events,
            ["joined ", "left crashed", "joined ", "left shutdown"],
            "{user}:\n{text}"
        );
    }
    drop((alice, bob));
}
