//! Bookkeeping of bench messages shared by the group and private scenarios: what each receiver
//! saw of each sender (every index once, in order) and how long each took.
//!
//! A message's text is `"<sender> <index> <send-nanos>"`.

use std::time::Instant;

use super::stats::Histogram;

/// The user name of member `i` of session `s`.
pub(super) fn user_name(s: usize, i: usize) -> String {
    format!("s{s}m{i}")
}

/// One sender's messages as one receiver (or, merged, all receivers) saw them.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    got: Vec<bool>,
    pub(super) distinct: u64,
    pub(super) duplicated: u64,
    pub(super) out_of_order: u64,
    last: Option<usize>,
}

/// Splits a bench message text into sender, index and send instant.
pub(super) fn parse(text: &str) -> Option<(usize, usize, u64)> {
    let mut parts = text.split(' ').map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(sender)), Some(Some(index)), Some(Some(sent))) => {
            Some((sender as usize, index as usize, sent))
        }
        _ => None,
    }
}

/// What receivers saw; one per receiver, merged at the end.
#[derive(Debug, Clone)]
pub(super) struct Tally {
    pub(super) senders: Vec<Seen>,
    pub(super) latency: Histogram,
    pub(super) received: u64,
    pub(super) last: Option<Instant>,
    pub(super) disconnected: u64,
    pub(super) server_errors: u64,
    pub(super) timed_out: u64,
}

impl Tally {
    pub(super) fn new(senders: usize, messages: usize) -> Self {
        Self {
            senders: vec![
                Seen {
                    got: vec![false; messages],
                    ..Seen::default()
                };
                senders
            ],
            latency: Histogram::default(),
            received: 0,
            last: None,
            disconnected: 0,
            server_errors: 0,
            timed_out: 0,
        }
    }

    /// Counts a message that is not one of the bench's, received at `now`.
    pub(super) fn note_other(&mut self, now: Instant) {
        self.received += 1;
        self.last = Some(now);
    }

    /// Counts message `index` of sender slot `sender`, sent at `sent` nanoseconds after `epoch`.
    pub(super) fn note(&mut self, sender: usize, index: usize, sent: u64, epoch: Instant) {
        let now = Instant::now();
        let now_nanos = now.saturating_duration_since(epoch).as_nanos() as u64;
        self.note_at(sender, index, sent, now_nanos, now);
    }

    /// [`Tally::note`] with the clock already read: `now`, which is `now_nanos` after the epoch.
    pub(super) fn note_at(
        &mut self,
        sender: usize,
        index: usize,
        sent: u64,
        now_nanos: u64,
        now: Instant,
    ) {
        self.received += 1;
        self.last = Some(now);
        let Some(seen) = self.senders.get_mut(sender) else {
            return;
        };
        let Some(got) = seen.got.get_mut(index) else {
            return;
        };
        self.latency.record(now_nanos.saturating_sub(sent));
        if *got {
            seen.duplicated += 1;
            return;
        }
        *got = true;
        seen.distinct += 1;
        if seen.last.is_some_and(|l| index < l) {
            seen.out_of_order += 1;
        }
        seen.last = Some(seen.last.map_or(index, |l| l.max(index)));
    }

    /// Adds per-sender counts only (for the per-session view).
    pub(super) fn merge_counts(&mut self, other: &Tally) {
        for (a, b) in self.senders.iter_mut().zip(&other.senders) {
            a.distinct += b.distinct;
            a.duplicated += b.duplicated;
            a.out_of_order += b.out_of_order;
        }
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency);
        self.received += other.received;
        self.last = self.last.max(other.last);
        self.disconnected += other.disconnected;
        self.server_errors += other.server_errors;
        self.timed_out += other.timed_out;
    }
}
