//! The coordinator's request loop never waits for storage: requests that need the database run
//! as jobs, and a session being started is started once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use confab::coordinator::{CoordinatorConfig, HistoryTap};
use confab::protocol::ResponseBody;
use tokio::net::UdpSocket;

/// History lines queued on the database thread while `list` is timed.
const FLOOD: u64 = 100_000;
/// Lists timed.
const LISTS: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_answers_at_once_while_history_is_being_written() {
    let tap = HistoryTap::default();
    let config = CoordinatorConfig {
        history_tap: Some(tap.clone()),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let token = token_for("alice", coord.addr).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let created = raw_request(
        &socket,
        coord.addr,
        &format!(r#"{{"id":1,"op":"create","name":"busy","token":"{token}"}}"#),
    )
    .await;
    let ResponseBody::Session { session } = created.body else {
        panic!("create: {created:?}");
    };

    let flood = tap.clone();
    let queued = tokio::task::spawn_blocking(move || flood.flood(session.id, FLOOD))
        .await
        .unwrap();
    assert_eq!(queued, FLOOD);
    // A request that needs the database, queued behind the flood.
    let creator = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let create = tokio::spawn(async move {
        let started = Instant::now();
        let req = format!(r#"{{"id":2,"op":"create","name":"behind","token":"{token}"}}"#);
        let answer = raw_request(&creator, coord.addr, &req).await;
        (answer, started.elapsed())
    });
    // Give that create a head start, so it reaches the loop before the lists.
    tokio::time::sleep(Duration::from_millis(5)).await;

    let mut slowest = Duration::ZERO;
    for id in 0..LISTS {
        let started = Instant::now();
        let answer = raw_request(
            &socket,
            coord.addr,
            &format!(r#"{{"id":{},"op":"list"}}"#, 100 + id),
        )
        .await;
        assert!(
            matches!(answer.body, ResponseBody::Sessions { .. }),
            "{answer:?}"
        );
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (created, behind) = create.await.unwrap();
    assert!(
        matches!(created.body, ResponseBody::Session { .. }),
        "{created:?}"
    );
    eprintln!(
        "slowest of {LISTS} lists: {slowest:?}; the create behind {FLOOD} history lines took {behind:?}"
    );
    assert!(
        slowest < Duration::from_millis(50),
        "a list took {slowest:?} while history was being written"
    );
    coord.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_joins_of_an_idle_session_start_one_server() {
    let config = CoordinatorConfig {
        idle_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let coord = TestCoordinator::start_with(config).await;
    let token = token_for("alice", coord.addr).await;
    let (alice, _events) = client("alice", coord.addr).await;
    alice.create(Some("idle")).await.unwrap();
    eventually("the idle server is stopped", || async {
        alice.list().await.unwrap()[0].server.is_none()
    })
    .await;

    let (a, b) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    let join = format!(r#"{{"id":7,"op":"join","session":"idle","token":"{token}"}}"#);
    let (first, second) = tokio::join!(
        raw_request(&a, coord.addr, &join),
        raw_request(&b, coord.addr, &join)
    );
    let server = |r: &confab::protocol::Response| match &r.body {
        ResponseBody::Session { session } => session.server,
        other => panic!("join: {other:?}"),
    };
    assert_eq!(
        server(&first),
        server(&second),
        "both joins name one server"
    );
    assert!(alice.list().await.unwrap()[0].server == Some(server(&first)));
    coord.stop().await;
}
