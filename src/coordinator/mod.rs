//! The coordinator: a UDP request loop, accounts, the session directory, and the session servers
//! it starts.
//!
//! One task reads every datagram and answers it, so requests from all clients are applied in one
//! order. Answers are cached per request (its address and the digest of the whole datagram) for a
//! while: UDP loses answers, clients retry the same bytes, and a retried `create` must not make a
//! second session.
//!
//! The loop never waits for anything slow. Every request that needs the database (or a password
//! hash) becomes a job: a task of its own that reports its result back to the loop, which applies
//! it to the directory and answers then; a retry that arrives meanwhile is ignored, not run twice.
//! So a `join` that restarts an idle session waits behind the history writes queued before it,
//! while every other client (a `list` above all) is answered at once. A session whose server is
//! being started is marked `Starting` in the directory, and a `join` of it waits for that start
//! rather than starting a second server.
//!
//! Anyone can send datagrams, with any source address, so everything a stranger can cause is
//! bounded: answers are at most 3× their request (requests are padded), requests without a valid
//! token are rate-limited per address, password hashing runs on a fixed pool with a capped queue,
//! registrations and created sessions have quotas per address and per account, and no session
//! server starts when the descriptors left would not serve the members of those already running.

mod accounts;
mod config;
mod directory;
mod fds;
mod hashing;
mod jobs;
mod online;
mod peers;
mod quota;
mod replies;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

#[cfg(feature = "test-util")]
pub use config::HistoryTap;
pub use config::{CoordinatorConfig, CoordinatorError, default_db_path};
pub use directory::{Directory, Listed};
pub use fds::raise_fd_limit;
pub use online::{ANNOUNCE_TTL, Reachable};
pub use quota::{AbuseLimits, Rate};

use crate::auth::{self, Claims, LoginThrottle, TokenKey};
use crate::identity::Identity;
use crate::presence_log::PresenceLog;
use crate::protocol::{ErrorBody, ErrorCode, Request, RequestBody, Response, ResponseBody, limits};
use crate::seal::{self, Answerer};
use crate::store::feed::MemberFeed;
use crate::store::{Change, Database, HostKind, HostLoad, Storage};
use crate::transport::StaticKey;
use hashing::HashPool;
use jobs::{Done, Reply};
use quota::Buckets;
use replies::{ReplyCache, RequestKey, Slot};

/// How long a cached answer is replayed to a retrying client.
const REPLY_TTL: Duration = Duration::from_secs(120);
/// Most bytes of cached answers (with their bookkeeping); the oldest go first.
const REPLY_BUDGET: usize = 16 * 1024 * 1024;
/// No answer is more than this many times the size of its request.
const AMPLIFICATION: usize = 3;
/// Most database jobs (`create`, `close`, a `join` that starts a server) in flight; beyond it
/// they are answered `busy`, as the loop would otherwise spawn without bound for a token holder
/// who sends them faster than the database thread works.
const MAX_JOBS: usize = 4096;
/// The wait a `busy` answer for `MAX_JOBS` suggests: the database thread works through thousands
/// of small jobs in that time.
const JOBS_BUSY_HINT: Duration = Duration::from_millis(100);
/// Clients whose box (the result of a key agreement) the coordinator keeps: about 100 bytes each.
const SEALED_CLIENTS: usize = 100_000;
/// Receive buffer asked for the UDP socket: padded requests take about 1.3 KiB of buffer each,
/// so the usual 208 KiB default drops bursts of more than ~150 requests.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// The identity a coordinator with database `db` has (made and stored now if it has none yet;
/// `None` is a fresh in-memory one), for `confab coordinator --print-key`.
pub async fn identity(db: Option<&Database>) -> Result<Identity, CoordinatorError> {
    let (storage, finished) = crate::store::open(db).await?;
    let secret = storage.identity_secret().await?;
    drop(storage);
    finished.wait().await;
    Ok(Identity::from_secret(secret))
}

