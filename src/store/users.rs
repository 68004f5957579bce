//! Users, the token-signing secret and the coordinator's private key.

use rusqlite::{OptionalExtension, params};

use super::*;

/// Key in the `meta` table under which the token-signing secret is kept.
pub(super) const TOKEN_SECRET_KEY: &str = "token_secret";
/// Key in the `meta` table under which the coordinator's private key is kept.
pub(super) const IDENTITY_KEY: &str = "identity_key";

impl Store {
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
    /// server restarts.
    pub fn token_secret(&self) -> Result<[u8; 32]> {
        self.secret(TOKEN_SECRET_KEY)
    }

    /// Returns the coordinator's long-term private key (X25519), generating and storing a random
    /// one on first use: the database names the coordinator's identity, as clients pin it.
    pub fn identity_secret(&self) -> Result<[u8; 32]> {
        self.secret(IDENTITY_KEY)
    }

    /// A random 32-byte secret kept under `key`; the insert-if-absent is a single statement, so
    /// two processes racing on a fresh database agree on one.
    fn secret(&self, key: &str) -> Result<[u8; 32]> {
        let mut fresh = [0u8; 32];
        rand::fill(&mut fresh[..]);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute(params![key, &fresh[..]])?;
        let stored: Vec<u8> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))?;
        stored.as_slice().try_into().map_err(|_| {
            StoreError::Corrupt(format!("{key} has {} bytes, expected 32", stored.len()))
        })
    }
}
