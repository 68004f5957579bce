//! One member's outgoing queue, shared by the room and the member's reader, drained by the
//! member's writer.
//!
//! Its length in lines is a high-water mark, not a limit: a queue above it closes the room's
//! [`Gate`], which holds the senders back until the queue has drained below half of it (see
//! `gate.rs`). The byte budget covers everything the server holds for the member until it is written to the
//! socket: live lines, a replay, history answers, and the batch the writer is writing. A member
//! that does not read cannot make the server hold more: the line that would cross the budget is
//! refused, and the room drops the member as too slow. History answers are large (up to 500
//! lines), so the member's next request waits until the previous answer has been written (see
//! [`Outbox::ask`]); without that wait, requests at the allowed rate would fill the budget with
//! answers and drop the member instead of slowing it down.
//!
//! A tokio mpsc channel would do, but it costs about a kilobyte per member before the first line
//! (cache-padded channel state plus a first block of slots); in a session of ten thousand idle
//! members that is most of what a member costs. This queue costs a mutex, a `VecDeque` that is
//! empty until used, and a `Notify`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use super::clock::now_ms;
use super::gate::Gate;
use crate::codec::encode_line;

/// An encoded line on its way to members. One pointer wide, so a member's queue costs a quarter
/// of what `Bytes` slots would: idle members in a big session are mostly queue.
pub(crate) type Line = Arc<Bytes>;

/// Encodes a message once for any number of members.
pub(crate) fn shared<T: serde::Serialize>(msg: &T) -> Line {
    Arc::new(encode_line(msg))
}

/// The queue is at its byte budget: the member is not keeping up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// Kept only when the queue has drained, so one burst does not pin memory for good.
const KEEP_CAPACITY: usize = 64;

pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    /// Woken when the writer has written past the end of the last answer.
    answered: Notify,
    /// High-water mark in lines.
    cap: usize,
    budget: usize,
    gate: Arc<Gate>,
    /// When the member was last heard from, in ms since `epoch()`: the room sweeps for silent
    /// members once a second instead of every member keeping a timer of its own.
    heard: AtomicU64,
}

struct State {
    lines: VecDeque<Line>,
    closed: bool,
    /// Bytes queued or being written: what the budget limits.
    held: usize,
    /// Bytes ever queued and ever written; positions in the member's stream.
    queued_total: u64,
    written_total: u64,
    /// Where the last answer ends in the stream (`u64::MAX`: asked, not answered yet).
    answer_end: u64,
    /// Since when (ms on `now_ms`'s clock) the queue has been above its high-water mark,
    /// holding the gate closed.
    pressed_since: Option<u64>,
}

impl Outbox {
    /// A queue that closes `gate` above `cap` lines and refuses lines beyond `budget` bytes.
    pub(crate) fn new(cap: usize, budget: usize, gate: Arc<Gate>) -> Self {
        Self {
            state: Mutex::new(State {
                lines: VecDeque::new(),
                closed: false,
                held: 0,
                queued_total: 0,
                written_total: 0,
                answer_end: 0,
                pressed_since: None,
            }),
            ready: Notify::new(),
            answered: Notify::new(),
            cap: cap.max(1),
            budget,
            gate,
            heard: AtomicU64::new(now_ms()),
        }
    }

