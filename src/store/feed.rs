//! Who is in each session this process serves, told to the rest of its group, so that every
//! coordinator's `list` shows the members of sessions served anywhere (on a `confab host`, or
//! by another coordinator).
//!
//! Servers report every join and leave; the feed keeps only the newest roster of each session
//! and sends what changed a moment later in one statement (a `NOTIFY` per session), so a burst
//! of thousands of joins costs a few notifications, not thousands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Members, Storage};

/// Names sent per session: as many as a directory entry shows.
pub const NAMES: usize = 8;
/// How long changes gather before they are sent.
const GATHER: Duration = Duration::from_millis(20);

/// Cheap to clone; its task ends at shutdown.
#[derive(Clone)]
pub struct MemberFeed(Arc<Inner>);

struct Inner {
    /// The newest roster of each session changed since the last send: at most one per session
    /// this process serves.
    changed: Mutex<HashMap<Uuid, Members>>,
    wake: Notify,
    /// This process, as its claims name it.
    host: Uuid,
}

impl MemberFeed {
    /// Starts the task that sends what changed through `db`.
    pub fn start(
        db: Arc<dyn Storage>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> MemberFeed {
        let feed = MemberFeed(Arc::new(Inner {
            changed: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            host: db.host(),
        }));
        let inner = feed.0.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = inner.wake.notified() => {}
                    () = shutdown.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(GATHER) => {}
                    () = shutdown.cancelled() => return,
                }
                let batch: Vec<Members> = inner.changed.lock().drain().map(|(_, m)| m).collect();
                if let Err(e) = db.publish_members(batch).await {
                    tracing::warn!(error = %e, "could not tell the group who is in its sessions");
                }
            }
        });
        feed
    }

    /// Session `id`, served here at `server`, has `count` members now, `names` among them (the
    /// first few are kept).
    pub fn changed<'a>(
        &self,
        id: Uuid,
        server: SocketAddr,
        count: usize,
        names: impl Iterator<Item = &'a String>,
    ) {
        let members = Members {
            id,
            host: self.0.host,
            server,
            count,
            names: names.take(NAMES).cloned().collect(),
        };
        self.0.changed.lock().insert(id, members);
        self.0.wake.notify_one();
    }
}
