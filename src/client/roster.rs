//! The client's copy of the session roster.
//!
//! The session task keeps it current from welcomes and presence notices; the private message
//! code reads it to find a peer's endpoint and to check that a datagram claiming to come from a
//! member really comes from that member's endpoint. In a large session the server sends counts
//! instead of names, so the roster is partial: members we need are looked up on demand.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::protocol::{Departure, Member};

/// Shared handle; names compare without regard to case, as the server compares them.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<String, Member>,
    /// How many the server says are present (may exceed `members` in a large session).
    count: usize,
    /// Names the server said are not present, answering a lookup.
    absent: HashSet<String>,
    /// Where lookups and relayed datagrams go: the session task sends them to the server.
    lookups: Option<mpsc::Sender<Ask>>,
    /// Where datagrams relayed to us by the server go: the hub that reads private messages.
    inbox: Option<mpsc::Sender<(String, Vec<u8>)>>,
}

/// What the client asks of the session server on the roster's behalf.
#[derive(Debug)]
pub(super) enum Ask {
    /// A member's endpoint (and key).
    Lookup(String),
    /// Pass a sealed private datagram to `to` (standard base64).
    Relay { to: String, data: String },
}

impl Roster {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    fn changed(&self) {
        self.inner.changed.notify_waiters();
    }

    /// Replaces everything (a welcome).
    pub fn replace(&self, members: &[Member], count: usize) {
        {
            let mut state = self.lock();
            state.members.clear();
            state.absent.clear();
            for m in members {
                state.members.insert(m.user.to_lowercase(), m.clone());
            }
            state.count = count.max(members.len());
        }
        self.changed();
    }

    /// Applies a presence notice.
    pub fn apply(&self, joined: &[Member], left: &[Departure], count: usize) {
        {
            let mut state = self.lock();
            for d in left {
                state.members.remove(&d.user.to_lowercase());
            }
            for m in joined {
                let key = m.user.to_lowercase();
                state.absent.remove(&key);
                state.members.insert(key, m.clone());
            }
            state.count = count;
        }
        self.changed();
    }

    /// Records the answer to a lookup.
    pub fn found(&self, user: &str, member: Option<Member>) {
        {
            let mut state = self.lock();
            let key = user.to_lowercase();
            match member {
                Some(m) => {
                    state.absent.remove(&key);
                    state.members.insert(key, m);
                }
                None => {
                    state.members.remove(&key);
                    state.absent.insert(key);
                }
            }
        }
        self.changed();
    }

    /// Forgets everyone (after leaving).
    pub fn clear(&self) {
        *self.lock() = State::default();
        self.changed();
    }

    /// Where to send lookups and relayed datagrams while a session is joined.
    pub(super) fn set_lookups(&self, tx: mpsc::Sender<Ask>) {
        self.lock().lookups = Some(tx);
    }

    /// Where datagrams relayed to us go (the private-message hub, for the client's life).
    pub(super) fn set_inbox(&self, tx: mpsc::Sender<(String, Vec<u8>)>) {
        self.lock().inbox = Some(tx);
    }

    /// Asks the server for `user`'s endpoint; the answer arrives through [`Roster::found`].
    pub fn want(&self, user: &str) {
        if let Some(tx) = &self.lock().lookups {
            let _ = tx.try_send(Ask::Lookup(user.to_string()));
        }
    }

    /// Passes a sealed private datagram to `to` through the session server; false when there is
    /// no session, or its queue is full (the datagram is lost, as UDP may lose it).
    pub(super) fn relay(&self, to: &str, datagram: &[u8]) -> bool {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(datagram);
        match &self.lock().lookups {
            Some(tx) => tx
                .try_send(Ask::Relay {
                    to: to.to_string(),
                    data,
                })
                .is_ok(),
            None => false,
        }
    }

    /// A datagram the server relayed to us from `from`: to the hub, which treats it as one that
    /// came over UDP (dropped if the hub is behind).
    pub(super) fn relayed(&self, from: String, data: &str) {
        use base64::Engine as _;
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
            tracing::debug!(%from, "relayed datagram is not base64; dropped");
            return;
        };
        if let Some(tx) = &self.lock().inbox {
            let _ = tx.try_send((from, bytes));
        }
    }

    /// True when the server knows members we have not been told about (a large session).
    pub fn is_partial(&self) -> bool {
        let state = self.lock();
        state.count > state.members.len()
    }

    /// The member of this name, if known.
    pub fn get(&self, user: &str) -> Option<Member> {
        self.lock().members.get(&user.to_lowercase()).cloned()
    }

    /// The member of this name, looking it up if the roster is partial; `None` if not present.
    pub async fn find(&self, user: &str, wait: Duration) -> Option<Member> {
        let key = user.to_lowercase();
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked = false;
        loop {
            let notified = self.inner.changed.notified();
            {
                let state = self.lock();
                if let Some(m) = state.members.get(&key) {
                    return Some(m.clone());
                }
                if state.count <= state.members.len() || (asked && state.absent.contains(&key)) {
                    return None;
                }
            }
            if !asked {
                self.lock().absent.remove(&key);
                self.want(user);
                asked = true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// True if `user` is known and its endpoint is `addr`: the test against forged datagrams.
    pub fn is_at(&self, user: &str, addr: SocketAddr) -> bool {
        self.lock()
            .members
            .get(&user.to_lowercase())
            .is_some_and(|m| m.udp == Some(addr))
    }

    /// Everyone known, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self.lock().members.values().cloned().collect();
        v.sort_by_key(|m| m.user.to_lowercase());
        v
    }

    /// How many are present, by the server's count.
    pub fn count(&self) -> usize {
        let state = self.lock();
        state.count.max(state.members.len())
    }

    /// Number of members known by name.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// True when nobody is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
