//! What changed in a room's roster since members were last told: the net of every join and
//! leave, so that churn costs each member one notice per interval however fast it goes.
//!
//! A member that came and went between two notices is never announced; one that left and came
//! back is announced as a departure and an arrival only if its endpoint changed.
//!
//! [`Presence`] adds the timing: notices at most every [`PRESENCE_INTERVAL`] (at once when the
//! last is older), and in a large session only counts, at most as often; when a large session
//! shrinks back, everyone gets the whole roster again.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{Departure, LeaveReason, Member, limits};

/// Presence notices (and welcomes) go out at most this often.
pub(crate) const PRESENCE_INTERVAL: Duration = limits::LARGE_PRESENCE_INTERVAL;

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

/// What the members already present are told at a flush.
#[derive(Debug, PartialEq)]
pub(crate) enum Notice {
    /// Nothing now (a large session's count goes out on its own tick).
    Nothing,
    /// The whole roster again, as a welcome: the session was large, and rosters built from
    /// counts are stale.
    Roster,
    /// Who arrived and who left, net.
    Changes(Vec<Member>, Vec<Departure>),
}

/// The room's presence bookkeeping: what changed, and when members may next be told.
pub(crate) struct Presence {
    changes: Changes,
    /// No flush before this; one is due at this time if `flush_due`.
    next_flush: Instant,
    flush_due: bool,
    /// A large session's count changed since members were last told.
    count_dirty: bool,
    /// The session was large at the last notice: rosters must be resent when it is not.
    was_large: bool,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            changes: Changes::default(),
            next_flush: Instant::now(),
            flush_due: false,
            count_dirty: false,
            was_large: false,
        }
    }
}

impl Presence {
    /// `member` joined; `key` (its lowercased name) was not present.
    pub(crate) fn joined(&mut self, key: &str, member: Member) {
        self.changes.joined(key, member);
    }

    /// `member` left.
    pub(crate) fn left(&mut self, key: &str, member: Member, reason: LeaveReason) {
        self.changes.left(key, member, reason);
    }

    /// Whether a flush may go out now, with `joiners` waiting for their welcome: not when there
    /// is nothing to tell, nor (unless `now`) within `PRESENCE_INTERVAL` of the last one, which
    /// makes one due at the end of it. A yes starts the next interval.
    pub(crate) fn may_flush(&mut self, joiners: bool, now: bool) -> bool {
        if !joiners && self.changes.is_empty() {
            return false;
        }
        let time = Instant::now();
        if !now && time < self.next_flush {
            self.flush_due = true;
            return false;
        }
        self.flush_due = false;
        self.next_flush = time + PRESENCE_INTERVAL;
        true
    }

    /// The changes since the last flush, and a clean slate.
    pub(crate) fn take(&mut self) -> (Vec<Member>, Vec<Departure>) {
        self.changes.take()
    }

    /// What the others hear of `changes` (taken at this flush) in a session that is `large` now.
    pub(crate) fn notice(&mut self, large: bool, changes: (Vec<Member>, Vec<Departure>)) -> Notice {
        if large {
            self.count_dirty = true;
            self.was_large = true;
            return Notice::Nothing;
        }
        if std::mem::take(&mut self.was_large) {
            return Notice::Roster;
        }
        Notice::Changes(changes.0, changes.1)
    }

    /// Whether a large session's count is to be told at the next count tick.
    pub(crate) fn count_dirty(&self) -> bool {
        self.count_dirty
    }

    /// The count is being told.
    pub(crate) fn count_told(&mut self) {
        self.count_dirty = false;
    }

    /// Resolves when a flush that had to wait is due; never if none is.
    pub(crate) async fn flush_due(&self) {
        if self.flush_due {
            tokio::time::sleep_until(self.next_flush).await
        } else {
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(user: &str, port: u16) -> Member {
        Member {
            user: user.into(),
            udp: Some(([127, 0, 0, 1], port).into()),
            key: None,
            local: Vec::new(),
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

    #[tokio::test(start_paused = true)]
    async fn notices_wait_out_the_interval_and_then_one_is_due() {
        let mut p = Presence::default();
        assert!(!p.may_flush(false, false), "nothing to tell");
        p.joined("bob", m("bob", 1));
        assert!(p.may_flush(false, false), "the first notice goes at once");
        p.take();
        p.joined("carol", m("carol", 2));
        assert!(!p.may_flush(false, false), "within the interval");
        let waited = Instant::now();
        p.flush_due().await;
        assert_eq!(waited.elapsed(), PRESENCE_INTERVAL);
        assert!(p.may_flush(false, false));
        p.joined("dave", m("dave", 3));
        assert!(p.may_flush(false, true), "a forced flush does not wait");
    }

    #[test]
    fn a_large_session_tells_counts_and_then_the_whole_roster_when_it_shrinks() {
        let mut p = Presence::default();
        p.joined("bob", m("bob", 1));
        let changes = p.take();
        assert_eq!(p.notice(true, changes), Notice::Nothing);
        assert!(p.count_dirty());
        p.count_told();
        assert!(!p.count_dirty());
        assert_eq!(p.notice(false, (Vec::new(), Vec::new())), Notice::Roster);
        p.left("bob", m("bob", 1), LeaveReason::Left);
        let changes = p.take();
        match p.notice(false, changes) {
            Notice::Changes(joined, left) => {
                assert!(joined.is_empty());
                assert_eq!(left[0].user, "bob");
            }
            other => panic!("{other:?}"),
        }
    }
}