/// Runs the coordinator on `socket` until `shutdown` is cancelled; then stops every session server
/// (telling members why), finishes the database writes, and returns.
///
/// # Examples
///
/// A coordinator on a free port with everything in memory, stopped again:
///
/// ```
/// use confab::coordinator::{self, CoordinatorConfig};
/// use tokio::net::UdpSocket;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = UdpSocket::bind("127.0.0.1:0").await?;
/// println!("coordinator on {}", socket.local_addr()?);
/// let config = CoordinatorConfig {
///     db: None, // in memory, gone at exit
///     ..CoordinatorConfig::default()
/// };
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn(coordinator::run(socket, config, shutdown.clone()));
/// // ... clients register, log in, create and join sessions ...
/// shutdown.cancel();
/// running.await??;
/// # Ok(())
/// # }
/// ```
pub async fn run(
    socket: UdpSocket,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let local = socket.local_addr().map_err(CoordinatorError::Socket)?;
    grow_receive_buffer(&socket, RECEIVE_BUFFER);
    let tracker = TaskTracker::new();
    let presence_log = match &config.presence_log {
        Some(path) => Some(
            PresenceLog::open(path, config.presence_log_rotation, &tracker)
                .await
                .map_err(|source| CoordinatorError::PresenceLog {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let (db, db_finished) = crate::store::open(config.db.as_ref()).await?;
    let secret = db.token_secret().await?;
    let identity = Identity::from_secret(db.identity_secret().await?);
    let stored = db.sessions().await?;
    #[cfg(feature = "test-util")]
    let tap = config.history_tap.clone();
    #[cfg(feature = "test-util")]
    if let Some(tap) = &tap {
        tap.attach(Some(db.clone()));
    }

    let session_host = config
        .session_host
        .unwrap_or(if local.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            local.ip()
        });
    let (done_tx, mut done_rx) = mpsc::channel(1024);
    let (hashing, hash_workers) = HashPool::start(config.hash_workers, config.hash_queue)
        .map_err(CoordinatorError::Threads)?;
    let directory = config.directory.clone().unwrap_or_default();
    // A coordinator that serves sessions is a host of the group too, for its own placements,
    // and tells the group who is in them.
    let hosting = config.local_sessions.then(|| session_host.to_string());
    if hosting.is_some() && matches!(config.db, Some(Database::Postgres(_))) {
        directory.publish_to(MemberFeed::start(db.clone(), &tracker, shutdown.clone()));
    }
    tracker.spawn(keep_claims(
        db.clone(),
        directory.clone(),
        config.lease,
        hosting,
        shutdown.clone(),
    ));
    let mut coordinator = Coordinator {
        hashing,
        unauthenticated: Buckets::new(config.abuse.requests),
        registrations: Buckets::new(config.abuse.registrations),
        created_by_user: Buckets::new(config.abuse.sessions_per_user),
        created_by_address: Buckets::new(config.abuse.sessions_per_address),
        relays: Buckets::new(config.abuse.relays_per_user),
        pushes: Vec::new(),
        config,
        session_host,
        directory,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        presence_log,
        replies: ReplyCache::new(REPLY_TTL, REPLY_BUDGET),
        db,
        keys: Arc::new(TokenKey::new(secret)),
        session_key: Arc::new(StaticKey::generate()),
        opening: seal::Opening::new(identity.secret(), SEALED_CLIENTS),
        identity,
        throttle: LoginThrottle::new(),
        logins_in_flight: Default::default(),
        done: done_tx,
        starting: HashMap::new(),
        jobs: 0,
        served: tokio::sync::broadcast::channel(1024).0,
        passed_over: Default::default(),
        generation: 0,
    };
    for rec in stored {
        let id = rec.id;
        if let Err(e) = coordinator.directory.insert(rec.into()) {
            tracing::warn!(session = %id, error = %e, "stored session skipped");
        }
    }
    tracing::info!(
        %local,
        db = %coordinator.config.db.as_ref().map_or("in memory".into(), Database::describe),
        sessions = coordinator.directory.len(),
        key = %coordinator.identity.fingerprint(),
        "coordinator listening"
    );
    if coordinator.config.insecure {
        tracing::warn!(
            "INSECURE: --insecure takes plain requests and plaintext session connections too; passwords, tokens and chat sent that way cross the network readable. For debugging only."
        );
    }
    // Sessions created and closed through the other coordinators of a group.
    let mut changes = coordinator.db.changes(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut answers: Vec<(Bytes, SocketAddr)> = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((len, from)) => coordinator.handle(&buf[..len], from).map(|a| (a, from)).into_iter().collect(),
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they concern one peer only.
                    tracing::debug!(error = %e, "recv_from failed");
                    continue;
                }
            },
            Some(done) = done_rx.recv() => coordinator.finish(done),
            Some(change) = next_change(&mut changes) => {
                coordinator.apply_change(change);
                Vec::new()
            }
            _ = shutdown.cancelled() => break,
        };
        answers.append(&mut coordinator.pushes);
        for (answer, to) in answers {
            if let Err(e) = socket.send_to(&answer, to).await {
                tracing::debug!(%to, error = %e, "send_to failed");
            }
        }
    }
    tracing::info!("coordinator shutting down");
    #[cfg(feature = "test-util")]
    if let Some(tap) = &tap {
        tap.attach(None);
    }
    drop(coordinator);
    drop(done_rx);
    tracker.close();
    tracker.wait().await;
    // Every job has ended and dropped its ticket; the hashing threads end too.
    let _ = tokio::task::spawn_blocking(move || hash_workers.join()).await;
    // Every session has stopped and dropped its handle; the thread writes what is queued and ends.
    db_finished.wait().await;
    tracing::info!("coordinator stopped");
    Ok(())
}

