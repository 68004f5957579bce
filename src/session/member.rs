//! One member's connection: a reader that turns lines into room events, and a writer that drains
//! the member's bounded queue into the socket, many messages per write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::SessionConfig;
use super::bucket::TokenBucket;
use super::room::{ConnId, Line, Replay, RoomEvent};
use crate::codec::{Frame, LineCodec, encode_line};
use crate::protocol::{ByeReason, ClientMsg, ErrorBody, ErrorCode, LeaveReason, ServerMsg, limits};

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
}

impl Default for MemberLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(6),
            rate: Some(20.0),
            burst: 50.0,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest number of queued bytes gathered into one socket write.
const WRITE_BATCH: usize = 256 * 1024;
/// A batch buffer larger than this is freed after use rather than kept.
const KEEP_BUFFER: usize = 16 * 1024;
/// Initial read buffer: hello and chat lines are small; it grows for long lines when needed.
const READ_BUFFER: usize = 256;

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    room: mpsc::Sender<RoomEvent>,
    config: Arc<SessionConfig>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::with_capacity(read, LineCodec::new(limits::MAX_LINE), READ_BUFFER);

    // Hello phase: the connection is nobody's yet; errors go straight to the socket.
    let deadline = Instant::now() + limits::HELLO_TIMEOUT;
    let (user, udp, replay) = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout_at(deadline, reader.next()) => f,
            _ = stop.cancelled() => return,
        };
        let line = match frame {
            Err(_) => {
                let _ = send_now(
                    &mut write,
                    &bye(ByeReason::HelloTimeout, "no hello within the time limit"),
                )
                .await;
                tracing::debug!(%peer, "closed connection that never said hello");
                return;
            }
            Ok(None) | Ok(Some(Err(_))) => return,
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
                since,
                history,
            }) => match admit(&config, user, &token) {
                Ok(user) => {
                    break (
                        user,
                        udp,
                        Replay {
                            since,
                            last: history,
                        },
                    );
                }
                Err(e) => {
                    let _ = send_now(&mut write, &encode_line(&ServerMsg::Error(e))).await;
                    return;
                }
            },
            Ok(ClientMsg::Ping) => {
                let _ = send_now(&mut write, &encode_line(&ServerMsg::Pong)).await;
            }
            Ok(_) => {
                let err = error(ErrorCode::Unexpected, "say hello first");
                let _ = send_now(&mut write, &err).await;
            }
            Err(e) => {
                let _ = send_now(&mut write, &malformed(&e)).await;
            }
        }
    };

    let (tx, rx) = mpsc::channel(config.member_queue);
    let kick = stop.child_token();
    let (reply_tx, reply_rx) = oneshot::channel();
    let join = RoomEvent::Join {
        conn,
        user: user.clone(),
        udp,
        replay,
        tx: tx.clone(),
        kick: kick.clone(),
        reply: reply_tx,
    };
    if room.send(join).await.is_err() {
        let _ = send_now(
            &mut write,
            &bye(ByeReason::Shutdown, "the session is closing"),
        )
        .await;
        return;
    }
    match reply_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = send_now(&mut write, &encode_line(&ServerMsg::Error(e))).await;
            return;
        }
        Err(_) => return,
    }

    let writer = write_loop(
        write,
        rx,
        kick.clone(),
        stop.clone(),
        config.member_limits.write_timeout,
    );
    let reader = read_loop(&mut reader, conn, &room, tx, &kick, &config);
    let ((), ()) = tokio::join!(writer, reader);
    tracing::debug!(%peer, %user, "connection closed");
}

async fn read_loop(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, LineCodec>,
    conn: ConnId,
    room: &mpsc::Sender<RoomEvent>,
    tx: mpsc::Sender<Line>,
    kick: &CancellationToken,
    config: &SessionConfig,
) {
    let limits = &config.member_limits;
    let mut history_bucket = TokenBucket::new(limits.rate, limits.burst);
    let reason = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(limits.idle, reader.next()) => f,
            _ = kick.cancelled() => break LeaveReason::Disconnected,
        };
        let line = match frame {
            Err(_) => {
                let _ = tx.try_send(Line::new(bye(
                    ByeReason::Silent,
                    "no message or ping within the heartbeat limit",
                )));
                break LeaveReason::Disconnected;
            }
            Ok(None) | Ok(Some(Err(_))) => break LeaveReason::Disconnected,
            Ok(Some(Ok(Frame::Oversized))) => {
                let _ = tx.try_send(Line::new(too_large()));
                continue;
            }
            Ok(Some(Ok(Frame::Line(line)))) => line,
        };
        let event = match serde_json::from_slice::<ClientMsg>(&line) {
            Ok(ClientMsg::Say { text, id }) => {
                if let Err(e) = check_text(&text) {
                    let _ = tx.try_send(Line::new(encode_line(&ServerMsg::Error(e))));
                    continue;
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
            Ok(ClientMsg::Lookup { user }) => RoomEvent::Lookup { conn, user },
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
        if room.send(event).await.is_err() {
            break LeaveReason::Disconnected;
        }
    };
    // Our sender must go before the room's, so the writer sees the queue close after the last line.
    drop(tx);
    let _ = room.send(RoomEvent::Leave { conn, reason }).await;
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Line>,
    kick: CancellationToken,
    stop: CancellationToken,
    timeout: Duration,
) {
    // Allocated only when several lines are ready at once, and given back when it grew large:
    // thousands of idle members must not each keep a burst-sized buffer.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = kick.cancelled() => {
                if !stop.is_cancelled() {
                    break; // dropped for being slow: no point writing more
                }
                // Shutting down: deliver what is queued (the goodbye) and stop.
                rx.close();
                rx.recv().await
            }
            m = rx.recv() => m,
        };
        let Some(first) = first else { break };
        let written = match rx.try_recv() {
            // One line ready: write the shared bytes as they are, no copy.
            Err(_) => tokio::time::timeout(timeout, write.write_all(&first)).await,
            Ok(second) => {
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&second);
                while buf.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                let r = tokio::time::timeout(timeout, write.write_all(&buf)).await;
                buf.clear();
                if buf.capacity() > KEEP_BUFFER {
                    buf = Vec::new();
                }
                r
            }
        };
        if !matches!(written, Ok(Ok(()))) {
            break;
        }
    }
    // Whatever ended the writer ends the reader too.
    kick.cancel();
    let _ = tokio::time::timeout(Duration::from_millis(200), write.shutdown()).await;
}

async fn send_now(write: &mut OwnedWriteHalf, bytes: &Bytes) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(2), write.write_all(bytes))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Checks a hello's name and token; returns the name as registered.
fn admit(config: &SessionConfig, user: String, token: &str) -> Result<String, ErrorBody> {
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
    Ok(claims.user)
}

fn check_text(text: &str) -> Result<(), ErrorBody> {
    if text.trim().is_empty() {
        return Err(ErrorBody::new(ErrorCode::InvalidText, "empty message"));
    }
    if text.len() > limits::MAX_TEXT {
        return Err(ErrorBody::new(
            ErrorCode::InvalidText,
            format!(
                "message too long: {} bytes, limit {}",
                text.len(),
                limits::MAX_TEXT
            ),
        ));
    }
    Ok(())
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        assert!(check_text("hi").is_ok());
        assert_eq!(check_text("  ").unwrap_err().code, ErrorCode::InvalidText);
        assert!(check_text(&"x".repeat(limits::MAX_TEXT)).is_ok());
        assert!(check_text(&"x".repeat(limits::MAX_TEXT + 1)).is_err());
    }
}
