//! SQLite-backed persistence for users, sessions, chat history and server
//! secrets.
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
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

/// How long a statement waits for a lock held by another connection before
/// failing with `SQLITE_BUSY`. Generous because the only other writers are
/// maintenance tools or a checkpoint; failing fast would just lose messages.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Key in the `meta` table under which the token-signing secret is kept.
const TOKEN_SECRET_KEY: &str = "token_secret";

/// Schema migrations, applied in order. Step `i` (0-based) brings the schema
/// from version `i` to version `i + 1`; the version is recorded in
/// `PRAGMA user_version`. Append new steps at the end, never edit old ones:
/// databases in the field have already run them.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE users (
         id            INTEGER PRIMARY KEY,
         name          TEXT NOT NULL,
         name_key      TEXT NOT NULL UNIQUE,
         password_hash TEXT NOT NULL,
         created       TEXT NOT NULL
     );
     CREATE TABLE sessions (
         id       TEXT PRIMARY KEY NOT NULL,
         name     TEXT,
         name_key TEXT UNIQUE,
         creator  TEXT NOT NULL,
         created  TEXT NOT NULL
     );
     CREATE TABLE messages (
         session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
         seq        INTEGER NOT NULL,
         time       TEXT NOT NULL,
         sender     TEXT NOT NULL,
         text       TEXT NOT NULL,
         PRIMARY KEY (session_id, seq)
     ) WITHOUT ROWID;
     CREATE TABLE meta (
         key   TEXT PRIMARY KEY NOT NULL,
         value BLOB NOT NULL
     );",
    // 2: the sender's own id for each line, so a line resent after a reconnect is recognised
    //    even by a restarted server.
    "ALTER TABLE messages ADD COLUMN client_id INTEGER;",
];