    /// Nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().lines.is_empty()
    }

    /// The member sent something.
    pub(crate) fn heard(&self) {
        self.heard.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the member last sent anything.
    pub(crate) fn silent_ms(&self) -> u64 {
        now_ms().saturating_sub(self.heard.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Queues a line; a closed queue takes it silently (nobody will read it).
    pub(crate) fn try_send(&self, line: Line) -> Result<(), Full> {
        self.push(line, false)
    }

    /// Queues the answer to a request (history, or a replay): the member's next request waits
    /// until it has been written.
    pub(crate) fn try_send_answer(&self, line: Line) -> Result<(), Full> {
        self.push(line, true)
    }

    fn push(&self, line: Line, answer: bool) -> Result<(), Full> {
        let was_empty;
        {
            let mut state = self.lock();
            if state.closed {
                return Ok(());
            }
            let held = state.held + line.len();
            if held > self.budget {
                return Err(Full);
            }
            if state.lines.len() >= self.cap && state.pressed_since.is_none() {
                state.pressed_since = Some(now_ms());
                self.gate.press();
            }
            state.held = held;
            state.queued_total += line.len() as u64;
            if answer {
                state.answer_end = state.queued_total;
            }
            was_empty = state.lines.is_empty();
            state.lines.push_back(line);
        }
        // Only the first line into an empty queue wakes the writer (or stores a permit if it is
        // not waiting yet, so no wake-up is lost): the writer takes every queued line under the
        // lock before it waits again, so lines behind the first need no wake-up of their own.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits until every earlier answer has been written to the socket, then marks a request as
    /// asked. The member's reader calls it before passing a request on, and reads nothing more
    /// meanwhile, so a member that does not read its answers is slowed down by TCP itself.
    pub(crate) async fn ask(&self) {
        loop {
            {
                let mut state = self.lock();
                if state.closed || state.written_total >= state.answer_end {
                    state.answer_end = u64::MAX;
                    return;
                }
            }
            self.answered.notified().await;
        }
    }

    /// No more lines: the writer finishes what is queued and stops.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if state.pressed_since.take().is_some() {
            self.gate.release();
        }
        drop(state);
        self.ready.notify_one();
        self.answered.notify_one();
    }

    /// The writer wrote `bytes` it had taken: they leave the budget, and a request waiting for
    /// its answer to be written may go on.
    pub(crate) fn wrote(&self, bytes: usize) {
        let mut state = self.lock();
        state.held -= bytes;
        state.written_total += bytes as u64;
        if state.written_total >= state.answer_end {
            self.answered.notify_one();
        }
        if state.pressed_since.is_some() && state.lines.len() <= self.cap / 2 {
            state.pressed_since = None;
            self.gate.release();
        }
    }

    /// Milliseconds the queue has been above its high-water mark without draining below half
    /// of it; `None` when it is not.
    pub(crate) fn pressed_ms(&self) -> Option<u64> {
        let since = self.lock().pressed_since?;
        Some(now_ms().saturating_sub(since))
    }

    /// Moves queued lines into `out`, at most `max` of them and, unless the first alone is
    /// larger, at most `max_bytes`; waits for at least one. They stay in the budget until the
    /// writer says it [wrote](Self::wrote) them. False when the queue is closed and empty.
    pub(crate) async fn recv_many(
        &self,
        out: &mut Vec<Line>,
        max: usize,
        max_bytes: usize,
    ) -> bool {
        loop {
            {
                let mut state = self.lock();
                if !state.lines.is_empty() {
                    let mut n = 0;
                    let mut bytes = 0;
                    for line in state.lines.iter().take(max.max(1)) {
                        if n > 0 && bytes + line.len() > max_bytes {
                            break;
                        }
                        bytes += line.len();
                        n += 1;
                    }
                    out.extend(state.lines.drain(..n));
                    if state.lines.is_empty() && state.lines.capacity() > KEEP_CAPACITY {
                        state.lines = VecDeque::new();
                    }
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A queue dropped without being closed must not hold the room's senders forever.
        let state = self.state.get_mut();
        if state.pressed_since.take().is_some() {
            self.gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn line(s: &'static str) -> Line {
        Arc::new(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn lines_come_out_in_order_and_close_ends_after_the_last() {
        let q = Outbox::new(8, 1024, gate());
        q.try_send(line("a")).unwrap();
        q.try_send(line("b")).unwrap();
        q.close();
        q.try_send(line("ignored")).unwrap();
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 10, 1024).await);
        assert_eq!(out, vec![line("a"), line("b")]);
        out.clear();
        q.wrote(2);
        assert!(!q.recv_many(&mut out, 10, 1024).await);
    }

    fn gate() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    #[tokio::test]
    async fn a_queue_past_its_mark_holds_the_gate_until_it_drains_below_half() {
        let gate = gate();
        let q = Outbox::new(4, 1024, gate.clone());
        for l in ["a", "b", "c", "d", "e", "f"] {
            q.try_send(line(l)).unwrap();
        }
        assert!(
            !gate.is_open(),
            "a queue past its mark must hold the senders"
        );
        assert!(q.pressed_ms().is_some());
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 3, 1024).await);
        q.wrote(3);
        assert!(!gate.is_open(), "3 lines left is above half the mark");
        out.clear();
        assert!(q.recv_many(&mut out, 1, 1024).await);
        q.wrote(1);
        assert!(gate.is_open(), "2 lines left is half the mark");
        assert_eq!(q.pressed_ms(), None);
    }

    #[tokio::test]
    async fn a_queue_closed_or_dropped_while_pressed_opens_the_gate() {
        let gate = gate();
        let closed = Outbox::new(1, 1024, gate.clone());
        let dropped = Outbox::new(1, 1024, gate.clone());
        for q in [&closed, &dropped] {
            q.try_send(line("a")).unwrap();
            q.try_send(line("b")).unwrap();
        }
        assert!(!gate.is_open());
        closed.close();
        assert!(!gate.is_open());
        drop(dropped);
        assert!(gate.is_open());
    }

    #[tokio::test]
    async fn bytes_count_until_written_not_until_taken() {
        let q = Outbox::new(100, 10, gate());
        q.try_send(line("abcdef")).unwrap();
        assert_eq!(q.try_send(line("ghijk")), Err(Full));
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 10, 1024).await);
        // Taken by the writer but not yet written: still held.
        assert_eq!(q.try_send(line("ghijk")), Err(Full));
        q.try_send(line("ghij")).unwrap();
        out.clear();
        q.wrote(6);
        assert!(q.recv_many(&mut out, 10, 1024).await);
        assert_eq!(out, vec![line("ghij")]);
        q.try_send(line("klmnop")).unwrap();
    }

    #[tokio::test]
    async fn a_batch_stops_before_a_line_that_would_pass_the_byte_limit() {
        let q = Outbox::new(100, 1024, gate());
        for l in ["aaaa", "bbbb", "cccc"] {
            q.try_send(line(l)).unwrap();
        }
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 10, 9).await);
        assert_eq!(out, vec![line("aaaa"), line("bbbb")]);
        out.clear();
        // A line larger than the limit goes alone.
        assert!(q.recv_many(&mut out, 10, 2).await);
        assert_eq!(out, vec![line("cccc")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_until_the_previous_answer_is_written() {
        let q = Arc::new(Outbox::new(100, 1024, gate()));
        q.ask().await; // nothing outstanding
        q.try_send(line("live")).unwrap();
        q.try_send_answer(line("answer")).unwrap();
        let q2 = q.clone();
        let asking = tokio::spawn(async move { q2.ask().await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!asking.is_finished(), "served while the answer is unread");
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 1, 1024).await);
        q.wrote(4);
        assert!(q.recv_many(&mut out, 1, 1024).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !asking.is_finished(),
            "served before the answer was written"
        );
        q.try_send(line("x")).unwrap();
        q.wrote(6);
        assert!(q.recv_many(&mut out, 1, 1024).await);
        asking.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken() {
        let q = Arc::new(Outbox::new(8, 1024, gate()));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            q2.recv_many(&mut out, 10, 1024).await;
            out
        });
        tokio::task::yield_now().await;
        q.try_send(line("x")).unwrap();
        assert_eq!(waiter.await.unwrap(), vec![line("x")]);
    }
}
