//! What changed in a room's roster since members were last told: the net of every join and
//! leave, so that churn costs each member one notice per interval however fast it goes.
//!
//! A member that came and went between two notices is never announced; one that left and came
//! back is announced as a departure and an arrival only if its endpoint changed.

use std::collections::HashMap;

use crate::protocol::{Departure, LeaveReason, Member};

/// One user's change since the last notice.
struct Change {
    /// As members were last told (`None`: not present).
    before: Option<Member>,
    /// As it is now.
    after: Option<Member>,
    /// Why it last left.
    reason: LeaveReason,
}

/// Joins and leaves since the last notice, keyed by lowercased name, in the order first seen.
#[derive(Default)]
pub(crate) struct Changes {
    order: Vec<String>,
    by_user: HashMap<String, Change>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn entry(&mut self, key: &str, before: Option<Member>) -> &mut Change {
        if !self.by_user.contains_key(key) {
            self.order.push(key.to_string());
        }
        self.by_user.entry(key.to_string()).or_insert(Change {
            before,
            after: None,
            reason: LeaveReason::Left,
        })
    }

    /// `member` joined; `key` was not present.
    pub(crate) fn joined(&mut self, key: &str, member: Member) {
        self.entry(key, None).after = Some(member);
    }

    /// `member` left; if it is not in the changes, members were told it is present.
    pub(crate) fn left(&mut self, key: &str, member: Member, reason: LeaveReason) {
        let change = self.entry(key, Some(member));
        change.after = None;
        change.reason = reason;
    }

    /// The notice to send, and a clean slate: who arrived and who went, net.
    pub(crate) fn take(&mut self) -> (Vec<Member>, Vec<Departure>) {
        let mut joined = Vec::new();
        let mut left = Vec::new();
        for key in self.order.drain(..) {
            let Some(change) = self.by_user.remove(&key) else {
                continue;
            };
            if change.before == change.after {
                continue;
            }
            if let Some(gone) = change.before {
                left.push(Departure {
                    user: gone.user,
                    udp: gone.udp,
                    reason: change.reason,
                });
            }
            joined.extend(change.after);
        }
        (joined, left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(user: &str, port: u16) -> Member {
        Member {
            user: user.into(),
            udp: Some(([127, 0, 0, 1], port).into()),
        }
    }

    #[test]
    fn churn_between_notices_nets_out() {
        let mut c = Changes::default();
        for _ in 0..1000 {
            c.joined("eve", m("eve", 1));
            c.left("eve", m("eve", 1), LeaveReason::Left);
        }
        assert!(!c.is_empty());
        let (joined, left) = c.take();
        assert!(joined.is_empty() && left.is_empty());
        assert!(c.is_empty());
    }

    #[test]
    fn a_present_member_that_churns_is_told_once_as_it_ends() {
        let mut c = Changes::default();
        c.left("bob", m("bob", 1), LeaveReason::Disconnected);
        c.joined("bob", m("bob", 1));
        c.left("bob", m("bob", 1), LeaveReason::Left);
        c.joined("bob", m("bob", 2));
        c.left("carol", m("carol", 3), LeaveReason::TooSlow);
        c.joined("dave", m("dave", 4));
        let (joined, left) = c.take();
        assert_eq!(joined, vec![m("bob", 2), m("dave", 4)]);
        let left: Vec<_> = left.iter().map(|d| (d.user.as_str(), d.reason)).collect();
        assert_eq!(
            left,
            vec![("bob", LeaveReason::Left), ("carol", LeaveReason::TooSlow)]
        );
    }

    #[test]
    fn a_rejoin_from_the_same_endpoint_changes_nothing() {
        let mut c = Changes::default();
        c.left("bob", m("bob", 1), LeaveReason::Disconnected);
        c.joined("bob", m("bob", 1));
        let (joined, left) = c.take();
        assert!(joined.is_empty() && left.is_empty());
    }
}
