//! A session server: one TCP listener, one room, one handler per member.
//!
//! The coordinator runs one of these per session, as a task in its own process; nothing here knows
//! about the coordinator except through the [`SessionObserver`] it may be given, so a session server
//! can also be started on its own (tests do).

mod clock;
mod events;
mod gate;
mod history;
mod member;
mod members;
mod outbox;
mod presence;
mod room;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use futures::future::BoxFuture;

use crate::auth::TokenKey;
use crate::presence_log::PresenceLog;
use crate::protocol::{ChatLine, Member};

pub use member::MemberLimits;

/// Default of [`SessionConfig::member_budget`]: room for the largest answer (4 MiB) and as much
/// again of live lines.
pub const DEFAULT_MEMBER_BUDGET: usize = 8 * 1024 * 1024;

/// Told about membership changes, so a directory can stay true without asking.
pub trait SessionObserver: Send + Sync + 'static {
    /// `member` is now in `session` (with the endpoints and key it announced, which the
    /// coordinator gives to users who look it up to send it private messages).
    fn member_joined(&self, session: Uuid, member: &Member);
    /// `user` is no longer in `session`.
    fn member_left(&self, session: Uuid, user: &str);
}

/// Keeps group messages beyond the room's memory (the database, in the coordinator).
pub trait HistoryStore: Send + Sync + 'static {
    /// Stores one message, and marks `done` with its sequence number once it is written (or
    /// could not be: then an error is logged). Must not block: the room calls it on its hot
    /// path, and sends the line to members only when `done` says so, so that a line anyone has
    /// seen is stored, whatever happens to this process after. A store with no room for it
    /// now gives it back as a future that stores it once there is room: the room then waits
    /// for that before it takes anything else, holding its senders back.
    #[must_use = "a stalled append is stored only when awaited"]
    fn append(
        &self,
        session: Uuid,
        line: &ChatLine,
        done: &Committed,
    ) -> Option<BoxFuture<'static, ()>>;
    /// Up to `limit` messages with a sequence number below `before`, oldest first.
    fn before(&self, session: Uuid, before: u64, limit: usize)
    -> BoxFuture<'static, Vec<ChatLine>>;
}

/// How far a session's lines are written: the highest sequence number a store has finished
/// with. Cheap to clone; the room waits on it, the store marks it after each batch.
#[derive(Clone, Debug)]
pub struct Committed(Arc<tokio::sync::watch::Sender<u64>>);

impl Committed {
    /// Starting at `seq` (the lines before it are already stored).
    pub fn new(seq: u64) -> Committed {
        Committed(Arc::new(tokio::sync::watch::Sender::new(seq)))
    }

    /// The lines up to `seq` are written.
    pub fn mark(&self, seq: u64) {
        self.0.send_if_modified(|done| {
            let newer = seq > *done;
            if newer {
                *done = seq;
            }
            newer
        });
    }

    /// The newest sequence number marked written.
    pub fn written(&self) -> u64 {
        *self.0.borrow()
    }

    /// A receiver that sees each new mark.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// How one session server behaves.
pub struct SessionConfig {
    /// The session's id.
    pub id: Uuid,
    /// The session's name, if any.
    pub name: Option<String>,
    /// How long the session stays open with nobody in it.
    pub idle_timeout: Duration,
    /// Most members at once.
    pub max_members: usize,
    /// Messages queued for one member before the room holds its senders back until the queue
    /// drains (flow control, see `MemberLimits::drain_timeout`).
    pub member_queue: usize,
    /// Bytes the server holds for one member (live lines, a replay, a history answer, the write
    /// under way) before it counts as too slow and is dropped: what bounds the memory a member
    /// that does not read can cost.
    pub member_budget: usize,
    /// Above this many members, rosters are not sent whole (see `limits::FULL_ROSTER_MAX`).
    pub full_roster_max: usize,
    /// Group messages kept in memory for `history` and for reconnecting members.
    pub recent_messages: usize,
    /// Per-member input limits.
    pub member_limits: MemberLimits,
    /// Where joins and leaves are written for people to read.
    pub presence_log: Option<PresenceLog>,
    /// Who to tell about joins and leaves.
    pub observer: Option<Arc<dyn SessionObserver>>,
    /// Where group messages are kept for good.
    pub history: Option<Arc<dyn HistoryStore>>,
    /// Checks the token in every hello; `None` lets anyone in under any free name (tests of the
    /// session server alone).
    pub tokens: Option<Arc<TokenKey>>,
    /// The server's Noise static key: with one, members connect encrypted (`transport.rs`) and
    /// the coordinator names its public half in the join answer.
    pub noise: Option<Arc<crate::transport::StaticKey>>,
    /// Plaintext connections are taken too (a coordinator started with `--insecure`, or a bare
    /// server without a key, as tests of the session server alone use).
    pub plain: bool,
    /// Newest sequence number already used, when the session is restarted from storage.
    pub start_seq: u64,
    /// Messages to seed the in-memory history with (oldest first).
    pub start_recent: Vec<ChatLine>,
}

impl SessionConfig {
    /// Defaults for a session with this id and name.
    pub fn new(id: Uuid, name: Option<String>) -> Self {
        Self {
            id,
            name,
            idle_timeout: Duration::from_secs(300),
            max_members: 20_000,
            member_queue: 4096,
            member_budget: DEFAULT_MEMBER_BUDGET,
            full_roster_max: crate::protocol::limits::FULL_ROSTER_MAX,
            recent_messages: 1000,
            member_limits: MemberLimits::default(),
            presence_log: None,
            observer: None,
            history: None,
            tokens: None,
            noise: None,
            plain: true,
            start_seq: 0,
            start_recent: Vec::new(),
        }
    }

