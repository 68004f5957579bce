//! The schema, as numbered steps recorded in `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use super::error::{Result, StoreError};

/// Schema migrations, applied in order. Step `i` (0-based) brings the schema
/// from version `i` to version `i + 1`; the version is recorded in
/// `PRAGMA user_version`. Append new steps at the end, never edit old ones:
/// databases in the field have already run them.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 3: who serves each session, and until when (a lease the serving coordinator renews):
    //    a coordinator group sharing one database serves each session once, and a server
    //    whose lease ran out writes nothing more.
    "ALTER TABLE sessions ADD COLUMN host TEXT;
     ALTER TABLE sessions ADD COLUMN server TEXT;
     ALTER TABLE sessions ADD COLUMN server_key TEXT;
     ALTER TABLE sessions ADD COLUMN lease_until INTEGER;",
    // 4: requests that changed something, by the digest of their bytes, for a few minutes: a
    //    client that retries one to another coordinator of the group (its answer was lost)
    //    gets it done once.
    "CREATE TABLE done_requests (
         digest BLOB PRIMARY KEY NOT NULL,
         at     INTEGER NOT NULL,
         result TEXT NOT NULL
     );",
    // 5: the processes that serve sessions for a group, with their load, each until its
    //    lease runs out (PostgreSQL only uses it; kept here so both count the same steps).
    "CREATE TABLE hosts (
         id          TEXT PRIMARY KEY NOT NULL,
         kind        TEXT NOT NULL,
         address     TEXT NOT NULL,
         members     INTEGER NOT NULL,
         sessions    INTEGER NOT NULL,
         lease_until INTEGER NOT NULL
     );",
];

/// Applies every migration step the database has not yet seen, each in its
/// own `IMMEDIATE` transaction (taking the write lock up front so two
/// processes opening a fresh file cannot both run the same step).
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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
pub(super) fn read_version(conn: &Connection) -> Result<u32> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}
