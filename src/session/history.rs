//! The group lines a room keeps in memory, and what it can answer from them: a page of history,
//! the lines a rejoining member missed, and how many it missed beyond what can be sent.
//!
//! Plain data, owned by the room task: the room decides when storage is read and where answers
//! go; this decides what they hold. Reads from storage are the room's (they run outside it and
//! come back as events), so nothing here waits.

use std::collections::VecDeque;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};

use crate::codec::encode_line;
use crate::protocol::{ChatLine, ServerMsg, limits};

/// Most missed lines a rejoining member gets back from storage (beyond those in memory).
pub(crate) const MAX_CATCH_UP: usize = 5000;

/// The newest lines of a session, and its sequence number.
pub(crate) struct Recent {
    lines: VecDeque<ChatLine>,
    cap: usize,
    /// The newest kept line's sequence number (0 before the first).
    seq: u64,
    /// The newest sequence number given out: lines between `seq` and it are being written.
    assigned: u64,
}

/// What memory can give a `history` request.
#[derive(Debug, PartialEq)]
pub(crate) enum Page {
    /// Everything the request can have.
    Ready(Vec<ChatLine>),
    /// The newest part of the answer; `missing` older lines, below `older_than`, are to be read
    /// from storage and put in front.
    NeedsStorage {
        have: Vec<ChatLine>,
        older_than: u64,
        missing: usize,
    },
}

/// The lines a rejoining member missed, ready to send.
#[derive(Debug, PartialEq)]
pub(crate) struct Replay {
    /// The missed lines as `msg` lines, one after the other; `None` if there are none to send.
    pub(crate) bytes: Option<Bytes>,
    /// Missed lines not in `bytes` (too old, or past the byte cap): the member is told, so it
    /// knows to ask for history.
    pub(crate) missed: u64,
}

impl Recent {
    /// After a (re)start: `seq` is the newest stored line's number, `lines` the newest stored
    /// lines (oldest first).
    pub(crate) fn new(seq: u64, lines: Vec<ChatLine>, cap: usize) -> Self {
        Self {
            lines: lines.into(),
            cap: cap.max(1),
            seq,
            assigned: seq,
        }
    }

    /// The newest line's sequence number (0 before the first).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The oldest sequence number memory holds (the next one when it holds none).
    fn oldest(&self) -> u64 {
        self.lines.front().map_or(self.seq + 1, |l| l.seq)
    }

    /// Gives a new line its place in the order (and its time); it counts once [`Recent::keep`]
    /// has it.
    pub(crate) fn assign(&mut self, from: String, text: String, id: Option<u64>) -> ChatLine {
        self.assigned += 1;
        ChatLine {
            seq: self.assigned,
            time: Utc::now().trunc_subsecs(3),
            from,
            text,
            id,
        }
    }

    /// Keeps the next line of the order (members have it now), forgetting the oldest past the
    /// cap.
    pub(crate) fn keep(&mut self, line: ChatLine) -> &ChatLine {
        debug_assert_eq!(line.seq, self.seq + 1, "lines are kept in their order");
        self.seq = line.seq;
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        self.lines.back().expect("just pushed")
    }

    /// Gives a new line its place and keeps it at once (no storage to wait for).
    #[cfg(test)]
    pub(crate) fn push(&mut self, from: String, text: String, id: Option<u64>) -> &ChatLine {
        let line = self.assign(from, text, id);
        self.keep(line)
    }

    /// Up to `limit` lines (at most `MAX_HISTORY`) below `before` (the newest if `None`);
    /// older than memory reaches, they are to be read from `storage` when there is one.
    pub(crate) fn page(&self, before: Option<u64>, limit: usize, storage: bool) -> Page {
        let limit = limit.min(limits::MAX_HISTORY);
        let before = before.unwrap_or(u64::MAX).min(self.seq + 1);
        let end = self.lines.partition_point(|l| l.seq < before);
        let start = end.saturating_sub(limit);
        let have: Vec<ChatLine> = self.lines.range(start..end).cloned().collect();
        let missing = limit - have.len();
        let oldest = self.oldest();
        if storage && missing > 0 && oldest > 1 && before > 1 {
            Page::NeedsStorage {
                have,
                older_than: before.min(oldest),
                missing,
            }
        } else {
            Page::Ready(have)
        }
    }

    /// For a member rejoining after `since`: the lines it missed that memory no longer holds, to
    /// read from storage first, as (below this sequence number, at most this many).
    pub(crate) fn catch_up(&self, since: u64) -> Option<(u64, usize)> {
        let since = since.min(self.seq);
        let oldest = self.oldest();
        (since + 1 < oldest).then(|| {
            let missed = (oldest - since - 1).min(MAX_CATCH_UP as u64) as usize;
            (oldest, missed)
        })
    }

    /// The lines after `since`, from `older` (read from storage for this rejoin) and memory,
    /// newest kept when they pass `cap` bytes: a replay must end where live lines begin.
    pub(crate) fn replay(&self, since: u64, older: &[ChatLine], cap: usize) -> Replay {
        let since = since.min(self.seq);
        let start = self.lines.partition_point(|l| l.seq <= since);
        let front = self.lines.front().map(|l| l.seq);
        let encoded: Vec<Bytes> = older
            .iter()
            .filter(|l| l.seq > since && front.is_none_or(|f| l.seq < f))
            .chain(self.lines.range(start..))
            .map(|l| encode_line(&ServerMsg::Msg(l.clone())))
            .collect();
        let mut budget = cap;
        let keep_from = encoded
            .iter()
            .rposition(|b| match budget.checked_sub(b.len()) {
                Some(left) => {
                    budget = left;
                    false
                }
                None => true,
            })
            .map_or(0, |i| i + 1);
        let replayed = &encoded[keep_from..];
        let missed = (self.seq - since).saturating_sub(replayed.len() as u64);
        let bytes = (!replayed.is_empty()).then(|| {
            let mut all = Vec::with_capacity(cap - budget);
            for line in replayed {
                all.extend_from_slice(line);
            }
            Bytes::from(all)
        });
        Replay { bytes, missed }
    }
}