struct Coordinator {
    config: CoordinatorConfig,
    /// The long-term key pair clients pin (see `identity.rs`).
    identity: Identity,
    /// Opens sealed requests, keeping the boxes of recent clients (see `seal.rs`).
    opening: seal::Opening,
    session_host: IpAddr,
    directory: Directory,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    presence_log: Option<PresenceLog>,
    replies: ReplyCache,
    db: Arc<dyn Storage>,
    keys: Arc<TokenKey>,
    /// The Noise static key of the session servers this process runs: made afresh at each
    /// start (clients learn it from each sealed join answer, so nothing needs to keep it).
    session_key: Arc<StaticKey>,
    throttle: LoginThrottle,
    /// Names (lowercased) with a login being checked.
    logins_in_flight: HashSet<String>,
    hashing: HashPool,
    /// Requests without a valid token, per address.
    unauthenticated: Buckets<IpAddr>,
    /// Registrations, per address.
    registrations: Buckets<IpAddr>,
    /// Sessions created, per account (lowercased) and per address.
    created_by_user: Buckets<String>,
    created_by_address: Buckets<IpAddr>,
    /// Datagrams relayed, per account (lowercased).
    relays: Buckets<String>,
    /// Datagrams for others than the asker that handling a request produced (`relay`), sent by
    /// the loop with the answers.
    pushes: Vec<(Bytes, SocketAddr)>,
    done: mpsc::Sender<Done>,
    /// Sessions marked `Starting` in the directory, with the requests waiting for their server
    /// (and whether each answer is kept for retries: a `create`'s is, a `join`'s is not).
    starting: HashMap<Uuid, Vec<(Reply, bool)>>,
    /// Jobs spawned whose result the loop has not applied yet.
    jobs: usize,
    /// Hosts' word that they serve a session, for the starts waiting on a placement.
    served: tokio::sync::broadcast::Sender<sessions::Served>,
    /// Hosts that did not serve a session placed on them, left out of placements a while.
    passed_over: sessions::PassedOver,
    generation: u64,
}

/// Just enough of a request to answer it with its id even when the rest is broken.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    tracing::error!(error = %e, "request failed");
    err(ErrorCode::Internal, "internal error; try again")
}

