//! The session directory: what sessions exist, where they are served, and who is in them.
//!
//! The coordinator's request loop reads and changes it, and every session server's room reports
//! joins and leaves to it, so it sits behind a small handle with a lock that is never held across
//! an `.await`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, MutexGuard};
use uuid::Uuid;

use super::online::{Online, Reachable};
use crate::protocol::{DirectoryEntry, ErrorBody, ErrorCode, Member, SessionInfo};
use crate::session::{SessionObserver, Stop};
use crate::store::Members;
use crate::store::feed::MemberFeed;

/// Names shown per session in a listing; `member_count` tells the rest.
const MEMBERS_PER_ENTRY: usize = 8;
/// Shortest id prefix accepted by `join`, so a typo does not land in a random session.
const MIN_PREFIX: usize = 4;

/// A session as the directory knows it, running or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Stable identifier.
    pub id: Uuid,
    /// Unique name, if any.
    pub name: Option<String>,
    /// Who created it.
    pub creator: String,
    /// When.
    pub created: DateTime<Utc>,
    /// Its server's address while one runs.
    pub server: Option<SocketAddr>,
}

impl From<crate::store::SessionRecord> for Listed {
    /// A stored session, with no server (yet).
    fn from(rec: crate::store::SessionRecord) -> Listed {
        Listed {
            id: rec.id,
            name: rec.name,
            creator: rec.creator,
            created: rec.created,
            server: None,
        }
    }
}

impl Listed {
    /// The join answer for this session served (elsewhere in the group) at `server`.
    pub fn served_at(self, server: SocketAddr, server_key: String) -> SessionInfo {
        SessionInfo {
            id: self.id,
            name: self.name,
            server,
            server_key: Some(server_key),
            creator: self.creator,
            created: self.created,
        }
    }

    /// The join answer for a running session, whose server has the public key `server_key`.
    pub fn info(&self, server_key: &str) -> Option<SessionInfo> {
        Some(SessionInfo {
            id: self.id,
            name: self.name.clone(),
            server: self.server?,
            server_key: Some(server_key.to_owned()),
            creator: self.creator.clone(),
            created: self.created,
        })
    }
}

/// Shared handle to the directory.
#[derive(Clone, Default)]
pub struct Directory {
    inner: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("sessions", &self.len())
            .finish()
    }
}

#[derive(Default)]
struct State {
    by_id: HashMap<Uuid, Entry>,
    by_name: HashMap<String, Uuid>,
    /// Ids in creation order, so pages stay stable while sessions come and go at the end.
    order: Vec<Uuid>,
    /// Sessions per creator (lowercased), for the per-account cap.
    by_creator: HashMap<String, usize>,
    /// Who is online (in a running session, or announced) and how to reach them.
    online: Online,
    /// Where the members of this coordinator's own sessions are told to the group.
    feed: Option<MemberFeed>,
}

struct Entry {
    listed: Listed,
    server: Server,
    members: BTreeSet<String>,
    /// Where another process of the group serves it, and who is in it there, as that process
    /// said (for `list`; a join still asks the database).
    remote: Option<Remote>,
}

#[derive(Default)]
struct Remote {
    host: Option<Uuid>,
    server: Option<SocketAddr>,
    count: usize,
    names: Vec<String>,
}

/// Where a session's server is in its life.
enum Server {
    Stopped,
    /// Its listener is bound and its history being read: a `join` waits for this start rather
    /// than making a second server.
    Starting,
    Running(Running),
}

struct Running {
    /// Tells apart one run of a session's server from the next, so a server that stopped late
    /// cannot mark its successor as stopped.
    generation: u64,
    stop: Stop,
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when no session exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sessions whose server runs or is starting.
    pub fn running(&self) -> usize {
        self.lock()
            .by_id
            .values()
            .filter(|e| !matches!(e.server, Server::Stopped))
            .count()
    }

