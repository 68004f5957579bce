//! One member's connection: a reader that turns lines into room events, and a writer that drains
//! the member's bounded queue into the socket, many messages per write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::SessionConfig;
use super::events::{ConnId, JoinRequest, Replay, RoomEvent};
use super::gate::Gate;
use super::outbox::{Line, Outbox};
use crate::bucket::TokenBucket;
use crate::codec::{Frame, LineCodec, encode_line};
use crate::protocol::{
    ByeReason, ClientMsg, ErrorBody, ErrorCode, LeaveReason, ServerMsg, check_text, limits,
};
use crate::transport::{self, WireRead, WireWrite};

/// Limits on what one member may send; documented in README's "Limits and failure behaviour".
#[derive(Debug, Clone)]
pub struct MemberLimits {
    /// A member that sends nothing (not even `ping`) for this long is taken for dead.
    pub idle: Duration,
    /// Group messages per second a member may send on average (token bucket refill rate);
    /// `None` turns rate limiting off, as benchmarks at full speed want.
    pub rate: Option<f64>,
    /// Bucket size: how many messages a member may send in one burst.
    pub burst: f64,
    /// A write to the member that does not finish in this time drops the member.
    pub write_timeout: Duration,
    /// A member whose queue stays past its high-water mark this long is dropped as too slow;
    /// until then the room holds the senders back (flow control). Kept below the client's
    /// silence limit (three heartbeats), since a held sender hears no pong.
    pub drain_timeout: Duration,
}

impl Default for MemberLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(6),
            rate: Some(20.0),
            burst: 50.0,
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(4),
        }
    }
}

/// Most queued lines gathered into one socket write.
const WRITE_LINES: usize = 256;
/// Most bytes copied together for one socket write; a larger line is written alone, uncopied,
/// so a history answer is never held twice.
const WRITE_BYTES: usize = 256 * 1024;
/// A batch buffer larger than this is freed after use rather than kept.
const KEEP_BUFFER: usize = 16 * 1024;
/// Initial read buffer: hello and chat lines are small; it grows for long lines when needed.
const READ_BUFFER: usize = 256;

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    room: mpsc::Sender<RoomEvent>,
    gate: Arc<Gate>,
    config: Arc<SessionConfig>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // The handshake and hello phase run boxed: they are short, and keeping their state out of
    // this long-lived future is what keeps an idle member small.
    let admitted = Box::pin(async {
        let (read, write, client_key) = handshake(stream, peer, &config, &stop).await?;
        let reader = FramedRead::with_capacity(read, LineCodec::new(limits::MAX_LINE), READ_BUFFER);
        admit_connection(
            reader,
            write,
            client_key,
            peer,
            conn,
            &room,
            Arc::new(Outbox::new(
                config.member_queue,
                config.member_budget,
                gate.clone(),
            )),
            &config,
            &stop,
        )
        .await
    })
    .await;
    let Some(Admitted {
        mut reader,
        write,
        user,
        outbox,
        kick,
    }) = admitted
    else {
        return;
    };
    let writer = write_loop(
        write,
        outbox.clone(),
        kick.clone(),
        stop.clone(),
        config.member_limits.write_timeout,
    );
    let reader = read_loop(&mut reader, conn, &room, &gate, outbox, &kick, &config);
    let ((), ()) = tokio::join!(writer, reader);
    tracing::debug!(%peer, %user, "connection closed");
}

type Reader = FramedRead<WireRead, LineCodec>;

/// Sets up the connection as the server is configured: a Noise handshake when it has a key
/// (and the client's key comes back, for its token), plaintext when it takes that; the first
/// byte says which the client speaks. A plaintext client of a server that does not take it is
/// told why in a line it can read; one that says nothing gets the same goodbye as before
/// (in clear only where plaintext is spoken).
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: &SessionConfig,
    stop: &CancellationToken,
) -> Option<(WireRead, WireWrite, Option<[u8; 32]>)> {
    let Some(key) = &config.noise else {
        let (read, write) = transport::plain(stream);
        return Some((read, write, None));
    };
    let deadline = Instant::now() + limits::HELLO_TIMEOUT;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        p = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => p,
        _ = stop.cancelled() => return None,
    };
    match peeked {
        Ok(Ok(1..)) => {}
        Ok(_) => return None,
        Err(_) => {
            if config.plain {
                let (_read, mut write) = transport::plain(stream);
                let _ = send_now(
                    &mut write,
                    &bye(ByeReason::HelloTimeout, "no hello within the time limit"),
                )
                .await;
                let _ = tokio::time::timeout(Duration::from_millis(200), write.shutdown()).await;
            }
            tracing::debug!(%peer, "closed connection that never said anything");
            return None;
        }
    }
    if !transport::starts_handshake(first[0]) {
        let (read, mut write) = transport::plain(stream);
        if config.plain {
            return Some((read, write, None));
        }
        let refusal = error(
            ErrorCode::NotSealed,
            "this session server speaks only the encrypted protocol (protocol.md, \"Encrypted session connections\")",
        );
        let _ = send_now(&mut write, &refusal).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), write.shutdown()).await;
        return None;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    let accepted = tokio::select! {
        a = transport::accept(stream, key, remaining) => a,
        _ = stop.cancelled() => return None,
    };
    match accepted {
        Ok((read, write, client)) => Some((read, write, Some(client))),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "session handshake failed");
            None
        }
    }
}

