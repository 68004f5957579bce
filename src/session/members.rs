//! Who is in a room: each member's slot, names unique in any case, and the once-a-second look at
//! who has gone quiet (pinged), silent (to drop) or stuck (to drop as too slow).
//!
//! Plain data, owned by the room task. Dropping is the room's (it tells the others); this only
//! says who.

use std::collections::HashMap;
use std::collections::hash_map;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::clock::now_ms;
use super::events::ConnId;
use super::member::MemberLimits;
use super::outbox::{Outbox, shared};
use crate::bucket::TokenBucket;
use crate::protocol::{ErrorBody, ErrorCode, Member, ServerMsg};

/// One member, as the room holds it.
pub(crate) struct MemberSlot {
    pub(crate) user: Arc<str>,
    pub(crate) udp: Option<SocketAddr>,
    /// The identity key the member announced (already checked to be one).
    pub(crate) key: Option<Arc<str>>,
    /// Its socket's endpoints on its own network.
    pub(crate) local: Box<[SocketAddr]>,
    pub(crate) tx: Arc<Outbox>,
    pub(crate) kick: CancellationToken,
    /// The member's rate limit on group lines.
    pub(crate) bucket: TokenBucket,
    /// Has had its welcome: lines and notices before it are not for it.
    pub(crate) welcomed: bool,
    /// When the server last pinged the member, in ms on `now_ms`'s clock.
    last_ping_ms: u64,
}

impl MemberSlot {
    /// A member not yet welcomed.
    pub(crate) fn new(
        user: Arc<str>,
        udp: Option<SocketAddr>,
        (key, local): (Option<Arc<str>>, Box<[SocketAddr]>),
        tx: Arc<Outbox>,
        kick: CancellationToken,
        bucket: TokenBucket,
    ) -> Self {
        Self {
            user,
            udp,
            key,
            local,
            tx,
            kick,
            bucket,
            welcomed: false,
            last_ping_ms: 0,
        }
    }

    /// As the others see it.
    pub(crate) fn member(&self) -> Member {
        Member {
            user: self.user.to_string(),
            udp: self.udp,
            key: self.key.as_deref().map(str::to_owned),
            local: self.local.to_vec(),
        }
    }
}

/// The members of one room.
#[derive(Default)]
pub(crate) struct Members {
    by_conn: HashMap<ConnId, MemberSlot>,
    /// Lowercased names present, for case-insensitive uniqueness.
    names: HashMap<String, ConnId>,
}

/// Who the sweep found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sweep {
    /// Queues past their mark for the drain timeout: they hold every sender back.
    pub(crate) stuck: Vec<ConnId>,
    /// Nothing heard, not even a ping or pong, within the silence limit.
    pub(crate) silent: Vec<ConnId>,
}

impl Members {
    pub(crate) fn len(&self) -> usize {
        self.by_conn.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    pub(crate) fn get(&self, conn: ConnId) -> Option<&MemberSlot> {
        self.by_conn.get(&conn)
    }

    pub(crate) fn get_mut(&mut self, conn: ConnId) -> Option<&mut MemberSlot> {
        self.by_conn.get_mut(&conn)
    }

    pub(crate) fn iter(&self) -> hash_map::Iter<'_, ConnId, MemberSlot> {
        self.by_conn.iter()
    }

    /// The member of that name, in any case.
    pub(crate) fn named(&self, user: &str) -> Option<&MemberSlot> {
        self.names
            .get(&user.to_lowercase())
            .and_then(|c| self.by_conn.get(c))
    }

    /// Adds a member, unless its name is taken (in any case) or the room holds `max` already.
    pub(crate) fn add(
        &mut self,
        conn: ConnId,
        slot: MemberSlot,
        max: usize,
    ) -> Result<(), ErrorBody> {
        let key = slot.user.to_lowercase();
        if self.names.contains_key(&key) {
            return Err(ErrorBody::new(
                ErrorCode::NameTaken,
                format!("{} is already in this session", slot.user),
            ));
        }
        if self.by_conn.len() >= max {
            return Err(ErrorBody::new(
                ErrorCode::Full,
                format!("this session is full ({max} members)"),
            ));
        }
        self.names.insert(key, conn);
        self.by_conn.insert(conn, slot);
        Ok(())
    }

    pub(crate) fn remove(&mut self, conn: ConnId) -> Option<MemberSlot> {
        let slot = self.by_conn.remove(&conn)?;
        self.names.remove(&slot.user.to_lowercase());
        Some(slot)
    }

