//! A map whose entries expire after a fixed time and whose size is capped.
//!
//! Both ends of a retry scheme need one: a session room remembers the ids of lines it has put in
//! its order so a resent line is not doubled, and clients remember private-message ids so a
//! retried message is shown once. (The coordinator's reply cache is bounded in bytes instead; see
//! `coordinator::replies`.) Entries leave in insertion order, so expiry is O(1) amortized.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Bounded in time and in count; owned by one task, so it needs no lock.
#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    /// Each value with when it was inserted, which tells its own place in `order` from one
    /// left behind by a removed (or replaced) entry of the same key.
    entries: HashMap<K, (Instant, V)>,
    /// Insertion order, for expiry from the front.
    order: VecDeque<(Instant, K)>,
    ttl: Duration,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// Entries live for `ttl`; beyond `cap` entries the oldest go first.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    /// The live entry for `key`.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.expire(Instant::now());
        self.entries.get(key).map(|(_, v)| v)
    }

    /// The live entry for `key`, to change in place (its expiry stays as it was).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.expire(Instant::now());
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    /// Adds an entry; returns false (and keeps the old value) if the key is already present.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let now = Instant::now();
        self.expire(now);
        if self.entries.contains_key(&key) {
            return false;
        }
        self.push(key, value, now);
        true
    }

    /// Adds an entry, or replaces the one for `key` with a new value and a new lifetime.
    pub fn replace(&mut self, key: K, value: V) {
        let now = Instant::now();
        self.expire(now);
        self.entries.remove(&key);
        self.push(key, value, now);
    }

    /// Takes the entry for `key` out.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    fn push(&mut self, key: K, value: V, now: Instant) {
        // Places left behind by removed entries count here until they reach the front, so
        // a map that removes much is bounded by `cap` places, not `cap` entries.
        while self.order.len() >= self.cap {
            self.pop_oldest();
        }
        self.entries.insert(key.clone(), (now, value));
        self.order.push_back((now, key));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, key)) = self.order.pop_front()
            && self
                .entries
                .get(&key)
                .is_some_and(|(inserted, _)| *inserted == at)
        {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_value_of_a_key() {
        let mut m = ExpiringMap::new(Duration::from_secs(60), 10);
        assert!(m.insert(1, "a"));
        assert!(!m.insert(1, "b"));
        assert_eq!(m.get(&1), Some(&"a"));
        assert_eq!(m.get(&2), None);
    }

    #[test]
    fn cap_evicts_the_oldest() {
        let mut m = ExpiringMap::new(Duration::from_secs(60), 2);
        for k in 0..3 {
            m.insert(k, ());
        }
        assert!(m.get(&0).is_none());
        assert!(m.get(&1).is_some() && m.get(&2).is_some());
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_replaced_entry_lives_from_its_replacement_and_a_removed_one_is_gone() {
        let mut m = ExpiringMap::new(Duration::from_millis(200), 10);
        m.insert(1, "a");
        std::thread::sleep(Duration::from_millis(120));
        m.replace(1, "b");
        m.insert(2, "c");
        assert_eq!(m.remove(&2), Some("c"));
        assert_eq!(m.get(&2), None);
        std::thread::sleep(Duration::from_millis(120));
        // The first insertion's time has passed; the replacement's has not.
        assert_eq!(m.get(&1), Some(&"b"));
        m.insert(2, "d");
        assert_eq!(
            m.get(&2),
            Some(&"d"),
            "the removed entry's old place does not take it"
        );
        std::thread::sleep(Duration::from_millis(220));
        assert_eq!(m.get(&1), None);
    }

    #[test]
    fn entries_expire() {
        let mut m = ExpiringMap::new(Duration::ZERO, 10);
        m.insert(1, ());
        assert!(m.get(&1).is_none());
    }
}
