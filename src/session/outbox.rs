//! One member's outgoing queue: bounded, shared by the room and the member's reader, drained by
//! the member's writer.
//!
//! A tokio mpsc channel would do, but it costs about a kilobyte per member before the first line
//! (cache-padded channel state plus a first block of slots); in a session of ten thousand idle
//! members that is most of what a member costs. This queue costs a mutex, a `VecDeque` that is
//! empty until used, and a `Notify`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::room::Line;

/// The queue is full: the member is not keeping up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// Kept only when the queue has drained, so one burst does not pin memory for good.
const KEEP_CAPACITY: usize = 64;

pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    cap: usize,
    /// When the member was last heard from, in ms since `epoch()`: the room sweeps for silent
    /// members once a second instead of every member keeping a timer of its own.
    heard: AtomicU64,
}

/// Milliseconds since the first call, on tokio's clock (so paused-time tests work).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

struct State {
    lines: VecDeque<Line>,
    closed: bool,
}

impl Outbox {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                lines: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            cap: cap.max(1),
            heard: AtomicU64::new(now_ms()),
        }
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
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a line; a closed queue takes it silently (nobody will read it).
    pub(crate) fn try_send(&self, line: Line) -> Result<(), Full> {
        {
            let mut state = self.lock();
            if state.closed {
                return Ok(());
            }
            if state.lines.len() >= self.cap {
                return Err(Full);
            }
            state.lines.push_back(line);
        }
        // Stores a permit if the writer is not waiting yet, so no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    /// No more lines: the writer finishes what is queued and stops.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Moves up to `max` queued lines into `out`, waiting for at least one; false when the queue
    /// is closed and empty.
    pub(crate) async fn recv_many(&self, out: &mut Vec<Line>, max: usize) -> bool {
        loop {
            {
                let mut state = self.lock();
                if !state.lines.is_empty() {
                    let n = state.lines.len().min(max.max(1));
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
        let q = Outbox::new(8);
        q.try_send(line("a")).unwrap();
        q.try_send(line("b")).unwrap();
        q.close();
        q.try_send(line("ignored")).unwrap();
        let mut out = Vec::new();
        assert!(q.recv_many(&mut out, 10).await);
        assert_eq!(out, vec![line("a"), line("b")]);
        out.clear();
        assert!(!q.recv_many(&mut out, 10).await);
    }

    #[tokio::test]
    async fn a_full_queue_refuses() {
        let q = Outbox::new(2);
        q.try_send(line("a")).unwrap();
        q.try_send(line("b")).unwrap();
        assert_eq!(q.try_send(line("c")), Err(Full));
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken() {
        let q = Arc::new(Outbox::new(8));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            q2.recv_many(&mut out, 10).await;
            out
        });
        tokio::task::yield_now().await;
        q.try_send(line("x")).unwrap();
        assert_eq!(waiter.await.unwrap(), vec![line("x")]);
    }
}
