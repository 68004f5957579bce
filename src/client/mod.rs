//! The client: an async API for programs (the `confab` terminal program, tests, the benchmark,
//! bots). It emits [`Event`]s and knows nothing of terminals.
//!
//! The API is [`Client`]. Its parts, from the bottom up, each in its own file that imports only
//! files listed before it (so no two files import each other):
//! - `error` and `event`: [`ClientError`] and [`Event`], which every part below returns or sends.
//! - `backoff`: the retry schedule that requests, private messages and reconnects share.
//! - `rpc`: requests to the coordinator, with retries; waiters for their answers.
//! - `candidates`: where peers may reach our socket besides our public endpoint.
//! - `roster`: our copy of who is in the session, where their UDP endpoints are, their keys; the
//!   way to relay a datagram to one of them through the session server.
//! - `contacts`: everyone we can send private messages to: the roster, and anyone online the
//!   coordinator looks up for us; relays through the session server or the coordinator.
//! - `pins`: the peers' identity keys pinned at first contact.
//! - `paths`: direct paths to peers learned from what reached us, and the probes that open them.
//! - `dm`: private messages over UDP (sealed, relayed when the direct path fails, punched
//!   through NAT), and the hub that reads the socket for them and for `rpc`.
//! - `tracker`: what each line from the session server means to us (seq, our unechoed lines,
//!   lines already shown, the roster), decided without a socket so tests can drive it.
//! - `link`: the connection to the session, a thin task around `tracker` that survives the
//!   server: heartbeat, reconnect, resend; `pacer` keeps its lines to the rate limit.

mod backoff;
mod candidates;
mod contacts;
mod dm;
mod error;
mod event;
mod link;
mod pacer;
mod paths;
mod pins;
mod roster;
mod rpc;
mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use backoff::Retry;
pub use dm::{DmReceipt, Via};
pub use error::ClientError;
pub use event::Event;
pub use pins::PinState;
pub use roster::Roster;

use crate::protocol::{
    DirectoryEntry, Member, Password, RequestBody, ResponseBody, SessionInfo, check_text,
};
use backoff::Backoff;
use dm::Dms;
use link::Link;
use rpc::Coord;

/// What a client needs to know before it starts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name to appear under.
    pub user: String,
    /// The coordinator's UDP address.
    pub coordinator: SocketAddr,
    /// More coordinators of the same group (sharing its database, so its key and accounts),
    /// tried in order when the one asked stops answering.
    pub more_coordinators: Vec<SocketAddr>,
    /// Local UDP address; by default any interface, port chosen by the OS.
    pub bind: Option<SocketAddr>,
    /// Endpoint to announce to peers instead of the one the coordinator observed (a port forward,
    /// or a relay in tests).
    pub advertise: Option<SocketAddr>,
    /// The coordinator's public key (`confab coordinator --print-key`), to seal requests for and
    /// to accept no other (checked against the coordinator's `key` answer before the first
    /// sealed request); `None` takes the one the coordinator gives when first asked.
    pub coordinator_key: Option<[u8; 32]>,
    /// The private half of the user's identity key (X25519), which private messages are sealed
    /// with and which peers pin; `None` makes a new one for this run (peers then see a new key
    /// each run). The terminal client keeps one per user in its data folder.
    pub identity: Option<[u8; 32]>,
    /// Where the pinned keys of peers are kept (`None`: in memory only, for this run).
    pub known_peers: Option<std::path::PathBuf>,
    /// Announce the socket's address on our own network beside the public one, so that peers
    /// behind the same NAT reach us directly (most NATs do not forward to their own public
    /// address). Off keeps the local address private from the session's members.
    pub share_local: bool,
    /// Announce ourselves to the coordinator from login on (`announce`, about every 20 s), so
    /// that users outside our session can find us and the coordinator can relay to us. Off
    /// leaves us reachable only by the members of a session we are in.
    pub announce: bool,
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
            more_coordinators: Vec::new(),
            bind: None,
            advertise: None,
            coordinator_key: None,
            identity: None,
            known_peers: None,
            share_local: true,
            announce: true,
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

