//! What each line from the session server means to us, decided without a socket.
//!
//! The link's task owns the connection and feeds every line it reads to [`Tracker::on_line`],
//! which answers with a [`Reaction`]: an event for the application, nothing, or the end of the
//! connection. Everything that must hold across reconnects lives here, so tests can drive it
//! line by line: the newest sequence number shown (replays overlap what we saw), our own lines
//! not yet echoed (to send again after a rejoin), the line ids shown (a server that lost a line
//! may accept its resend under a new number), and the roster the notices change.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use super::event::Event;
use super::roster::Roster;
use crate::expiring::ExpiringMap;
use crate::protocol::{ByeReason, ChatLine, ClientMsg, Member, ServerMsg};

/// Group lines sent but not yet seen echoed, resent after a rejoin. Bounded: beyond this the
/// oldest are forgotten (they were almost certainly applied long ago).
pub(super) const PENDING_CAP: usize = 4096;
/// How long, and for how many lines, shown line ids are remembered.
const SHOWN_TTL: Duration = Duration::from_secs(3600);
const SHOWN_CAP: usize = 20_000;

/// How one connection ended.
#[derive(Debug, PartialEq)]
pub(super) enum Broken {
    /// We left; the server said goodbye (or the queue closed and it did not answer in time).
    Left,
    /// The session is gone for good: closed (by this user, if the server said), or no longer
    /// known to the coordinator.
    Closed { by: Option<String> },
    /// The connection broke; reconnect.
    Lost(String),
}

/// What the link does about one line from the server.
#[derive(Debug, PartialEq)]
pub(super) enum Reaction {
    /// Tell the application.
    Show(Event),
    /// Nothing to tell: a pong, a lookup answer, a line already shown, an unreadable line.
    Nothing,
    /// The server said goodbye; the connection is over.
    End(Broken),
    /// The server asked whether we are there: answer `pong`.
    Pong,
}

/// The client's side of one session's stream, across all the connections that carry it.
pub(super) struct Tracker {
    /// Our name, to recognise the echoes of our own lines (any case, as the server compares).
    user: String,
    roster: Roster,
    /// Newest sequence number shown; replays and duplicates at or below it are dropped.
    last_seq: u64,
    /// Our group lines not yet seen echoed: (line id, encoded line).
    pending: VecDeque<(u64, Bytes)>,
    /// Lines shown, by sender and the sender's line id: a server that crashed before storing a
    /// line may accept its resend under a new sequence number, and it must not show twice.
    shown: ExpiringMap<(String, u64), ()>,
}

impl Tracker {
    /// Starts after the welcome's `seq`: the newest line then is history, not news.
    pub(super) fn new(user: String, roster: Roster, seq: u64) -> Self {
        Self {
            user,
            roster,
            last_seq: seq,
            pending: VecDeque::new(),
            shown: ExpiringMap::new(SHOWN_TTL, SHOWN_CAP),
        }
    }

    /// The newest sequence number shown: what a rejoin asks the server to replay after.
    pub(super) fn since(&self) -> u64 {
        self.last_seq
    }

    /// One of our group lines went out; it waits here until its echo arrives.
    pub(super) fn sent(&mut self, id: u64, line: Bytes) {
        if self.pending.len() == PENDING_CAP {
            self.pending.pop_front();
        }
        self.pending.push_back((id, line));
    }

    /// A new connection's welcome: its roster replaces ours, and the lines that may not have
    /// reached the server are returned to go again, first (the server drops those it has).
    pub(super) fn rejoined(
        &mut self,
        members: &[Member],
        member_count: usize,
        seq: u64,
    ) -> (Vec<Bytes>, Event) {
        // A server that crashed may have lost its newest lines; what it numbers next is new to
        // us even if we saw those numbers before.
        self.last_seq = self.last_seq.min(seq);
        self.roster.replace(members, member_count);
        let resend = self.pending.iter().map(|(_, line)| line.clone()).collect();
        let event = Event::Reconnected {
            members: self.roster.members(),
            member_count: self.roster.count(),
        };
        (resend, event)
    }

    /// The texts of our lines not seen echoed, oldest first: the session may never have had
    /// them.
    pub(super) fn unconfirmed(&self) -> Vec<String> {
        self.pending
            .iter()
            .filter_map(|(_, line)| say_text(line))
            .collect()
    }