    /// Empties the room, handing back every slot.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = MemberSlot> + '_ {
        self.names.clear();
        self.by_conn.drain().map(|(_, slot)| slot)
    }

    /// Pings the welcomed members not heard from for a third of the silence limit (at most once
    /// per third, as IRC servers do: a client that only listens stays in by answering), and says
    /// who is stuck or silent. `open_for` is how long the room's gate has been open (`None`:
    /// closed now): readers held at the gate read no pings, so time held is nobody's silence.
    pub(crate) fn sweep(&mut self, limits: &MemberLimits, open_for: Option<u64>) -> Sweep {
        let limit = limits.idle.as_millis() as u64;
        let drain = limits.drain_timeout.as_millis() as u64;
        let every = limit / 3;
        let now = now_ms();
        let ping = shared(&ServerMsg::Ping);
        let mut found = Sweep::default();
        for (&conn, slot) in &mut self.by_conn {
            if slot.tx.pressed_ms().is_some_and(|ms| ms >= drain) {
                found.stuck.push(conn);
                continue;
            }
            let silent = slot.tx.silent_ms();
            if open_for.is_some_and(|open| silent.min(open) >= limit) {
                found.silent.push(conn);
                continue;
            }
            if slot.welcomed && silent >= every && now.saturating_sub(slot.last_ping_ms) >= every {
                let _ = slot.tx.try_send(ping.clone());
                slot.last_ping_ms = now;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::gate::Gate;

    fn slot(user: &str) -> MemberSlot {
        let tx = Arc::new(Outbox::new(4, 1 << 20, Arc::new(Gate::default())));
        tx.heard();
        let mut slot = MemberSlot::new(
            user.into(),
            None,
            (None, Box::default()),
            tx,
            CancellationToken::new(),
            TokenBucket::new(None, 1.0),
        );
        slot.welcomed = true;
        slot
    }

    fn limits() -> MemberLimits {
        MemberLimits {
            idle: Duration::from_secs(6),
            drain_timeout: Duration::from_secs(4),
            ..MemberLimits::default()
        }
    }

    /// Lines queued for `conn` that are pings (taken off its queue).
    fn pings(m: &Members, conn: ConnId) -> usize {
        let tx = &m.get(conn).unwrap().tx;
        let mut out = Vec::new();
        let _ = futures::FutureExt::now_or_never(tx.recv_many(&mut out, 100, 1 << 20));
        let ping = shared(&ServerMsg::Ping);
        out.iter().filter(|l| l.as_ref() == ping.as_ref()).count()
    }

    #[test]
    fn names_are_unique_in_any_case_and_the_room_has_a_size() {
        let mut m = Members::default();
        m.add(1, slot("alice"), 2).unwrap();
        assert_eq!(
            m.add(2, slot("ALICE"), 2).unwrap_err().code,
            ErrorCode::NameTaken
        );
        m.add(3, slot("bob"), 2).unwrap();
        assert_eq!(
            m.add(4, slot("carol"), 2).unwrap_err().code,
            ErrorCode::Full
        );
        assert_eq!(&*m.named("Bob").unwrap().user, "bob");
        m.remove(1);
        m.add(2, slot("Alice"), 2).unwrap();
        assert_eq!(m.drain().count(), 2);
        assert!(m.is_empty() && m.named("alice").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_quiet_are_pinged_each_third_and_the_silent_found_at_the_limit() {
        let mut m = Members::default();
        m.add(1, slot("quiet"), 10).unwrap();
        m.add(2, slot("chatty"), 10).unwrap();
        let open = Some(u64::MAX);
        tokio::time::advance(Duration::from_millis(2100)).await;
        m.get(2).unwrap().tx.heard();
        assert_eq!(m.sweep(&limits(), open), Sweep::default());
        assert_eq!((pings(&m, 1), pings(&m, 2)), (1, 0));
        tokio::time::advance(Duration::from_millis(1000)).await;
        m.sweep(&limits(), open);
        assert_eq!(pings(&m, 1), 0, "not again within a third");
        tokio::time::advance(Duration::from_millis(1000)).await;
        m.sweep(&limits(), open);
        assert_eq!(pings(&m, 1), 1);
        // Held at a closed gate, silence does not count; open again, it does.
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert!(m.sweep(&limits(), None).silent.is_empty());
        assert!(m.sweep(&limits(), Some(100)).silent.is_empty());
        assert_eq!(m.sweep(&limits(), open).silent, vec![1]);
    }
}