    /// How the session appears in logs: its name, or its id.
    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name}({})", self.id),
            None => self.id.to_string(),
        }
    }
}

/// Why a session server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Nobody was in it for the idle timeout.
    Idle,
    /// It was told to stop.
    Shutdown,
    /// Its room task failed (a bug); members were disconnected.
    Failed,
}

/// Backlog of session listeners: bursts of thousands of joins must not be reset.
const LISTEN_BACKLOG: u32 = 4096;

/// A session server's listener, with a backlog deep enough for thousands of simultaneous joins.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How a session server is told to stop, and what its members are told.
#[derive(Clone, Default)]
pub struct Stop {
    /// The whole server is going down.
    pub shutdown: CancellationToken,
    /// This session was removed for good.
    pub close: CancellationToken,
    /// Who removed it, set before `close` is cancelled (see [`Stop::close_by`]): members are
    /// told by whom, not only that it happened.
    pub closed_by: Arc<std::sync::OnceLock<String>>,
    /// Kills the room task mid-flight, as a panic would, without a word to anyone: what a
    /// server whose claim on the session lapsed does (fencing). The fault-injection tests use
    /// it (through [`Stop::crash`], with the `test-util` feature) to prove that the coordinator
    /// and the clients recover from a session server that dies.
    pub(crate) crash: CancellationToken,
}

impl Stop {
    /// Fault injection: kills the room as a panic would, without a word to anyone.
    #[cfg(feature = "test-util")]
    pub fn crash(&self) {
        self.crash.cancel();
    }

    /// Removes the session for good on behalf of `user`, who is named in the members' `bye`.
    pub fn close_by(&self, user: &str) {
        let _ = self.closed_by.set(user.to_string());
        self.close.cancel();
    }
}

/// Serves one session on `listener` until stopped or until it has been idle too long.
pub async fn run(listener: TcpListener, mut config: SessionConfig, stop: Stop) -> Ended {
    // The room takes the seed lines; the shared config should not keep a second copy.
    let start_recent = std::mem::take(&mut config.start_recent);
    let config = Arc::new(config);
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(session = %config.id, addr = ?local, "session server listening");
    let (tx, rx) = mpsc::channel(4096);
    let gate = Arc::new(gate::Gate::default());
    let room = room::Room::new(
        config.clone(),
        config.start_seq,
        start_recent,
        tx.downgrade(),
        gate.clone(),
    );
    // Members are told to go when the room ends, whatever the reason.
    let members_stop = CancellationToken::new();
    let room_task = tokio::spawn(room.run(rx, stop.clone()));
    let tracker = TaskTracker::new();
    let next_conn = AtomicU64::new(1);
    let mut room_task = std::pin::pin!(room_task);
    let ended = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                    let handler = member::serve(
                        stream, peer, conn, tx.clone(), gate.clone(), config.clone(),
                        members_stop.clone(),
                    );
                    tracker.spawn(handler);
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(session = %config.id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.crash.cancelled() => {
                tracing::warn!(session = %config.id, "stopping the room at once (its claim is lost, or fault injection)");
                room_task.abort();
                let _ = (&mut room_task).await;
                break Ended::Failed;
            }
            result = &mut room_task => {
                break match result {
                    Err(e) => {
                        tracing::error!(session = %config.id, error = %e, "room task failed");
                        Ended::Failed
                    }
                    Ok(()) if stop.shutdown.is_cancelled() || stop.close.is_cancelled() => Ended::Shutdown,
                    Ok(()) => Ended::Idle,
                };
            }
        }
    };
    drop(listener);
    if let Some(log) = &config.presence_log {
        // A room that failed logged no departures: its members are gone all the same.
        let reason = match ended {
            Ended::Failed => "crashed",
            Ended::Idle | Ended::Shutdown => "shutdown",
        };
        log.session_ended(&config.label(), reason);
    }
    members_stop.cancel();
    tracker.close();
    tracker.wait().await;
    ended
}
