//! The client's tie to one session: a TCP connection to its server that survives the server.
//!
//! One task per joined session reads and writes the connection. When the connection breaks
//! (network blip, server restart, coordinator restart, being dropped as too slow) the task says
//! so, asks the coordinator again where the session is served, reconnects with backoff, and says
//! hello with the last sequence number it saw; the server replays what came after. Lines already
//! shown are recognised by sequence number and never shown twice. What the person types while
//! the link is down waits in the outgoing queue and goes out after the rejoin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::error::ClientError;
use super::event::Event;
use super::pacer::Pacer;
use super::roster::{Ask, Roster};
use super::rpc::Coord;
use super::tracker::{Broken, Reaction, Tracker, say_text};
use crate::codec::{Frame, LineCodec, encode_line};
use crate::protocol::{
    ClientMsg, ErrorCode, Member, RateLimit, RequestBody, ResponseBody, ServerMsg, SessionInfo,
    limits,
};
use crate::transport::{self, WireRead, WireWrite};

/// Lines we may queue towards the server before `say` waits.
const OUT_QUEUE: usize = 1024;
/// How long joining may take, from connect to welcome.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff (nominal first wait, longest nominal wait; see `backoff`), and when to give
/// up.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);
const RETRY_GIVE_UP: Duration = Duration::from_secs(300);

type Reader = FramedRead<WireRead, LineCodec>;

/// Where a session is served: the address, and the key its server must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Server {
    addr: SocketAddr,
    key: Option<[u8; 32]>,
}

