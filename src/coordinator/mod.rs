//! The coordinator: a UDP request loop, accounts, the session directory, and the session servers
//! it starts.
//!
//! One task reads every datagram and answers it, so requests from all clients are applied in one
//! order. Answers are cached per request (its address and the digest of the whole datagram) for a
//! while: UDP loses answers, clients retry the same bytes, and a retried `create` must not make a
//! second session. Password hashing
//! is slow on purpose, so `register` and `login` run in their own tasks and report back to the
//! loop, which answers them then; a retry that arrives meanwhile is ignored, not run twice.
//!
//! Anyone can send datagrams, with any source address, so everything a stranger can cause is
//! bounded: answers are at most 3× their request (requests are padded), requests without a valid
//! token are rate-limited per address, password hashing runs on a fixed pool with a capped queue,
//! registrations and created sessions have quotas per address and per account, and no session
//! server starts when the descriptors left would not serve the members of those already running.

mod directory;
mod fds;
mod hashing;
mod quota;
mod replies;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use directory::{Directory, Listed};
pub use fds::raise_fd_limit;
pub use quota::{AbuseLimits, Rate};

use crate::auth::{self, Claims, LoginThrottle, PasswordCost, TokenKey};
use crate::db::{Db, to_line};
use crate::presence_log::PresenceLog;
use crate::protocol::{
    ErrorBody, ErrorCode, Password, Request, RequestBody, Response, ResponseBody, SessionInfo,
    limits,
};
use crate::session::{self, MemberLimits, SessionConfig, Stop};
use crate::store::{SessionRecord, Store, StoreError};
use hashing::{HashPool, Ticket};
use quota::Buckets;
use replies::{ReplyCache, RequestKey, Slot};

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The presence log could not be opened.
    #[error("cannot open presence log {path}: {source}")]
    PresenceLog {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The UDP socket has no local address.
    #[error("coordinator socket: {0}")]
    Socket(std::io::Error),
    /// The database could not be opened or read at start.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The database thread could not be started or went away.
    #[error("database thread: {0}")]
    Db(String),
    /// The password-hashing threads could not be started.
    #[error("cannot start the password-hashing threads: {0}")]
    Threads(std::io::Error),
}

/// How the coordinator and the session servers it starts behave.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// A session nobody is in has its server stopped after this long (it stays in the directory
    /// and starts again when someone joins).
    pub idle_timeout: Duration,
    /// Most session servers running at once.
    pub max_sessions: usize,
    /// Most members per session.
    pub max_members: usize,
    /// Address session servers bind to and announce; `None` uses the coordinator's own IP
    /// (or 127.0.0.1 when the coordinator listens on all interfaces).
    pub session_host: Option<IpAddr>,
    /// Plain-text log of logins, joins and leaves.
    pub presence_log: Option<PathBuf>,
    /// How large the presence log may grow before it is rotated, and how many old files are kept.
    pub presence_log_rotation: crate::presence_log::Rotation,
    /// What each member may send.
    pub member_limits: MemberLimits,
    /// Messages queued per member before the room holds the senders back (see
    /// `SessionConfig::member_queue`).
    pub member_queue: usize,
    /// Bytes held per member before it is dropped as too slow (see `SessionConfig::member_budget`).
    pub member_budget: usize,
    /// Above this many members a session's roster is not sent whole.
    pub full_roster_max: usize,
    /// Group lines each session keeps in memory (for history and rejoins; older ones are read
    /// from the database).
    pub recent_messages: usize,
    /// The SQLite database; `None` keeps everything in memory, gone at exit.
    pub db: Option<PathBuf>,
    /// How long a login token is good for.
    pub token_ttl: Duration,
    /// Cost of new password hashes.
    pub password_cost: PasswordCost,
    /// Threads hashing passwords (`register`, `login`); each holds the hash's memory (19 MiB at
    /// the default cost) while it works.
    pub hash_workers: usize,
    /// Registrations and logins waiting for a hashing thread; more are answered `busy`.
    pub hash_queue: usize,
    /// What one address or one account may ask for (see README, "Limits and abuse").
    pub abuse: AbuseLimits,
    /// File descriptors kept free for members of running sessions: no new session server starts
    /// when fewer would be left. `None`: a quarter of the open-file limit.
    pub fd_reserve: Option<usize>,
    /// Use this directory instead of a new one, so that the embedding program (or a
    /// fault-injection test) can read it and act on it.
    pub directory: Option<Directory>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_sessions: 10_000,
            max_members: 20_000,
            session_host: None,
            presence_log: None,
            presence_log_rotation: Default::default(),
            member_limits: MemberLimits::default(),
            member_queue: 4096,
            member_budget: session::DEFAULT_MEMBER_BUDGET,
            full_roster_max: limits::FULL_ROSTER_MAX,
            recent_messages: 1000,
            db: None,
            token_ttl: Duration::from_secs(24 * 3600),
            password_cost: PasswordCost::default(),
            hash_workers: hashing::default_workers(),
            hash_queue: 64,
            abuse: AbuseLimits::default(),
            fd_reserve: None,
            directory: None,
        }
    }
}

