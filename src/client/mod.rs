//! The client: an async API for programs (the `confab` terminal program, tests, the benchmark,
//! bots). It emits [`Event`]s and knows nothing of terminals.
//!
//! One UDP socket serves both the coordinator requests and the peer-to-peer private messages, so
//! the address the coordinator observes for our requests is exactly the address peers must send
//! private messages to (that is what makes the STUN-like `observed` field useful behind a NAT).
//! A hub task reads that socket and routes each datagram: coordinator answers to the request that
//! waits for them, acknowledgements to the private message that waits for them, and private
//! messages to the application as [`Event::Private`].

mod link;
mod roster;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use roster::Roster;

use crate::expiring::ExpiringMap;
use crate::protocol::{
    ChatLine, Departure, DirectoryEntry, ErrorBody, Member, Password, PeerMsg, Request,
    RequestBody, Response, ResponseBody, SessionInfo, limits,
};
use link::Link;

/// How often to try, and how long to wait between tries (doubling up to a cap).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Wait after the first try.
    pub first: Duration,
    /// Longest wait between tries.
    pub max_delay: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
}

impl Retry {
    fn delays(self) -> impl Iterator<Item = Duration> {
        let mut delay = self.first;
        (0..self.attempts).map(move |_| {
            let d = delay;
            delay = (delay * 2).min(self.max_delay);
            d
        })
    }

    /// The longest the whole retry sequence can take.
    pub fn total(self) -> Duration {
        self.delays().sum()
    }
}

/// What a client needs to know before it starts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name to appear under.
    pub user: String,
    /// The coordinator's UDP address.
    pub coordinator: SocketAddr,
    /// Local UDP address; by default any interface, port chosen by the OS.
    pub bind: Option<SocketAddr>,
    /// Endpoint to announce to peers instead of the one the coordinator observed (a port forward,
    /// or a relay in tests).
    pub advertise: Option<SocketAddr>,
    /// Retries of coordinator requests.
    pub request_retry: Retry,
    /// Retries of private messages.
    pub dm_retry: Retry,
    /// A ping goes to the session server after this much quiet, and a server silent for three
    /// times as long counts as gone.
    pub heartbeat: Duration,
    /// Events buffered for the application before the client stops reading the session.
    pub event_queue: usize,
    /// Newest group messages to show on joining.
    pub history_on_join: usize,
}

impl ClientConfig {
    /// Defaults for `user` talking to the coordinator at `coordinator`.
    pub fn new(user: impl Into<String>, coordinator: SocketAddr) -> Self {
        Self {
            user: user.into(),
            coordinator,
            bind: None,
            advertise: None,
            // 200 ms, 400, 800, then 1 s: 15 tries cover about 13 s and survive heavy loss.
            request_retry: Retry {
                first: Duration::from_millis(200),
                max_delay: Duration::from_secs(1),
                attempts: 15,
            },
            dm_retry: Retry {
                first: Duration::from_millis(200),
                max_delay: Duration::from_secs(1),
                attempts: 15,
            },
            heartbeat: Duration::from_secs(2),
            event_queue: 10_000,
            history_on_join: 50,
        }
    }
}