/// A connection that said a good hello and is in the room.
struct Admitted {
    reader: Reader,
    write: WireWrite,
    user: String,
    outbox: Arc<Outbox>,
    kick: CancellationToken,
}

/// Waits for a good hello and joins the room; errors go straight to the socket, since the
/// connection is nobody's yet.
#[expect(
    clippy::too_many_arguments,
    reason = "the pieces of one connection, each handed on to the room once"
)]
async fn admit_connection(
    mut reader: Reader,
    mut write: WireWrite,
    client_key: Option<[u8; 32]>,
    peer: SocketAddr,
    conn: ConnId,
    room: &mpsc::Sender<RoomEvent>,
    outbox: Arc<Outbox>,
    config: &SessionConfig,
    stop: &CancellationToken,
) -> Option<Admitted> {
    let deadline = Instant::now() + limits::HELLO_TIMEOUT;
    let (user, udp, key, local, replay) = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout_at(deadline, reader.next()) => f,
            _ = stop.cancelled() => return None,
        };
        let line = match frame {
            Err(_) => {
                let _ = send_now(
                    &mut write,
                    &bye(ByeReason::HelloTimeout, "no hello within the time limit"),
                )
                .await;
                tracing::debug!(%peer, "closed connection that never said hello");
                return None;
            }
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Frame::Oversized))) => {
                let _ = send_now(&mut write, &too_large()).await;
                continue;
            }
            Ok(Some(Ok(Frame::Line(line)))) => line,
        };
        match serde_json::from_slice::<ClientMsg>(&line) {
            Ok(ClientMsg::Hello {
                user,
                token,
                udp,
                key,
                local,
                since,
                history,
            }) => match admit(config, user, &token, client_key).and_then(|user| {
                let key = key.map(|k| check_key(&k)).transpose()?;
                if local.len() > limits::MAX_LOCAL_ENDPOINTS {
                    return Err(ErrorBody::new(
                        ErrorCode::Malformed,
                        format!(
                            "at most {} local endpoints, not {}",
                            limits::MAX_LOCAL_ENDPOINTS,
                            local.len()
                        ),
                    ));
                }
                Ok((user, key))
            }) {
                Ok((user, key)) => {
                    break (
                        user,
                        udp,
                        key,
                        local.into_boxed_slice(),
                        Replay {
                            since,
                            last: history,
                        },
                    );
                }
                Err(e) => {
                    let _ = send_now(&mut write, &encode_line(&ServerMsg::Error(e))).await;
                    return None;
                }
            },
            Ok(ClientMsg::Ping) => {
                let _ = send_now(&mut write, &encode_line(&ServerMsg::Pong)).await;
            }
            Ok(ClientMsg::Pong) => {}
            Ok(_) => {
                let err = error(ErrorCode::Unexpected, "say hello first");
                let _ = send_now(&mut write, &err).await;
            }
            Err(e) => {
                let _ = send_now(&mut write, &malformed(&e)).await;
            }
        }
    };

    // Silence counts from the hello, not from the connect.
    outbox.heard();
    let kick = stop.child_token();
    let (reply_tx, reply_rx) = oneshot::channel();
    let join = RoomEvent::Join(JoinRequest {
        conn,
        user: user.clone(),
        udp,
        key,
        local,
        replay,
        tx: outbox.clone(),
        kick: kick.clone(),
        reply: reply_tx,
    });
    if room.send(join).await.is_err() {
        let _ = send_now(
            &mut write,
            &bye(ByeReason::Shutdown, "the session is closing"),
        )
        .await;
        return None;
    }
    match reply_rx.await {
        Ok(Ok(())) => Some(Admitted {
            reader,
            write,
            user,
            outbox,
            kick,
        }),
        Ok(Err(e)) => {
            let _ = send_now(&mut write, &encode_line(&ServerMsg::Error(e))).await;
            None
        }
        Err(_) => None,
    }
}