/// A connected client. Cheap to clone; all clones share one socket and one session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// Our identity key pair: announced in every hello, seals our private messages.
    identity: crate::identity::Identity,
    pins: Arc<pins::Pins>,
    /// How the last private message to each peer got through.
    reach: Mutex<std::collections::HashMap<String, Via>>,
    local: SocketAddr,
    coord: Coord,
    dms: Dms,
    roster: Roster,
    events: mpsc::Sender<Event>,
    /// From the last login.
    token: Arc<Mutex<Option<String>>>,
    contacts: contacts::Contacts,
    /// Ends the announcements of the last login.
    announcing: Mutex<Option<CancellationToken>>,
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
    ///
    /// # Examples
    ///
    /// A bot that logs in, joins `lobby` and answers `ping` in the group:
    ///
    /// ```no_run
    /// use confab::client::{Client, ClientConfig, Event};
    ///
    /// # async fn bot() -> Result<(), confab::client::ClientError> {
    /// let config = ClientConfig::new("bot", "127.0.0.1:7500".parse().unwrap());
    /// let (client, mut events) = Client::start(config).await?;
    /// client.login("its password").await?;
    /// client.join("lobby").await?;
    /// while let Some(event) = events.recv().await {
    ///     if let Event::Message(line) = event
    ///         && line.text == "ping"
    ///     {
    ///         client.say("pong").await?;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
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
        let coord = Coord::new(
            udp.clone(),
            std::iter::once(config.coordinator)
                .chain(config.more_coordinators.iter().copied())
                .collect(),
            config.request_retry,
            config.coordinator_key,
        );
        let identity = config
            .identity
            .map(crate::identity::Identity::from_secret)
            .unwrap_or_else(crate::identity::Identity::generate);
        let pins = Arc::new(pins::Pins::load(
            config.coordinator,
            config.known_peers.clone(),
        ));
        let roster = Roster::default();
        let token = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        let contacts =
            contacts::Contacts::new(roster.clone(), coord.clone(), token.clone(), stop.clone());
        let dms = Dms::new(
            udp,
            config.user.clone(),
            config.dm_retry,
            &identity,
            pins.clone(),
            contacts.clone(),
        );
        let inner = Arc::new(Inner {
            config,
            identity,
            pins,
            reach: Mutex::new(Default::default()),
            local,
            coord,
            dms,
            roster,
            events: events.clone(),
            token,
            contacts,
            announcing: Mutex::new(None),
            link: Mutex::new(None),
            stop,
        });
        inner
            .dms
            .spawn_hub(inner.coord.clone(), events, inner.stop.clone());
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
                *self.inner.token.lock() = Some(token);
                if self.inner.config.announce {
                    self.announce().await?;
                }
                Ok(user)
            }
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Tells the coordinator (and the rest of its group) we are online and where we are
    /// reached, and keeps telling it (every third of the time an announcement counts) until the client stops, the next login,
    /// or the token is refused. The first announcement is awaited, so that once `login`
    /// returns, others can find us.
    async fn announce(&self) -> Result<(), ClientError> {
        let inner = &self.inner;
        let body = RequestBody::Announce {
            token: self.token()?,
            key: inner.identity.fingerprint(),
            udp: inner.config.advertise,
            local: if inner.config.share_local {
                candidates::local(inner.local, inner.config.coordinator)
            } else {
                Vec::new()
            },
        };
        let ttl = match self.request(body.clone()).await? {
            ResponseBody::Announced { ttl } => Duration::from_secs(ttl.max(3)),
            _ => return Err(ClientError::Unexpected),
        };
        // The rest of the group hears it once each round, unanswered: three rounds fit in an
        // announcement's time, so one lost datagram costs nothing.
        inner.coord.post_to_others(&body);
        let stop = inner.stop.child_token();
        if let Some(earlier) = inner.announcing.lock().replace(stop.clone()) {
            earlier.cancel();
        }
        let coord = inner.coord.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 3) => {}
                    _ = stop.cancelled() => return,
                }
                let sent = tokio::select! {
                    r = coord.request(body.clone()) => r,
                    _ = stop.cancelled() => return,
                };
                coord.post_to_others(&body);
                match sent {
                    Ok(_) => {}
                    Err(ClientError::Refused(e)) => {
                        // An expired token: others find us again after the next login.
                        tracing::info!(error = %e, "announcements stopped");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "announcement not answered"),
                }
            }
        });
        Ok(())
    }

    /// Uses a token obtained elsewhere (a test forging one, a tool sharing one).
    pub fn set_token(&self, token: impl Into<String>) {
        *self.inner.token.lock() = Some(token.into());
    }

    /// The token of the last login, for programs that speak to a session server themselves.
    pub fn session_token(&self) -> Option<String> {
        self.inner.token.lock().clone()
    }

    /// The key pair the login token is bound to, which each session handshake proves; for
    /// programs that speak to a session server themselves (the benchmarks).
    pub fn static_key(&self) -> Option<crate::transport::StaticKey> {
        self.inner.coord.static_key()
    }

    fn token(&self) -> Result<String, ClientError> {
        self.inner
            .token
            .lock()
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

    /// The coordinator's long-term public key, to pin (see [`crate::identity`]). Answered to
    /// anyone; what makes it worth having is remembering it and noticing when it changes.
    ///
    /// The key given is the one later requests are sealed for (unless one was pinned in
    /// [`ClientConfig::coordinator_key`]: then a different one is an error), so a program that
    /// checks it before logging in (as the terminal client does) seals for the key it checked.
    pub async fn coordinator_key(&self) -> Result<[u8; 32], ClientError> {
        self.inner.coord.fetch_key().await
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

    /// Who is online (in some running session now, or announced), by name, every page of it; at most
    /// `limit` names (the total comes back beside them).
    pub async fn online(&self, limit: usize) -> Result<(Vec<String>, usize), ClientError> {
        let mut all = Vec::new();
        let mut cursor = 0;
        let mut total = 0;
        while all.len() < limit {
            let token = self.token()?;
            match self.request(RequestBody::Online { cursor, token }).await? {
                ResponseBody::Online {
                    users,
                    next,
                    total: t,
                } => {
                    total = t;
                    all.extend(users);
                    match next {
                        Some(n) if n > cursor => cursor = n,
                        _ => break,
                    }
                }
                _ => return Err(ClientError::Unexpected),
            }
        }
        all.truncate(limit);
        Ok((all, total))
    }

    /// Creates a session and joins it.
    pub async fn start_session(&self, name: Option<&str>) -> Result<Joined, ClientError> {
        let info = self.create(name).await?;
        self.join_info(info).await
    }

    /// Finds a session and joins it, leaving the current one first.
    pub async fn join(&self, session: &str) -> Result<Joined, ClientError> {
        // Up to three more tries, after nominally 200, 400 and 600 ms.
        let mut waits =
            Backoff::new(Duration::from_millis(200), Duration::from_millis(600)).take(3);
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
                Err(e @ ClientError::Connect { .. }) => match waits.next() {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(e),
                },
                result => return result,
            }
        }
    }

    /// Joins a session whose server is known.
    pub async fn join_info(&self, info: SessionInfo) -> Result<Joined, ClientError> {
        self.leave().await;
        let inner = &self.inner;
        let config = &inner.config;
        let joiner = link::Joiner {
            user: config.user.clone(),
            advertise: config.advertise,
            heartbeat: config.heartbeat,
            history_on_join: config.history_on_join,
            coord: inner.coord.clone(),
            token: self.token()?,
            local: inner.local,
            key: inner.identity.fingerprint(),
            candidates: if config.share_local {
                candidates::local(inner.local, config.coordinator)
            } else {
                Vec::new()
            },
        };
        let (link, welcome) = Link::open(
            info.clone(),
            joiner,
            inner.roster.clone(),
            inner.events.clone(),
        )
        .await?;
        *inner.link.lock() = Some(link);
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
        let mut link = self.inner.link.lock();
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
        check_text(text).map_err(|e| ClientError::Invalid(e.message))?;
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

    /// Sends a private message straight to a user's UDP endpoint and waits for its
    /// acknowledgement, retrying with backoff (and relaying when no direct path answers). The
    /// user is a member of our session, or anyone online whom the coordinator knows.
    pub async fn dm(&self, to: &str, text: &str) -> Result<DmReceipt, ClientError> {
        let member = self.member(to).await?;
        // Retries to a member of our session stop when the session ends for us (the roster we
        // found them in is gone); to anyone else, when the client stops.
        let ended = match self.link().as_ref() {
            Some(link) if self.inner.roster.get(&member.user).is_some() => link.ended(),
            _ => self.inner.stop.child_token(),
        };
        let receipt = self.inner.dms.send(member, text, ended).await?;
        self.inner
            .reach
            .lock()
            .insert(receipt.to.to_lowercase(), receipt.via);
        Ok(receipt)
    }

    /// A member of the session (looked up with the server in a large session), else anyone
    /// online, as the coordinator gives them.
    pub async fn member(&self, user: &str) -> Result<Member, ClientError> {
        self.inner.contacts.find(user).await
    }

    /// How the last private message to `user` got through: direct (from which endpoint the
    /// acknowledgement came) or relayed; `None` before the first.
    pub fn reached_by(&self, user: &str) -> Option<Via> {
        self.inner.reach.lock().get(&user.to_lowercase()).copied()
    }

    /// Our identity key's fingerprint, for people to compare (`/whois` shows it).
    pub fn fingerprint(&self) -> String {
        self.inner.identity.fingerprint()
    }

    /// What a member's identity key (as the session gives it) is to us: new, the one we
    /// pinned, or changed; `None` if it announced none. Looking does not pin anything.
    pub fn key_state(&self, member: &Member) -> Option<PinState> {
        let key = member.public_key()?;
        Some(match self.inner.pins.pinned(&member.user) {
            None => PinState::New,
            Some(pinned) if pinned == key => PinState::Pinned,
            Some(pinned) => PinState::Changed { pinned },
        })
    }

    /// Pins the key the session now gives `user`, replacing an earlier pin: for after the
    /// user compared it by other means. Returns the key pinned.
    pub async fn trust(&self, user: &str) -> Result<String, ClientError> {
        let member = self.member(user).await?;
        let key = member
            .public_key()
            .ok_or_else(|| ClientError::NoPeerKey(member.user.clone()))?;
        self.inner.pins.trust(&member.user, &key);
        Ok(crate::identity::fingerprint(&key))
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