/// Everything that can go wrong for a client, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The coordinator never answered.
    #[error("the coordinator at {addr} did not answer after {attempts} tries")]
    CoordinatorTimeout {
        /// Its address.
        addr: SocketAddr,
        /// How often we asked.
        attempts: u32,
    },
    /// The coordinator or the session server said no.
    #[error("{0}")]
    Refused(ErrorBody),
    /// The session server could not be reached.
    #[error("cannot connect to the session server at {addr}: {source}")]
    Connect {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The session server went away.
    #[error("the session server closed the connection: {0}")]
    Closed(String),
    /// The operation needs a session.
    #[error("not in a session; use /start or /join first")]
    NotInSession,
    /// `join` named the session the client is already in, so nothing was done.
    #[error("you are already in session {0}")]
    AlreadyInSession(String),
    /// The operation needs a login.
    #[error("not logged in")]
    NotLoggedIn,
    /// `@name` named nobody present.
    #[error("no member named {0} is in this session")]
    NoSuchMember(String),
    /// The peer never acknowledged a private message. A copy may still arrive late (delayed in
    /// the network, or at a peer that was frozen); the client then says
    /// [`Event::DeliveredLate`] with the same `id`.
    #[error("private message to {to} was not delivered: no answer after {attempts} tries")]
    NotDelivered {
        /// Who it was for.
        to: String,
        /// How often we sent it.
        attempts: u32,
        /// The message's id.
        id: Uuid,
    },
    /// The session ended for us (it was closed) while a private message to one of its members
    /// was still unacknowledged; it is not sent again.
    #[error("private message to {to} was given up: the session ended before {to} acknowledged it")]
    SessionEnded {
        /// Who it was for.
        to: String,
    },
    /// Something the user typed breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// An answer that does not fit the question.
    #[error("unexpected answer from the coordinator")]
    Unexpected,
    /// Socket trouble.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

/// Things that happen to a client without being asked for, in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A group chat line (the client's own included).
    Message(ChatLine),
    /// Earlier lines, oldest first, answering [`Client::history`] or replayed on rejoin.
    History(Vec<ChatLine>),
    /// Members arrived or left. In a large session the lists are empty and only the count
    /// changes. One notice may name the same user in both lists: it left, then joined again (a
    /// rejoin), in that order.
    Presence {
        /// Who came.
        joined: Vec<Member>,
        /// Who went (before those in `joined` came).
        left: Vec<Departure>,
        /// How many are present now.
        member_count: usize,
        /// The roster right after this notice, sorted by name (in a large session, the members
        /// known). Show this rather than [`Client::members`], which may already include later
        /// notices still queued behind this one, such as a member's return after its departure.
        members: Vec<Member>,
    },
    /// A private message, shown once however often it was sent.
    Private {
        /// Its id.
        id: Uuid,
        /// The sender.
        from: String,
        /// When it was sent.
        time: DateTime<Utc>,
        /// What it says.
        text: String,
    },
    /// The session server refused something (a rate limit, a text too long).
    ServerError(ErrorBody),
    /// The connection to the session ended without us leaving.
    Disconnected {
        /// Why, as far as we know.
        reason: String,
        /// Whether the client is reconnecting (it will say [`Event::Reconnected`]); if not, the
        /// session is over for us.
        retrying: bool,
    },
    /// Back in the session after a [`Event::Disconnected`]; missed lines follow as messages.
    Reconnected {
        /// The roster on rejoining, sorted by name (empty in a large session). As with
        /// [`Event::Presence`], show this one: notices queued behind it may already be applied.
        members: Vec<Member>,
        /// How many are present, by the server's count.
        member_count: usize,
    },
    /// A private message reported not delivered ([`ClientError::NotDelivered`]) was acknowledged
    /// after all: the recipient has shown it.
    DeliveredLate {
        /// The message's id, as in the error.
        id: Uuid,
        /// The recipient.
        to: String,
        /// The timestamp the message carried.
        time: DateTime<Utc>,
        /// What it said.
        text: String,
    },
    /// The session was removed for good (`close`). We are out of it: the client has forgotten
    /// it and its members, and does not reconnect.
    Closed {
        /// The session that is gone.
        session: SessionInfo,
        /// Who closed it, when the server said (it does not when the close happened while we
        /// were reconnecting).
        by: Option<String>,
    },
}

/// Proof that a private message arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmReceipt {
    /// The message id.
    pub id: Uuid,
    /// The recipient's name as the session spells it.
    pub to: String,
    /// The timestamp the message carried.
    pub time: DateTime<Utc>,
}

