//! The coordinator's identity (issue 12, first step): a key pair kept in its database, printed
//! by `--print-key`, answered to `key`, and pinned by the terminal client on first use.

mod common;

use std::process::Stdio;

use common::*;
use confab::coordinator::CoordinatorConfig;
use confab::identity::fingerprint;
use tokio::process::Command;

fn with_db(db: &std::path::Path) -> CoordinatorConfig {
    CoordinatorConfig {
        db: Some(db.to_path_buf()),
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
