//! The coordinator's identity (issue 12, first step): a key pair kept in its database, printed
//! by `--print-key`, answered to `key`, and pinned by the terminal client on first use.

mod common;

use confab::store::Database;
use std::process::Stdio;

use common::*;
use confab::coordinator::CoordinatorConfig;
use confab::identity::fingerprint;
use tokio::process::Command;

fn with_db(db: &std::path::Path) -> CoordinatorConfig {
    CoordinatorConfig {
        db: Some(Database::Sqlite(db.to_path_buf())),
        ..test_config()
    }
}

#[tokio::test]
async fn the_key_lives_in_the_database_and_print_key_shows_the_one_clients_are_given() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let coord = TestCoordinator::start_with(with_db(&db)).await;
    let (alice, _) = client("alice", coord.addr).await;
    let first = alice.coordinator_key().await.unwrap();
    coord.stop().await;
    // Restarted on the same database: the same key.
    let coord = TestCoordinator::start_with(with_db(&db)).await;
    let (bob, _) = client("bob", coord.addr).await;
    assert_eq!(bob.coordinator_key().await.unwrap(), first);
    coord.stop().await;
    // The operator's view of it, from the same file.
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["coordinator", "--print-key", "--db"])
        .arg(&db)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        fingerprint(&first)
    );
    // Another database, another identity.
    let other = TestCoordinator::start().await;
    let (carol, _) = client("carol", other.addr).await;
    assert_ne!(carol.coordinator_key().await.unwrap(), first);
}

/// Runs `confab client` for `user` against `coordinator` with its known keys under `data`,
/// reading nothing; returns (exit code, stdout, stderr).
async fn run_client(
    user: &str,
    coordinator: std::net::SocketAddr,
    data: &std::path::Path,
    extra: &[impl AsRef<std::ffi::OsStr>],
) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["client", "--user", user, "--bind", "127.0.0.1:0"])
        .args(["--coordinator", &coordinator.to_string()])
        .args(extra)
        .env("CONFAB_PASSWORD", password(user))
        .env("XDG_DATA_HOME", data)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_client_remembers_the_first_key_and_refuses_another_before_any_password() {
    let data = tempfile::tempdir().unwrap();
    let known = data.path().join("confab/known_coordinators");
    let coord = TestCoordinator::start().await;
    let (probe, _) = client("probe", coord.addr).await;
    let key = fingerprint(&probe.coordinator_key().await.unwrap());

    let (code, out, err) = run_client("dora", coord.addr, data.path(), &["--register"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("first contact") && out.contains(&key), "{out}");
    let file = std::fs::read_to_string(&known).unwrap();
    assert_eq!(file.trim(), format!("{} {key}", coord.addr));
    // Met again: nothing to say.
    let (code, out, _) = run_client("dora", coord.addr, data.path(), &[] as &[&str]).await;
    assert_eq!(code, Some(0));
    assert!(!out.contains("first contact"), "{out}");

    // Another coordinator at that address (a fresh database, or an impostor): refused, with
    // both keys and the file to edit, and no account registered there.
    coord.stop().await;
    let impostor = TestCoordinator::start_on(coord_addr(&file), test_config()).await;
    let (code, out, err) = run_client("dora", impostor.addr, data.path(), &["--register"]).await;
    assert_ne!(code, Some(0), "{out}{err}");
    let (probe, _) = client("probe2", impostor.addr).await;
    let new_key = fingerprint(&probe.coordinator_key().await.unwrap());
    assert!(err.contains(&key) && err.contains(&new_key), "{err}");
    assert!(err.contains(&known.display().to_string()), "{err}");
    assert!(
        !out.contains("registered"),
        "nothing was sent before the check: {out}"
    );

    // Pinning the new key up front is how to accept it; pinning a wrong one is refused.
    let pin = |key: &str| ["--register", "--coordinator-key", key].map(String::from);
    let (code, _, err) = run_client("dora", impostor.addr, data.path(), &pin(&key)).await;
    assert_ne!(code, Some(0), "{err}");
    let (code, out, err) = run_client("dora", impostor.addr, data.path(), &pin(&new_key)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, _) = run_client("dora", impostor.addr, data.path(), &[] as &[&str]).await;
    assert_eq!(code, Some(0), "the pinned key is now the known one");
}

/// The address on the first line of a known_coordinators file.
fn coord_addr(file: &str) -> std::net::SocketAddr {
    file.split_whitespace().next().unwrap().parse().unwrap()
}

/// A UDP relay in front of `server` that keeps a copy of every byte it carries, both ways.
async fn recording_relay(
    server: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use std::sync::{Arc, Mutex};
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client = Arc::new(Mutex::new(None));
    tokio::spawn({
        let (front, up, seen, client) = (front.clone(), up.clone(), seen.clone(), client.clone());
        async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = up.send_to(&buf[..n], server).await;
            }
        }
    });
    tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = up.recv_from(&mut buf).await {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn no_password_or_token_is_readable_in_the_coordinator_datagrams() {
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        insecure: false,
        ..test_config()
    })
    .await;
    let (relay, seen) = recording_relay(coord.addr).await;
    let marker = "pw-marker-7f3a9c";
    let (c, _) = confab::client::Client::start(client_config("erin", relay))
        .await
        .unwrap();
    c.register(marker).await.unwrap();
    c.login(marker).await.unwrap();
    c.start_session(Some("sealed")).await.unwrap();
    let bytes = seen.lock().unwrap().clone();
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("\"op\":\"key\""), "the capture saw the key request");
    for secret in [
        marker,
        "\"op\":\"login\"",
        "logged_in",
        "\"token\"",
        "sealed",
    ] {
        assert!(!has(secret), "{secret} crossed the wire readable");
    }
}