/// Waiters keyed by id: whoever registered gets the first value delivered for it.
struct Waiters<K, V> {
    map: Arc<Mutex<HashMap<K, oneshot::Sender<V>>>>,
}

impl<K, V> Clone for Waiters<K, V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K: Hash + Eq, V> Waiters<K, V> {
    fn new() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, oneshot::Sender<V>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, key: K) -> oneshot::Receiver<V> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(key, tx);
        rx
    }

    /// Hands `value` to whoever waits for `key`; false if nobody does.
    fn complete(&self, key: &K, value: V) -> bool {
        match self.lock().remove(key) {
            Some(tx) => {
                let _ = tx.send(value);
                true
            }
            None => false,
        }
    }

    fn forget(&self, key: &K) {
        self.lock().remove(key);
    }
}

/// A private message the client gave up on, kept so that a late acknowledgement can still be
/// reported rather than leave the sender believing it was never shown.
#[derive(Debug)]
struct LateDm {
    to: String,
    time: DateTime<Utc>,
    text: String,
}

/// Given-up messages by (id, the endpoint they went to); taken out by the first late ack.
type LateDms = Arc<Mutex<ExpiringMap<(Uuid, SocketAddr), Option<LateDm>>>>;
/// How long a given-up message listens for a late ack: as long as receivers remember the ids
/// they have shown, so that any copy shown at all is shown within it.
const LATE_TTL: Duration = Duration::from_secs(600);
/// Most given-up messages listened for at once (each keeps its text, at most 800 bytes).
const LATE_CAP: usize = 1000;

/// Sends requests to the coordinator over the client's UDP socket and waits for the answers,
/// retrying with backoff. Shared by the client and its session links (which rejoin through it).
#[derive(Clone)]
pub(crate) struct Coord {
    udp: Arc<UdpSocket>,
    addr: SocketAddr,
    retry: Retry,
    next_id: Arc<AtomicU64>,
    requests: Waiters<u64, Response>,
    observed: Arc<Mutex<Option<SocketAddr>>>,
}

impl Coord {
    /// The address the coordinator last saw our requests come from.
    fn observed(&self) -> Option<SocketAddr> {
        *lock(&self.observed)
    }

