//! The session directory: what sessions exist, where they are served, and who is in them.
//!
//! The coordinator's request loop reads and changes it, and every session server's room reports
//! joins and leaves to it, so it sits behind a small handle with a lock that is never held across
//! an `.await`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::protocol::{DirectoryEntry, ErrorBody, ErrorCode, SessionInfo};
use crate::session::SessionObserver;

/// Names shown per session in a listing; `member_count` tells the rest.
const MEMBERS_PER_ENTRY: usize = 8;
/// Shortest id prefix accepted by `join`, so a typo does not land in a random session.
const MIN_PREFIX: usize = 4;

/// Shared handle to the directory.
#[derive(Clone, Default)]
pub struct Directory {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    by_id: HashMap<Uuid, Entry>,
    by_name: HashMap<String, Uuid>,
    /// Ids in creation order, so pages stay stable while sessions come and go at the end.
    order: Vec<Uuid>,
}

struct Entry {
    info: SessionInfo,
    members: BTreeSet<String>,
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when no session exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a session of this name exists (names compare without regard to case).
    pub fn name_taken(&self, name: &str) -> bool {
        self.lock().by_name.contains_key(&name.to_lowercase())
    }

    /// Adds a session; refuses a name already in use.
    pub fn insert(&self, info: SessionInfo) -> Result<(), ErrorBody> {
        let mut state = self.lock();
        if let Some(name) = &info.name {
            let key = name.to_lowercase();
            if state.by_name.contains_key(&key) {
                return Err(name_taken(name));
            }
            state.by_name.insert(key, info.id);
        }
        state.order.push(info.id);
        state.by_id.insert(
            info.id,
            Entry {
                info,
                members: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Takes a session out of the directory.
    pub fn remove(&self, id: Uuid) -> Option<SessionInfo> {
        let mut state = self.lock();
        let entry = state.by_id.remove(&id)?;
        if let Some(name) = &entry.info.name {
            state.by_name.remove(&name.to_lowercase());
        }
        state.order.retain(|i| *i != id);
        Some(entry.info)
    }

    /// Finds a session by exact id, by name (without regard to case), or by a unique id prefix.
    pub fn find(&self, key: &str) -> Result<SessionInfo, ErrorBody> {
        let state = self.lock();
        if let Ok(id) = key.parse::<Uuid>()
            && let Some(entry) = state.by_id.get(&id)
        {
            return Ok(entry.info.clone());
        }
        if let Some(id) = state.by_name.get(&key.to_lowercase()) {
            return Ok(state.by_id[id].info.clone());
        }
        let not_found = || {
            ErrorBody::new(
                ErrorCode::SessionNotFound,
                format!("session not found: {key}"),
            )
        };
        if key.len() < MIN_PREFIX {
            return Err(not_found());
        }
        let prefix = key.to_lowercase();
        let mut matches = state
            .order
            .iter()
            .filter(|id| id.to_string().starts_with(&prefix));
        match (matches.next(), matches.next()) {
            (Some(id), None) => Ok(state.by_id[id].info.clone()),
            (Some(_), Some(_)) => Err(ErrorBody::new(
                ErrorCode::Ambiguous,
                format!("{key} matches more than one session; give more of the id"),
            )),
            (None, _) => Err(not_found()),
        }
    }

    /// The entries from `cursor` on whose serialized size adds up to at most `budget` bytes
    /// (always at least one, if any is left), and the cursor of the next page.
    pub fn page(
        &self,
        cursor: usize,
        budget: usize,
    ) -> (Vec<DirectoryEntry>, Option<usize>, usize) {
        let state = self.lock();
        let total = state.order.len();
        let mut page = Vec::new();
        let mut used = 0;
        let mut next = cursor;
        for id in state.order.iter().skip(cursor) {
            let entry = &state.by_id[id];
            let item = DirectoryEntry {
                session: entry.info.clone(),
                member_count: entry.members.len(),
                members: entry
                    .members
                    .iter()
                    .take(MEMBERS_PER_ENTRY)
                    .cloned()
                    .collect(),
            };
            let size = serde_json::to_vec(&item).map(|v| v.len() + 1).unwrap_or(0);
            if used + size > budget && !page.is_empty() {
                break;
            }
            used += size;
            page.push(item);
            next += 1;
        }
        let next = (next < total).then_some(next);
        (page, next, total)
    }
}

impl SessionObserver for Directory {
    fn member_joined(&self, session: Uuid, user: &str) {
        if let Some(entry) = self.lock().by_id.get_mut(&session) {
            entry.members.insert(user.to_string());
        }
    }

    fn member_left(&self, session: Uuid, user: &str) {
        if let Some(entry) = self.lock().by_id.get_mut(&session) {
            entry.members.remove(user);
        }
    }
}

fn name_taken(name: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NameTaken,
        format!("a session named {name} already exists"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn info(name: Option<&str>) -> SessionInfo {
        SessionInfo {
            id: Uuid::new_v4(),
            name: name.map(String::from),
            server: "127.0.0.1:1".parse().unwrap(),
            created: Utc::now(),
        }
    }

    #[test]
    fn names_are_unique_without_regard_to_case() {
        let d = Directory::default();
        d.insert(info(Some("Rust"))).unwrap();
        let err = d.insert(info(Some("rust"))).unwrap_err();
        assert_eq!(err.code, ErrorCode::NameTaken);
    }

    #[test]
    fn find_by_id_name_and_prefix() {
        let d = Directory::default();
        let a = info(Some("lobby"));
        d.insert(a.clone()).unwrap();
        assert_eq!(d.find(&a.id.to_string()).unwrap(), a);
        assert_eq!(d.find("LOBBY").unwrap(), a);
        assert_eq!(d.find(&a.id.to_string()[..6]).unwrap(), a);
        assert_eq!(d.find("nope").unwrap_err().code, ErrorCode::SessionNotFound);
        assert_eq!(d.find("ab").unwrap_err().code, ErrorCode::SessionNotFound);
    }

    #[test]
    fn pages_respect_the_budget_and_cover_everything() {
        let d = Directory::default();
        for i in 0..50 {
            let s = info(Some(&format!("session-{i}")));
            d.insert(s.clone()).unwrap();
            for m in 0..20 {
                d.member_joined(s.id, &format!("member-with-long-name-{m}"));
            }
        }
        let mut cursor = 0;
        let mut seen = 0;
        loop {
            let (page, next, total) = d.page(cursor, 900);
            assert_eq!(total, 50);
            assert!(!page.is_empty());
            assert!(serde_json::to_vec(&page).unwrap().len() <= 900);
            assert!(
                page.iter()
                    .all(|e| e.member_count == 20 && e.members.len() == 8)
            );
            seen += page.len();
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        assert_eq!(seen, 50);
    }
}
