//! One storage interface, two engines: SQLite in a file beside the coordinator (the default, and
//! nothing to install), or PostgreSQL, which several machines can share.
//!
//! Every call is queued when it is made and the engine runs them in that order, so what one
//! task asks first is done first (a session's creation before its `close`; the messages a
//! stopping server queued before the `last_seq` its successor reads). Group messages are
//! queued without waiting and written in batches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use uuid::Uuid;

use super::{Result, SessionRecord, StoredMessage, UserRecord};
use crate::protocol::ChatLine;
use crate::session::{Committed, HistoryStore};

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its `postgres://` (or `postgresql://`) URL.
    Postgres(String),
}

impl Database {
    /// Reads `--db`: a `postgres://` or `postgresql://` URL selects PostgreSQL; anything else
    /// is a SQLite file.
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_string())
        } else {
            Database::Sqlite(PathBuf::from(text))
        }
    }

    /// For logs: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => super::postgres::redact(url),
        }
    }
}

/// What the coordinator and its sessions keep: accounts, sessions, group history, and the
/// coordinator's two secrets.
pub trait Storage: Send + Sync + 'static {
    /// Registers a user; `NameTaken` if the name exists in any case. With `once` (the digest
    /// of the request's bytes), a request already done (by any coordinator sharing the
    /// database: the client retried it elsewhere) gives the user it made instead.
    fn create_user(
        &self,
        name: String,
        password_hash: String,
        created: DateTime<Utc>,
        once: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<UserRecord>>;
    /// A user by name, in any case.
    fn user(&self, name: String) -> BoxFuture<'static, Result<Option<UserRecord>>>;
    /// The token-signing secret, made on first use.
    fn token_secret(&self) -> BoxFuture<'static, Result<[u8; 32]>>;
    /// The coordinator's private key, made on first use.
    fn identity_secret(&self) -> BoxFuture<'static, Result<[u8; 32]>>;
    /// Every session, oldest first.
    fn sessions(&self) -> BoxFuture<'static, Result<Vec<SessionRecord>>>;
    /// This process's id as a host of session servers: what its claims name.
    fn host(&self) -> Uuid;
    /// Before a session's server starts: stores the session if it is `new` (`NameTaken` if its
    /// name is in use; with `once`, the digest of the `create`, recorded as done with the
    /// session's id, see [`Storage::create_user`]), claims it for this host (see [`Serve`]),
    /// and if the claim is ours reads its last sequence number and its newest `recent`
    /// messages.
    fn open_session(
        &self,
        id: Uuid,
        new: Option<SessionRecord>,
        recent: usize,
        serve: Serve,
        once: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<Opened>>;
    /// What the request with this digest did, if it was done already (see
    /// [`Storage::create_user`]): a user's name, a closed session's id.
    fn done_result(&self, digest: [u8; 32]) -> BoxFuture<'static, Result<Option<String>>>;
    /// Extends the lease of every session this host serves; how many it serves. (Also forgets
    /// done requests past their time: it runs every few seconds anyway.)
    fn renew(&self, lease: Duration) -> BoxFuture<'static, Result<usize>>;
    /// Gives up this host's claim of a session whose server stopped.
    fn release_session(&self, id: Uuid) -> BoxFuture<'static, Result<()>>;
    /// Whether other processes may share this database (and so take over sessions whose
    /// claims run out): a SQLite file belongs to its one coordinator.
    fn shared(&self) -> bool {
        false
    }
    /// Sessions created and closed through other processes on the same database, as they
    /// happen (PostgreSQL's `LISTEN`/`NOTIFY`); `None` for an engine one process owns. With
    /// `catch_up`, each time it starts listening (at first, and after its connection broke)
    /// it asks the group to tell again who is in every session served ([`Change::Resend`]),
    /// since what was said before was not heard.
    fn changes(&self, _catch_up: bool) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        None
    }
    /// Deletes a session and its history; whether it existed (or, with `once`, whether the
    /// request was done already, as for [`Storage::create_user`]).
    fn delete_session(&self, id: Uuid, once: Option<[u8; 32]>) -> BoxFuture<'static, Result<bool>>;
    /// Queues one group message for writing, without waiting; `done` is marked with its
    /// sequence number after the batch it went in is committed (or failed, logged). When the
    /// queue is full the message comes back as a [`Stalled`] append, which queues it once
    /// there is room: the caller waits for it before it appends anything more, so a store
    /// that falls behind slows the senders down instead of losing lines.
    #[must_use = "a stalled append is queued only when awaited"]
    fn append(&self, message: StoredMessage, done: Option<Committed>) -> Option<Stalled>;
    /// The newest `limit` messages before `before` (or the newest), oldest first.
    fn history(
        &self,
        session: Uuid,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<StoredMessage>>>;
    /// Messages after `after`, oldest first, at most `limit`.
    fn messages_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<StoredMessage>>>;
    /// The highest stored sequence number of a session (0 for none).
    fn last_seq(&self, session: Uuid) -> BoxFuture<'static, Result<u64>>;
    /// How many migration steps the database has had.
    fn schema_version(&self) -> BoxFuture<'static, Result<u32>>;
    /// Says this process can serve sessions for the group, with its load, until `lease` from
    /// now (a session host's heartbeat, or a coordinator's that serves sessions itself). An
    /// engine one process owns has nobody to tell.
    fn heartbeat(&self, _load: HostLoad, _lease: Duration) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Takes this process out of the hosts at shutdown, so nothing is placed on it meanwhile.
    fn retire(&self) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Undoes a placement on `host` that the host never took up (it died, or is too slow), so
    /// the session can be placed again at once rather than after the lease.
    fn unplace(&self, _id: Uuid, _host: Uuid) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Tells the group who is in the sessions this process serves (a `NOTIFY` each); an engine
    /// one process owns has nobody to tell.
    fn publish_members(&self, _members: Vec<Members>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Sessions placed on this process and not yet served: what a host takes up even if it
    /// missed the notification (its listening connection broke a moment).
    fn placed_here(&self) -> BoxFuture<'static, Result<Vec<PlacedHere>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// The live hosts, least loaded first.
    fn hosts(&self) -> BoxFuture<'static, Result<Vec<HostRecord>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// What a host of session servers says of itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoad {
    /// A dedicated session host (`confab host`) any coordinator places sessions on, or a
    /// coordinator that serves its own sessions (only it places on itself).
    pub kind: HostKind,
    /// Where its session servers listen, for people reading the table.
    pub address: String,
    /// Members connected to its sessions.
    pub members: u32,
    /// Session servers it runs.
    pub sessions: u32,
}

/// See [`HostLoad::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// `confab host`.
    Host,
    /// A coordinator with local sessions.
    Coordinator,
}

impl HostKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Host => "host",
            HostKind::Coordinator => "coordinator",
        }
    }
}