    /// Sends one request, retrying with backoff until the coordinator answers.
    async fn request(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut bytes =
            serde_json::to_vec(&Request { id, body }).expect("protocol types serialize");
        crate::protocol::pad_request(&mut bytes);
        let mut answer = self.requests.register(id);
        let mut delays = self.retry.delays();
        while let Some(delay) = delays.next() {
            if let Err(e) = self.udp.send_to(&bytes, self.addr).await {
                tracing::debug!(error = %e, "request send failed");
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(delay, &mut answer).await {
                *lock(&self.observed) = Some(resp.observed);
                match resp.body {
                    // Nothing was done; the same request after the next delay may find room.
                    ResponseBody::Error(e) if e.code == crate::protocol::ErrorCode::Busy => {
                        let Some(delay) = delays.next() else { break };
                        tokio::time::sleep(delay).await;
                        answer = self.requests.register(id);
                    }
                    ResponseBody::Error(e) => return Err(ClientError::Refused(e)),
                    body => return Ok(body),
                }
            }
        }
        self.requests.forget(&id);
        Err(ClientError::CoordinatorTimeout {
            addr: self.addr,
            attempts: self.retry.attempts,
        })
    }
}

/// A connected client. Cheap to clone; all clones share one socket and one session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    coord: Coord,
    /// Acks are accepted only from the endpoint the message went to.
    acks: Waiters<(Uuid, SocketAddr), ()>,
    late: LateDms,
    roster: Roster,
    events: mpsc::Sender<Event>,
    /// From the last login.
    token: Mutex<Option<String>>,
    link: Mutex<Option<Link>>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Client {
    /// Opens the UDP socket and starts listening for answers and private messages.
    /// Events arrive on the returned receiver; read it, or the session stalls and drops you.
    pub async fn start(
        config: ClientConfig,
    ) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        crate::auth::validate_user_name(&config.user)
            .map_err(|e| ClientError::Invalid(format!("user name: {e}")))?;
        let bind = config.bind.unwrap_or(match config.coordinator {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid address"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("valid address"),
        });
        let udp = UdpSocket::bind(bind)
            .await
            .map_err(|source| ClientError::Bind { addr: bind, source })?;
        let local = udp.local_addr()?;
        let udp = Arc::new(udp);
        let (events, events_rx) = mpsc::channel(config.event_queue);
        // Random start: a restarted client on a reused port must not hit cached answers.
        let first_id = Uuid::new_v4().as_u64_pair().0 >> 12;
        let coord = Coord {
            udp: udp.clone(),
            addr: config.coordinator,
            retry: config.request_retry,
            next_id: Arc::new(AtomicU64::new(first_id)),
            requests: Waiters::new(),
            observed: Arc::new(Mutex::new(None)),
        };
        let inner = Arc::new(Inner {
            config,
            udp: udp.clone(),
            local,
            coord,
            acks: Waiters::new(),
            late: Arc::new(Mutex::new(ExpiringMap::new(LATE_TTL, LATE_CAP))),
            roster: Roster::default(),
            events: events.clone(),
            token: Mutex::new(None),
            link: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        let hub = Hub {
            udp,
            user: inner.config.user.clone(),
            coordinator: inner.config.coordinator,
            requests: inner.coord.requests.clone(),
            acks: inner.acks.clone(),
            late: inner.late.clone(),
            roster: inner.roster.clone(),
            events,
            seen: ExpiringMap::new(Duration::from_secs(600), 100_000),
        };
        tokio::spawn(hub.run(inner.stop.clone()));
        Ok((Client { inner }, events_rx))
    }

    /// How this client was set up (a program waiting for private messages to settle needs the
    /// retry schedule).
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Our user name.
    pub fn user(&self) -> &str {
        &self.inner.config.user
    }

    /// The local UDP address (what peers must reach, unless a NAT or relay stands between).
    pub fn local_udp(&self) -> SocketAddr {
        self.inner.local
    }

    /// The endpoint announced to peers: the advertised one, else the one the coordinator saw.
    pub fn endpoint(&self) -> SocketAddr {
        self.inner
            .config
            .advertise
            .or(self.inner.coord.observed())
            .unwrap_or(self.inner.local)
    }

    async fn request(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        self.inner.coord.request(body).await
    }

    /// Creates an account for our user name.
    pub async fn register(&self, password: &str) -> Result<String, ClientError> {
        let body = RequestBody::Register {
            user: self.user().to_string(),
            password: Password(password.to_string()),
        };
        match self.request(body).await? {
            ResponseBody::Registered { user } => Ok(user),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Logs in; the token is kept for the requests and joins that need it.
    /// Returns the user name as registered.
    pub async fn login(&self, password: &str) -> Result<String, ClientError> {
        let body = RequestBody::Login {
            user: self.user().to_string(),
            password: Password(password.to_string()),
        };
        match self.request(body).await? {
            ResponseBody::LoggedIn { user, token, .. } => {
                *lock(&self.inner.token) = Some(token);
                Ok(user)
            }
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Uses a token obtained elsewhere (a test forging one, a tool sharing one).
    pub fn set_token(&self, token: impl Into<String>) {
        *lock(&self.inner.token) = Some(token.into());
    }

    /// The token of the last login, for programs that speak to a session server themselves.
    pub fn session_token(&self) -> Option<String> {
        lock(&self.inner.token).clone()
    }

    fn token(&self) -> Result<String, ClientError> {
        lock(&self.inner.token)
            .clone()
            .ok_or(ClientError::NotLoggedIn)
    }

    /// Asks the coordinator for a new session.
    pub async fn create(&self, name: Option<&str>) -> Result<SessionInfo, ClientError> {
        let body = RequestBody::Create {
            name: name.map(String::from),
            token: self.token()?,
        };
        match self.request(body).await? {
            ResponseBody::Session { session } => Ok(session),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Looks a session up by id, id prefix or name.
    pub async fn find(&self, session: &str) -> Result<SessionInfo, ClientError> {
        let body = RequestBody::Join {
            session: session.to_string(),
            token: self.token()?,
        };
        match self.request(body).await? {
            ResponseBody::Session { session } => Ok(session),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Removes a session we created, for good.
    pub async fn close_session(&self, session: &str) -> Result<uuid::Uuid, ClientError> {
        let body = RequestBody::Close {
            session: session.to_string(),
            token: self.token()?,
        };
        match self.request(body).await? {
            ResponseBody::Closed { session } => Ok(session),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The whole directory, fetched page by page.
    pub async fn list(&self) -> Result<Vec<DirectoryEntry>, ClientError> {
        let mut all = Vec::new();
        let mut cursor = 0;
        // Bounded: the directory cannot have more pages than entries.
        for _ in 0..100_000 {
            match self.request(RequestBody::List { cursor }).await? {
                ResponseBody::Sessions { sessions, next, .. } => {
                    all.extend(sessions);
                    match next {
                        Some(n) if n > cursor => cursor = n,
                        _ => break,
                    }
                }
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok(all)
    }

    /// Creates a session and joins it.
    pub async fn start_session(&self, name: Option<&str>) -> Result<Joined, ClientError> {
        let info = self.create(name).await?;
        self.join_info(info).await
    }

    /// Finds a session and joins it, leaving the current one first.
    pub async fn join(&self, session: &str) -> Result<Joined, ClientError> {
        let mut tries = 0;
        loop {
            let info = self.find(session).await?;
            // Leaving and joining again would announce us twice and replay history: do nothing.
            if self.session().is_some_and(|s| s.id == info.id) {
                return Err(ClientError::AlreadyInSession(match info.name {
                    Some(name) => format!("{name} ({})", info.id),
                    None => info.id.to_string(),
                }));
            }
            match self.join_info(info).await {
                // The server may have stopped (idle) between the answer and our connect; asking
                // again starts it anew.
                Err(ClientError::Connect { .. }) if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                result => return result,
            }
        }
    }

    /// Joins a session whose server is known.
    pub async fn join_info(&self, info: SessionInfo) -> Result<Joined, ClientError> {
        self.leave().await;
        let inner = &self.inner;
        let joiner = link::Joiner {
            config: inner.config.clone(),
            coord: inner.coord.clone(),
            token: self.token()?,
            local: inner.local,
        };
        let (link, welcome) = Link::open(
            info.clone(),
            joiner,
            inner.roster.clone(),
            inner.events.clone(),
        )
        .await?;
        *lock(&inner.link) = Some(link);
        Ok(Joined {
            session: info,
            members: welcome.members,
            member_count: welcome.member_count,
            seq: welcome.seq,
        })
    }

    /// The link to the session we are in; a link whose session is over for us (closed, or
    /// reconnecting gave up) is dropped here, so every caller sees "not in a session".
    fn link(&self) -> MutexGuard<'_, Option<Link>> {
        let mut link = lock(&self.inner.link);
        if link.as_ref().is_some_and(Link::is_ended) {
            *link = None;
        }
        link
    }

    /// Leaves the current session, if any, and waits briefly for the server to confirm.
    pub async fn leave(&self) -> Option<SessionInfo> {
        let link = self.link().take()?;
        let info = link.session.clone();
        link.close().await;
        self.inner.roster.clear();
        Some(info)
    }

    /// The session we are in.
    pub fn session(&self) -> Option<SessionInfo> {
        self.link().as_ref().map(|l| l.session.clone())
    }

    /// The current roster, sorted by name (in a large session, only the members we know of).
    pub fn members(&self) -> Vec<Member> {
        self.inner.roster.members()
    }

    /// How many are in the session, by the server's count.
    pub fn member_count(&self) -> usize {
        self.inner.roster.count()
    }

    /// Sends a line to the whole group; it comes back as [`Event::Message`] in its place in the
    /// session's order.
    pub async fn say(&self, text: &str) -> Result<(), ClientError> {
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if text.len() > limits::MAX_TEXT {
            return Err(ClientError::Invalid(format!(
                "message too long: {} bytes, limit {}",
                text.len(),
                limits::MAX_TEXT
            )));
        }
        let link = self.link_sender()?;
        link.say(text).await
    }

    /// Asks for up to `limit` messages before sequence number `before` (the newest if `None`);
    /// they arrive as [`Event::History`].
    pub async fn history(&self, before: Option<u64>, limit: usize) -> Result<(), ClientError> {
        self.link_sender()?.history(before, limit).await
    }

    fn link_sender(&self) -> Result<link::LinkSender, ClientError> {
        self.link()
            .as_ref()
            .map(|l| l.sender())
            .ok_or(ClientError::NotInSession)
    }

    /// Sends a private message straight to a member's UDP endpoint and waits for its
    /// acknowledgement, retrying with backoff.
    pub async fn dm(&self, to: &str, text: &str) -> Result<DmReceipt, ClientError> {
        let inner = &self.inner;
        // Retries stop when the session ends for us: its former members are nobody's to reach.
        let ended = self
            .link()
            .as_ref()
            .map(Link::ended)
            .ok_or(ClientError::NotInSession)?;
        let member = inner
            .roster
            .find(to, Duration::from_secs(3))
            .await
            .ok_or_else(|| ClientError::NoSuchMember(to.to_string()))?;
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if text.len() > limits::MAX_DM_TEXT {
            return Err(ClientError::Invalid(format!(
                "private message too long: {} bytes, limit {}",
                text.len(),
                limits::MAX_DM_TEXT
            )));
        }
        let id = Uuid::new_v4();
        let time = Utc::now().trunc_subsecs(0);
        let msg = PeerMsg::Dm {
            id,
            from: inner.config.user.clone(),
            to: member.user.clone(),
            time,
            text: text.to_string(),
        };
        let bytes = serde_json::to_vec(&msg).expect("protocol types serialize");
        if bytes.len() > limits::MAX_DATAGRAM {
            // Escaping can make a text within MAX_DM_TEXT too big for one datagram.
            return Err(ClientError::Invalid(format!(
                "private message too long once encoded: {} bytes, limit {}",
                bytes.len(),
                limits::MAX_DATAGRAM
            )));
        }
        let key = (id, member.udp);
        let mut acked = inner.acks.register(key);
        for delay in inner.config.dm_retry.delays() {
            if let Err(e) = inner.udp.send_to(&bytes, member.udp).await {
                tracing::debug!(error = %e, to = %member.user, "private message send failed");
            }
            let answered = tokio::select! {
                ack = tokio::time::timeout(delay, &mut acked) => matches!(ack, Ok(Ok(()))),
                _ = ended.cancelled() => {
                    inner.acks.forget(&key);
                    return Err(ClientError::SessionEnded { to: member.user });
                }
            };
            if answered {
                return Ok(DmReceipt {
                    id,
                    to: member.user,
                    time,
                });
            }
        }
        // Listen on for a late ack before we stop waiting, so none falls between the two.
        let late = LateDm {
            to: member.user.clone(),
            time,
            text: text.to_string(),
        };
        lock(&inner.late).insert(key, Some(late));
        inner.acks.forget(&key);
        if acked.try_recv().is_ok() {
            if let Some(slot) = lock(&inner.late).get_mut(&key) {
                slot.take();
            }
            return Ok(DmReceipt {
                id,
                to: member.user,
                time,
            });
        }
        Err(ClientError::NotDelivered {
            to: member.user,
            attempts: inner.config.dm_retry.attempts,
            id,
        })
    }
}

/// The result of joining a session.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The session.
    pub session: SessionInfo,
    /// Everyone in it, us included (empty in a large session: see `member_count`).
    pub members: Vec<Member>,
    /// How many are in it.
    pub member_count: usize,
    /// Sequence number of its newest message.
    pub seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the client's UDP socket and routes every datagram.
struct Hub {
    udp: Arc<UdpSocket>,
    user: String,
    coordinator: SocketAddr,
    requests: Waiters<u64, Response>,
    acks: Waiters<(Uuid, SocketAddr), ()>,
    late: LateDms,
    roster: Roster,
    events: mpsc::Sender<Event>,
    /// Private messages already shown, by sender and id.
    seen: ExpiringMap<(String, Uuid), ()>,
}

impl Hub {
    async fn run(mut self, stop: CancellationToken) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let received = tokio::select! {
                r = self.udp.recv_from(&mut buf) => r,
                _ = stop.cancelled() => break,
            };
            match received {
                Ok((len, from)) => self.route(&buf[..len], from).await,
                // ICMP "port unreachable" from an earlier send to a vanished peer lands here.
                Err(e) => tracing::debug!(error = %e, "udp receive failed"),
            }
        }
    }

    async fn route(&mut self, datagram: &[u8], from: SocketAddr) {
        if from == self.coordinator {
            match serde_json::from_slice::<Response>(datagram) {
                Ok(resp) => {
                    if let Some(id) = resp.id {
                        self.requests.complete(&id, resp);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "unreadable coordinator answer"),
            }
            return;
        }
        if datagram.len() > limits::MAX_DATAGRAM {
            tracing::debug!(%from, len = datagram.len(), "oversized peer datagram dropped");
            return;
        }
        match serde_json::from_slice::<PeerMsg>(datagram) {
            Ok(PeerMsg::Ack { id, .. }) => {
                if !self.acks.complete(&(id, from), ()) {
                    let late = lock(&self.late).get_mut(&(id, from)).and_then(Option::take);
                    if let Some(LateDm { to, time, text }) = late {
                        let event = Event::DeliveredLate { id, to, time, text };
                        let _ = self.events.try_send(event);
                    }
                }
            }
            Ok(PeerMsg::Dm {
                id,
                from: sender,
                to,
                time,
                text,
            }) => {
                if !to.eq_ignore_ascii_case(&self.user) {
                    tracing::debug!(%from, %to, "private message for someone else dropped");
                    return;
                }
                if !self.roster.is_at(&sender, from) {
                    if self.roster.is_partial() && self.roster.get(&sender).is_none() {
                        // Perhaps a member of a large session we were not told about: ask, and
                        // the sender's next try will find it known.
                        self.roster.want(&sender);
                    }
                    // Not from the endpoint the session says the sender has: forged, or from
                    // someone not (yet) in our roster. No ack, so a real sender will retry.
                    tracing::warn!(%from, claimed = %sender, "private message from wrong endpoint rejected");
                    return;
                }
                if self.seen.get(&(sender.clone(), id)).is_none() {
                    let event = Event::Private {
                        id,
                        from: sender.clone(),
                        time,
                        text,
                    };
                    if self.events.try_send(event).is_err() {
                        // The application is not keeping up; without an ack the sender retries.
                        return;
                    }
                    self.seen.insert((sender, id), ());
                }
                let ack = PeerMsg::Ack {
                    id,
                    from: self.user.clone(),
                };
                let bytes = serde_json::to_vec(&ack).expect("protocol types serialize");
                let _ = self.udp.send_to(&bytes, from).await;
            }
            Err(e) => tracing::debug!(%from, error = %e, "malformed peer datagram dropped"),
        }
    }
}
