//! Who is online, and how to reach them: the index behind `online`, `peer` and `relay`.
//!
//! A user is online while in some running session (the session servers report joins and leaves)
//! or while their client keeps announcing itself (`announce`, every `ANNOUNCE_TTL / 3`), which a
//! client does from login on whether or not it is in a session. Either way the index keeps a
//! card per user: what peers need to send them private messages (their endpoint, identity key and
//! local addresses), and, for announced users, the address their announcement came from, which
//! is where the coordinator relays to: the client's own datagrams to the coordinator keep that
//! way through its NAT open.
//!
//! A pure core with time passed in: the directory holds it under its lock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::protocol::Member;

/// How long an announcement counts; clients announce again every third of it, so one lost
/// datagram (or two) does not take anyone offline.
pub const ANNOUNCE_TTL: Duration = Duration::from_secs(60);

/// One online user.
#[derive(Debug, Clone)]
struct Entry {
    /// The name as registered.
    name: String,
    /// Running sessions the user is in, and the card the newest of them gave.
    sessions: usize,
    in_session: Option<Member>,
    /// The last announcement, while it lasts.
    announced: Option<Announced>,
}

#[derive(Debug, Clone)]
struct Announced {
    card: Member,
    /// Where the announcement came from: where relayed datagrams go.
    from: SocketAddr,
    until: Instant,
}

impl Entry {
    fn announced(&self, now: Instant) -> Option<&Announced> {
        self.announced.as_ref().filter(|a| a.until > now)
    }

    fn is_online(&self, now: Instant) -> bool {
        self.sessions > 0 || self.announced(now).is_some()
    }
}

/// A user as `peer` gives them, and where a relayed datagram for them goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachable {
    /// Their card: endpoint, identity key, local addresses.
    pub card: Member,
    /// Where the coordinator relays to; `None` for a user only in a session (their client does
    /// not announce, so no way through their NAT is known to stay open).
    pub relay_to: Option<SocketAddr>,
}

/// The index, by lowercased name.
#[derive(Debug, Default)]
pub(super) struct Online {
    users: BTreeMap<String, Entry>,
    /// When expired announcements were last swept out.
    swept: Option<Instant>,
}

impl Online {
    fn entry(&mut self, name: &str) -> &mut Entry {
        self.users
            .entry(name.to_lowercase())
            .or_insert_with(|| Entry {
                name: name.to_string(),
                sessions: 0,
                in_session: None,
                announced: None,
            })
    }

    /// `member` joined a running session.
    pub(super) fn joined(&mut self, member: &Member) {
        let entry = self.entry(&member.user);
        entry.sessions += 1;
        entry.in_session = Some(member.clone());
    }

    /// `user` left a running session (or its server stopped).
    pub(super) fn left(&mut self, user: &str, now: Instant) {
        let key = user.to_lowercase();
        if let Some(entry) = self.users.get_mut(&key) {
            entry.sessions = entry.sessions.saturating_sub(1);
            if entry.sessions == 0 {
                entry.in_session = None;
            }
            if !entry.is_online(now) {
                self.users.remove(&key);
            }
        }
    }

    /// `card.user`'s client announced itself from `from`; it counts until `now + ANNOUNCE_TTL`.
    pub(super) fn announce(&mut self, card: Member, from: SocketAddr, now: Instant) {
        self.sweep(now);
        let entry = self.entry(&card.user);
        entry.announced = Some(Announced {
            card,
            from,
            until: now + ANNOUNCE_TTL,
        });
    }

    /// How to reach `user`, if online: the announced card first (it is the fresher, and comes
    /// with a way to relay), else the one their session gave.
    pub(super) fn peer(&self, user: &str, now: Instant) -> Option<Reachable> {
        let entry = self.users.get(&user.to_lowercase())?;
        match (entry.announced(now), &entry.in_session) {
            (Some(a), _) => Some(Reachable {
                card: a.card.clone(),
                relay_to: Some(a.from),
            }),
            (None, Some(card)) => Some(Reachable {
                card: card.clone(),
                relay_to: None,
            }),
            (None, None) => None,
        }
    }

    /// Names online (sorted without regard to case) from `cursor` on, as many as fit `budget`
    /// bytes of JSON; the next cursor and the total.
    pub(super) fn page(
        &mut self,
        cursor: usize,
        budget: usize,
        now: Instant,
    ) -> (Vec<String>, Option<usize>, usize) {
        self.sweep(now);
        let total = self.users.len();
        let mut page = Vec::new();
        let mut used = 0;
        for entry in self.users.values().skip(cursor) {
            // The name in quotes and a comma.
            let size = entry.name.len() + 3;
            if used + size > budget && !page.is_empty() {
                break;
            }
            used += size;
            page.push(entry.name.clone());
        }
        let next = cursor + page.len();
        (page, (next < total).then_some(next), total)
    }

    /// Drops users whose announcement ran out and who are in no session; at most once a second,
    /// so a burst of announcements or pages costs one walk.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.swept = Some(now);
        self.users.retain(|_, e| {
            if e.announced.as_ref().is_some_and(|a| a.until <= now) {
                e.announced = None;
            }
            e.is_online(now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(user: &str, port: u16) -> Member {
        Member {
            user: user.into(),
            udp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            key: None,
            local: Vec::new(),
        }
    }

    #[test]
    fn announced_users_are_online_until_the_announcement_runs_out() {
        let mut online = Online::default();
        let t0 = Instant::now();
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        online.announce(card("Dave", 1), from, t0);
        assert_eq!(online.page(0, 1000, t0), (vec!["Dave".into()], None, 1));
        let found = online.peer("dave", t0).expect("online");
        assert_eq!(
            (found.card.udp, found.relay_to),
            (card("", 1).udp, Some(from))
        );
        let later = t0 + ANNOUNCE_TTL + Duration::from_secs(1);
        assert_eq!(online.peer("dave", later), None, "the announcement ran out");
        assert_eq!(online.page(0, 1000, later), (vec![], None, 0));
        assert!(online.users.is_empty(), "swept out");
    }

    #[test]
    fn a_session_keeps_a_user_online_and_an_announcement_takes_precedence() {
        let mut online = Online::default();
        let t0 = Instant::now();
        online.joined(&card("bob", 1));
        let found = online.peer("BOB", t0).expect("in a session");
        assert_eq!((found.card.udp, found.relay_to), (card("", 1).udp, None));
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        online.announce(card("bob", 2), from, t0);
        assert_eq!(online.peer("bob", t0).unwrap().card.udp, card("", 2).udp);
        // After the announcement runs out, the session's card is what is left.
        let later = t0 + ANNOUNCE_TTL * 2;
        assert_eq!(online.peer("bob", later).unwrap().card.udp, card("", 1).udp);
        assert_eq!(online.page(0, 1000, later).2, 1);
        online.left("bob", later);
        assert_eq!(online.peer("bob", later), None);
        assert_eq!(online.page(0, 1000, later).2, 0);
    }
}
