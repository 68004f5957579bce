//! Sessions: created, listed at start, deleted.

use rusqlite::{OptionalExtension, params};

use super::*;

impl Store {
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
}

/// Whether the claim went through, and if not, who serves the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This host serves it now (until its lease runs out unrenewed).
    Here,
    /// Another host does, on a live lease, at this server with this key.
    Elsewhere {
        /// Its session server.
        server: String,
        /// That server's Noise key.
        server_key: String,
    },
    /// No session has that id (it was closed).
    Gone,
}

/// Milliseconds since the Unix epoch: SQLite keeps leases as plain numbers, compared with the
/// clock of the one machine that uses the file.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Store {
    /// Claims session `id` for `host`, serving at `server` with `server_key`, for `lease`:
    /// taken only if nobody holds it, `host` does already, or the holder's lease ran out. One
    /// statement, so two hosts racing for it cannot both win.
    pub fn claim_session(
        &self,
        id: Uuid,
        host: Uuid,
        server: &str,
        server_key: &str,
        lease: std::time::Duration,
    ) -> Result<Claimed> {
        let now = now_ms();
        let until = now + lease.as_millis() as i64;
        let taken = self
            .conn
            .prepare_cached(
                "UPDATE sessions SET host = ?2, server = ?3, server_key = ?4, lease_until = ?5
                 WHERE id = ?1 AND (host IS NULL OR host = ?2 OR lease_until < ?6)",
            )?
            .execute(params![
                id.to_string(),
                host.to_string(),
                server,
                server_key,
                until,
                now
            ])?;
        if taken > 0 {
            return Ok(Claimed::Here);
        }
        let holder = self
            .conn
            .prepare_cached("SELECT server, server_key FROM sessions WHERE id = ?1")?
            .query_row([id.to_string()], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                ))
            })
            .optional()?;
        Ok(match holder {
            None => Claimed::Gone,
            Some((server, key)) => Claimed::Elsewhere {
                server: server.unwrap_or_default(),
                server_key: key.unwrap_or_default(),
            },
        })
    }

    /// Extends the lease of every session `host` serves; how many it serves.
    pub fn renew_claims(&self, host: Uuid, lease: std::time::Duration) -> Result<usize> {
        let until = now_ms() + lease.as_millis() as i64;
        Ok(self
            .conn
            .prepare_cached("UPDATE sessions SET lease_until = ?2 WHERE host = ?1")?
            .execute(params![host.to_string(), until])?)
    }

    /// Gives up `host`'s claim of session `id` (its server stopped).
    pub fn release_session(&self, id: Uuid, host: Uuid) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE sessions SET host = NULL, server = NULL, server_key = NULL,
                 lease_until = NULL WHERE id = ?1 AND host = ?2",
            )?
            .execute(params![id.to_string(), host.to_string()])?;
        Ok(())
    }
}

/// How long a done request is remembered for retries to another coordinator: longer than any
/// client retries (15 tries, at most 17 s) with room to spare.
pub(crate) const DONE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl Store {
    /// What the request whose bytes have this digest did (a user's name, a session's id), if
    /// any coordinator sharing this database did it already.
    pub fn done_result(&self, digest: &[u8; 32]) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT result FROM done_requests WHERE digest = ?1")?
            .query_row([&digest[..]], |r| r.get(0))
            .optional()?)
    }

    /// Whether the request with this digest was done already.
    pub fn done_before(&self, digest: &[u8; 32]) -> Result<bool> {
        Ok(self.done_result(digest)?.is_some())
    }

    /// Records that the request with this digest is done, and what it did.
    pub fn mark_done(&self, digest: &[u8; 32], result: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO done_requests (digest, at, result) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&digest[..], now_ms(), result])?;
        Ok(())
    }

    /// Forgets requests done longer ago than `DONE_TTL`.
    pub fn forget_done(&self) -> Result<()> {
        let before = now_ms() - DONE_TTL.as_millis() as i64;
        self.conn
            .prepare_cached("DELETE FROM done_requests WHERE at < ?1")?
            .execute([before])?;
        Ok(())
    }
}