/// A session placed on this host, to be taken up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedHere {
    /// The session.
    pub id: Uuid,
    /// Its name, for the server's greeting.
    pub name: Option<String>,
}

/// A live host, as the hosts table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// Its id (what its claims name).
    pub id: Uuid,
    /// Its heartbeat.
    pub load: HostLoad,
}

/// A change to the sessions that another process of the group made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A session was created.
    Created(SessionRecord),
    /// A session was closed for good (by its creator, the only one who may).
    Closed {
        /// The session.
        id: Uuid,
        /// Who closed it (its creator), when the notification says.
        by: Option<String>,
    },
    /// A coordinator placed a session on a host: that host is to start its server.
    Placed {
        /// The host.
        host: Uuid,
        /// The session.
        session: Uuid,
        /// Its name, for the server's greeting.
        name: Option<String>,
    },
    /// A host claimed a session and serves it there now.
    Served {
        /// The session.
        session: Uuid,
        /// The host (a `confab host`, or a coordinator serving it itself).
        host: Uuid,
        /// Its server.
        server: SocketAddr,
        /// That server's Noise key.
        server_key: String,
    },
    /// A session's server stopped (idle, or its process shutting down): nobody serves it.
    Released(Uuid),
    /// Who is in a session now, and where it is served, as the process serving it says.
    Members(Members),
    /// A process of the group started listening: every process says again who is in the
    /// sessions it serves.
    Resend,
}

/// Who is in a session, as its server's process tells the group (for the directory's
/// `list`): the count, and the first few names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Members {
    /// The session.
    pub id: Uuid,
    /// The process serving it.
    pub host: Uuid,
    /// Its server.
    pub server: SocketAddr,
    /// How many are in it.
    pub count: usize,
    /// The first few of them (a directory entry shows no more).
    pub names: Vec<String>,
}

/// Where this host would serve a session, and for how long its claim lasts unrenewed.
#[derive(Debug, Clone)]
pub struct Serve {
    /// The session server's address.
    pub server: SocketAddr,
    /// Its Noise key, for clients sent there by another coordinator of the group.
    pub server_key: String,
    /// How long the claim lasts without renewal: after it, another host may take the session.
    pub lease: Duration,
    /// Who may serve it.
    pub placement: Placement,
}

/// Who may serve a session that nobody serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This process (a host taking up what was placed on it).
    Here,
    /// The least-loaded live host of the group (by members, then sessions), this process
    /// among them when `local`, but none of `avoid`.
    Spread {
        /// This process serves sessions too.
        local: bool,
        /// Hosts that did not serve a session placed on them a moment ago.
        avoid: Vec<Uuid>,
    },
}