impl Coordinator {
    /// Turns one datagram into its answer, or `None` when the answer comes later (or never: for a
    /// datagram beyond its address's rate, or one too short to be answered without amplifying).
    fn handle(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Bytes> {
        let answer = self.answer(datagram, from)?;
        // The source address of a datagram can be forged: never send a stranger's victim more
        // than 3× what was sent to us (QUIC's anti-amplification rule). Requests are padded to
        // `MIN_REQUEST`, so only the answers to short garbage are ever held back here.
        if answer.len() > AMPLIFICATION * datagram.len() {
            tracing::debug!(%from, len = datagram.len(), "answer to a short datagram withheld");
            return None;
        }
        Some(answer)
    }

    fn answer(&mut self, wire: &[u8], from: SocketAddr) -> Option<Bytes> {
        // A sealed request is opened first: what follows reads what is inside, and every
        // answer goes back sealed for the one client that can open it. One that does not open
        // gets nothing (there is nobody to seal an answer for), and counts against its address.
        let (datagram, seal) =
            if seal::is_sealed_request(wire) && wire.len() <= limits::MAX_RELAY_REQUEST {
                match self.opening.open(wire) {
                    Ok((plain, answerer)) => (std::borrow::Cow::Owned(plain), Some(answerer)),
                    Err(_) => {
                        tracing::debug!(%from, "sealed request that does not open; dropped");
                        let _ = self
                            .unauthenticated
                            .take(&auth::ip_key(from.ip()), Instant::now());
                        return None;
                    }
                }
            } else {
                (std::borrow::Cow::Borrowed(wire), None)
            };
        let datagram: &[u8] = &datagram;
        let early = |id: Option<u64>, e: ErrorBody| {
            sealed(seal.as_ref(), encode(id, from, ResponseBody::Error(e)))
        };
        let id_of = |d: &[u8]| serde_json::from_slice::<IdOnly>(d).ok().and_then(|r| r.id);
        let parsed = (wire.len() <= limits::MAX_RELAY_REQUEST)
            .then(|| serde_json::from_slice::<Request>(datagram));
        // Only a relay may be larger than MAX_DATAGRAM: it carries a whole private datagram.
        let limit = match &parsed {
            Some(Ok(Request {
                body: RequestBody::Relay { .. },
                ..
            })) => limits::MAX_RELAY_REQUEST,
            _ => limits::MAX_DATAGRAM,
        };
        // Requests with a valid token answer to the account's quotas; everything else to the
        // address's, which drops what is beyond it without a word.
        let authenticated = match &parsed {
            Some(Ok(r)) => r
                .body
                .token()
                .is_some_and(|t| self.verify(t, seal.as_ref()).is_ok()),
            _ => false,
        };
        if !authenticated
            && self
                .unauthenticated
                .take(&auth::ip_key(from.ip()), Instant::now())
                .is_err()
        {
            tracing::debug!(%from, "over the per-address request rate; dropped");
            return None;
        }
        if wire.len() < limits::MIN_REQUEST {
            let e = err(
                ErrorCode::TooSmall,
                format!("pad requests to {} bytes", limits::MIN_REQUEST),
            );
            return Some(early(id_of(datagram), e));
        }
        if wire.len() > limit {
            let e = err(
                ErrorCode::TooLarge,
                format!(
                    "datagram of {} bytes is larger than the limit of {limit}",
                    wire.len(),
                ),
            );
            return Some(early(id_of(datagram), e));
        }
        let request = match parsed? {
            Ok(r) => r,
            Err(e) => {
                let e = err(ErrorCode::Malformed, format!("malformed request: {e}"));
                return Some(early(id_of(datagram), e));
            }
        };
        // In the open, only the key: what a client needs before it can seal anything.
        if seal.is_none() && !self.config.insecure && request.body != RequestBody::Key {
            let e = err(
                ErrorCode::NotSealed,
                "this coordinator takes only sealed requests (protocol.md, \"Sealed requests\"); ask for its key, then seal",
            );
            return Some(early(Some(request.id), e));
        }
        // The whole datagram as sent: a retry is the same bytes, sealed or not.
        let key = RequestKey::new(from, wire);
        match self.replies.get(&key) {
            Some(Slot::Done(cached)) => {
                tracing::debug!(%from, id = request.id, "repeated request answered from cache");
                return Some(cached.clone());
            }
            Some(Slot::Pending) => return None, // still working on it
            None => {}
        }
        // Reads are answered afresh when retried; only requests that change something are
        // remembered, which keeps the cache small under heavy listing.
        let remember = !matches!(
            request.body,
            RequestBody::List { .. }
                | RequestBody::Online { .. }
                | RequestBody::Announce { .. }
                | RequestBody::Peer { .. }
                | RequestBody::Relay { .. }
                | RequestBody::Join { .. }
                | RequestBody::Key
        );
        let reply = Reply {
            from,
            id: request.id,
            key,
            seal,
        };
        let body = match request.body {
            RequestBody::Register { user, password } => {
                return self.register(reply, user, password);
            }
            RequestBody::Login { user, password } => {
                return self.login(reply, user, password);
            }
            RequestBody::Create { name, token } => self.create(reply.clone(), name, &token),
            RequestBody::Join { session, token } => self.join(reply.clone(), &session, &token),
            RequestBody::Close { session, token } => self.close(reply.clone(), &session, &token),
            RequestBody::List { cursor } => Ok(Some(self.list(cursor, from))),
            RequestBody::Online { cursor, token } => self
                .verify(&token, reply.seal.as_ref())
                .map(|_| Some(self.online(cursor, from))),
            RequestBody::Announce {
                token,
                key,
                udp,
                local,
            } => self.announce(&reply, &token, &key, udp, local).map(Some),
            RequestBody::Peer { user, token } => self.peer(&reply, &token, &user).map(Some),
            RequestBody::Relay { to, data, token } => match self.relay(&reply, &token, &to, data) {
                // Passed on: the relayed datagram is the only answer.
                Ok(push) => {
                    self.pushes.push(push);
                    return None;
                }
                Err(e) => Err(e),
            },
            RequestBody::Key => Ok(Some(ResponseBody::Key {
                key: self.identity.fingerprint(),
            })),
        };
        // `None`: a job answers it when it finishes.
        let body = body.transpose()?;
        // A refusal changed nothing, so running its retry again is harmless; keeping it would
        // only let strangers fill the cache with their own long names.
        let remember = remember && body.is_ok();
        let answer = answer_to(&reply, body.unwrap_or_else(ResponseBody::Error));
        if remember {
            self.replies.done(key, answer.clone());
        }
        Some(answer)
    }

    /// Brings the directory up to date with a session another coordinator of the group created
    /// or closed (this one's own come back too, and change nothing).
    fn apply_change(&mut self, change: Change) {
        match change {
            Change::Created(rec) => {
                let id = rec.id;
                if let Err(e) = self.directory.insert(rec.into()) {
                    tracing::warn!(session = %id, error = %e, "session from the group not listed");
                }
            }
            Change::Closed { id, .. } => {
                if let Ok(listed) = self.directory.find(&id.to_string())
                    && self.directory.remove(id, &listed.creator).is_some()
                {
                    tracing::info!(session = %id, "session closed through another coordinator");
                }
            }
            // For the start waiting on it, if this coordinator placed the session (nobody
            // listening is no error).
            Change::Served {
                session,
                host,
                server,
                server_key,
            } => {
                if host != self.db.host() {
                    self.directory.served_elsewhere(session, host, server);
                }
                let _ = self.served.send(sessions::Served {
                    session,
                    server,
                    server_key,
                });
            }
            Change::Released(session) => self.directory.released_elsewhere(session),
            Change::Members(members) => {
                if members.host != self.db.host() {
                    self.directory.members_elsewhere(members);
                }
            }
            Change::Resend => self.directory.republish(),
            // For session hosts.
            Change::Placed { .. } => {}
        }
    }

    /// Applies a job's result and encodes its answers (a session start answers every request
    /// that waited for it).
    fn finish(&mut self, done: Done) -> Vec<(Bytes, SocketAddr)> {
        self.jobs -= 1;
        match done {
            Done::Account { reply, body, login } => vec![self.finish_account(reply, body, login)],
            Done::Started {
                session,
                created,
                result,
                unresponsive,
            } => {
                if let Some(host) = unresponsive {
                    self.passed_over.pass_over(host);
                }
                self.launch(session, created, result)
            }
            Done::CreateChecked {
                reply,
                name,
                token,
                found,
            } => {
                let now = match found {
                    // Done already: the answer is that session, as a join would give it.
                    Ok(Some(id)) => self.join(reply.clone(), &id.to_string(), &token),
                    Ok(None) => self
                        .verify(&token, reply.seal.as_ref())
                        .and_then(|claims| self.create_now(reply.clone(), name, claims)),
                    Err(e) => Err(e),
                };
                match now {
                    Ok(Some(body)) => vec![self.settle(reply, Ok(body), true)],
                    Ok(None) => Vec::new(), // a job answers it
                    Err(e) => vec![self.settle(reply, Err(e), false)],
                }
            }
            Done::Closed {
                reply,
                session,
                by,
                result,
            } => {
                let body = result.map(|()| {
                    self.directory.remove(session, &by);
                    tracing::info!(%session, %by, "session closed for good");
                    ResponseBody::Closed { session }
                });
                let keep = body.is_ok();
                vec![self.settle(reply, body, keep)]
            }
        }
    }

    /// Encodes the answer to `reply`, keeping it for retries or forgetting the pending mark.
    fn settle(
        &mut self,
        reply: Reply,
        body: Result<ResponseBody, ErrorBody>,
        keep: bool,
    ) -> (Bytes, SocketAddr) {
        let answer = answer_to(&reply, body.unwrap_or_else(ResponseBody::Error));
        if keep {
            self.replies.done(reply.key, answer.clone());
        } else {
            self.replies.forget(&reply.key);
        }
        (answer, reply.from)
    }

    /// Runs `job` on the coordinator's tracker, so shutdown waits for it (and ends it: a job
    /// still waiting when shutdown begins is dropped, its request unanswered), and hands its
    /// result to the loop.
    fn spawn_job(&mut self, job: impl Future<Output = Done> + Send + 'static) {
        self.jobs += 1;
        let (done, shutdown) = (self.done.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            tokio::select! {
                result = job => {
                    let _ = done.send(result).await;
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }

    /// Refuses a database job beyond `MAX_JOBS` in flight (nothing was done; clients retry).
    fn room_for_job(&self) -> Result<(), ErrorBody> {
        if self.jobs >= MAX_JOBS {
            return Err(ErrorBody::busy(
                "the coordinator has too many requests in progress; try again in a moment",
                JOBS_BUSY_HINT,
            ));
        }
        Ok(())
    }

    /// Checks a token, and that the request using it was sealed with the key it is bound to
    /// (an unbound one, from a plaintext login, only in `--insecure` mode).
    fn verify(&self, token: &str, seal: Option<&Answerer>) -> Result<Claims, ErrorBody> {
        let claims = self
            .keys
            .verify(token, Utc::now())
            .map_err(|e| err(ErrorCode::Unauthorized, e.to_string()))?;
        claims
            .usable_by(seal.map(Answerer::client_key), self.config.insecure)
            .map_err(|e| err(ErrorCode::Unauthorized, e.to_string()))?;
        Ok(claims)
    }
}

/// An answer that refuses a request at once; refusals are not cached (see `handle`).
fn refuse(reply: &Reply, e: ErrorBody) -> Bytes {
    answer_to(reply, ResponseBody::Error(e))
}

/// The answer to `reply`: encoded, and sealed if the request was.
fn answer_to(reply: &Reply, body: ResponseBody) -> Bytes {
    sealed(
        reply.seal.as_ref(),
        encode(Some(reply.id), reply.from, body),
    )
}

/// `answer` sealed for the client whose request `seal` opened, or as it is for a plain one.
fn sealed(seal: Option<&Answerer>, answer: Bytes) -> Bytes {
    match seal {
        Some(seal) => Bytes::from(seal.seal(&answer)),
        None => answer,
    }
}

/// Room for an answer in one datagram, sealing included (a plain answer keeps the same bound,
/// so pages do not depend on how they are asked for).
pub(super) const ANSWER_ROOM: usize = limits::MAX_DATAGRAM - seal::ANSWER_OVERHEAD;

/// Encodes an answer as one line (the newline keeps `nc` output readable). Error messages quote
/// what the client sent, so one that would not fit a datagram is shortened until it does.
fn encode(id: Option<u64>, observed: SocketAddr, body: ResponseBody) -> Bytes {
    let mut resp = Response { id, observed, body };
    loop {
        let mut bytes = serde_json::to_vec(&resp).expect("protocol types serialize");
        bytes.push(b'\n');
        let excess = bytes.len().saturating_sub(ANSWER_ROOM);
        match &mut resp.body {
            ResponseBody::Error(e) if excess > 0 && !e.message.is_empty() => {
                let mut keep = e.message.len().saturating_sub(excess + 3);
                while !e.message.is_char_boundary(keep) {
                    keep -= 1;
                }
                e.message.truncate(keep);
                e.message.push('…');
            }
            _ => return Bytes::from(bytes),
        }
    }
}

/// The next change the group's database announces; never, without one that does.
async fn next_change(changes: &mut Option<mpsc::Receiver<Change>>) -> Option<Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Renews this coordinator's claims on the sessions it serves every third of the lease; when
/// the database has not taken a renewal for half a lease, stops serving them at once, so that
/// they are stopped before the lease can run out (then another coordinator of the group may
/// take them, and two servers of one session would split it): members reconnect through the
/// group to whichever serves it then. Half a lease, plus a tick and a renewal's timeout (a
/// sixth), is the whole lease at worst.
async fn keep_claims(
    db: Arc<dyn Storage>,
    directory: Directory,
    lease: Duration,
    hosting: Option<String>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                if hosting.is_some() && let Err(e) = db.retire().await {
                    tracing::warn!(error = %e, "could not leave the group's hosts");
                }
                return;
            }
        }
        let attempt = tokio::time::Instant::now();
        let renewal = async {
            if let Some(address) = &hosting {
                let (members, sessions) = directory.load();
                let load = HostLoad {
                    kind: HostKind::Coordinator,
                    address: address.clone(),
                    members: members.try_into().unwrap_or(u32::MAX),
                    sessions: sessions.try_into().unwrap_or(u32::MAX),
                };
                db.heartbeat(load, lease).await?;
            }
            db.renew(lease).await
        };
        match tokio::time::timeout(lease / 6, renewal).await {
            Ok(Ok(_)) => renewed = attempt,
            Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the session claims"),
            Err(_) => {
                tracing::warn!("the database did not answer the renewal of the session claims")
            }
        }
        // Sessions served by processes whose heartbeat ran out are served nowhere now (no part
        // of the renewal: a failure only leaves the listing stale a while).
        match tokio::time::timeout(lease / 6, db.hosts()).await {
            Ok(Ok(hosts)) => directory.keep_served_by(&hosts.into_iter().map(|h| h.id).collect()),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the group's hosts"),
            Err(_) => tracing::debug!("the database did not say which hosts live"),
        }
        // Only where another process could take the sessions over: a coordinator alone on its
        // SQLite file, whose writes are only slow, keeps serving.
        if db.shared() && renewed.elapsed() >= lease / 2 {
            let dropped = directory.drop_all_running();
            if dropped > 0 {
                tracing::error!(
                    sessions = dropped,
                    "session claims not renewed for half a lease; stopped serving them"
                );
            }
        }
    }
}

/// Asks for a receive buffer of `bytes`. Linux caps the request at `net.core.rmem_max` (often
/// 208 KiB), and a burst of logins larger than the buffer is dropped by the kernel before the
/// coordinator sees it, so a smaller buffer than asked is worth a line in the log.
fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(bytes) {
        tracing::debug!(error = %e, "cannot grow the receive buffer");
    }
    // Linux reports double what it grants (half is its bookkeeping).
    match sock.recv_buffer_size() {
        Ok(got) if got < bytes => tracing::info!(
            asked = bytes,
            got,
            "UDP receive buffer smaller than asked; raise net.core.rmem_max for bursts of logins"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the receive buffer size"),
    }
}