impl Server {
    fn of(session: &SessionInfo) -> Result<Self, ClientError> {
        let key = match &session.server_key {
            Some(k) => Some(
                crate::identity::parse_fingerprint(k)
                    .map_err(|e| ClientError::Invalid(format!("the session server's key: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            addr: session.server,
            key,
        })
    }
}

/// What a welcome says.
pub(super) struct Welcome {
    pub(super) members: Vec<Member>,
    pub(super) member_count: usize,
    pub(super) seq: u64,
    pub(super) rate_limit: Option<RateLimit>,
}

/// A line on its way to the server; group lines carry their id so they can be resent.
pub(super) struct Outgoing {
    bytes: Bytes,
    line_id: Option<u64>,
}

/// What a session task needs to (re)join: the parts of the client's configuration it uses, and
/// the way to ask the coordinator where the session is now.
#[derive(Clone)]
pub(super) struct Joiner {
    pub(super) user: String,
    pub(super) advertise: Option<SocketAddr>,
    pub(super) heartbeat: Duration,
    pub(super) history_on_join: usize,
    pub(super) coord: Coord,
    pub(super) token: String,
    pub(super) local: SocketAddr,
    /// Our identity key, announced in the hello.
    pub(super) key: String,
    /// Our socket's endpoints on our own network, announced for peers behind the same NAT.
    pub(super) candidates: Vec<SocketAddr>,
}

impl Joiner {
    fn endpoint(&self) -> SocketAddr {
        self.advertise
            .or(self.coord.observed())
            .unwrap_or(self.local)
    }

    /// Connects, says hello, and waits for the welcome.
    async fn connect(
        &self,
        server: Server,
        since: Option<u64>,
    ) -> Result<(WireWrite, Reader, Welcome), ClientError> {
        let addr = server.addr;
        let stream = tokio::time::timeout(JOIN_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        // Encrypted unless the coordinator named no key: then it runs in plaintext mode
        // (`--insecure`), which it says at every start.
        let (read, mut write) = match server.key {
            Some(key) => {
                let mine = self.coord.static_key().ok_or_else(|| {
                    ClientError::Invalid("no client key yet: log in first".into())
                })?;
                tokio::time::timeout(JOIN_TIMEOUT, transport::connect(stream, &mine, &key))
                    .await
                    .map_err(|_| {
                        ClientError::Closed("no answer to the encrypted handshake".into())
                    })?
                    .map_err(|e| ClientError::Closed(e.to_string()))?
            }
            None => transport::plain(stream),
        };
        let mut reader = FramedRead::new(read, LineCodec::new(limits::MAX_SERVER_LINE));
        let history = self.history_on_join;
        let hello = ClientMsg::Hello {
            user: self.user.clone(),
            token: self.token.clone(),
            udp: Some(self.endpoint()),
            key: Some(self.key.clone()),
            local: self.candidates.clone(),
            since,
            history: (since.is_none() && history > 0).then_some(history),
        };
        write.write_all(&encode_line(&hello)).await?;
        let welcome = tokio::time::timeout(JOIN_TIMEOUT, await_welcome(&mut reader))
            .await
            .map_err(|_| ClientError::Closed("no welcome from the session server".into()))??;
        Ok((write, reader, welcome))
    }
}

/// An open session.
pub(super) struct Link {
    pub(super) session: SessionInfo,
    out: mpsc::Sender<Outgoing>,
    next_line_id: Arc<AtomicU64>,
    stop: CancellationToken,
    /// How long one queued line takes to go out under the session's rate limit (microseconds),
    /// so that leaving waits for the lines queued before it.
    per_line_us: Arc<AtomicU64>,
    /// Cancelled by the session task when the session is over for us without our leaving
    /// (closed, or reconnecting gave up), after it has cleared the roster: from then on the
    /// client treats the link as gone, so nothing is sent through it and nobody in it is
    /// reachable privately.
    ended: CancellationToken,
    task: JoinHandle<()>,
}

/// What `say` needs, taken out of the client's lock before awaiting.
pub(super) struct LinkSender {
    out: mpsc::Sender<Outgoing>,
    next_line_id: Arc<AtomicU64>,
}

impl LinkSender {
    pub(super) async fn say(&self, text: &str) -> Result<(), ClientError> {
        let id = self.next_line_id.fetch_add(1, Ordering::Relaxed);
        let msg = ClientMsg::Say {
            text: text.to_string(),
            id: Some(id),
        };
        let out = Outgoing {
            bytes: encode_line(&msg),
            line_id: Some(id),
        };
        self.out.send(out).await.map_err(|_| Self::ended())
    }

    fn ended() -> ClientError {
        ClientError::Closed("the session link has ended".into())
    }

    pub(super) async fn history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(), ClientError> {
        self.send(&ClientMsg::History { before, limit }).await
    }

    async fn send(&self, msg: &ClientMsg) -> Result<(), ClientError> {
        let out = Outgoing {
            bytes: encode_line(msg),
            line_id: None,
        };
        self.out.send(out).await.map_err(|_| Self::ended())
    }
}

impl Link {
    /// Joins `session` and starts the task that keeps the link up.
    pub(super) async fn open(
        session: SessionInfo,
        joiner: Joiner,
        roster: Roster,
        events: mpsc::Sender<Event>,
    ) -> Result<(Link, Welcome), ClientError> {
        let server = Server::of(&session)?;
        let (write, reader, welcome) = joiner.connect(server, None).await?;
        roster.replace(&welcome.members, welcome.member_count);
        let seq = welcome.seq;
        let user = joiner.user.clone();
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let (lookup_tx, lookup_rx) = mpsc::channel(64);
        roster.set_lookups(lookup_tx);
        let stop = CancellationToken::new();
        let ended = CancellationToken::new();
        let pacer = Pacer::new(welcome.rate_limit);
        let per_line_us = Arc::new(AtomicU64::new(pacer.per_line().as_micros() as u64));
        let keeper = Keeper {
            session: session.clone(),
            joiner,
            tracker: parking_lot::Mutex::new(Tracker::new(user, roster.clone(), seq)),
            roster,
            events,
            server: parking_lot::Mutex::new(server),
            stop: stop.clone(),
            ended: ended.clone(),
            pacer: parking_lot::Mutex::new(pacer),
            per_line_us: per_line_us.clone(),
        };
        let task = tokio::spawn(keeper.run(write, reader, out_rx, lookup_rx));
        // Random start: ids must not repeat those of an earlier run within the server's memory.
        let first_id = uuid::Uuid::new_v4().as_u64_pair().0 >> 12;
        let link = Link {
            session,
            out,
            next_line_id: Arc::new(AtomicU64::new(first_id)),
            stop,
            per_line_us,
            ended,
            task,
        };
        Ok((link, welcome))
    }

    /// True once the session is over for us (see `ended`).
    pub(super) fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Cancelled when the session is over for us (see `ended`).
    pub(super) fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    pub(super) fn sender(&self) -> LinkSender {
        LinkSender {
            out: self.out.clone(),
            next_line_id: self.next_line_id.clone(),
        }
    }

    /// Says goodbye and waits until the server has confirmed: briefly, plus the time the lines
    /// still queued need under the rate limit (the goodbye goes after them).
    pub(super) async fn close(self) {
        let queued = OUT_QUEUE.saturating_sub(self.out.capacity()) as u32;
        let per_line = Duration::from_micros(self.per_line_us.load(Ordering::Relaxed));
        let wait = Duration::from_secs(2) + per_line * queued;
        let _ = self.out.try_send(Outgoing {
            bytes: encode_line(&ClientMsg::Leave),
            line_id: None,
        });
        drop(self.out);
        let mut task = self.task;
        if tokio::time::timeout(wait, &mut task).await.is_err() {
            tracing::debug!("session server did not confirm leave in time");
            self.stop.cancel();
            task.abort();
            // Wait for the task to be gone, so it cannot touch the roster the next session fills.
            let _ = task.await;
        }
    }
}

struct Keeper {
    session: SessionInfo,
    joiner: Joiner,
    roster: Roster,
    events: mpsc::Sender<Event>,
    /// What the server's lines mean: shared by the reading and the writing half of a
    /// connection (the writer records what it sent), never locked across an await.
    tracker: parking_lot::Mutex<Tracker>,
    /// Where the session was last served, for when the coordinator cannot be asked.
    server: parking_lot::Mutex<Server>,
    stop: CancellationToken,
    ended: CancellationToken,
    /// Paces our group lines to the rate limit of the current connection.
    pacer: parking_lot::Mutex<Pacer>,
    per_line_us: Arc<AtomicU64>,
}

impl Keeper {
    async fn run(
        self,
        mut write: WireWrite,
        mut reader: Reader,
        mut out: mpsc::Receiver<Outgoing>,
        mut lookups: mpsc::Receiver<Ask>,
    ) {
        // Our unechoed lines, to send again first after a rejoin.
        let mut resend = Vec::new();
        loop {
            let link = (&mut write, &mut reader, &mut out, &mut lookups);
            let broken = tokio::select! {
                b = self.connected(link, std::mem::take(&mut resend)) => b,
                _ = self.stop.cancelled() => return,
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), write.shutdown()).await;
            let reason = match broken {
                Broken::Left => return,
                Broken::Closed { by } => return self.closed(by).await,
                Broken::Lost(reason) => reason,
            };
            self.disconnected(reason, true, Vec::new()).await;
            match self.rejoin().await {
                Ok((w, r, welcome)) => {
                    self.new_pacer(welcome.rate_limit);
                    // Lines that may not have reached the server go again, first; the server
                    // drops those it already has.
                    let event;
                    (resend, event) = self.tracker.lock().rejoined(
                        &welcome.members,
                        welcome.member_count,
                        welcome.seq,
                    );
                    (write, reader) = (w, r);
                    let _ = self.events.send(event).await;
                }
                Err(Broken::Left) => return,
                Err(Broken::Closed { by }) => return self.closed(by).await,
                Err(Broken::Lost(reason)) => {
                    self.end();
                    // What we said that the session may never have had: sent but not echoed,
                    // then still queued (nothing more can be queued once it is closed).
                    let mut unsent = self.tracker.lock().unconfirmed();
                    out.close();
                    while let Ok(item) = out.try_recv() {
                        if item.line_id.is_some() {
                            unsent.extend(say_text(&item.bytes));
                        }
                    }
                    return self.disconnected(reason, false, unsent).await;
                }
            }
        }
    }

    fn new_pacer(&self, limit: Option<RateLimit>) {
        let pacer = Pacer::new(limit);
        let us = pacer.per_line().as_micros() as u64;
        self.per_line_us.store(us, Ordering::Relaxed);
        *self.pacer.lock() = pacer;
    }

    /// Waits until the rate limit allows one more group line, and takes it.
    async fn token(&self) {
        loop {
            let wait = self.pacer.lock().take();
            match wait {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// The session is over for us: forget its members before anyone can see the link ended,
    /// so no private message goes to, or is accepted from, a former member through it.
    fn end(&self) {
        self.roster.clear();
        self.ended.cancel();
    }

    async fn closed(&self, by: Option<String>) {
        self.end();
        let session = self.session.clone();
        let _ = self.events.send(Event::Closed { session, by }).await;
    }

    async fn disconnected(&self, reason: String, retrying: bool, unsent: Vec<String>) {
        let _ = self
            .events
            .send(Event::Disconnected {
                reason,
                retrying,
                unsent,
            })
            .await;
    }

    /// Asks the coordinator where the session is now and reconnects, with backoff.
    async fn rejoin(&self) -> Result<(WireWrite, Reader, Welcome), Broken> {
        let started = tokio::time::Instant::now();
        // Endless: the clock, not a count, says when to give up.
        let mut waits = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            let wait = waits.next().unwrap_or(RETRY_MAX);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return Err(Broken::Left),
            }
            let body = RequestBody::Join {
                session: self.session.id.to_string(),
                token: self.joiner.token.clone(),
            };
            let server = match self.joiner.coord.request(body).await {
                Ok(ResponseBody::Session { session }) => match Server::of(&session) {
                    Ok(server) => {
                        *self.server.lock() = server;
                        server
                    }
                    Err(ClientError::Invalid(e)) => return Err(Broken::Lost(e)),
                    Err(_) => *self.server.lock(),
                },
                // Closed while we were away: its bye never reached us, so we do not know by whom.
                Err(ClientError::Refused(e)) if e.code == ErrorCode::SessionNotFound => {
                    return Err(Broken::Closed { by: None });
                }
                Err(ClientError::Refused(e)) if e.code == ErrorCode::Unauthorized => {
                    return Err(Broken::Lost(e.message));
                }
                // The coordinator may be restarting; the last address may still answer.
                _ => *self.server.lock(),
            };
            let since = Some(self.tracker.lock().since());
            match self.joiner.connect(server, since).await {
                Ok(connected) => return Ok(connected),
                Err(e) => tracing::debug!(error = %e, "rejoin attempt failed"),
            }
            if started.elapsed() > RETRY_GIVE_UP {
                return Err(Broken::Lost(format!(
                    "gave up reconnecting after {} s",
                    RETRY_GIVE_UP.as_secs()
                )));
            }
        }
    }

    /// Runs one connection until it breaks or we leave; `resend` goes out before anything new.
    async fn connected(
        &self,
        (write, reader, out, lookups): (
            &mut WireWrite,
            &mut Reader,
            &mut mpsc::Receiver<Outgoing>,
            &mut mpsc::Receiver<Ask>,
        ),
        resend: Vec<Bytes>,
    ) -> Broken {
        let heartbeat = self.joiner.heartbeat;
        let silence = heartbeat * 3;
        // The reader asks the writer to answer the server's pings; pings that come faster than
        // the writer answers need one pong between them.
        let ping_heard = Notify::new();
        let read = async {
            loop {
                let line = match tokio::time::timeout(silence, reader.next()).await {
                    Err(_) => {
                        return Broken::Lost(format!(
                            "no word from the session server for {} s",
                            silence.as_secs()
                        ));
                    }
                    Ok(None) => {
                        return Broken::Lost("the session server closed the connection".into());
                    }
                    Ok(Some(Err(e))) => return Broken::Lost(format!("connection error: {e}")),
                    Ok(Some(Ok(Frame::Oversized))) => continue,
                    Ok(Some(Ok(Frame::Line(line)))) => line,
                };
                let reaction = self.tracker.lock().on_line(&line);
                let event = match reaction {
                    Reaction::Show(event) => event,
                    Reaction::Nothing => continue,
                    Reaction::Pong => {
                        ping_heard.notify_one();
                        continue;
                    }
                    Reaction::End(broken) => return broken,
                };
                // Waiting here when the application is slow is right: the server's queue for us
                // absorbs the wait, and if it overflows the server drops us and we rejoin.
                if self.events.send(event).await.is_err() {
                    return Broken::Left;
                }
            }
        };
        let send = async {
            // Paced like new lines (those the server does not have cost tokens), while replies
            // are read: a long list must not keep us deaf to the server.
            for line in resend {
                self.token().await;
                if let Err(e) = write.write_all(&line).await {
                    return Some(Broken::Lost(format!("connection error: {e}")));
                }
            }
            let ping = encode_line(&ClientMsg::Ping);
            let pong = encode_line(&ClientMsg::Pong);
            let mut buf = Vec::with_capacity(8 * 1024);
            loop {
                let next = tokio::select! {
                    item = out.recv() => item,
                    Some(ask) = lookups.recv() => Some(Outgoing {
                        bytes: encode_line(&match ask {
                            Ask::Lookup(user) => ClientMsg::Lookup { user },
                            Ask::Relay { to, data } => ClientMsg::Relay { to, data },
                        }),
                        line_id: None,
                    }),
                    () = ping_heard.notified() => Some(Outgoing {
                        bytes: pong.clone(),
                        line_id: None,
                    }),
                    _ = tokio::time::sleep(heartbeat) => Some(Outgoing {
                        bytes: ping.clone(),
                        line_id: None,
                    }),
                };
                let Some(first) = next else {
                    return None; // leaving: the last line queued was `leave`
                };
                let mut item = Some(first);
                while let Some(Outgoing { bytes, line_id }) = item.take() {
                    if line_id.is_some() && self.pacer.lock().take().is_err() {
                        // Over the rate limit: what is gathered goes now, this line when the
                        // limit allows (waiting here also holds back the lines behind it).
                        if !buf.is_empty() {
                            if let Err(e) = write.write_all(&buf).await {
                                return Some(Broken::Lost(format!("connection error: {e}")));
                            }
                            buf.clear();
                        }
                        self.token().await;
                    }
                    buf.extend_from_slice(&bytes);
                    if let Some(id) = line_id {
                        self.tracker.lock().sent(id, bytes);
                    }
                    if buf.len() < 64 * 1024 {
                        item = out.try_recv().ok();
                    }
                }
                if let Err(e) = write.write_all(&buf).await {
                    return Some(Broken::Lost(format!("connection error: {e}")));
                }
                buf.clear();
            }
        };
        tokio::pin!(read);
        tokio::select! {
            broken = &mut read => broken,
            sent = send => match sent {
                Some(broken) => broken,
                // Everything, `leave` included, is written: wait for the server's goodbye.
                None => tokio::time::timeout(Duration::from_secs(2), read)
                    .await
                    .unwrap_or(Broken::Left),
            },
        }
    }
}

async fn await_welcome(reader: &mut Reader) -> Result<Welcome, ClientError> {
    loop {
        let line = match reader.next().await {
            Some(Ok(Frame::Line(line))) => line,
            Some(Ok(Frame::Oversized)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Closed("closed before welcome".into())),
        };
        match serde_json::from_slice::<ServerMsg>(&line) {
            Ok(ServerMsg::Welcome {
                members,
                member_count,
                seq,
                rate_limit,
                ..
            }) => {
                return Ok(Welcome {
                    members,
                    member_count,
                    seq,
                    rate_limit,
                });
            }
            Ok(ServerMsg::Error(e)) => return Err(ClientError::Refused(e)),
            Ok(ServerMsg::Bye { message, .. }) => return Err(ClientError::Closed(message)),
            Ok(_) => continue,
            Err(e) => tracing::debug!(error = %e, "unreadable line from session server"),
        }
    }
}
