//! The real `confab` binary, driven through its stdin like a script would.

mod common;

use std::process::Stdio;

use common::*;
use confab::client::Event;
use confab::protocol::LeaveReason;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

struct Program {
    /// The client's own known_coordinators (see `cli/known.rs`): a coordinator of an earlier
    /// test on the same port had another key.
    _data: tempfile::TempDir,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Program {
    fn client(user: &str, coordinator: std::net::SocketAddr) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args([
                "client",
                "--user",
                user,
                "--coordinator",
                &coordinator.to_string(),
            ])
            .args(["--bind", "127.0.0.1:0", "--register"])
            .env("CONFAB_PASSWORD", password(user))
            .env("XDG_DATA_HOME", data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("confab binary starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _data: data,
            child,
            stdin,
            stdout,
            seen: Vec::new(),
        }
    }

    async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads output until a line contains `needle`; returns that line.
    async fn wait_for(&mut self, needle: &str) -> String {
        output_line_with(&mut self.stdout, &mut self.seen, needle, WAIT).await
    }
}

fn is_stamped(line: &str) -> bool {
    line.len() > 9 && chrono::NaiveTime::parse_from_str(&line[..8], "%H:%M:%S").is_ok()
}

#[tokio::test]
async fn the_binary_starts_joins_chats_and_sends_privately() {
    let coord = TestCoordinator::start().await;
    let mut alice = Program::client("alice", coord.addr);
    alice.wait_for("logged in as alice").await;
    alice.type_line("/start lobby").await;
    alice.wait_for("joined session lobby").await;

    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.join("lobby").await.unwrap();
    let joined = alice.wait_for("bob joined").await;
    assert!(is_stamped(&joined), "{joined}");
    assert!(
        joined.contains(&bob.endpoint().to_string()),
        "endpoint shown: {joined}"
    );
    alice.wait_for("members (2)").await;

    bob.say("hi alice").await.unwrap();
    let line = alice.wait_for("<bob> hi alice").await;
    assert!(is_stamped(&line), "{line}");
    // A line that tries to clear the screen and retitle the window is shown inert.
    bob.say("evil\x1b[2J\x1b]0;pwned\x07\u{202e}gnp.exe")
        .await
        .unwrap();
    let line = alice.wait_for("<bob> evil").await;
    assert!(
        !line.contains('\x1b') && !line.contains('\x07') && !line.contains('\u{202e}'),
        "{line:?}"
    );

    alice.type_line("hello bob").await;
    let got = messages(&mut b_ev, 3).await;
    assert_eq!(got[2].from, "alice");
    assert_eq!(got[2].text, "hello bob");

    alice.type_line("@bob just between us").await;
    let text = expect(&mut b_ev, "alice's private message", |e| match e {
        Event::Private { from, text, .. } if from == "alice" => Some(text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(text, "just between us");
    let mine = alice.wait_for("[private] you → bob: just between us").await;
    assert!(is_stamped(&mine), "{mine}");

    bob.dm("alice", "back at you").await.unwrap();
    let theirs = alice.wait_for("[private] bob → you: back at you").await;
    assert!(is_stamped(&theirs));

    alice.type_line("@nobody hi").await;
    alice.wait_for("no one named nobody").await;
    alice.type_line("/nonsense").await;
    alice.wait_for("unknown command /nonsense").await;
    alice.type_line("/sessions").await;
    alice.wait_for("2: alice, bob").await;
    alice.type_line("/who").await;
    alice.wait_for("members (2)").await;

    alice.type_line("/quit").await;
    let status = tokio::time::timeout(WAIT, alice.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let gone = expect(&mut b_ev, "alice leaving", |e| match e {
        Event::Presence { left, .. } => left.first().cloned(),
        _ => None,
    })
    .await;
    assert_eq!(
        (gone.user.as_str(), gone.reason),
        ("alice", LeaveReason::Left)
    );
}

#[tokio::test]
async fn a_client_killed_without_goodbye_leaves_every_roster() {
    let coord = TestCoordinator::start().await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.start_session(Some("room")).await.unwrap();
    let mut carol = Program::client("carol", coord.addr);
    carol.type_line("/join room").await;
    carol.wait_for("joined session room").await;
    eventually("bob sees carol", || async { bob.members().len() == 2 }).await;
    carol.child.start_kill().unwrap(); // SIGKILL: no goodbye
    let gone = expect(&mut b_ev, "carol's departure", |e| match e {
        Event::Presence { left, .. } => left.iter().find(|d| d.user == "carol").cloned(),
        _ => None,
    })
    .await;
    assert_eq!(gone.reason, LeaveReason::Disconnected);
    assert_eq!(bob.members().len(), 1);
}

#[tokio::test]
async fn end_of_input_exits_cleanly() {
    let coord = TestCoordinator::start().await;
    let mut dave = Program::client("dave", coord.addr);
    dave.type_line("/start").await;
    dave.wait_for("joined session").await;
    drop(dave.stdin);
    let status = tokio::time::timeout(WAIT, dave.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn joining_shows_the_last_fifty_and_history_pages_further_back() {
    let mut config = test_config();
    config.member_limits.rate = None;
    let coord = TestCoordinator::start_with(config).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    bob.start_session(Some("talky")).await.unwrap();
    for i in 0..60 {
        bob.say(&format!("line {i}")).await.unwrap();
    }
    messages(&mut b_ev, 60).await;
    let mut erin = Program::client("erin", coord.addr);
    erin.type_line("/join talky").await;
    erin.wait_for("50 earlier message(s)").await;
    erin.wait_for("<bob> line 10").await;
    erin.wait_for("<bob> line 59").await;
    erin.type_line("/history 20").await;
    erin.wait_for("10 earlier message(s)").await;
    erin.wait_for("<bob> line 0").await;
    erin.wait_for("<bob> line 9").await;
    erin.type_line("/history").await;
    erin.wait_for("no earlier messages").await;
    erin.type_line("/quit").await;
    assert!(erin.child.wait().await.unwrap().success());
}

#[tokio::test]
async fn a_piped_client_says_goodbye_after_all_its_echoes() {
    let coord = TestCoordinator::start().await;
    let mut fay = Program::client("fay", coord.addr);
    fay.type_line("/start piped").await;
    for i in 0..10 {
        fay.type_line(&format!("piped line {i}")).await;
    }
    drop(fay.stdin);
    let mut rest = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(WAIT, fay.stdout.next_line())
        .await
        .expect("output until the end")
    {
        rest.push(line);
    }
    let n = rest.len();
    assert!(n >= 12, "{rest:#?}");
    assert!(rest[n - 2].starts_with("* left session piped"), "{rest:#?}");
    assert_eq!(rest[n - 1], "* bye");
    let echoed: Vec<&String> = rest
        .iter()
        .filter(|l| l.contains("<fay> piped line"))
        .collect();
    assert_eq!(echoed.len(), 10, "{rest:#?}");
    assert!(echoed[9].ends_with("<fay> piped line 9"));
    assert!(fay.child.wait().await.unwrap().success());
}

#[tokio::test]
async fn an_ordinary_error_is_one_line_even_with_rust_backtrace() {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "client",
            "--user",
            "no spaces allowed",
            "--coordinator",
            "localhost",
        ])
        .env("CONFAB_PASSWORD", "x")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("confab: user name"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

#[tokio::test]
async fn a_host_or_a_directing_coordinator_without_postgresql_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("confab.db").display().to_string();
    let pg = "postgres://confab@127.0.0.1:1/none";
    for (args, says) in [
        (
            vec!["host", "--db", &file, "--listen", "127.0.0.1"],
            "--db must be a postgres:// URL",
        ),
        (
            vec!["host", "--db", pg, "--listen", "0.0.0.0"],
            "must be the host's own",
        ),
        (
            vec![
                "coordinator",
                "--db",
                &file,
                "--listen",
                "127.0.0.1:0",
                "--no-local-sessions",
            ],
            "share a PostgreSQL --db",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(&args)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("confab: ") && err.contains(says),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