    /// What one line from the server means.
    pub(super) fn on_line(&mut self, line: &[u8]) -> Reaction {
        match serde_json::from_slice::<ServerMsg>(line) {
            Ok(msg) => self.on_message(msg),
            Err(e) => {
                tracing::debug!(error = %e, "unreadable line from session server");
                Reaction::Nothing
            }
        }
    }

    /// What one message from the server means.
    pub(super) fn on_message(&mut self, msg: ServerMsg) -> Reaction {
        match msg {
            ServerMsg::Msg(line) => self.chat(line),
            ServerMsg::Presence {
                joined,
                left,
                member_count,
            } => {
                self.roster.apply(&joined, &left, member_count);
                Reaction::Show(Event::Presence {
                    joined,
                    left,
                    member_count,
                    members: self.roster.members(),
                })
            }
            ServerMsg::Member { user, member } => {
                self.roster.found(&user, member);
                Reaction::Nothing
            }
            ServerMsg::Relayed { from, data } => {
                self.roster.relayed(from, &data);
                Reaction::Nothing
            }
            ServerMsg::History { messages } => Reaction::Show(Event::History(messages)),
            ServerMsg::Error(e) => Reaction::Show(Event::ServerError(e)),
            ServerMsg::Bye {
                reason,
                message,
                by,
                ..
            } => Reaction::End(match reason {
                ByeReason::Left => Broken::Left,
                ByeReason::Closed => Broken::Closed { by },
                _ => Broken::Lost(message),
            }),
            ServerMsg::Welcome {
                members,
                member_count,
                ..
            } => {
                self.roster.replace(&members, member_count);
                Reaction::Nothing
            }
            ServerMsg::Pong => Reaction::Nothing,
            ServerMsg::Ping => Reaction::Pong,
        }
    }

    /// A group line: clears our echoed lines, and is shown unless it was shown already.
    fn chat(&mut self, line: ChatLine) -> Reaction {
        if let Some(id) = line.id
            && line.from.eq_ignore_ascii_case(&self.user)
            && let Some(i) = self.pending.iter().position(|(p, _)| *p == id)
        {
            // Ours, and every line of ours written before it, reached the order (write order
            // is the server's order; ids from several callers need not be). Replayed echoes
            // count too, so this comes before the check for lines already shown.
            self.pending.drain(..=i);
        }
        // Replays after a rejoin overlap what we showed; show each line once.
        if line.seq <= self.last_seq {
            return Reaction::Nothing;
        }
        self.last_seq = line.seq;
        if let Some(id) = line.id
            && !self.shown.insert((line.from.to_lowercase(), id), ())
        {
            return Reaction::Nothing;
        }
        Reaction::Show(Event::Message(line))
    }
}

