//! Accounts and persistence over real sockets and a real SQLite file.

mod common;

use confab::store::Database;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use confab::auth::PasswordCost;
use confab::client::{Client, ClientError, Event};
use confab::coordinator::CoordinatorConfig;
use confab::protocol::ErrorCode;

async fn refused<T: std::fmt::Debug>(
    request: impl std::future::Future<Output = Result<T, ClientError>>,
) -> ErrorCode {
    match request.await {
        Err(ClientError::Refused(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn bare(user: &str, coordinator: std::net::SocketAddr) -> Client {
    Client::start(client_config(user, coordinator))
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn register_login_and_every_way_to_get_it_wrong() {
    // The real password cost: this is the one test that pays for it.
    let config = CoordinatorConfig {
        password_cost: PasswordCost::default(),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let alice = bare("Alice", coord.addr).await;
    assert_eq!(alice.register("correct horse").await.unwrap(), "Alice");
    assert_eq!(alice.login("correct horse").await.unwrap(), "Alice");

    // Another case of the same name is the same account.
    let lower = bare("alice", coord.addr).await;
    assert_eq!(refused(lower.register("other")).await, ErrorCode::NameTaken);
    assert_eq!(lower.login("correct horse").await.unwrap(), "Alice");

    // Wrong password and unknown user read the same.
    let wrong = refused(lower.login("battery staple")).await;
    let nobody = bare("nobody", coord.addr).await;
    let unknown = refused(nobody.login("whatever")).await;
    assert_eq!(wrong, ErrorCode::InvalidCredentials);
    assert_eq!(unknown, ErrorCode::InvalidCredentials);

    assert_eq!(
        refused(nobody.register("")).await,
        ErrorCode::InvalidPassword
    );
    assert_eq!(
        refused(nobody.register(&"p".repeat(600))).await,
        ErrorCode::InvalidPassword
    );
    // Without a login nothing can be created or joined.
    assert!(matches!(
        nobody.create(None).await,
        Err(ClientError::NotLoggedIn)
    ));
}

#[tokio::test]
async fn invalid_names_are_refused_with_the_reason() {
    let coord = TestCoordinator::start().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, (name, why)) in [
        ("", "empty"),
        ("bad name", "' '"),
        ("emoji😀", "'😀'"),
        ("a-name-that-is-far-too-long-for-us", "32"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req =
            format!(r#"{{"id":{i},"op":"register","user":"{name}","password":"pw"}}"#).into_bytes();
        confab::protocol::pad_request(&mut req);
        socket.send_to(&req, coord.addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(v["code"], "invalid_name", "{name}: {v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{name}: {v}");
    }
    // The client library refuses them before asking anyone.
    for name in ["bad name", "emoji😀", ""] {
        let mut config = client_config("x", coord.addr);
        config.user = name.to_string();
        match Client::start(config).await {
            Err(ClientError::Invalid(msg)) => assert!(msg.contains("user name"), "{msg}"),
            other => panic!("{name:?} accepted: {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn repeated_failed_logins_are_slowed_down() {
    let coord = TestCoordinator::start().await;
    let (_bob, _ev) = client("bob", coord.addr).await;
    let mallory = bare("bob", coord.addr).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(refused(mallory.login("guess")).await);
    }
    assert_eq!(codes[0], ErrorCode::InvalidCredentials);
    assert!(
        codes.contains(&ErrorCode::Throttled),
        "no throttling after 8 failures: {codes:?}"
    );
}

/// The session server's answer to a hello as alice carrying `token`.
async fn hello_as_alice(server: std::net::SocketAddr, token: &str) -> serde_json::Value {
    let mut m = RawMember::connect(server).await;
    m.send(hello("alice", token, "127.0.0.1:9".parse().unwrap()).as_bytes())
        .await;
    m.json().await
}

#[tokio::test]
async fn forged_altered_and_expired_tokens_are_refused_everywhere() {
    let config = CoordinatorConfig {
        // Expiry is whole seconds, so a token lives 2–3 s: long enough for the login and the
        // first join even on a loaded machine (1 s was not, once).
        token_ttl: Duration::from_secs(3),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let (alice, _a) = client("alice", coord.addr).await;
    let info = alice.start_session(Some("room")).await.unwrap().session;
    let token = token_for("mallory", coord.addr).await;

    // A token whose payload claims to be alice's, keeping mallory's signature.
    let (payload, sig) = token.split_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let text = String::from_utf8(b64.decode(payload).unwrap()).unwrap();
    let altered_payload = b64.encode(text.replacen("mallory", "alice", 1));
    let altered = format!("{altered_payload}.{sig}");
    let forged = format!(
        "{}.{}",
        b64.encode("alice\n9999999999"),
        b64.encode([7u8; 32])
    );

    for bad in [altered.as_str(), forged.as_str(), "garbage"] {
        let m = bare("mallory", coord.addr).await;
        m.set_token(bad);
        assert_eq!(
            refused(m.create(None)).await,
            ErrorCode::Unauthorized,
            "{bad}"
        );
        assert_eq!(
            refused(m.join("room")).await,
            ErrorCode::Unauthorized,
            "{bad}"
        );
        // Straight to the session server, under alice's name.
        let v = hello_as_alice(info.server, bad).await;
        assert_eq!(v["code"], "unauthorized", "{bad}: {v}");
    }
    // A real token for mallory does not let mallory in as alice.
    let v = hello_as_alice(info.server, &token).await;
    assert_eq!(v["code"], "unauthorized", "{v}");

    // Tokens expire (this coordinator issues them for three seconds).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let err = alice.join("room").await.unwrap_err();
    match err {
        ClientError::Refused(e) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(e.message.contains("expired"), "{}", e.message);
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn only_the_creator_closes_a_session_and_its_members_are_told() {
    let coord = TestCoordinator::start().await;
    let (alice, _a) = client("alice", coord.addr).await;
    let (bob, mut b_ev) = client("bob", coord.addr).await;
    alice.start_session(Some("mine")).await.unwrap();
    bob.join("mine").await.unwrap();
    assert_eq!(
        refused(bob.close_session("mine")).await,
        ErrorCode::Forbidden
    );
    alice.close_session("mine").await.unwrap();
    let by = expect(&mut b_ev, "the close notice", |e| match e {
        Event::Closed { by, .. } => Some(by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by.as_deref(), Some("alice"));
    assert_eq!(refused(bob.join("mine")).await, ErrorCode::SessionNotFound);
    assert!(alice.list().await.unwrap().is_empty());
}

/// Collects everything the coordinator logs, at every level.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn temp_db() -> (PathBuf, impl Drop) {
    let dir = tempfile::tempdir().unwrap();
    (dir.path().join("confab.db"), dir)
}

fn file_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_password_appears_nowhere_in_the_database_or_the_logs() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Global, so the hashing and database threads are heard too; no other test here sets one.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (db, dir) = temp_db();
    let log = db.with_file_name("presence.log");
    let config = CoordinatorConfig {
        db: Some(Database::Sqlite(db.clone())),
        presence_log: Some(log),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let secret = "Zebra-Quartz-7781-unlikely";
    let (c, mut events) = Client::start(client_config("carol", coord.addr))
        .await
        .unwrap();
    c.register(secret).await.unwrap();
    c.login(secret).await.unwrap();
    let _ = refused(c.login("Zebra-Quartz-wrong")).await;
    c.start_session(Some("s")).await.unwrap();
    c.say("hello").await.unwrap();
    messages(&mut events, 1).await;
    c.leave().await.unwrap();
    coord.stop().await;

    let stored = file_bytes(db.parent().unwrap());
    assert!(contains(&stored, b"$argon2id$"), "the hash is stored");
    assert!(contains(&stored, b"hello"), "the check can see stored text");
    assert!(
        !contains(&stored, secret.as_bytes()),
        "password in the database"
    );
    let logs = capture.0.lock().unwrap().clone();
    assert!(contains(&logs, b"logged in"), "the check can see the logs");
    assert!(!contains(&logs, secret.as_bytes()), "password in the logs");
    assert!(
        !contains(&logs, b"Zebra-Quartz"),
        "wrong password in the logs"
    );
    drop(dir);
}

#[tokio::test]
async fn users_sessions_and_history_survive_a_restart() {
    let (db, dir) = temp_db();
    let config = || {
        let mut c = CoordinatorConfig {
            db: Some(Database::Sqlite(db.clone())),
            ..test_config()
        };
        c.member_limits.rate = None;
        c
    };
    let coord = TestCoordinator::start_with(config()).await;
    let (alice, mut a_ev0) = client("alice", coord.addr).await;
    let first = alice.start_session(Some("lasting")).await.unwrap().session;
    alice.create(None).await.unwrap();
    for i in 0..60 {
        alice.say(&format!("line {i}")).await.unwrap();
    }
    // The last line is back from the server, so all 60 are queued for the database; stopping
    // must finish writing them.
    messages(&mut a_ev0, 60).await;
    coord.stop().await;

    let coord = TestCoordinator::start_with(config()).await;
    // The account is back: logging in works, registering again does not.
    let bob = bare("alice", coord.addr).await;
    assert_eq!(refused(bob.register("x")).await, ErrorCode::NameTaken);
    let (alice, mut a_ev) = client("alice", coord.addr).await;
    let list = alice.list().await.unwrap();
    assert_eq!(list.len(), 2);
    let lasting = list
        .iter()
        .find(|e| e.id == first.id)
        .expect("listed again");
    assert_eq!(lasting.name.as_deref(), Some("lasting"));
    assert_eq!(lasting.creator, "alice");
    assert_eq!(lasting.created, first.created);
    assert!(lasting.server.is_none(), "not running until someone joins");

    let again = alice.join("lasting").await.unwrap();
    assert_eq!(again.seq, 60);
    let shown = expect(&mut a_ev, "history on join", |e| match e {
        Event::History(lines) => Some(lines.clone()),
        _ => None,
    })
    .await;
    assert_eq!(shown.len(), 50, "the last 50 by default");
    assert_eq!(shown[0].text, "line 10");
    assert_eq!(shown[49].text, "line 59");
    alice.history(Some(shown[0].seq), 100).await.unwrap();
    let older = expect(&mut a_ev, "older history", |e| match e {
        Event::History(lines) => Some(lines.clone()),
        _ => None,
    })
    .await;
    assert_eq!(older.len(), 10);
    assert_eq!(older[0].text, "line 0");
    alice.say("after the restart").await.unwrap();
    let line = messages(&mut a_ev, 1).await.remove(0);
    assert_eq!(line.seq, 61);
    coord.stop().await;
    drop(dir);
}
