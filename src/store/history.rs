//! Chat history: batched appends, and reads by sequence number.

use rusqlite::params;

use super::*;

impl Store {
    /// Appends a batch of messages in one transaction (one fsync for the
    /// whole batch instead of one per message, which is what makes the hot
    /// path fast). A message whose `(session, seq)` is already stored is
    /// skipped, so re-sending a batch after an error is safe. Messages for a
    /// session that no longer exists are skipped as well: the session was
    /// deleted while they were in flight, and one stale message must not make
    /// the rest of the batch fail.
    ///
    /// With `host`, only messages of sessions that host serves (holds the claim of) are
    /// written: a server that lost its claim to another host writes nothing more.
    pub fn append_messages(&self, batch: &[StoredMessage], host: Option<Uuid>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (session_id, seq, time, sender, text, client_id)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?1 AND (?7 IS NULL OR host = ?7))",
            )?;
            let host = host.map(|h| h.to_string());
            for m in batch {
                stmt.execute(params![
                    m.session.to_string(),
                    seq_to_sql(m.seq)?,
                    fmt_time(m.time),
                    m.sender,
                    m.text,
                    m.client_id.map(|id| id as i64),
                    host,
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
