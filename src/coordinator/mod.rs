//! The coordinator: a UDP request loop, accounts, the session directory, and the session servers
//! it starts.
//!
//! One task reads every datagram and answers it, so requests from all clients are applied in one
//! order. Answers are cached per (address, request id) for a while: UDP loses answers, clients
//! retry with the same id, and a retried `create` must not make a second session. Password hashing
//! is slow on purpose, so `register` and `login` run in their own tasks and report back to the
//! loop, which answers them then; a retry that arrives meanwhile is ignored, not run twice.

mod directory;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use directory::{Directory, Listed};

use crate::auth::{self, Claims, LoginThrottle, PasswordCost, TokenKey};
use crate::db::{Db, to_line};
use crate::expiring::ExpiringMap;
use crate::presence_log::PresenceLog;
use crate::protocol::{
    ErrorBody, ErrorCode, Password, Request, RequestBody, Response, ResponseBody, SessionInfo,
    limits,
};
use crate::session::{self, MemberLimits, SessionConfig, Stop};
use crate::store::{SessionRecord, Store, StoreError};

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
    /// Messages queued per member before it is dropped as too slow.
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
    /// Registrations and logins being hashed at once; more are not answered (clients retry).
    pub max_pending_logins: usize,
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
            max_pending_logins: 64,
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
/// Most cached answers; the oldest go first.
const REPLY_CAP: usize = 100_000;
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
    let directory = config.directory.clone().unwrap_or_default();
    let mut coordinator = Coordinator {
        logins: Arc::new(Semaphore::new(config.max_pending_logins.max(1))),
        config,
        session_host,
        directory,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        presence_log,
        replies: ExpiringMap::new(REPLY_TTL, REPLY_CAP),
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
    // Every session has stopped and dropped its handle; the thread writes what is queued and ends.
    let _ = tokio::task::spawn_blocking(move || db_thread.join()).await;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// An account request that finished in its own task.
struct Done {
    from: SocketAddr,
    id: u64,
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
    /// `None` while the answer is still being worked out.
    replies: ExpiringMap<(SocketAddr, u64), Option<Bytes>>,
    db: Db,
    keys: Arc<TokenKey>,
    throttle: LoginThrottle,
    /// Names (lowercased) with a login being checked.
    logins_in_flight: std::collections::HashSet<String>,
    logins: Arc<Semaphore>,
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
    /// Turns one datagram into its answer, or `None` when the answer comes later (or never, for
    /// a request we are too busy to start: the client's retry will find room).
    async fn handle(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Bytes> {
        let id_of = |d: &[u8]| serde_json::from_slice::<IdOnly>(d).ok().and_then(|r| r.id);
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
        let request = match serde_json::from_slice::<Request>(datagram) {
            Ok(r) => r,
            Err(e) => {
                let e = err(ErrorCode::Malformed, format!("malformed request: {e}"));
                return Some(encode(id_of(datagram), from, ResponseBody::Error(e)));
            }
        };
        let key = (from, request.id);
        match self.replies.get(&key) {
            Some(Some(cached)) => {
                tracing::debug!(%from, id = request.id, "repeated request answered from cache");
                return Some(cached.clone());
            }
            Some(None) => return None, // still working on it
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
                return self.register(from, request.id, user, password);
            }
            RequestBody::Login { user, password } => {
                return self.login(from, request.id, user, password);
            }
            RequestBody::Create { name, token } => self.create(name, &token).await,
            RequestBody::Join { session, token } => self.join(&session, &token).await,
            RequestBody::Close { session, token } => self.close(&session, &token).await,
            RequestBody::List { cursor } => Ok(self.list(cursor, from)),
        };
        let answer = encode(
            Some(request.id),
            from,
            body.unwrap_or_else(ResponseBody::Error),
        );
        if remember {
            self.replies.insert(key, Some(answer.clone()));
        }
        Some(answer)
    }

    /// Records and encodes the answer of an account request that finished.
    fn finish(&mut self, done: Done) -> Bytes {
        if let Some((name, _)) = &done.login {
            self.logins_in_flight.remove(&name.to_lowercase());
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
        let answer = encode(Some(done.id), done.from, done.body);
        match self.replies.get_mut(&(done.from, done.id)) {
            Some(slot) => *slot = Some(answer.clone()),
            None => {
                self.replies
                    .insert((done.from, done.id), Some(answer.clone()));
            }
        }
        answer
    }

    fn verify(&self, token: &str) -> Result<Claims, ErrorBody> {
        self.keys
            .verify(token, Utc::now())
            .map_err(|e| err(ErrorCode::Unauthorized, e.to_string()))
    }

    /// Starts `work` in its own task if there is room, marking the request as in progress.
    fn spawn_account_task(
        &mut self,
        from: SocketAddr,
        id: u64,
        work: impl Future<Output = Done> + Send + 'static,
    ) -> Option<Bytes> {
        let Ok(permit) = self.logins.clone().try_acquire_owned() else {
            tracing::debug!(%from, "too many logins in progress; request left for its retry");
            return None;
        };
        self.replies.insert((from, id), None);
        let done = self.done.clone();
        self.tracker.spawn(async move {
            let result = work.await;
            drop(permit);
            let _ = done.send(result).await;
        });
        None
    }

    fn register(
        &mut self,
        from: SocketAddr,
        id: u64,
        user: String,
        password: Password,
    ) -> Option<Bytes> {
        if let Err(e) = check_credentials(&user, &password) {
            return Some(self.answer_now(from, id, Err(e)));
        }
        let (db, cost) = (self.db.clone(), self.config.password_cost);
        self.spawn_account_task(from, id, async move {
            let body = async {
                let hash = tokio::task::spawn_blocking(move || {
                    auth::hash_password_with(&password.0, cost)
                })
                .await
                .map_err(internal)?
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
                body: body.unwrap_or_else(ResponseBody::Error),
                login: None,
            }
        })
    }

    fn login(
        &mut self,
        from: SocketAddr,
        id: u64,
        user: String,
        password: Password,
    ) -> Option<Bytes> {
        if let Err(e) = check_credentials(&user, &password) {
            return Some(self.answer_now(from, id, Err(e)));
        }
        // One login per name at a time: the throttle learns of a failure only when its hash is
        // checked, so parallel guesses would otherwise all pass the check before the first fails.
        let name_key = user.to_lowercase();
        if self.logins_in_flight.contains(&name_key) {
            let e = err(
                ErrorCode::Throttled,
                "another login for this name is in progress; try again in a moment",
            );
            return Some(self.answer_now(from, id, Err(e)));
        }
        if let Err(wait) = self
            .throttle
            .check(&user, from.ip(), std::time::Instant::now())
        {
            let e = err(
                ErrorCode::Throttled,
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs().max(1)
                ),
            );
            return Some(self.answer_now(from, id, Err(e)));
        }
        let (db, keys, ttl) = (self.db.clone(), self.keys.clone(), self.config.token_ttl);
        self.logins_in_flight.insert(name_key.clone());
        let started = self.spawn_account_task(from, id, async move {
            let name = user.clone();
            let found = db.call(move |s| s.user(&name)).await;
            let result = match found {
                Ok(Ok(rec)) => {
                    let checked = tokio::task::spawn_blocking(move || match rec {
                        Some(rec) => auth::verify_password(&password.0, &rec.password_hash)
                            .then_some(rec.name),
                        None => {
                            auth::dummy_verify(&password.0);
                            None
                        }
                    })
                    .await;
                    match checked {
                        Ok(Some(name)) => {
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
                        Ok(None) => Err(err(
                            ErrorCode::InvalidCredentials,
                            "unknown user or wrong password",
                        )),
                        Err(e) => Err(internal(e)),
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
                body: result.unwrap_or_else(ResponseBody::Error),
                login: Some((user, counted.then_some(ok))),
            }
        });
        if !self.replies.get(&(from, id)).is_some_and(|a| a.is_none()) {
            // Not started (too many logins at once): nothing is in flight after all.
            self.logins_in_flight.remove(&name_key);
        }
        started
    }

    fn answer_now(
        &mut self,
        from: SocketAddr,
        id: u64,
        body: Result<ResponseBody, ErrorBody>,
    ) -> Bytes {
        let answer = encode(Some(id), from, body.unwrap_or_else(ResponseBody::Error));
        self.replies.insert((from, id), Some(answer.clone()));
        answer
    }

    async fn create(
        &mut self,
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
        let session = self.start_session(listed).await?;
        Ok(ResponseBody::Session { session })
    }

    async fn join(&mut self, key: &str, token: &str) -> Result<ResponseBody, ErrorBody> {
        self.verify(token)?;
        let listed = self.directory.find(key)?;
        let session = match listed.info() {
            Some(info) => info,
            None => self.start_session(listed).await?,
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
        self.directory.remove(id);
        tracing::info!(session = %id, by = %claims.user, "session closed for good");
        Ok(ResponseBody::Closed { session: id })
    }

    /// Starts (or restarts) the server of a listed session, with its stored history.
    async fn start_session(&mut self, listed: Listed) -> Result<SessionInfo, ErrorBody> {
        if self.directory.running() >= self.config.max_sessions {
            return Err(err(
                ErrorCode::Full,
                format!(
                    "the coordinator already runs {} sessions, its limit",
                    self.config.max_sessions
                ),
            ));
        }
        let listener = bind_listener(SocketAddr::new(self.session_host, 0)).map_err(internal)?;
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

/// A listener with a backlog deep enough for thousands of simultaneous joins.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
