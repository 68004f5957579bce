//! The coordinator: a UDP request loop, the session directory, and the session servers it starts.
//!
//! One task reads every datagram and answers it, so requests from all clients are applied in one
//! order. Answers are cached per (address, request id) for a while: UDP loses answers, clients
//! retry with the same id, and a retried `create` must not make a second session.

mod directory;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use directory::Directory;

use crate::expiring::ExpiringMap;
use crate::presence_log::PresenceLog;
use crate::protocol::{
    ErrorBody, ErrorCode, Request, RequestBody, Response, ResponseBody, SessionInfo, limits,
};
use crate::session::{self, MemberLimits, SessionConfig};

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
}

/// How the coordinator and the session servers it starts behave.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// A session nobody is in is closed after this long.
    pub idle_timeout: Duration,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Most members per session.
    pub max_members: usize,
    /// Address session servers bind to and announce; `None` uses the coordinator's own IP
    /// (or 127.0.0.1 when the coordinator listens on all interfaces).
    pub session_host: Option<IpAddr>,
    /// Plain-text log of joins and leaves.
    pub presence_log: Option<PathBuf>,
    /// What each member may send.
    pub member_limits: MemberLimits,
    /// Messages queued per member before it is dropped as too slow.
    pub member_queue: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_sessions: 10_000,
            max_members: 20_000,
            session_host: None,
            presence_log: None,
            member_limits: MemberLimits::default(),
            member_queue: 4096,
        }
    }
}

/// How long a cached answer is replayed to a retrying client.
const REPLY_TTL: Duration = Duration::from_secs(120);
/// Most cached answers; the oldest go first.
const REPLY_CAP: usize = 100_000;
/// Backlog of session listeners: bursts of thousands of joins must not be reset.
const LISTEN_BACKLOG: u32 = 4096;

/// Runs the coordinator on `socket` until `shutdown` is cancelled; then stops every session server
/// (telling members why) and returns once they have finished.
pub async fn run(
    socket: UdpSocket,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let local = socket.local_addr().map_err(CoordinatorError::Socket)?;
    let tracker = TaskTracker::new();
    let presence_log = match &config.presence_log {
        Some(path) => Some(
            PresenceLog::open(path, &tracker, shutdown.clone())
                .await
                .map_err(|source| CoordinatorError::PresenceLog {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let session_host = config
        .session_host
        .unwrap_or(if local.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            local.ip()
        });
    let mut coordinator = Coordinator {
        config,
        session_host,
        directory: Directory::default(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        presence_log,
        replies: ExpiringMap::new(REPLY_TTL, REPLY_CAP),
    };
    tracing::info!(%local, "coordinator listening");
    // One byte more than the largest datagram we accept, to tell "too large" from "just fits".
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.cancelled() => break,
        };
        let (len, from) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they concern one peer only.
                tracing::debug!(error = %e, "recv_from failed");
                continue;
            }
        };
        if let Some(answer) = coordinator.handle(&buf[..len], from).await
            && let Err(e) = socket.send_to(&answer, from).await
        {
            tracing::debug!(%from, error = %e, "send_to failed");
        }
    }
    tracing::info!("coordinator shutting down");
    tracker.close();
    tracker.wait().await;
    Ok(())
}

struct Coordinator {
    config: CoordinatorConfig,
    session_host: IpAddr,
    directory: Directory,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    presence_log: Option<PresenceLog>,
    replies: ExpiringMap<(SocketAddr, u64), Bytes>,
}

/// Just enough of a request to answer it with its id even when the rest is broken.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

impl Coordinator {
    /// Turns one datagram into the bytes of its answer.
    async fn handle(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Bytes> {
        let id_of = |d: &[u8]| serde_json::from_slice::<IdOnly>(d).ok().and_then(|r| r.id);
        if datagram.len() > limits::MAX_DATAGRAM {
            let err = ErrorBody::new(
                ErrorCode::TooLarge,
                format!(
                    "datagram of {} bytes is larger than the limit of {}",
                    datagram.len(),
                    limits::MAX_DATAGRAM
                ),
            );
            return Some(encode(id_of(datagram), from, ResponseBody::Error(err)));
        }
        let request = match serde_json::from_slice::<Request>(datagram) {
            Ok(r) => r,
            Err(e) => {
                let err = ErrorBody::new(ErrorCode::Malformed, format!("malformed request: {e}"));
                return Some(encode(id_of(datagram), from, ResponseBody::Error(err)));
            }
        };
        if let Some(cached) = self.replies.get(&(from, request.id)).cloned() {
            tracing::debug!(%from, id = request.id, "repeated request answered from cache");
            return Some(cached);
        }
        let body = match request.body {
            RequestBody::Create { name } => self.create(name).await,
            RequestBody::Join { session } => self
                .directory
                .find(&session)
                .map(|session| ResponseBody::Session { session }),
            RequestBody::List { cursor } => Ok(self.list(cursor, from)),
        };
        let body = body.unwrap_or_else(ResponseBody::Error);
        let answer = encode(Some(request.id), from, body);
        self.replies.insert((from, request.id), answer.clone());
        Some(answer)
    }

    async fn create(&mut self, name: Option<String>) -> Result<ResponseBody, ErrorBody> {
        if let Some(name) = &name {
            crate::auth::validate_session_name(name)
                .map_err(|e| ErrorBody::new(ErrorCode::InvalidName, e.to_string()))?;
            if self.directory.name_taken(name) {
                return Err(ErrorBody::new(
                    ErrorCode::NameTaken,
                    format!("a session named {name} already exists"),
                ));
            }
        }
        if self.directory.len() >= self.config.max_sessions {
            return Err(ErrorBody::new(
                ErrorCode::Full,
                format!(
                    "the coordinator already serves {} sessions, its limit",
                    self.config.max_sessions
                ),
            ));
        }
        let listener = bind_listener(SocketAddr::new(self.session_host, 0)).map_err(|e| {
            tracing::error!(error = %e, "cannot bind a session server");
            ErrorBody::new(ErrorCode::Internal, "could not start a session server")
        })?;
        let server = listener
            .local_addr()
            .map_err(|_| ErrorBody::new(ErrorCode::Internal, "session server has no address"))?;
        let info = SessionInfo {
            id: Uuid::new_v4(),
            name,
            server,
            created: Utc::now().trunc_subsecs(0),
        };
        self.directory.insert(info.clone())?;
        self.start_session(info.clone(), listener);
        Ok(ResponseBody::Session { session: info })
    }

    fn start_session(&self, info: SessionInfo, listener: TcpListener) {
        let mut config = SessionConfig::new(info.id, info.name.clone());
        config.idle_timeout = self.config.idle_timeout;
        config.max_members = self.config.max_members;
        config.member_queue = self.config.member_queue;
        config.member_limits = self.config.member_limits.clone();
        config.presence_log = self.presence_log.clone();
        config.observer = Some(Arc::new(self.directory.clone()));
        let directory = self.directory.clone();
        let stop = self.shutdown.child_token();
        self.tracker.spawn(async move {
            let ended = session::run(listener, config, stop).await;
            tracing::info!(session = %info.id, ?ended, "session server stopped");
            directory.remove(info.id);
        });
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

fn encode(id: Option<u64>, observed: SocketAddr, body: ResponseBody) -> Bytes {
    let resp = Response { id, observed, body };
    Bytes::from(serde_json::to_vec(&resp).expect("protocol types serialize"))
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
