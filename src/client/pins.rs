//! The identity keys of the people we have exchanged private messages with, pinned on first
//! contact (as SSH pins host keys), so that a key that changes later is noticed: the session
//! server hands out the roster, and a server that lied about a key could otherwise read and
//! forge private messages.
//!
//! Kept in memory, and in a file when the configuration names one (the terminal client's
//! `known_peers`): one line per peer, `COORDINATOR USER KEY`, names in lower case.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use parking_lot::Mutex;

use crate::identity::{fingerprint, parse_fingerprint};

/// What a key is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    /// Not met before: pinned now.
    New,
    /// The key pinned for this user.
    Pinned,
    /// Not the key pinned for this user, which is given.
    Changed {
        /// The key we pinned earlier.
        pinned: [u8; 32],
    },
}

#[derive(Debug)]
pub(super) struct Pins {
    coordinator: SocketAddr,
    file: Option<PathBuf>,
    keys: Mutex<HashMap<String, [u8; 32]>>,
}

impl Pins {
    /// The pins for users of `coordinator`, read from `file` if there is one.
    pub(super) fn load(coordinator: SocketAddr, file: Option<PathBuf>) -> Self {
        let mut keys = HashMap::new();
        if let Some(text) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            let here = coordinator.to_string();
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some(coord), Some(user), Some(key)) =
                    (words.next(), words.next(), words.next())
                    && coord == here
                    && let Ok(key) = parse_fingerprint(key)
                {
                    keys.insert(user.to_lowercase(), key);
                }
            }
        }
        Self {
            coordinator,
            file,
            keys: Mutex::new(keys),
        }
    }

    /// Checks `user`'s key against the pin, pinning it if there was none.
    pub(super) fn check(&self, user: &str, key: &[u8; 32]) -> PinState {
        let name = user.to_lowercase();
        let mut keys = self.keys.lock();
        match keys.get(&name) {
            Some(pinned) if pinned == key => PinState::Pinned,
            Some(pinned) => PinState::Changed { pinned: *pinned },
            None => {
                keys.insert(name, *key);
                self.save(&keys);
                PinState::New
            }
        }
    }

    /// What is pinned for `user`, without pinning anything.
    pub(super) fn pinned(&self, user: &str) -> Option<[u8; 32]> {
        self.keys.lock().get(&user.to_lowercase()).copied()
    }

    /// Pins `key` for `user`, replacing what was pinned (the user compared it and trusts it).
    pub(super) fn trust(&self, user: &str, key: &[u8; 32]) {
        let mut keys = self.keys.lock();
        keys.insert(user.to_lowercase(), *key);
        self.save(&keys);
    }

    /// Rewrites the file: this coordinator's pins, and every other coordinator's lines as they
    /// were.
    fn save(&self, keys: &HashMap<String, [u8; 32]>) {
        let Some(file) = &self.file else {
            return;
        };
        let here = self.coordinator.to_string();
        let mut lines: Vec<String> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.split_whitespace().next() != Some(here.as_str()))
            .map(str::to_owned)
            .collect();
        let mut mine: Vec<_> = keys.iter().collect();
        mine.sort();
        for (user, key) in mine {
            lines.push(format!("{here} {user} {}", fingerprint(key)));
        }
        if let Err(e) = crate::private_file::write_lines(file, &lines) {
            tracing::warn!(file = %file.display(), error = %e, "could not save the pinned peer keys");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_pinned_on_first_sight_and_a_change_is_reported_until_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_peers");
        let here: SocketAddr = "127.0.0.1:7500".parse().unwrap();
        let pins = Pins::load(here, Some(file.clone()));
        assert_eq!(pins.check("Bob", &[1; 32]), PinState::New);
        assert_eq!(pins.check("bob", &[1; 32]), PinState::Pinned);
        // Survives a restart, and another coordinator's bob is someone else.
        let pins = Pins::load(here, Some(file.clone()));
        assert_eq!(
            pins.check("bob", &[2; 32]),
            PinState::Changed { pinned: [1; 32] }
        );
        let other = Pins::load("127.0.0.1:7501".parse().unwrap(), Some(file.clone()));
        assert_eq!(other.check("bob", &[2; 32]), PinState::New);
        pins.trust("bob", &[2; 32]);
        let pins = Pins::load(here, Some(file.clone()));
        assert_eq!(pins.check("bob", &[2; 32]), PinState::Pinned);
        // Both coordinators' lines are kept.
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    }
}
