//! The client's TCP connection to one session server: hello, then a reader task that turns lines
//! into events and keeps the roster, and a writer task that sends what we say plus heartbeats.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::{ClientConfig, ClientError, Event, Roster};
use crate::codec::{Frame, LineCodec, encode_line};
use crate::protocol::{ClientMsg, Member, ServerMsg, SessionInfo, limits};

/// Lines we may queue towards the server before `say` waits.
const OUT_QUEUE: usize = 1024;
/// How long joining may take, from connect to welcome.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

type Reader = FramedRead<OwnedReadHalf, LineCodec>;

/// An open session connection.
pub(super) struct Link {
    pub(super) session: SessionInfo,
    out: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// What `say` needs, taken out of the client's lock before awaiting.
pub(super) struct LinkSender {
    out: mpsc::Sender<Bytes>,
}

impl LinkSender {
    pub(super) async fn say(&self, text: &str) -> Result<(), ClientError> {
        self.send(&ClientMsg::Say {
            text: text.to_string(),
        })
        .await
    }

    pub(super) async fn history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(), ClientError> {
        self.send(&ClientMsg::History { before, limit }).await
    }

    async fn send(&self, msg: &ClientMsg) -> Result<(), ClientError> {
        self.out
            .send(encode_line(msg))
            .await
            .map_err(|_| ClientError::Closed("the connection is gone".into()))
    }
}

impl Link {
    /// Connects, says hello, waits for the welcome, and starts the reader and writer.
    pub(super) async fn open(
        session: SessionInfo,
        config: &ClientConfig,
        token: String,
        endpoint: SocketAddr,
        roster: Roster,
        events: mpsc::Sender<Event>,
    ) -> Result<(Link, Vec<Member>, u64), ClientError> {
        let addr = session.server;
        let stream = tokio::time::timeout(JOIN_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = FramedRead::new(read, LineCodec::new(limits::MAX_SERVER_LINE));
        let hello = ClientMsg::Hello {
            user: config.user.clone(),
            token,
            udp: endpoint,
            since: None,
            history: (config.history_on_join > 0).then_some(config.history_on_join),
        };
        write.write_all(&encode_line(&hello)).await?;
        let (members, seq) = tokio::time::timeout(JOIN_TIMEOUT, await_welcome(&mut reader))
            .await
            .map_err(|_| ClientError::Closed("no welcome from the session server".into()))??;
        roster.replace(&members);

        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let stop = CancellationToken::new();
        let writer = tokio::spawn(write_loop(write, out_rx, config.heartbeat, stop.clone()));
        let reader = tokio::spawn(read_loop(
            reader,
            roster,
            events,
            config.heartbeat * 3,
            stop.clone(),
        ));
        let link = Link {
            session,
            out,
            stop,
            reader,
            writer,
        };
        Ok((link, members, seq))
    }

    pub(super) fn sender(&self) -> LinkSender {
        LinkSender {
            out: self.out.clone(),
        }
    }

    /// Says goodbye and waits (briefly) until the server has closed the connection.
    pub(super) async fn close(self) {
        let _ = self.out.try_send(encode_line(&ClientMsg::Leave));
        drop(self.out);
        let wait = async {
            let _ = self.writer.await;
            let _ = self.reader.await;
        };
        if tokio::time::timeout(Duration::from_secs(2), wait)
            .await
            .is_err()
        {
            tracing::debug!("session server did not confirm leave in time");
        }
        self.stop.cancel();
    }
}

async fn await_welcome(reader: &mut Reader) -> Result<(Vec<Member>, u64), ClientError> {
    loop {
        let line = match reader.next().await {
            Some(Ok(Frame::Line(line))) => line,
            Some(Ok(Frame::Oversized)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Closed("closed before welcome".into())),
        };
        match serde_json::from_slice::<ServerMsg>(&line) {
            Ok(ServerMsg::Welcome { members, seq, .. }) => return Ok((members, seq)),
            Ok(ServerMsg::Error(e)) => return Err(ClientError::Refused(e)),
            Ok(ServerMsg::Bye { reason }) => return Err(ClientError::Closed(reason)),
            Ok(_) => continue,
            Err(e) => tracing::debug!(error = %e, "unreadable line from session server"),
        }
    }
}

async fn read_loop(
    mut reader: Reader,
    roster: Roster,
    events: mpsc::Sender<Event>,
    silence: Duration,
    stop: CancellationToken,
) {
    let reason = loop {
        let next = tokio::select! {
            n = tokio::time::timeout(silence, reader.next()) => n,
            _ = stop.cancelled() => return,
        };
        let line = match next {
            Err(_) => {
                break format!(
                    "no word from the session server for {} s",
                    silence.as_secs()
                );
            }
            Ok(None) => break "the session server closed the connection".to_string(),
            Ok(Some(Err(e))) => break format!("connection error: {e}"),
            Ok(Some(Ok(Frame::Oversized))) => continue,
            Ok(Some(Ok(Frame::Line(line)))) => line,
        };
        let event = match serde_json::from_slice::<ServerMsg>(&line) {
            Ok(ServerMsg::Msg(line)) => Event::Message(line),
            Ok(ServerMsg::Presence { joined, left }) => {
                roster.apply(&joined, &left);
                Event::Presence { joined, left }
            }
            Ok(ServerMsg::History { messages }) => Event::History(messages),
            Ok(ServerMsg::Error(e)) => Event::ServerError(e),
            Ok(ServerMsg::Bye { reason }) => {
                if reason == "you left the session" {
                    return;
                }
                break reason;
            }
            Ok(ServerMsg::Welcome { members, .. }) => {
                roster.replace(&members);
                continue;
            }
            Ok(ServerMsg::Pong) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable line from session server");
                continue;
            }
        };
        // Waiting here when the application is slow is right: the server's queue for us absorbs
        // the wait, and if it overflows the server drops us rather than slowing everyone.
        if events.send(event).await.is_err() {
            return;
        }
    };
    if !stop.is_cancelled() {
        let _ = events.send(Event::Disconnected { reason }).await;
    }
    stop.cancel();
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut out: mpsc::Receiver<Bytes>,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let ping = encode_line(&ClientMsg::Ping);
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        let first = tokio::select! {
            m = tokio::time::timeout(heartbeat, out.recv()) => match m {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(_) => ping.clone(),
            },
            _ = stop.cancelled() => break,
        };
        buf.extend_from_slice(&first);
        while buf.len() < 64 * 1024 {
            match out.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if write.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = write.shutdown().await;
}