/// Errors returned by [`Store`]. Callers mostly care about [`NameTaken`]
/// (a user-facing condition); everything else is an operational failure to
/// log.
///
/// [`NameTaken`]: StoreError::NameTaken
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A user or session with the same name (ignoring case) already exists.
    /// Reported separately so the caller can tell the user to pick another
    /// name instead of reporting an internal error.
    #[error("that name is already taken")]
    NameTaken,
    /// Any other SQLite failure (I/O error, disk full, locked database...).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be opened; carries the path because the
    /// bare SQLite message ("unable to open database file") does not say
    /// which file.
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        /// The database file we tried to open.
        path: PathBuf,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A schema migration step failed; the database is left at the previous
    /// version because each step runs in its own transaction.
    #[error("database migration to schema version {version} failed: {source}")]
    Migration {
        /// The schema version the failed step would have produced.
        version: u32,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer version of the program; refusing
    /// to touch it avoids silently corrupting a schema we do not understand.
    #[error(
        "database schema version {found} is newer than this program supports ({supported}); upgrade confab"
    )]
    TooNew {
        /// Version found in the database file.
        found: u32,
        /// Highest version this build knows how to use.
        supported: u32,
    },
    /// A stored value could not be parsed (bad timestamp, UUID, secret
    /// length...). Indicates manual tampering or a bug, never user input.
    #[error("corrupt value in database: {0}")]
    Corrupt(String),
    /// The database thread is gone (it panicked, or shutdown has begun): nothing was read or
    /// written.
    #[error("the database is not available")]
    Gone,
    /// A sequence number does not fit SQLite's signed 64-bit integers.
    #[error("sequence number {0} is out of range for the database")]
    SeqOutOfRange(u64),
    /// Creating the directory that holds the database failed.
    #[error("cannot create directory {}: {source}", path.display())]
    Io {
        /// The directory we tried to create.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

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

/// Result type of every [`Store`] operation.
pub type Result<T> = std::result::Result<T, StoreError>;

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

    /// Registers a user. Returns [`StoreError::NameTaken`] if a user with the
    /// same name ignoring case exists; this is decided atomically by the
    /// `UNIQUE` constraint, so concurrent registrations cannot both succeed.
    pub fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        created: DateTime<Utc>,
    ) -> Result<UserRecord> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO users (name, name_key, password_hash, created) VALUES (?1, ?2, ?3, ?4)",
        )?;
        stmt.execute(params![
            name,
            name_key(name),
            password_hash,
            fmt_time(created)
        ])
        .map_err(map_unique)?;
        Ok(UserRecord {
            id: self.conn.last_insert_rowid(),
            name: name.to_owned(),
            password_hash: password_hash.to_owned(),
            created,
        })
    }

    /// Looks a user up by name, ignoring case, so logins work however the
    /// user capitalises their name.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, name, password_hash, created FROM users WHERE name_key = ?1",
        )?;
        let row = stmt
            .query_row([name_key(name)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        row.map(|(id, name, password_hash, created)| {
            Ok(UserRecord {
                id,
                name,
                password_hash,
                created: parse_time(&created)?,
            })
        })
        .transpose()
    }

    /// Returns the 32-byte secret used to sign login tokens, generating and
    /// storing a random one on first use. Persisting it means tokens survive
    /// server restarts; the insert-if-absent is a single statement so two
    /// processes racing on a fresh database agree on one secret.
    pub fn token_secret(&self) -> Result<[u8; 32]> {
        let mut fresh = [0u8; 32];
        rand::fill(&mut fresh[..]);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute(params![TOKEN_SECRET_KEY, &fresh[..]])?;
        let stored: Vec<u8> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([TOKEN_SECRET_KEY], |r| r.get(0))?;
        stored.as_slice().try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "token secret has {} bytes, expected 32",
                stored.len()
            ))
        })
    }

    /// Persists a new session. Returns [`StoreError::NameTaken`] if a session
    /// with the same name ignoring case exists.
    pub fn insert_session(&self, rec: &SessionRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id, name, name_key, creator, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                rec.id.to_string(),
                rec.name,
                rec.name.as_deref().map(name_key),
                rec.creator,
                fmt_time(rec.created),
            ])
            .map_err(map_unique)?;
        Ok(())
    }

    /// All sessions, oldest first (ties broken by id so the order is
    /// deterministic), for restoring session servers at start-up.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, name, creator, created FROM sessions ORDER BY created, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, creator, created) = row?;
            out.push(SessionRecord {
                id: parse_uuid(&id)?,
                name,
                creator,
                created: parse_time(&created)?,
            });
        }
        Ok(out)
    }

    /// Deletes a session and its whole history. Returns whether a session
    /// with that id existed, so callers can report "no such session".
    pub fn delete_session(&self, id: Uuid) -> Result<bool> {
        let id = id.to_string();
        let tx = self.conn.unchecked_transaction()?;
        // The foreign key cascades too, but deleting explicitly keeps this
        // correct even on a connection where foreign_keys was turned off.
        tx.prepare_cached("DELETE FROM messages WHERE session_id = ?1")?
            .execute([&id])?;
        let n = tx
            .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
            .execute([&id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Appends a batch of messages in one transaction (one fsync for the
    /// whole batch instead of one per message, which is what makes the hot
    /// path fast). A message whose `(session, seq)` is already stored is
    /// skipped, so re-sending a batch after an error is safe. Messages for a
    /// session that no longer exists are skipped as well: the session was
    /// deleted while they were in flight, and one stale message must not make
    /// the rest of the batch fail.
    pub fn append_messages(&self, batch: &[StoredMessage]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (session_id, seq, time, sender, text, client_id)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?1)",
            )?;
            for m in batch {
                stmt.execute(params![
                    m.session.to_string(),
                    seq_to_sql(m.seq)?,
                    fmt_time(m.time),
                    m.sender,
                    m.text,
                    m.client_id.map(|id| id as i64),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The highest stored sequence number of a session, or 0 if it has no
    /// messages; the session server resumes numbering after it on restart.
    pub fn last_seq(&self, session: Uuid) -> Result<u64> {
        let max: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(seq) FROM messages WHERE session_id = ?1")?
            .query_row([session.to_string()], |r| r.get(0))?;
        max.map_or(Ok(0), seq_from_sql)
    }

    /// Pages backwards through history: the newest `limit` messages with
    /// `seq < before` (or the newest overall if `before` is `None`), returned
    /// oldest first so they can be displayed directly.
    pub fn history(
        &self,
        session: Uuid,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        // `seq < before` is evaluated as `seq <= before - 1` so one statement
        // also covers "no bound" (i64::MAX) and a bound above every storable
        // seq; `before == 0` becomes -1 and matches nothing.
        let max_seq = match before.map(i64::try_from) {
            Some(Ok(before)) => before - 1,
            None | Some(Err(_)) => i64::MAX,
        };
        let mut out = self.query_messages(
            "SELECT seq, time, sender, text, client_id FROM messages
             WHERE session_id = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT ?3",
            session,
            max_seq,
            limit_to_sql(limit),
        )?;
        out.reverse();
        Ok(out)
    }

    /// Messages with `seq > after`, oldest first, at most `limit` of them;
    /// used to catch a reconnecting client up from the last seq it saw.
    pub fn messages_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let Ok(after) = i64::try_from(after) else {
            // Nothing storable is greater than this.
            return Ok(Vec::new());
        };
        self.query_messages(
            "SELECT seq, time, sender, text, client_id FROM messages
             WHERE session_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
            session,
            after,
            limit_to_sql(limit),
        )
    }

    /// Runs one of the message queries above; they all bind
    /// `(session, seq bound, limit)` and select the same columns.
    fn query_messages(
        &self,
        sql: &str,
        session: Uuid,
        bound: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![session.to_string(), bound, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, sender, text, client_id) = row?;
            out.push(StoredMessage {
                session,
                seq: seq_from_sql(seq)?,
                time: parse_time(&time)?,
                sender,
                text,
                // Stored from a u64 bit for bit.
                client_id: client_id.map(|id| id as u64),
            });
        }
        Ok(out)
    }
}

/// Applies every migration step the database has not yet seen, each in its
/// own `IMMEDIATE` transaction (taking the write lock up front so two
/// processes opening a fresh file cannot both run the same step).
fn migrate(conn: &mut Connection) -> Result<()> {
    let supported = MIGRATIONS.len() as u32;
    let found = read_version(conn)?;
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as u32 + 1;
        let step = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Re-check under the lock: another process may have migrated
            // between our first read and now.
            let current: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if current < version {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version)?;
            }
            tx.commit()
        };
        if read_version(conn)? < version {
            step(conn).map_err(|source| StoreError::Migration { version, source })?;
        }
    }
    Ok(())
}