#[tokio::test]
async fn a_coordinator_without_insecure_answers_only_the_key_in_the_open() {
    let coord = TestCoordinator::start_with(CoordinatorConfig {
        insecure: false,
        ..test_config()
    })
    .await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |request: &str| {
        let mut bytes = request.as_bytes().to_vec();
        confab::protocol::pad_request(&mut bytes);
        bytes
    };
    let mut buf = vec![0u8; 2048];
    for (request, want) in [
        (r#"{"id":1,"op":"key"}"#, "key"),
        (
            r#"{"id":2,"op":"register","user":"x","password":"y"}"#,
            "not_sealed",
        ),
        (r#"{"id":3,"op":"list"}"#, "not_sealed"),
    ] {
        socket.send_to(&ask(request), coord.addr).await.unwrap();
        let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        let got = v["code"].as_str().or(v["type"].as_str()).unwrap();
        assert_eq!(got, want, "{request}: {v}");
    }
    // The client library seals, so it is served as usual.
    let (alice, _) = client("alice", coord.addr).await;
    alice.start_session(Some("safe")).await.unwrap();
}

#[tokio::test]
async fn a_library_client_with_a_pinned_key_talks_only_to_that_coordinator() {
    let coord = TestCoordinator::start().await;
    let (probe, _) = client("probe", coord.addr).await;
    let right = probe.coordinator_key().await.unwrap();
    let mut config = client_config("pinned", coord.addr);
    config.coordinator_key = Some([7; 32]);
    let (wrong, _) = confab::client::Client::start(config).await.unwrap();
    match wrong.register("a password").await {
        Err(confab::client::ClientError::Invalid(why)) => {
            assert!(why.contains("not the pinned"), "{why}");
            assert!(why.contains(&fingerprint(&right)), "{why}");
        }
        other => panic!("registered with the wrong key pinned: {other:?}"),
    }
    let mut config = client_config("pinned", coord.addr);
    config.coordinator_key = Some(right);
    let (good, _) = confab::client::Client::start(config).await.unwrap();
    good.register("a password").await.unwrap();
}