/// Where the database lives unless `--db` says otherwise: `$XDG_DATA_HOME/confab/confab.db`,
/// else `~/.local/share/confab/confab.db`, else `./confab.db`.
pub fn default_db_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        });
    match base {
        Some(dir) => dir.join("confab").join("confab.db"),
        None => PathBuf::from("confab.db"),
    }
}

/// How long a cached answer is replayed to a retrying client.
const REPLY_TTL: Duration = Duration::from_secs(120);
/// Most bytes of cached answers (with their bookkeeping); the oldest go first.
const REPLY_BUDGET: usize = 16 * 1024 * 1024;
/// No answer is more than this many times the size of its request.
const AMPLIFICATION: usize = 3;
/// Receive buffer asked for the UDP socket: padded requests take about 1.3 KiB of buffer each,
/// so the usual 208 KiB default drops bursts of more than ~150 requests.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
/// Backlog of session listeners: bursts of thousands of joins must not be reset.
const LISTEN_BACKLOG: u32 = 4096;

/// Runs the coordinator on `socket` until `shutdown` is cancelled; then stops every session server
/// (telling members why), finishes the database writes, and returns.
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
    let path = config.db.clone();
    let store = tokio::task::spawn_blocking(move || match path {
        Some(path) => Store::open(&path),
        None => Store::open_in_memory(),
    })
    .await
    .map_err(|e| CoordinatorError::Db(e.to_string()))??;
    let (db, db_thread) = Db::start(store).map_err(|e| CoordinatorError::Db(e.to_string()))?;
    let gone = |e: crate::db::DbGone| CoordinatorError::Db(e.to_string());
    let secret = db.call(|s| s.token_secret()).await.map_err(gone)??;
    let stored = db.call(|s| s.sessions()).await.map_err(gone)??;

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
    let mut coordinator = Coordinator {
        hashing,
        unauthenticated: Buckets::new(config.abuse.requests),
        registrations: Buckets::new(config.abuse.registrations),
        created_by_user: Buckets::new(config.abuse.sessions_per_user),
        created_by_address: Buckets::new(config.abuse.sessions_per_address),
        config,
        session_host,
        directory,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        presence_log,
        replies: ReplyCache::new(REPLY_TTL, REPLY_BUDGET),
        db,
        keys: Arc::new(TokenKey::new(secret)),
        throttle: LoginThrottle::new(),
        logins_in_flight: Default::default(),
        done: done_tx,
        generation: 0,
    };
    for rec in stored {
        let listed = Listed {
            id: rec.id,
            name: rec.name,
            creator: rec.creator,
            created: rec.created,
            server: None,
        };
        if let Err(e) = coordinator.directory.insert(listed) {
            tracing::warn!(session = %rec.id, error = %e, "stored session skipped");
        }
    }
    tracing::info!(%local, sessions = coordinator.directory.len(), "coordinator listening");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (answer, to) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((len, from)) => (coordinator.handle(&buf[..len], from).await, from),
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they concern one peer only.
                    tracing::debug!(error = %e, "recv_from failed");
                    continue;
                }
            },
            Some(done) = done_rx.recv() => {
                let to = done.from;
                (Some(coordinator.finish(done)), to)
            }
            _ = shutdown.cancelled() => break,
        };
        if let Some(answer) = answer
            && let Err(e) = socket.send_to(&answer, to).await
        {
            tracing::debug!(%to, error = %e, "send_to failed");
        }
    }
    tracing::info!("coordinator shutting down");
    drop(coordinator);
    drop(done_rx);
    tracker.close();
    tracker.wait().await;
    // Every account task has ended and dropped its ticket; the hashing threads end too.
    let _ = tokio::task::spawn_blocking(move || hash_workers.join()).await;
    // Every session has stopped and dropped its handle; the thread writes what is queued and ends.
    let _ = tokio::task::spawn_blocking(move || db_thread.join()).await;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// An account request that finished in its own task.
