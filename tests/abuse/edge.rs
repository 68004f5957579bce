//! The coordinator's UDP door, tried as a stranger would.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::UdpSocket;

use super::common::*;

/// Sends `request` and returns the parsed answer.
async fn ask(socket: &UdpSocket, to: SocketAddr, request: &str) -> Value {
    socket.send_to(request.as_bytes(), to).await.unwrap();
    answer(socket).await
}

/// The next answer on `socket`, parsed.
async fn answer(socket: &UdpSocket) -> Value {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    serde_json::from_slice(&buf[..n]).unwrap()
}

#[tokio::test]
async fn a_reused_port_never_gets_another_requests_cached_answer() {
    let coord = TestCoordinator::start().await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = a.local_addr().unwrap();
    let v = ask(
        &a,
        coord.addr,
        r#"{"id":1,"op":"register","user":"alice","password":"alice-secret"}"#,
    )
    .await;
    assert_eq!(v["type"], "registered", "{v}");
    let v = ask(
        &a,
        coord.addr,
        r#"{"id":2,"op":"login","user":"alice","password":"alice-secret"}"#,
    )
    .await;
    assert!(v["token"].is_string(), "{v}");
    drop(a);

    // Another program gets the same port and numbers its requests from 1 too.
    let b = UdpSocket::bind(port).await.unwrap();
    let v = ask(
        &b,
        coord.addr,
        r#"{"id":1,"op":"register","user":"bob","password":"bob-secret"}"#,
    )
    .await;
    assert_eq!(v["type"], "registered", "{v}");
    assert_eq!(v["user"], "bob", "bob got alice's answer: {v}");
    let v = ask(
        &b,
        coord.addr,
        r#"{"id":2,"op":"login","user":"mallory","password":"guess"}"#,
    )
    .await;
    assert!(
        v.get("token").is_none(),
        "a token without the password: {v}"
    );
    assert_eq!(v["code"], "invalid_credentials", "{v}");
    // Alice's login with a wrong password on her own id gets no token either.
    let v = ask(
        &b,
        coord.addr,
        r#"{"id":2,"op":"login","user":"alice","password":"guess"}"#,
    )
    .await;
    assert!(v.get("token").is_none(), "{v}");

    // A true retry (the same bytes from the same address) is still answered from the cache.
    let create =
        |token: &str| format!(r#"{{"id":9,"op":"create","name":"once","token":"{token}"}}"#);
    let token = token_for("carol", coord.addr).await;
    let first = ask(&b, coord.addr, &create(&token)).await;
    let again = ask(&b, coord.addr, &create(&token)).await;
    assert_eq!(first, again);
    assert_eq!(first["type"], "session", "{first}");
}

#[tokio::test]
async fn refusals_are_not_cached() {
    let coord = TestCoordinator::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let token = token_for("alice", coord.addr).await;
    // A refusal changes nothing, so it is not kept: the same bytes sent again once the session
    // exists find it (a cached refusal would hide it, and strangers could fill the cache with
    // refusals that quote their long names).
    let close = format!(r#"{{"id":5,"op":"close","session":"later","token":"{token}"}}"#);
    let v = ask(&socket, coord.addr, &close).await;
    assert_eq!(v["code"], "session_not_found", "{v}");
    let create = format!(r#"{{"id":6,"op":"create","name":"later","token":"{token}"}}"#);
    assert_eq!(ask(&socket, coord.addr, &create).await["type"], "session");
    let v = ask(&socket, coord.addr, &close).await;
    assert_eq!(v["type"], "closed", "a refusal was replayed: {v}");
}

#[tokio::test]
async fn integers_are_not_op_names() {
    let coord = TestCoordinator::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, op) in ["0", "1", "5"].into_iter().enumerate() {
        let request = format!(r#"{{"id":{i},"op":{op},"user":"zed","password":"pw"}}"#);
        let v = ask(&socket, coord.addr, &request).await;
        assert_eq!(v["code"], "malformed", "op {op} was taken as a name: {v}");
        assert_eq!(v["id"], i, "{v}");
    }
}
