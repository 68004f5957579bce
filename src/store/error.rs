//! What can go wrong in the store.

use std::path::PathBuf;

/// Errors returned by [`Store`](super::Store). Callers mostly care about [`NameTaken`]
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
    /// A PostgreSQL statement failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL server could not be reached (or did not answer in time).
    #[error("cannot reach PostgreSQL at {0}")]
    Unreachable(String),
    /// A PostgreSQL schema step failed; the database is left as it was (the steps run in one
    /// transaction).
    #[error("database migration to schema version {version} failed: {message}")]
    Schema {
        /// The schema version the failed step would have produced.
        version: u32,
        /// What PostgreSQL said.
        message: String,
    },
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

/// Result type of every [`Store`](super::Store) operation.
pub type Result<T> = std::result::Result<T, StoreError>;
