//! Flow control for a room's senders.
//!
//! When a member's queue passes its high-water mark (a burst arrived while its reader was
//! descheduled, say), the room does not drop the member: it stops taking group lines until every
//! such queue has drained below half the mark. Member readers that want to say something wait at
//! this gate before they hand the line to the room, so they stop reading their sockets and TCP
//! itself slows the senders down, as ngIRCd does by parsing only a few commands per client per
//! pass. Joins, leaves, pings and history requests pass regardless.
//!
//! A member is dropped as too slow only when its queue stays above the mark for a sustained
//! time (`MemberLimits::drain_timeout`), or when it would make the server hold more than its
//! byte budget: memory stays bounded, bursts cost nobody.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::clock::now_ms;

/// Shared by a room's queues (which close and open it) and its members' readers (which wait at
/// it); the room task itself never waits here.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Queues above their high-water mark. The gate is open when there are none.
    pressed: AtomicUsize,
    opened: Notify,
    /// When the gate last opened, in ms on [`now_ms`]'s clock.
    opened_at: AtomicU64,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            pressed: AtomicUsize::new(0),
            opened: Notify::new(),
            opened_at: AtomicU64::new(now_ms()),
        }
    }
}

impl Gate {
    /// True when no queue is above its mark.
    pub(crate) fn is_open(&self) -> bool {
        self.pressed.load(Ordering::Acquire) == 0
    }

    /// A queue passed its high-water mark. Each `press` is matched by one [`Gate::release`].
    pub(crate) fn press(&self) {
        self.pressed.fetch_add(1, Ordering::AcqRel);
    }

    /// A queue that was above its mark drained below half of it, or closed.
    pub(crate) fn release(&self) {
        if self.pressed.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.opened_at.store(now_ms(), Ordering::Relaxed);
            self.opened.notify_waiters();
        }
    }

    /// Waits until the gate is open.
    pub(crate) async fn open(&self) {
        loop {
            let notified = self.opened.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a release between the two is not missed.
            notified.as_mut().enable();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }

    /// Milliseconds the gate has been open without a break, or `None` while it is closed.
    ///
    /// A reader held at the gate reads nothing, pings included: the silence sweep must not
    /// count the time it was held as the member's silence.
    pub(crate) fn open_for_ms(&self) -> Option<u64> {
        self.is_open()
            .then(|| now_ms().saturating_sub(self.opened_at.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gate_opens_only_when_every_pressed_queue_has_released() {
        let gate = Arc::new(Gate::default());
        gate.open().await; // open from the start
        gate.press();
        gate.press();
        assert!(!gate.is_open());
        assert_eq!(gate.open_for_ms(), None);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.open().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate.release();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiting.is_finished(),
            "opened while one queue is still pressed"
        );
        gate.release();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a waiting reader is woken when the gate opens")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn time_held_is_not_counted_as_open() {
        let gate = Gate::default();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(gate.open_for_ms().unwrap() >= 500);
        gate.press();
        tokio::time::sleep(Duration::from_secs(3)).await;
        gate.release();
        assert!(gate.open_for_ms().unwrap() < 10);
    }
}