async fn read_loop(
    reader: &mut Reader,
    conn: ConnId,
    room: &mpsc::Sender<RoomEvent>,
    gate: &Gate,
    tx: Arc<Outbox>,
    kick: &CancellationToken,
    config: &SessionConfig,
) {
    let limits = &config.member_limits;
    let mut history_bucket = TokenBucket::new(limits.rate, limits.burst);
    // Silence is the room's to judge: it sweeps once a second (see `Room::sweep_silent`).
    let reason = loop {
        let frame = tokio::select! {
            f = reader.next() => f,
            _ = kick.cancelled() => break LeaveReason::Disconnected,
        };
        tx.heard();
        let line = match frame {
            None | Some(Err(_)) => break LeaveReason::Disconnected,
            Some(Ok(Frame::Oversized)) => {
                let _ = tx.try_send(Line::new(too_large()));
                continue;
            }
            Some(Ok(Frame::Line(line))) => line,
        };
        let event = match serde_json::from_slice::<ClientMsg>(&line) {
            Ok(ClientMsg::Say { text, id }) => {
                if let Err(e) = check_text(&text) {
                    let _ = tx.try_send(Line::new(encode_line(&ServerMsg::Error(e))));
                    continue;
                }
                // Held here, reading nothing more, while some member's queue is past its mark:
                // TCP slows this sender down instead of the room dropping that member.
                if !gate.is_open() {
                    tokio::select! {
                        () = gate.open() => {}
                        _ = kick.cancelled() => break LeaveReason::Disconnected,
                    }
                }
                // The room applies the rate limit, after recognising resends (which are free).
                RoomEvent::Say { conn, text, id }
            }
            Ok(ClientMsg::History { before, limit }) => {
                // History can reach the database: it has a bucket of its own.
                if history_bucket.take().is_err() {
                    let _ = tx.try_send(Line::new(error(
                        ErrorCode::RateLimited,
                        "slow down: too many requests",
                    )));
                    continue;
                }
                // Not served, and nothing more read, while an earlier answer is unwritten.
                tokio::select! {
                    () = tx.ask() => {}
                    _ = kick.cancelled() => break LeaveReason::Disconnected,
                }
                RoomEvent::History {
                    conn,
                    before,
                    limit,
                }
            }
            Ok(ClientMsg::Ping) => {
                let _ = tx.try_send(Line::new(encode_line(&ServerMsg::Pong)));
                continue;
            }
            // Hearing it was the point (see `tx.heard()` above).
            Ok(ClientMsg::Pong) => continue,
            Ok(ClientMsg::Lookup { user }) => RoomEvent::Lookup { conn, user },
            Ok(ClientMsg::Relay { to, data }) => {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD.decode(&data);
                match decoded {
                    Ok(d) if d.len() <= limits::MAX_DATAGRAM => RoomEvent::Relay { conn, to, data },
                    Ok(_) => {
                        let _ = tx.try_send(Line::new(too_large()));
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.try_send(Line::new(error(
                            ErrorCode::Malformed,
                            format!("relay data is not standard base64: {e}"),
                        )));
                        continue;
                    }
                }
            }
            Ok(ClientMsg::Leave) => break LeaveReason::Left,
            Ok(ClientMsg::Hello { .. }) => {
                let _ = tx.try_send(Line::new(error(ErrorCode::Unexpected, "already joined")));
                continue;
            }
            Err(e) => {
                let _ = tx.try_send(Line::new(malformed(&e)));
                continue;
            }
        };
        // Usually there is room; waiting (boxed, so the wait's state is not carried by every
        // idle connection) is the exception that pushes back on a flooding member.
        match room.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                if Box::pin(room.send(event)).await.is_err() {
                    break LeaveReason::Disconnected;
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break LeaveReason::Disconnected,
        }
    };
    if room.send(RoomEvent::Leave { conn, reason }).await.is_err() {
        // No room to close the queue for us: the session is gone.
        tx.close();
    }
}