/// Reads the schema version recorded by [`migrate`].
fn read_version(conn: &Connection) -> Result<u32> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 123_456_789)
            .unwrap()
    }

    fn session(store: &Store, name: &str, created: i64) -> SessionRecord {
        let rec = SessionRecord {
            id: Uuid::new_v4(),
            name: Some(name.to_owned()),
            creator: "alice".to_owned(),
            created: t(created),
        };
        store.insert_session(&rec).unwrap();
        rec
    }

    fn msg(session: Uuid, seq: u64) -> StoredMessage {
        StoredMessage {
            session,
            seq,
            time: t(seq as i64),
            sender: "alice".to_owned(),
            text: format!("message {seq}"),
            client_id: seq.is_multiple_of(2).then_some(u64::MAX - seq),
        }
    }

    fn seqs(msgs: &[StoredMessage]) -> Vec<u64> {
        msgs.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn migrations_are_idempotent_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/confab.db");
        let v1 = {
            let store = Store::open(&path).unwrap();
            store.create_user("alice", "hash", t(0)).unwrap();
            store.schema_version()
        };
        assert_eq!(v1, MIGRATIONS.len() as u32);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version(), v1);
        // Data survived and the tables were not recreated.
        assert!(store.user("alice").unwrap().is_some());
    }

    #[test]
    fn from_connection_migrates_and_rerunning_migrate_is_noop() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let store = Store::from_connection(conn).unwrap();
        assert_eq!(store.schema_version(), MIGRATIONS.len() as u32);
    }

    #[test]
    fn newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(
            Store::from_connection(conn),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn user_names_are_unique_ignoring_case() {
        let store = Store::open_in_memory().unwrap();
        let created = store.create_user("Alice", "$argon2id$x", t(5)).unwrap();
        assert_eq!(created.name, "Alice");
        assert!(matches!(
            store.create_user("aLICE", "other", t(6)),
            Err(StoreError::NameTaken)
        ));
        let found = store.user("ALICE").unwrap().unwrap();
        assert_eq!(found, created);
        assert!(store.user("bob").unwrap().is_none());
        let bob = store.create_user("bob", "h", t(7)).unwrap();
        assert_ne!(bob.id, created.id);
    }

    #[test]
    fn token_secret_is_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab.db");
        let first = Store::open(&path).unwrap().token_secret().unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.token_secret().unwrap(), first);
        assert_eq!(store.token_secret().unwrap(), first);
        assert_ne!(first, [0u8; 32]);
        // A different database gets a different secret.
        let other = Store::open_in_memory().unwrap().token_secret().unwrap();
        assert_ne!(other, first);
    }

    #[test]
    fn sessions_unique_ordered_and_deletable() {
        let store = Store::open_in_memory().unwrap();
        let b = session(&store, "Later", 10);
        let a = session(&store, "general", 1);
        let dup = SessionRecord {
            id: Uuid::new_v4(),
            name: Some("GENERAL".to_owned()),
            creator: "bob".to_owned(),
            created: t(20),
        };
        assert!(matches!(
            store.insert_session(&dup),
            Err(StoreError::NameTaken)
        ));
        assert_eq!(store.sessions().unwrap(), vec![a.clone(), b.clone()]);
        assert!(store.delete_session(a.id).unwrap());
        assert!(!store.delete_session(a.id).unwrap());
        assert_eq!(store.sessions().unwrap(), vec![b]);
        // The name is free again.
        store.insert_session(&dup).unwrap();
    }

    #[test]
    fn delete_session_removes_messages_via_cascade() {
        let store = Store::open_in_memory().unwrap();
        let s = session(&store, "s", 0);
        let keep = session(&store, "keep", 0);
        store
            .append_messages(&[msg(s.id, 1), msg(s.id, 2), msg(keep.id, 1)])
            .unwrap();
        // Exercise the foreign-key cascade on its own.
        store
            .conn
            .execute("DELETE FROM sessions WHERE id = ?1", [s.id.to_string()])
            .unwrap();
        let left: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
        // And through the API.
        assert!(store.delete_session(keep.id).unwrap());
        assert_eq!(store.last_seq(keep.id).unwrap(), 0);
        assert!(store.history(keep.id, None, 10).unwrap().is_empty());
    }

    #[test]
    fn duplicate_seq_is_ignored() {
        let store = Store::open_in_memory().unwrap();
        let s = session(&store, "s", 0);
        store
            .append_messages(&[msg(s.id, 1), msg(s.id, 2)])
            .unwrap();
        let mut changed = msg(s.id, 2);
        changed.text = "retry".to_owned();
        store
            .append_messages(&[changed, msg(s.id, 3), msg(s.id, 3)])
            .unwrap();
        let all = store.history(s.id, None, 100).unwrap();
        assert_eq!(seqs(&all), vec![1, 2, 3]);
        assert_eq!(all[1], msg(s.id, 2), "first write wins");
    }

    #[test]
    fn messages_for_unknown_session_are_skipped() {
        let store = Store::open_in_memory().unwrap();
        let s = session(&store, "s", 0);
        let ghost = Uuid::new_v4();
        store
            .append_messages(&[msg(s.id, 1), msg(ghost, 1), msg(s.id, 2)])
            .unwrap();
        assert_eq!(store.last_seq(s.id).unwrap(), 2);
        assert_eq!(store.last_seq(ghost).unwrap(), 0);
    }

    #[test]
    fn history_windows_and_ordering() {
        let store = Store::open_in_memory().unwrap();
        let s = session(&store, "s", 0);
        let other = session(&store, "other", 0);
        // Insert out of order to make sure ordering comes from the query.
        let batch: Vec<_> = (1..=20).rev().map(|i| msg(s.id, i)).collect();
        store.append_messages(&batch).unwrap();
        store.append_messages(&[msg(other.id, 99)]).unwrap();

        assert_eq!(store.last_seq(s.id).unwrap(), 20);
        assert_eq!(
            seqs(&store.history(s.id, None, 5).unwrap()),
            vec![16, 17, 18, 19, 20]
        );
        assert_eq!(
            seqs(&store.history(s.id, Some(16), 5).unwrap()),
            vec![11, 12, 13, 14, 15]
        );
        assert_eq!(seqs(&store.history(s.id, Some(3), 5).unwrap()), vec![1, 2]);
        assert!(store.history(s.id, Some(1), 5).unwrap().is_empty());
        assert!(store.history(s.id, None, 0).unwrap().is_empty());
        assert_eq!(store.history(s.id, Some(u64::MAX), 100).unwrap().len(), 20);

        assert_eq!(
            seqs(&store.messages_after(s.id, 17, 10).unwrap()),
            vec![18, 19, 20]
        );
        assert_eq!(
            seqs(&store.messages_after(s.id, 0, 3).unwrap()),
            vec![1, 2, 3]
        );
        assert!(store.messages_after(s.id, 20, 10).unwrap().is_empty());
        assert!(store.messages_after(s.id, u64::MAX, 10).unwrap().is_empty());

        // Round trip of every field, including sub-second time.
        let m = &store.messages_after(s.id, 6, 1).unwrap()[0];
        assert_eq!(*m, msg(s.id, 7));
    }

    #[test]
    fn seq_out_of_range_is_rejected() {
        let store = Store::open_in_memory().unwrap();
        let s = session(&store, "s", 0);
        assert!(matches!(
            store.append_messages(&[msg(s.id, u64::MAX)]),
            Err(StoreError::SeqOutOfRange(u64::MAX))
        ));
    }

    #[test]
    fn corrupt_timestamp_is_reported() {
        let store = Store::open_in_memory().unwrap();
        store.create_user("alice", "h", t(0)).unwrap();
        store
            .conn
            .execute("UPDATE users SET created = 'yesterday'", [])
            .unwrap();
        assert!(matches!(store.user("alice"), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn large_batch_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("big.db")).unwrap();
        let s = session(&store, "busy", 0);
        let batch: Vec<_> = (1..=10_000).map(|i| msg(s.id, i)).collect();
        store.append_messages(&batch).unwrap();
        assert_eq!(store.last_seq(s.id).unwrap(), 10_000);
        let tail = store.history(s.id, None, 50).unwrap();
        assert_eq!(tail.len(), 50);
        assert_eq!(tail.first().unwrap().seq, 9_951);
        assert_eq!(
            store.messages_after(s.id, 0, usize::MAX).unwrap().len(),
            10_000
        );
    }
}