    /// What this process serves: members connected to its running sessions, and how many
    /// sessions run (for its heartbeat as a host of the group).
    pub fn load(&self) -> (usize, usize) {
        let state = self.lock();
        state
            .by_id
            .values()
            .filter(|e| !matches!(e.server, Server::Stopped))
            .fold((0, 0), |(members, sessions), e| {
                (members + e.members.len(), sessions + 1)
            })
    }

    /// Tells the group who is in this coordinator's own sessions from now on.
    pub(super) fn publish_to(&self, feed: MemberFeed) {
        self.lock().feed = Some(feed);
    }

    /// Another process of the group (`host`) serves session `id` at `server`.
    pub(super) fn served_elsewhere(&self, id: Uuid, host: Uuid, server: SocketAddr) {
        if let Some(entry) = self.lock().by_id.get_mut(&id) {
            let remote = entry.remote.get_or_insert_with(Remote::default);
            if remote.host != Some(host) {
                // A new server: the old one's members are not this one's.
                *remote = Remote::default();
            }
            remote.host = Some(host);
            remote.server = Some(server);
        }
    }

    /// Who is in a session another process of the group serves, and where.
    pub(super) fn members_elsewhere(&self, members: Members) {
        if let Some(entry) = self.lock().by_id.get_mut(&members.id)
            && !matches!(entry.server, Server::Running(_))
        {
            entry.remote = Some(Remote {
                host: Some(members.host),
                server: Some(members.server),
                count: members.count,
                names: members.names,
            });
        }
    }

    /// Tells the group again who is in each session this coordinator serves (another process
    /// started listening and heard nothing before).
    pub(super) fn republish(&self) {
        let state = self.lock();
        let Some(feed) = &state.feed else { return };
        for (id, entry) in &state.by_id {
            if let (Server::Running(_), Some(server)) = (&entry.server, entry.listed.server) {
                feed.changed(*id, server, entry.members.len(), entry.members.iter());
            }
        }
    }

    /// Nobody serves session `id` any more (its server stopped elsewhere).
    pub(super) fn released_elsewhere(&self, id: Uuid) {
        if let Some(entry) = self.lock().by_id.get_mut(&id) {
            entry.remote = None;
        }
    }

    /// Forgets where sessions were served by processes no longer alive (their heartbeat ran
    /// out: killed, or cut off), so `list` does not show their members.
    pub(super) fn keep_served_by(&self, live: &std::collections::HashSet<Uuid>) {
        for entry in self.lock().by_id.values_mut() {
            if entry
                .remote
                .as_ref()
                .is_some_and(|r| r.host.is_some_and(|h| !live.contains(&h)))
            {
                entry.remote = None;
            }
        }
    }

    /// Whether a session of this name exists (names compare without regard to case).
    pub fn name_taken(&self, name: &str) -> bool {
        self.lock().by_name.contains_key(&name.to_lowercase())
    }