async fn write_loop(
    mut write: WireWrite,
    outbox: Arc<Outbox>,
    kick: CancellationToken,
    stop: CancellationToken,
    timeout: Duration,
) {
    let mut lines: Vec<Line> = Vec::new();
    // Allocated only when several lines are ready at once, and given back when it grew large:
    // thousands of idle members must not each keep a burst-sized buffer.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let more = tokio::select! {
            biased;
            _ = kick.cancelled() => {
                if !stop.is_cancelled() {
                    break; // dropped for being slow: no point writing more
                }
                // Shutting down: deliver what is queued (the goodbye) and stop.
                outbox.close();
                outbox.recv_many(&mut lines, WRITE_LINES, WRITE_BYTES).await
            }
            more = outbox.recv_many(&mut lines, WRITE_LINES, WRITE_BYTES) => more,
        };
        if !more {
            break;
        }
        let ok = if let [one] = lines.as_slice() {
            // One line ready: write the shared bytes as they are, no copy.
            write_out(&mut write, one, timeout).await
        } else {
            for line in &lines {
                buf.extend_from_slice(line);
            }
            let ok = write_out(&mut write, &buf, timeout).await;
            buf.clear();
            if buf.capacity() > KEEP_BUFFER {
                buf = Vec::new();
            }
            ok
        };
        outbox.wrote(lines.iter().map(|l| l.len()).sum());
        lines.clear();
        // A member with nothing more to come keeps no sealed bytes (a busy one keeps its
        // buffer: freeing a large one at every write costs the allocator more than the copy).
        if outbox.is_empty() {
            write.release();
        }
        if !ok {
            break;
        }
    }
    // Whatever ended the writer ends the reader too.
    kick.cancel();
    let _ = tokio::time::timeout(Duration::from_millis(200), write.shutdown()).await;
}

/// Writes all of `bytes`, or says it could not within `timeout`. Most writes fit the socket
/// buffer at once and need no timer; only a write that has to wait arms one (boxed, so the
/// waiting state is not carried by every idle connection).
async fn write_out(wire: &mut WireWrite, text: &[u8], timeout: Duration) -> bool {
    let (write, bytes) = wire.prepare(text);
    let done = match write.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return false,
    };
    if done == bytes.len() {
        return true;
    }
    let rest = &bytes[done..];
    matches!(
        Box::pin(tokio::time::timeout(timeout, write.write_all(rest))).await,
        Ok(Ok(()))
    )
}

async fn send_now(write: &mut WireWrite, bytes: &Bytes) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(2), write.write_all(bytes))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Checks a hello's name and token (bound to the key the handshake proved, `client_key`);
/// returns the name as registered.
fn admit(
    config: &SessionConfig,
    user: String,
    token: &str,
    client_key: Option<[u8; 32]>,
) -> Result<String, ErrorBody> {
    crate::auth::validate_user_name(&user)
        .map_err(|e| ErrorBody::new(ErrorCode::InvalidName, e.to_string()))?;
    let Some(keys) = &config.tokens else {
        return Ok(user);
    };
    let claims = keys
        .verify(token, chrono::Utc::now())
        .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))?;
    if !claims.user.eq_ignore_ascii_case(&user) {
        return Err(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("this token belongs to {}, not {user}", claims.user),
        ));
    }
    claims
        .usable_by(client_key, config.plain)
        .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))?;
    Ok(claims.user)
}

/// An announced identity key, if it is one (32 bytes in standard base64), kept in its canonical
/// spelling: the roster must not carry whatever a member chose to write there.
fn check_key(key: &str) -> Result<Arc<str>, ErrorBody> {
    crate::identity::parse_fingerprint(key)
        .map(|k| crate::identity::fingerprint(&k).into())
        .map_err(|e| ErrorBody::new(ErrorCode::InvalidKey, format!("key: {e}")))
}

fn error(code: ErrorCode, message: impl Into<String>) -> Bytes {
    encode_line(&ServerMsg::Error(ErrorBody::new(code, message)))
}

fn malformed(e: &serde_json::Error) -> Bytes {
    error(ErrorCode::Malformed, format!("malformed message: {e}"))
}

fn too_large() -> Bytes {
    error(
        ErrorCode::TooLarge,
        format!("line longer than {} bytes skipped", limits::MAX_LINE),
    )
}

fn bye(reason: ByeReason, message: &str) -> Bytes {
    encode_line(&ServerMsg::Bye {
        reason,
        message: message.to_string(),
        by: None,
    })
}
