//! What the coordinator is told at start, and why it could not run.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::directory::Directory;
use super::hashing;
use super::quota::AbuseLimits;
use crate::auth::PasswordCost;
use crate::protocol::limits;
use crate::session::{self, MemberLimits};
use crate::store::{Database, StoreError};

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
    /// The database (a SQLite file, or PostgreSQL); `None` keeps everything in memory, gone at
    /// exit.
    pub db: Option<Database>,
    /// How long a session's claim lasts unrenewed: a coordinator renews its claims every third
    /// of it, and stops serving if it cannot renew them in time; after it, another coordinator
    /// of the group may serve the session (members reconnect there).
    pub lease: Duration,
    /// This process runs session servers itself (the one-process default). Without, it only
    /// directs: every session is placed on a `confab host` of the group (`--no-local-sessions`).
    pub local_sessions: bool,
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
    /// Also take plain (unsealed) requests, as typed into `nc`: for debugging only, since
    /// passwords and tokens then cross the network readable. Off by default.
    pub insecure: bool,
    /// File descriptors kept free for members of running sessions: no new session server starts
    /// when fewer would be left. `None`: a quarter of the open-file limit.
    pub fd_reserve: Option<usize>,
    /// Use this directory instead of a new one, so that the embedding program (or a
    /// fault-injection test) can read it and act on it.
    pub directory: Option<Directory>,
    /// Fault injection: a handle that queues history writes through the coordinator's own
    /// database thread, as a busy session would.
    #[cfg(feature = "test-util")]
    pub history_tap: Option<HistoryTap>,
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
            lease: Duration::from_secs(6),
            local_sessions: true,
            token_ttl: Duration::from_secs(24 * 3600),
            password_cost: PasswordCost::default(),
            hash_workers: hashing::default_workers(),
            hash_queue: 256,
            abuse: AbuseLimits::default(),
            fd_reserve: None,
            insecure: false,
            directory: None,
            #[cfg(feature = "test-util")]
            history_tap: None,
        }
    }
}

/// Where the database lives unless `--db` says otherwise: `$XDG_DATA_HOME/confab/confab.db`,
/// else `~/.local/share/confab/confab.db`, else `./confab.db`.
pub fn default_db_path() -> PathBuf {
    crate::dirs::data_dir().map_or_else(|| PathBuf::from("confab.db"), |d| d.join("confab.db"))
}

/// Queues history writes on a running coordinator's database thread (fault injection for tests:
/// a flood of writes without the sessions and members that would make it).
#[cfg(feature = "test-util")]
#[derive(Clone, Default)]
pub struct HistoryTap {
    /// Set while the coordinator runs: a handle kept past shutdown would keep the database
    /// thread, and so shutdown, waiting.
    db: std::sync::Arc<parking_lot::Mutex<Option<std::sync::Arc<dyn crate::store::Storage>>>>,
}

#[cfg(feature = "test-util")]
impl std::fmt::Debug for HistoryTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryTap")
            .field("attached", &self.db.lock().is_some())
            .finish()
    }
}

#[cfg(feature = "test-util")]
impl HistoryTap {
    /// Called by the coordinator once its database thread runs, with `None` when it stops.
    pub(super) fn attach(&self, db: Option<std::sync::Arc<dyn crate::store::Storage>>) {
        *self.db.lock() = db;
    }

    /// Queues `lines` group messages of `session` for writing, without waiting for them (those
    /// beyond the queue's room are dropped, where a session would wait for room); returns 0
    /// when the coordinator is not running, else `lines`.
    pub fn flood(&self, session: uuid::Uuid, lines: u64) -> u64 {
        let Some(db) = self.db.lock().clone() else {
            return 0;
        };
        for seq in 1..=lines {
            let message = crate::store::StoredMessage {
                session,
                seq,
                time: chrono::Utc::now(),
                sender: "flood".into(),
                text: format!("line {seq}"),
                client_id: None,
            };
            // Beyond the queue's room the stalled append is dropped, not waited for.
            drop(db.append(message, None));
        }
        lines
    }
}
