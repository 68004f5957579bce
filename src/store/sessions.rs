//! Sessions: created, listed at start, deleted.

use rusqlite::params;

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
