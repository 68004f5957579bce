//! The session's coarse clock, in milliseconds: members' queues stamp when they were last heard
//! and pressed, the gate when it opened, and the room's sweep compares them. Apart from the
//! queue and the gate so that neither imports the other for it.

use std::sync::OnceLock;

use tokio::time::Instant;

/// Milliseconds on tokio's clock (so paused-time tests work), from an hour before the first call.
/// The hour matters in tests: a paused runtime's clock starts when that runtime starts, and a
/// first call made later by another test must not put the epoch after this runtime's "now"
/// (every reading would then be 0).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH
        .get_or_init(|| {
            let now = Instant::now();
            now.checked_sub(std::time::Duration::from_secs(3600))
                .unwrap_or(now)
        })
        .elapsed()
        .as_millis() as u64
}