struct Done {
    from: SocketAddr,
    id: u64,
    key: RequestKey,
    body: ResponseBody,
    /// For logins: the name, and whether it succeeded (`None` when an internal error says
    /// nothing about the password), for the throttle.
    login: Option<(String, Option<bool>)>,
}

struct Coordinator {
    config: CoordinatorConfig,
    session_host: IpAddr,
    directory: Directory,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    presence_log: Option<PresenceLog>,
    replies: ReplyCache,
    db: Db,
    keys: Arc<TokenKey>,
    throttle: LoginThrottle,
    /// Names (lowercased) with a login being checked.
    logins_in_flight: std::collections::HashSet<String>,
    hashing: HashPool,
    /// Requests without a valid token, per address.
    unauthenticated: Buckets<IpAddr>,
    /// Registrations, per address.
    registrations: Buckets<IpAddr>,
    /// Sessions created, per account (lowercased) and per address.
    created_by_user: Buckets<String>,
    created_by_address: Buckets<IpAddr>,
    done: mpsc::Sender<Done>,
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
    async fn handle(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Bytes> {
        let answer = self.answer(datagram, from).await?;
        // The source address of a datagram can be forged: never send a stranger's victim more
        // than 3× what was sent to us (QUIC's anti-amplification rule). Requests are padded to
        // `MIN_REQUEST`, so only the answers to short garbage are ever held back here.
        if answer.len() > AMPLIFICATION * datagram.len() {
            tracing::debug!(%from, len = datagram.len(), "answer to a short datagram withheld");
            return None;
        }
        Some(answer)
    }

    async fn answer(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Bytes> {
        let id_of = |d: &[u8]| serde_json::from_slice::<IdOnly>(d).ok().and_then(|r| r.id);
        let parsed = (datagram.len() <= limits::MAX_DATAGRAM)
            .then(|| serde_json::from_slice::<Request>(datagram));
        // Requests with a valid token answer to the account's quotas; everything else to the
        // address's, which drops what is beyond it without a word.
        let authenticated = match &parsed {
            Some(Ok(r)) => r.body.token().is_some_and(|t| self.verify(t).is_ok()),
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
        if datagram.len() < limits::MIN_REQUEST {
            let e = err(
                ErrorCode::TooSmall,
                format!("pad requests to {} bytes", limits::MIN_REQUEST),
            );
            return Some(encode(id_of(datagram), from, ResponseBody::Error(e)));
        }
        if datagram.len() > limits::MAX_DATAGRAM {
            let e = err(
                ErrorCode::TooLarge,
                format!(
                    "datagram of {} bytes is larger than the limit of {}",
                    datagram.len(),
                    limits::MAX_DATAGRAM
                ),
            );
            return Some(encode(id_of(datagram), from, ResponseBody::Error(e)));
        }
        let request = match parsed? {
            Ok(r) => r,
            Err(e) => {
                let e = err(ErrorCode::Malformed, format!("malformed request: {e}"));
                return Some(encode(id_of(datagram), from, ResponseBody::Error(e)));
            }
        };
        let key = RequestKey::new(from, datagram);
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
            RequestBody::List { .. } | RequestBody::Join { .. }
        );
        let body = match request.body {
            RequestBody::Register { user, password } => {
                return self.register(from, request.id, key, user, password);
            }
            RequestBody::Login { user, password } => {
                return self.login(from, request.id, key, user, password);
            }
            RequestBody::Create { name, token } => self.create(from, name, &token).await,
            RequestBody::Join { session, token } => self.join(&session, &token).await,
            RequestBody::Close { session, token } => self.close(&session, &token).await,
            RequestBody::List { cursor } => Ok(self.list(cursor, from)),
        };
        // A refusal changed nothing, so running its retry again is harmless; keeping it would
        // only let strangers fill the cache with their own long names.
        let remember = remember && body.is_ok();
        let answer = encode(
            Some(request.id),
            from,
            body.unwrap_or_else(ResponseBody::Error),
        );
        if remember {
            self.replies.done(key, answer.clone());
        }
        Some(answer)
    }

    /// Records and encodes the answer of an account request that finished.
    fn finish(&mut self, done: Done) -> Bytes {
        if let Some((name, _)) = &done.login {
            self.logins_in_flight.remove(&name.to_lowercase());
            self.throttle.finished(done.from.ip());
        }
        if let Some((name, Some(ok))) = &done.login {
            if *ok {
                if let (Some(log), ResponseBody::LoggedIn { user, .. }) =
                    (&self.presence_log, &done.body)
                {
                    log.login(user, done.from);
                }
                self.throttle.record_success(name, done.from.ip());
            } else {
                self.throttle
                    .record_failure(name, done.from.ip(), std::time::Instant::now());
            }
        }
        // A wrong password is kept too (keyed by the datagram, password included), so that a
        // retry after a lost answer is not hashed, and counted against the throttle, twice.
        let keep = match &done.body {
            ResponseBody::Error(e) => e.code == ErrorCode::InvalidCredentials,
            _ => true,
        };
        let answer = encode(Some(done.id), done.from, done.body);
        if keep {
            self.replies.done(done.key, answer.clone());
        } else {
            self.replies.forget(&done.key);
        }
        answer
    }

    fn verify(&self, token: &str) -> Result<Claims, ErrorBody> {
        self.keys
            .verify(token, Utc::now())
            .map_err(|e| err(ErrorCode::Unauthorized, e.to_string()))
    }

    /// A place in the hashing pool, or the `busy` answer when it has none.
    fn admit(&self, from: SocketAddr, id: u64) -> Result<Ticket, Bytes> {
        self.hashing.admit().ok_or_else(|| {
            tracing::debug!(%from, "hashing pool full; answered busy");
            let e = err(
                ErrorCode::Busy,
                "too many logins and registrations at once; try again in a moment",
            );
            refuse(from, id, e)
        })
    }

    /// Runs `work` in its own task, marking the request as in progress.
    fn spawn_account_task(
        &mut self,
        key: RequestKey,
        work: impl Future<Output = Done> + Send + 'static,
    ) {
        self.replies.pending(key);
        let done = self.done.clone();
        self.tracker.spawn(async move {
            let result = work.await;
            let _ = done.send(result).await;
        });
    }

    fn register(
        &mut self,
        from: SocketAddr,
        id: u64,
        key: RequestKey,
        user: String,
        password: Password,
    ) -> Option<Bytes> {
        if let Err(e) = check_credentials(&user, &password) {
            return Some(refuse(from, id, e));
        }
        // Admitted first, so that a `busy` answer costs the address none of its quota.
        let ticket = match self.admit(from, id) {
            Ok(t) => t,
            Err(busy) => return Some(busy),
        };
        if let Err(wait) = self
            .registrations
            .take(&auth::ip_key(from.ip()), Instant::now())
        {
            let e = err(
                ErrorCode::Quota,
                format!(
                    "too many registrations from this address; try again in {}",
                    quota::in_words(wait)
                ),
            );
            return Some(refuse(from, id, e));
        }
        let (db, cost) = (self.db.clone(), self.config.password_cost);
        self.spawn_account_task(key, async move {
            let body = async {
                let hash = ticket
                    .run(move || auth::hash_password_with(&password.0, cost))
                    .await
                    .ok_or_else(|| internal("hashing thread failed"))?
                    .map_err(internal)?;
                let name = user.clone();
                match db
                    .call(move |s| s.create_user(&name, &hash, Utc::now()))
                    .await
                {
                    Ok(Ok(rec)) => {
                        tracing::info!(user = %rec.name, "registered");
                        Ok(ResponseBody::Registered { user: rec.name })
                    }
                    Ok(Err(StoreError::NameTaken)) => Err(err(
                        ErrorCode::NameTaken,
                        format!("the name {user} is already registered"),
                    )),
                    Ok(Err(e)) => Err(internal(e)),
                    Err(e) => Err(internal(e)),
                }
            }
            .await;
            Done {
                from,
                id,
                key,
                body: body.unwrap_or_else(ResponseBody::Error),
                login: None,
            }
        });
        None
    }

    fn login(
        &mut self,
        from: SocketAddr,
        id: u64,
        key: RequestKey,
        user: String,
        password: Password,
    ) -> Option<Bytes> {
        if let Err(e) = check_credentials(&user, &password) {
            return Some(refuse(from, id, e));
        }
        // One login per name at a time: the throttle learns of a failure only when its hash is
        // checked, so parallel guesses would otherwise all pass the check before the first fails.
        let name_key = user.to_lowercase();
        if self.logins_in_flight.contains(&name_key) {
            let e = err(
                ErrorCode::Throttled,
                "another login for this name is in progress; try again in a moment",
            );
            return Some(refuse(from, id, e));
        }
        let now = Instant::now();
        if self.config.abuse.hold_parallel_logins && !self.throttle.may_start(from.ip(), now) {
            let e = err(
                ErrorCode::Busy,
                "too many logins from this address at once; try again in a moment",
            );
            return Some(refuse(from, id, e));
        }
        if let Err(wait) = self.throttle.check(&user, from.ip(), now) {
            let e = err(
                ErrorCode::Throttled,
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs().max(1)
                ),
            );
            return Some(refuse(from, id, e));
        }
        let ticket = match self.admit(from, id) {
            Ok(t) => t,
            Err(busy) => return Some(busy),
        };
        let (db, keys, ttl) = (self.db.clone(), self.keys.clone(), self.config.token_ttl);
        self.logins_in_flight.insert(name_key);
        self.throttle.started(from.ip());
        self.spawn_account_task(key, async move {
            let name = user.clone();
            let found = db.call(move |s| s.user(&name)).await;
            let result = match found {
                Ok(Ok(rec)) => {
                    let checked = ticket
                        .run(move || match rec {
                            Some(rec) => auth::verify_password(&password.0, &rec.password_hash)
                                .then_some(rec.name),
                            None => {
                                auth::dummy_verify(&password.0);
                                None
                            }
                        })
                        .await;
                    match checked {
                        Some(Some(name)) => {
                            let expires = Utc::now().trunc_subsecs(0)
                                + chrono::Duration::from_std(ttl).unwrap_or_default();
                            let token = keys.issue(&name, expires);
                            tracing::info!(user = %name, "logged in");
                            Ok(ResponseBody::LoggedIn {
                                user: name,
                                token,
                                expires,
                            })
                        }
                        Some(None) => Err(err(
                            ErrorCode::InvalidCredentials,
                            "unknown user or wrong password",
                        )),
                        None => Err(internal("hashing thread failed")),
                    }
                }
                Ok(Err(e)) => Err(internal(e)),
                Err(e) => Err(internal(e)),
            };
            let ok = result.is_ok();
            // Internal errors say nothing about the password; do not count them against anyone.
            let counted =
                ok || matches!(&result, Err(e) if e.code == ErrorCode::InvalidCredentials);
            Done {
                from,
                id,
                key,
                body: result.unwrap_or_else(ResponseBody::Error),
                login: Some((user, counted.then_some(ok))),
            }
        });
        None
    }

    async fn create(
        &mut self,
        from: SocketAddr,
        name: Option<String>,
        token: &str,
    ) -> Result<ResponseBody, ErrorBody> {
        let claims = self.verify(token)?;
        if let Some(name) = &name {
            auth::validate_session_name(name)
                .map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
            if self.directory.name_taken(name) {
                return Err(name_taken(name));
            }
        }
        self.check_session_quotas(from, &claims.user)?;
        // The server's port first: a session whose server cannot start is never listed.
        let listener = self.open_listener()?;
        let listed = Listed {
            id: Uuid::new_v4(),
            name,
            creator: claims.user,
            created: Utc::now().trunc_subsecs(3),
            server: None,
        };
        let rec = SessionRecord {
            id: listed.id,
            name: listed.name.clone(),
            creator: listed.creator.clone(),
            created: listed.created,
        };
        match self.db.call(move |s| s.insert_session(&rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(StoreError::NameTaken)) => {
                return Err(name_taken(listed.name.as_deref().unwrap_or_default()));
            }
            Ok(Err(e)) => return Err(internal(e)),
            Err(e) => return Err(internal(e)),
        }
        self.directory.insert(listed.clone())?;
        tracing::info!(session = %listed.id, name = ?listed.name, creator = %listed.creator, "session created");
        let session = self.start_session(listed, listener).await?;
        Ok(ResponseBody::Session { session })
    }

    /// Refuses a `create` beyond the creator's or the address's quota, taking one of each
    /// otherwise.
    fn check_session_quotas(&mut self, from: SocketAddr, user: &str) -> Result<(), ErrorBody> {
        let limits = &self.config.abuse;
        if let Some(cap) = limits.live_sessions_per_user
            && self.directory.created_by(user) >= cap
        {
            return Err(err(
                ErrorCode::Quota,
                format!("you have {cap} sessions, the most one account may have; close one first"),
            ));
        }
        let now = Instant::now();
        if let Err(wait) = self.created_by_user.take(&user.to_lowercase(), now) {
            return Err(err(
                ErrorCode::Quota,
                format!(
                    "you created too many sessions in the last hour; try again in {}",
                    quota::in_words(wait)
                ),
            ));
        }
        if let Err(wait) = self.created_by_address.take(&auth::ip_key(from.ip()), now) {
            return Err(err(
                ErrorCode::Quota,
                format!(
                    "too many sessions created from this address; try again in {}",
                    quota::in_words(wait)
                ),
            ));
        }
        Ok(())
    }

    async fn join(&mut self, key: &str, token: &str) -> Result<ResponseBody, ErrorBody> {
        self.verify(token)?;
        let listed = self.directory.find(key)?;
        let session = match listed.info() {
            Some(info) => info,
            None => {
                let listener = self.open_listener()?;
                self.start_session(listed, listener).await?
            }
        };
        Ok(ResponseBody::Session { session })
    }

    async fn close(&mut self, key: &str, token: &str) -> Result<ResponseBody, ErrorBody> {
        let claims = self.verify(token)?;
        let listed = self.directory.find(key)?;
        if !listed.creator.eq_ignore_ascii_case(&claims.user) {
            return Err(err(
                ErrorCode::Forbidden,
                format!("only {} may close this session", listed.creator),
            ));
        }
        let id = listed.id;
        match self.db.call(move |s| s.delete_session(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(internal(e)),
            Err(e) => return Err(internal(e)),
        }
        self.directory.remove(id, &claims.user);
        tracing::info!(session = %id, by = %claims.user, "session closed for good");
        Ok(ResponseBody::Closed { session: id })
    }

    /// A listener for one more session server, unless that would leave too few descriptors for
    /// the members of the sessions already running (or the server limit is reached).
    fn open_listener(&self) -> Result<TcpListener, ErrorBody> {
        let running = self.directory.running();
        if running >= self.config.max_sessions {
            return Err(err(
                ErrorCode::Full,
                format!(
                    "the coordinator already runs {} sessions, its limit",
                    self.config.max_sessions
                ),
            ));
        }
        if let Some((open, limit)) = fds::usage() {
            let reserve = self.config.fd_reserve.unwrap_or(limit / 4);
            if open.saturating_add(reserve) >= limit {
                tracing::warn!(
                    open,
                    limit,
                    reserve,
                    running,
                    "no descriptors to spare for a new session"
                );
                return Err(err(
                    ErrorCode::Full,
                    "the coordinator has no file descriptors to spare for another session; \
                     try again later",
                ));
            }
        }
        bind_listener(SocketAddr::new(self.session_host, 0)).map_err(|e| {
            tracing::warn!(error = %e, "cannot bind a session server");
            err(
                ErrorCode::Full,
                format!("the coordinator cannot start another session server: {e}"),
            )
        })
    }

    /// Starts (or restarts) the server of a listed session on `listener`, with its stored history.
    async fn start_session(
        &mut self,
        listed: Listed,
        listener: TcpListener,
    ) -> Result<SessionInfo, ErrorBody> {
        let server = listener.local_addr().map_err(internal)?;
        let id = listed.id;
        let recent = self.config.recent_messages;
        let (seq, recent) = match self
            .db
            .call(move |s| Ok::<_, StoreError>((s.last_seq(id)?, s.history(id, None, recent)?)))
            .await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Err(internal(e)),
            Err(e) => return Err(internal(e)),
        };
        let mut config = SessionConfig::new(id, listed.name.clone());
        config.idle_timeout = self.config.idle_timeout;
        config.max_members = self.config.max_members;
        config.member_queue = self.config.member_queue;
        config.member_budget = self.config.member_budget;
        config.full_roster_max = self.config.full_roster_max;
        config.recent_messages = self.config.recent_messages;
        config.member_limits = self.config.member_limits.clone();
        config.presence_log = self.presence_log.clone();
        config.observer = Some(Arc::new(self.directory.clone()));
        config.history = Some(Arc::new(self.db.clone()));
        config.tokens = Some(self.keys.clone());
        config.start_seq = seq;
        config.start_recent = recent.into_iter().map(to_line).collect();

        self.generation += 1;
        let generation = self.generation;
        let stop = Stop {
            shutdown: self.shutdown.clone(),
            close: CancellationToken::new(),
            crash: CancellationToken::new(),
            closed_by: Default::default(),
        };
        self.directory
            .set_running(id, server, generation, stop.clone());
        let directory = self.directory.clone();
        self.tracker.spawn(async move {
            let ended = session::run(listener, config, stop).await;
            tracing::info!(session = %id, ?ended, "session server stopped");
            directory.set_stopped(id, generation);
        });
        Ok(SessionInfo {
            id,
            name: listed.name,
            server,
            creator: listed.creator,
            created: listed.created,
        })
    }

    fn list(&self, cursor: usize, from: SocketAddr) -> ResponseBody {
        // What an answer costs without entries, with the widest numbers it could hold.
        let empty = encode(
            Some(u64::MAX),
            from,
            ResponseBody::Sessions {
                sessions: Vec::new(),
                next: Some(usize::MAX),
                total: usize::MAX,
            },
        );
        let budget = limits::MAX_DATAGRAM.saturating_sub(empty.len());
        let (sessions, next, total) = self.directory.page(cursor, budget);
        ResponseBody::Sessions {
            sessions,
            next,
            total,
        }
    }
}

/// An answer that refuses a request at once; refusals are not cached (see `handle`).
fn refuse(from: SocketAddr, id: u64, e: ErrorBody) -> Bytes {
    encode(Some(id), from, ResponseBody::Error(e))
}

fn check_credentials(user: &str, password: &Password) -> Result<(), ErrorBody> {
    auth::validate_user_name(user).map_err(|e| err(ErrorCode::InvalidName, e.to_string()))?;
    if password.0.is_empty() {
        return Err(err(ErrorCode::InvalidPassword, "password is empty"));
    }
    if password.0.len() > limits::MAX_PASSWORD {
        return Err(err(
            ErrorCode::InvalidPassword,
            format!("password is longer than {} bytes", limits::MAX_PASSWORD),
        ));
    }
    Ok(())
}

fn name_taken(name: &str) -> ErrorBody {
    err(
        ErrorCode::NameTaken,
        format!("a session named {name} already exists"),
    )
}

/// Encodes an answer as one line (the newline keeps `nc` output readable). Error messages quote
/// what the client sent, so one that would not fit a datagram is shortened until it does.
fn encode(id: Option<u64>, observed: SocketAddr, body: ResponseBody) -> Bytes {
    let mut resp = Response { id, observed, body };
    loop {
        let mut bytes = serde_json::to_vec(&resp).expect("protocol types serialize");
        bytes.push(b'\n');
        let excess = bytes.len().saturating_sub(limits::MAX_DATAGRAM);
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

/// Asks for a receive buffer of `bytes` (the system caps it at its maximum, `rmem_max` on Linux).
fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the socket's own and open; the option value is a c_int of the
    // size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot grow the receive buffer");
    }
}

/// A listener with a backlog deep enough for thousands of simultaneous joins.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