/// The text of an encoded `say` line.
pub(super) fn say_text(line: &[u8]) -> Option<String> {
    match serde_json::from_slice(line) {
        Ok(ClientMsg::Say { text, .. }) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use chrono::Utc;

    use super::*;
    use crate::protocol::{Departure, ErrorBody, ErrorCode, LeaveReason};

    fn tracker(seq: u64) -> (Tracker, Roster) {
        let roster = Roster::default();
        (Tracker::new("Alice".into(), roster.clone(), seq), roster)
    }

    fn line(seq: u64, from: &str, id: Option<u64>) -> ServerMsg {
        ServerMsg::Msg(ChatLine {
            seq,
            time: Utc::now(),
            from: from.into(),
            text: format!("line {seq}"),
            id,
        })
    }

    fn member(user: &str, port: u16) -> Member {
        Member {
            user: user.into(),
            udp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            key: None,
            local: Vec::new(),
        }
    }

    /// The sequence numbers of the lines a run of messages shows.
    fn shown(t: &mut Tracker, msgs: impl IntoIterator<Item = ServerMsg>) -> Vec<u64> {
        msgs.into_iter()
            .filter_map(|m| match t.on_message(m) {
                Reaction::Show(Event::Message(l)) => Some(l.seq),
                _ => None,
            })
            .collect()
    }

    fn pending_ids(t: &Tracker) -> Vec<u64> {
        t.pending.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn a_replay_overlapping_what_was_shown_shows_each_seq_once() {
        let (mut t, _) = tracker(2);
        // The welcome said 2: lines up to it are history, not news.
        assert_eq!(shown(&mut t, (1..=4).map(|s| line(s, "bob", None))), [3, 4]);
        // After a rejoin the server replays from `since`, overlapping; only 5 is new.
        assert_eq!(t.since(), 4);
        assert_eq!(shown(&mut t, (3..=5).map(|s| line(s, "bob", None))), [5]);
        assert_eq!(t.since(), 5);
    }

    #[test]
    fn an_echo_clears_that_line_and_every_earlier_one_of_ours() {
        let (mut t, _) = tracker(0);
        for id in [10, 11, 12, 13] {
            t.sent(id, Bytes::from(format!("say {id}\n")));
        }
        // Someone else's line with one of our ids is not our echo.
        t.on_message(line(1, "bob", Some(11)));
        assert_eq!(pending_ids(&t), [10, 11, 12, 13]);
        // Our echo of 11 (any case) means 10 reached the order before it.
        t.on_message(line(2, "ALICE", Some(11)));
        assert_eq!(pending_ids(&t), [12, 13]);
        // An echo already shown (a replay) still counts as an echo.
        t.on_message(line(2, "alice", Some(12)));
        assert_eq!(pending_ids(&t), [13]);
        // An id we are not waiting for leaves the rest alone.
        t.on_message(line(3, "alice", Some(99)));
        assert_eq!(pending_ids(&t), [13]);
    }

    #[test]
    fn the_texts_of_unechoed_lines_can_be_shown_when_the_session_is_lost() {
        let (mut t, _) = tracker(0);
        for (id, text) in [(1, "first"), (2, "second"), (3, "third")] {
            let msg = ClientMsg::Say {
                text: text.into(),
                id: Some(id),
            };
            t.sent(id, crate::codec::encode_line(&msg));
        }
        t.on_message(line(1, "alice", Some(1)));
        assert_eq!(t.unconfirmed(), ["second", "third"]);
    }

    #[test]
    fn unechoed_lines_are_resent_in_order_after_a_rejoin_and_the_queue_is_bounded() {
        let (mut t, roster) = tracker(0);
        for id in 0..(PENDING_CAP as u64 + 2) {
            t.sent(id, Bytes::from(format!("say {id}\n")));
        }
        t.on_message(line(1, "alice", Some(4)));
        let (resend, event) = t.rejoined(&[member("alice", 1), member("bob", 2)], 2, 1);
        // The two oldest fell off the bound; 2..=4 were echoed.
        assert_eq!(resend.len(), PENDING_CAP + 2 - 5);
        assert_eq!(resend[0], Bytes::from("say 5\n"));
        assert_eq!(
            resend.last().unwrap(),
            &Bytes::from(format!("say {}\n", PENDING_CAP + 1))
        );
        // The welcome's roster is ours now, and the event shows it.
        assert_eq!(roster.count(), 2);
        let Event::Reconnected {
            members,
            member_count,
        } = event
        else {
            panic!("expected reconnected, got {event:?}");
        };
        assert_eq!((members.len(), member_count), (2, 2));
        // Resending does not forget them: only an echo does.
        assert_eq!(t.rejoined(&[], 0, 1).0.len(), resend.len());
    }

    #[test]
    fn a_line_accepted_again_under_a_new_seq_is_shown_once() {
        let (mut t, _) = tracker(0);
        assert_eq!(shown(&mut t, [line(1, "bob", Some(7))]), [1]);
        // The server crashed before storing it, and took bob's resend as line 2 (in any case).
        assert_eq!(shown(&mut t, [line(2, "BOB", Some(7))]), Vec::<u64>::new());
        // Another sender may use the same id.
        assert_eq!(shown(&mut t, [line(3, "carol", Some(7))]), [3]);
        // The duplicate still moved the seq on: line 2 is not shown if replayed.
        assert_eq!(t.since(), 3);
    }

    #[test]
    fn a_server_that_lost_lines_has_its_new_lines_shown_under_the_old_numbers() {
        let (mut t, _) = tracker(0);
        assert_eq!(
            shown(&mut t, (1..=5).map(|s| line(s, "bob", None))),
            [1, 2, 3, 4, 5]
        );
        // The restarted server stored only up to 3.
        t.rejoined(&[], 0, 3);
        assert_eq!(t.since(), 3);
        assert_eq!(
            shown(&mut t, (4..=5).map(|s| line(s, "carol", None))),
            [4, 5]
        );
        // A server that kept everything does not move us back.
        t.rejoined(&[], 0, 9);
        assert_eq!(t.since(), 5);
    }

    #[test]
    fn presence_changes_the_roster_and_the_event_carries_it_as_it_then_was() {
        let (mut t, roster) = tracker(0);
        t.on_message(ServerMsg::Welcome {
            session: uuid::Uuid::nil(),
            name: None,
            members: vec![member("alice", 1), member("bob", 2)],
            member_count: 2,
            seq: 0,
            rate_limit: None,
        });
        assert_eq!(roster.count(), 2);
        // Bob left and came back from another port, in one notice: left first, then joined.
        let reaction = t.on_message(ServerMsg::Presence {
            joined: vec![member("bob", 3), member("carol", 4)],
            left: vec![Departure {
                user: "bob".into(),
                udp: member("bob", 2).udp,
                reason: LeaveReason::Disconnected,
            }],
            member_count: 3,
        });
        let Reaction::Show(Event::Presence {
            members,
            member_count,
            ..
        }) = reaction
        else {
            panic!("expected presence, got {reaction:?}");
        };
        assert_eq!(member_count, 3);
        assert_eq!(
            members,
            [member("alice", 1), member("bob", 3), member("carol", 4)]
        );
        assert!(roster.is_at("bob", member("bob", 3).udp.unwrap()));
        // Later notices do not change what an earlier event said.
        t.on_message(ServerMsg::Presence {
            joined: vec![],
            left: vec![],
            member_count: 500,
        });
        assert_eq!(members.len(), 3);
        assert!(roster.is_partial());
    }

    #[test]
    fn a_lookup_answer_fills_the_roster_silently() {
        let (mut t, roster) = tracker(0);
        let found = ServerMsg::Member {
            user: "dave".into(),
            member: Some(member("dave", 5)),
        };
        assert_eq!(t.on_message(found), Reaction::Nothing);
        assert_eq!(roster.get("DAVE"), Some(member("dave", 5)));
        let gone = ServerMsg::Member {
            user: "dave".into(),
            member: None,
        };
        assert_eq!(t.on_message(gone), Reaction::Nothing);
        assert_eq!(roster.get("dave"), None);
    }

    #[test]
    fn a_bye_ends_the_connection_as_its_reason_says() {
        let (mut t, _) = tracker(0);
        let bye = |reason, by: Option<&str>| ServerMsg::Bye {
            reason,
            message: format!("{reason:?}"),
            by: by.map(String::from),
        };
        assert_eq!(
            t.on_message(bye(ByeReason::Left, None)),
            Reaction::End(Broken::Left)
        );
        assert_eq!(
            t.on_message(bye(ByeReason::Closed, Some("carol"))),
            Reaction::End(Broken::Closed {
                by: Some("carol".into())
            })
        );
        for reason in [
            ByeReason::Shutdown,
            ByeReason::Silent,
            ByeReason::HelloTimeout,
        ] {
            assert_eq!(
                t.on_message(bye(reason, None)),
                Reaction::End(Broken::Lost(format!("{reason:?}")))
            );
        }
    }

    #[test]
    fn answers_errors_and_noise_from_the_wire() {
        let (mut t, _) = tracker(0);
        assert_eq!(t.on_line(br#"{"type":"pong"}"#), Reaction::Nothing);
        assert_eq!(t.on_line(b"not json"), Reaction::Nothing);
        let error = ErrorBody::new(ErrorCode::RateLimited, "slow down");
        let line = serde_json::to_vec(&ServerMsg::Error(error.clone())).unwrap();
        assert_eq!(t.on_line(&line), Reaction::Show(Event::ServerError(error)));
        let history = ServerMsg::History {
            messages: vec![ChatLine {
                seq: 1,
                time: Utc::now(),
                from: "bob".into(),
                text: "old".into(),
                id: None,
            }],
        };
        // History is shown as asked for, whatever the seq: it does not move the stream on.
        assert!(matches!(
            t.on_message(history),
            Reaction::Show(Event::History(m)) if m.len() == 1
        ));
        assert_eq!(t.since(), 0);
    }
}