/// Keeps the newest of `messages` whose `history` answer fits in `cap` bytes. The client pages
/// back from the oldest it got, so a short answer loses nothing.
pub(crate) fn fit(messages: &mut Vec<ChatLine>, cap: usize) {
    // Room for `{"type":"history","messages":[]}` and the newline.
    let mut budget = cap.saturating_sub(64);
    let keep_from = messages
        .iter()
        .rposition(|l| match budget.checked_sub(encoded_len(l) + 1) {
            Some(left) => {
                budget = left;
                false
            }
            None => true,
        })
        .map_or(0, |i| i + 1);
    messages.drain(..keep_from);
}

/// How many bytes `line` takes in JSON, without keeping the encoding.
fn encoded_len(line: &ChatLine) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, line);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of equal encoded length for sequence numbers of equal width.
    fn line(seq: u64) -> ChatLine {
        ChatLine {
            seq,
            time: "2026-12-04T01:02:03.456Z".parse().unwrap(),
            from: "alice".into(),
            text: format!("line {seq}"),
            id: None,
        }
    }

    /// Memory holding lines `first..=last` of a session whose newest is `last`.
    fn holding(first: u64, last: u64, cap: usize) -> Recent {
        Recent::new(last, (first..=last).map(line).collect(), cap)
    }

    fn seqs(lines: &[ChatLine]) -> Vec<u64> {
        lines.iter().map(|l| l.seq).collect()
    }

    #[test]
    fn new_lines_are_numbered_in_order_and_memory_keeps_the_newest() {
        let mut r = holding(1, 3, 4);
        assert_eq!(r.push("bob".into(), "hi".into(), Some(7)).seq, 4);
        assert_eq!(r.push("bob".into(), "again".into(), None).seq, 5);
        assert_eq!(r.seq(), 5);
        assert_eq!(r.oldest(), 2, "the cap of 4 pushed line 1 out");
    }

    #[test]
    fn a_page_inside_memory_is_ready_and_one_past_it_asks_storage_for_the_rest() {
        let r = holding(11, 20, 10);
        match r.page(Some(16), 3, true) {
            Page::Ready(lines) => assert_eq!(seqs(&lines), [13, 14, 15]),
            other => panic!("{other:?}"),
        }
        match r.page(None, 15, true) {
            Page::NeedsStorage {
                have,
                older_than,
                missing,
            } => {
                assert_eq!(seqs(&have), (11..=20).collect::<Vec<_>>());
                assert_eq!((older_than, missing), (11, 5));
            }
            other => panic!("{other:?}"),
        }
        // Without storage, memory is all there is; below line 1 there is nothing.
        assert!(matches!(r.page(None, 15, false), Page::Ready(l) if l.len() == 10));
        assert!(matches!(holding(1, 5, 10).page(None, 50, true), Page::Ready(l) if l.len() == 5));
    }

    #[test]
    fn a_rejoin_reads_from_storage_only_what_memory_lost_and_at_most_the_catch_up_cap() {
        let r = holding(101, 200, 100);
        assert_eq!(r.catch_up(150), None);
        assert_eq!(r.catch_up(100), None, "line 101 on is in memory");
        assert_eq!(r.catch_up(90), Some((101, 10)));
        assert_eq!(r.catch_up(0), Some((101, 100)));
        let big = holding(10_001, 10_100, 100);
        assert_eq!(big.catch_up(0), Some((10_001, MAX_CATCH_UP)));
        assert_eq!(
            r.catch_up(u64::MAX),
            None,
            "a since from the future missed nothing"
        );
    }

    #[test]
    fn a_replay_takes_older_lines_then_memory_and_counts_what_it_leaves_out() {
        let r = holding(16, 20, 5);
        let older: Vec<ChatLine> = (13..=15).map(line).collect();
        let all = r.replay(12, &older, 1 << 20);
        let text = String::from_utf8(all.bytes.unwrap().to_vec()).unwrap();
        let got: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, [13, 14, 15, 16, 17, 18, 19, 20]);
        assert_eq!(all.missed, 0);
        // Storage did not reach back to line 13: that one is a gap.
        let gap = r.replay(12, &older[1..], 1 << 20);
        assert_eq!(gap.missed, 1);
        // A cap that holds two lines keeps the newest two; the other six are counted.
        let one = encode_line(&ServerMsg::Msg(line(20))).len();
        let capped = r.replay(12, &older, 2 * one + 1);
        assert_eq!(capped.missed, 6);
        assert_eq!(capped.bytes.unwrap().len(), 2 * one);
        // Nothing missed, nothing to send.
        assert_eq!(
            r.replay(20, &[], 1 << 20),
            Replay {
                bytes: None,
                missed: 0
            }
        );
    }

    #[test]
    fn a_history_answer_keeps_the_newest_lines_that_fit() {
        let mut lines: Vec<ChatLine> = (11..=20).map(line).collect();
        let each = encoded_len(&lines[0]) + 1;
        fit(&mut lines, 64 + 3 * each);
        assert_eq!(seqs(&lines), [18, 19, 20]);
    }
}
