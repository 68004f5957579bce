//! The reply cache: answers to requests that changed something, kept so that a client's retry is
//! answered again instead of run again.
//!
//! An entry is found only by the whole request that earned it (source address and a digest of
//! every byte of the datagram), never by its id alone: a socket that reuses a port, or anyone who
//! guesses an id, must not be handed someone else's answer (a login token above all). The cache
//! is bounded in bytes, not entries, because answers differ in size and a stranger chooses them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// What identifies a request: where it came from and a digest of all its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct RequestKey {
    from: SocketAddr,
    digest: [u8; 32],
}

impl RequestKey {
    /// The digest of the request's bytes alone (a retry to another coordinator of the group
    /// comes from the same client with the same bytes).
    pub(super) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The key of `datagram` received from `from`.
    pub(super) fn new(from: SocketAddr, datagram: &[u8]) -> Self {
        Self {
            from,
            digest: Sha256::digest(datagram).into(),
        }
    }
}

/// What the cache holds for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Slot {
    /// Being worked on (a password being hashed): a retry is not run again, and not answered yet.
    Pending,
    /// The answer, to send again byte for byte.
    Done(Bytes),
}

/// Bookkeeping per entry beside the answer itself: the key twice (map and queue), the slot, the
/// map's and queue's own overhead. An estimate, so that many tiny entries are counted too.
const ENTRY_OVERHEAD: usize = 160;

struct Entry {
    slot: Slot,
    /// Its insertion number; tells a live entry from a stale queue record of an earlier one.
    serial: u64,
}

/// Answers by request, for `ttl`, at most `budget` bytes in all (the oldest go first).
pub(super) struct ReplyCache {
    entries: HashMap<RequestKey, Entry>,
    order: VecDeque<(Instant, u64, RequestKey)>,
    serial: u64,
    bytes: usize,
    ttl: Duration,
    budget: usize,
}

fn cost(slot: &Slot) -> usize {
    ENTRY_OVERHEAD
        + match slot {
            Slot::Pending => 0,
            Slot::Done(b) => b.len(),
        }
}

impl ReplyCache {
    pub(super) fn new(ttl: Duration, budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            serial: 0,
            bytes: 0,
            ttl,
            budget,
        }
    }

    /// The live slot for exactly this request.
    pub(super) fn get(&mut self, key: &RequestKey) -> Option<&Slot> {
        self.expire(Instant::now());
        self.entries.get(key).map(|e| &e.slot)
    }

    /// Marks the request as being worked on.
    pub(super) fn pending(&mut self, key: RequestKey) {
        self.put(key, Slot::Pending);
    }

    /// Keeps the answer to the request (replacing a pending mark, keeping its age).
    pub(super) fn done(&mut self, key: RequestKey, answer: Bytes) {
        self.put(key, Slot::Done(answer));
    }

    /// Drops whatever is kept for the request (an answer not worth keeping).
    pub(super) fn forget(&mut self, key: &RequestKey) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= cost(&e.slot);
        }
    }

    /// Bytes held, by the estimate the budget is counted in.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    fn put(&mut self, key: RequestKey, slot: Slot) {
        let now = Instant::now();
        self.expire(now);
        let new = cost(&slot);
        if new > self.budget {
            return;
        }
        match self.entries.get_mut(&key) {
            Some(e) => {
                self.bytes = self.bytes - cost(&e.slot) + new;
                e.slot = slot;
            }
            None => {
                self.bytes += new;
                self.serial += 1;
                let serial = self.serial;
                self.entries.insert(key, Entry { slot, serial });
                self.order.push_back((now, serial, key));
            }
        }
        while self.bytes > self.budget {
            self.pop_oldest();
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((_, serial, key)) = self.order.pop_front() else {
            return;
        };
        // A forgotten and re-added key has a newer record further back; leave that one alone.
        if self.entries.get(&key).is_some_and(|e| e.serial == serial)
            && let Some(e) = self.entries.remove(&key)
        {
            self.bytes -= cost(&e.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, datagram: &str) -> RequestKey {
        RequestKey::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            datagram.as_bytes(),
        )
    }

    #[test]
    fn only_the_same_request_from_the_same_address_is_answered() {
        let mut c = ReplyCache::new(Duration::from_secs(60), 1 << 20);
        let alice = r#"{"id":2,"op":"login","user":"alice","password":"right"}"#;
        c.done(key(1, alice), Bytes::from_static(b"token"));
        assert_eq!(
            c.get(&key(1, alice)),
            Some(&Slot::Done(Bytes::from_static(b"token")))
        );
        let mallory = r#"{"id":2,"op":"login","user":"mallory","password":"wrong"}"#;
        assert_eq!(c.get(&key(1, mallory)), None, "same id, other request");
        assert_eq!(c.get(&key(2, alice)), None, "same request, other address");
    }

    #[test]
    fn the_budget_counts_bytes_and_evicts_the_oldest() {
        let budget = 10 * (ENTRY_OVERHEAD + 1000);
        let mut c = ReplyCache::new(Duration::from_secs(60), budget);
        for i in 0..100 {
            c.done(key(1, &i.to_string()), Bytes::from(vec![b'x'; 1000]));
            assert!(c.bytes() <= budget);
        }
        assert!(c.get(&key(1, "0")).is_none());
        assert!(c.get(&key(1, "99")).is_some());
        // A pending mark that becomes an answer is counted once.
        c.pending(key(2, "p"));
        c.done(key(2, "p"), Bytes::from_static(b"a"));
        assert!(c.bytes() <= budget);
    }

    #[test]
    fn forgotten_and_readded_entries_keep_their_new_age() {
        let mut c = ReplyCache::new(Duration::from_secs(60), 1 << 20);
        c.pending(key(1, "a"));
        c.forget(&key(1, "a"));
        c.done(key(1, "a"), Bytes::from_static(b"x"));
        c.pending(key(1, "b"));
        assert_eq!(c.bytes(), 2 * ENTRY_OVERHEAD + 1);
        // Expiry of the stale record for "a" must not take the new "a".
        c.pop_oldest();
        assert!(c.get(&key(1, "a")).is_some());
    }
}
