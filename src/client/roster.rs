//! The client's copy of the session roster.
//!
//! The session reader task keeps it current from welcomes and presence notices; the private
//! message code reads it to find a peer's endpoint and to check that a datagram claiming to come
//! from a member really comes from that member's endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::{Departure, Member};

/// Shared handle; names compare without regard to case, as the server compares them.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    inner: Arc<Mutex<HashMap<String, Member>>>,
}

impl Roster {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Member>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything (a welcome).
    pub fn replace(&self, members: &[Member]) {
        let mut map = self.lock();
        map.clear();
        for m in members {
            map.insert(m.user.to_lowercase(), m.clone());
        }
    }

    /// Applies a presence notice.
    pub fn apply(&self, joined: &[Member], left: &[Departure]) {
        let mut map = self.lock();
        for d in left {
            map.remove(&d.user.to_lowercase());
        }
        for m in joined {
            map.insert(m.user.to_lowercase(), m.clone());
        }
    }

    /// Forgets everyone (after leaving).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The member of this name, if present.
    pub fn get(&self, user: &str) -> Option<Member> {
        self.lock().get(&user.to_lowercase()).cloned()
    }

    /// True if `user` is present and its endpoint is `addr`: the test against forged datagrams.
    pub fn is_at(&self, user: &str, addr: SocketAddr) -> bool {
        self.lock()
            .get(&user.to_lowercase())
            .is_some_and(|m| m.udp == addr)
    }

    /// Everyone, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self.lock().values().cloned().collect();
        v.sort_by_key(|m| m.user.to_lowercase());
        v
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