/// What [`Storage::open_session`] found.
#[derive(Debug)]
pub enum Opened {
    /// The session is ours to serve: its last sequence number and newest lines.
    Here {
        /// The newest stored line's number.
        seq: u64,
        /// The newest stored lines, oldest first.
        recent: Vec<StoredMessage>,
    },
    /// Another host serves it, on a live lease.
    Elsewhere {
        /// Its session server.
        server: SocketAddr,
        /// That server's Noise key.
        server_key: String,
    },
    /// No session has that id any more.
    Gone,
    /// Placed on another host, which is to start it (and say so, [`Change::Served`]).
    Placed {
        /// The host.
        host: Uuid,
    },
    /// Placed on another host a moment ago, not yet served.
    Starting,
    /// Nobody serves it and no live host could take it.
    NoHost,
}

impl Opened {
    /// From a claim's outcome, reading the history only if the claim is ours.
    pub(crate) fn from_claim(
        claimed: super::Claimed,
        read: impl FnOnce() -> Result<(u64, Vec<StoredMessage>)>,
    ) -> Result<Opened> {
        Ok(match claimed {
            super::Claimed::Here => {
                let (seq, recent) = read()?;
                Opened::Here { seq, recent }
            }
            super::Claimed::Elsewhere { server, .. } if server.is_empty() => Opened::Starting,
            super::Claimed::Elsewhere { server, server_key } => Opened::Elsewhere {
                server: server.parse().map_err(|e| {
                    super::StoreError::Corrupt(format!("session server address {server:?}: {e}"))
                })?,
                server_key,
            },
            super::Claimed::Gone => Opened::Gone,
        })
    }
}

/// An append waiting for room in its engine's queue (see [`Storage::append`]).
pub type Stalled = BoxFuture<'static, ()>;

/// A message whose engine is gone (its thread or task ended): it is never written, so its
/// room is told at once rather than left waiting for it.
pub(crate) fn unstored(message: &StoredMessage, done: Option<Committed>) {
    tracing::error!(
        session = %message.session,
        seq = message.seq,
        "the history store has stopped; message not stored"
    );
    if let Some(done) = done {
        done.mark(message.seq);
    }
}

/// A session's history in a [`Storage`], as the session server uses it.
#[derive(Clone)]
pub struct History(pub Arc<dyn Storage>);

impl HistoryStore for History {
    fn append(&self, session: Uuid, line: &ChatLine, done: &Committed) -> Option<Stalled> {
        let message = StoredMessage {
            session,
            seq: line.seq,
            time: line.time,
            sender: line.from.clone(),
            text: line.text.clone(),
            client_id: line.id,
        };
        self.0.append(message, Some(done.clone()))
    }

    fn before(
        &self,
        session: Uuid,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'static, Vec<ChatLine>> {
        let read = self.0.history(session, Some(before), limit);
        Box::pin(async move {
            match read.await {
                Ok(msgs) => msgs.into_iter().map(to_line).collect(),
                Err(super::StoreError::Gone) => Vec::new(),
                Err(e) => {
                    tracing::error!(%session, error = %e, "history read failed");
                    Vec::new()
                }
            }
        })
    }
}

/// A stored message as the protocol carries it.
pub fn to_line(m: StoredMessage) -> ChatLine {
    ChatLine {
        seq: m.seq,
        time: m.time,
        from: m.sender,
        text: m.text,
        id: m.client_id,
    }
}

/// What to wait for at shutdown: the engine's thread or task, which ends once every handle is
/// dropped and the queued writes are done.
pub enum Finished {
    /// The SQLite thread.
    Thread(std::thread::JoinHandle<()>),
    /// The PostgreSQL task.
    Task(tokio::task::JoinHandle<()>),
}

impl Finished {
    /// Waits for the last writes.
    pub async fn wait(self) {
        match self {
            Finished::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Finished::Task(task) => {
                let _ = task.await;
            }
        }
    }
}

/// Opens `db` (`None`: SQLite in memory, gone at exit), bringing its schema up to date.
pub async fn open(db: Option<&Database>) -> Result<(Arc<dyn Storage>, Finished)> {
    match db {
        Some(Database::Postgres(url)) => {
            let (pg, task) = super::postgres::Postgres::connect(url).await?;
            Ok((Arc::new(pg), Finished::Task(task)))
        }
        sqlite => {
            let path = match sqlite {
                Some(Database::Sqlite(path)) => Some(path.clone()),
                _ => None,
            };
            let store = tokio::task::spawn_blocking(move || match path {
                Some(path) => super::Store::open(&path),
                None => super::Store::open_in_memory(),
            })
            .await
            .map_err(|_| super::StoreError::Gone)??;
            let (db, thread) =
                crate::db::Db::start(store).map_err(|source| super::StoreError::Io {
                    path: PathBuf::from("(database thread)"),
                    source,
                })?;
            Ok((Arc::new(db), Finished::Thread(thread)))
        }
    }
}
