//! Persistence for users, sessions, chat history and server secrets: the [`Storage`] interface,
//! its SQLite engine ([`Store`], on its own thread in `crate::db`) and its PostgreSQL engine
//! ([`postgres::Postgres`]).
//!
//! The store is deliberately synchronous: `rusqlite::Connection` is not `Sync`
//! and SQLite serialises writers anyway, so the server owns one [`Store`] on a
//! dedicated thread and talks to it over a channel. That thread can then batch
//! message writes ([`Store::append_messages`]) into a single transaction, which
//! is what makes thousands of messages per second cheap.
//!
//! Representation choices (all private to this module):
//! - Timestamps are stored as RFC 3339 text in UTC with exactly nine fractional
//!   digits and a `Z` suffix, so the text sorts in chronological order and
//!   round-trips without loss.
//! - UUIDs are stored as hyphenated lowercase text, which keeps the database
//!   readable with the `sqlite3` shell.
//! - Case-insensitive uniqueness of names is enforced by a `UNIQUE` column
//!   holding the lowercased name (`name_key`), so the check is atomic inside
//!   SQLite rather than a racy check-then-insert in Rust.
//! - Sequence numbers are `u64` in the API but SQLite integers are signed
//!   64-bit, so values above `i64::MAX` are rejected with
//!   [`StoreError::SeqOutOfRange`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::Connection;
use uuid::Uuid;

pub use error::{Result, StoreError};
use migrations::{migrate, read_version};
pub use sessions::Claimed;
pub use storage::{
    Change, Database, History, HostKind, HostLoad, HostRecord, Members, Opened, PlacedHere,
    Placement, Serve, Stalled, Storage, open, to_line,
};

mod error;
pub mod feed;
mod history;
mod migrations;
mod pgconn;
pub mod postgres;
mod sessions;
pub(crate) mod storage;
#[cfg(test)]
mod tests;
mod users;

/// How long a statement waits for a lock held by another connection before
/// failing with `SQLITE_BUSY`. Generous because the only other writers are
/// maintenance tools or a checkpoint; failing fast would just lose messages.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left alone: they may
/// be shared on purpose, like `~/.local/share`).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates the database file with mode 0600 if it is missing, and takes read and write for
/// group and others away from it and its `-wal` and `-shm` files if they have them.
fn private_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %file.display(), mode = format!("{:o}", mode & 0o777), "database file was readable by others; made private (0600)");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

/// A registered user as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Database row id; stable for the lifetime of the account.
    pub id: i64,
    /// The name exactly as registered (original case), for display.
    pub name: String,
    /// Argon2 PHC string; opaque to the store.
    pub password_hash: String,
    /// When the account was created.
    pub created: DateTime<Utc>,
}

/// A chat session (room) as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Stable identifier; names can be reused after deletion, ids cannot.
    pub id: Uuid,
    /// Display name exactly as created; unique ignoring case. Unnamed sessions are known by id.
    pub name: Option<String>,
    /// Name of the user who created the session.
    pub creator: String,
    /// When the session was created; sessions are listed in this order.
    pub created: DateTime<Utc>,
}

/// One chat message in a session's persistent history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The session the message belongs to.
    pub session: Uuid,
    /// Per-session sequence number assigned by the session server; clients
    /// use it to resume and page through history.
    pub seq: u64,
    /// When the server accepted the message.
    pub time: DateTime<Utc>,
    /// Name of the sending user.
    pub sender: String,
    /// Message body.
    pub text: String,
    /// The id the sender gave the line, if any (see `protocol::ChatLine::id`).
    pub client_id: Option<u64>,
}

/// Handle to the confab database. Owns one SQLite connection; not `Sync`, so
/// keep it on one thread (see the module docs).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database file at `path`, creating parent
    /// directories, enabling WAL mode (readers never block the writer) with
    /// `synchronous=NORMAL` (durable across process crashes; a power loss may
    /// drop the last few commits, an acceptable trade for chat), and brings
    /// the schema up to date.
    ///
    /// Whoever reads the file can read every history and forge tokens with the secret in it, so
    /// the directories it creates are 0700 and the file 0600, whatever the umask (SQLite gives the
    /// `-wal` and `-shm` files the database file's mode); an existing file readable by others is
    /// made private, with a warning.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        private_files(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // journal_mode returns the resulting mode as a row, so it must be
        // queried rather than executed.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "could not enable WAL journal mode (got {mode:?})"
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Store::from_connection(conn)
    }

    /// Opens a private in-memory database, for tests and for running without
    /// persistence.
    pub fn open_in_memory() -> Result<Store> {
        Store::from_connection(Connection::open_in_memory()?)
    }

    /// Wraps an already-open connection, enabling foreign keys and a busy
    /// timeout and running migrations. Lets tests (or callers needing special
    /// open flags) supply their own connection.
    pub fn from_connection(mut conn: Connection) -> Result<Store> {
        // foreign_keys is per-connection and off by default in SQLite; it is
        // what makes deleting a session remove its messages.
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        migrate(&mut conn)?;
        Ok(Store { conn })
    }

    /// The schema version of the open database (number of migration steps
    /// applied). Exposed for diagnostics and tests.
    pub fn schema_version(&self) -> u32 {
        // Reading a pragma of an open connection cannot realistically fail;
        // report 0 rather than forcing every caller to handle an error.
        read_version(&self.conn).unwrap_or(0)
    }
}

/// Turns a unique-constraint violation into [`StoreError::NameTaken`]; the
/// only `UNIQUE` columns written by the callers are the `name_key`s.
fn map_unique(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            StoreError::NameTaken
        }
        _ => StoreError::Sqlite(err),
    }
}

/// The case-folded form of a name used for uniqueness and lookup.
fn name_key(name: &str) -> String {
    name.to_lowercase()
}

/// Fixed-width UTC RFC 3339, so that text order equals time order.
fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("bad uuid {s:?}: {e}")))
}

fn seq_to_sql(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StoreError::SeqOutOfRange(seq))
}

fn seq_from_sql(seq: i64) -> Result<u64> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative sequence number {seq}")))
}

/// SQLite's LIMIT takes a signed integer; clamp instead of failing, since a
/// limit that large means "everything" anyway.
fn limit_to_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