    /// How many sessions `user` (any case) created that still exist.
    pub fn created_by(&self, user: &str) -> usize {
        self.lock()
            .by_creator
            .get(&user.to_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Adds a session (with no server yet); refuses a name already in use. One already here
    /// (the group's announcement of a session this coordinator created) is left as it is.
    pub fn insert(&self, listed: Listed) -> Result<(), ErrorBody> {
        let mut state = self.lock();
        if state.by_id.contains_key(&listed.id) {
            return Ok(());
        }
        if let Some(name) = &listed.name {
            let key = name.to_lowercase();
            if state.by_name.contains_key(&key) {
                return Err(name_taken(name));
            }
            state.by_name.insert(key, listed.id);
        }
        state.order.push(listed.id);
        *state
            .by_creator
            .entry(listed.creator.to_lowercase())
            .or_insert(0) += 1;
        state.by_id.insert(
            listed.id,
            Entry {
                listed,
                server: Server::Stopped,
                members: BTreeSet::new(),
                remote: None,
            },
        );
        Ok(())
    }

    /// Marks the server of a stopped session `id` as starting.
    pub(super) fn set_starting(&self, id: Uuid) {
        if let Some(entry) = self.lock().by_id.get_mut(&id)
            && matches!(entry.server, Server::Stopped)
        {
            entry.server = Server::Starting;
        }
    }

    /// Whether the server of `id` is starting (false once the session is closed).
    pub(super) fn is_starting(&self, id: Uuid) -> bool {
        self.lock()
            .by_id
            .get(&id)
            .is_some_and(|e| matches!(e.server, Server::Starting))
    }

    /// Marks a server that could not start as stopped (a later `join` tries again).
    pub(super) fn set_start_failed(&self, id: Uuid) {
        if let Some(entry) = self.lock().by_id.get_mut(&id)
            && matches!(entry.server, Server::Starting)
        {
            entry.server = Server::Stopped;
        }
    }

    /// Records that a server for `id` runs at `server`.
    pub fn set_running(&self, id: Uuid, server: SocketAddr, generation: u64, stop: Stop) {
        if let Some(entry) = self.lock().by_id.get_mut(&id) {
            entry.listed.server = Some(server);
            entry.server = Server::Running(Running { generation, stop });
        }
    }

    /// Stops every running server at once, without a word to members (they reconnect through
    /// the group): for a coordinator whose claims on them may have passed to another. Returns
    /// how many ran.
    pub fn drop_all_running(&self) -> usize {
        let state = self.lock();
        let mut n = 0;
        for entry in state.by_id.values() {
            if let Server::Running(running) = &entry.server {
                running.stop.crash.cancel();
                n += 1;
            }
        }
        n
    }

    /// Fault injection: kills the running server of `id` as a panic would. Returns whether one ran.
    #[cfg(feature = "test-util")]
    pub fn crash(&self, id: Uuid) -> bool {
        match self.lock().by_id.get(&id).map(|e| &e.server) {
            Some(Server::Running(running)) => {
                running.stop.crash();
                true
            }
            _ => false,
        }
    }

    /// Records that the server of that generation stopped; its members are gone with it.
    pub fn set_stopped(&self, id: Uuid, generation: u64) {
        let mut state = self.lock();
        let gone = match state.by_id.get_mut(&id) {
            Some(entry) if matches!(&entry.server, Server::Running(r) if r.generation == generation) =>
            {
                entry.listed.server = None;
                entry.server = Server::Stopped;
                std::mem::take(&mut entry.members)
            }
            _ => return,
        };
        let now = Instant::now();
        for user in &gone {
            state.online.left(user, now);
        }
    }

    /// Takes a session out of the directory and stops its server, if one runs, telling its
    /// members that `by` closed it.
    pub fn remove(&self, id: Uuid, by: &str) -> Option<Listed> {
        let mut state = self.lock();
        let entry = state.by_id.remove(&id)?;
        let now = Instant::now();
        for user in &entry.members {
            state.online.left(user, now);
        }
        if let Some(name) = &entry.listed.name {
            state.by_name.remove(&name.to_lowercase());
        }
        state.order.retain(|i| *i != id);
        let creator = entry.listed.creator.to_lowercase();
        if let Some(n) = state.by_creator.get_mut(&creator) {
            *n -= 1;
            if *n == 0 {
                state.by_creator.remove(&creator);
            }
        }
        if let Server::Running(running) = entry.server {
            running.stop.close_by(by);
        }
        Some(entry.listed)
    }

    /// Finds a session by exact id, else by name (without regard to case) or unique id prefix.
    /// A key that is both a name and a prefix of another session's id is refused as ambiguous,
    /// naming both: otherwise whoever names a session after someone's id prefix would capture
    /// every `join` typed with that prefix.
    pub fn find(&self, key: &str) -> Result<Listed, ErrorBody> {
        let state = self.lock();
        if let Some(entry) = key.parse::<Uuid>().ok().and_then(|id| state.by_id.get(&id)) {
            return Ok(entry.listed.clone());
        }
        let mut found: Vec<Uuid> = state
            .by_name
            .get(&key.to_lowercase())
            .copied()
            .into_iter()
            .collect();
        if key.len() >= MIN_PREFIX {
            let prefix = key.to_lowercase();
            for id in &state.order {
                if id.to_string().starts_with(&prefix) && !found.contains(id) {
                    found.push(*id);
                }
            }
        }
        match found.as_slice() {
            [] => Err(ErrorBody::new(
                ErrorCode::SessionNotFound,
                format!("session not found: {key}"),
            )),
            [id] => Ok(state.by_id[id].listed.clone()),
            [..] => {
                let named = |id: &Uuid| match &state.by_id[id].listed.name {
                    Some(name) => format!("{id} ({name})"),
                    None => id.to_string(),
                };
                let shown: Vec<String> = found.iter().take(3).map(named).collect();
                let more = match found.len() {
                    n if n > 3 => format!(" and {} more", n - 3),
                    _ => String::new(),
                };
                Err(ErrorBody::new(
                    ErrorCode::Ambiguous,
                    format!(
                        "{key} could be session {}{more}; give more of the id",
                        shown.join(" or ")
                    ),
                ))
            }
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
            let l = &entry.listed;
            let here = !matches!(entry.server, Server::Stopped);
            let (server, member_count, members) = match &entry.remote {
                Some(r) if !here => (
                    r.server,
                    r.count,
                    r.names.iter().take(MEMBERS_PER_ENTRY).cloned().collect(),
                ),
                _ => (
                    l.server,
                    entry.members.len(),
                    entry
                        .members
                        .iter()
                        .take(MEMBERS_PER_ENTRY)
                        .cloned()
                        .collect(),
                ),
            };
            let item = DirectoryEntry {
                id: l.id,
                name: l.name.clone(),
                server,
                creator: l.creator.clone(),
                created: l.created,
                member_count,
                members,
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

impl Directory {
    /// Who is online (in some running session, or announced), by name (sorted without regard
    /// to case), from `cursor` on, as many as fit `budget` bytes of JSON; the next cursor and
    /// the total.
    pub fn online(&self, cursor: usize, budget: usize) -> (Vec<String>, Option<usize>, usize) {
        self.lock().online.page(cursor, budget, Instant::now())
    }

    /// Records that `card.user`'s client announced itself from `from` (see `online.rs`).
    pub fn announce(&self, card: Member, from: SocketAddr) {
        self.lock().online.announce(card, from, Instant::now());
    }

    /// How to reach `user`, if online.
    pub fn peer(&self, user: &str) -> Option<Reachable> {
        self.lock().online.peer(user, Instant::now())
    }
}

impl SessionObserver for Directory {
    fn member_joined(&self, session: Uuid, member: &Member) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(entry) = state.by_id.get_mut(&session)
            && entry.members.insert(member.user.clone())
        {
            state.online.joined(member);
            if let (Some(feed), Some(server)) = (&state.feed, entry.listed.server) {
                feed.changed(session, server, entry.members.len(), entry.members.iter());
            }
        }
    }

    fn member_left(&self, session: Uuid, user: &str) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(entry) = state.by_id.get_mut(&session)
            && entry.members.remove(user)
        {
            state.online.left(user, Instant::now());
            if let (Some(feed), Some(server)) = (&state.feed, entry.listed.server) {
                feed.changed(session, server, entry.members.len(), entry.members.iter());
            }
        }
    }
}

/// The refusal of a session name already in use.
pub(super) fn name_taken(name: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NameTaken,
        format!("a session named {name} already exists"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str) -> Member {
        Member {
            user: user.into(),
            udp: None,
            key: None,
            local: Vec::new(),
        }
    }

    fn info(name: Option<&str>) -> Listed {
        Listed {
            id: Uuid::new_v4(),
            name: name.map(String::from),
            creator: "alice".into(),
            server: Some("127.0.0.1:1".parse().unwrap()),
            created: Utc::now(),
        }
    }

    #[test]
    fn online_counts_a_user_once_across_sessions_and_pages_within_the_budget() {
        let d = Directory::default();
        let (a, b) = (info(Some("one")), info(Some("two")));
        d.insert(a.clone()).unwrap();
        d.insert(b.clone()).unwrap();
        d.member_joined(a.id, &member("Bob"));
        d.member_joined(b.id, &member("Bob"));
        d.member_joined(a.id, &member("alice"));
        assert_eq!(
            d.online(0, 1000),
            (vec!["alice".into(), "Bob".into()], None, 2)
        );
        d.member_left(a.id, "Bob");
        assert_eq!(d.online(0, 1000).2, 2, "still in the other session");
        d.remove(b.id, "alice");
        assert_eq!(d.online(0, 1000), (vec!["alice".into()], None, 1));
        // Pages: 100 names of 30 characters, 33 bytes each, 330 bytes a page.
        for i in 0..100 {
            d.member_joined(a.id, &member(&format!("user{i:026}")));
        }
        let (mut seen, mut cursor) = (Vec::new(), Some(0));
        while let Some(c) = cursor {
            let (page, next, total) = d.online(c, 330);
            assert_eq!(total, 101);
            assert!(page.iter().map(|n| n.len() + 3).sum::<usize>() <= 330);
            seen.extend(page);
            cursor = next;
        }
        assert_eq!(seen.len(), 101);
        // A server that stops takes its members offline.
        d.set_running(a.id, "127.0.0.1:1".parse().unwrap(), 7, Stop::default());
        d.set_stopped(a.id, 7);
        assert_eq!(d.online(0, 1000).2, 0);
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
    fn a_name_that_looks_like_an_id_prefix_does_not_capture_the_prefix() {
        let d = Directory::default();
        let victim = info(None);
        d.insert(victim.clone()).unwrap();
        let prefix = victim.id.to_string()[..8].to_string();
        let squatter = info(Some(&prefix.to_uppercase()));
        d.insert(squatter.clone()).unwrap();
        let e = d.find(&prefix).unwrap_err();
        assert_eq!(e.code, ErrorCode::Ambiguous);
        assert!(e.message.contains(&victim.id.to_string()), "{}", e.message);
        assert!(
            e.message.contains(&squatter.id.to_string()),
            "{}",
            e.message
        );
        // The whole id still finds each of them.
        assert_eq!(d.find(&victim.id.to_string()).unwrap(), victim);
        assert_eq!(d.find(&squatter.id.to_string()).unwrap(), squatter);
        // A name that is its own session's id prefix is no ambiguity.
        let own = info(None);
        let own = Listed {
            name: Some(own.id.to_string()[..6].to_string()),
            ..own
        };
        d.insert(own.clone()).unwrap();
        assert_eq!(d.find(&own.id.to_string()[..6]).unwrap(), own);
    }

    #[test]
    fn a_starting_server_counts_as_running_until_it_runs_or_fails() {
        let d = Directory::default();
        let s = Listed {
            server: None,
            ..info(Some("idle"))
        };
        d.insert(s.clone()).unwrap();
        assert_eq!(d.running(), 0);
        d.set_starting(s.id);
        assert!(d.is_starting(s.id));
        assert_eq!(d.running(), 1, "its listener is bound");
        assert_eq!(
            d.find("idle").unwrap().server,
            None,
            "no address to join yet"
        );
        d.set_start_failed(s.id);
        assert!(!d.is_starting(s.id));
        assert_eq!(d.running(), 0);
        d.set_starting(s.id);
        d.remove(s.id, "alice");
        assert!(!d.is_starting(s.id), "closed while starting");
    }

    #[test]
    fn pages_respect_the_budget_and_cover_everything() {
        let d = Directory::default();
        for i in 0..50 {
            let s = info(Some(&format!("session-{i}")));
            d.insert(s.clone()).unwrap();
            for m in 0..20 {
                d.member_joined(s.id, &member(&format!("member-with-long-name-{m}")));
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
